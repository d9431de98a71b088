"""Batched, invertible 2D augmentations for test-time views (AIDE, MLB-Seg PLE).

Methods that average predictions over augmented views need every view mapped back
to the original frame: AIDE's local label filtering (K rotated/flipped copies,
Wang et al. 2022, "Methods: local label filtering") and MLB-Seg's pseudo-label
enhancement (zoom-in, zoom-outs, a flip). This module draws the random parameters
once (replayable, from a ``torch.Generator``), applies them to a whole batch in one
``affine_grid``/``grid_sample`` call on the tensor's device, and inverts them.

Usage::

    p = sample_affine(x.shape[0], rotation_deg=60, flip_p=0.5, generator=g, device=x.device)
    xa = apply(x, p)                           # images: bilinear
    prob = softmax(net(xa), 1)
    back = invert(prob, p)                     # predictions in the original frame
    valid = coverage(p, x.shape[-2:])          # 1 where the view saw the pixel

    q = fixed_affine(4 * b, zoom=[1.25] * b + [0.8] * b + [0.9] * b + [1.0] * b,
                     hflip=[False] * 3 * b + [True] * b, device=x.device)  # explicit views

Conventions: a transform is flip (left-right ``hflip``, then up-down ``vflip``,
both exact via ``torch.flip``) followed by a rotation by ``angle`` (radians;
+90° equals ``torch.rot90(x, -1, (-2, -1))``, i.e. clockwise as displayed with row 0 on top) and an isotropic zoom (``zoom`` > 1 magnifies:
zoom-in) about the image centre, then an optional ``shift`` of the view window (normalised
input coordinates, (x, y); a random crop of a magnified image). Rotation and zoom are done
in *pixel* units, so they stay rigid on non-square images.

Inverse exactness: flips are undone exactly (bit-identical); a sample with no
rotation and zoom 1 skips resampling altogether, so pure-flip views invert exactly.
Rotations/zooms are undone by resampling with the inverse matrix, which is exact
up to interpolation error (and pixels that left the field of view come back as
``padding_mode`` values; :func:`coverage` tells where). ``mode="nearest"`` is for
label maps. Why hand-written: MONAI's ``RandAffine`` draws one transform per call
(per sample loops to get per-sample parameters and inverses), and torchvision's
functional ops do not take per-sample angles; one batched ``grid_sample`` with
per-sample matrices does both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["AffineParams", "sample_affine", "fixed_affine", "apply", "invert", "coverage"]


@dataclass
class AffineParams:
    """Per-sample transform parameters of a batch (all tensors of shape ``(B,)``)."""

    angle: torch.Tensor  # radians
    zoom: torch.Tensor  # > 1 = zoom in
    hflip: torch.Tensor  # bool, left-right (last axis)
    vflip: torch.Tensor  # bool, up-down (second-to-last axis)
    shift: torch.Tensor | None = None  # (B, 2): the view window's centre in normalised input (x, y); None: centred

    def __len__(self) -> int:
        return int(self.angle.shape[0])

    def to(self, device: torch.device | str) -> "AffineParams":
        return AffineParams(self.angle.to(device), self.zoom.to(device), self.hflip.to(device), self.vflip.to(device),
                            None if self.shift is None else self.shift.to(device))

    def take(self, index: torch.Tensor) -> "AffineParams":
        """The parameters of the samples at ``index``."""
        return AffineParams(self.angle[index], self.zoom[index], self.hflip[index], self.vflip[index],
                            None if self.shift is None else self.shift[index])

    @property
    def resampled(self) -> torch.Tensor:
        """Bool ``(B,)``: samples that need interpolation (rotation, zoom ≠ 1 or a shift)."""
        out = (self.angle != 0) | (self.zoom != 1)
        return out if self.shift is None else out | (self.shift != 0).any(1)

    @staticmethod
    def cat(params: Sequence["AffineParams"]) -> "AffineParams":
        """Concatenate parameter sets (e.g. K views of a batch stacked along dim 0)."""
        fields = [torch.cat([getattr(p, k) for p in params]) for k in ("angle", "zoom", "hflip", "vflip")]
        if all(p.shift is None for p in params):
            return AffineParams(*fields)
        shifts = [p.shift if p.shift is not None else p.angle.new_zeros(len(p), 2) for p in params]
        return AffineParams(*fields, torch.cat(shifts))


def sample_affine(batch: int, rotation_deg: float = 0.0, zoom_range: tuple[float, float] = (1.0, 1.0),
                  flip_p: float = 0.0, vflip_p: float = 0.0, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> AffineParams:
    """Draw ``batch`` random transforms: angle ~ U(−rotation_deg, rotation_deg) degrees,
    zoom ~ U(zoom_range), left-right flip with probability ``flip_p``, up-down flip with ``vflip_p``.

    Random numbers come from ``generator`` on the CPU (so the draw is replayable and
    independent of the device), then move to ``device``."""
    u = torch.rand(4, batch, generator=generator)
    angle = (2 * u[0] - 1) * math.radians(rotation_deg)
    lo, hi = zoom_range
    zoom = lo + (hi - lo) * u[1]
    if lo == hi:
        zoom = torch.full((batch,), float(lo))
    if rotation_deg == 0:
        angle = torch.zeros(batch)
    return AffineParams(angle, zoom, u[2] < flip_p, u[3] < vflip_p).to(device)


def fixed_affine(batch: int, angle_deg: float | Sequence[float] = 0.0, zoom: float | Sequence[float] = 1.0,
                 hflip: bool | Sequence[bool] = False, vflip: bool | Sequence[bool] = False,
                 device: torch.device | str = "cpu") -> AffineParams:
    """Explicit (deterministic) transforms: scalars are broadcast to the batch, sequences
    give one value per sample."""

    def full(v, dtype):
        t = torch.as_tensor(v, dtype=dtype)
        return t.expand(batch).clone() if t.dim() == 0 else t

    return AffineParams(torch.deg2rad(full(angle_deg, torch.float32)), full(zoom, torch.float32),
                        full(hflip, torch.bool), full(vflip, torch.bool)).to(device)


def _flip(x: torch.Tensor, p: AffineParams) -> torch.Tensor:
    """Exact per-sample flips (an involution, so it is its own inverse)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    if p.hflip.any():
        x = torch.where(p.hflip.view(shape), x.flip(-1), x)
    if p.vflip.any():
        x = torch.where(p.vflip.view(shape), x.flip(-2), x)
    return x


def _theta(p: AffineParams, hw: tuple[int, int], inverse: bool, dtype: torch.dtype) -> torch.Tensor:
    """The ``(B, 2, 3)`` sampling matrix in normalised coordinates.

    ``affine_grid`` maps output coordinates to input coordinates. For the forward
    transform, an output pixel at (centred, pixel-unit) position q shows the input at
    R(−angle)·q / zoom; the inverse maps q to zoom·R(angle)·q. Pixel ↔ normalised
    conversion D = diag(W/2, H/2) keeps the rotation rigid: θ = D⁻¹ A D. A ``shift`` s moves
    the window: forward, q shows the input at θ q + s; the inverse maps r to θ⁻¹ (r − s)."""
    h, w = hw
    a = p.angle.to(dtype)
    s = p.zoom.to(dtype)
    if inverse:
        ang, scale = a, s
    else:
        ang, scale = -a, 1.0 / s
    c, sn = torch.cos(ang) * scale, torch.sin(ang) * scale
    # A = [[c, -sn], [sn, c]] in (x, y) pixel order; θ = D⁻¹ A D
    t = torch.zeros(len(p), 2, 3, dtype=dtype, device=p.angle.device)
    t[:, 0, 0] = c
    t[:, 0, 1] = -sn * (h / w)
    t[:, 1, 0] = sn * (w / h)
    t[:, 1, 1] = c
    if p.shift is not None:
        s2 = p.shift.to(dtype)
        t[:, :, 2] = -(t[:, :, :2] @ s2.unsqueeze(-1)).squeeze(-1) if inverse else s2
    return t


def _warp(x: torch.Tensor, p: AffineParams, inverse: bool, mode: str, padding_mode: str) -> torch.Tensor:
    need = p.resampled
    if not need.any():
        return x
    xf = x if x.is_floating_point() else x.float()
    sub = need.nonzero().squeeze(1)
    ps = p.take(sub)
    theta = _theta(ps, x.shape[-2:], inverse, xf.dtype if xf.dtype in (torch.float32, torch.float64) else torch.float32)
    xs = xf[sub]
    grid = F.affine_grid(theta, list(xs.shape), align_corners=False).to(xs.dtype)
    ws = F.grid_sample(xs, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    out = xf.clone()
    out[sub] = ws
    return out.to(x.dtype) if not x.is_floating_point() else out


def apply(x: torch.Tensor, p: AffineParams, mode: str = "bilinear", padding_mode: str = "zeros",
          fill: float = 0.0) -> torch.Tensor:
    """Transform a batch ``(B, C, H, W)``: exact flips, then rotation, zoom and shift (one
    ``grid_sample`` over the samples that need it). Integer label maps need
    ``mode="nearest"`` and keep their dtype. With ``padding_mode="zeros"``, pixels from
    outside the image take the value ``fill`` (e.g. −1, the darkest value of images
    scaled to [−1, 1], as image libraries fill rotated images with black)."""
    if len(p) != x.shape[0]:
        raise ValueError(f"{len(p)} transforms for a batch of {x.shape[0]}")
    x = _flip(x, p)
    if fill != 0.0 and padding_mode == "zeros" and p.resampled.any():
        return _warp(x - fill, p, inverse=False, mode=mode, padding_mode=padding_mode) + fill
    return _warp(x, p, inverse=False, mode=mode, padding_mode=padding_mode)


def invert(y: torch.Tensor, p: AffineParams, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Map a transformed batch (e.g. predictions on augmented views) back to the
    original frame: undo rotation, zoom and shift by resampling, then undo flips exactly."""
    if len(p) != y.shape[0]:
        raise ValueError(f"{len(p)} transforms for a batch of {y.shape[0]}")
    return _flip(_warp(y, p, inverse=True, mode=mode, padding_mode=padding_mode), p)


def coverage(p: AffineParams, hw: tuple[int, int] | torch.Size, device: torch.device | str | None = None) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1]: how much of each original pixel survives the round trip
    :func:`apply` → :func:`invert` (< 1 near corners that rotated or zoomed out of the
    field of view); where it is 1, ``invert(apply(x))`` equals ``x`` up to interpolation
    error.

    To average K inverted views of *predictions*, note that ``invert(prob, p)`` with zero
    padding is already multiplied by its own sampling weight ``invert(ones, p)``: the
    normalised mean is ``Σ invert(prob_k) / Σ invert(ones_k)`` (invert a ones channel
    together with the data to get both from one ``grid_sample``)."""
    dev = device if device is not None else p.angle.device
    ones = torch.ones(len(p), 1, *hw, device=dev)
    return invert(apply(ones, p), p).clamp_(0, 1)
