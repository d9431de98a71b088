"""``meta_reweight``: MLB-Seg, meta-learned per-pixel reweighting of imperfect labels and
of the model's own pseudo labels, with pseudo-label enhancement (PLE) and a mean teacher
(seed 003, "Meta-learning for bootstrapping medical image segmentation from imperfect
supervision"; reference code aijinrjinr/MLB-Seg). With ``use_pseudo``, ``use_ple`` and
``use_mean_teacher`` off it is Mirikharaji et al. (2019): meta-reweighting of the noisy
label alone; with ``use_meta`` off and ``use_pseudo`` on, Reed et al.'s bootstrapping with
fixed weights (the paper's Table 5 rows).

One training step on a batch of imperfect slices (noisy labels, or pseudo labels from
task standardization, eq. 1) and a batch of clean "meta" slices (the clean training
cases):

1. **Views (PLE, §3.2).** Each imperfect slice gets Q augmented views besides the
   original (default Q = 4: one zoom-in, two zoom-outs, one flip, the paper's 4×PLE),
   made and mapped back with :mod:`aeseg.methods.augment` (one batched ``grid_sample``;
   flips exact). With ``views_share_batch`` the engine's B slices become ⌊B/(Q+1)⌋ slices
   × (Q+1) views, so a step handles as many images as a plain step.
2. **Pseudo labels (eq. 3; eq. 10 with PLE).** The student's foreground probabilities on
   the K = Q + 1 views are mapped back, averaged where each view saw the pixel
   (coverage-weighted), thresholded (argmax of two classes) and mapped into every view.
3. **Cost maps.** Per-pixel cross-entropy of the student's logits against the imperfect
   label (``cost_n``) and against the pseudo label (``cost_p``), from one forward pass at θ_t.
4. **Meta-gradient (eqs. 4–6).** ε_n = ε_p = 0; θ̂ = θ − α ∇θ Σ(ε_n·cost_n + ε_p·cost_p);
   L_meta = loss of f(x_clean; θ̂) (eq. 5); ∂L_meta/∂ε. Two exact ways to compute it
   (``meta_grad``):

   - ``lookahead``: literally, ``torch.autograd.grad(..., create_graph=True)`` for θ̂,
     ``torch.func.functional_call`` for the clean pass at θ̂, then ``torch.autograd.grad``
     with respect to ε (a double backward; :func:`meta_grad_lookahead`);
   - ``forward`` (default): because the look-ahead starts at ε = 0, θ̂ = θ and the chain
     rule gives ∂L_meta/∂ε_i = −α ⟨∇θ L_meta(θ), ∇θ cost_i(θ)⟩, the directional derivative
     of every pixel's cost along the clean gradient. One backward on the clean batch gives
     v = ∇θ L_meta, and one forward-mode pass (``torch.autograd.forward_ad`` through
     ``functional_call``) gives the logits *and* their derivative along v
     (:func:`meta_grad_forward`). Same numbers (tested against the look-ahead and against
     finite differences in float64); about 2.9× a plain step on CPU instead of 4.2×.

5. **Weights (eqs. 7–8).** w = max(−∂L_meta/∂ε, 0), divided by the batch sum + ε: each
   map separately (eq. 8, default) or both maps together (``weight_norm=joint``, the
   reference code).
6. **Real update (eq. 9 + eq. 11 + eq. 13).** Σ w_n·cost_n + Σ w_p·cost_p from the same
   forward pass, + λ_aug · PLE consistency (eq. 11: mean squared difference of the class
   probabilities over all view pairs, compared in the original frame where both views
   saw the pixel) + λ_st(t) · MSE to the EMA teacher fed the views plus Gaussian noise
   (eqs. 12–13, sigmoid ramp-up) + ``clean_weight`` · L_meta's gradient at θ (the
   reference code also trains on the meta batch after every step; the paper's eq. 9 does
   not say). Gradient clipping (code default 0.2), one optimiser step, EMA update.

The clean-batch term is free: θ̂ = θ at ε = 0, so the gradient of L_meta with respect to
θ̂, which both meta-gradient paths compute anyway, is the clean loss's gradient at θ. For
the same reason α (``inner_lr``) only scales the raw meta-gradient, which eq. 8 divides
away. The meta step runs in float32 or wider (half precision would underflow the
products of gradients); ``ctx.autocast`` is not used by this method.

Batch normalisation in the functional passes: every pass over the clean batch (at θ̂ for
``lookahead``, at θ for ``forward``) is a ``functional_call`` in train mode (batch
statistics, as ``higher`` does in the reference code) with *clones* of the module's
buffers, so it never writes the running mean/var or ``num_batches_tracked``. The only
running-statistics update of a step is the student's forward pass over the imperfect
views, as in a plain training step (tested).

Outputs (:meth:`MetaReweight.quality`): per imperfect training case ``meta_weight_label``
and ``meta_weight_pseudo`` (mean relative weight over the case's pixels, 1 = the batch
average; per slice an average over its visits), ``meta_label_kept`` = ``score`` (the Dice
between the given label and its meta-arbitrated version: where the label and the
pseudo label disagree, the one the meta step weighted more), engine flags on the lowest
scores (review the least trusted labels first), the last weight maps per case
(``maps/<case>/meta_weight_label.nrrd``, ``meta_weight_pseudo.nrrd``), and
``report/meta_weights.png`` (:meth:`MetaReweight.report_figures`).

DDP: the student is not wrapped (the functional passes need the bare module);
gradients are averaged over ranks by hand before the step. Per-slice statistics are
kept per rank; rank 0 writes what it saw.

Why parts are hand-written: no maintained library implements learning-to-reweight for
dense prediction (``higher`` is unmaintained; torch.func/forward AD supply the
functional and forward-mode passes), the CE derivative is written out in
:func:`ce_tangent` (forward-mode AD through ``F.cross_entropy`` conflicts with the
reverse graph kept for the real update), and the view-aware weighting and PLE
consistency are specific to this paper. The network is MONAI's UNet, the clean loss
MONAI's DiceCE (``meta_loss=dice_ce``) or CE, the EMA teacher torch's ``AveragedModel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call

from ..data.slicing import from_slices
from ..data.transforms import resize_probabilities
from ..nets import NetConfig, make_unet
from . import augment
from .base import CaseQuality, CohortSummary, EpochReport, Method, Phase, QualityResult, StepInfo
from .common import ema_model, seg_loss, sigmoid_rampup
from .registry import register

KIND_CLEAN, KIND_NOISY, KIND_NONE = 0, 1, 2
#: the view pattern of PLE (paper §4.5: 4×PLE = one zoom-in, two zoom-outs, one flip); Q > 4 cycles
VIEW_PATTERN = ("zoom_in", "zoom_out", "zoom_out", "flip")
#: per-slice statistics are averaged over visits: new = VISIT_EMA·old + (1 − VISIT_EMA)·current
VISIT_EMA = 0.5


@dataclass
class MetaReweightConfig(NetConfig):
    standardize: bool = field(default=True, metadata={"help": "unlabelled cases first get pseudo labels from a model trained on the clean ones (task standardization, eq. 1)"})
    # ablation switches (paper Table 5; Mirikharaji et al. 2019 = all three off)
    use_meta: bool = field(default=True, metadata={"help": "learn the weight maps by the meta step (off: fixed uniform weights, i.e. Reed et al.'s bootstrapping with use_pseudo)"})
    use_pseudo: bool = field(default=True, metadata={"help": "also learn from the model's own pseudo labels with a second weight map (bootstrapping, eq. 2)"})
    use_ple: bool = field(default=True, metadata={"help": "pseudo label enhancement: average over Q augmented views + view consistency loss (eqs. 10-11)"})
    use_mean_teacher: bool = field(default=True, metadata={"help": "EMA teacher with noisy input and MSE consistency (eqs. 12-13)"})
    # PLE
    ple_views: int = field(default=4, metadata={"help": "Q: augmented views per slice (cycle: zoom-in, zoom-out, zoom-out, flip)", "min": 1, "max": 8})
    zoom_in_max: float = field(default=1.4, metadata={"help": "zoom-in factor drawn from U(1.05, this)", "min": 1.05, "max": 3.0})
    zoom_out_min: float = field(default=0.6, metadata={"help": "zoom-out factor drawn from U(this, 0.95)", "min": 0.3, "max": 0.95})
    ple_weight: float = field(default=1.0, metadata={"help": "λ_aug: weight of the PLE view-consistency loss (eq. 11)", "min": 0.0})
    views_share_batch: bool = field(default=True, metadata={"help": "views count towards the batch size: batch_size // (Q+1) slices per step (off: every sampled slice gets Q+1 views, Q+1 times the compute)"})
    # meta step
    meta_grad: Literal["forward", "lookahead"] = field(default="forward", metadata={"help": "how ∂L_meta/∂ε is computed: 'lookahead' = literal eq. 4-6 (double backward); 'forward' = the same derivative by one forward-mode pass (exact at ε = 0, cheaper)"})
    inner_lr: float = field(default=0.005, metadata={"help": "α: step size of the look-ahead (eq. 4)", "min": 0.0})
    meta_batch: int = field(default=4, metadata={"help": "clean (meta set) slices per step", "min": 1})
    weight_norm: Literal["separate", "joint"] = field(default="separate", metadata={"help": "normalise each weight map to sum 1 per batch (eq. 8) or both together (reference code)"})
    weight_eps: float = field(default=1e-8, metadata={"help": "ε added to the normaliser of eq. 8", "min": 0.0})
    meta_loss: Literal["ce", "dice_ce"] = field(default="ce", metadata={"help": "loss on the clean meta batch, both the meta objective (eq. 5: CE) and the clean supervision term; dice_ce = the project's supervised Dice + CE"})
    clean_weight: float = field(default=1.0, metadata={"help": "weight of the clean meta-batch loss in the real update (reference code: trained on every step; 0 = eq. 9 alone)", "min": 0.0})
    # mean teacher
    ema_decay: float = field(default=0.99, metadata={"help": "teacher EMA decay", "min": 0.0, "max": 1.0})
    mt_weight: float = field(default=1.0, metadata={"help": "λ_st: maximum weight of the teacher consistency (eq. 13)", "min": 0.0})
    mt_rampup_epochs: int = field(default=5, metadata={"help": "epochs of sigmoid ramp-up of λ_st", "min": 0})
    teacher_noise: float = field(default=0.04, metadata={"help": "γσ: std of the Gaussian noise added to the teacher's input (eq. 12)", "min": 0.0})
    # optimisation (reference code: SGD 0.005, momentum 0.9, wd 5e-4, lr 20/(e+20), clip 0.2)
    optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={"help": "optimiser of the segmentation network"})
    lr: float = field(default=0.005, metadata={"help": "learning rate", "min": 0.0})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum", "min": 0.0, "max": 1.0})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay", "min": 0.0})
    lr_decay: bool = field(default=True, metadata={"help": "learning rate × 20/(epoch+20) (reference code)"})
    clip: float = field(default=0.2, metadata={"help": "gradient norm clipping (0: off)", "min": 0.0})
    augment: bool = field(default=True, metadata={"help": "random flips of the imperfect and meta slices"})
    warmup_epochs: int = field(default=0, metadata={"help": "first epochs (within the budget) of plain CE on the given labels, before the meta step (reference code's warm_up)", "min": 0})
    # outputs
    keep_maps: bool = field(default=True, metadata={"help": "keep the last weight maps per slice (for maps/<case>/meta_weight_*.nrrd)"})
    predict_with: Literal["student", "teacher"] = field(default="student", metadata={"help": "network used for predictions (reference code: the student)"})


# ------------------------------------------------------------------------------- pieces


def normalise_weights(raw_n: torch.Tensor, raw_p: torch.Tensor | None, eps: float, joint: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eqs. 7–8: clamp at zero, then divide by the batch sum (+ ε), each map separately
    (eq. 8) or both maps together (``joint``, reference code)."""
    wn = raw_n.clamp(min=0)
    wp = raw_p.clamp(min=0) if raw_p is not None else None
    if joint and wp is not None:
        s = wn.sum() + wp.sum() + eps
        return wn / s, wp / s
    wn = wn / (wn.sum() + eps)
    if wp is not None:
        wp = wp / (wp.sum() + eps)
    return wn, wp


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(B, C, H, W)`` against integer labels ``(B, H, W)``
    (the meta objective of eq. 5)."""
    return F.cross_entropy(logits, target)


def _dice_ce():
    """The project's supervised loss (MONAI DiceCE) for ``(B, C, H, W)`` logits and ``(B, H, W)`` labels."""
    loss = seg_loss()
    return lambda logits, target: loss(logits, target[:, None])


def _up(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half precision underflows the meta-gradient); float64 stays."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Clones of the module's buffers: a functional pass in train mode writes its batch
    statistics into these, never into the module's running mean/var."""
    return {n: b.clone() for n, b in net.named_buffers()}


def meta_grad_lookahead(net: torch.nn.Module, params: dict[str, torch.Tensor], costs: list[torch.Tensor],
                        x_clean: torch.Tensor, y_clean: torch.Tensor, alpha: float, meta_loss=None
                        ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """∂L_meta/∂ε for every cost map by the literal one-step look-ahead of eqs. 4–6.

    ``costs`` are per-pixel cost maps computed from ``params`` (graph kept). With ε_k = 0
    (requires grad): θ̂ = θ − α ∇θ Σ_k ε_k·cost_k (``torch.autograd.grad(...,
    create_graph=True)``), L_meta = mean CE of ``functional_call(net, θ̂ ∪ cloned buffers,
    x_clean)`` (train-mode BN: batch statistics; the module's running buffers are not
    written), then ``torch.autograd.grad`` of L_meta with respect to every ε_k and θ̂.

    Returns (∂L_meta/∂ε_k, L_meta, ∂L_meta/∂θ̂ = ∇θ CE_clean at θ since θ̂ = θ at ε = 0).
    The forward graph of ``costs`` is retained for the real update."""
    eps = [torch.zeros_like(c, requires_grad=True) for c in costs]
    inner = sum((e * c).sum() for e, c in zip(eps, costs))
    names = list(params)
    grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True, allow_unused=True)
    fast = {n: (params[n] - alpha * g if g is not None else params[n]) for n, g in zip(names, grads)}
    logits = functional_call(net, {**fast, **_buffers(net)}, (x_clean,))
    meta = (meta_loss or ce_loss)(_up(logits), y_clean)
    out = torch.autograd.grad(meta, eps + [fast[n] for n in names], retain_graph=True, allow_unused=True)
    g_eps = [g if g is not None else torch.zeros_like(e) for g, e in zip(out[:len(eps)], eps)]
    g_theta = [g if g is not None else torch.zeros_like(params[n]) for g, n in zip(out[len(eps):], names)]
    return g_eps, meta.detach(), g_theta


def clean_gradient(net: torch.nn.Module, params: dict[str, torch.Tensor], x_clean: torch.Tensor,
                   y_clean: torch.Tensor, meta_loss=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(L_meta, ∇θ L_meta) on the clean batch: ``functional_call`` with cloned buffers
    (train-mode BN on the batch statistics, running buffers untouched)."""
    logits = functional_call(net, {**params, **_buffers(net)}, (x_clean,))
    meta = (meta_loss or ce_loss)(_up(logits), y_clean)
    g = torch.autograd.grad(meta, list(params.values()), allow_unused=True)
    return meta.detach(), [gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g, params.values())]


def dual_forward(net: torch.nn.Module, params: dict[str, torch.Tensor], tangents: list[torch.Tensor],
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass that returns the logits (with their reverse-mode graph) and their
    directional derivative along ``tangents`` (forward-mode AD, ``torch.autograd.forward_ad``
    through ``functional_call``). The module's own buffers are used: this is the step's
    ordinary forward pass and its one running-statistics update."""
    with fwAD.dual_level():
        dual = {n: fwAD.make_dual(p, t.detach()) for (n, p), t in zip(params.items(), tangents)}
        out = functional_call(net, dual, (x,))
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:
        tangent = torch.zeros_like(primal)
    return primal, tangent


def ce_tangent(logits: torch.Tensor, tangent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Directional derivative of the per-pixel cross-entropy: Σ_c (softmax_c − onehot_c)·ṫ_c
    (the CE derivative written out: forward-mode AD through ``F.cross_entropy`` conflicts
    with the reverse graph kept for the real update)."""
    d = torch.softmax(_up(logits.detach()), 1)
    d = d - F.one_hot(target, d.shape[1]).permute(0, 3, 1, 2).to(d.dtype)
    return (d * tangent.to(d.dtype)).sum(1)


def meta_grad_forward(logits: torch.Tensor, tangent: torch.Tensor, targets: list[torch.Tensor], alpha: float,
                      masks: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """∂L_meta/∂ε for every cost map, by forward mode.

    At ε = 0 the look-ahead of eq. 4 gives θ̂ = θ, so by the chain rule
    ∂L_meta(θ̂)/∂ε_i = −α ⟨∇θ L_meta(θ), ∇θ cost_i(θ)⟩: the directional derivative of
    every pixel's cost along the clean gradient v, scaled by −α. ``tangent`` is the
    logits' derivative along v (:func:`dual_forward`). Equal to
    :func:`meta_grad_lookahead` (tested), at the cost of one forward-mode pass instead of
    a double backward."""
    masks = masks or [None] * len(targets)
    out = []
    for y, m in zip(targets, masks):
        g = -alpha * ce_tangent(logits, tangent, y)
        out.append(g * m if m is not None else g)
    return out


def view_params(b: int, q: int, g: torch.Generator, zoom_in_max: float, zoom_out_min: float,
                device: torch.device) -> augment.AffineParams:
    """Transforms of K = q + 1 views of ``b`` slices, view-major (view 0 = identity):
    the paper's PLE views (zoom-in, zoom-out, zoom-out, flip, cycling). Zoom factors
    are drawn per slice (reference code: 4–30 px margins on 144 px ≈ zoom 1.06–1.42 in,
    0.58–0.94 out); the flip is left-right, up-down or both."""
    zoom = [torch.ones(b)]
    hf = [torch.zeros(b, dtype=torch.bool)]
    vf = [torch.zeros(b, dtype=torch.bool)]
    for k in range(q):
        kind = VIEW_PATTERN[k % len(VIEW_PATTERN)]
        u = torch.rand(b, generator=g)
        if kind == "zoom_in":
            zoom.append(1.05 + (zoom_in_max - 1.05) * u)
        elif kind == "zoom_out":
            zoom.append(zoom_out_min + (0.95 - zoom_out_min) * u)
        else:
            zoom.append(torch.ones(b))
        if kind == "flip":
            c = torch.randint(0, 3, (b,), generator=g)  # 0: left-right, 1: up-down, 2: both
            hf.append((c == 0) | (c == 2))
            vf.append((c == 1) | (c == 2))
        else:
            hf.append(torch.zeros(b, dtype=torch.bool))
            vf.append(torch.zeros(b, dtype=torch.bool))
    k = q + 1
    return augment.AffineParams(torch.zeros(k * b), torch.cat(zoom), torch.cat(hf), torch.cat(vf)).to(device)


def apply_image(x: torch.Tensor, p: augment.AffineParams) -> torch.Tensor:
    """Augment images, padding what the view adds (zoom-out) with each image's minimum."""
    m = x.amin(dim=(1, 2, 3), keepdim=True)
    return augment.apply(x - m, p) + m


def view_average(v: torch.Tensor, p: augment.AffineParams, k: int, cov: torch.Tensor | None = None) -> torch.Tensor:
    """Map per-view maps ``(K·b, C, H, W)`` back to the original frame and average them
    where each view saw the pixel (coverage-weighted) → ``(b, C, H, W)`` (eq. 10's mean)."""
    back = augment.invert(v, p)
    cov = augment.coverage(p, v.shape[-2:], v.device) if cov is None else cov
    b = v.shape[0] // k
    back = back.view(k, b, *v.shape[1:])
    cov = cov.view(k, b, 1, *v.shape[-2:])
    return (back * cov).sum(0) / cov.sum(0).clamp_min(1e-6)


def ple_consistency(prob: torch.Tensor, p: augment.AffineParams, k: int, cov: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 11: mean squared distance between the class probabilities of every pair of
    the K views, compared in the original frame where both views saw the pixel
    (coverage-weighted), averaged over the K(K−1)/2 pairs."""
    back = augment.invert(prob, p)
    cov = augment.coverage(p, prob.shape[-2:], prob.device) if cov is None else cov
    b = prob.shape[0] // k
    back = back.view(k, b, *prob.shape[1:])
    cov = cov.view(k, b, 1, *prob.shape[-2:])
    total = prob.new_zeros(())
    for qi in range(k):
        for vi in range(qi + 1, k):
            m = cov[qi] * cov[vi]
            d = ((back[qi] - back[vi]) ** 2).sum(1, keepdim=True)  # ||·||² over classes
            total = total + (m * d).sum() / m.sum().clamp_min(1e-6)
    return total * 2.0 / (k * (k - 1))


# ------------------------------------------------------------------------------- method


@register
class MetaReweight(Method):
    name = "meta_reweight"
    title = "MLB-Seg: meta-learned pixel reweighting"
    description = ("Learns per-pixel weights for imperfect labels and for the model's own (view-enhanced) pseudo "
                   "labels by a one-step look-ahead on a few clean cases, with a mean teacher; ranks the cases whose "
                   "given label the meta step trusted least first.")
    needs = "a few clean-labelled training cases (the meta set) plus noisy-labelled and/or unlabelled cases"
    Config = MetaReweightConfig
    train_kinds = ("noisy", "none")

    @classmethod
    def unsupported_reason(cls, s: CohortSummary, config: MetaReweightConfig | None = None) -> str | None:
        if s.clean_train == 0:
            return (f"needs at least one clean-labelled training case as its meta set (has 0 clean, {s.noisy_train} noisy, "
                    f"{s.unlabeled_train} unlabelled training cases); mark a few expert-labelled cases as clean "
                    "(labels/ folder or label_kind=clean in cohort.csv)")
        if s.noisy_train + s.unlabeled_train == 0:
            return (f"needs noisy-labelled or unlabelled training cases to learn from besides the {s.clean_train} clean "
                    "meta-set case(s); with clean labels only, use the supervised method")
        return None

    def __init__(self, config: MetaReweightConfig, ctx):
        super().__init__(config, ctx)
        c = config
        data = ctx.data
        # The functional look-ahead needs the bare module: no DDP wrapper; gradients are
        # averaged over ranks by hand (see _step).
        self.net = make_unet(ctx.in_channels, 2, c).to(ctx.device)
        self.teacher = ema_model(self.net, c.ema_decay).to(ctx.device)
        params = self.net.parameters()
        if c.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: 20.0 / (e + 20.0) if c.lr_decay else 1.0)
        self.g = ctx.generator(3)
        self.meta_loss = ce_loss if c.meta_loss == "ce" else _dice_ce()
        self.clean = data.train.indices(("clean",))
        n, s = len(data.train), data.config.size
        self.w_label = torch.full((n,), float("nan"))
        self.w_pseudo = torch.full((n,), float("nan"))
        self.kept_inter = torch.full((n,), float("nan"))
        self.kept_size = torch.full((n,), float("nan"))
        self.maps_label = torch.zeros((n, s, s), dtype=torch.float16) if c.keep_maps else None
        self.maps_pseudo = torch.zeros((n, s, s), dtype=torch.float16) if c.keep_maps and c.use_pseudo else None

    # --- state --------------------------------------------------------------------------
    def modules(self):
        return {"student": self.net, "teacher": self.teacher}

    def optimizers(self):
        return {"opt": self.opt, "sched": self.sched}

    def extra_state(self):
        st = {"rng": self.g.get_state(), "w_label": self.w_label, "w_pseudo": self.w_pseudo,
              "kept_inter": self.kept_inter, "kept_size": self.kept_size}
        if self.maps_label is not None:
            st["maps_label"] = self.maps_label
        if self.maps_pseudo is not None:
            st["maps_pseudo"] = self.maps_pseudo
        return st

    def load_extra_state(self, state):
        self.g.set_state(state["rng"])
        self.w_label = state["w_label"].clone()
        self.w_pseudo = state["w_pseudo"].clone()
        self.kept_inter = state["kept_inter"].clone()
        self.kept_size = state["kept_size"].clone()
        if self.maps_label is not None and "maps_label" in state:
            self.maps_label = state["maps_label"].clone()
        if self.maps_pseudo is not None and "maps_pseudo" in state:
            self.maps_pseudo = state["maps_pseudo"].clone()

    # --- training -----------------------------------------------------------------------
    @property
    def views(self) -> int:
        """K: the original plus Q views with PLE, else 1."""
        return self.config.ple_views + 1 if self.config.use_ple else 1

    def phases(self, epochs: int) -> list[Phase]:
        """The warm-up is part of the epoch budget: ``warmup`` (plain CE on the given labels,
        as the reference code's ``warm_up``), then ``train`` for the remaining epochs."""
        w = min(self.config.warmup_epochs, epochs - 1)
        return ([Phase("warmup", w)] if w > 0 else []) + [Phase("train", epochs - w)]

    def make_batch(self, idx: torch.Tensor, phase: Phase) -> dict:
        if phase.name == "train" and self.config.views_share_batch and self.views > 1:
            idx = idx[: max(1, len(idx) // self.views)]
        batch = self.ctx.data.train.batch(idx)
        sel = self.clean[torch.randint(len(self.clean), (self.config.meta_batch,), generator=self.g)]
        meta = self.ctx.data.train.batch(sel)
        batch["meta_image"], batch["meta_label"] = meta["image"], meta["label"]
        return batch

    def _flips(self, n: int) -> augment.AffineParams:
        p = 0.5 if self.config.augment else 0.0
        return augment.sample_affine(n, flip_p=p, vflip_p=p, generator=self.g, device=self.ctx.device)

    def train_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        if info.phase == "warmup":
            return self._warmup_step(batch)
        return self._meta_step(batch, info)

    def _warmup_step(self, batch: dict) -> dict[str, float]:
        """Warm-up (reference code's ``warm_up``): plain CE on the given labels of the
        imperfect batch and on the clean meta batch, no meta step."""
        fl, mfl = self._flips(len(batch["image"])), self._flips(len(batch["meta_image"]))
        x = torch.cat([augment.apply(batch["image"], fl), augment.apply(batch["meta_image"], mfl)])
        y = torch.cat([augment.apply(batch["label"], fl, mode="nearest"), augment.apply(batch["meta_label"], mfl, mode="nearest")])[:, 0]
        has = torch.cat([batch["kind"] != KIND_NONE, torch.ones(len(batch["meta_image"]), dtype=torch.bool, device=x.device)])
        self.net.train()
        logits = self.net(x)
        loss = F.cross_entropy(logits[has], y[has]) if has.any() else logits.sum() * 0
        grads = torch.autograd.grad(loss, list(self.net.parameters()), allow_unused=True)
        self._apply(grads)
        self.teacher.update_parameters(self.net)
        return {"loss": float(loss.detach())}

    def _meta_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        c = self.config
        dev = self.ctx.device
        k = self.views
        x0, y0 = batch["image"], batch["label"]
        b = x0.shape[0]
        # base flips (undone exactly when the weight maps are stored), then the PLE views
        fl = self._flips(b)
        x, y = augment.apply(x0, fl), augment.apply(y0, fl, mode="nearest")
        vp = cov = None
        if k > 1:
            vp = view_params(b, c.ple_views, self.g, c.zoom_in_max, c.zoom_out_min, dev)
            cov = augment.coverage(vp, x.shape[-2:], dev)
            xv = apply_image(x.repeat(k, 1, 1, 1), vp)
            yv = augment.apply(y.repeat(k, 1, 1, 1), vp, mode="nearest")[:, 0]
        else:
            xv, yv = x, y[:, 0]
        has_label = (batch["kind"] != KIND_NONE).repeat(k).to(dev)
        mask_n = has_label[:, None, None].float()
        mfl = self._flips(len(batch["meta_image"]))
        xm = augment.apply(batch["meta_image"], mfl)
        ym = augment.apply(batch["meta_label"], mfl, mode="nearest")[:, 0]
        tnoise = (torch.randn(xv.shape, generator=self.g) * c.teacher_noise).to(dev) if c.use_mean_teacher else None

        self.net.train()
        params = dict(self.net.named_parameters())
        meta_loss = g_clean = tangent = None
        forward_mode = c.use_meta and c.meta_grad == "forward"
        if forward_mode:  # v = ∇θ L_meta(θ) first, then one forward pass that also gives J·v
            meta_loss, g_clean = clean_gradient(self.net, params, xm, ym, self.meta_loss)
            logits, tangent = dual_forward(self.net, params, g_clean, xv)
        else:
            logits = self.net(xv)  # the step's one running-statistics update
        prob = torch.softmax(_up(logits), 1)
        # pseudo labels (eq. 3; eq. 10 with PLE) from the student at θ_t, no gradient
        with torch.no_grad():
            fg = prob[:, 1:2]
            if k > 1:
                avg = view_average(fg, vp, k, cov)  # (b, 1, H, W), the (flipped) slice frame
                yp = (augment.apply(avg.repeat(k, 1, 1, 1), vp) > 0.5).long()[:, 0]
            else:
                avg = fg
                yp = (fg > 0.5).long()[:, 0]
            pseudo_slice = augment.invert(avg, fl)[:, 0] > 0.5
        cost_n = F.cross_entropy(_up(logits), yv, reduction="none") * mask_n
        cost_p = F.cross_entropy(_up(logits), yp, reduction="none") if c.use_pseudo else None

        # eqs. 4–8: the meta-learned weight maps
        if c.use_meta:
            if forward_mode:
                targets, masks = [yv] + ([yp] if c.use_pseudo else []), [mask_n] + ([None] if c.use_pseudo else [])
                g_eps = meta_grad_forward(logits, tangent, targets, c.inner_lr, masks)
            else:
                costs = [cost_n] + ([cost_p] if c.use_pseudo else [])
                g_eps, meta_loss, g_clean = meta_grad_lookahead(self.net, params, costs, xm, ym, c.inner_lr, self.meta_loss)
            pref_n = (-g_eps[0].detach() * mask_n).clamp(min=0)
            pref_p = (-g_eps[1].detach()).clamp(min=0) if c.use_pseudo else torch.zeros_like(pref_n)
            w_n, w_p = normalise_weights(pref_n, pref_p if c.use_pseudo else None, c.weight_eps,
                                         joint=c.weight_norm == "joint")
        else:  # fixed uniform weights (Reed et al. 2014's bootstrapping with use_pseudo)
            full = mask_n.expand_as(cost_n)
            w_n = full / full.sum().clamp_min(1.0)
            w_p = torch.full_like(cost_p, 1.0 / cost_p.numel()) if cost_p is not None else None
            pref_n, pref_p = w_n, (w_p if w_p is not None else torch.zeros_like(w_n))
            if c.clean_weight > 0:
                meta_loss, g_clean = clean_gradient(self.net, params, xm, ym, self.meta_loss)

        # eq. 9 (+ eq. 11, eq. 13): the real update, from the same forward pass
        l_w = (w_n * cost_n).sum() + ((w_p * cost_p).sum() if cost_p is not None else 0.0)
        loss = l_w
        out = {"weighted": float(l_w.detach()), "w_sum_label": float(w_n.sum())}
        if w_p is not None:
            out["w_sum_pseudo"] = float(w_p.sum())
        if k > 1 and c.ple_weight > 0:
            l_aug = ple_consistency(prob, vp, k, cov)
            loss = loss + c.ple_weight * l_aug
            out["ple"] = float(l_aug.detach())
        if c.use_mean_teacher:
            with torch.no_grad():
                self.teacher.train()
                t_prob = torch.softmax(self.teacher(xv + tnoise).float(), 1)
            lam = c.mt_weight * sigmoid_rampup(info.epoch + info.step / max(info.steps, 1), c.mt_rampup_epochs)
            l_st = F.mse_loss(prob, t_prob)
            loss = loss + lam * l_st
            out["mt"] = float(l_st.detach())
            out["mt_w"] = lam
        grads = list(torch.autograd.grad(loss, list(params.values()), allow_unused=True))
        if g_clean is not None and c.clean_weight > 0:
            grads = [(g if g is not None else torch.zeros_like(gc)) + c.clean_weight * gc for g, gc in zip(grads, g_clean)]
        if meta_loss is not None:
            out["meta"] = float(meta_loss)
        self._apply(grads)
        self.teacher.update_parameters(self.net)

        self._record(batch["index"], fl, vp, cov, k, w_n, w_p, pref_n, pref_p, mask_n, has_label, y0 > 0, pseudo_slice)
        out["loss"] = float(loss.detach()) + (c.clean_weight * out.get("meta", 0.0))
        return out

    def _apply(self, grads) -> None:
        """Set the gradients, average them over DDP ranks, clip, step."""
        params = list(self.net.parameters())
        self.opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach().clone()
        if self.ctx.world_size > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.ctx.world_size
        if self.config.clip:
            torch.nn.utils.clip_grad_norm_(params, self.config.clip)
        self.opt.step()

    @torch.no_grad()
    def _record(self, index, fl, vp, cov, k, w_n, w_p, pref_n, pref_p, mask_n, has_label, label, pseudo) -> None:
        """Per slice, in the slice's own frame (views averaged back, base flips undone):
        the weight maps (relative: 1 = the batch average), their means, and the meta
        arbitration of the given label (see :meth:`quality`). Scalars are averaged over
        visits with an exponential moving average (factor :data:`VISIT_EMA`)."""
        def back(w):
            w = w[:, None].float()
            if k > 1:
                w = view_average(w, vp, k, cov)
            return augment.invert(w, fl)[:, 0]

        def ema(store, i, v):
            old = store[i]
            store[i] = torch.where(torch.isnan(old), v, VISIT_EMA * old + (1 - VISIT_EMA) * v)

        idx = index.cpu()
        has = has_label.view(k, -1)[0].cpu()
        if not has.any():
            return
        dev_has = has.to(w_n.device)
        rn = back(w_n * mask_n.expand_as(w_n).sum().clamp_min(1.0))  # relative weights
        ema(self.w_label, idx[has], rn.mean((1, 2)).cpu()[has])
        if self.maps_label is not None:
            self.maps_label[idx[has]] = rn[dev_has].to(torch.float16).cpu()
        if w_p is not None:
            rp = back(w_p * w_p.numel())
            ema(self.w_pseudo, idx, rp.mean((1, 2)).cpu())
            if self.maps_pseudo is not None:
                self.maps_pseudo[idx] = rp.to(torch.float16).cpu()
        # arbitration: the label where it agrees with the pseudo label or the meta step
        # preferred it (its clamped meta-gradient is positive and not below the pseudo
        # label's); the pseudo label elsewhere
        an, ap = back(pref_n), back(pref_p)
        lab = label[:, 0].bool()
        keep = (lab == pseudo) | ((an > 0) & (an >= ap))
        arb = torch.where(keep, lab, pseudo)
        inter = (lab & arb).flatten(1).sum(1).float().cpu()
        ema(self.kept_inter, idx[has], inter[has])
        ema(self.kept_size, idx[has], (lab.flatten(1).sum(1) + arb.flatten(1).sum(1)).float().cpu()[has])

    def end_epoch(self, info: StepInfo) -> EpochReport:
        if info.phase == "train":
            self.sched.step()
        seen = ~torch.isnan(self.w_label)
        m = {"lr": self.opt.param_groups[0]["lr"]}
        if seen.any():
            m["mean_w_label"] = float(self.w_label[seen].mean())
        if self.config.use_pseudo and (~torch.isnan(self.w_pseudo)).any():
            m["mean_w_pseudo"] = float(self.w_pseudo[~torch.isnan(self.w_pseudo)].mean())
        return EpochReport(metrics=m)

    # --- inference and outputs -------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        net = self.teacher if self.config.predict_with == "teacher" else self.net
        net.eval()
        return torch.softmax(net(images).float(), dim=1)

    def case_weights(self) -> dict[str, dict[str, float]]:
        """Per imperfect training case: mean relative weight on its given label and on the
        pseudo label, and the label's Dice with its meta-arbitrated version (slices never
        visited are left out)."""
        out = {}
        for rec in self.ctx.data.train.records:
            sl = torch.arange(rec.start, rec.start + rec.count)
            wl, wp = self.w_label[sl], self.w_pseudo[sl]
            row = {}
            seen = ~torch.isnan(wl)
            if seen.any():
                row["meta_weight_label"] = float(wl[seen].mean())
                size = float(self.kept_size[sl][seen].sum())
                row["meta_label_kept"] = 2 * float(self.kept_inter[sl][seen].sum()) / size if size > 0 else 1.0
            if (~torch.isnan(wp)).any():
                row["meta_weight_pseudo"] = float(wp[~torch.isnan(wp)].mean())
            if row:
                out[rec.case_id] = row
        return out

    def quality(self, predictions, job) -> QualityResult:
        """``score`` = ``meta_label_kept``: the Dice between the given label and its
        meta-arbitrated version, in which every pixel where the label disagrees with the
        model's (PLE-enhanced) pseudo label takes the label the meta step weighted more
        (the label needs a positive weight). 1: the meta step kept the whole label; low:
        the model's own prediction outweighed the label over much of the organ. Cases are
        flagged by the engine (lowest ``flag_fraction``), so the review queue starts with
        the labels the meta step trusted least. Clean (meta-set), validation and test
        cases have no score. ``meta_weight_label`` / ``meta_weight_pseudo``: mean relative
        weight (1 = batch average) over the case's pixels."""
        weights = self.case_weights()
        rows, maps = [], {}
        axis = self.ctx.data.config.axis
        for split, _, rec in self.ctx.data.all_records():
            cols = {"split": split, "label_kind": rec.kind}
            w = weights.get(rec.case_id) if split == "train" else None
            if not w or "meta_label_kept" not in w:
                cols["score_source"] = "meta_set" if rec.kind == "clean" and split == "train" else "not_reweighted"
                cols.update(w or {})
                rows.append(CaseQuality(rec.case_id, float("nan"), cols, flag=False))
                continue
            cols["score_source"] = "meta_label_kept"
            cols.update(w)
            rows.append(CaseQuality(rec.case_id, float(w["meta_label_kept"]), cols, flag=None))
            if self.config.keep_maps:
                maps[rec.case_id] = self._case_maps(rec, axis)
        return QualityResult(rows, maps)

    def report_figures(self, job, ranked: list[dict]) -> list:
        """``report/meta_weights.png``: per imperfect training case, the mean weight the meta
        step gave its label against the one it gave the pseudo label, coloured by ``score``
        (``meta_label_kept``), flagged cases named."""
        from ..report import CasePoint, ReportFigure, plot_case_scatter

        pts = [CasePoint(r["case"], r.get("meta_weight_label"), r.get("meta_weight_pseudo"), r.get("score"),
                         bool(r.get("flag")))
               for r in ranked if r.get("score_source") == "meta_label_kept"]
        if not pts:
            return []
        plot_case_scatter(pts, job.report_dir / "meta_weights.png",
                          "mean weight on the given label (1 = batch average)",
                          "mean weight on the pseudo label", "Learned weights per case",
                          score_label="score: Dice(label, meta-arbitrated label)")
        return [ReportFigure("Learned weights", "meta_weights.png",
                             "mean learned weight on each case's given label against its pseudo label")]

    def _case_maps(self, rec, axis: int) -> dict[str, np.ndarray]:
        out = {}
        sl = slice(rec.start, rec.start + rec.count)
        for name, store, vec in (("meta_weight_label", self.maps_label, self.w_label),
                                 ("meta_weight_pseudo", self.maps_pseudo, self.w_pseudo)):
            if store is None:
                continue
            m = store[sl].float().clone()
            m[torch.isnan(vec[sl])] = 0.0  # never-visited slices
            m = resize_probabilities(m[:, None], rec.inplane)[:, 0]
            out[name] = from_slices(m.numpy(), axis).astype(np.float32)
        return out


__all__ = ["MetaReweight", "MetaReweightConfig", "meta_grad_lookahead", "meta_grad_forward", "clean_gradient",
           "dual_forward", "ce_tangent", "normalise_weights", "view_params", "view_average", "ple_consistency",
           "apply_image"]
