"""``aide``: cross-model label self-correction (AIDE; Wang, Li et al., Nat. Commun. 2022).

Two U-Nets f1, f2 (same architecture, independent initialisation, own optimiser) learn
from noisy labels and correct them (paper "Methods: AIDE framework", Algorithm 1 / Fig. 5;
authors' code lich0031/AIDE). Each network trains on its own copy of the training labels
(label set k for network k); the copies start equal to the given labels and are rewritten
by the *peer* network, which is what makes the correction cross-model.

Per iteration, **local label filtering**:

1. per-image segmentation loss L_seg = CE + soft Dice (smooth 1), eq. (1), unreduced;
2. each network ranks the batch by its own loss; the ``clean_ratio`` share with the
   smallest loss is "clean" for its peer, the rest "suspected noisy" (small-loss
   exchange). Expert (``clean``) slices always count as clean (``trust_clean``);
3. for its suspected-noisy images each network predicts K augmented views (rotation
   U(±``rotation``°), horizontal flip p = ``flip_p``), maps them back with the exact
   inverse transform (:mod:`.augment`), averages the softmax, sharpens it with
   temperature T (p^(1/T) / Σ), and builds the confidence weight w = 1 − 4·p0·p1;
4. loss of network k (eq. (2) and the code's weighting):
   L_seg(clean) + (1 − r)·L_seg(noisy) + λ_c·r·mean(w_peer·(softmax_k − ŷ_peer)²),
   r = min((epoch / warmup)², 1).

Per epoch, **global label correction**: when epoch ≤ ``warmup`` or epoch is a multiple
of ``correct_every`` (1-based epochs; none before ``correct_start``, which is 1 in the
paper but should be later when an epoch is only a few optimiser steps, since a network
that has barely trained cannot correct anything; ``correct_warmup`` replaces ``warmup``
in this rule when set, the paper uses one warm-up for both), each network predicts every noisy
training case (argmax, optionally its largest connected component over the case's slices), computes
the case Dice against the label set its peer trains on, and overwrites the
``correct_fraction`` of noisy cases with the lowest Dice by its prediction. A "case" is
a 2D image or all slices of a volume (the paper corrects per image of its 2D data; the
code per patient volume). Expert labels are never overwritten. Every correction is
recorded (case, epoch, network, Dice of the replaced label vs the new one and vs the
given label) and announced as a ``correction`` event.

Deviations, all documented and switchable where they matter:

- the K views are averaged with coverage weights (pixels a rotated view did not see do
  not count), instead of averaging zero-padded logits; views are predicted in
  evaluation mode (BatchNorm running statistics, no gradient): a prediction rather than a
  training pass; ``view_mode=train`` runs them as the code does, with the view batch's own
  BatchNorm statistics (which also move the running averages);
- sharpening is p^(1/T) as in the paper (the code raises to the power T; default T = 1
  makes both the identity);
- the default learning rate is the project's (1e-3) for the engine's shorter budget
  (30 epochs of batch 16 instead of the code's 100 epochs of batch 4 at 1e-4);
- ``precise_bn``: after every epoch the networks' BatchNorm statistics are recomputed
  over the training slices (torch ``update_bn``) before the correction predicts: with a
  few optimiser steps per epoch the running averages lag and evaluation-mode
  predictions collapse at random epochs (empty masks), which a correction would copy
  into the labels. Not in the paper (its epochs are ~10× longer); off = as published, and
  the benchmark plan runs it off (better on two phantoms with ``train_view``);
- ``augment`` adds the project's random flips of the training batch (image and both
  label sets alike), as the supervised baseline does; the code trains unaugmented;
- ``trust_clean``: expert-labelled slices always count as clean in the exchange (the
  code ranks them like any other slice); off = as published;
- the lowest ``correct_fraction`` is taken among *noisy* cases (the code ranks all cases
  and then skips expert ones, so fewer noisy cases are corrected);
- ``train_view`` (off = as published): the training pass's own softmax of the
  (unaugmented) suspected-noisy images counts as one of the K views, so only K − 1 views
  are predicted: one forward pass fewer per network and step;
- ``correct_warmup`` (−1 = as published): a correction warm-up of its own, so that
  corrections can be spaced out while the consistency ramp is long;
- ``correct_area`` (off = argmax, as published): a correcting prediction marks the pixels
  whose foreground probability is above one threshold per network and correction, chosen
  so that the predictions of all noisy cases together mark as many pixels as the given
  noisy labels. Where the small-loss half favours one direction of label error (dilated
  labels lose less Dice than eroded ones), the networks drift towards over-segmenting and
  an argmax correction copies that drift into the label sets; the threshold anchors the
  corrected sets' total area to the given labels', which such noise leaves about right;
- ``train_rotation`` (0 = the project's flips only): random rotations U(±deg) of the
  training batch, image and label sets alike; the code trains with 60° rotations and
  left-right flips.

Cost: besides the two networks' training passes, each network predicts K views of the
suspected-noisy half of the batch (one batched evaluation-mode forward pass), about a
tenth of a supervised step per view and network: a step costs about 2.2 + 0.2·K
supervised steps (64 px, batch 16, one CPU thread; medians of 3 rounds on a busy machine:
2.6 with K = 2, 2.4 with K = 2 and ``train_view``, 3.2–3.6 with K = 4). The default K = 4
is the code's; the benchmark plan uses K = 2.

Limits, measured on the ``noisy_organ`` phantom (``benchmarks/plans/aide.py``): the
small-loss exchange needs label noise whose *better* labels are not biased. There each
noisy case is eroded or dilated by a similar radius; erosion costs more Dice, so the
small-loss half is mostly dilated labels and the networks learn to over-segment, and a
correction copies that into the labels; a plain network trained on all labels averages
the two directions out instead.

Ablation switches: ``local_filtering`` (off: every slice trains with L_seg, no exchange,
no consistency), ``global_correction`` (off: label sets never change), ``two_networks``
(off: one network selects its own small-loss slices, makes its own pseudo labels and
corrects its own label set).

Outputs: ``corrections/<case>.seg.nrrd`` (segments "Corrected" and "Given label") for
every noisy case, ``corrections.csv`` (the history), ``quality.csv`` (``score`` and the
columns ``aide_corrections``, ``aide_dice_change``, ``aide_agreement``; see
:meth:`Aide.quality`), per-case maps ``aide_confidence``, and ``report/corrections.png``
(the history drawn per case in review order, :meth:`Aide.report_figures`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from scipy import ndimage

from ..data.dataset import KIND_CODES, CaseRecord, SliceSet
from ..data.slicing import from_slices
from ..data.transforms import resize_probabilities
from ..nets import NetConfig, make_unet
from .augment import apply, invert, sample_affine
from .base import CaseQuality, CohortSummary, EpochReport, Method, QualityResult, StepInfo
from .common import random_rotations, recalibrate_bn
from .registry import register

CLEAN, NOISY = KIND_CODES["clean"], KIND_CODES["noisy"]


@dataclass
class AideConfig(NetConfig):
    lr: float = field(default=1e-3, metadata={"help": "Adam (AMSGrad) learning rate of each network (paper code: 1e-4 for 100 epochs of batch 4)", "min": 0.0})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay", "min": 0.0})
    lr_step: int = field(default=30, metadata={"help": "StepLR: halve the learning rate every N epochs (0: never)", "min": 0})
    lr_gamma: float = field(default=0.5, metadata={"help": "StepLR factor", "min": 0.0, "max": 1.0})
    augment: bool = field(default=True, metadata={"help": "random flips of each training batch (image and label sets alike)"})
    train_rotation: float = field(default=0.0, metadata={"help": "random in-plane rotation of each training sample, U(± degrees), label sets alike (the code trains with 60; 0: none)", "min": 0.0, "max": 180.0})
    two_networks: bool = field(default=True, metadata={"help": "two networks that select, pseudo-label and correct for each other (off: one network does it for itself)"})
    local_filtering: bool = field(default=True, metadata={"help": "per-batch small-loss exchange + consistency to augmented-view pseudo labels"})
    global_correction: bool = field(default=True, metadata={"help": "overwrite the worst-agreeing noisy labels with the peer's prediction on the schedule"})
    clean_ratio: float = field(default=0.5, metadata={"help": "share of each batch kept as clean (smallest loss, chosen by the peer)", "min": 0.0, "max": 1.0})
    trust_clean: bool = field(default=True, metadata={"help": "expert-labelled slices always count as clean in the exchange"})
    views: int = field(default=4, metadata={"help": "K augmented views per suspected-noisy image (code: 4; each view costs each network a forward pass of half a batch)", "min": 1, "max": 16})
    train_view: bool = field(default=False, metadata={"help": "count the training pass's own (unaugmented, training-mode) prediction as one of the K views: one forward pass fewer per network and step"})
    view_mode: Literal["eval", "train"] = field(default="eval", metadata={"help": "BatchNorm mode of the view predictions: running statistics (eval) or the view batch's own statistics, as the code runs them (train)"})
    rotation: float = field(default=60.0, metadata={"help": "view rotation range ± degrees", "min": 0.0, "max": 180.0})
    flip_p: float = field(default=0.5, metadata={"help": "view horizontal flip probability", "min": 0.0, "max": 1.0})
    temperature: float = field(default=1.0, metadata={"help": "sharpening temperature T (p^(1/T)); 1 = none (code), paper mentions 0.5", "min": 0.01, "max": 10.0})
    consistency: float = field(default=10.0, metadata={"help": "λ_c, weight of the consistency loss", "min": 0.0})
    warmup: int = field(default=20, metadata={"help": "warm-up epochs: ramp r = min((epoch/warmup)², 1); labels corrected every epoch until then", "min": 0})
    correct_warmup: int = field(default=-1, metadata={"help": "labels are corrected after every epoch up to this one (1-based), then every correct_every epochs; -1: the consistency warm-up (paper: the same warm-up)", "min": -1})
    correct_every: int = field(default=10, metadata={"help": "after warm-up, correct labels every N epochs", "min": 1})
    correct_start: int = field(default=1, metadata={"help": "first epoch (1-based) a correction may happen (paper: 1; later for short epochs)", "min": 1})
    correct_fraction: float = field(default=0.25, metadata={"help": "share of noisy cases (lowest Dice) corrected each time", "min": 0.0, "max": 1.0})
    largest_component: bool = field(default=True, metadata={"help": "keep only the largest connected component of a correcting prediction"})
    correct_area: bool = field(default=False, metadata={"help": "threshold the correcting predictions so that their total area over the noisy cases equals the given noisy labels' (off: argmax, as published)"})
    precise_bn: bool = field(default=True, metadata={"help": "recompute BatchNorm statistics on the training slices after every epoch (stable eval-mode predictions for correction and validation)"})
    predict_with: Literal["average", "net1", "net2"] = field(default="average", metadata={"help": "network(s) used for predictions"})
    standardize: bool = field(default=True, metadata={"help": "task standardization: unlabelled cases first get pseudo labels from a model trained on the clean ones"})
    standardize_epochs: int = field(default=0, metadata={"help": "epochs of the standardization model (0: as many as the main run)", "min": 0})


# ----------------------------------------------------------------------------- schedule


def consistency_ramp(epoch: int, warmup: int) -> float:
    """r = min((epoch / warmup)², 1) for the 0-based ``epoch`` (the code's ``rate_schedule``)."""
    if warmup <= 0:
        return 1.0
    return float(min((epoch / warmup) ** 2, 1.0))


def correction_due(epoch: int, warmup: int, every: int, start: int = 1) -> bool:
    """Global correction after 0-based ``epoch`` (paper, global label correction; code:
    ``(epoch + 1) <= warmup_epoch or (epoch + 1) % 10 == 0``), not before epoch ``start``."""
    e = epoch + 1
    return e >= start and (e <= warmup or (every > 0 and e % every == 0))


def sharpen(prob: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening p^(1/T) / Σ_c p^(1/T) over the class axis (paper, local label filtering)."""
    if temperature == 1.0:
        return prob
    q = prob.clamp_min(1e-8) ** (1.0 / temperature)
    return q / q.sum(1, keepdim=True)


def confidence_weight(prob: torch.Tensor) -> torch.Tensor:
    """w = 1 − 4·p0·p1 (two classes): 0 where the pseudo label is 50/50, 1 where it is certain."""
    return (1.0 - 4.0 * prob[:, 0:1] * prob[:, 1:2]).clamp_(0.0, 1.0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected (4-connected in 2D) component of a binary stack (the code's
    ``keep_largest_connected_components``); empty stays empty."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(lab.ravel())[1:]
    return (lab == (int(np.argmax(sizes)) + 1)).astype(np.uint8)


def area_threshold(prob: torch.Tensor, area: int) -> float:
    """The foreground threshold t at which ``prob >= t`` marks ``area`` pixels (the
    ``area``-th largest probability; 1.01 for area 0, so that nothing is marked)."""
    if area <= 0:
        return 1.01
    flat = prob.flatten()
    return float(torch.topk(flat, min(int(area), flat.numel())).values[-1])


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a.bool() & b.bool()).sum()) / s


# ----------------------------------------------------------------------------- method


@register
class Aide(Method):
    name = "aide"
    title = "AIDE: cross-model label self-correction"
    description = ("Two networks exchange small-loss slices, learn from consistency to augmented-view pseudo labels "
                   "on suspected-noisy ones, and overwrite each other's worst-agreeing noisy labels; the corrections "
                   "are written for review.")
    needs = "noisy labels (or a few clean labels plus unlabelled cases, via task standardization)"
    Config = AideConfig

    @classmethod
    def unsupported_reason(cls, s: CohortSummary, config: AideConfig | None = None) -> str | None:
        if s.noisy_train > 0:
            return None
        if s.unlabeled_train and s.clean_train and config is not None and not config.standardize:
            return "unlabelled training cases need pseudo labels first; set standardize=true"
        if s.unlabeled_train and not s.clean_train:
            return "no labelled training case (task standardization needs at least one clean label)"
        return "no noisy training labels to correct (use 'supervised' on clean labels)"

    def __init__(self, config: AideConfig, ctx):
        super().__init__(config, ctx)
        c = config
        n_nets = 2 if c.two_networks else 1
        self.nets = [ctx.wrap(make_unet(ctx.in_channels, 2, c)) for _ in range(n_nets)]
        self.opts = [torch.optim.Adam(n.parameters(), lr=c.lr, weight_decay=c.weight_decay, amsgrad=True) for n in self.nets]
        self.scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=c.lr_step, gamma=c.lr_gamma) if c.lr_step > 0 else None
                       for o in self.opts]
        # eq. (1): CE + foreground soft Dice with smooth 1, per image (MONAI DiceLoss + torch CE)
        self.dice_loss = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1.0, smooth_dr=1.0,
                                  reduction="none")
        self.g = ctx.generator(3)
        train: SliceSet = ctx.data.train
        # label set k: what network k trains on, rewritten by its peer (uint8 copies on the CPU)
        self.label_sets = [train.labels.to(torch.uint8).clone() for _ in range(n_nets)]
        self.noisy_cases = [i for i, r in enumerate(train.records) if r.kind == "noisy"]
        self.history: list[dict] = []
        # epoch (1-based) of the last correction per (label set, record); 0 = never
        self.last_corrected = torch.zeros(n_nets, len(train.records), dtype=torch.long)
        self._final: dict[str, np.ndarray] | None = None

    # --- state ---------------------------------------------------------------------
    def modules(self):
        return {f"net{k + 1}": n for k, n in enumerate(self.nets)}

    def optimizers(self):
        out = {f"opt{k + 1}": o for k, o in enumerate(self.opts)}
        out.update({f"sched{k + 1}": s for k, s in enumerate(self.scheds) if s is not None})
        return out

    def extra_state(self):
        return {"rng": self.g.get_state(), "history": [dict(h) for h in self.history],
                "last_corrected": self.last_corrected.clone(),
                **{f"labels{k + 1}": ls.clone() for k, ls in enumerate(self.label_sets)}}

    def load_extra_state(self, state):
        self.g.set_state(state["rng"])
        self.history = [dict(h) for h in state.get("history", [])]
        if "last_corrected" in state:
            self.last_corrected = state["last_corrected"].clone()
        for k in range(len(self.label_sets)):
            self.label_sets[k] = state[f"labels{k + 1}"].clone()
        self._final = None

    def _peer(self, k: int) -> int:
        return (k + 1) % len(self.nets)

    # --- training --------------------------------------------------------------------
    def per_image_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Eq. (1) per image: mean pixel cross-entropy + foreground soft Dice loss (smooth 1) → ``(B,)``."""
        ce = F.cross_entropy(logits.float(), y[:, 0], reduction="none").mean((1, 2))
        return ce + self.dice_loss(logits.float(), y).flatten(1).mean(1)

    def _order(self, loss: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        key = loss.detach().float().clone()
        if self.config.trust_clean:
            key[kind == CLEAN] = -math.inf
        return torch.argsort(key, stable=True)

    @torch.no_grad()
    def local_pseudo_labels(self, net: torch.nn.Module, x: torch.Tensor,
                            own: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Local label filtering, step 3: K augmented views of ``x`` → predictions mapped back
        by the inverse transform → coverage-weighted mean softmax → sharpened pseudo label
        ``(m, 2, H, W)`` and confidence weight ``w = 1 − 4 p0 p1`` ``(m, 1, H, W)``.
        ``own``: the softmax ``net`` already gave ``x`` in its training pass; it then counts
        as one of the K views (``train_view``), and only K − 1 views are predicted."""
        c = self.config
        m = x.shape[0]
        k = c.views - (1 if own is not None else 0)
        acc = torch.zeros(m, 3, *x.shape[-2:], device=x.device)
        if own is not None:
            acc[:, :2] += own.detach().float()
            acc[:, 2:] += 1.0
        if k > 0:
            xs = x.repeat(k, 1, 1, 1)  # view-major: (k·m, C, H, W)
            p = sample_affine(k * m, c.rotation, flip_p=c.flip_p, generator=self.g, device=x.device)
            net = getattr(net, "module", net)  # no DDP synchronisation for a no-grad prediction
            was = net.training
            net.train(c.view_mode == "train")
            with self.ctx.autocast():
                prob = torch.softmax(net(apply(xs, p, fill=-1.0)).float(), 1)
            net.train(was)
            back = invert(torch.cat([prob, torch.ones_like(prob[:, :1])], 1), p)
            acc += back.view(k, m, 3, *x.shape[-2:]).sum(0)
        back = acc
        cov = back[:, 2:3]
        avg = torch.where(cov > 1e-3, back[:, :2] / cov.clamp_min(1e-3), torch.full_like(back[:, :2], 0.5))
        avg = sharpen(avg, c.temperature)
        return avg, confidence_weight(avg)

    def train_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        c = self.config
        dev = self.ctx.device
        x, kind = batch["image"], batch["kind"]
        idx = batch["index"].cpu()
        ys = [ls[idx].to(dev).long() for ls in self.label_sets]
        if c.augment:
            p = sample_affine(x.shape[0], 0.0, flip_p=0.5, vflip_p=0.5, generator=self.g, device=dev)
            x = apply(x, p)
            ys = [apply(y, p) for y in ys]
        x, ys = random_rotations(x, ys, c.train_rotation, self.g)
        r = consistency_ramp(info.epoch, c.warmup)
        for n in self.nets:
            n.train()
        with self.ctx.autocast():
            logits = [n(x) for n in self.nets]
        per = [self.per_image_loss(lg, y) for lg, y in zip(logits, ys)]
        out: dict[str, float] = {"r": r}
        if not c.local_filtering:
            losses = [pl.mean() for pl in per]
        else:
            b = x.shape[0]
            n_keep = int(round(c.clean_ratio * b))
            if c.trust_clean:
                n_keep = max(n_keep, int((kind == CLEAN).sum()))
            n_keep = min(n_keep, b)
            orders = [self._order(pl, kind) for pl in per]
            use_cons = r > 0 and c.consistency > 0 and n_keep < b
            # network j provides pseudo labels on its own high-loss share (its peer's noisy set)
            pseudo = [self.local_pseudo_labels(self.nets[j], x[orders[j][n_keep:]],
                                               torch.softmax(logits[j][orders[j][n_keep:]].detach().float(), 1)
                                               if c.train_view else None) if use_cons else None
                      for j in range(len(self.nets))]
            losses = []
            for k in range(len(self.nets)):
                j = self._peer(k)
                clean, noisy = orders[j][:n_keep], orders[j][n_keep:]
                loss = per[k][clean].mean() if len(clean) else logits[k].sum() * 0
                if len(noisy):
                    loss = loss + (1.0 - r) * per[k][noisy].mean()
                if use_cons:
                    target, w = pseudo[j]
                    pk = torch.softmax(logits[k][noisy].float(), 1)
                    cons = (w * (pk - target) ** 2).mean()
                    loss = loss + c.consistency * r * cons
                    out[f"cons{k + 1}"] = float(cons.detach())
                losses.append(loss)
        for k, (loss, opt) in enumerate(zip(losses, self.opts)):
            self.ctx.optimize(loss, opt)
            out[f"loss{k + 1}"] = float(loss.detach())
        out["loss"] = float(sum(out[f"loss{k + 1}"] for k in range(len(self.nets))) / len(self.nets))
        return out

    # --- global label correction -------------------------------------------------------
    @torch.no_grad()
    def _predict_labels(self, net: torch.nn.Module, records: list[int], batch_size: int = 64) -> dict[int, torch.Tensor]:
        """Binary prediction ``(n, 1, S, S)`` uint8 (CPU) of every slice of ``records``:
        argmax, or with ``correct_area`` the foreground probability above the threshold
        that gives the predictions of all ``records`` the given labels' total area;
        then the largest connected component per case when configured."""
        train = self.ctx.data.train
        net = getattr(net, "module", net)
        was = net.training
        net.eval()
        fg = {}
        for ri in records:
            rec = train.records[ri]
            parts = []
            for s in range(rec.start, rec.start + rec.count, batch_size):
                e = min(s + batch_size, rec.start + rec.count)
                with self.ctx.autocast():
                    lg = net(train.images[s:e].to(self.ctx.device))
                lg = lg.float()
                parts.append(torch.softmax(lg, 1)[:, 1:2].cpu() if self.config.correct_area
                             else lg.argmax(1, keepdim=True).to(torch.uint8).cpu())
            fg[ri] = torch.cat(parts)
        net.train(was)
        if self.config.correct_area:
            cases = [train.records[ri] for ri in records]
            given = sum(int((train.labels[r.start:r.start + r.count] > 0).sum()) for r in cases)
            t = area_threshold(torch.cat([fg[ri].flatten() for ri in records]), given)
            binary = {ri: (p >= t).to(torch.uint8) for ri, p in fg.items()}
        else:
            binary = fg
        if self.config.largest_component:
            binary = {ri: torch.from_numpy(largest_component(b[:, 0].numpy()))[:, None] for ri, b in binary.items()}
        return binary

    def correct_labels(self, epoch: int) -> list[dict]:
        """Global label correction (paper "global label correction"; code: end of each epoch):
        network j overwrites the lowest-Dice ``correct_fraction`` of noisy cases in the label
        set its peer trains on. Returns the correction records."""
        c = self.config
        train = self.ctx.data.train
        cases = self.noisy_cases
        if not cases or c.correct_fraction <= 0:
            return []
        n_sel = max(1, int(c.correct_fraction * len(cases)))
        preds = [self._predict_labels(n, cases) for n in self.nets]  # all predictions before any overwrite
        records = []
        for j in range(len(self.nets)):
            k = self._peer(j)  # network j corrects the label set network k trains on
            target = self.label_sets[k]
            scores = []
            for ri in cases:
                rec = train.records[ri]
                scores.append(_dice(preds[j][ri], target[rec.start:rec.start + rec.count]))
            order = np.argsort(np.asarray(scores), kind="stable")[:n_sel]
            for oi in order:
                ri = cases[int(oi)]
                rec = train.records[ri]
                sl = slice(rec.start, rec.start + rec.count)
                old, new = target[sl].clone(), preds[j][ri]
                given = train.labels[sl]
                target[sl] = new
                self.last_corrected[k, ri] = epoch + 1
                records.append({"case": rec.case_id, "epoch": epoch + 1, "network": j + 1, "label_set": k + 1,
                                "dice_new_vs_replaced": round(float(scores[int(oi)]), 6),
                                "dice_replaced_vs_given": round(_dice(old, given), 6),
                                "dice_new_vs_given": round(_dice(new, given), 6)})
        return records

    def recalibrate_bn(self) -> None:
        """``precise_bn``: BatchNorm statistics recomputed over the labelled training slices
        (:func:`.common.recalibrate_bn`), so that the global correction does not copy an
        evaluation-mode prediction made with lagging statistics (down to empty masks)."""
        train = self.ctx.data.train
        recalibrate_bn(self.nets, train.images, train.indices(("clean", "noisy")), self.ctx.device)

    def end_epoch(self, info: StepInfo) -> EpochReport:
        c = self.config
        for s in self.scheds:
            if s is not None:
                s.step()
        if c.precise_bn:
            self.recalibrate_bn()
        metrics = {"r": consistency_ramp(info.epoch, c.warmup)}
        events = []
        cw = c.warmup if c.correct_warmup < 0 else c.correct_warmup
        if c.global_correction and correction_due(info.epoch, cw, c.correct_every, c.correct_start):
            recs = self.correct_labels(info.epoch)
            self.history.extend(recs)
            self._final = None
            events = [{"type": "correction", **r} for r in recs]
            metrics["corrections"] = len(recs)
        if self.noisy_cases:
            train = self.ctx.data.train
            sl = torch.cat([torch.arange(train.records[i].start, train.records[i].start + train.records[i].count)
                            for i in self.noisy_cases])
            for k, ls in enumerate(self.label_sets):
                metrics[f"labels{k + 1}_vs_given"] = round(_dice(ls[sl], train.labels[sl]), 6)
        return EpochReport(metrics=metrics, events=events)

    # --- inference -----------------------------------------------------------------
    def _predict_nets(self) -> list[torch.nn.Module]:
        w = self.config.predict_with
        if w == "net1" or len(self.nets) == 1:
            return self.nets[:1]
        if w == "net2":
            return self.nets[1:2]
        return self.nets

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        nets = self._predict_nets()
        acc = None
        for n in nets:
            n.eval()
            with self.ctx.autocast():
                p = torch.softmax(n(images).float(), 1)
            acc = p if acc is None else acc + p
        return acc / len(nets)

    # --- outputs ---------------------------------------------------------------------
    def final_label_set(self, ri: int) -> int | None:
        """Index of the label set holding the latest correction of record ``ri`` (None: never corrected)."""
        lc = self.last_corrected[:, ri]
        if int(lc.max()) == 0:
            return None
        return int(torch.argmax(lc))  # ties: the first set (corrected by network 2, or the only one)

    def corrected_labels(self) -> dict[str, np.ndarray]:
        """Final corrected label of every noisy case on its original grid ``(Z, Y, X)`` uint8
        (the given label itself when the case was never corrected)."""
        if self._final is not None:
            return self._final
        train = self.ctx.data.train
        axis = self.ctx.data.config.axis
        out = {}
        for ri in self.noisy_cases:
            rec = train.records[ri]
            k = self.final_label_set(ri)
            if k is None:
                out[rec.case_id] = (rec.label_zyx > 0).astype(np.uint8)
                continue
            lab = self.label_sets[k][rec.start:rec.start + rec.count].float()
            up = resize_probabilities(lab, rec.inplane)[:, 0].numpy() > 0.5
            out[rec.case_id] = from_slices(up.astype(np.uint8), axis)
        self._final = out
        return out

    @torch.no_grad()
    def confidence_map(self, slices: SliceSet, rec: CaseRecord, g: torch.Generator, batch_size: int = 32) -> np.ndarray:
        """The confidence weight w of the final networks' K-view pseudo label (averaged over
        the networks used for prediction), on the case's original grid."""
        parts = []
        old_g = self.g
        self.g = g
        try:
            for s in range(rec.start, rec.start + rec.count, batch_size):
                e = min(s + batch_size, rec.start + rec.count)
                x = slices.images[s:e].to(self.ctx.device)
                nets = self._predict_nets()
                avg = sum(self.local_pseudo_labels(n, x)[0] for n in nets) / len(nets)
                parts.append(resize_probabilities(confidence_weight(avg), rec.inplane)[:, 0].cpu().numpy())
        finally:
            self.g = old_g
        return from_slices(np.concatenate(parts), self.ctx.data.config.axis).astype(np.float32)

    def _case_stats(self, predictions: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
        from ..quality.metrics import dice

        train = self.ctx.data.train
        final = self.corrected_labels()
        counts: dict[str, int] = {}
        for h in self.history:
            counts[h["case"]] = counts.get(h["case"], 0) + 1
        out = {}
        for ri in self.noisy_cases:
            rec = train.records[ri]
            given = rec.label_zyx > 0
            d = dice(final[rec.case_id], given)
            k = self.final_label_set(ri)
            st = {"aide_corrections": counts.get(rec.case_id, 0), "aide_dice_change": round(1.0 - d, 6),
                  "aide_final_set": "" if k is None else k + 1}
            if predictions is not None and rec.case_id in predictions:
                a = dice(predictions[rec.case_id] > 0.5, given)
                st["aide_agreement"] = round(a, 6)
                st["score"] = round(0.5 * (d + a), 6)
            out[rec.case_id] = st
        return out

    def quality(self, predictions: dict[str, np.ndarray], job) -> QualityResult:
        """Noisy cases: ``score`` = ½·Dice(given label, final corrected label) + ½·Dice(given
        label, final prediction), i.e. how much of the given label survives what AIDE ends
        with: low when the networks replaced it by something very different and still
        disagree with it, so the labels the networks rejected most are reviewed first (the
        prediction term orders the cases that were never corrected, which would all tie at
        1 otherwise). Columns: ``aide_corrections`` (times overwritten, both networks),
        ``aide_dice_change`` = 1 − Dice(given, corrected), ``aide_agreement`` = Dice(given,
        prediction), ``aide_final_set``. ``flag``: the lowest ``correct_fraction`` of the
        noisy cases. Other cases keep the engine's default score and flagging.
        Maps: ``aide_confidence``, the confidence weight w of the final networks' K-view
        pseudo label, for labelled training cases and test cases."""
        from ..engine.outputs import default_quality

        records = {rec.case_id: (split, rec) for split, _, rec in self.ctx.data.all_records()}
        base = default_quality(records, predictions)
        stats = self._case_stats(predictions)
        # flag the share of noisy cases the networks rejected most (the same share the
        # global correction rewrites each time); other cases: the engine's flagging
        noisy_scores = sorted((st.get("score", 1.0), cid) for cid, st in stats.items())
        n_flag = int(math.ceil(self.config.correct_fraction * len(noisy_scores)))
        flagged = {cid for _, cid in noisy_scores[:n_flag]}
        rows = []
        for row in base.rows:
            st = stats.get(row.case)
            if st is not None:
                st = dict(st)
                score = st.pop("score", row.score)
                rows.append(CaseQuality(row.case, score, {**row.columns, "score_source": "aide", **st},
                                        flag=row.case in flagged))
            else:
                rows.append(CaseQuality(row.case, row.score, {**row.columns, "aide_corrections": "", "aide_dice_change": ""}))
        maps: dict[str, dict[str, np.ndarray]] = {}
        g = self.ctx.generator(77)
        for split, s, rec in self.ctx.data.all_records():
            if rec.kind in ("clean", "noisy") or split == "test":
                maps[rec.case_id] = {"aide_confidence": self.confidence_map(s, rec, g)}
        return QualityResult(rows, maps)

    def write_outputs(self, job, predictions: dict[str, np.ndarray]) -> list[Path]:
        from ..io.atomic import write_text
        from ..io.segmentation import Segment, write_seg_nrrd

        train = self.ctx.data.train
        final = self.corrected_labels()
        stats = self._case_stats()
        paths = []
        for ri in self.noisy_cases:
            rec = train.records[ri]
            st = stats[rec.case_id]
            tags = {"AESeg.method": "aide", "AESeg.aide_corrections": str(st["aide_corrections"]),
                    "AESeg.aide_dice_change": f"{st['aide_dice_change']:.4f}"}
            segs = [Segment("Corrected", final[rec.case_id] > 0, tags=tags),
                    Segment("Given label", rec.label_zyx > 0, tags={"AESeg.label_kind": rec.kind})]
            path = job.correction(rec.case_id)
            write_seg_nrrd(path, segs, rec.geometry)
            paths.append(path)
        cols = ["case", "epoch", "network", "label_set", "dice_new_vs_replaced", "dice_replaced_vs_given", "dice_new_vs_given"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for h in self.history:
            w.writerow(h)
        p = job.root / "corrections.csv"
        write_text(p, buf.getvalue())
        paths.append(p)
        return paths

    def report_figures(self, job, ranked: list[dict]) -> list:
        """``report/corrections.png``: every global correction of the noisy cases, in review
        order (:func:`aeseg.report.plot_corrections`), beside each case's final change."""
        from ..report import CaseCorrections, ReportFigure, plot_corrections
        from ..report.corrections import CORRECTIONS_PNG

        noisy = {self.ctx.data.train.records[ri].case_id for ri in self.noisy_cases}
        if not noisy:
            return []
        stats = self._case_stats()
        cases = [CaseCorrections(r["case"], bool(r.get("flag")), stats[r["case"]]["aide_dice_change"])
                 for r in ranked if r["case"] in noisy]
        plot_corrections(self.history, cases, job.report_dir / CORRECTIONS_PNG)
        return [ReportFigure("Label corrections", CORRECTIONS_PNG,
                             "each global correction of the noisy labels by epoch and network, in review order")]

    def train_mode(self, training: bool) -> None:
        for n in self.nets:
            n.train(training)


__all__ = ["Aide", "AideConfig", "consistency_ramp", "correction_due", "sharpen", "confidence_weight", "largest_component"]
