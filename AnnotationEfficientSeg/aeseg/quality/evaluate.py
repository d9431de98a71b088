"""Evaluate a folder of predictions against a folder of reference labels.

Files are matched by case id (the file name without its image suffix, see
:func:`aeseg.cohort.reading.strip_suffix`), so ``case01.seg.nrrd`` is compared with
``case01.nii.gz``. Both are read with :func:`aeseg.cohort.reading.read_label` and must
lie on the same voxel grid; metrics come from :func:`aeseg.quality.metrics.case_metrics`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..cohort.reading import image_suffix, read_label, strip_suffix
from ..errors import AesegError
from .metrics import case_metrics, summarize

SAME: Literal["same"] = "same"


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    """Case id → label file for every image-like file in ``folder`` (hidden/temp files skipped)."""
    if not folder.is_dir():
        raise AesegError(f"{role} folder {folder} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or image_suffix(p) is None:
            continue
        case = strip_suffix(p)
        if case in found:
            raise AesegError(f"{role} folder {folder} holds two files for case '{case}': "
                             f"{found[case].name} and {p.name}; keep one")
        found[case] = p
    return found


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, label_value: int | None = None,
                     *, pred_label_value: int | None | Literal["same"] = SAME) -> tuple[list[dict], dict]:
    """Metrics for every reference case and their summary.

    ``label_value`` selects one structure of multi-label references (``None``: any
    non-zero voxel, or the first segment of a ``.seg.nrrd``); predictions are read
    with the same value unless ``pred_label_value`` says otherwise (e.g. ``None`` for
    binary predictions scored against one label of a multi-label reference).

    Returns ``(rows, summary)``: one row ``{"case", "dice", "hd95", "assd", "ravd"}``
    per reference case in case-id order, and :func:`~aeseg.quality.metrics.summarize`
    of the rows plus ``extra_predictions`` (predictions with no reference, ignored).

    Raises :class:`~aeseg.errors.AesegError` if a reference case has no prediction
    (all such cases are listed) or if a prediction's grid differs from its reference.
    """
    preds = _label_files(Path(pred_dir), "prediction")
    refs = _label_files(Path(ref_dir), "reference")
    if not refs:
        raise AesegError(f"reference folder {ref_dir} holds no label files")
    missing = [c for c in refs if c not in preds]
    if missing:
        raise AesegError(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {', '.join(missing)}")
    p_value = label_value if pred_label_value == SAME else pred_label_value

    rows: list[dict] = []
    for case, ref_path in refs.items():
        ref, ref_geom = read_label(ref_path, label_value)
        pred, pred_geom = read_label(preds[case], p_value)
        if not ref_geom.same_grid(pred_geom):
            raise AesegError(f"case '{case}': prediction {preds[case].name} is not on the reference grid "
                             f"({ref_geom.describe_difference(pred_geom)}; prediction vs reference)")
        rows.append({"case": case, **case_metrics(pred, ref, ref_geom.spacing)})
    summary = summarize(rows)
    summary["extra_predictions"] = len([c for c in preds if c not in refs])
    return rows, summary
