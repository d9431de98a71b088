"""``shape_prior_gan``: pseudo labels without annotations from a shape-prior CycleGAN,
then noise-robust iterative training (Wang, Guo, Wang, Zhang, IEEE TMI; seed 000).

Stage 1 (Sec. II-A, II-B), no label of any training image is used:

- auxiliary masks, unpaired with the images: the cohort's ``aux_masks/`` (masks from
  another data set or domain; 3D masks give their slices that hold foreground), or
  ellipses drawn from a parametric model (minor axis and aspect ratio ranges, any
  orientation) in millimetres with each training image's pixel size
  (``shape_prior=ellipse``; presets: the paper's fetal head, the ``ellipse_us`` phantom);
- a CycleGAN between images I and masks S: G_A: I → S (pseudo labels, a U-Net with
  residual bottleneck blocks), G_B: S → I, LSGAN losses with 70×70 PatchGAN
  discriminators D_A, D_B (eq. 2), L1 cycle losses (eq. 1), total eq. (4) with
  λ_cycle = 10, λ_adv = 1, λ_VAE = 1;
- the VAE discriminator (eq. 3): a VAE (latent 32) pretrained on the auxiliary masks
  (phase ``vae``, L2 + KL), frozen; D_VAE tells the codes μ(S) of real masks from
  μ(G_A(I)) (switch ``vae_discriminator``);
- DGCC (eqs. 5–8): D_B's features calibrate G_A's decoder at four scales over T turns
  (switch ``dgcc``; ``dgcc_scales`` gives Table III's DGCC(l) / DGCC(h)).

Stage 2 (Sec. II-C), phases ``round1 … roundK``:

- LQSS (eq. 9): the image-level score R_i is the mean of D_B's patch output on the
  pseudo label G_A(I_i). **Sign convention:** here D_B is trained with the usual LSGAN
  targets real → 1, fake → 0, so a *high* R_i means "looks like a real mask". The paper's
  eq. (2) writes the targets the other way round (real → 0) and keeps R_i < α with α the
  75th percentile; the same cases are kept here by keeping R_i ≥ the 25th percentile
  (``lqss_percentile`` = 75 is the share kept). For volumes, R is the mean over slices
  and a case is kept or rejected whole. ``quality.csv``'s ``score`` is R (higher = more
  trustworthy) and the rejected cases are flagged (listed first).
- K rounds of iterative training (switch ``iterative``; off = train once): a U-Net
  (MONAI) learns from the kept cases' pseudo labels with the noise-weighted Dice loss
  (eqs. 10–11, :func:`noise_weighted_dice`; switch ``weighted_dice``, off = plain Dice),
  then predicts new pseudo labels for every training image. The kept set stays fixed.
  Training stops (the remaining rounds are skipped) when a round's validation Dice does
  not beat the previous round's.

Outputs: ``pseudo_labels/round<k>/<case>.seg.nrrd`` for every training case and round
(round 0 = G_A's pseudo labels, round k = the U-Net's after round k), the engine's
main ``pseudo_labels/<case>.seg.nrrd`` (final model), ``quality.csv`` with
``lqss_score``, ``lqss_accepted``, ``round_change`` (Dice between the last two rounds'
pseudo labels), per case ``maps/<case>/discriminator.nrrd`` (D_B's patch realness
of G_A's pseudo label, upsampled), and ``report/lqss.png`` (:meth:`ShapePriorGan.report_figures`).

Where this deviates from the paper (and why):

- learning rate: the paper's Adam 5e-6 for 50 epochs then a linear decay over 100
  epochs assumes ~10^5 generator steps; CPU-sized runs have a few hundred, so the
  default is CycleGAN's 2e-4, constant for ``gan_constant_fraction`` of the GAN epochs
  (1/3 as in 50 + 100), then linearly decayed to 0;
- model selection on the validation cases (the paper picks the number of rounds on its
  validation set): the pseudo labels come from the CycleGAN epoch with the best
  validation Dice (``gan_select_best``; a GAN's quality oscillates between epochs), and
  the engine keeps the weights with the best validation Dice (``engine.final=best``);
  which network predicts (G_A during stage 1, the U-Net from round 1) is stored with the
  weights, so the final model is the best one seen, G_A included;
- the noise weights ``w = 1 − |p − g|`` are treated as constants (no gradient through
  ``w``), as loss re-weighting usually is; the paper does not say;
- restarts (``gan_starts`` > 1, off by default): a CycleGAN between unpaired images and
  masks sometimes settles on masks that are cycle-consistent but in the wrong place (in
  the quick benchmark, one training seed of three gave pseudo labels of Dice 0.19 with
  centroids a quarter of the image away). With restarts, ``gan_starts`` short trials of
  ``start_epochs`` epochs from fresh initialisations run first (phases ``gan_try<i>``,
  constant learning rate); the trial with the best validation Dice (all networks and
  optimiser moments) then continues as the main CycleGAN phase. Not in the paper;
- image history pool (``history_pool``, off by default): CycleGAN's pool of past fakes
  for the discriminators, which the paper does not mention; no identity loss (undefined
  between a grey image and a mask);
- weight averages (``gan_ema``, off by default): an exponential moving average of G_A,
  D_B and DGCC (``torch.optim.swa_utils.AveragedModel``, updated after every CycleGAN
  step) then makes the pseudo labels, the LQSS scores and the validation; restarts reset
  it and the kept trial's average goes on with it. Not in the paper.

  Neither option is on in the benchmark. On ``ellipse_us`` (quick profile, 1 thread, 5
  training seeds, same host) a pool of 50 gave a final test Dice of 0.636 against 0.630
  without (one seed up 0.08, one down 0.08); averages with decay 0.98 smoothed G_A's
  validation curve but lagged it (best epoch 0.632 / 0.511 on seeds 0 / 1 against 0.647 /
  0.526 without; stopped after two seeds);
- minibatch standard deviation in D_B (``d_minibatch_std``, off by default; Karras et al.
  2018, Sec. 3): the last layer of the mask discriminator also reads the batch's feature
  spread (one constant channel), so that a generator whose masks all look alike (G_A
  pulls every head towards one size) is told apart from the varied prior. DGCC still
  reads D_B's per-mask features; a mask's LQSS score then depends a little on the masks
  scored beside it. Not in the paper;
- resize-then-crop (``gan_crop``, off by default): the paper resizes its images to
  288 × 288 and crops 256 × 256 at random; ``gan_crop=1.125`` does the same to each
  CycleGAN image and auxiliary mask (magnify by 1.125, random window of the training
  size; :func:`~aeseg.methods.common.random_zoom_crop`). Off by default because it did
  not help on ``ellipse_us`` (long CycleGAN, seeds 0 / 1: pseudo labels 0.625 / 0.604
  against 0.723 / 0.612 with flips alone).
- boundary dropout (``boundary_dropout``, off by default): in the mask → image → mask
  cycle, the image G_B generated loses, with this probability, 1–3 angular sectors of the
  mask's boundary (the band within ``size``/24 pixels of it replaced by its surroundings'
  brightness and texture, :func:`~aeseg.methods.common.boundary_dropout`) before G_A maps
  it back to the whole mask. That cycle is where G_A learns which image goes with which
  mask; G_B draws a complete boundary for every mask, while the skull's echo in ultrasound
  has gaps (acoustic shadows) where G_A has to complete the shape. Not in the paper. On
  ``ellipse_us`` with the long profile (0.5, 5 seeds) it lowered G_A's pseudo labels
  (0.571 against 0.664) and the final Dice (0.642 against 0.725; ``benchmarks/NOTES.md``,
  session 32), so it stays off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..cohort.reading import read_label
from ..data.slicing import from_slices, inplane_spacing, to_slices
from ..data.transforms import resize_probabilities, resize_slices
from ..errors import ConfigError, MethodUnavailable
from ..io.segmentation import Segment, write_seg_nrrd
from ..nets import NetConfig, make_unet
from ..nets.cyclegan import HistoryPool, PatchGAN, ResUNetGenerator, image_generator
from ..nets.dgcc import DGCC, generate_with_feedback
from ..nets.vae import LatentDiscriminator, MaskVAE, vae_loss
from ..quality.metrics import dice
from .base import CaseQuality, CohortSummary, EpochReport, Method, Phase, QualityResult, StepInfo
from .common import boundary_dropout, random_flips, random_zoom_crop
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from ..data.phantoms import EllipseRanges
    from ..engine.job import JobFolder


# --------------------------------------------------------------------------- losses and selection


def noise_weighted_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-5, weighted: bool = True) -> torch.Tensor:
    """Noise-weighted Dice loss, eqs. (10)–(11)::

        L = 1 − (2 Σ_i w_i p_i g_i + ε) / (Σ_i w_i (p_i + g_i) + ε),   w_i = 1 − |p_i − g_i|

    over every pixel of the batch, ``prob`` the foreground probability and ``target``
    the (pseudo) label, same shape. ``w`` is detached (a weight, not a path for the
    gradient). ``weighted=False`` gives ``w ≡ 1``: the plain soft Dice loss (equal to
    MONAI's ``DiceLoss(batch=True)`` on the foreground). Hand-written because MONAI's
    Dice losses take class weights only, not per-pixel weights.
    """
    p = prob.float()
    g = target.float()
    w = (1.0 - (p - g).abs()).detach() if weighted else torch.ones_like(p)
    return 1.0 - (2.0 * (w * p * g).sum() + eps) / ((w * (p + g)).sum() + eps)


def lsgan_d_loss(d, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Least-squares discriminator loss with targets real → 1, fake → 0 (the sign
    convention LQSS relies on: a high discriminator output means "looks real")."""
    dr, df = d(real), d(fake.detach())
    return 0.5 * (F.mse_loss(dr, torch.ones_like(dr)) + F.mse_loss(df, torch.zeros_like(df)))


def lsgan_g_loss(scores: torch.Tensor) -> torch.Tensor:
    """Least-squares generator loss: push the discriminator's output on fakes to 1 (eqs. 2, 3)."""
    return F.mse_loss(scores, torch.ones_like(scores))


def lqss_threshold(scores: np.ndarray, keep_percent: float) -> float:
    """α of eq. (9) in this module's sign convention (high score = real-looking): the
    ``100 − keep_percent`` percentile of the scores, so that ``keep_percent`` % are kept."""
    return float(np.percentile(np.asarray(scores, dtype=np.float64), 100.0 - float(keep_percent)))


def lqss_accept(scores: np.ndarray, keep_percent: float, alpha: float | None = None) -> np.ndarray:
    """Eq. (9): which cases LQSS keeps (``score ≥ α``; see the module docstring for the sign)."""
    s = np.asarray(scores, dtype=np.float64)
    a = lqss_threshold(s, keep_percent) if alpha is None else alpha
    return s >= a


# --------------------------------------------------------------------------- shape prior


def ellipse_ranges(cfg: "ShapePriorGanConfig") -> "EllipseRanges":
    """The ellipse model of ``cfg``: a preset or the user's ranges (lengths in mm)."""
    from ..data.phantoms import FETAL_HEAD, PHANTOM_HEAD, EllipseRanges

    if cfg.ellipse_preset == "fetal_head":
        return FETAL_HEAD
    if cfg.ellipse_preset == "phantom":
        return PHANTOM_HEAD
    if not 0 < cfg.minor_mm_low <= cfg.minor_mm_high:
        raise ConfigError(f"ellipse minor axis range must satisfy 0 < minor_mm_low ≤ minor_mm_high "
                          f"(got {cfg.minor_mm_low}, {cfg.minor_mm_high})")
    if not 1.0 <= cfg.aspect_low <= cfg.aspect_high:
        raise ConfigError(f"ellipse aspect range must satisfy 1 ≤ aspect_low ≤ aspect_high (got {cfg.aspect_low}, {cfg.aspect_high})")
    if cfg.angle_low_deg > cfg.angle_high_deg:
        raise ConfigError("angle_low_deg must not exceed angle_high_deg")
    return EllipseRanges((float(cfg.minor_mm_low), float(cfg.minor_mm_high)), (float(cfg.aspect_low), float(cfg.aspect_high)),
                         (math.radians(cfg.angle_low_deg), math.radians(cfg.angle_high_deg)))


def ellipse_pool(n: int, grids: list[tuple[tuple[int, int], tuple[float, float]]], size: int, ranges: "EllipseRanges",
                 rng: np.random.Generator) -> np.ndarray:
    """``(n, size, size)`` uint8 ellipse masks for images resized to ``size`` px.

    ``grids`` holds each training image's in-plane ``((H, W), (sx, sy))`` (pixels, mm);
    every mask picks one image at random and is rasterised with that image's pixel size
    *after* resizing, ``(W·sx/size, H·sy/size)``, so that it has the physical size the
    model asks for once drawn on the resized image (anisotropic pixels included).
    """
    from ..data.phantoms import sample_ellipse_masks

    if not grids:
        raise MethodUnavailable("no training image to take the pixel size of the ellipses from")
    pick = rng.integers(0, len(grids), size=int(n))
    out = np.zeros((int(n), size, size), dtype=np.uint8)
    spacings = [(hw[1] * sp[0] / size, hw[0] * sp[1] / size) for hw, sp in grids]
    for key in sorted({tuple(round(v, 9) for v in spacings[i]) for i in pick}):
        sel = np.array([i for i, p in enumerate(pick) if tuple(round(v, 9) for v in spacings[p]) == key])
        out[sel] = sample_ellipse_masks(len(sel), (size, size), key, ranges, rng)
    return out


def read_aux_masks(paths, size: int, axis: int) -> np.ndarray:
    """``(M, size, size)`` uint8 auxiliary masks from files: every slice (on ``axis``; 2D
    files on their own plane) that holds foreground, resized (nearest) to ``size``."""
    out = []
    for p in paths:
        arr, geom = read_label(p)
        sl = to_slices(arr, axis if geom.ndim == 3 else 2)
        sl = sl[sl.reshape(sl.shape[0], -1).any(axis=1)]
        if len(sl):
            out.append((resize_slices(sl[:, None].astype(np.float32), size, "nearest")[:, 0] > 0.5).astype(np.uint8))
    if not out:
        raise MethodUnavailable("the auxiliary masks (aux_masks/) hold no foreground; add masks of the target "
                                "or set shape_prior=ellipse")
    return np.concatenate(out)


# --------------------------------------------------------------------------- config


@dataclass
class ShapePriorGanConfig(NetConfig):
    # shape prior
    shape_prior: Literal["aux_masks", "ellipse"] = field(default="aux_masks", metadata={"help": "auxiliary masks: the cohort's aux_masks/ folder, or ellipses from a shape model"})
    ellipse_preset: Literal["custom", "fetal_head", "phantom"] = field(default="custom", metadata={"help": "ellipse ranges: the fields below (custom), the paper's fetal head (minor 25–105 mm, aspect 1.2–1.8), or the ellipse_us phantom (×0.15)"})
    minor_mm_low: float = field(default=25.0, metadata={"help": "ellipse minor axis (full length), lowest, mm", "min": 0.0})
    minor_mm_high: float = field(default=105.0, metadata={"help": "ellipse minor axis (full length), highest, mm", "min": 0.0})
    aspect_low: float = field(default=1.2, metadata={"help": "ellipse aspect ratio major/minor, lowest", "min": 1.0})
    aspect_high: float = field(default=1.8, metadata={"help": "ellipse aspect ratio major/minor, highest", "min": 1.0})
    angle_low_deg: float = field(default=0.0, metadata={"help": "ellipse orientation, lowest, degrees", "min": -360.0, "max": 360.0})
    angle_high_deg: float = field(default=360.0, metadata={"help": "ellipse orientation, highest, degrees", "min": -360.0, "max": 360.0})
    n_ellipses: int = field(default=512, metadata={"help": "ellipse masks drawn for training", "min": 8})
    # ablation switches (Tables I, III, IV, VI)
    vae_discriminator: bool = field(default=True, metadata={"help": "VAE-based latent discriminator D_VAE (eq. 3)"})
    dgcc: bool = field(default=True, metadata={"help": "discriminator-guided generator channel calibration (eqs. 5-8)"})
    lqss: bool = field(default=True, metadata={"help": "label-quality-based sample selection (eq. 9)"})
    iterative: bool = field(default=True, metadata={"help": "iterative training over several rounds (off: train once)"})
    weighted_dice: bool = field(default=True, metadata={"help": "noise-weighted Dice loss (eqs. 10-11; off: plain Dice)"})
    # loss weights
    lambda_cycle: float = field(default=10.0, metadata={"help": "weight of the cycle L1 losses", "min": 0.0})
    lambda_adv: float = field(default=1.0, metadata={"help": "weight of the PatchGAN adversarial losses", "min": 0.0})
    lambda_vae: float = field(default=1.0, metadata={"help": "weight of the latent (VAE) adversarial loss", "min": 0.0})
    # DGCC
    turns: int = field(default=2, metadata={"help": "DGCC turns T (the output at turn T is the pseudo label)", "min": 1, "max": 5})
    dgcc_scales: Literal["all", "low", "high"] = field(default="all", metadata={"help": "decoder scales calibrated: all four, the bottleneck only (DGCC(l)) or the last (DGCC(h))"})
    dgcc_reduction: int = field(default=4, metadata={"help": "squeeze-and-excitation reduction r", "min": 1})
    beta_scale: float = field(default=1.0, metadata={"help": "multiplier on the calibration coefficients β (0: no calibration)", "min": 0.0})
    # stage 2
    lqss_percentile: float = field(default=75.0, metadata={"help": "LQSS: percent of the training cases kept (the best-scored ones)", "min": 1.0, "max": 100.0})
    gan_starts: int = field(default=1, metadata={"help": "CycleGAN restarts: short trials from fresh initialisations, the best on validation Dice continues (1: no restarts, as the paper)", "min": 1, "max": 8})
    start_epochs: int = field(default=4, metadata={"help": "epochs of each restart trial (with gan_starts > 1)", "min": 1})
    d_minibatch_std: bool = field(default=False, metadata={"help": "D_B sees the batch's feature spread (minibatch standard deviation, ProGAN) so that masks of collapsed variety look fake"})
    history_pool: int = field(default=0, metadata={"help": "generated samples kept for the discriminators D_A, D_B (CycleGAN's image pool, 50 there; 0: off, as the paper)", "min": 0, "max": 1000})
    gan_ema: float = field(default=0.0, metadata={"help": "decay of an exponential moving average of G_A, D_B and DGCC weights, which then make the pseudo labels and validation (0: off, as the paper; e.g. 0.98)", "min": 0.0, "max": 0.9999})
    gan_select_best: bool = field(default=True, metadata={"help": "pseudo labels from the CycleGAN epoch with the best validation Dice (else the last epoch)"})
    rounds: int = field(default=4, metadata={"help": "rounds K of iterative training (0: stop after the CycleGAN, G_A predicts)", "min": 0, "max": 20})
    early_stop: bool = field(default=True, metadata={"help": "skip the remaining rounds when a round does not improve validation Dice"})
    stage1_from: str = field(default="", metadata={"help": "job folder whose trained stage 1 (VAE, CycleGAN, DGCC; same settings) is reused: only the rounds run"})
    # schedule (0: the engine's epochs)
    vae_epochs: int = field(default=0, metadata={"help": "VAE pretraining epochs over the auxiliary masks (0: engine epochs)", "min": 0})
    gan_epochs: int = field(default=0, metadata={"help": "CycleGAN epochs (0: engine epochs)", "min": 0})
    round_epochs: int = field(default=0, metadata={"help": "epochs per iterative-training round (0: engine epochs)", "min": 0})
    # networks
    gan_features: int = field(default=32, metadata={"help": "generator channels at full resolution (paper 128)", "min": 4, "max": 256})
    gan_res_blocks: int = field(default=6, metadata={"help": "residual blocks in the generators' bottleneck", "min": 0, "max": 12})
    d_features: int = field(default=64, metadata={"help": "PatchGAN channels in the first layer (paper 64)", "min": 4, "max": 256})
    latent: int = field(default=32, metadata={"help": "VAE latent length", "min": 2, "max": 512})
    vae_features: int = field(default=16, metadata={"help": "VAE channels in the first layer", "min": 4, "max": 128})
    # optimisation
    gan_lr: float = field(default=2e-4, metadata={"help": "Adam learning rate of the CycleGAN (paper 5e-6 with far more steps)", "min": 0.0})
    gan_constant_fraction: float = field(default=1.0 / 3.0, metadata={"help": "share of the CycleGAN epochs at constant learning rate before the linear decay to 0", "min": 0.0, "max": 1.0})
    vae_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the VAE", "min": 0.0})
    vae_kl_weight: float = field(default=1.0, metadata={"help": "weight of the KL term in VAE pretraining", "min": 0.0})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the segmentation U-Net", "min": 0.0})
    augment: bool = field(default=True, metadata={"help": "random flips of images (and labels) during training"})
    boundary_dropout: float = field(default=0.0, metadata={"help": "CycleGAN training: probability that an image G_B generated from an auxiliary mask loses 1-3 sectors of the mask's boundary before G_A maps it back (the mask → image → mask cycle), so that G_A learns to complete masks whose boundary is weak or missing, as ultrasound's acoustic shadows leave them (0: off, as the paper)", "min": 0.0, "max": 1.0})
    gan_crop: float = field(default=1.0, metadata={"help": "CycleGAN training: magnify each image and auxiliary mask by this factor and take a random window of the training size (the paper resizes to 288 and crops 256: 1.125; 1: off)", "min": 1.0, "max": 2.0})


class _Stage(nn.Module):
    """Which network predicts (0: G_A, 1: the U-Net), saved with the weights so that a
    checkpoint always predicts with the network it was selected for."""

    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.zeros((), dtype=torch.long))


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.cpu().numpy().astype(bool).reshape(-1)))


def _unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(packed.numpy())[:n].reshape(tuple(shape)).astype(np.uint8))


def _set_grad(modules, flag: bool) -> None:
    for m in modules:
        if m is not None:
            for p in m.parameters():
                p.requires_grad_(flag)


# --------------------------------------------------------------------------- method


@register
class ShapePriorGan(Method):
    name = "shape_prior_gan"
    title = "Shape-prior CycleGAN pseudo labels (no annotations)"
    description = ("CycleGAN between images and unpaired auxiliary masks (VAE discriminator, DGCC) gives pseudo labels; "
                   "LQSS keeps the best ones and a U-Net learns from them with a noise-weighted Dice loss, re-predicting "
                   "them over several rounds.")
    needs = "training images (labels not needed) plus auxiliary masks in aux_masks/ or an ellipse shape model (shape_prior=ellipse)"
    Config = ShapePriorGanConfig
    train_kinds = None  # every training slice: the method ignores labels

    @classmethod
    def unsupported_reason(cls, s: CohortSummary, config: ShapePriorGanConfig | None = None) -> str | None:
        prior = config.shape_prior if config is not None else "aux_masks"
        if prior == "aux_masks" and s.aux_masks == 0 and not (config is not None and config.stage1_from):
            return "needs auxiliary masks in aux_masks/ (unpaired masks of the target) or shape_prior=ellipse"
        return None

    def __init__(self, config: ShapePriorGanConfig, ctx):
        super().__init__(config, ctx)
        c = config
        self.size = int(ctx.data.config.size)
        if self.size % 16:
            raise ConfigError(f"shape_prior_gan needs data.size divisible by 16 (got {self.size})")
        if c.shape_prior == "ellipse":
            ellipse_ranges(c)  # validate now
        ch = ctx.in_channels
        self.g = ctx.generator(5)
        fresh = self._fresh_gan(with_vae=True)
        self.G_A, self.G_B, self.D_A, self.D_B = (ctx.wrap(fresh[k]) for k in ("G_A", "G_B", "D_A", "D_B"))
        self.dgcc = ctx.wrap(fresh["dgcc"]) if "dgcc" in fresh else None
        self.vae = ctx.wrap(fresh["vae"]) if "vae" in fresh else None
        self.D_V = ctx.wrap(fresh["D_VAE"]) if "D_VAE" in fresh else None
        self.seg = ctx.wrap(make_unet(ch, 2, c))
        self.stage = _Stage().to(ctx.device)

        g_params = [*self.G_A.parameters(), *self.G_B.parameters(), *(self.dgcc.parameters() if self.dgcc else [])]
        d_params = [*self.D_A.parameters(), *self.D_B.parameters(), *(self.D_V.parameters() if self.D_V else [])]
        self.opt_g = torch.optim.Adam(g_params, lr=c.gan_lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(d_params, lr=c.gan_lr, betas=(0.5, 0.999))
        self._gan_epochs = 1
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._gan_lr_factor)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, self._gan_lr_factor)
        self.opt_vae = torch.optim.Adam(self.vae.parameters(), lr=c.vae_lr) if self.vae is not None else None
        self.opt_seg = torch.optim.Adam(self.seg.parameters(), lr=c.lr)
        self.dice_loss = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                  smooth_nr=1e-5, smooth_dr=1e-5)

        self.ema: dict[str, nn.Module] | None = None  # averaged G_A, D_B, DGCC (gan_ema > 0)
        if c.gan_ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = {k: AveragedModel(self._raw(m), multi_avg_fn=get_ema_multi_avg_fn(c.gan_ema), use_buffers=True)
                        for k, m in self._stage1_nets().items()}
        self.pool_a, self.pool_b = HistoryPool(c.history_pool), HistoryPool(c.history_pool)  # fakes for D_A, D_B
        self._vae_frozen = False
        self._aux: torch.Tensor | None = None  # (M, 1, S, S) float {0, 1}; built on first use (not needed to predict)
        # stage-2 state (checkpointed in extra_state)
        self.pseudo: torch.Tensor | None = None  # (N, 1, S, S) uint8: current pseudo labels of the training slices
        self.round_labels: list[torch.Tensor] = []  # packed (N, S, S) pseudo labels of rounds 0..k
        self.case_score: torch.Tensor | None = None  # (n_train_cases,) LQSS score R
        self.accepted: torch.Tensor | None = None  # (n_train_cases,) bool
        self.alpha: float | None = None
        self.round_val: list[float] = []
        self.stopped = False
        self.gan_best, self.gan_best_epoch = -1.0, 0
        self._gan_best_state: dict | None = None  # G_A, D_B, DGCC weights of the best CycleGAN epoch
        self.try_best, self.try_best_index = -1.0, 0  # restarts: best trial so far (validation Dice, 1-based)
        self._try_best_state: dict | None = None  # its networks and optimiser states, until the main phase loads it

    # --- helpers ----------------------------------------------------------------------
    @staticmethod
    def _raw(m: nn.Module) -> nn.Module:
        return getattr(m, "module", m)

    def _fresh_gan(self, with_vae: bool = False) -> dict[str, nn.Module]:
        """The CycleGAN's trainable networks, freshly initialised, in construction order
        (``with_vae``: also the mask VAE, which is pretrained and frozen, never restarted)."""
        c, ch = self.config, self.ctx.in_channels
        out = {"G_A": ResUNetGenerator(ch, 1, c.gan_features, c.gan_res_blocks),
               "G_B": image_generator(1, ch, c.gan_features, c.gan_res_blocks),
               "D_A": PatchGAN(ch, c.d_features), "D_B": PatchGAN(1, c.d_features, minibatch_std=c.d_minibatch_std)}
        if c.dgcc and c.turns > 1:
            out["dgcc"] = DGCC(out["D_B"].feature_channels, out["G_A"].scale_channels, c.dgcc_reduction, c.dgcc_scales)
        if c.vae_discriminator:
            if with_vae:
                out["vae"] = MaskVAE(self.size, c.latent, c.vae_features)
            out["D_VAE"] = LatentDiscriminator(c.latent)
        return {k: m.to(self.ctx.device) for k, m in out.items()}

    def _gan_nets(self) -> dict[str, nn.Module]:
        return {k: m for k, m in (("G_A", self.G_A), ("G_B", self.G_B), ("D_A", self.D_A), ("D_B", self.D_B),
                                  ("dgcc", self.dgcc), ("D_VAE", self.D_V)) if m is not None}

    def _gan_snapshot(self) -> dict:
        """Copies of the CycleGAN's networks and optimiser states (CPU)."""
        import copy

        nets = {k: {n: t.detach().cpu().clone() for n, t in self._raw(m).state_dict().items()} for k, m in self._gan_nets().items()}
        ema = {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()} for k, m in (self.ema or {}).items()}
        return {"nets": nets, "ema": ema, "opt_g": copy.deepcopy(self.opt_g.state_dict()),
                "opt_d": copy.deepcopy(self.opt_d.state_dict())}

    def _restart_gan(self) -> None:
        """Fresh initialisation of the CycleGAN (seeded from the method's generator, so a
        resumed job draws the same one) and empty Adam moments."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.g))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = self._fresh_gan()
        for k, m in self._gan_nets().items():
            self._raw(m).load_state_dict(fresh[k].state_dict())
        self.opt_g.state.clear()
        self.opt_d.state.clear()
        self._reset_ema()
        self._clear_pools()

    def _clear_pools(self) -> None:
        self.pool_a.load(None)
        self.pool_b.load(None)

    def _reset_ema(self) -> None:
        """The averages restart from the live networks' weights (a fresh trial)."""
        live = self._stage1_nets()
        for k, m in (self.ema or {}).items():
            m.module.load_state_dict(self._raw(live[k]).state_dict())
            m.n_averaged.zero_()

    def _update_ema(self) -> None:
        live = self._stage1_nets()
        for k, m in (self.ema or {}).items():
            m.update_parameters(self._raw(live[k]))

    def _eval_nets(self) -> dict[str, nn.Module]:
        """G_A, D_B (and DGCC) that make pseudo labels, LQSS scores and validation: the
        averaged ones with ``gan_ema``, else the trained ones."""
        if self.ema is None:
            return {k: self._raw(m) for k, m in self._stage1_nets().items()}
        return {k: m.module for k, m in self.ema.items()}

    def _end_try(self, info: StepInfo) -> dict[str, float]:
        """End of a restart trial: keep it if its validation Dice is the best so far, then
        start the next trial from a fresh initialisation."""
        vd = self._trial_dice()
        i = int(info.phase[len("gan_try"):])
        if vd > self.try_best:
            self.try_best, self.try_best_index = vd, i
            self._try_best_state = self._gan_snapshot()
        if i < self.config.gan_starts:
            self._restart_gan()
        return {"gan_val_dice": vd, "try_best": float(self.try_best_index)}

    def _trial_dice(self) -> float:
        """Validation Dice of G_A's pseudo labels (0 without validation cases)."""
        from ..engine.loop import validate

        return validate(self, self.ctx.data, self.ctx.device) if len(self.ctx.data.val.records) else 0.0

    def _gan_lr_factor(self, epoch: int) -> float:
        n = max(self._gan_epochs, 1)
        n_const = int(round(self.config.gan_constant_fraction * n))
        if epoch < n_const:
            return 1.0
        return max(0.0, 1.0 - (epoch - n_const + 1) / (n - n_const + 1))

    @property
    def n_rounds(self) -> int:
        return self.config.rounds if self.config.iterative else min(self.config.rounds, 1)

    @property
    def aux(self) -> torch.Tensor:
        if self._aux is None:
            self._aux = torch.from_numpy(self._shape_prior_masks()).float()[:, None]
        return self._aux

    def _shape_prior_masks(self) -> np.ndarray:
        c, data = self.config, self.ctx.data
        rng = np.random.default_rng([int(self.ctx.seed), 7])
        if c.shape_prior == "ellipse":
            grids = []
            for rec in data.train.records:
                row, col = inplane_spacing(rec.geometry.spacing, data.config.axis if rec.geometry.ndim == 3 else 2)
                grids.append((rec.inplane, (col, row)))
            return ellipse_pool(c.n_ellipses, grids, self.size, ellipse_ranges(c), rng)
        cohort = self.ctx.cohort
        if cohort is None or not getattr(cohort, "aux_masks", None):
            raise MethodUnavailable("shape_prior_gan needs the cohort's auxiliary masks (aux_masks/) or shape_prior=ellipse")
        return read_aux_masks(cohort.aux_masks, self.size, data.config.axis)

    @staticmethod
    def _to_mask(logits: torch.Tensor) -> torch.Tensor:
        """G_A logits → the mask domain of D_B, G_B and the cycle loss: 2·sigmoid − 1 ∈ [−1, 1]."""
        return 2.0 * torch.sigmoid(logits) - 1.0

    def _generate(self, images: torch.Tensor, averaged: bool = False) -> torch.Tensor:
        """G_A's logits at turn T (eq. 8); ``averaged``: with :meth:`_eval_nets` (the
        moving averages when ``gan_ema`` is on), else with the networks being trained."""
        if averaged:
            nets = self._eval_nets()
            g_a, d_b, dgcc = nets["G_A"], nets["D_B"], nets.get("dgcc")
        else:
            g_a, d_b, dgcc = self.G_A, self._raw(self.D_B), self.dgcc
        outs = generate_with_feedback(g_a, lambda s: d_b.features_and_scores(s)[0], dgcc, images,
                                      self.config.turns, self._to_mask, self.config.beta_scale)
        return outs[-1]

    @torch.no_grad()
    def _ga_slices(self, images: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """G_A on CPU-held slices: (probability (N,1,S,S), D_B patch map (N,1,h,w), R per slice (N,))."""
        self.train_mode(False)
        probs, maps = [], []
        d_b = self._eval_nets()["D_B"]
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size].to(self.ctx.device)
            with self.ctx.autocast():
                logits = self._generate(x, averaged=True)
                d = d_b(self._to_mask(logits))
            probs.append(torch.sigmoid(logits.float()).cpu())
            maps.append(d.float().cpu())
        self.train_mode(True)
        if not probs:
            return torch.zeros(0, 1, self.size, self.size), torch.zeros(0, 1, 1, 1), torch.zeros(0)
        maps_t = torch.cat(maps)
        return torch.cat(probs), maps_t, maps_t.mean(dim=(1, 2, 3))

    @torch.no_grad()
    def _seg_slices(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        self.train_mode(False)
        out = []
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size].to(self.ctx.device)
            with self.ctx.autocast():
                out.append(torch.softmax(self.seg(x).float(), 1)[:, 1:2].cpu())
        self.train_mode(True)
        return torch.cat(out) if out else torch.zeros(0, 1, self.size, self.size)

    def _case_means(self, per_slice: torch.Tensor, slices) -> torch.Tensor:
        n = len(slices.records)
        sums = torch.zeros(n).index_add_(0, slices.case_index, per_slice.float())
        counts = torch.zeros(n).index_add_(0, slices.case_index, torch.ones(len(per_slice)))
        return sums / counts.clamp(min=1)

    @staticmethod
    def _is_gan(phase_name: str) -> bool:
        return phase_name == "cyclegan" or phase_name.startswith("gan_try")

    def _round_of(self, phase_name: str) -> int:
        return int(phase_name[len("round"):]) if phase_name.startswith("round") else 0

    # --- state --------------------------------------------------------------------------
    def modules(self):
        out = {"G_A": self.G_A, "G_B": self.G_B, "D_A": self.D_A, "D_B": self.D_B, "seg": self.seg, "stage": self.stage}
        if self.dgcc is not None:
            out["dgcc"] = self.dgcc
        if self.vae is not None:
            out["vae"] = self.vae
            out["D_VAE"] = self.D_V
        for k, m in (self.ema or {}).items():
            out[f"{k}_ema"] = m
        return out

    def optimizers(self):
        out = {"opt_g": self.opt_g, "opt_d": self.opt_d, "sched_g": self.sched_g, "sched_d": self.sched_d, "opt_seg": self.opt_seg}
        if self.opt_vae is not None:
            out["opt_vae"] = self.opt_vae
        return out

    def extra_state(self):
        return {"rng": self.g.get_state(), "pseudo": None if self.pseudo is None else _pack(self.pseudo),
                "pseudo_shape": None if self.pseudo is None else list(self.pseudo.shape),
                "round_labels": list(self.round_labels), "case_score": self.case_score, "accepted": self.accepted,
                "alpha": self.alpha, "round_val": list(self.round_val), "stopped": self.stopped,
                "gan_best": self.gan_best, "gan_best_epoch": self.gan_best_epoch, "gan_best_state": self._gan_best_state,
                "try_best": self.try_best, "try_best_index": self.try_best_index, "try_best_state": self._try_best_state,
                "pool_a": self.pool_a.state(), "pool_b": self.pool_b.state()}

    def load_extra_state(self, state):
        self.g.set_state(state["rng"])
        self.pseudo = None if state.get("pseudo") is None else _unpack(state["pseudo"], state["pseudo_shape"])
        self.round_labels = list(state.get("round_labels", []))
        self.case_score, self.accepted = state.get("case_score"), state.get("accepted")
        self.alpha = state.get("alpha")
        self.round_val = list(state.get("round_val", []))
        self.stopped = bool(state.get("stopped", False))
        self.gan_best = float(state.get("gan_best", -1.0))
        self.gan_best_epoch = int(state.get("gan_best_epoch", 0))
        self._gan_best_state = state.get("gan_best_state")
        self.try_best = float(state.get("try_best", -1.0))
        self.try_best_index = int(state.get("try_best_index", 0))
        self._try_best_state = state.get("try_best_state")
        self.pool_a.load(state.get("pool_a"))
        self.pool_b.load(state.get("pool_b"))

    def train_mode(self, training: bool) -> None:
        super().train_mode(training)
        if self.vae is not None and self._vae_frozen:
            self.vae.eval()

    # --- phases ---------------------------------------------------------------------
    def phases(self, epochs: int) -> list[Phase]:
        c = self.config
        self._gan_epochs = c.gan_epochs or epochs
        out = []
        if not c.stage1_from:
            if c.vae_discriminator:
                out.append(Phase("vae", c.vae_epochs or epochs))
            if c.gan_starts > 1:
                out += [Phase(f"gan_try{i}", c.start_epochs) for i in range(1, c.gan_starts + 1)]
            out.append(Phase("cyclegan", self._gan_epochs))
        out += [Phase(f"round{k}", c.round_epochs or epochs) for k in range(1, self.n_rounds + 1)]
        return out

    def begin_phase(self, phase: Phase) -> None:
        if phase.name != "vae" and self.vae is not None:
            _set_grad([self.vae], False)
            self._vae_frozen = True
            self.vae.eval()
        k = self._round_of(phase.name)
        if k == 0:
            self.stage.value.fill_(0)
            if phase.name == "cyclegan" and self._try_best_state is not None:  # restarts: the best trial goes on
                for name, m in self._gan_nets().items():
                    self._raw(m).load_state_dict(self._try_best_state["nets"][name])
                for name, m in (self.ema or {}).items():
                    m.load_state_dict(self._try_best_state["ema"][name])
                self.opt_g.load_state_dict(self._try_best_state["opt_g"])
                self.opt_d.load_state_dict(self._try_best_state["opt_d"])
                self._try_best_state = None  # now in the live networks (and so in every later checkpoint)
                self._clear_pools()  # they hold the last trial's fakes, not the kept one's
            return
        if self.stopped:
            phase.epochs = 0  # the engine runs no epoch of a skipped round (train_step is a no-op too)
            return
        self.stage.value.fill_(1)
        _set_grad([self.G_A, self.G_B, self.D_A, self.D_B, self.dgcc, self.D_V], False)
        if self.pseudo is None:
            if self.config.stage1_from:
                self._load_stage1(self.config.stage1_from)
            self._start_stage2()

    def _load_stage1(self, job_dir: str) -> None:
        """Stage-1 networks from another job's last checkpoint (trained with the same settings)."""
        from pathlib import Path

        from torch.optim.swa_utils import AveragedModel

        path = Path(job_dir).expanduser() / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ConfigError(f"stage1_from: {path} not found; give a job folder of shape_prior_gan that finished its CycleGAN phase")
        state = torch.load(path, map_location="cpu", weights_only=True)["modules"]
        for name, m in self.modules().items():
            if name in ("seg", "stage"):
                continue
            if name not in state:
                raise ConfigError(f"stage1_from: {job_dir} has no '{name}' network (trained with other switches)")
            try:  # a weight average (``<net>_ema``) is saved whole: an AveragedModel with its count
                (m if isinstance(m, AveragedModel) else self._raw(m)).load_state_dict(state[name])
            except RuntimeError as e:
                raise ConfigError(f"stage1_from: {job_dir}: '{name}' does not match this configuration "
                                  f"(network sizes differ): {str(e).splitlines()[0]}") from None

    def _stage1_nets(self) -> dict[str, nn.Module]:
        """The networks stage 2 uses: G_A, D_B (LQSS) and DGCC."""
        return {k: m for k, m in (("G_A", self.G_A), ("D_B", self.D_B), ("dgcc", self.dgcc)) if m is not None}

    def _start_stage2(self) -> None:
        """G_A's pseudo labels for every training slice (round 0) and LQSS (eq. 9)."""
        train = self.ctx.data.train
        if self._gan_best_state is not None:
            for k, m in self._stage1_nets().items():
                self._raw(m).load_state_dict(self._gan_best_state[k])
                if self.ema is not None:
                    self.ema[k].module.load_state_dict(self._gan_best_state[k])
            self._gan_best_state = None  # now in the live networks (and so in every later checkpoint)
        prob, _, r_slice = self._ga_slices(train.images)
        self.pseudo = (prob > 0.5).to(torch.uint8)
        self.round_labels = [_pack(self.pseudo[:, 0])]
        self.case_score = self._case_means(r_slice, train)
        scores = self.case_score.numpy()
        self.alpha = lqss_threshold(scores, self.config.lqss_percentile) if len(scores) else 0.0
        if self.config.lqss:
            self.accepted = torch.from_numpy(lqss_accept(scores, self.config.lqss_percentile, self.alpha))
        else:
            self.accepted = torch.ones(len(scores), dtype=torch.bool)

    def train_indices(self, phase: Phase) -> torch.Tensor:
        train = self.ctx.data.train
        if phase.name == "vae":
            return torch.arange(len(self.aux))
        if self._is_gan(phase.name):
            return train.indices(None)
        if self.stopped or self.accepted is None:
            return torch.arange(min(1, len(train)))
        keep = torch.nonzero(self.accepted).flatten()
        return torch.nonzero(torch.isin(train.case_index, keep)).flatten()

    def make_batch(self, idx: torch.Tensor, phase: Phase) -> dict:
        if phase.name == "vae":
            return {"mask": self.aux[idx]}
        b = self.ctx.data.train.batch(idx)
        if self._is_gan(phase.name):
            b["aux"] = self.aux[torch.randint(len(self.aux), (len(idx),), generator=self.g)]
        elif self.pseudo is not None:
            b["pseudo"] = self.pseudo[idx].long()
        return b

    # --- training steps ---------------------------------------------------------------
    def train_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        if info.phase == "vae":
            return self._vae_step(batch)
        if self._is_gan(info.phase):
            return self._gan_step(batch)
        if self.stopped or "pseudo" not in batch:
            return {}
        return self._seg_step(batch)

    def _vae_step(self, batch: dict) -> dict[str, float]:
        m = batch["mask"]
        self.vae.train()
        with self.ctx.autocast():
            recon, mu, logvar = self._raw(self.vae).sample(m, self.g)
            loss, l2, kl = vae_loss(recon.float(), m, mu.float(), logvar.float(), self.config.vae_kl_weight)
        self.ctx.optimize(loss, self.opt_vae)
        return {"vae": float(loss.detach()), "l2": float(l2.detach()), "kl": float(kl.detach())}

    def _gan_step(self, batch: dict) -> dict[str, float]:
        """One CycleGAN iteration: generators (eq. 4), then discriminators (LSGAN)."""
        c = self.config
        x, m = batch["image"], batch["aux"]
        if c.augment:
            x, _ = random_flips(x, None, self.g)
            m, _ = random_flips(m, None, self.g)
        if c.gan_crop > 1.0:
            x = random_zoom_crop(x, c.gan_crop, self.g)
            m = random_zoom_crop(m, c.gan_crop, self.g, mode="nearest")
        real_s = 2.0 * m - 1.0
        discs = [self.D_A, self.D_B, self.D_V]
        _set_grad(discs, False)
        with self.ctx.autocast():
            fake_logits = self._generate(x)
            p = torch.sigmoid(fake_logits)
            fake_s = 2.0 * p - 1.0
            rec_x = self.G_B(fake_s)
            fake_x = self.G_B(real_s)
            seen_x = boundary_dropout(fake_x, m, self.g, c.boundary_dropout, max(1, round(self.size / 24)))
            rec_s = self._to_mask(self._generate(seen_x))
            l_adv = lsgan_g_loss(self.D_B(fake_s)) + lsgan_g_loss(self.D_A(fake_x))
            l_cyc = F.l1_loss(rec_x, x) + F.l1_loss(rec_s, real_s)
            loss_g = c.lambda_adv * l_adv + c.lambda_cycle * l_cyc
            if self.D_V is not None:
                z_f = self.vae(p)
                l_vae = lsgan_g_loss(self.D_V(z_f))
                loss_g = loss_g + c.lambda_vae * l_vae
        self.ctx.optimize(loss_g, self.opt_g)

        _set_grad(discs, True)
        with self.ctx.autocast():
            l_da = lsgan_d_loss(self.D_A, x, self.pool_a.query(fake_x, self.g))
            l_db = lsgan_d_loss(self.D_B, real_s, self.pool_b.query(fake_s, self.g))
            loss_d = l_da + l_db
            out = {}
            if self.D_V is not None:
                with torch.no_grad():
                    z_r = self.vae(m)
                l_dv = lsgan_d_loss(self.D_V, z_r, z_f)
                loss_d = loss_d + c.lambda_vae * l_dv
                out = {"g_vae": float(l_vae.detach()), "d_vae": float(l_dv.detach())}
        self.ctx.optimize(loss_d, self.opt_d)
        self._update_ema()
        return {"g": float(loss_g.detach()), "adv": float(l_adv.detach()), "cycle": float(l_cyc.detach()),
                "d_a": float(l_da.detach()), "d_b": float(l_db.detach()), **out}

    def _seg_step(self, batch: dict) -> dict[str, float]:
        x, y = batch["image"], batch["pseudo"]
        if self.config.augment:
            x, y = random_flips(x, y, self.g)
        self.seg.train()
        with self.ctx.autocast():
            logits = self.seg(x)
            if self.config.weighted_dice:
                loss = noise_weighted_dice(torch.softmax(logits.float(), 1)[:, 1:2], y)
            else:
                loss = self.dice_loss(logits.float(), y)
        self.ctx.optimize(loss, self.opt_seg)
        return {"loss": float(loss.detach())}

    def end_epoch(self, info: StepInfo) -> EpochReport:
        if info.phase.startswith("gan_try"):
            return EpochReport(self._end_try(info) if info.epoch == info.epochs - 1 else {})
        if info.phase == "cyclegan":
            self.sched_g.step()
            self.sched_d.step()
            return EpochReport(self._select_gan_epoch(info))
        k = self._round_of(info.phase)
        if k == 0 or self.stopped or info.epoch != info.epochs - 1:
            return EpochReport()
        return self._end_round(k)

    def _select_gan_epoch(self, info: StepInfo) -> dict[str, float]:
        """Validation Dice of G_A after a CycleGAN epoch; keep the best epoch's stage-1 weights."""
        metrics = {"gan_lr": self.opt_g.param_groups[0]["lr"]}
        data = self.ctx.data
        if not self.config.gan_select_best or not len(data.val.records) or self.n_rounds == 0:
            return metrics
        from ..engine.loop import validate

        vd = validate(self, data, self.ctx.device)
        metrics["gan_val_dice"] = vd
        if vd > self.gan_best:
            self.gan_best, self.gan_best_epoch = vd, info.epoch + 1
            self._gan_best_state = {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                                    for k, m in self._eval_nets().items()}
        metrics["gan_best_epoch"] = float(self.gan_best_epoch)
        return metrics

    def _end_round(self, k: int) -> EpochReport:
        """After round k: validation Dice, new pseudo labels (iterative training), early stop."""
        from ..engine.loop import validate

        metrics: dict[str, float] = {"round": float(k)}
        events = []
        data = self.ctx.data
        if len(data.val.records):
            vd = validate(self, data, self.ctx.device)
            metrics["round_val_dice"] = vd
            if self.config.early_stop and self.round_val and vd <= self.round_val[-1]:
                self.stopped = True
                events.append({"type": "note", "message": f"round {k}: validation Dice {vd:.4f} did not improve on "
                               f"{self.round_val[-1]:.4f}; remaining rounds skipped"})
            self.round_val.append(vd)
        prob = self._seg_slices(data.train.images)
        new = (prob > 0.5).to(torch.uint8)
        prev = self.pseudo
        self.round_labels.append(_pack(new[:, 0]))
        if prev is not None:
            metrics["round_change_dice"] = float(np.mean(self._case_dice(prev[:, 0], new[:, 0], data.train)))
        if self.config.iterative:
            self.pseudo = new
        return EpochReport(metrics, events)

    @staticmethod
    def _case_dice(a: torch.Tensor, b: torch.Tensor, slices) -> list[float]:
        out = []
        for rec in slices.records:
            sl = slice(rec.start, rec.start + rec.count)
            out.append(dice(a[sl].numpy(), b[sl].numpy()))
        return out

    # --- inference ------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        if int(self.stage.value) == 1:
            self.seg.eval()
            return torch.softmax(self.seg(images).float(), dim=1)
        p = torch.sigmoid(self._generate(images, averaged=True).float())
        return torch.cat([1.0 - p, p], dim=1)

    # --- outputs --------------------------------------------------------------------
    def quality(self, predictions: dict[str, np.ndarray], job: "JobFolder") -> QualityResult:
        """LQSS score R (D_B's mean patch realness of G_A's pseudo label) for every case;
        training cases also carry whether LQSS kept them and the last round-to-round change."""
        data, axis = self.ctx.data, self.ctx.data.config.axis
        train = data.train
        rows, maps = [], {}
        train_scores = None
        accepted = self.accepted
        change: dict[str, float] = {}
        if len(self.round_labels) >= 2:
            shape = (len(train), self.size, self.size)
            a, b = _unpack(self.round_labels[-2], shape), _unpack(self.round_labels[-1], shape)
            change = {rec.case_id: d for rec, d in zip(train.records, self._case_dice(a, b, train))}
        per_split = {}
        for split, s in (("train", train), ("val", data.val), ("test", data.test)):
            if not len(s.records):
                continue
            _, dmap, r_slice = self._ga_slices(s.images)
            per_split[split] = (s, dmap, self._case_means(r_slice, s))
        if "train" in per_split:
            train_scores = per_split["train"][2] if self.case_score is None else self.case_score
            alpha = self.alpha if self.alpha is not None else lqss_threshold(train_scores.numpy(), self.config.lqss_percentile)
            if accepted is None:
                accepted = torch.from_numpy(lqss_accept(train_scores.numpy(), self.config.lqss_percentile, alpha)) \
                    if self.config.lqss else torch.ones(len(train_scores), dtype=torch.bool)
        else:
            alpha = self.alpha if self.alpha is not None else float("-inf")
        for split, (s, dmap, case_r) in per_split.items():
            if split == "train" and train_scores is not None:
                case_r = train_scores
            for ci, rec in enumerate(s.records):
                r = float(case_r[ci])
                ok = bool(accepted[ci]) if split == "train" else (r >= alpha if self.config.lqss else True)
                cols = {"split": split, "label_kind": rec.kind, "lqss_score": r, "lqss_accepted": ok,
                        "lqss_alpha": alpha, "round_change": change.get(rec.case_id),
                        "rounds": max(len(self.round_labels) - 1, 0)}
                rows.append(CaseQuality(rec.case_id, r, cols, flag=not ok))
                sl = dmap[rec.start:rec.start + rec.count].float()
                up = F.interpolate(sl, size=(self.size, self.size), mode="bilinear", align_corners=False)
                full = resize_probabilities(up, rec.inplane)[:, 0].numpy()
                maps[rec.case_id] = {"discriminator": from_slices(full, axis if rec.geometry.ndim == 3 else 2).astype(np.float32)}
        return QualityResult(rows, maps)

    def round_stats(self) -> list:
        """Per round (:class:`aeseg.report.RoundStat`): round 0 = G_A (its best validation
        Dice when ``gan_select_best`` measured it), round k = the U-Net after k rounds, with
        the mean Dice of its training pseudo labels against the previous round's."""
        from ..report import RoundStat

        train = self.ctx.data.train
        shape = (len(train), self.size, self.size)
        labels = [_unpack(p, shape) for p in self.round_labels]
        out = [RoundStat(0, self.gan_best if self.gan_best >= 0 else None)]
        for k in range(1, len(labels)):
            val = self.round_val[k - 1] if k - 1 < len(self.round_val) else None
            out.append(RoundStat(k, val, float(np.mean(self._case_dice(labels[k - 1], labels[k], train)))))
        return out

    def report_figures(self, job: "JobFolder", ranked: list[dict]) -> list:
        """``report/lqss.png``: the training cases' LQSS scores, kept and rejected, with α,
        and per round the validation Dice and the change of the pseudo labels."""
        from ..report import ReportFigure, plot_lqss
        from ..report.lqss import LQSS_PNG

        train = [r for r in ranked if r.get("split") == "train" and r.get("lqss_score") is not None]
        if not train:
            return []
        alpha = next((float(r["lqss_alpha"]) for r in train if r.get("lqss_alpha") is not None), None)
        plot_lqss([float(r["lqss_score"]) for r in train], [bool(r["lqss_accepted"]) for r in train], alpha,
                  self.round_stats(), job.report_dir / LQSS_PNG)
        return [ReportFigure("Sample selection and rounds", LQSS_PNG,
                             "LQSS scores of the training cases, kept and rejected, and the rounds of iterative training")]

    def write_outputs(self, job: "JobFolder", predictions: dict[str, np.ndarray]) -> list:
        """``pseudo_labels/round<k>/<case>.seg.nrrd`` for every training case and round."""
        train = self.ctx.data.train
        axis = self.ctx.data.config.axis
        shape = (len(train), self.size, self.size)
        paths = []
        for k, packed in enumerate(self.round_labels):
            lab = _unpack(packed, shape)
            for rec in train.records:
                sl = lab[rec.start:rec.start + rec.count, None].float()
                full = resize_probabilities(sl, rec.inplane)[:, 0].numpy() > 0.5
                mask = from_slices(full, axis if rec.geometry.ndim == 3 else 2)
                path = job.root / "pseudo_labels" / f"round{k}" / f"{rec.case_id}.seg.nrrd"
                write_seg_nrrd(path, [Segment("Pseudo label", mask, tags={"AESeg.round": str(k), "AESeg.method": self.name})],
                               rec.geometry)
                paths.append(path)
        return paths
