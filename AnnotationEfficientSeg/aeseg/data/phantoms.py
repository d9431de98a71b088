"""Seeded phantom cohorts for the benchmarks (docs/benchmarks.md, "Phantom tasks").

:func:`make_phantom_cohort` writes a real cohort folder (``images/``, ``labels/``,
``noisy_labels/``, ``aux_masks/``, ``truth/``, ``cohort.csv``, plus ``phantom.json`` with
the configuration and what was achieved) that :func:`aeseg.cohort.load_cohort` reads.
Five tasks (:data:`TASKS`):

``ellipse_us``
    2D ultrasound-like images (``.mha``, anisotropic spacing) of a fetal-head-like
    ellipse: skull echo with weak and missing segments, speckle, attenuation with
    depth, bright clutter. No training labels; ``aux_masks/`` holds unpaired ellipses
    from the ellipse model (:func:`sample_ellipse_masks`).
``organ_ct``
    2D CT-like slices (``.nrrd``, Hounsfield-like values) of a body outline, a smooth
    random-Fourier organ and neighbouring structures. No training labels;
    ``aux_masks/`` holds unpaired organ masks from a shifted shape distribution.
``noisy_organ``
    3D CT-like volumes (``.nii.gz``, spacing 1.2 × 1.2 × 3 mm, non-zero origin) whose
    organ changes smoothly across slices; settings ``noisy`` / ``semi`` / ``mixed`` give
    clean, noisy (calibrated corruption, :mod:`aeseg.data.corruption`) and unlabelled
    training cases.
``lesion_pa``
    2D grey ``.png`` tissue images, ``present`` (1–3 lesions that push the surrounding
    texture outward and are brighter or darker) or ``absent``; masks for a small
    fraction of the present training images.
``domain_shift``
    organ scenes rendered with a CT-like (``source``) or an MR-like (``target``)
    intensity model; scarce source labels, unlabelled target.

Every task has train / val / test splits (cases ``train_000``, ``val_000``, …); val
cases carry clean labels (model selection), test cases none; every case has its true
mask in ``truth/`` on the image grid, in the image's format (PNG masks as 0/255).
Training labels: ``ellipse_us`` and ``organ_ct`` none; ``noisy_organ`` the first
``n_clean`` clean, then noisy (``noisy``), none (``semi``) or half noisy, half none
(``mixed``); ``lesion_pa`` even-numbered cases are present, odd absent in every split,
and the first present training images are labelled; ``domain_shift`` the first half
(rounded up) of the training cases are source, the first ``n_clean`` of them labelled,
and val / test cases alternate source, target. A case's content depends only on (seed, task, split, case
index), so changing the size of one split does not change the cases of another. The
same configuration gives byte-identical files.

Phantom scale: physical sizes are scaled down so that a whole scene fits a 64–96 px
image; the fetal-head ellipse ranges are the paper's multiplied by
:data:`US_PHANTOM_SCALE` (see :data:`PHANTOM_HEAD`).
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..cohort.reading import Geometry
from ..cohort.reading import write_image
from ..cohort.manifest import CSV_COLUMNS
from ..errors import ConfigError
from ..io.atomic import write_json, write_text
from .corruption import (  # noqa: F401  (re-exported: the corruption belongs to the phantoms' API)
    NOISE_LEVELS,
    calibrate_corruption,
    corrupt_mask,
    corrupt_masks,
    dice,
    resolve_noise,
)

TASKS: tuple[str, ...] = ("ellipse_us", "organ_ct", "noisy_organ", "lesion_pa", "domain_shift")
SETTINGS: tuple[str, ...] = ("noisy", "semi", "mixed")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_TASKS_2D_ONLY = ("ellipse_us", "lesion_pa", "organ_ct")
_MANAGED = ("images", "labels", "noisy_labels", "aux_masks", "truth", "cohort.csv", "phantom.json")
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate. ``None`` fields take the task's defaults (:meth:`resolved`).

    - ``size``: in-plane pixels (square images); ``n_slices``: slices of 3D tasks
      (``noisy_organ`` default 6; ``domain_shift`` is 2D unless ``n_slices`` > 1; other
      tasks are 2D only).
    - ``setting`` (``noisy_organ`` only): ``noisy`` (default), ``semi`` or ``mixed``.
    - ``noise`` (``noisy_organ`` with noisy labels): target mean Dice of the noisy labels,
      a number in (0, 1) or ``high`` / ``mid`` / ``low`` (0.41 / 0.62 / 0.80); default mid.
    - ``n_clean``: clean training labels (``noisy_organ``: default 4; ``domain_shift``:
      labelled source cases, default 6); ``annotated_fraction``: share of present
      training images of ``lesion_pa`` with a mask (at least one).
    - ``n_aux``: unpaired auxiliary masks (``ellipse_us``, ``organ_ct``); default n_train.
    - ``us_omit`` (``ellipse_us`` only): image features left out, comma-separated, from
      :data:`US_FEATURES` (``fluid``, ``clutter``, ``skull_gaps``), to measure what each
      costs a method; the heads and their true masks stay the same.
    """

    task: str
    seed: int = 0
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    size: int = 64
    n_slices: int | None = None
    setting: str | None = None
    noise: float | str | None = None
    n_clean: int | None = None
    annotated_fraction: float = 0.05
    n_aux: int | None = None
    us_omit: str | None = None

    def resolved(self) -> "PhantomConfig":
        """A copy with every task default filled in; ConfigError for invalid values."""
        if self.task not in TASKS:
            raise ConfigError(f"unknown phantom task '{self.task}'; choose one of: {', '.join(TASKS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"phantom seed must be a non-negative integer, got {self.seed!r}")
        three_d = self.task == "noisy_organ"
        n_train = _count("n_train", self.n_train, 24 if three_d else 60, minimum=1)
        n_val = _count("n_val", self.n_val, 6 if three_d else 10)
        n_test = _count("n_test", self.n_test, 10 if three_d else 20)
        if not 32 <= int(self.size) <= 512:
            raise ConfigError(f"phantom size must be between 32 and 512 px, got {self.size}")
        n_slices = self.n_slices
        if self.task in _TASKS_2D_ONLY:
            if n_slices not in (None, 1):
                raise ConfigError(f"task '{self.task}' is 2D; n_slices must be 1 or unset (got {n_slices})")
            n_slices = 1
        else:
            n_slices = _count("n_slices", n_slices, 6 if three_d else 1, minimum=1)
        setting, noise = self.setting, self.noise
        if self.task == "noisy_organ":
            setting = (setting or "noisy").lower()
            if setting not in SETTINGS:
                raise ConfigError(f"unknown noisy_organ setting '{self.setting}'; choose one of: {', '.join(SETTINGS)}")
            if setting == "semi":
                if noise is not None:
                    raise ConfigError("setting 'semi' has no noisy labels; leave noise unset")
            else:
                noise = resolve_noise("mid" if noise is None else noise)
        elif setting is not None or noise is not None:
            raise ConfigError(f"setting and noise apply to task 'noisy_organ' only (task is '{self.task}')")
        n_clean = self.n_clean
        if self.task == "noisy_organ":
            n_clean = _count("n_clean", n_clean, max(1, min(4, n_train // 4)))
            if n_clean > n_train:
                raise ConfigError(f"n_clean ({n_clean}) exceeds n_train ({n_train})")
        elif self.task == "domain_shift":
            n_source = _n_source(n_train)
            n_clean = _count("n_clean", n_clean, max(1, min(6, n_source // 3)))
            if n_clean > n_source:
                raise ConfigError(f"n_clean ({n_clean}) exceeds the {n_source} source training cases "
                                  f"(half of n_train = {n_train}, rounded up)")
        elif n_clean is not None:
            raise ConfigError(f"n_clean applies to noisy_organ and domain_shift only (task is '{self.task}')")
        if not 0.0 < float(self.annotated_fraction) <= 1.0:
            raise ConfigError(f"annotated_fraction must be in (0, 1], got {self.annotated_fraction}")
        n_aux = self.n_aux
        if self.task in ("ellipse_us", "organ_ct"):
            n_aux = _count("n_aux", n_aux, n_train)
        elif n_aux is not None:
            raise ConfigError(f"n_aux applies to ellipse_us and organ_ct only (task is '{self.task}')")
        return replace(self, seed=int(self.seed), n_train=n_train, n_val=n_val, n_test=n_test, size=int(self.size),
                       n_slices=n_slices, setting=setting, noise=noise, n_clean=n_clean,
                       annotated_fraction=float(self.annotated_fraction), n_aux=n_aux,
                       us_omit=_us_omit(self.task, self.us_omit))


def _us_omit(task: str, value: str | None) -> str | None:
    """``us_omit`` checked and normalised (sorted, comma-separated; None when empty)."""
    if value is None or not str(value).strip():
        return None
    if task != "ellipse_us":
        raise ConfigError(f"us_omit applies to ellipse_us only (task is '{task}')")
    names = sorted({v.strip() for v in str(value).split(",") if v.strip()})
    if unknown := [v for v in names if v not in US_FEATURES]:
        raise ConfigError(f"us_omit: unknown feature(s) {', '.join(unknown)}; choose from {', '.join(US_FEATURES)}")
    return ",".join(names)


def _count(name: str, value: int | None, default: int, minimum: int = 0) -> int:
    v = default if value is None else value
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(v)


def _n_source(n_train: int) -> int:
    return (n_train + 1) // 2


@dataclass
class PhantomInfo:
    """What :func:`make_phantom_cohort` wrote.

    ``counts[split][label_kind]`` counts cases; ``noisy_mean_dice`` is the achieved mean
    Dice of the noisy labels against the truth (None without noisy labels), reached with
    ``corruption_strength``; ``noisy_case_dice`` gives it per case.
    """

    root: Path
    task: str
    config: PhantomConfig
    counts: dict[str, dict[str, int]]
    n_aux: int = 0
    noise_target: float | None = None
    noisy_mean_dice: float | None = None
    corruption_strength: float | None = None
    noisy_case_dice: dict[str, float] = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        return sum(sum(k.values()) for k in self.counts.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["root"] = str(self.root)
        return d


# --------------------------------------------------------------------------- ellipses


@dataclass(frozen=True)
class EllipseRanges:
    """Ranges of the ellipse shape model (shape_prior_gan, seed 000): full minor axis in mm,
    aspect ratio major/minor, orientation in radians; each sampled uniformly."""

    minor_mm: tuple[float, float] = (25.0, 105.0)
    aspect: tuple[float, float] = (1.2, 1.8)
    angle: tuple[float, float] = (0.0, 2.0 * math.pi)

    def scaled(self, factor: float) -> "EllipseRanges":
        """The same model with every length multiplied by ``factor``."""
        return replace(self, minor_mm=(self.minor_mm[0] * factor, self.minor_mm[1] * factor))


FETAL_HEAD = EllipseRanges()
"""The paper's fetal head model: minor axis 25–105 mm, aspect 1.2–1.8, orientation 0–2π."""

US_PHANTOM_SCALE = 0.15
"""Length scale of the ultrasound phantom: its heads are the paper's shrunk by this factor, so
that the largest (major axis 0.15 × 189 mm = 28.4 mm) fits the field of view at any angle."""

US_PHANTOM_FOV_MM = (32.0, 38.4)
"""Field of view (x, y) in mm of ``ellipse_us`` images at any size: 0.5 × 0.6 mm pixels at 64 px."""

PHANTOM_HEAD = FETAL_HEAD.scaled(US_PHANTOM_SCALE)
"""The fetal head model at phantom scale (minor axis 3.75–15.75 mm)."""


@dataclass(frozen=True)
class EllipseParams:
    """One ellipse: full minor axis (mm), aspect = major/minor, angle of the major axis
    from the +x axis towards +y (radians), centre (x, y) in mm from the first pixel's centre."""

    minor_mm: float
    aspect: float
    angle_rad: float
    center_xy: tuple[float, float]

    @property
    def major_mm(self) -> float:
        return self.minor_mm * self.aspect


def _physical_grid(shape_yx: Sequence[int], spacing_xy: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Physical (x, y) in mm of every pixel centre, pixel (0, 0) at the origin."""
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    x = np.arange(nx, dtype=np.float64) * float(spacing_xy[0])
    y = np.arange(ny, dtype=np.float64) * float(spacing_xy[1])
    return np.meshgrid(x, y, indexing="xy")


def _ellipse_coords(px: np.ndarray, py: np.ndarray, e: EllipseParams) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates normalised by the semi-axes: (u, v) with u² + v² = 1 on the boundary."""
    dx, dy = px - e.center_xy[0], py - e.center_xy[1]
    c, s = math.cos(e.angle_rad), math.sin(e.angle_rad)
    return (dx * c + dy * s) / (0.5 * e.major_mm), (-dx * s + dy * c) / (0.5 * e.minor_mm)


def draw_ellipse_mask(shape_yx: Sequence[int], spacing_xy: Sequence[float], minor_mm: float, aspect: float,
                      angle_rad: float, center_xy: Sequence[float]) -> np.ndarray:
    """Filled ellipse as a ``(Y, X)`` uint8 mask, drawn in millimetres.

    A pixel is inside when its centre is; pixel ``(j, i)`` sits at ``(i·sx, j·sy)`` mm, so
    with anisotropic ``spacing_xy = (sx, sy)`` the ellipse keeps its physical shape.
    ``minor_mm`` is the full minor axis, ``aspect`` = major/minor ≥ 1, ``angle_rad`` the
    direction of the major axis from +x towards +y, ``center_xy`` the centre in mm.
    """
    if minor_mm <= 0 or aspect < 1.0:
        raise ConfigError(f"ellipse needs minor_mm > 0 and aspect ≥ 1 (got {minor_mm}, {aspect})")
    px, py = _physical_grid(shape_yx, spacing_xy)
    u, v = _ellipse_coords(px, py, EllipseParams(float(minor_mm), float(aspect), float(angle_rad),
                                                 (float(center_xy[0]), float(center_xy[1]))))
    return (u * u + v * v <= 1.0).astype(np.uint8)


def sample_ellipse_params(n: int, shape: Sequence[int], spacing: Sequence[float], ranges: EllipseRanges,
                          rng: np.random.Generator, margin_px: float = 1.0) -> list[EllipseParams]:
    """``n`` ellipses from the model: minor axis, aspect and angle uniform in ``ranges``;
    the centre uniform over the positions where the whole ellipse (plus ``margin_px``)
    lies in the ``shape`` = (Y, X) grid of pixel size ``spacing`` = (sx, sy). Along an
    axis where the ellipse is too big to fit, it is centred (and cut by the border)."""
    out = []
    extent = ((int(shape[1]) - 1) * float(spacing[0]), (int(shape[0]) - 1) * float(spacing[1]))
    for _ in range(int(n)):
        minor = float(rng.uniform(*ranges.minor_mm))
        aspect = float(rng.uniform(*ranges.aspect))
        angle = float(rng.uniform(*ranges.angle))
        a, b = 0.5 * minor * aspect, 0.5 * minor
        c, s = math.cos(angle), math.sin(angle)
        half = (math.sqrt((a * c) ** 2 + (b * s) ** 2), math.sqrt((a * s) ** 2 + (b * c) ** 2))
        u = rng.uniform(size=2)
        centre = []
        for k in range(2):
            lo = half[k] + margin_px * float(spacing[k])
            hi = extent[k] - lo
            centre.append(lo + float(u[k]) * (hi - lo) if hi > lo else 0.5 * extent[k])
        out.append(EllipseParams(minor, aspect, angle, (centre[0], centre[1])))
    return out


def sample_ellipse_masks(n: int, shape: Sequence[int], spacing: Sequence[float], ranges: EllipseRanges,
                         rng: np.random.Generator) -> np.ndarray:
    """``(n, Y, X)`` uint8 stack of ellipse masks from :func:`sample_ellipse_params`
    (``shape`` = (Y, X), ``spacing`` = (sx, sy) in mm): the shape-prior auxiliary masks."""
    params = sample_ellipse_params(n, shape, spacing, ranges, rng)
    out = np.zeros((len(params), int(shape[0]), int(shape[1])), dtype=np.uint8)
    for i, e in enumerate(params):
        out[i] = draw_ellipse_mask(shape, spacing, e.minor_mm, e.aspect, e.angle_rad, e.center_xy)
    return out


def us_spacing(size: int) -> tuple[float, float]:
    """Pixel size (sx, sy) in mm of an ``ellipse_us`` image of ``size`` px."""
    return (US_PHANTOM_FOV_MM[0] / size, US_PHANTOM_FOV_MM[1] / size)


# --------------------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise normalised to zero mean and unit sd."""
    f = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=sigma, mode="reflect")
    f -= f.mean()
    return f / max(float(f.std()), 1e-12)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def _signed_distance_2d(mask: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    m = mask.astype(bool)
    return ndimage.distance_transform_edt(~m, sampling=spacing_yx) - ndimage.distance_transform_edt(m, sampling=spacing_yx)


# --------------------------------------------------------------------------- ellipse_us


US_FEATURES: tuple[str, ...] = ("clutter", "fluid", "skull_gaps")


def render_ultrasound(rng: np.random.Generator, shape_yx: Sequence[int], spacing_xy: Sequence[float],
                      head: EllipseParams, omit: Sequence[str] = ()) -> np.ndarray:
    """A B-mode-like ``(Y, X)`` float32 image in [0, 1] of a head ``head``, beam from the top.

    Reflectivity: tissue with smoothed texture, a fluid pocket along part of the head,
    a dark brain with a faint midline, a skull echo whose brightness follows the beam
    incidence and drops in 1–3 random arcs (weak / missing boundary), bright clutter
    blobs and a curved bright line; then attenuation exp(−α·depth), multiplicative
    Rayleigh speckle (magnitude of smoothed complex Gaussian noise) and log compression.

    ``omit`` (names from :data:`US_FEATURES`) leaves features out: ``fluid`` the fluid
    pocket, ``skull_gaps`` the skull echo's drops (a complete ring, brighter nowhere less),
    ``clutter`` the bright blobs (the curved line stays). The pocket's and the gaps' random
    draws are still made, so those images differ only there; the blobs' are skipped, so the
    later draws (line, attenuation, speckle) differ too.
    """
    omit = frozenset(omit)
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    px, py = _physical_grid(shape_yx, spacing_xy)
    inside = draw_ellipse_mask(shape_yx, spacing_xy, head.minor_mm, head.aspect, head.angle_rad, head.center_xy) > 0
    sdf = _signed_distance_2d(inside, (sy, sx))
    u, v = _ellipse_coords(px, py, head)
    phi = np.arctan2(v, u)
    pix = 0.5 * (sx + sy)

    refl = 0.25 + 0.08 * _smooth_noise(rng, (ny, nx), 3.0)
    # fluid pocket: a dark band outside the skull over one or two angular sectors
    width = rng.uniform(1.0, 3.0) * pix / 0.55
    fluid = np.zeros((ny, nx), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        centre, half = rng.uniform(-math.pi, math.pi), rng.uniform(0.8, 2.0)
        fluid |= (np.abs(_wrap(phi - centre)) < half) & (sdf > 0) & (sdf < width)
    if "fluid" not in omit:
        refl = np.where(fluid, 0.03, refl)
    # brain: dark, faint texture, midline echo along the major axis
    brain = 0.08 + 0.02 * _smooth_noise(rng, (ny, nx), 2.0)
    half_minor = 0.5 * head.minor_mm
    midline = 0.15 * np.exp(-0.5 * (v * half_minor / (0.8 * pix)) ** 2) * (np.abs(u) < rng.uniform(0.5, 0.8))
    refl = np.where(inside, brain + midline, refl)
    # skull echo: brighter where the surface faces the beam (vertical), with gaps
    c, s = math.cos(head.angle_rad), math.sin(head.angle_rad)
    gu, gv = u / (0.5 * head.major_mm), v / half_minor
    ny_normal = np.abs(gu * s + gv * c) / np.maximum(np.hypot(gu, gv), 1e-12)
    gain = np.ones_like(phi)
    for _ in range(int(rng.integers(1, 4))):
        centre, w, depth = rng.uniform(-math.pi, math.pi), rng.uniform(0.25, 0.7), rng.uniform(0.7, 1.0)
        if "skull_gaps" not in omit:
            gain -= depth * np.exp(-0.5 * (_wrap(phi - centre) / w) ** 2)
    gain = np.clip(gain, 0.05, 1.0) * (0.3 + 0.7 * ny_normal)
    w_ring = max(0.8 * pix, 0.04 * head.minor_mm)
    refl = refl + 2.0 * gain * np.exp(-0.5 * ((sdf + w_ring) / w_ring) ** 2)
    # clutter: bright elongated blobs and a curved line (e.g. uterine wall)
    for _ in range(0 if "clutter" in omit else int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, nx * sx), rng.uniform(0, ny * sy)
        length, thick, ang = rng.uniform(1.0, 3.5), rng.uniform(0.3, 0.8), rng.uniform(0, math.pi)
        du = (px - cx) * math.cos(ang) + (py - cy) * math.sin(ang)
        dv = -(px - cx) * math.sin(ang) + (py - cy) * math.cos(ang)
        refl = refl + rng.uniform(0.5, 1.2) * np.exp(-0.5 * ((du / length) ** 2 + (dv / thick) ** 2))
    arc_r = rng.uniform(0.6, 1.2) * ny * sy
    arc_c = (rng.uniform(0, nx * sx), -arc_r + rng.uniform(0.05, 0.25) * ny * sy)
    if rng.random() < 0.5:  # from below instead of above
        arc_c = (arc_c[0], ny * sy - arc_c[1])
    dist = np.hypot(px - arc_c[0], py - arc_c[1])
    refl = refl + rng.uniform(0.4, 0.9) * np.exp(-0.5 * ((dist - arc_r) / (0.8 * pix)) ** 2)
    # attenuation with depth (beam from the top)
    alpha = -math.log(rng.uniform(0.3, 0.6)) / (ny * sy)
    refl = np.clip(refl, 0.0, None) * np.exp(-alpha * py)
    # multiplicative Rayleigh speckle
    re = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 0.7)
    im = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 0.7)
    speckle = np.hypot(re, im)
    speckle /= speckle.mean()
    img = np.log1p(10.0 * refl * speckle) / math.log1p(10.0 * 2.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- organ scenes

AIR, FAT, SOFT, ORGAN, BLOB, BONE, VESSEL = range(7)


@dataclass(frozen=True)
class FourierShapeModel:
    """Random star-shaped contours r(θ) = r0 · (1 + Σ_k a_k cos(kθ + φ_k)).

    ``r0_frac`` is a range of r0 as a fraction of the field-of-view width; ``a_k`` is
    uniform in ``(amp[0] / k, amp[1] / k)`` for each harmonic k in ``harmonics``.
    """

    r0_frac: tuple[float, float] = (0.13, 0.2)
    harmonics: tuple[int, ...] = (2, 3, 4)
    amp: tuple[float, float] = (0.0, 0.3)


ORGAN_SHAPES = FourierShapeModel()
"""The organ of the phantom scenes."""

SHIFTED_ORGAN_SHAPES = FourierShapeModel(r0_frac=(0.17, 0.26), harmonics=(2, 3, 4, 5), amp=(0.1, 0.45))
"""The shifted distribution of ``organ_ct``'s auxiliary masks: larger, more irregular."""


@dataclass(frozen=True)
class FourierShape:
    """One contour: centre (x, y) mm, r0 mm, one (amplitude, phase) per harmonic."""

    center_xy: tuple[float, float]
    r0: float
    harmonics: tuple[int, ...]
    amps: tuple[float, ...]
    phases: tuple[float, ...]

    def max_radius(self) -> float:
        return self.r0 * (1.0 + sum(abs(a) for a in self.amps))

    def mask(self, shape_yx: Sequence[int], spacing_xy: Sequence[float], origin_xy: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
        """``(Y, X)`` bool mask of the filled contour on a grid whose first pixel is at ``origin_xy``."""
        px, py = _physical_grid(shape_yx, spacing_xy)
        dx = px + origin_xy[0] - self.center_xy[0]
        dy = py + origin_xy[1] - self.center_xy[1]
        theta = np.arctan2(dy, dx)
        r = np.full_like(theta, 1.0)
        for k, a, ph in zip(self.harmonics, self.amps, self.phases):
            r += a * np.cos(k * theta + ph)
        return np.hypot(dx, dy) <= self.r0 * r


def sample_fourier_shape(rng: np.random.Generator, model: FourierShapeModel, center_xy: tuple[float, float],
                         fov_width_mm: float) -> FourierShape:
    """One contour from ``model`` centred at ``center_xy`` (mm), r0 scaled by ``fov_width_mm``."""
    ks = tuple(model.harmonics)
    amps = tuple(float(rng.uniform(model.amp[0] / k, model.amp[1] / k)) for k in ks)
    phases = tuple(float(rng.uniform(0, 2 * math.pi)) for _ in ks)
    r0 = float(rng.uniform(*model.r0_frac)) * fov_width_mm
    return FourierShape(center_xy, r0, ks, amps, phases)


@dataclass(frozen=True)
class _Drift:
    """How a Fourier shape changes from the first (t = −1) to the last slice (t = +1)."""

    shift_xy: tuple[float, float]
    d_amps: tuple[float, ...]
    d_phases: tuple[float, ...]
    taper: float

    def at(self, shape: FourierShape, t: float) -> FourierShape:
        return FourierShape(
            (shape.center_xy[0] + t * self.shift_xy[0], shape.center_xy[1] + t * self.shift_xy[1]),
            shape.r0 * (1.0 - self.taper * t * t),
            shape.harmonics,
            tuple(max(0.0, a + t * d) for a, d in zip(shape.amps, self.d_amps)),
            tuple(p + t * d for p, d in zip(shape.phases, self.d_phases)),
        )


def _sample_drift(rng: np.random.Generator, shape: FourierShape, fov: float, taper: tuple[float, float]) -> _Drift:
    """Centre shift up to 3 % of the FOV, amplitude/phase drift up to ±40 %, radius taper in ``taper``."""
    return _Drift(
        (float(rng.uniform(-0.03, 0.03)) * fov, float(rng.uniform(-0.03, 0.03)) * fov),
        tuple(float(rng.uniform(-0.4, 0.4)) * a for a in shape.amps),
        tuple(float(rng.uniform(-0.4, 0.4)) for _ in shape.amps),
        float(rng.uniform(*taper)),
    )


def organ_scene(rng: np.random.Generator, shape_zyx: Sequence[int], spacing_xy: Sequence[float],
                model: FourierShapeModel = ORGAN_SHAPES) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes ``(Z, Y, X)`` uint8 (AIR … VESSEL) and the organ mask of one scene.

    A body ellipse with a fat layer, an organ (Fourier contour from ``model``) inside it,
    a spine with an aorta and 1–2 other blobs (kidney-like) that the organ occludes.
    Across slices the organ and the blobs taper and drift smoothly (their radii, harmonic
    amplitudes, phases and centres are smooth functions of the slice position).
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    w, h = nx * sx, ny * sy
    bc = (0.5 * w + rng.uniform(-0.02, 0.02) * w, 0.5 * h + rng.uniform(-0.02, 0.02) * h)
    ax, ay = rng.uniform(0.40, 0.46) * w, rng.uniform(0.32, 0.38) * h
    fat = rng.uniform(0.03, 0.05) * w
    px, py = _physical_grid((ny, nx), spacing_xy)
    body_r = ((px - bc[0]) / ax) ** 2 + ((py - bc[1]) / ay) ** 2
    inner_r = ((px - bc[0]) / (ax - fat)) ** 2 + ((py - bc[1]) / (ay - fat)) ** 2
    body, inner = body_r <= 1.0, inner_r <= 1.0
    spine_c = (bc[0] + rng.uniform(-0.02, 0.02) * w, bc[1] + 0.72 * (ay - fat))
    spine_r = rng.uniform(0.05, 0.065) * w
    aorta_c = (spine_c[0] + rng.uniform(0.05, 0.09) * w, spine_c[1] - spine_r - rng.uniform(0.03, 0.05) * w)
    aorta_r = rng.uniform(0.02, 0.03) * w
    spine = np.hypot(px - spine_c[0], py - spine_c[1]) <= spine_r
    aorta = np.hypot(px - aorta_c[0], py - aorta_c[1]) <= aorta_r

    organ = sample_fourier_shape(rng, model, (0.0, 0.0), w)
    reach = organ.max_radius() + 0.03 * w
    ex, ey = max(ax - fat - reach, 0.02 * w), max(0.6 * (ay - fat) - reach, 0.02 * h)
    rad, ang = math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
    organ = replace(organ, center_xy=(bc[0] + rad * ex * math.cos(ang), bc[1] - 0.15 * ay + rad * ey * math.sin(ang)))
    organ_drift = _sample_drift(rng, organ, w, (0.15, 0.35))
    blobs: list[tuple[FourierShape, _Drift]] = []
    organ_mid = organ.mask((ny, nx), spacing_xy)
    for _ in range(int(rng.integers(1, 3))):
        blob = sample_fourier_shape(rng, FourierShapeModel((0.06, 0.1), (2, 3), (0.0, 0.2)), (0.0, 0.0), w)
        for _try in range(20):
            c = (bc[0] + rng.uniform(-0.7, 0.7) * (ax - fat), bc[1] + rng.uniform(-0.6, 0.7) * (ay - fat))
            cand = replace(blob, center_xy=c)
            m = cand.mask((ny, nx), spacing_xy)
            if (m & organ_mid).sum() <= 0.2 * max(m.sum(), 1) and (m & inner).sum() >= 0.9 * max(m.sum(), 1):
                break
        blobs.append((cand, _sample_drift(rng, cand, w, (0.2, 0.5))))

    classes = np.zeros((nz, ny, nx), dtype=np.uint8)
    truth = np.zeros((nz, ny, nx), dtype=np.uint8)
    for z in range(nz):
        t = 0.0 if nz == 1 else 2.0 * z / (nz - 1) - 1.0
        sl = np.full((ny, nx), AIR, dtype=np.uint8)
        sl[body] = FAT
        sl[inner] = SOFT
        for blob, drift in blobs:
            sl[drift.at(blob, t).mask((ny, nx), spacing_xy) & inner] = BLOB
        sl[spine] = BONE
        sl[aorta] = VESSEL
        om = organ_drift.at(organ, t).mask((ny, nx), spacing_xy) & inner & ~spine
        sl[om] = ORGAN
        classes[z] = sl
        truth[z] = om
    return classes, truth


@dataclass(frozen=True)
class IntensityModel:
    """How tissue classes become intensities: per-class means (AIR, FAT, SOFT, ORGAN,
    BLOB, BONE, VESSEL) with a per-case random shift (sd ``mean_jitter``), a shared
    smoothed-noise texture (sd ``texture_sd``, correlation ``texture_sigma_px``), a blur
    (partial volume), an optional multiplicative bias field, and additive Gaussian or
    Rician noise."""

    name: str
    means: tuple[float, float, float, float, float, float, float]
    mean_jitter: float
    texture_sd: float
    texture_sigma_px: float
    blur_px: float
    noise_sd: float
    bias: float = 0.0
    rician: bool = False


CT_MODEL = IntensityModel("ct", (-1000.0, -90.0, 45.0, 110.0, 170.0, 600.0, 180.0), 12.0, 12.0, 1.2, 0.6, 15.0)
"""Contrast-enhanced CT in Hounsfield units: organ brighter than soft tissue."""

MR_MODEL = IntensityModel("mr", (0.0, 820.0, 330.0, 210.0, 420.0, 120.0, 40.0), 30.0, 35.0, 2.5, 0.8, 18.0,
                          bias=0.25, rician=True)
"""T1-like MR in arbitrary units: fat bright, organ darker than soft tissue, bias field, Rician noise."""


def render_scene(rng: np.random.Generator, classes: np.ndarray, model: IntensityModel) -> np.ndarray:
    """Intensities (float32, same shape as ``classes`` (Z, Y, X)) under ``model``."""
    means = np.asarray(model.means, dtype=np.float64) + rng.normal(0.0, model.mean_jitter, len(model.means))
    means[AIR] = model.means[AIR]
    three_d = classes.shape[0] > 1
    sig = model.texture_sigma_px
    texture = _smooth_noise(rng, classes.shape, (0.5 if three_d else 0.0, sig, sig))
    img = means[classes] + model.texture_sd * texture * (classes != AIR)
    img = ndimage.gaussian_filter(img, sigma=(0.0, model.blur_px, model.blur_px))
    if model.bias > 0:
        ny = classes.shape[1]
        bias = _smooth_noise(rng, classes.shape, (2.0 if three_d else 0.0, ny / 4.0, ny / 4.0))
        img = img * np.exp(model.bias * bias)
    n1 = rng.normal(0.0, model.noise_sd, classes.shape)
    if model.rician:
        n2 = rng.normal(0.0, model.noise_sd, classes.shape)
        img = np.hypot(img + n1, n2)
    else:
        img = img + n1
    return img.astype(np.float32)


ORGAN_SPACING = (1.2, 1.2, 3.0)
"""Voxel size (x, y, z) in mm of the organ tasks."""


def _organ_geometry(rng: np.random.Generator, size: int, n_slices: int) -> Geometry:
    """Organ-task grid: :data:`ORGAN_SPACING`, identity direction, a random non-zero origin."""
    sx, sy, sz = ORGAN_SPACING
    origin = (-0.5 * size * sx + rng.uniform(-10, 10), -0.5 * size * sy + rng.uniform(-30, 10),
              rng.uniform(-200.0, 100.0) if n_slices > 1 else 0.0)
    origin = tuple(round(o, 3) for o in origin)
    if n_slices == 1:
        return Geometry((size, size, 1), (sx, sy, 1.0), origin, _IDENTITY, ndim=2)
    return Geometry((size, size, n_slices), (sx, sy, sz), origin, _IDENTITY, ndim=3)


# --------------------------------------------------------------------------- lesion_pa


def _tissue_texture(rng: np.random.Generator, n: int) -> np.ndarray:
    """Healthy tissue: multi-scale smoothed noise and faint oriented fibres, values ≈ 0.3–0.7."""
    coarse = _smooth_noise(rng, (n, n), n / 10.0)
    fine = _smooth_noise(rng, (n, n), 1.2)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    ang = rng.uniform(0, math.pi)
    phase = xx * math.cos(ang) + yy * math.sin(ang) + 3.0 * _smooth_noise(rng, (n, n), n / 8.0)
    fibres = np.sin(2 * math.pi * phase / rng.uniform(5.0, 9.0))
    return 0.5 + 0.08 * coarse + 0.05 * fine + 0.04 * fibres


def render_lesion_image(rng: np.random.Generator, n: int, present: bool) -> tuple[np.ndarray, np.ndarray]:
    """A ``(n, n)`` uint8 image and its lesion mask (empty when not ``present``).

    Present images get 1–3 non-overlapping lesions (small Fourier contours); each pushes
    the surrounding texture outward (backward warp x ↦ c + (x − c)(1 − α·exp(−|x−c|²/2σ²)),
    σ ≈ 1.6 × lesion radius) and is brighter or darker than the tissue, with a soft edge
    and its own texture.
    """
    tissue = _tissue_texture(rng, n)
    mask = np.zeros((n, n), dtype=bool)
    if present:
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
        src_y, src_x = yy.copy(), xx.copy()
        lesions: list[tuple[np.ndarray, float]] = []
        centres: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(1, 4))):
            shape = sample_fourier_shape(rng, FourierShapeModel((0.05, 0.11), (2, 3), (0.0, 0.25)), (0.0, 0.0), float(n))
            for _try in range(30):
                c = (float(rng.uniform(0.2, 0.8) * n), float(rng.uniform(0.2, 0.8) * n))
                if all(math.hypot(c[0] - a, c[1] - b) > 1.3 * (shape.max_radius() + r) for a, b, r in centres):
                    break
            centres.append((c[0], c[1], shape.max_radius()))
            shape = replace(shape, center_xy=c)
            sigma, alpha = 1.6 * shape.r0, rng.uniform(0.4, 0.7)
            fall = alpha * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * sigma * sigma))
            src_x -= (xx - c[0]) * fall
            src_y -= (yy - c[1]) * fall
            m = shape.mask((n, n), (1.0, 1.0))
            lesions.append((m, float(rng.choice([-1.0, 1.0]) * rng.uniform(0.18, 0.32))))
            mask |= m
        tissue = ndimage.map_coordinates(tissue, [src_y, src_x], order=1, mode="reflect")
        for m, contrast in lesions:
            soft = ndimage.gaussian_filter(m.astype(np.float64), 0.8)
            tissue = tissue + soft * (contrast + 0.04 * _smooth_noise(rng, (n, n), 1.0))
    img = tissue + rng.normal(0.0, 0.025, (n, n))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------- cohort writing


@dataclass
class _Case:
    """One generated case before writing."""

    case: str
    split: str
    image: np.ndarray  # (Z, Y, X)
    truth: np.ndarray  # (Z, Y, X) uint8 0/1
    geometry: Geometry
    ext: str
    label_kind: str = "none"  # none | clean | noisy
    noisy: np.ndarray | None = None
    presence: str | None = None
    domain: str | None = None

    @property
    def image_rel(self) -> str:
        sub = f"images/{self.presence}/" if self.presence else "images/"
        return f"{sub}{self.case}{self.ext}"

    @property
    def label_rel(self) -> str:
        if self.label_kind == "clean":
            return f"labels/{self.case}{self.ext}"
        if self.label_kind == "noisy":
            return f"noisy_labels/{self.case}{self.ext}"
        return ""


_TASK_KEY = {t: i for i, t in enumerate(TASKS)}
_SPLIT_KEY = {s: i for i, s in enumerate(SPLITS)}


def _case_rng(cfg: PhantomConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _TASK_KEY[cfg.task], _SPLIT_KEY[split], index])


def _aux_rng(cfg: PhantomConfig) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _TASK_KEY[cfg.task], 99])


def _split_sizes(cfg: PhantomConfig) -> dict[str, int]:
    return {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}


def _make_ellipse_us(cfg: PhantomConfig) -> tuple[list[_Case], list[tuple[str, np.ndarray, Geometry]]]:
    spacing = us_spacing(cfg.size)
    shape = (cfg.size, cfg.size)
    geom = Geometry((cfg.size, cfg.size, 1), (spacing[0], spacing[1], 1.0),
                    (-0.5 * US_PHANTOM_FOV_MM[0], 0.0, 0.0), _IDENTITY, ndim=2)
    omit = tuple(cfg.us_omit.split(",")) if cfg.us_omit else ()
    cases = []
    for split, n in _split_sizes(cfg).items():
        for i in range(n):
            rng = _case_rng(cfg, split, i)
            head = sample_ellipse_params(1, shape, spacing, PHANTOM_HEAD, rng, margin_px=2.0)[0]
            img = render_ultrasound(rng, shape, spacing, head, omit)
            truth = draw_ellipse_mask(shape, spacing, head.minor_mm, head.aspect, head.angle_rad, head.center_xy)
            cases.append(_Case(f"{split}_{i:03d}", split, img[None], truth[None], geom, ".mha"))
    aux = sample_ellipse_masks(cfg.n_aux, shape, spacing, PHANTOM_HEAD, _aux_rng(cfg))
    return cases, [(f"aux_{k:03d}.mha", m[None], geom) for k, m in enumerate(aux)]


def _organ_case(cfg: PhantomConfig, split: str, i: int, model: IntensityModel, ext: str) -> _Case:
    rng = _case_rng(cfg, split, i)
    geom = _organ_geometry(rng, cfg.size, cfg.n_slices)
    classes, truth = organ_scene(rng, (cfg.n_slices, cfg.size, cfg.size), ORGAN_SPACING[:2])
    img = render_scene(rng, classes, model)
    return _Case(f"{split}_{i:03d}", split, img, truth, geom, ext)


def _make_organ_ct(cfg: PhantomConfig) -> tuple[list[_Case], list[tuple[str, np.ndarray, Geometry]]]:
    cases = [_organ_case(cfg, split, i, CT_MODEL, ".nrrd") for split, n in _split_sizes(cfg).items() for i in range(n)]
    rng = _aux_rng(cfg)
    n = cfg.size
    sx, sy = ORGAN_SPACING[:2]
    geom = Geometry((n, n, 1), (sx, sy, 1.0), (0.0, 0.0, 0.0), _IDENTITY, ndim=2)
    aux = []
    for k in range(cfg.n_aux):
        shape = sample_fourier_shape(rng, SHIFTED_ORGAN_SHAPES, (0.0, 0.0), n * sx)
        slack = max(0.5 * n * sx - shape.max_radius() - 2 * sx, 0.0)
        c = (0.5 * n * sx + rng.uniform(-slack, slack), 0.5 * n * sy + rng.uniform(-slack, slack))
        aux.append((f"aux_{k:03d}.nrrd", replace(shape, center_xy=c).mask((n, n), (sx, sy)).astype(np.uint8)[None], geom))
    return cases, aux


def _make_noisy_organ(cfg: PhantomConfig) -> list[_Case]:
    return [_organ_case(cfg, split, i, CT_MODEL, ".nii.gz") for split, n in _split_sizes(cfg).items() for i in range(n)]


def _make_lesion_pa(cfg: PhantomConfig) -> list[_Case]:
    geom = Geometry((cfg.size, cfg.size, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), _IDENTITY, ndim=2)
    cases = []
    for split, n in _split_sizes(cfg).items():
        for i in range(n):
            present = i % 2 == 0
            img, mask = render_lesion_image(_case_rng(cfg, split, i), cfg.size, present)
            cases.append(_Case(f"{split}_{i:03d}", split, img[None], mask.astype(np.uint8)[None], geom, ".png",
                               presence="present" if present else "absent"))
    return cases


def _make_domain_shift(cfg: PhantomConfig) -> list[_Case]:
    ext = ".nrrd" if cfg.n_slices == 1 else ".nii.gz"
    cases = []
    n_source = _n_source(cfg.n_train)
    for split, n in _split_sizes(cfg).items():
        for i in range(n):
            source = i < n_source if split == "train" else i % 2 == 0
            c = _organ_case(cfg, split, i, CT_MODEL if source else MR_MODEL, ext)
            c.domain = "source" if source else "target"
            cases.append(c)
    return cases


def _assign_labels(cfg: PhantomConfig, cases: list[_Case]) -> None:
    """Label kinds: val clean, test none; train by task (see the module docstring)."""
    for c in cases:
        if c.split == "val":
            c.label_kind = "clean"
    train = [c for c in cases if c.split == "train"]
    if cfg.task == "noisy_organ":
        rest = train[cfg.n_clean:]
        n_noisy = {"noisy": len(rest), "semi": 0, "mixed": (len(rest) + 1) // 2}[cfg.setting]
        for c in train[: cfg.n_clean]:
            c.label_kind = "clean"
        for c in rest[:n_noisy]:
            c.label_kind = "noisy"
    elif cfg.task == "lesion_pa":
        present = [c for c in train if c.presence == "present"]
        n_annot = max(1, int(round(cfg.annotated_fraction * len(present)))) if present else 0
        for c in present[:n_annot]:
            c.label_kind = "clean"
    elif cfg.task == "domain_shift":
        for c in [c for c in train if c.domain == "source"][: cfg.n_clean]:
            c.label_kind = "clean"


def _corrupt(cfg: PhantomConfig, cases: list[_Case]) -> tuple[float | None, float | None, dict[str, float]]:
    """Calibrate and apply the label noise of the noisy cases; (strength, mean Dice, per case)."""
    noisy = [c for c in cases if c.label_kind == "noisy"]
    if not noisy:
        return None, None, {}
    spacing = ORGAN_SPACING[:2]
    masks = [c.truth for c in noisy]
    strength = calibrate_corruption(masks, float(cfg.noise), cfg.seed, spacing_xy=spacing)
    per_case = {}
    for c, m in zip(noisy, corrupt_masks(masks, strength, cfg.seed, spacing_xy=spacing)):
        c.noisy = m
        per_case[c.case] = dice(m, c.truth)
    return strength, float(np.mean(list(per_case.values()))), per_case


def _prepare_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a folder")
    existing = [name for name in _MANAGED if (root / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{root}: already holds a cohort ({', '.join(existing)}); "
                          "choose an empty folder or pass overwrite=True")
    for name in existing:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _write_cases(root: Path, cases: list[_Case], aux: list[tuple[str, np.ndarray, Geometry]]) -> None:
    for c in cases:
        scale = 255 if c.ext == ".png" else 1  # PNG masks as 0/255, as in most 2D data sets
        write_image(root / c.image_rel, c.image, c.geometry)
        write_image(root / "truth" / f"{c.case}{c.ext}", (c.truth * scale).astype(np.uint8), c.geometry)
        if c.label_kind == "clean":
            write_image(root / c.label_rel, (c.truth * scale).astype(np.uint8), c.geometry)
        elif c.label_kind == "noisy":
            write_image(root / c.label_rel, (c.noisy * scale).astype(np.uint8), c.geometry)
    for name, mask, geom in aux:
        write_image(root / "aux_masks" / name, mask.astype(np.uint8), geom)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cases:
        row = {"case": c.case, "image": c.image_rel, "label": c.label_rel, "label_kind": c.label_kind,
               "presence": c.presence or "", "domain": c.domain or "", "split": c.split, "label_value": ""}
        w.writerow([row[k] for k in CSV_COLUMNS])
    write_text(root / "cohort.csv", buf.getvalue())


def make_phantom_cohort(root: str | Path, config: PhantomConfig, overwrite: bool = False) -> PhantomInfo:
    """Generate the phantom cohort ``config`` in the folder ``root`` and describe it.

    ``root`` is created if needed; if it already holds cohort folders or files they are
    replaced only with ``overwrite=True`` (other files in ``root`` are left alone).
    Raises ConfigError for an invalid configuration.
    """
    cfg = config.resolved()
    root = Path(root)
    aux: list[tuple[str, np.ndarray, Geometry]] = []
    if cfg.task == "ellipse_us":
        cases, aux = _make_ellipse_us(cfg)
    elif cfg.task == "organ_ct":
        cases, aux = _make_organ_ct(cfg)
    elif cfg.task == "noisy_organ":
        cases = _make_noisy_organ(cfg)
    elif cfg.task == "lesion_pa":
        cases = _make_lesion_pa(cfg)
    else:
        cases = _make_domain_shift(cfg)
    _assign_labels(cfg, cases)
    strength, mean_dice, per_case = _corrupt(cfg, cases)
    _prepare_root(root, overwrite)
    _write_cases(root, cases, aux)
    counts = {s: {k: sum(1 for c in cases if c.split == s and c.label_kind == k) for k in ("clean", "noisy", "none")}
              for s in SPLITS}
    info = PhantomInfo(root, cfg.task, cfg, counts, n_aux=len(aux),
                       noise_target=float(cfg.noise) if per_case else None, noisy_mean_dice=mean_dice,
                       corruption_strength=strength, noisy_case_dice=per_case)
    record = info.to_dict()
    del record["root"]  # keeps the folder's bytes independent of where it was written
    write_json(root / "phantom.json", record)
    return info
