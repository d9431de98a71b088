"""Accepted corrections: ``cohort/refined/<case>.seg.nrrd``, never overwriting an earlier one.

When a case is accepted again, the current file first moves to
``cohort/refined/history/<case>.<UTC timestamp>.seg.nrrd``. A refined label of the case in
another format (``refined/<case>.nii.gz`` placed by hand, a ``.mhd`` with its data file, a
DICOM folder) moves unchanged, under its own names, into the folder
``cohort/refined/history/<case>.<UTC timestamp>/``; otherwise the cohort would hold two
refined labels for one case. The new file is written to a
temporary name, read back with slicerio and checked (voxels and geometry), and only then
moved into place, so a crash never leaves a half-written refined label.

The Slicer module passes the "Corrected" segment as a numpy array in Slicer's order
``(k, j, i)`` (= ``(Z, Y, X)``) and the volume's IJK→LPS matrix.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from aeseg.io.atomic import plain_mode  # stdlib only: no core requirement needed
from aeseg.io.names import image_suffix, mhd_data_files, strip_suffix  # stdlib only

REFINED_DIR = "refined"
HISTORY_DIR = "history"
SEGMENT_NAME = "Refined"
SEGMENT_COLOUR = (0.75, 0.45, 0.90)
_STAMP = re.compile(r"\d{8}T\d{12}Z(-\d+)?")


@dataclass
class RefinedWrite:
    path: Path  # the new refined/<case>.seg.nrrd
    previous: Path | None  # where the earlier .seg.nrrd version was kept, if there was one
    voxels: int  # foreground voxel count
    set_aside: Path | None = None  # history folder now holding the case's refined files in other formats

    def message(self, case: str) -> str:
        """What the panel says after accepting ``case``."""
        kept = []
        if self.previous is not None:
            kept.append(f"earlier version kept in {REFINED_DIR}/{HISTORY_DIR}/{self.previous.name}")
        if self.set_aside is not None:
            names = ", ".join(sorted(p.name for p in self.set_aside.iterdir()))
            kept.append(f"{names} moved to {REFINED_DIR}/{HISTORY_DIR}/{self.set_aside.name}/")
        return f"Accepted {case} → {self.path}" + (f" ({'; '.join(kept)})" if kept else "")


def refined_path(cohort: str | os.PathLike, case: str) -> Path:
    return Path(cohort) / REFINED_DIR / f"{case}.seg.nrrd"


def history_paths(cohort: str | os.PathLike, case: str) -> list[Path]:
    """Earlier versions of a case's refined label, oldest first.

    A ``.seg.nrrd`` file each, or a folder holding a version in another format.
    """
    d = Path(cohort) / REFINED_DIR / HISTORY_DIR
    if not d.is_dir():
        return []
    prefix = f"{case}."
    found = []
    for p in d.iterdir():
        if not p.name.startswith(prefix):
            continue
        rest = p.name[len(prefix):]
        if p.is_file() and rest.endswith(".seg.nrrd") and _is_stamp(rest[: -len(".seg.nrrd")]):
            found.append((rest[: -len(".seg.nrrd")], p))
        elif p.is_dir() and _is_stamp(rest):
            found.append((rest, p))
    return [p for _, p in sorted(found)]


def other_formats(cohort: str | os.PathLike, case: str) -> list[Path]:
    """The case's refined label files other than ``refined/<case>.seg.nrrd``.

    Every image file whose case id is ``case`` (with a ``.mhd`` header's data file) and a
    DICOM folder named ``case``: what the cohort reader would also take as this case's
    refined label.
    """
    d = Path(cohort) / REFINED_DIR
    if not d.is_dir():
        return []
    out: list[Path] = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or p.name == HISTORY_DIR:
            continue
        if p.is_file() and image_suffix(p) not in (None, ".seg.nrrd") and strip_suffix(p) == case:
            out.append(p)
            if image_suffix(p) == ".mhd":
                out.extend(f for f in mhd_data_files(p) if f not in out)
        elif p.is_dir() and p.name == case:
            out.append(p)
    return out


def _is_stamp(s: str) -> bool:
    """``20240102T030405123456Z``, or with a ``-N`` suffix (two versions in one microsecond)."""
    return _STAMP.fullmatch(s) is not None


def _utc_stamp() -> str:
    t = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f"{int((t % 1) * 1e6):06d}Z"


def _check_case_name(case: str) -> None:
    if not case or case in (".", "..") or any(c in case for c in "/\\\0") or case.startswith("."):
        raise ValueError(f"invalid case name {case!r}")


def write_refined(
    cohort: str | os.PathLike,
    case: str,
    mask_kji: np.ndarray,
    ijk_to_lps: np.ndarray,
    *,
    segment_name: str = SEGMENT_NAME,
    colour: tuple[float, float, float] = SEGMENT_COLOUR,
    tags: Mapping[str, str] | None = None,
) -> RefinedWrite:
    """Write ``mask_kji`` (binary, Slicer order ``(k, j, i)``) as ``cohort/refined/<case>.seg.nrrd``.

    An existing file is kept in ``refined/history/`` first. Returns where things went.
    """
    import slicerio

    _check_case_name(case)
    mask = np.asarray(mask_kji)
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    if mask.ndim != 3:
        raise ValueError(f"mask must be 2D or 3D, got shape {mask.shape}")
    if mask.dtype != bool:
        values = np.unique(mask)
        if not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"mask must be binary, found values {values[:10].tolist()}")
    m = np.asarray(ijk_to_lps, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("ijk_to_lps must be an invertible 4x4 matrix")
    voxels = np.ascontiguousarray(np.transpose(mask.astype(bool), (2, 1, 0))).astype(np.uint8)  # (k,j,i) → (i,j,k)

    # tags are stored as "key:value|..." in the NRRD header: keys lose ':' and '|', values lose '|'
    seg_tags = {"AESeg.Case": case, "AESeg.AcceptedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    seg_tags.update({str(k).replace(":", "_").replace("|", "_"): str(v).replace("|", "/")
                     for k, v in (tags or {}).items()})
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": m,
        "segments": [{
            "id": "Segment_1", "name": segment_name, "nameAutoGenerated": False,
            "color": [float(c) for c in colour], "colorAutoGenerated": False,
            "labelValue": 1, "layer": 0, "status": "completed", "tags": seg_tags,
        }],
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }

    final = refined_path(cohort, case)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".seg.nrrd", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    previous: Path | None = None
    try:
        slicerio.write_segmentation(str(tmp), segmentation)
        back = slicerio.read_segmentation(str(tmp))
        if not np.allclose(back["ijkToLPS"], m, atol=1e-6):
            raise RuntimeError(f"{final}: geometry did not read back intact")
        if not np.array_equal(slicerio.segment_mask(back, segment_name), voxels.astype(bool)):
            raise RuntimeError(f"{final}: voxels did not read back intact")
        os.chmod(tmp, plain_mode(final))
        stamp = _utc_stamp()
        others = other_formats(cohort, case)
        set_aside = _set_aside(cohort, case, others, stamp) if others else None
        if final.exists():
            previous = _keep_previous(cohort, case, final, stamp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return RefinedWrite(final, previous, int(voxels.sum()), set_aside)


def _free_name(hist: Path, case: str, stamp: str, suffix: str) -> Path:
    dest = hist / f"{case}.{stamp}{suffix}"
    n = 1
    while dest.exists():
        dest = hist / f"{case}.{stamp}-{n}{suffix}"
        n += 1
    return dest


def _set_aside(cohort: str | os.PathLike, case: str, files: list[Path], stamp: str) -> Path:
    """Move ``files`` (the case's refined label in other formats) unchanged into a history folder."""
    hist = Path(cohort) / REFINED_DIR / HISTORY_DIR
    hist.mkdir(parents=True, exist_ok=True)
    dest = _free_name(hist, case, stamp, "")
    dest.mkdir()
    for f in files:
        try:
            os.replace(f, dest / f.name)
        except OSError as e:
            raise OSError(f"could not move {f} into {dest}: {e}; move it out of refined/ by hand "
                          f"(files already moved are in {dest})") from e
    return dest


def _keep_previous(cohort: str | os.PathLike, case: str, current: Path, stamp: str) -> Path:
    hist = Path(cohort) / REFINED_DIR / HISTORY_DIR
    hist.mkdir(parents=True, exist_ok=True)
    dest = _free_name(hist, case, stamp, ".seg.nrrd")
    # A hard link then unlink never leaves a moment without either file; fall back to a move.
    try:
        os.link(current, dest)
    except OSError:
        os.replace(current, dest)
    return dest


def read_refined(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """A refined file's mask in ``(k, j, i)`` order, its IJK→LPS matrix and its segment metadata."""
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    segment = seg["segments"][0]
    mask_ijk = slicerio.segment_mask(seg, segment["id"])
    return np.transpose(mask_ijk, (2, 1, 0)), np.asarray(seg["ijkToLPS"]), segment
