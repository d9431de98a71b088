"""Pieces several methods share: the supervised segmentation loss, batch augmentation,
the consistency ramp-up, EMA teachers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def boundary_dropout(image: torch.Tensor, mask: torch.Tensor, g: torch.Generator, p: float, band: int,
                     max_sectors: int = 3, sd_range: tuple[float, float] = (0.2, 0.6)) -> torch.Tensor:
    """Weak or missing boundary segments, as acoustic shadows leave them in ultrasound: with
    probability ``p`` per sample, 1 to ``max_sectors`` angular sectors about the centroid of
    ``mask`` (each Gaussian in angle, sd U(``sd_range``) radians, the strongest one counts)
    replace the image within ``band`` pixels of the mask's boundary (a morphological
    gradient, max-pooled) by the local mean of the pixels outside that band (normalised
    convolution with a Gaussian of sd ``band``, MONAI's ``GaussianFilter``) plus the fine
    detail of the image rolled by a random offset: the boundary's echo is removed there,
    its surroundings' brightness and texture kept. ``image`` (B, 1, H, W), ``mask``
    (B, 1, H, W) in {0, 1}; differentiable in ``image``. ``p`` 0 returns the input and draws
    no random numbers. Not in any method's paper; see ``shape_prior_gan``'s
    ``boundary_dropout``."""
    if p <= 0.0:
        return image
    from monai.networks.layers import GaussianFilter

    b, _, h, w = image.shape
    on = (torch.rand(b, generator=g) < p).to(image.device)
    n_sec = torch.randint(1, max_sectors + 1, (b,), generator=g)
    centre = (2.0 * torch.rand(b, max_sectors, generator=g) - 1.0) * math.pi
    sd = sd_range[0] + (sd_range[1] - sd_range[0]) * torch.rand(b, max_sectors, generator=g)
    active = (torch.arange(max_sectors)[None] < n_sec[:, None]).float()
    centre, sd, active = (t.to(image.device)[:, None, None, None, :] for t in (centre, sd, active))

    m = mask.to(image.dtype)
    k = 2 * band + 1
    ring = F.max_pool2d(m, k, 1, band) + F.max_pool2d(-m, k, 1, band)  # dilation − erosion
    ys = torch.arange(h, device=image.device, dtype=image.dtype)[:, None].expand(h, w)
    xs = torch.arange(w, device=image.device, dtype=image.dtype)[None, :].expand(h, w)
    area = m.sum((-2, -1), keepdim=True).clamp_min(1.0)
    cy = torch.where(m.sum((-2, -1), keepdim=True) > 0, (m * ys).sum((-2, -1), keepdim=True) / area, (h - 1) / 2.0)
    cx = torch.where(m.sum((-2, -1), keepdim=True) > 0, (m * xs).sum((-2, -1), keepdim=True) / area, (w - 1) / 2.0)
    phi = torch.atan2(ys - cy, xs - cx)[..., None]
    d = torch.remainder(phi - centre + math.pi, 2.0 * math.pi) - math.pi
    sector = (torch.exp(-0.5 * (d / sd) ** 2) * active).amax(-1)
    weight = sector * ring * on[:, None, None, None].to(image.dtype)

    smooth = GaussianFilter(2, float(band)).to(image.device)
    keep = 1.0 - ring
    mean = smooth(image * keep) / smooth(keep).clamp_min(1e-3)
    # texture: the fine detail (image − its Gaussian mean) of the image rolled by a random
    # offset, so that the filled band is speckled like its surroundings, not smooth
    dy, dx = (int(v) for v in torch.randint(h // 4, h - h // 4 + 1, (2,), generator=g))
    rolled = image.roll((dy, dx), (-2, -1))
    fill = mean + rolled - smooth(rolled)
    return image * (1.0 - weight) + fill * weight


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
