"""``presence_absence``: semi-supervised segmentation through presence ↔ absence image
translation (Vorontsov et al., "Towards annotation-efficient segmentation via
image-to-image translation", seed 002; reference code veugene/genseg).

Images tagged ``present`` (target visible; a few with masks) and ``absent`` train one
encoder ``f`` → (common ``c``, unique ``u``) codes, a common decoder (absence image) and a
residual decoder (additive change), :mod:`aeseg.nets.pa_codec`; the residual decoder
also segments, with its own normalisation parameters and a 1×1 classifier. Every step
takes N present and N absent images (an epoch covers every present image; absent ones
are drawn with replacement from a checkpointed generator) and computes

- P→A: ``x_PA = g_com(c_P)``, ``x_PP = x_PA + g_res(c_P, u_P)`` (Eqs. 2–3);
- A→P: ``x_AA = g_com(c_A)``, ``x_AP = x_AA + g_res(c_A, u)``, ``u ~ N(0, I)``;
  cycle ``x_APA = g_com(c_AP)`` (Eq. 5);
- losses (Eq. 6): ``L_seg`` soft Dice on the present images that have masks (Eq. 7),
  ``L_rec`` L1 image reconstruction (Eq. 8), ``L_lat`` L1 latent reconstruction of the
  re-encoded ``x_AP, x_PA, x_AA, x_PP`` (Eq. 9), ``L_cyc`` (Eq. 10), ``L_adv`` hinge loss
  of multi-scale discriminators for A (real ``x_A``, fake ``x_PA``) and P (real ``x_P``,
  fake ``x_AP``) (Eq. 11); the relative weights (adv 3, rec 50, lat 1, cyc 50, seg 0.01
  at 1 % annotations) are normalised to sum to 1 over the active objectives (Sec. IV-B).

One step updates the discriminators on detached fakes, then the codec (as the
reference code does). AMSGrad, β = (0.5, 0.999), lr 1e-4 (paper; the code uses 1e-3).

Ablations as switches: ``translation`` both / ``p_to_a`` (no A→P, no cycle, no P
discriminator) / ``none`` (reconstruction only: with ``lambda_lat=0``, ``cycle=False``
and weights rec = seg = 1 this is the paper's autoencoding baseline on the same
network; with ``lambda_rec=0`` as well, the paper's "segmentation only" baseline, which
trains on the annotated slices alone), ``cycle``, ``seg_decoder`` shared / separate,
``seg_norm`` static / adain (the segmentation norms as learnt parameters, or as the
reference code's adaptive instance norms predicted from each image's code), ``skips``,
``enc_norm`` and ``dec_norm``, ``spectral_norm``.

Outputs besides the segmentation: per case ``maps/<case>/absence.nrrd`` (the
healthy-looking translation ``g_com(c)``) and ``maps/<case>/residual.nrrd`` (``g_res(c, u)``),
both in the training intensity space ([-1, 1] after the job's intensity normalisation,
not the image's original units), resized to the case's grid; ``quality.csv`` rows with
``residual_energy`` (mean squared residual), the areas of the residual region
(``|residual| > residual_threshold``) and of the segmentation, and ``score`` = Dice
between the two (1 when both are empty); ``flag`` when the score is below ``flag_below``;
``report/residual_vs_segmentation.png`` (:meth:`PresenceAbsence.report_figures`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ..data.dataset import KIND_CODES
from ..data.slicing import from_slices
from ..data.transforms import resize_probabilities
from ..errors import MethodUnavailable
from ..nets import NetConfig
from ..nets.discriminators import MultiScaleDiscriminator, d_hinge_loss, g_hinge_loss, max_depth
from ..nets.pa_codec import CodecConfig, PACodec
from ..quality.metrics import dice
from .base import CaseQuality, CohortSummary, Method, Phase, QualityResult, StepInfo
from .common import random_flips, seg_loss
from .registry import register


@dataclass
class PresenceAbsenceConfig(NetConfig):
    features: int = field(default=16, metadata={"help": "channels of the encoder's first level (paper 16)", "min": 2, "max": 128})
    depth: int = field(default=6, metadata={"help": "resolution levels; bottleneck = features·2^(depth-1) channels (paper 6 → 512); capped so the bottleneck is ≥ 2 px", "min": 2, "max": 7})
    res_units: int = field(default=1, metadata={"help": "short (residual) skips in the encoder and common decoder blocks: 1 on (paper), 0 off", "min": 0, "max": 1})
    unique_fraction: float = field(default=0.25, metadata={"help": "share of bottleneck channels forming the unique code u (paper 128/512)", "min": 0.01, "max": 0.9})
    translation: Literal["both", "p_to_a", "none"] = field(default="both", metadata={"help": "translation directions: P→A and A→P (paper), P→A only, or none (reconstruction only)"})
    cycle: bool = field(default=True, metadata={"help": "A→P→A cycle-consistency loss (needs translation=both)"})
    seg_decoder: Literal["shared", "separate"] = field(default="shared", metadata={"help": "segment with the residual decoder (own norm parameters, 1×1 classifier) or a separate decoder"})
    seg_norm: Literal["static", "adain"] = field(default="static", metadata={"help": "the shared decoder's segmentation norms: learnt per-channel parameters (paper text) or adaptive instance norms whose parameters an MLP predicts from each image's code (reference code)"})
    skips: Literal["compressed", "full", "sum", "none"] = field(default="compressed", metadata={"help": "long skips: 1×1-conv-compressed + instance norm (paper), full concatenation, sum, none"})
    skip_full_res: bool = field(default=True, metadata={"help": "also skip the full-resolution level (reference code); off: skips from every level but the first (paper text)"})
    enc_norm: Literal["instance", "layer", "batch"] = field(default="instance", metadata={"help": "encoder normalisation (paper: instance)"})
    dec_norm: Literal["layer", "instance", "batch"] = field(default="layer", metadata={"help": "decoder normalisation (paper: layer)"})
    spectral_norm: bool = field(default=True, metadata={"help": "spectral norm on all networks (paper)"})
    lambda_adv: float = field(default=3.0, metadata={"help": "relative weight of the adversarial loss", "min": 0.0})
    lambda_rec: float = field(default=50.0, metadata={"help": "relative weight of image reconstruction", "min": 0.0})
    lambda_lat: float = field(default=1.0, metadata={"help": "relative weight of latent reconstruction", "min": 0.0})
    lambda_cyc: float = field(default=50.0, metadata={"help": "relative weight of the cycle loss", "min": 0.0})
    lambda_seg: float = field(default=0.01, metadata={"help": "relative weight of segmentation (paper: 0.01 at 1 % annotations, 10/100/1000 at 10/20/100 %)", "min": 0.0})
    seg_loss: Literal["dice", "dice_ce"] = field(default="dice", metadata={"help": "soft Dice (paper) or Dice + cross-entropy (soft Dice alone can stall at all-foreground in short runs)"})
    classifier_init: Literal["kaiming", "small"] = field(default="kaiming", metadata={"help": "segmentation classifier weights: Kaiming normal like every layer (paper Sec. IV-B), or near zero (flat start for soft Dice alone; learns far slower)"})
    lr: float = field(default=1e-4, metadata={"help": "AMSGrad learning rate (paper 1e-4, reference code 1e-3)", "min": 0.0})
    beta1: float = field(default=0.5, metadata={"help": "AMSGrad β1", "min": 0.0, "max": 1.0})
    disc_features: int = field(default=64, metadata={"help": "discriminator channels at its first layer (paper 64)", "min": 2, "max": 256})
    disc_depth: int = field(default=4, metadata={"help": "stride-2 discriminator blocks (paper 4; capped by the image size)", "min": 1, "max": 6})
    disc_scales: int = field(default=3, metadata={"help": "discriminator scales (paper 3)", "min": 1, "max": 4})
    labeled_per_batch: int = field(default=0, metadata={"help": "annotated present images added to every batch for the segmentation loss (0: only those the batch happens to hold, as in the paper)", "min": 0})
    use_noisy: bool = field(default=False, metadata={"help": "also learn from noisy masks of present images"})
    augment: bool = field(default=True, metadata={"help": "random flips"})
    residual_threshold: float = field(default=0.2, metadata={"help": "|residual| above which a pixel belongs to the residual region (training intensity units)", "min": 0.0})
    flag_below: float = field(default=0.5, metadata={"help": "flag cases whose residual/segmentation agreement (Dice) is below this", "min": 0.0, "max": 1.0})


def loss_weights(c: PresenceAbsenceConfig) -> dict[str, float]:
    """The active objectives' relative weights normalised to sum to 1 (Sec. IV-B)."""
    raw = {"seg": c.lambda_seg, "rec": c.lambda_rec, "lat": c.lambda_lat}
    if c.translation != "none":
        raw["adv"] = c.lambda_adv
    if c.translation == "both" and c.cycle:
        raw["cyc"] = c.lambda_cyc
    raw = {k: v for k, v in raw.items() if v > 0}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()} if total > 0 else {}


def effective_depth(depth: int, size: int) -> int:
    """``depth`` capped so that a ``size``-pixel image keeps a bottleneck of ≥ 2 px."""
    return max(2, min(depth, int(math.floor(math.log2(max(size, 4))))))


@register
class PresenceAbsence(Method):
    name = "presence_absence"
    title = "Presence/absence translation"
    description = ("Semi-supervised segmentation by translating images with the target (present) to images "
                   "without it (absent) and back; the residual decoder also segments. Writes the healthy-looking "
                   "translation and the residual per case.")
    needs = "training images tagged present and absent, at least one present image with a mask"
    Config = PresenceAbsenceConfig
    train_kinds = None

    @classmethod
    def unsupported_reason(cls, s: CohortSummary, config: PresenceAbsenceConfig | None = None) -> str | None:
        missing = []
        if s.present == 0:
            missing.append("no training image is tagged 'present'")
        if s.absent == 0:
            missing.append("no training image is tagged 'absent'")
        if missing:
            return ("needs training images tagged present and absent (cohort.csv column 'presence' or "
                    "images/present/ and images/absent/ folders): " + "; ".join(missing))
        if s.present_with_mask == 0:
            return "needs at least one present training image with a mask (has 0)"
        return None

    def __init__(self, config: PresenceAbsenceConfig, ctx):
        super().__init__(config, ctx)
        if ctx.world_size > 1:
            raise MethodUnavailable("presence_absence runs in a single process; start it without torchrun")
        c = config
        size = ctx.data.config.size
        self.depth = effective_depth(c.depth, size)
        self.codec = PACodec(CodecConfig(in_channels=ctx.in_channels, features=c.features, depth=self.depth,
                                         unique_fraction=c.unique_fraction, enc_norm=c.enc_norm, dec_norm=c.dec_norm,
                                         skips=c.skips, skip_full_res=c.skip_full_res, short_skips=c.res_units > 0, seg_decoder=c.seg_decoder,
                                         spectral=c.spectral_norm, seg_norm=c.seg_norm, image_size=size,
                                         small_classifier=c.classifier_init == "small")).to(ctx.device)
        self.weights = loss_weights(c)
        betas = (c.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.codec.parameters(), lr=c.lr, betas=betas, amsgrad=True)
        self.disc_a = self.disc_p = None
        self.opt_d = None
        if "adv" in self.weights:
            dd = min(c.disc_depth, max_depth(size, c.disc_scales, c.disc_depth))
            self.disc_a = MultiScaleDiscriminator(ctx.in_channels, c.disc_features, dd, c.disc_scales, c.spectral_norm).to(ctx.device)
            params = list(self.disc_a.parameters())
            if c.translation == "both":
                self.disc_p = MultiScaleDiscriminator(ctx.in_channels, c.disc_features, dd, c.disc_scales, c.spectral_norm).to(ctx.device)
                params += list(self.disc_p.parameters())
            self.opt_d = torch.optim.Adam(params, lr=c.lr, betas=betas, amsgrad=True)
        if c.seg_loss == "dice":
            self.seg_loss = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        else:
            self.seg_loss = seg_loss()
        train = ctx.data.train
        self.present = train.indices(None, "present")
        self.absent = train.indices(None, "absent")
        kinds = ("clean", "noisy") if c.use_noisy else ("clean",)
        self.labelled = train.indices(kinds, "present")
        self.sup_codes = torch.as_tensor([KIND_CODES[k] for k in kinds])

    # --- state -----------------------------------------------------------------------
    def modules(self):
        m = {"codec": self.codec}
        if self.disc_a is not None:
            m["disc_a"] = self.disc_a
        if self.disc_p is not None:
            m["disc_p"] = self.disc_p
        return m

    def optimizers(self):
        o = {"g": self.opt_g}
        if self.opt_d is not None:
            o["d"] = self.opt_d
        return o

    # --- batches ---------------------------------------------------------------------
    def train_indices(self, phase: Phase) -> torch.Tensor:
        missing = []
        if len(self.present) == 0:
            missing.append("no training slice comes from a 'present' image")
        if len(self.absent) == 0:
            missing.append("no training slice comes from an 'absent' image")
        if len(self.labelled) == 0:
            missing.append("no present training image has a " + ("mask" if self.config.use_noisy else "clean mask"))
        if missing:
            raise MethodUnavailable("presence_absence: " + "; ".join(missing))
        return self.present

    def make_batch(self, idx: torch.Tensor, phase: Phase) -> dict:
        """N present slices (the engine's draw), N absent slices drawn with replacement,
        then ``labeled_per_batch`` annotated present slices for the segmentation loss."""
        n = len(idx)
        absent = self.absent[torch.randint(len(self.absent), (n,), generator=self.g)]
        k = self.config.labeled_per_batch
        extra = self.labelled[torch.randint(len(self.labelled), (k,), generator=self.g)] if k else idx[:0]
        batch = self.ctx.data.train.batch(torch.cat([idx, absent, extra]))
        batch["n_present"] = n
        batch["n_extra"] = len(extra)
        return batch

    # --- training --------------------------------------------------------------------
    def _set_disc_grad(self, flag: bool) -> None:
        for d in (self.disc_a, self.disc_p):
            if d is not None:
                d.requires_grad_(flag)

    def train_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        c, w = self.config, self.weights
        n, k = int(batch["n_present"]), int(batch["n_extra"])
        x, y = batch["image"], batch["label"]
        if c.augment:
            x, y = random_flips(x, y, self.g)
        x_p, x_a = x[:n], x[n:2 * n]
        sup = torch.isin(batch["kind"][:n], self.sup_codes.to(x.device)) & (batch["presence"][:n] == 1)
        seg_idx = torch.cat([torch.nonzero(sup).flatten(), torch.arange(2 * n, 2 * n + k, device=x.device)])
        both = c.translation == "both"
        self.codec.train()
        if set(w) == {"seg"}:  # segmentation alone: the paper's "segmentation only" baseline
            return self._seg_only_step(x, y, seg_idx)
        losses: dict[str, torch.Tensor] = {}
        with self.ctx.autocast():
            code = self.codec.encode(x)  # present, absent and extra annotated slices in one pass
            code_pa = code.select(slice(0, 2 * n))
            x_com = self.codec.absence(code_pa)  # g_com(c): x_PA for P, x_AA for A
            x_pa, x_aa = x_com[:n], x_com[n:]
            if both:  # g_res(c_P, u_P) and g_res(c_A, u ~ N(0, I)) in one pass
                u_prior = self.codec.sample_unique(code.select(slice(n, 2 * n)), self.g)
                delta = self.codec.residual(code_pa, torch.cat([code.unique[:n], u_prior]))
            else:
                u_prior, delta = None, self.codec.residual(code.select(slice(0, n)))
            x_pp = x_pa + delta[:n]
            x_ap = x_aa + delta[n:] if both else None
            if "lat" in w or "cyc" in w:  # latent reconstruction (Eq. 9): re-encode what was generated
                gen = [x_pp, x_aa] + ([x_pa] if c.translation != "none" else []) + ([x_ap] if both else [])
                re = self.codec.encode(torch.cat(gen))
                c_p, u_p, c_a = code.common[:n], code.unique[:n], code.common[n:2 * n]
                lat = (F.l1_loss(re.common[:n], c_p) + F.l1_loss(re.unique[:n], u_p)
                       + F.l1_loss(re.common[n:2 * n], c_a))
                j = 2 * n
                if c.translation != "none":
                    lat = lat + F.l1_loss(re.common[j:j + n], c_p)
                    j += n
                if both:
                    lat = lat + F.l1_loss(re.common[j:j + n], c_a) + F.l1_loss(re.unique[j:j + n], u_prior)
                losses["lat"] = lat
                if "cyc" in w:
                    x_apa = self.codec.absence(re.select(slice(j, j + n)))
                    losses["cyc"] = F.l1_loss(x_apa, x_a)  # Eq. (10)
            losses["rec"] = F.l1_loss(x_pp, x_p) + F.l1_loss(x_aa, x_a)  # Eq. (8)
            if len(seg_idx):
                logits = self.codec.segment(code.select(seg_idx))
                losses["seg"] = self.seg_loss(logits.float(), y[seg_idx])  # Eq. (7)

        out: dict[str, float] = {"n_seg": float(len(seg_idx))}
        if "adv" in w:  # Eq. (11): discriminators first, on detached fakes
            self._set_disc_grad(True)
            with self.ctx.autocast():
                l_d = d_hinge_loss(self.disc_a(x_a), self.disc_a(x_pa.detach()))
                if both:
                    l_d = l_d + d_hinge_loss(self.disc_p(x_p), self.disc_p(x_ap.detach()))
            self.ctx.optimize(l_d, self.opt_d)
            self._set_disc_grad(False)
            with self.ctx.autocast():
                l_g = g_hinge_loss(self.disc_a(x_pa))
                if both:
                    l_g = l_g + g_hinge_loss(self.disc_p(x_ap))
            losses["adv"] = l_g
            out["disc"] = float(l_d.detach())
        total = sum(w[name] * v for name, v in losses.items() if name in w)
        if torch.is_tensor(total):  # (no active objective in this batch: nothing to learn from)
            self.ctx.optimize(total, self.opt_g)
        out["loss"] = float(total.detach()) if torch.is_tensor(total) else float(total)
        out.update({name: float(v.detach()) for name, v in losses.items()})
        return out

    def _seg_only_step(self, x: torch.Tensor, y: torch.Tensor, seg_idx: torch.Tensor) -> dict[str, float]:
        """Only the segmentation objective is active (``translation=none``, ``lambda_rec=0``,
        ``lambda_lat=0``): the encoder and the residual decoder's segmentation path see the
        annotated slices alone, as the paper's "segmentation only" baseline, which "is
        equivalent to the proposed method with only the segmentation loss, using only the
        residual decoder" (Sec. IV) and whose batches "contain only these slices"."""
        if not len(seg_idx):
            return {"n_seg": 0.0, "loss": 0.0}
        with self.ctx.autocast():
            logits = self.codec.segment(self.codec.encode(x[seg_idx]))
            loss = self.seg_loss(logits.float(), y[seg_idx])  # Eq. (7)
        self.ctx.optimize(loss, self.opt_g)
        v = float(loss.detach())
        return {"n_seg": float(len(seg_idx)), "seg": v, "loss": v}

    # --- inference -------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        self.codec.eval()
        return torch.softmax(self.codec(images).float(), dim=1)

    @torch.no_grad()
    def translate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(absence image ``g_com(c)``, residual ``g_res(c, u)``) of ``images``, each
        ``(B, C, H, W)`` in the training intensity space."""
        self.codec.eval()
        code = self.codec.encode(images)
        return self.codec.absence(code).float(), self.codec.residual(code).float()

    def _case_maps(self, slices, rec, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Absence image and residual of one case on its original grid: ``(C, Z, Y, X)``."""
        ab, re = [], []
        for s in range(rec.start, rec.start + rec.count, batch_size):
            e = min(s + batch_size, rec.start + rec.count)
            a, r = self.translate(slices.images[s:e].to(self.ctx.device))
            ab.append(resize_probabilities(a, rec.inplane).cpu().numpy())
            re.append(resize_probabilities(r, rec.inplane).cpu().numpy())
        axis = self.ctx.data.config.axis
        return (from_slices(np.concatenate(ab), axis).astype(np.float32),
                from_slices(np.concatenate(re), axis).astype(np.float32))

    def quality(self, predictions: dict[str, np.ndarray], job) -> QualityResult:
        """Per case: agreement (Dice) between the residual region ``|residual| >
        residual_threshold`` (largest over channels) and the segmentation; maps
        ``absence`` and ``residual`` (``absence_ch<k>`` / ``residual_ch<k>`` for multi-channel images)."""
        c = self.config
        rows, maps = [], {}
        for split, s, rec in self.ctx.data.all_records():
            absence, residual = self._case_maps(s, rec)
            seg = predictions[rec.case_id] > 0.5
            region = np.abs(residual).max(axis=0) > c.residual_threshold
            agree = dice(region, seg)
            cols = {"split": split, "label_kind": rec.kind, "presence": rec.case.presence or "",
                    "residual_energy": float(np.mean(residual.astype(np.float64) ** 2)),
                    "residual_area": int(region.sum()), "seg_area": int(seg.sum()), "agreement_dice": agree}
            if rec.label_zyx is not None:
                cols["label_dice"] = dice(seg, rec.label_zyx > 0)
            rows.append(CaseQuality(rec.case_id, agree, cols, flag=bool(agree < c.flag_below)))
            if absence.shape[0] == 1:
                maps[rec.case_id] = {"absence": absence[0], "residual": residual[0]}
            else:
                maps[rec.case_id] = {**{f"absence_ch{i}": a for i, a in enumerate(absence)},
                                     **{f"residual_ch{i}": r for i, r in enumerate(residual)}}
        return QualityResult(rows, maps)

    def report_figures(self, job, ranked: list[dict]) -> list:
        """``report/residual_vs_segmentation.png``: per case, the area of the residual region
        against the area of the segmentation (on the diagonal when they cover as much), coloured
        by ``score`` (their Dice), flagged cases named."""
        from ..report import CasePoint, ReportFigure, plot_case_scatter

        pts = [CasePoint(r["case"], float(r["residual_area"]), float(r["seg_area"]), float(r["score"]),
                         bool(r.get("flag"))) for r in ranked if r.get("residual_area") not in (None, "")]
        if not pts:
            return []
        name = "residual_vs_segmentation.png"
        plot_case_scatter(pts, job.report_dir / name, "residual region (voxels, |residual| > threshold)",
                          "segmentation (voxels)", "Residual against segmentation",
                          score_label="score: Dice(residual region, segmentation)")
        return [ReportFigure("Residual against segmentation", name,
                             "area of each case's residual region against the area of its segmentation")]

    def train_mode(self, training: bool) -> None:
        for m in self.modules().values():
            m.train(training)
