"""Applying a trained model to new images: ``aeseg predict``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..cohort.manifest import Case
from ..cohort.reading import strip_suffix
from ..data.dataset import CohortData, build_slice_set
from ..errors import AesegError, JobError
from ..io.segmentation import write_segmentation
from ..methods.base import MethodContext
from ..methods.registry import get_method
from .config import resolve_config
from .device import pick_device
from .inference import predict_case


def model_dir(path: str | os.PathLike) -> Path:
    """A job folder or its ``model/`` folder → the folder holding model.pt and model.json."""
    p = Path(path).expanduser().resolve()
    for cand in (p, p / "model"):
        if (cand / "model.json").is_file() and (cand / "model.pt").is_file():
            return cand
    raise JobError(f"{p}: no trained model (model/model.json and model.pt); give a finished job folder")


def load_model(path: str | os.PathLike, device: str = "auto"):
    """(method instance in eval mode, JobConfig) for a saved model."""
    d = model_dir(path)
    spec = json.loads((d / "model.json").read_text(encoding="utf-8"))
    cfg = resolve_config(spec["method"], spec["config"], device=device)
    dev = pick_device(device)
    empty = build_slice_set([], cfg.data)
    empty.images = torch.zeros(0, int(spec["input"]["in_channels"]), cfg.data.size, cfg.data.size)
    data = CohortData(empty, empty, empty, cfg.data)
    method = get_method(spec["method"])(cfg.method_config, MethodContext(device=dev, data=data, seed=0))
    state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    from .loop import _unwrap

    for k, m in method.modules().items():
        _unwrap(m).load_state_dict(state["modules"][k])
    method.train_mode(False)
    return method, cfg, dev


def predict_images(model: str | os.PathLike, images: list[str | os.PathLike], out_dir: str | os.PathLike,
                   fmt: str = "seg.nrrd", device: str = "auto") -> list[Path]:
    if fmt not in ("seg.nrrd", "nii.gz", "nrrd", "mha"):
        raise AesegError(f"unknown output format '{fmt}'; use seg.nrrd, nii.gz, nrrd or mha")
    method, cfg, dev = load_model(model, device)
    out = Path(out_dir)
    written = []
    for img in images:
        p = Path(img)
        case = Case(strip_suffix(p), p)
        s = build_slice_set([case], cfg.data)
        rec = s.records[0]
        prob = predict_case(method, s, rec, cfg.data.axis, dev)
        dest = out / f"{case.case_id}.{fmt}"
        write_segmentation(dest, prob > 0.5, rec.geometry, name="Prediction")
        written.append(dest)
    return written
