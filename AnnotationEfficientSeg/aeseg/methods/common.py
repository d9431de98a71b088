"""Pieces several methods share: the supervised segmentation loss, batch augmentation,
the consistency ramp-up, EMA teachers."""

from __future__ import annotations

import math

import torch
from monai.losses import DiceCELoss
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from .augment import AffineParams, apply, sample_affine


def seg_loss() -> DiceCELoss:
    """Soft Dice + cross-entropy on softmax outputs against integer labels (MONAI)."""
    return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5)


@torch.no_grad()
def recalibrate_bn(nets: list[torch.nn.Module], images: torch.Tensor, indices: torch.Tensor, device: torch.device,
                   max_slices: int = 512, batch_size: int = 64) -> None:
    """Recompute the BatchNorm running statistics of ``nets`` as exact averages over the
    slices ``indices`` of ``images`` (up to ``max_slices`` evenly spaced ones, gathered
    batch by batch; torch's ``update_bn``). With a few
    optimiser steps per epoch the running averages lag the weights, and evaluation-mode
    predictions swing from epoch to epoch; recomputed statistics make them those of the
    current weights. Training-mode passes do not read running statistics, so training is
    unchanged."""
    n = len(indices)
    if n == 0:
        return
    idx = indices[torch.linspace(0, n - 1, min(n, max_slices)).round().long()]
    batches = [images[idx[i:i + batch_size]].to(device) for i in range(0, len(idx), batch_size)]
    for net in nets:
        update_bn(batches, getattr(net, "module", net))  # gives the network its mode back


def random_flips(image: torch.Tensor, label: torch.Tensor | None, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip each sample left-right and/or up-down with probability 0.5 (one batched op per axis)."""
    b = image.shape[0]
    for dim in (-1, -2):
        m = (torch.rand(b, generator=g) < 0.5).to(image.device)
        if m.any():
            image = torch.where(m[:, None, None, None], image.flip(dim), image)
            if label is not None:
                label = torch.where(m[:, None, None, None], label.flip(dim), label)
    return image, label


def random_zoom_crop(image: torch.Tensor, factor: float, g: torch.Generator, mode: str = "bilinear") -> torch.Tensor:
    """Resize-then-random-crop, as one batched resampling (:mod:`.augment`): each sample is
    magnified by ``factor`` and a window of its original size is taken at a uniformly random
    place inside the magnified image (the shape-prior GAN paper resizes to 288 × 288 and
    crops 256 × 256: ``factor`` 1.125). ``mode="nearest"`` keeps binary masks binary.
    ``factor`` 1 returns the input and draws no random numbers."""
    if factor <= 1.0:
        return image
    b = image.shape[0]
    shift = (2.0 * torch.rand(2, b, generator=g) - 1.0) * (1.0 - 1.0 / factor)
    no = torch.zeros(b, dtype=torch.bool)
    p = AffineParams(torch.zeros(b), torch.full((b,), float(factor)), no, no, shift.T.contiguous())
    return apply(image, p.to(image.device), mode=mode, padding_mode="border")


def random_rotations(image: torch.Tensor, labels: list[torch.Tensor], degrees: float,
                     g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rotate each sample about the image centre by U(±``degrees``)° (one batched
    ``grid_sample``, :mod:`.augment`): the image bilinearly, filled with −1 (the darkest value
    of the [−1, 1] intensity range) where it leaves the field of view, the integer label
    maps by nearest neighbour (background outside). ``degrees`` 0 returns the inputs and
    draws no random numbers."""
    if degrees <= 0:
        return image, labels
    p = sample_affine(image.shape[0], degrees, generator=g, device=image.device)
    return apply(image, p, fill=-1.0), [apply(y, p, mode="nearest") for y in labels]


def sigmoid_rampup(current: float, length: float) -> float:
    """Laine & Aila's ramp-up exp(-5 (1 - t)^2), t = current / length clipped to [0, 1]."""
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def ema_model(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential-moving-average copy of ``model`` (torch's AveragedModel), buffers included."""
    return AveragedModel(getattr(model, "module", model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
