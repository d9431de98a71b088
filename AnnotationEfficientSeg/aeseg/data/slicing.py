"""3D → 2D slicing on a chosen axis and exact reassembly.

Axes are named in ITK order, as Slicer and SimpleITK name them: 0 = x (sagittal
slices), 1 = y (coronal), 2 = z (axial, the default). Arrays are numpy ``(C, Z, Y, X)``
(images) or ``(Z, Y, X)`` (labels), so ITK axis ``a`` is numpy spatial axis ``2 - a``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

AXIS_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def _np_axis(axis: int) -> int:
    if axis not in AXIS_NAMES:
        raise ConfigError(f"slice axis must be 0 (sagittal), 1 (coronal) or 2 (axial), not {axis}")
    return 2 - axis


def to_slices(array: np.ndarray, axis: int = 2) -> np.ndarray:
    """``(C, Z, Y, X)`` → ``(N, C, H, W)`` or ``(Z, Y, X)`` → ``(N, H, W)`` along ITK ``axis``."""
    a = _np_axis(axis)
    if array.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(array, 1 + a, 0))
    if array.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(array, a, 0))
    raise ValueError(f"expected a (C,Z,Y,X) or (Z,Y,X) array, got shape {array.shape}")


def from_slices(slices: np.ndarray, axis: int = 2) -> np.ndarray:
    """Exact inverse of :func:`to_slices`: ``(N, C, H, W)`` → ``(C, Z, Y, X)``, ``(N, H, W)`` → ``(Z, Y, X)``."""
    a = _np_axis(axis)
    if slices.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(slices, 0, 1 + a))
    if slices.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(slices, 0, a))
    raise ValueError(f"expected (N,C,H,W) or (N,H,W) slices, got shape {slices.shape}")


def inplane_shape(shape_zyx: tuple[int, int, int], axis: int = 2) -> tuple[int, int]:
    """The (H, W) of one slice of a ``(Z, Y, X)`` volume along ITK ``axis``."""
    a = _np_axis(axis)
    rest = [s for i, s in enumerate(shape_zyx) if i != a]
    return int(rest[0]), int(rest[1])


def inplane_spacing(spacing_xyz: tuple[float, float, float], axis: int = 2) -> tuple[float, float]:
    """Physical (row, column) spacing of a slice along ITK ``axis``: the (H, W) pixel size in mm."""
    a = _np_axis(axis)
    zyx = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    rest = [s for i, s in enumerate(zyx) if i != a]
    return float(rest[0]), float(rest[1])
