"""Synthetic label noise with a calibrated strength (benchmarks only).

Implements methods.md, ``meta_reweight``, "Noise synthesis for benchmarks": the MLB-Seg
paper (seed 003, following Shi et al. 2021) corrupts true masks by a random rotation and
a random erosion or dilation, at three levels whose mean Dice against the truth is
0.41 / 0.62 / 0.80. Here one scalar ``strength`` in [0, 1] scales every part of the
corruption, and :func:`calibrate_corruption` finds by bisection the strength whose mean
Dice over a set of masks hits a target.

How a mask is corrupted (:func:`corrupt_mask`), all in physical units when a spacing is
given (pixels otherwise), on 2D masks or slice-wise on 3D ``(Z, Y, X)`` masks with one
transform for the whole volume:

1. the mask becomes a signed distance map (scipy ``distance_transform_edt``, negative
   inside), so that every step below is continuous in ``strength``;
2. rotation about the mask's centroid, in-plane, by ``strength · 30° · u``, u ~ U(−1, 1);
3. erosion or dilation (fair coin) by ``strength · 2 · r_eq · m``, m ~ U(0.3, 1), where
   ``r_eq`` is the equivalent radius of the mask (mean over non-empty slices of
   √(area/π)); erosion is capped at 0.85 × the mask's largest inscribed radius so that
   something is always left. Erosion/dilation by a distance is the threshold of the
   distance map, i.e. morphology with a disk of that radius;
4. above strength 0.5, boundary jitter: the distance map is resampled through a smooth
   random displacement field (Gaussian-smoothed noise, correlation length ≈ 0.5 · r_eq,
   rms amplitude ``0.6 · r_eq · (strength − 0.5) / 0.5`` per axis), an elastic
   deformation that moves the contour locally. Without it, mean Dice 0.41 would need
   near-total erosion of half of the cases.

The random numbers a case draws do not depend on ``strength`` (common random numbers), so
for a fixed seed the mean Dice is a deterministic, almost monotone function of
``strength`` and bisection converges; :func:`corrupt_masks` with the calibrated strength
and the same seed reproduces exactly the calibrated mean Dice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import ConfigError

NOISE_LEVELS: dict[str, float] = {"high": 0.41, "mid": 0.62, "low": 0.80}
"""Named noise levels of the MLB-Seg paper → target mean Dice of the noisy labels."""

MAX_ROTATION_DEG = 30.0
MORPH_GAIN = 2.0
EROSION_CAP = 0.85
JITTER_GAIN = 0.6
JITTER_START = 0.5
_FAR = 1e6  # distance used for slices without a boundary (empty or full)


def resolve_noise(noise: float | str) -> float:
    """Target mean Dice from a level name (``high``/``mid``/``low``) or a number in (0, 1)."""
    if isinstance(noise, str):
        key = noise.strip().lower()
        if key in NOISE_LEVELS:
            return NOISE_LEVELS[key]
        try:
            noise = float(key)
        except ValueError:
            raise ConfigError(f"unknown noise level '{noise}'; use one of {', '.join(NOISE_LEVELS)} "
                              "or a target mean Dice in (0, 1)") from None
    value = float(noise)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"noise target mean Dice must be in (0, 1), got {value}")
    return value


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _as_zyx(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 2:
        return m[None]
    if m.ndim == 3:
        return m
    raise ConfigError(f"corrupt_mask expects a 2D (Y, X) or 3D (Z, Y, X) mask, got shape {m.shape}")


def _spacing_yx(spacing_xy: Sequence[float] | None) -> tuple[float, float]:
    if spacing_xy is None:
        return (1.0, 1.0)
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    if sx <= 0 or sy <= 0:
        raise ConfigError(f"spacing must be positive, got {tuple(spacing_xy)}")
    return (sy, sx)


def signed_distance(mask_zyx: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Slice-wise in-plane signed distance to the mask boundary (negative inside).

    Boundary pixels sit at ±half a pixel so that ``sdf < 0`` gives back the mask exactly.
    """
    m = np.asarray(mask_zyx, dtype=bool)
    out = np.empty(m.shape, dtype=np.float64)
    half = 0.5 * min(spacing_yx)
    for z in range(m.shape[0]):
        s = m[z]
        if not s.any():
            out[z] = _FAR
        elif s.all():
            out[z] = -_FAR
        else:
            inside = ndimage.distance_transform_edt(s, sampling=spacing_yx)
            outside = ndimage.distance_transform_edt(~s, sampling=spacing_yx)
            out[z] = np.where(s, -(inside - half), outside - half)
    return out


def equivalent_radius(mask_zyx: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """Mean over non-empty slices of √(area/π), in the units of ``spacing_yx``."""
    m = np.asarray(mask_zyx, dtype=bool)
    areas = m.reshape(m.shape[0], -1).sum(axis=1).astype(float) * spacing_yx[0] * spacing_yx[1]
    areas = areas[areas > 0]
    return float(np.mean(np.sqrt(areas / math.pi))) if areas.size else 0.0


@dataclass
class PreparedCorruption:
    """One mask with its random draws, ready to be corrupted at any strength.

    The draws (rotation direction/size, erosion vs dilation, magnitude, displacement
    field) are fixed at preparation, so :meth:`apply` is a deterministic function of
    ``strength``.
    """

    mask: np.ndarray  # (Z, Y, X) bool
    squeeze: bool  # the input was 2D
    sdf: np.ndarray  # signed distance, physical units (pixels without spacing)
    centre_yx: tuple[float, float]  # index coordinates of the centroid
    spacing_yx: tuple[float, float]
    r_eq: float  # equivalent radius
    depth: float  # largest inscribed radius
    u_rot: float
    dilate: bool
    u_mag: float
    displacement: np.ndarray  # (2, Z, Y, X) unit-rms smoothed noise, physical units per axis (y, x)

    @property
    def original(self) -> np.ndarray:
        """The uncorrupted mask in the input's shape (bool)."""
        return self.mask[0] if self.squeeze else self.mask

    def apply(self, strength: float) -> np.ndarray:
        """The corrupted mask (uint8, same shape as the input) at ``strength`` in [0, 1]."""
        s = float(np.clip(strength, 0.0, 1.0))
        if self.r_eq == 0.0 or s == 0.0:
            out = self.mask
        else:
            field = self._resampled_sdf(s)
            mag = s * MORPH_GAIN * self.r_eq * self.u_mag
            if self.dilate:
                field = field - mag
            else:
                field = field + min(mag, EROSION_CAP * self.depth)
            out = field < 0
        out = out.astype(np.uint8)
        return out[0] if self.squeeze else out

    def _resampled_sdf(self, s: float) -> np.ndarray:
        """The distance map rotated about the centroid and warped by the jitter field."""
        angle = math.radians(MAX_ROTATION_DEG) * s * self.u_rot
        jitter = JITTER_GAIN * self.r_eq * max(0.0, (s - JITTER_START) / (1.0 - JITTER_START))
        sy, sx = self.spacing_yx
        cy, cx = self.centre_yx
        z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in self.sdf.shape), indexing="ij")
        # output point o (physical, relative to the centroid) samples the input at R⁻¹ o + d(o)
        py, px = (y - cy) * sy, (x - cx) * sx
        c, sn = math.cos(angle), math.sin(angle)
        qy = c * py - sn * px
        qx = sn * py + c * px
        if jitter > 0:
            qy = qy + jitter * self.displacement[0]
            qx = qx + jitter * self.displacement[1]
        coords = np.stack([z, qy / sy + cy, qx / sx + cx])
        return ndimage.map_coordinates(self.sdf, coords, order=1, mode="nearest")


def prepare_corruption(mask: np.ndarray, rng: np.random.Generator,
                       spacing_xy: Sequence[float] | None = None) -> PreparedCorruption:
    """Draw the random parameters of one mask's corruption (see the module docstring)."""
    squeeze = np.asarray(mask).ndim == 2
    m = _as_zyx(mask).astype(bool)
    spacing_yx = _spacing_yx(spacing_xy)
    u_rot = float(rng.uniform(-1.0, 1.0))
    dilate = bool(rng.random() < 0.5)
    u_mag = float(rng.uniform(0.3, 1.0))
    noise = rng.standard_normal((2, *m.shape))
    r_eq = equivalent_radius(m, spacing_yx)
    if r_eq == 0.0:
        return PreparedCorruption(m, squeeze, np.full(m.shape, _FAR), (0.0, 0.0), spacing_yx, 0.0, 0.0,
                                  u_rot, dilate, u_mag, np.zeros((2, *m.shape)))
    sdf = signed_distance(m, spacing_yx)
    depth = float(-sdf[m].min())
    sigma_px = max(1.0, 0.5 * r_eq / min(spacing_yx))
    sigma = (0.7 if m.shape[0] > 1 else 0.0, sigma_px, sigma_px)
    disp = np.stack([ndimage.gaussian_filter(n, sigma=sigma, mode="reflect") for n in noise])
    disp /= max(float(np.sqrt(np.mean(disp ** 2))), 1e-12)
    _, cy, cx = ndimage.center_of_mass(m)
    return PreparedCorruption(m, squeeze, sdf, (float(cy), float(cx)), spacing_yx, r_eq, depth,
                              u_rot, dilate, u_mag, disp)


def corrupt_mask(mask: np.ndarray, strength: float, rng: np.random.Generator,
                 spacing_xy: Sequence[float] | None = None) -> np.ndarray:
    """Corrupt a binary mask: rotation, erosion or dilation, and (strength > 0.5) boundary jitter.

    ``mask`` is 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` (slice-wise, one transform for the whole
    volume); ``strength`` in [0, 1] (0 returns the mask unchanged); ``spacing_xy`` the
    in-plane pixel size (x, y) so that rotations and distances are physical. Returns a
    uint8 mask of the same shape. See the module docstring for the exact model.
    """
    return prepare_corruption(mask, rng, spacing_xy).apply(strength)


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0xC0, int(index)])


def corrupt_masks(masks: Sequence[np.ndarray], strength: float, seed: int,
                  spacing_xy: Sequence[float] | None = None) -> list[np.ndarray]:
    """Corrupt every mask at one strength; mask ``i`` draws from a generator keyed by (seed, i)."""
    return [corrupt_mask(m, strength, _case_rng(seed, i), spacing_xy) for i, m in enumerate(masks)]


def _mean_dice(prepared: list[PreparedCorruption], strength: float) -> float:
    return float(np.mean([dice(p.apply(strength), p.original) for p in prepared]))


def calibrate_corruption(masks: Sequence[np.ndarray], target_dice: float, seed: int,
                         spacing_xy: Sequence[float] | None = None, tol: float = 0.005,
                         max_iter: int = 40) -> float:
    """Strength at which :func:`corrupt_masks` (same ``seed``) gives mean Dice ≈ ``target_dice``.

    Bisection on [0, 1] of the mean Dice between corrupted and true masks, stopping when it
    is within ``tol`` of the target (or after ``max_iter`` halvings; the closest strength
    seen is returned). Raises ConfigError when the target is out of (0, 1), there are no
    masks, or even strength 1 keeps the mean Dice above the target.
    """
    target = float(target_dice)
    if not 0.0 < target < 1.0:
        raise ConfigError(f"target mean Dice must be in (0, 1), got {target}")
    if len(masks) == 0:
        raise ConfigError("calibrate_corruption needs at least one mask")
    prepared = [prepare_corruption(m, _case_rng(seed, i), spacing_xy) for i, m in enumerate(masks)]
    if all(p.r_eq == 0.0 for p in prepared):
        raise ConfigError("calibrate_corruption: every mask is empty; nothing to corrupt")
    lo, hi = 0.0, 1.0
    f_hi = _mean_dice(prepared, hi)
    if f_hi > target + tol:
        raise ConfigError(f"target mean Dice {target:.3f} is unreachable: the strongest corruption gives {f_hi:.3f}")
    best_s, best_err = hi, abs(f_hi - target)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        f = _mean_dice(prepared, mid)
        err = abs(f - target)
        if err < best_err:
            best_s, best_err = mid, err
        if err <= tol:
            break
        if f > target:
            lo = mid
        else:
            hi = mid
    return best_s
