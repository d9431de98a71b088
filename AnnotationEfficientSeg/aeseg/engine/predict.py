"""Applying a trained model to new images: ``aeseg predict``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..cohort.manifest import Case
from ..cohort.reading import image_channels, image_suffix, strip_suffix
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


MODEL_FIX = "retrain, or give the folder of an intact model"


def read_spec(d: Path) -> tuple[str, dict, int]:
    """(method, config, input channels) from ``d/model.json``; JobError if it is unreadable."""
    try:
        spec = json.loads((d / "model.json").read_text(encoding="utf-8"))
        return str(spec["method"]), dict(spec["config"]), int(spec["input"]["in_channels"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise JobError(f"{d / 'model.json'}: unreadable ({type(e).__name__}: {e}); {MODEL_FIX}") from e


def channels_text(n: int) -> str:
    return {1: "grey (1 channel)", 3: "colour (3 channels)"}.get(n, f"{n}-channel")


def check_channels(image: Path, found: int | None, expected: int) -> None:
    """AesegError when an image's channels are not the model's input channels."""
    if found is not None and found != expected:
        raise AesegError(f"{image}: a {channels_text(found)} image, but the model was trained on "
                         f"{channels_text(expected)} images; convert the image, or train a model on such images")


def load_model(path: str | os.PathLike, device: str = "auto"):
    """(method instance in eval mode, JobConfig) for a saved model."""
    d = model_dir(path)
    method_name, config, in_channels = read_spec(d)
    cfg = resolve_config(method_name, config, device=device)
    dev = pick_device(device)
    empty = build_slice_set([], cfg.data)
    empty.images = torch.zeros(0, in_channels, cfg.data.size, cfg.data.size)
    data = CohortData(empty, empty, empty, cfg.data)
    method = get_method(method_name)(cfg.method_config, MethodContext(device=dev, data=data, seed=0))
    from .loop import _unwrap

    try:
        state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's own text suggests an unsafe load: not shown
        raise JobError(f"{d / 'model.pt'}: not a model of this {method_name} job: it cannot be read as "
                       f"saved weights ({type(e).__name__}); {MODEL_FIX}") from e
    try:
        for k, m in method.modules().items():
            _unwrap(m).load_state_dict(state["modules"][k])
    except (KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise JobError(f"{d / 'model.pt'}: not a model of this {method_name} job: its weights do not fit the "
                       f"network model.json describes ({first}); {MODEL_FIX}") from e
    method.train_mode(False)
    return method, cfg, dev


FORMATS = ("seg.nrrd", "nii.gz", "nrrd", "mha")


def plan_outputs(images: list[str | os.PathLike], out_dir: str | os.PathLike, fmt: str) -> list[tuple[Case, Path]]:
    """(case, output file) for every input, checked before the model is loaded or anything
    is written: each input exists and is an image file or a folder (a DICOM series), no two
    inputs give the same output name (``a/x.nii.gz`` and ``b/x.nrrd`` would overwrite each
    other) and no output would overwrite an input."""
    if fmt not in FORMATS:
        raise AesegError(f"unknown output format '{fmt}'; use {', '.join(FORMATS)}")
    if not images:
        raise AesegError("no images given")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise AesegError(f"{out}: exists and is not a folder; give --out a folder")
    plan: list[tuple[Case, Path]] = []
    by_dest: dict[Path, Path] = {}
    inputs = {Path(i).expanduser().resolve() for i in images}
    for img in images:
        p = Path(img).expanduser()
        if not p.exists():
            raise AesegError(f"{p}: file not found; nothing was written")
        if p.is_file() and image_suffix(p) in (None, ".seg.nrrd"):
            raise AesegError(f"{p}: not an image file (.nii.gz, .nii, .nrrd, .mha, .mhd, .png, .jpg, .tif, .dcm "
                             "or a DICOM folder); nothing was written")
        if p.is_dir():
            named = [f for f in p.iterdir() if f.is_file() and image_suffix(f) not in (None, ".dcm", ".seg.nrrd")]
            if named:
                raise AesegError(f"{p}: a folder of image files ({named[0].name}, …), not one DICOM series; "
                                 f"give the files themselves, e.g. {p / '*'}; nothing was written")
        case = Case(strip_suffix(p), p)
        dest = out / f"{case.case_id}.{fmt}"
        key = dest.resolve()
        if key in by_dest:
            raise AesegError(f"{by_dest[key]} and {p} would both be written to {dest}; "
                             "rename one or predict them into different folders; nothing was written")
        if key in inputs:
            raise AesegError(f"{dest} would overwrite the input image; choose another --out or --format; nothing was written")
        by_dest[key] = p
        plan.append((case, dest))
    return plan


def predict_images(model: str | os.PathLike, images: list[str | os.PathLike], out_dir: str | os.PathLike,
                   fmt: str = "seg.nrrd", device: str = "auto",
                   on_written: Callable[[Path], None] | None = None) -> list[Path]:
    """Predict each image with the model of a finished job and write the mask on the
    image's own grid. Inputs are checked first (:func:`plan_outputs`); ``on_written`` is
    called with each output as it is written, so a caller can show progress and, if an
    image fails to read part-way, what was already written (the error says how many)."""
    plan = plan_outputs(images, out_dir, fmt)
    _, _, in_channels = read_spec(model_dir(model))
    for case, _ in plan:  # from the headers, before anything is loaded or written
        try:
            check_channels(case.image, image_channels(case.image), in_channels)
        except AesegError as e:
            raise AesegError(f"{e}; nothing was written") from None
    method, cfg, dev = load_model(model, device)
    written: list[Path] = []
    for case, dest in plan:
        try:
            s = build_slice_set([case], cfg.data)
            check_channels(case.image, int(s.images.shape[1]), in_channels)  # a DICOM series has no header check
        except AesegError as e:
            done = f"{len(written)} of {len(plan)} predictions written to {Path(out_dir)}" if written else "nothing was written"
            raise type(e)(f"{e} ({done})") from None
        rec = s.records[0]
        prob = predict_case(method, s, rec, cfg.data.axis, dev)
        write_segmentation(dest, prob > 0.5, rec.geometry, name="Prediction")
        written.append(dest)
        if on_written is not None:
            on_written(dest)
    return written
