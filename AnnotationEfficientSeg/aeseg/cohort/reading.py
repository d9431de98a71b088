"""Reading images and labels with SimpleITK, keeping spacing, origin and direction.

Every image is held as :class:`ImageData`: a float32 array shaped ``(C, Z, Y, X)``
(numpy order; ``C`` is 1 for grey, 3 for RGB; ``Z`` is 1 for a 2D image) and a
:class:`Geometry` in ITK order (x, y, z), always 3D so that 2D and 3D cases share one
code path; ``Geometry.ndim`` remembers whether the file was 2D so outputs can be
written back in the same form. Labels are ``(Z, Y, X)`` integer arrays on the same grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import CohortError
from ..io.names import IMAGE_SUFFIXES, SINGLE_FILE_2D, image_suffix, strip_suffix  # noqa: F401 (re-exported)

# components per pixel → the channels an image gets: grey(+alpha) 1, RGB(A) 3 (alpha dropped)
CHANNELS = {1: 1, 2: 1, 3: 3, 4: 3}


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in physical (LPS) space, ITK axis order (x, y, z)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major
    ndim: int = 3  # 2 for images read from 2D files

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Geometry":
        d = img.GetDimension()
        if d == 2:
            size = (*img.GetSize(), 1)
            spacing = (*img.GetSpacing(), 1.0)
            origin = (*img.GetOrigin(), 0.0)
            d2 = img.GetDirection()
            direction = (d2[0], d2[1], 0.0, d2[2], d2[3], 0.0, 0.0, 0.0, 1.0)
        elif d == 3:
            size, spacing, origin, direction = img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()
        else:
            raise CohortError(f"unsupported image dimension {d}")
        return cls(
            tuple(int(s) for s in size),
            tuple(float(s) for s in spacing),
            tuple(float(s) for s in origin),
            tuple(float(s) for s in direction),
            ndim=d,
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def ijk_to_lps(self) -> np.ndarray:
        """4×4 matrix from voxel index (i, j, k) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        """Copy this geometry onto ``img`` (2D or 3D, matching ``ndim``)."""
        if img.GetDimension() == 2:
            img.SetSpacing(self.spacing[:2])
            img.SetOrigin(self.origin[:2])
            d = self.direction
            img.SetDirection((d[0], d[1], d[3], d[4]))
        else:
            img.SetSpacing(self.spacing)
            img.SetOrigin(self.origin)
            img.SetDirection(self.direction)
        return img

    def same_grid(self, other: "Geometry", tol: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=tol, atol=tol * 10)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def describe_difference(self, other: "Geometry") -> str:
        parts = []
        if self.size != other.size:
            parts.append(f"size {other.size} vs {self.size}")
        if not np.allclose(self.spacing, other.spacing, rtol=1e-3, atol=1e-3):
            parts.append(f"spacing {_fmt(other.spacing)} vs {_fmt(self.spacing)}")
        if not np.allclose(self.origin, other.origin, rtol=1e-3, atol=1e-2):
            parts.append(f"origin {_fmt(other.origin)} vs {_fmt(self.origin)}")
        if not np.allclose(self.direction, other.direction, atol=1e-3):
            parts.append("direction differs")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction), "ndim": self.ndim}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]), int(d.get("ndim", 3)))


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


@dataclass
class ImageData:
    """An image as a ``(C, Z, Y, X)`` float32 array and its geometry."""

    array: np.ndarray
    geometry: Geometry

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])


def _read_sitk(path: Path) -> sitk.Image:
    """Read a file or a DICOM series folder with SimpleITK; CohortError if unreadable."""
    if not path.exists():
        raise CohortError(f"{path}: file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise CohortError(f"{path}: folder holds no DICOM series (a case folder must contain one DICOM series)")
            if len(series) > 1:
                raise CohortError(f"{path}: folder holds {len(series)} DICOM series; keep one series per case folder")
            files = reader.GetGDCMSeriesFileNames(str(path), series[0])
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except CohortError:
        raise
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        msg = next((ln for ln in first if "ERROR" in ln or "Unable" in ln or "Exception" in ln), first[0] if first else "")
        raise CohortError(f"{path}: unreadable image ({msg.strip()[:160]}); check the file is a complete NIfTI/NRRD/MHA/PNG/DICOM") from None


def image_channels(path: str | os.PathLike) -> int | None:
    """The channels :func:`read_image` would give ``path`` (1 grey, 3 colour), from the file's
    header alone; None for a DICOM folder or a header SimpleITK cannot read (reading the
    image then says why)."""
    path = Path(path)
    if not path.is_file():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return CHANNELS.get(int(reader.GetNumberOfComponents()))


def read_image(path: str | os.PathLike) -> ImageData:
    """Read an image (any SimpleITK format or a DICOM series folder) as ``(C, Z, Y, X)``.

    2D RGB(A) images become 3 channels (alpha dropped); 4D images are rejected.
    """
    path = Path(path)
    img = _read_sitk(path)
    if img.GetDimension() > 3:
        raise CohortError(f"{path}: 4D image (size {img.GetSize()}); split it into 3D volumes, one per case")
    if img.GetDimension() == 3 and img.GetSize()[2] == 1 and path.suffix.lower() in SINGLE_FILE_2D:
        img = img[:, :, 0]
    geom = Geometry.from_sitk(img)
    arr = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) or (y, x[, c])
    ncomp = img.GetNumberOfComponentsPerPixel()
    if img.GetDimension() == 2:
        arr = arr[None]
    if ncomp not in CHANNELS:
        raise CohortError(f"{path}: {ncomp} components per pixel; expected grey or RGB")
    if ncomp == 1:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr[..., :CHANNELS[ncomp]], -1, 0)
    return ImageData(np.ascontiguousarray(arr, dtype=np.float32), geom)


def read_label(path: str | os.PathLike, label_value: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a label map as a binary ``(Z, Y, X)`` uint8 array.

    ``label_value`` selects one structure of a multi-label file; ``None`` takes every
    non-zero voxel as foreground. ``.seg.nrrd`` files are read with slicerio (the first
    segment, or the one whose label value is ``label_value``). RGB label images (PNG
    masks saved in colour) are reduced to their first channel.
    """
    path = Path(path)
    if image_suffix(path) == ".seg.nrrd":
        return _read_seg_nrrd(path, label_value)
    img = read_image(path)
    arr = img.array[0]
    if not np.all(np.isfinite(arr)):
        raise CohortError(f"{path}: label contains NaN/Inf values; re-export the label map")
    arr = np.rint(arr).astype(np.int64)
    if label_value is None:
        out = arr != 0
    else:
        out = arr == int(label_value)
    return out.astype(np.uint8), img.geometry


def _read_seg_nrrd(path: Path, label_value: int | None) -> tuple[np.ndarray, Geometry]:
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as e:  # slicerio raises various errors on malformed headers
        raise CohortError(f"{path}: unreadable .seg.nrrd ({e})") from None
    vox = np.asarray(seg["voxels"])
    segments = seg.get("segments", [])
    if label_value is None:
        chosen = segments[:1]
    else:
        chosen = [s for s in segments if int(s.get("labelValue", -1)) == int(label_value)]
    if vox.ndim == 4:  # overlapping segments in layers: (layer, i, j, k)
        layer = int(chosen[0].get("layer", 0)) if chosen else 0
        vox = vox[layer]
    if chosen:
        mask = vox == int(chosen[0]["labelValue"])
    elif label_value is not None:
        mask = vox == int(label_value)
    else:
        mask = vox != 0
    m = np.asarray(seg["ijkToLPS"], dtype=float)
    spacing = tuple(float(np.linalg.norm(m[:3, i])) for i in range(3))
    direction = tuple((m[:3, :3] / np.array(spacing)).reshape(-1).tolist())
    geom = Geometry(tuple(int(s) for s in mask.shape), spacing, tuple(m[:3, 3].tolist()), direction, ndim=3)
    return np.ascontiguousarray(np.transpose(mask, (2, 1, 0))).astype(np.uint8), geom


def to_sitk(array_zyx: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Array in ``(Z, Y, X)`` order (or ``(C, Z, Y, X)``) → SimpleITK image with ``geometry``.

    A geometry read from a 2D file gives back a 2D image.
    """
    arr = np.asarray(array_zyx)
    vector = arr.ndim == 4
    if vector:
        arr = np.moveaxis(arr, 0, -1)
        if arr.shape[-1] == 1:
            arr, vector = arr[..., 0], False
    if geometry.ndim == 2:
        arr = arr[0]
    img = sitk.GetImageFromArray(arr, isVector=vector)
    return geometry.apply_to(img)


def write_image(path: str | os.PathLike, array_zyx: np.ndarray, geometry: Geometry) -> None:
    """Write an array with its geometry atomically (format from the extension)."""
    from ..io.atomic import write_with

    img = to_sitk(array_zyx, geometry)
    write_with(path, lambda tmp: sitk.WriteImage(img, str(tmp), True))
