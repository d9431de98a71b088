"""CycleGAN networks of ``shape_prior_gan`` (seed 000, Sec. II-B and III-A).

- :class:`ResUNetGenerator`: the paper's generator, "a variant of U-Net where we added
  six residual blocks to the bottleneck" (Fig. 2). Its decoder exposes four feature
  maps ``u^s`` (the bottleneck output and the three up-sampling stages, coarse to fine)
  that DGCC calibrates as ``û^s = β^s·u^s + u^s`` (eq. 7). Used as the pseudo-label
  generator G_A (image → mask logits) and, without calibration and with a ``tanh``
  output, as the image generator G_B (mask → image, :func:`image_generator`).
- :class:`PatchGAN`: the 70×70 PatchGAN of pix2pix / CycleGAN (C64-C128-C256-C512, then
  a 1-channel output convolution), built on MONAI's ``PatchDiscriminator``; it also
  returns the feature map right before its output layer (``h_t`` in eq. 5).

Written here because MONAI has no U-Net whose decoder takes per-scale channel
coefficients; the blocks are MONAI's (``Convolution``, ``ResidualUnit``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.nets import PatchDiscriminator
from torch import nn

_ACT = ("leakyrelu", {"negative_slope": 0.2})


def _conv(cin: int, cout: int, stride: int = 1) -> Convolution:
    return Convolution(2, cin, cout, strides=stride, kernel_size=3, act=_ACT, norm="INSTANCE")


def _up(cin: int, cout: int) -> nn.Sequential:
    """×2 nearest-neighbour up-sampling then a 3×3 convolution (no checkerboard artefacts,
    unlike a stride-2 transposed convolution)."""
    return nn.Sequential(UpSample(2, scale_factor=2, mode="nontrainable", interp_mode="nearest", align_corners=None),
                         _conv(cin, cout))


def calibrate(u: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """Eq. (7): ``û = β·u + u`` with ``β`` of shape ``(B, C, 1, 1)`` (``None``: no calibration)."""
    return u if beta is None else u + beta * u


class ResUNetGenerator(nn.Module):
    """U-Net generator with residual blocks in the bottleneck and calibratable decoder.

    Encoder: ``features·(1, 2, 4, 8)`` channels at full, 1/2, 1/4 and 1/8 resolution
    (the input size must be divisible by 8). Bottleneck: ``res_blocks`` MONAI residual
    units at ``8·features`` channels. Decoder scales ``s = 0..3``: the bottleneck output
    (``8f`` channels, 1/8 resolution), then after each up-sampling and skip fusion
    ``4f`` (1/4), ``2f`` (1/2), ``f`` (full): :attr:`scale_channels`. The paper's
    sizes are ``features = 128`` (β lengths 1024, 512, 256, 128); small CPU runs use less.
    """

    def __init__(self, in_channels: int, out_channels: int, features: int = 32, res_blocks: int = 6,
                 out_activation: str | None = None):
        super().__init__()
        f = int(features)
        self.enc = nn.ModuleList([
            nn.Sequential(_conv(in_channels, f), _conv(f, f)),
            nn.Sequential(_conv(f, 2 * f, 2), _conv(2 * f, 2 * f)),
            nn.Sequential(_conv(2 * f, 4 * f, 2), _conv(4 * f, 4 * f)),
            _conv(4 * f, 8 * f, 2),
        ])
        self.bottleneck = nn.Sequential(*[ResidualUnit(2, 8 * f, 8 * f, subunits=2, act=_ACT, norm="INSTANCE")
                                          for _ in range(int(res_blocks))])
        self.up = nn.ModuleList([_up(8 * f, 4 * f), _up(4 * f, 2 * f), _up(2 * f, f)])
        self.fuse = nn.ModuleList([_conv(8 * f, 4 * f), _conv(4 * f, 2 * f), _conv(2 * f, f)])
        self.head = Convolution(2, f, out_channels, kernel_size=1, conv_only=True)
        self.out_activation = out_activation
        self.scale_channels: tuple[int, ...] = (8 * f, 4 * f, 2 * f, f)

    def forward(self, x: torch.Tensor, betas: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``betas``: one ``(B, C_s, 1, 1)`` tensor (or ``None``) per decoder scale, coarse to fine."""
        betas = list(betas) if betas is not None else [None] * 4
        skips = []
        h = x
        for i, block in enumerate(self.enc):
            h = block(h)
            if i < 3:
                skips.append(h)
        u = calibrate(self.bottleneck(h), betas[0])
        for s in range(3):
            u = self.fuse[s](torch.cat([self.up[s](u), skips[2 - s]], dim=1))
            u = calibrate(u, betas[s + 1])
        out = self.head(u)
        if self.out_activation == "tanh":
            out = torch.tanh(out)
        return out


def image_generator(mask_channels: int, image_channels: int, features: int = 32, res_blocks: int = 6) -> ResUNetGenerator:
    """G_B: auxiliary / pseudo mask (in [-1, 1]) → image in [-1, 1] (``tanh`` output)."""
    return ResUNetGenerator(mask_channels, image_channels, features, res_blocks, out_activation="tanh")


class PatchGAN(nn.Module):
    """70×70 PatchGAN (MONAI ``PatchDiscriminator``, instance norm, LeakyReLU 0.2).

    ``forward`` returns the ``(B, 1, h, w)`` patch scores; :meth:`features_and_scores`
    also returns the ``(B, C, h', w')`` feature map right before the output layer, with
    ``C =`` :attr:`feature_channels` ``= features · 2^layers`` (512 in the paper).
    """

    def __init__(self, in_channels: int, features: int = 64, layers: int = 3, minibatch_std: bool = False):
        super().__init__()
        self.net = PatchDiscriminator(spatial_dims=2, channels=int(features), in_channels=in_channels, out_channels=1,
                                      num_layers_d=int(layers), norm="INSTANCE")
        self.feature_channels = int(features) * 2 ** int(layers)
        self.minibatch_std = bool(minibatch_std)
        if self.minibatch_std:
            old = self.net.final_conv.conv
            self.net.final_conv.conv = nn.Conv2d(old.in_channels + 1, 1, old.kernel_size, padding=old.padding)

    def features_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.minibatch_std:
            outs = self.net(x)
            return outs[-2], outs[-1]
        h = x
        for name, mod in self.net.named_children():
            if name == "final_conv":
                break
            h = mod(h)
        # minibatch standard deviation (Karras et al. 2018, Sec. 3): the mean over features and
        # positions of the per-feature std across the batch, as one more constant channel
        sd = torch.sqrt(h.float().var(0, unbiased=False) + 1e-8).mean() if h.shape[0] > 1 else h.new_zeros(())
        return h, self.net.final_conv(torch.cat([h, sd.to(h.dtype).expand(h.shape[0], 1, *h.shape[2:])], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_scores(x)[1]


class HistoryPool:
    """History of generated samples shown to a discriminator (Shrivastava et al. 2017,
    Sec. 2.3; CycleGAN, Zhu et al. 2017, Sec. 4 with 50 images): each new fake enters
    the pool; with probability 1/2 the discriminator sees a stored older fake instead
    (which the new one replaces), so it does not chase the generator's latest mode.

    Written here because neither PyTorch nor MONAI ships one. Draws come from the caller's
    ``torch.Generator`` and the pool's content is in :meth:`state`, so a resumed job
    draws exactly what an uninterrupted one would.
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"history pool size must be >= 0, not {size}")
        self.size = int(size)
        self.items: list[torch.Tensor] = []  # detached samples, one per entry, on the CPU

    def query(self, fakes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return a batch like ``fakes`` (detached): each sample is the new fake or, once
        the pool is full and a coin flip says so, a stored one swapped with it."""
        fakes = fakes.detach()
        if self.size == 0:
            return fakes
        out = []
        for f in fakes:
            cpu = f.to("cpu", copy=True)
            if len(self.items) < self.size:
                self.items.append(cpu)
                out.append(f)
                continue
            coin, slot = torch.rand(1, generator=generator), torch.randint(self.size, (1,), generator=generator)
            if float(coin) < 0.5:
                old = self.items[int(slot)]
                self.items[int(slot)] = cpu
                out.append(old.to(f.device, f.dtype))
            else:
                out.append(f)
        return torch.stack(out)

    def state(self) -> torch.Tensor | None:
        return torch.stack(self.items) if self.items else None

    def load(self, state: torch.Tensor | None) -> None:
        self.items = [] if state is None else [t.clone() for t in state]
