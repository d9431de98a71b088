"""Multi-scale patch discriminators with spectral norm, and the hinge GAN losses.

The per-scale network is Table I's discriminator of Vorontsov et al. (seed 002):
C(F) 4×4 stride 1, then ``depth`` NRC blocks 4×4 stride 2 with F, 2F, 4F… channels,
then a 1×1 conv to one channel — built from MONAI ``Convolution`` blocks (conv →
norm → LeakyReLU(0.2); the norm + activation of one block are the "NR" of the next
"NRC"). Layer normalisation, reflection padding, Kaiming-normal initialisation and
spectral norm on every convolution (Sec. IV-B). As in pix2pixHD / UNIT, the multi-scale
discriminator applies one such network to the image at full, 1/2 and 1/4 resolution
(3×3 average pooling, stride 2) and returns one output map per scale; the losses
average over scales. MONAI's ``MultiScalePatchDiscriminator`` deepens the network per
scale instead of pooling the input, which is not the paper's design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .pa_codec import apply_spectral_norm

_ACT = ("leakyrelu", {"negative_slope": 0.2})
_LAYER_NORM = ("group", {"num_groups": 1})


def _conv_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def max_depth(size: int, scales: int = 3, wanted: int = 4) -> int:
    """The number of stride-2 blocks (≤ ``wanted``, ≥ 1) whose output is still ≥ 1 px at
    the coarsest scale of a ``size``-pixel image."""
    n = size
    for _ in range(scales - 1):
        n = _conv_size(n, 3, 2, 1)
    n = _conv_size(n, 4, 1, 1)
    depth = 0
    while depth < wanted:
        m = _conv_size(n, 4, 2, 1)
        if m < 1 or n < 2:
            break
        n, depth = m, depth + 1
    return max(depth, 1)


class PatchDiscriminator(nn.Sequential):
    """Table I's discriminator: C(F) s1 → ``depth`` × NRC 4×4 s2 (F, 2F, …) → C 1×1 → one map."""

    def __init__(self, in_channels: int, features: int = 64, depth: int = 4, norm=_LAYER_NORM):
        super().__init__()
        chans = [features] + [features * 2**i for i in range(depth)]
        cin = in_channels
        for i, cout in enumerate(chans):
            last = i == len(chans) - 1
            block = Convolution(2, cin, cout, strides=1 if i == 0 else 2, kernel_size=4, padding=1,
                                act=None if last else _ACT, norm=None if last else norm, conv_only=last,
                                adn_ordering="NA")
            self.add_module(f"conv{i}", block)
            cin = cout
        self.add_module("out", Convolution(2, cin, 1, kernel_size=1, conv_only=True))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.kernel_size[0] > 1:
                    m.padding_mode = "reflect"  # MONAI's Convolution has zero padding only
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` patch discriminators on the image downsampled ×2 between scales."""

    def __init__(self, in_channels: int, features: int = 64, depth: int = 4, scales: int = 3, spectral: bool = True):
        super().__init__()
        self.nets = nn.ModuleList([PatchDiscriminator(in_channels, features, depth) for _ in range(scales)])
        if spectral:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out


def d_hinge_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator side of Eq. (11): −E[min(0, D(x) − 1)] − E[min(0, −D(x̂) − 1)]
    = E[relu(1 − D(x))] + E[relu(1 + D(x̂))], averaged over the scales."""
    terms = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(terms).mean()


def g_hinge_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Generator side of Eq. (11): −E[D(x̂)], averaged over the scales."""
    return -torch.stack([f.mean() for f in fake]).mean()
