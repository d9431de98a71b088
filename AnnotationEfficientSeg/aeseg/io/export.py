"""Exporting labels (e.g. refined or pseudo labels) for use outside the extension.

Formats:

* ``"nifti"``: ``<out>/<case>.nii.gz`` uint8 label maps (0/1) on the label file's grid
  (a label read from a 2D file is written as a 2D NIfTI);
* ``"seg.nrrd"``: ``<out>/<case>.seg.nrrd`` Slicer segmentations with one segment;
* ``"nnunet"``: an nnU-Net v2 raw dataset, ``imagesTr/<case>_0000.nii.gz`` (plus
  ``_0001``, ``_0002`` for the G and B channels of RGB images), ``labelsTr/<case>.nii.gz``
  and ``dataset.json``. Images and labels are written on the image's grid (the label
  must lie on it), so nnU-Net's geometry checks pass.

Everything is checked (format, case ids, images present) before the first file is
written, and every file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cohort.reading import Geometry, read_image, read_label, write_image
from ..errors import AesegError
from .atomic import write_json
from .segmentation import Segment, write_seg_nrrd

FORMATS = ("nifti", "seg.nrrd", "nnunet")
RGB_CHANNEL_NAMES = {"0": "R", "1": "G", "2": "B"}
GREY_CHANNEL_NAMES = {"0": "image"}


@dataclass
class ExportItem:
    """One case to export: its label file and (needed for nnU-Net) its image."""

    case_id: str
    label_path: Path
    image_path: Path | None = None


def export_labels(items: list[ExportItem], out_dir: str | os.PathLike, fmt: str, *,
                  segment_name: str = "Refined", target_name: str = "target",
                  channel_names: dict[str, str] | None = None, label_value: int | None = None,
                  overwrite: bool = False) -> list[Path]:
    """Export each item's label to ``out_dir`` in ``fmt``; returns the written paths.

    ``segment_name`` names the segment in ``.seg.nrrd`` files; ``target_name`` is the
    foreground label in nnU-Net's ``dataset.json`` (background is 0, target 1);
    ``channel_names`` overrides nnU-Net's channel names (default ``{"0": "image"}`` for
    grey images, R/G/B for colour; use ``{"0": "CT"}`` for nnU-Net's CT normalisation).
    ``label_value`` selects one structure of multi-label files.

    Raises :class:`~aeseg.errors.AesegError` for an unknown format, duplicate or unsafe
    case ids, nnU-Net items without an image, and a non-empty ``out_dir`` unless
    ``overwrite`` (which replaces files of the same name and leaves others alone).
    """
    fmt = _check_format(fmt)
    _check_items(items, fmt)
    if fmt == "nnunet" and (not target_name or target_name == "background"):
        raise AesegError(f"target_name '{target_name}' is not usable; nnU-Net reserves 'background' for label 0")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AesegError(f"export folder {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AesegError(f"export folder {out} is not empty; choose an empty folder or allow overwriting")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "nifti":
        return [_export_nifti(it, out, label_value) for it in items]
    if fmt == "seg.nrrd":
        return [_export_seg_nrrd(it, out, segment_name, label_value) for it in items]
    return _export_nnunet(items, out, target_name, channel_names, label_value)


def _check_format(fmt: str) -> str:
    f = str(fmt).strip().lower().lstrip(".")
    if f not in FORMATS:
        raise AesegError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    return f


def _check_items(items: list[ExportItem], fmt: str) -> None:
    if not items:
        raise AesegError("nothing to export: no cases given")
    seen: set[str] = set()
    for it in items:
        cid = str(it.case_id)
        if not cid or cid in (".", "..") or any(c in cid for c in "/\\") or cid != cid.strip():
            raise AesegError(f"case id '{cid}' cannot be used as a file name")
        if cid in seen:
            raise AesegError(f"case '{cid}' is listed twice for export")
        seen.add(cid)
    if fmt == "nnunet":
        missing = [it.case_id for it in items if it.image_path is None]
        if missing:
            raise AesegError(f"nnU-Net export needs the image of every case; no image for: {', '.join(missing)}")


def _read_binary(item: ExportItem, label_value: int | None) -> tuple[np.ndarray, Geometry]:
    mask, geom = read_label(item.label_path, label_value)
    return (mask != 0).astype(np.uint8), geom


def _export_nifti(item: ExportItem, out: Path, label_value: int | None) -> Path:
    mask, geom = _read_binary(item, label_value)
    path = out / f"{item.case_id}.nii.gz"
    write_image(path, mask, geom)
    return path


def _export_seg_nrrd(item: ExportItem, out: Path, segment_name: str, label_value: int | None) -> Path:
    mask, geom = _read_binary(item, label_value)
    path = out / f"{item.case_id}.seg.nrrd"
    write_seg_nrrd(path, [Segment(segment_name, mask)], geom)
    return path


def _export_nnunet(items: list[ExportItem], out: Path, target_name: str,
                   channel_names: dict[str, str] | None, label_value: int | None) -> list[Path]:
    written: list[Path] = []
    n_channels: int | None = None
    names: dict[str, str] = {}
    first_case = ""
    for it in items:
        image = read_image(it.image_path)  # type: ignore[arg-type]  # checked in _check_items
        mask, label_geom = _read_binary(it, label_value)
        if n_channels is None:
            n_channels, first_case = image.channels, it.case_id
            names = channel_names or (RGB_CHANNEL_NAMES if n_channels == 3 else GREY_CHANNEL_NAMES)
            if len(names) != n_channels:
                raise AesegError(f"channel_names has {len(names)} entries but the images have "
                                 f"{n_channels} channel(s)")
        elif image.channels != n_channels:
            raise AesegError(f"case '{it.case_id}': image has {image.channels} channel(s) but case "
                             f"'{first_case}' has {n_channels}; nnU-Net needs the same channels for every case")
        if mask.shape != image.geometry.shape_zyx or not image.geometry.same_grid(label_geom):
            raise AesegError(f"case '{it.case_id}': label is not on the image grid "
                             f"({image.geometry.describe_difference(label_geom)}; label vs image)")
        for c in range(image.channels):
            path = out / "imagesTr" / f"{it.case_id}_{c:04d}.nii.gz"
            write_image(path, image.array[c], image.geometry)
            written.append(path)
        path = out / "labelsTr" / f"{it.case_id}.nii.gz"
        write_image(path, mask, image.geometry)
        written.append(path)
    dataset = {
        "channel_names": {str(k): str(v) for k, v in names.items()},
        "labels": {"background": 0, target_name: 1},
        "numTraining": len(items),
        "file_ending": ".nii.gz",
    }
    path = out / "dataset.json"
    write_json(path, dataset)
    written.append(path)
    return written
