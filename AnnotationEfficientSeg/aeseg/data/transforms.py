"""Preprocessing as MONAI transforms: intensity normalisation to [-1, 1] and in-plane resize.

Normalisation modes:
- ``percentile`` (MR, ultrasound, X-ray): the 1st–99th percentiles of the case → [-1, 1], clipped;
- ``ct``: a Hounsfield window (default soft tissue, -160…240 HU) → [-1, 1], clipped;
- ``minmax``: the case's range → [-1, 1];
- ``window``: a fixed intensity window ``[window_low, window_high]`` → [-1, 1], clipped, the
  same for every case (8-bit images: 0…255). Use it when the presence or absence of the
  target changes a case's own percentiles or range: a bright lesion moves the 99th
  percentile, so per-case scaling gives present and absent images different contrast
  (measured on ``lesion_pa``: see ``benchmarks/plans/presence_absence.py``).
Normalisation is computed per case over the whole volume, so all slices of a case
share one mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, ScaleIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles

from ..errors import ConfigError


@dataclass
class DataConfig:
    """How cases become training slices."""

    size: int = field(default=64, metadata={"help": "in-plane size (pixels) slices are resized to", "min": 16, "max": 1024})
    axis: int = field(default=2, metadata={"help": "slice axis: 0 sagittal, 1 coronal, 2 axial", "min": 0, "max": 2})
    intensity: Literal["percentile", "ct", "minmax", "window"] = field(default="percentile", metadata={"help": "intensity normalisation"})
    ct_window_low: float = field(default=-160.0, metadata={"help": "CT window lower bound (HU)"})
    ct_window_high: float = field(default=240.0, metadata={"help": "CT window upper bound (HU)"})
    window_low: float = field(default=0.0, metadata={"help": "fixed window lower bound for 'window' normalisation (image units)"})
    window_high: float = field(default=255.0, metadata={"help": "fixed window upper bound for 'window' normalisation (image units; 255 for 8-bit images)"})
    percentile_low: float = field(default=1.0, metadata={"help": "lower percentile for 'percentile' normalisation", "min": 0, "max": 50})
    percentile_high: float = field(default=99.0, metadata={"help": "upper percentile for 'percentile' normalisation", "min": 50, "max": 100})
    label_value: int = field(default=0, metadata={"help": "label value of the target in multi-label files (0: any non-zero)", "min": 0})


def intensity_transform(cfg: DataConfig):
    """The MONAI transform mapping a ``(C, ...)`` image to [-1, 1] for ``cfg.intensity``."""
    if cfg.intensity == "percentile":
        return ScaleIntensityRangePercentiles(lower=cfg.percentile_low, upper=cfg.percentile_high,
                                              b_min=-1.0, b_max=1.0, clip=True, channel_wise=True)
    if cfg.intensity in ("ct", "window"):  # a fixed window: HU for CT, image units otherwise
        ct = cfg.intensity == "ct"
        low, high = (cfg.ct_window_low, cfg.ct_window_high) if ct else (cfg.window_low, cfg.window_high)
        prefix = "ct_window" if ct else "window"
        if high <= low:
            raise ConfigError(f"{prefix}_high must be above {prefix}_low")
        return ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True)
    if cfg.intensity == "minmax":
        return ScaleIntensity(minv=-1.0, maxv=1.0, channel_wise=True)
    raise ConfigError(f"unknown intensity normalisation '{cfg.intensity}'; use percentile, ct, minmax or window")


def normalise(image_czyx: np.ndarray, cfg: DataConfig) -> np.ndarray:
    out = intensity_transform(cfg)(image_czyx)
    out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return np.ascontiguousarray(out, dtype=np.float32)


def resize_slices(slices_nchw: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize ``(N, C, H, W)`` slices to ``(N, C, size, size)`` with MONAI ``Resize``
    (``bilinear`` for images, ``nearest`` for labels)."""
    n, c, h, w = slices_nchw.shape
    if (h, w) == (size, size):
        return slices_nchw.copy()
    # MONAI resizes every leading "channel" alike: fold (N, C) into it for one call.
    rs = Resize(spatial_size=(size, size), mode=mode, anti_aliasing=False)
    flat = np.ascontiguousarray(slices_nchw.reshape(n * c, h, w), dtype=np.float32)
    out = rs(flat)
    out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return out.reshape(n, c, size, size).astype(slices_nchw.dtype, copy=False)


def resize_probabilities(prob_nchw: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Probabilities at training size → the case's in-plane size (bilinear), for argmax
    in the original geometry."""
    if tuple(prob_nchw.shape[-2:]) == tuple(hw):
        return prob_nchw
    return F.interpolate(prob_nchw, size=hw, mode="bilinear", align_corners=False)
