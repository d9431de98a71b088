"""What a finished job writes: the model, pseudo labels for every case, per-pixel maps,
``quality.csv`` and the report. Rank 0 only; every file is written atomically and
announced with an ``artifact`` event."""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..cohort.reading import read_image, write_image
from ..data.dataset import CohortData, CaseRecord
from ..data.slicing import to_slices
from ..io.atomic import write_bytes, write_json
from ..io.segmentation import Segment, write_seg_nrrd
from ..methods.base import CaseQuality, QualityResult
from ..quality.metrics import dice
from ..quality.table import rank_rows, write_quality_csv
from .inference import predict_case
from .job import JobFolder

if TYPE_CHECKING:
    from ..report import OverviewCase


def soft_confidence(prob: np.ndarray) -> float:
    """Soft Dice between the foreground probability and its own thresholded mask: near 1
    when the model is sure of a region, lower when the foreground is uncertain."""
    m = prob > 0.5
    denom = prob.sum() + m.sum()
    return float(2 * (prob * m).sum() / denom) if denom > 0 else 1.0


def default_quality(records: dict[str, tuple[str, CaseRecord]], preds: dict[str, np.ndarray]) -> QualityResult:
    """Baseline label-quality score: Dice between the given label and the model's
    prediction; for unlabelled cases, the prediction's soft confidence."""
    rows = []
    for cid, (split, rec) in records.items():
        p = preds[cid]
        if rec.label_zyx is not None:
            s, src = dice(p > 0.5, rec.label_zyx > 0), "label_agreement"
        else:
            s, src = soft_confidence(p), "confidence"
        rows.append(CaseQuality(cid, s, {"split": split, "label_kind": rec.kind, "score_source": src}))
    return QualityResult(rows)


def save_model(job: JobFolder, method, data: CohortData, cfg, st) -> list[Path]:
    from .loop import _unwrap

    state = {"method": cfg.method, "modules": {k: _unwrap(m).state_dict() for k, m in method.modules().items()}}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(job.model_dir / "model.pt", buf.getvalue())
    spec = {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "input": {"in_channels": data.in_channels, "size": cfg.data.size, "axis": cfg.data.axis,
                  "intensity": cfg.data.intensity, "classes": ["background", "target"]},
        "metrics": {"best_val_dice": st.best if st.best >= 0 else None, "best_epoch": st.best_epoch + 1 if st.best_epoch >= 0 else None,
                    "epochs_run": len(st.history)},
        "weights": cfg.engine.final,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(job.model_dir / "model.json", spec)
    return [job.model_dir / "model.pt", job.model_dir / "model.json"]


def finalize(job: JobFolder, method, data: CohortData, cfg, st, cohort) -> None:
    method.train_mode(False)
    axis = cfg.data.axis
    records: dict[str, tuple[str, CaseRecord]] = {}
    preds: dict[str, np.ndarray] = {}
    for split, s, rec in data.all_records():
        records[rec.case_id] = (split, rec)
        preds[rec.case_id] = predict_case(method, s, rec, axis, method.ctx.device)
    for p in save_model(job, method, data, cfg, st):
        job.events.emit("artifact", path=job.rel(p), kind="model")

    quality = method.quality(preds, job) or default_quality(records, preds)
    ranked = rank_rows(quality.rows, cfg.engine.flag_fraction)
    write_quality_csv(job.quality_csv, cfg.method, ranked)
    job.events.emit("artifact", path=job.rel(job.quality_csv), kind="quality")
    by_case = {r["case"]: r for r in ranked}

    for cid, (split, rec) in records.items():
        row = by_case.get(cid, {})
        flagged = bool(row.get("flag"))
        tags = {"AESeg.score": _f(row.get("score")), "AESeg.rank": str(row.get("rank", "")), "AESeg.method": cfg.method}
        segs = [Segment("Pseudo label", preds[cid] > 0.5, status="flagged" if flagged else "completed", tags=tags)]
        if rec.label_zyx is not None:
            segs.append(Segment("Given label", rec.label_zyx > 0, status="flagged" if flagged else "completed",
                                tags={"AESeg.label_kind": rec.kind}))
        path = job.pseudo_label(cid)
        write_seg_nrrd(path, segs, rec.geometry)
        job.events.emit("artifact", path=job.rel(path), kind="pseudo_label", case=cid)
        maps = dict(quality.maps.get(cid, {}))
        if cfg.engine.probability_maps:
            maps.setdefault("probability", preds[cid])
        for name, arr in maps.items():
            mp = job.map_path(cid, name)
            write_image(mp, np.asarray(arr, dtype=np.float32), rec.geometry)
            job.events.emit("artifact", path=job.rel(mp), kind="map", case=cid, name=name)

    for p in method.write_outputs(job, preds):
        job.events.emit("artifact", path=job.rel(Path(p)), kind="method_output")

    report = write_job_report(job, cfg, st, ranked, records, preds, quality.maps, method)
    if report:
        job.events.emit("artifact", path=job.rel(report), kind="report")


def _f(v) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.4f}"


def overview_case(row: dict, rec: CaseRecord, pred: np.ndarray, maps: dict[str, np.ndarray], axis: int
                  ) -> OverviewCase:
    """The overview panel of one ranked case: the slice where its pseudo label and given
    label cover most pixels, with both as contours and the same slice of each of the
    method's maps (``maps/<case>/<name>.nrrd``) beside it."""
    from ..report import OverviewCase

    img = read_image(rec.case.image).array
    img_sl = to_slices(img, axis)[:, 0]  # (N, H, W), first channel
    masks = {"Pseudo label": to_slices(pred > 0.5, axis)}
    if rec.label_zyx is not None:
        masks["Given label"] = to_slices(rec.label_zyx > 0, axis)
    area = sum(m.reshape(m.shape[0], -1).sum(1) for m in masks.values())
    k = int(np.argmax(area))
    sub = f"rank {row['rank']} · score {_f(row['score'])}" + (" · flagged" if row["flag"] else "")
    map_sl = {name: to_slices(np.asarray(m), axis)[k] for name, m in maps.items() if np.ndim(m) == 3}
    return OverviewCase(row["case"], img_sl[k], {n: m[k] for n, m in masks.items()}, sub, map_sl)


def write_job_report(job: JobFolder, cfg, st, ranked: list[dict], records, preds,
                     maps: dict[str, dict[str, np.ndarray]] | None = None, method=None,
                     n_cases: int = 6) -> Path | None:
    from ..report import write_report

    overview = [overview_case(r, records[r["case"]][1], preds[r["case"]], (maps or {}).get(r["case"], {}),
                              cfg.data.axis) for r in ranked[:n_cases]]
    summary = {"method": cfg.method, "cohort": str(job.read_meta().get("cohort", "")),
               "epochs": len(st.history), "best val Dice": _f(st.best) if st.best >= 0 else "n/a",
               "training time (s)": f"{st.elapsed:.1f}", "device": str(job.read_meta().get("device", "")),
               "config": dataclasses.asdict(cfg.method_config)}
    figures = []
    if method is not None:
        try:
            figures = method.report_figures(job, ranked)
        except Exception as e:  # noqa: BLE001 - a figure is not worth failing a finished job
            job.events.emit("note", message=f"report: the {cfg.method} figures were not drawn "
                                            f"({type(e).__name__}: {e}); the rest of the report is complete")
    write_report(job.report_dir, summary, st.history, overview, ranked, figures=figures)
    return job.report_dir / "report.html"
