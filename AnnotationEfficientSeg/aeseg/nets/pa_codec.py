"""The presence/absence codec (Vorontsov et al., seed 002, Sec. III-B/C/D, Table I).

One encoder ``f`` splits an image into a *common* code ``c`` and a *unique* code ``u``
(Eq. 1); a *common* decoder ``g_com(c)`` gives the absence image (Eq. 2); a *residual*
decoder ``g_res(c, u)`` gives the additive change that puts the target back (Eq. 3).
The residual decoder also segments (Eq. 4): the same convolutions, its own set of
normalisation parameters, and a 1×1 classifier in place of its last layer
(``seg_decoder="separate"`` gives the segmenter a decoder of its own instead).

Why hand-written: MONAI has no decoder whose normalisation layers switch between two
parameter sets while the convolutions are shared, no encoder with a common/unique
code split, and no compressed long skips; the blocks below are the paper's
norm → ReLU → conv ("NRC") units with PyTorch layers, normalisation layers come from
MONAI's factory, spectral norm from ``torch.nn.utils.parametrizations``.

Architecture (Table I, scaled by ``features`` and ``depth``): the encoder is a 3×3
conv with ``features`` channels, then ``depth - 1`` stride-2 NRC blocks with short
(residual) skips doubling the channels, then norm + ReLU; the bottleneck has
``features·2^(depth-1)`` channels (paper: 16 and 6 → 512), the last
``unique_fraction`` of them (paper: 128/512) form ``u``. Each decoder mirrors the
encoder with ``depth - 1`` nearest-neighbour ×2 upsampling blocks (the first a plain
conv "C", the rest NRC; short skips in the common decoder only; kernel 3 in the
common decoder, 5 in the residual decoder) and ends with norm → ReLU → conv to the
image channels and ``tanh``. Long skips from the encoder enter each decoder after the
block of the same resolution — every level but the bottleneck, as in the reference
code; ``skip_full_res=False`` also leaves out the full-resolution level, as the paper's
text has it ("except for the first and the last layers") — as ``skips``:

- ``compressed`` (the paper's, Sec. III-C): 1×1 conv to one channel, instance norm,
  concatenated;
- ``full``: the feature stack concatenated; ``sum``: added; ``none``: no long skips.

Convolutions use reflection padding and Kaiming-normal initialisation (Sec. IV-B).
With ``spectral=True`` every convolution is spectrally normalised except the
segmentation classifier (the reference code removes it there too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import FullyConnectedNet
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

NormKind = Literal["instance", "layer", "batch"]
SkipKind = Literal["compressed", "full", "sum", "none"]

_NORMS = {
    "instance": ("instance", {"affine": True}),
    "layer": ("group", {"num_groups": 1}),  # GroupNorm(1, C): per-sample over (C, H, W), per-channel affine
    "batch": ("batch", {}),
}


def make_norm(kind: str, channels: int) -> nn.Module:
    """Instance, layer or batch normalisation of ``channels`` 2D feature maps (MONAI factory)."""
    if kind not in _NORMS:
        raise ValueError(f"unknown normalisation '{kind}'; use instance, layer or batch")
    return get_norm_layer(_NORMS[kind], spatial_dims=2, channels=channels)


def _small_init(c: nn.Conv2d) -> None:
    """Near-zero logits at the start (p ≈ 0.5 everywhere), for soft Dice alone, whose
    gradient vanishes where a Kaiming-initialised classifier starts saturated. The price:
    with Adam the weights grow by about the learning rate per step, so the logits stay
    almost flat for hundreds of steps (measured: foreground probability never above 0.5
    in 120 steps of segmentation alone, against 30 steps with Kaiming weights)."""
    nn.init.normal_(c.weight, std=1e-3)
    nn.init.zeros_(c.bias)


def conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 2D convolution with reflection padding and Kaiming-normal weights (Sec. IV-B)."""
    c = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode="reflect" if kernel > 1 else "zeros",
                  bias=bias)
    nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
    if bias:
        nn.init.zeros_(c.bias)
    return c


class SwitchNorm(nn.Module):
    """One normalisation layer per decoder task; ``mode`` picks the parameter set
    (0: translation, 1: segmentation; Sec. III-D, "a different normalization is applied
    to each layer depending on whether the output is a translation residual or a
    segmentation").

    ``adain=True`` makes the segmentation mode an adaptive instance norm, as in the
    reference code: instance normalisation without parameters of its own, then a
    per-sample scale and shift ``style = (γ, β)`` that the decoder predicts from the
    input's code (:class:`Decoder`). The scale is ``1 + γ`` so that ``style = 0`` is a
    plain instance norm (the reference code uses ``γ`` directly; same function class)."""

    def __init__(self, kind: str, channels: int, modes: int = 1, adain: bool = False):
        super().__init__()
        norms = [make_norm(kind, channels) for _ in range(modes)]
        if adain and modes > 1:
            norms[1] = get_norm_layer(("instance", {"affine": False}), spatial_dims=2, channels=channels)
        self.norms = nn.ModuleList(norms)
        self.adain = adain and modes > 1
        self.channels = channels

    def forward(self, x: torch.Tensor, mode: int = 0, style: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norms[mode](x)
        if mode == 1 and self.adain:
            if style is None:
                raise ValueError("an adaptive segmentation norm needs its style parameters")
            gamma, beta = style[:, :self.channels, None, None], style[:, self.channels:, None, None]
            h = h * (1 + gamma) + beta
        return h


class NRC(nn.Module):
    """norm → ReLU → conv, optionally stride-2 (``down``) or after ×2 nearest upsampling
    (``up``, to an explicit size); ``short_skip`` adds a residual path (identity or a
    1×1 conv when the shape changes). ``pre=False`` drops norm and ReLU (Table I's "C")."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: str, modes: int = 1, down: bool = False,
                 up: bool = False, short_skip: bool = False, pre: bool = True, adain: bool = False):
        super().__init__()
        self.up = up
        self.norm = SwitchNorm(norm, cin, modes, adain) if pre else None
        self.conv = conv(cin, cout, kernel, stride=2 if down else 1)
        self.shortcut: nn.Module | None = None
        if short_skip:
            self.shortcut = nn.Identity() if (cin == cout and not down) else conv(cin, cout, 1, stride=2 if down else 1)

    def forward(self, x: torch.Tensor, mode: int = 0, size: tuple[int, int] | None = None,
                style: torch.Tensor | None = None) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, size=size, mode="nearest")
        h = x
        if self.norm is not None:
            h = F.relu(self.norm(h, mode, style))
        out = self.conv(h)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


@dataclass
class Code:
    """An encoding: common and unique codes, the encoder's long-skip features (level 0
    = full resolution … ``depth - 2``) and the spatial size of every level."""

    common: torch.Tensor
    unique: torch.Tensor
    skips: list[torch.Tensor]
    sizes: list[tuple[int, int]]

    @property
    def full(self) -> torch.Tensor:
        return torch.cat([self.common, self.unique], dim=1)

    def __len__(self) -> int:
        return int(self.common.shape[0])

    def select(self, idx) -> "Code":
        """The codes of the batch entries ``idx`` (a slice or an index tensor)."""
        return Code(self.common[idx], self.unique[idx], [s[idx] for s in self.skips], self.sizes)

    @staticmethod
    def cat(codes: list["Code"]) -> "Code":
        return Code(torch.cat([c.common for c in codes]), torch.cat([c.unique for c in codes]),
                    [torch.cat(s) for s in zip(*[c.skips for c in codes])], codes[0].sizes)


class Encoder(nn.Module):
    """``f`` of Eq. (1): C → (depth − 1) × stride-2 NRC* → norm → ReLU; returns a :class:`Code`."""

    def __init__(self, in_channels: int, features: int, depth: int, unique: int, norm: str = "instance",
                 short_skips: bool = True):
        super().__init__()
        ch = [features * 2**i for i in range(depth)]
        self.unique = unique
        self.first = conv(in_channels, ch[0], 3)
        self.blocks = nn.ModuleList([NRC(ch[i - 1], ch[i], 3, norm, down=True, short_skip=short_skips)
                                     for i in range(1, depth)])
        self.out_norm = make_norm(norm, ch[-1])
        self.channels = ch

    def forward(self, x: torch.Tensor) -> Code:
        skips, sizes = [], []
        h = self.first(x)
        for block in self.blocks:
            skips.append(h)  # the feature stack before each resolution change
            sizes.append((int(h.shape[-2]), int(h.shape[-1])))
            h = block(h)
        h = F.relu(self.out_norm(h))
        c, u = torch.split(h, [h.shape[1] - self.unique, self.unique], dim=1)
        return Code(c, u, skips, sizes)


class Decoder(nn.Module):
    """A decoder of Table I: (depth − 1) upsampling blocks with long skips, then
    norm → ReLU → conv to ``out_channels`` (``tanh`` applied by the caller).

    ``modes=2`` gives every normalisation layer a second parameter set for the
    segmentation mode, whose output layer is the 1×1 ``classifier`` (Eq. 4):
    ``g_seg = s ∘ ĝ_res``. ``seg_norm`` says what that set is: ``static`` — learnt
    per-channel scales and shifts of the decoder's norm kind (the paper's text);
    ``adain`` — adaptive instance norms whose scales and shifts an MLP predicts from the
    code ``z`` of each input (the reference code: 4 linear layers, 256 hidden units), so
    the segmentation can switch channels on or off per image from what the code holds.
    The code is average-pooled to ``code_grid`` × ``code_grid`` before the MLP (the
    bottleneck's own size when the codec is built for its image size: no pooling).
    """

    def __init__(self, in_channels: int, out_channels: int, features: int, depth: int, kernel: int = 3,
                 norm: str = "layer", skips: str = "compressed", short_skips: bool = False, modes: int = 1,
                 classes: int | None = None, out_kernel: int | None = None, skip_full_res: bool = True,
                 small_classifier: bool = False, seg_norm: str = "static", code_grid: int = 1):
        super().__init__()
        if skips not in ("compressed", "full", "sum", "none"):
            raise ValueError(f"unknown long skip type '{skips}'")
        if seg_norm not in ("static", "adain"):
            raise ValueError(f"unknown segmentation normalisation '{seg_norm}'; use static or adain")
        adain = seg_norm == "adain" and modes > 1
        self.skip_kind = skips
        ch = [features * 2**i for i in range(depth)]  # encoder channels per level
        self.levels = list(range(depth - 2, -1, -1))  # decoder block i ends at encoder level levels[i]
        self.skip_at = [skips != "none" and (lvl > 0 or skip_full_res) for lvl in self.levels]
        self.blocks = nn.ModuleList()
        self.compress = nn.ModuleDict()
        cin = in_channels
        for i, lvl in enumerate(self.levels):
            cout = ch[lvl]
            self.blocks.append(NRC(cin, cout, kernel, norm, modes, up=True, pre=i > 0, short_skip=short_skips and i > 0,
                                   adain=adain))
            cin = cout
            if not self.skip_at[i]:
                continue
            if skips == "compressed":
                # no bias: the instance norm right after it would subtract it again
                self.compress[str(lvl)] = nn.Sequential(conv(ch[lvl], 1, 1, bias=False), make_norm("instance", 1))
                cin = cout + 1
            elif skips == "full":
                cin = cout + ch[lvl]
        self.out_norm = SwitchNorm(norm, cin, modes, adain)
        self.out_conv = conv(cin, out_channels, out_kernel or kernel)
        self.code_grid = code_grid
        self.style: FullyConnectedNet | None = None
        if adain:  # the reference code's MLP: in → 256 → 256 → 256 → (γ, β) of every adaptive norm
            n_style = 2 * sum(m.channels for m in self.modules() if isinstance(m, SwitchNorm) and m.adain)
            self.style = FullyConnectedNet(in_channels * code_grid * code_grid, n_style, [256, 256, 256], act="RELU")
        self.classifier = conv(cin, classes, 1) if (modes > 1 and classes) else None
        if small_classifier and self.classifier is not None:
            _small_init(self.classifier)
        if small_classifier and out_kernel == 1:  # a separate segmenter: its output layer is the classifier
            _small_init(self.out_conv)
        self.modes = modes

    def styles(self, z: torch.Tensor) -> list[torch.Tensor | None]:
        """Per block, then the output norm: the (γ, β) of its adaptive norm predicted from
        ``z`` (``None`` where a block has no norm)."""
        flat = self.style(F.adaptive_avg_pool2d(z, self.code_grid))
        out, j = [], 0
        for m in [b.norm for b in self.blocks] + [self.out_norm]:
            if m is None:
                out.append(None)
                continue
            out.append(flat[:, j:j + 2 * m.channels])
            j += 2 * m.channels
        return out

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor], sizes: list[tuple[int, int]], mode: int = 0) -> torch.Tensor:
        styles = self.styles(z) if (mode == 1 and self.style is not None) else [None] * (len(self.blocks) + 1)
        h = z
        for i, (block, lvl) in enumerate(zip(self.blocks, self.levels)):
            h = block(h, mode, size=sizes[lvl], style=styles[i])
            if not self.skip_at[i]:
                continue
            if self.skip_kind == "compressed":
                h = torch.cat([h, self.compress[str(lvl)](skips[lvl])], dim=1)
            elif self.skip_kind == "full":
                h = torch.cat([h, skips[lvl]], dim=1)
            elif self.skip_kind == "sum":
                h = h + skips[lvl]
        h = F.relu(self.out_norm(h, mode, styles[-1]))
        if mode == 1:
            if self.classifier is None:
                raise ValueError("this decoder has no segmentation mode")
            return self.classifier(h)
        return self.out_conv(h)


@dataclass
class CodecConfig:
    in_channels: int = 1
    features: int = 16
    depth: int = 6
    unique_fraction: float = 0.25
    enc_norm: str = "instance"
    dec_norm: str = "layer"
    skips: str = "compressed"
    skip_full_res: bool = True
    short_skips: bool = True
    seg_decoder: Literal["shared", "separate"] = "shared"
    spectral: bool = True
    classes: int = 2
    small_classifier: bool = False  # near-zero classifier weights (see _small_init); else Kaiming (Sec. IV-B)
    seg_norm: Literal["static", "adain"] = "static"  # the segmentation mode's norms (see Decoder)
    image_size: int | None = None  # the side of the training images: sets the style MLP's input (adain)


def code_side(size: int | None, depth: int) -> int:
    """The bottleneck's side for ``size``-pixel images (``depth - 1`` stride-2 convolutions
    of kernel 3 and padding 1: ⌈h / 2⌉ each); 1 when the size is unknown."""
    if not size:
        return 1
    for _ in range(depth - 1):
        size = (size + 1) // 2
    return size


class PACodec(nn.Module):
    """Encoder + common decoder + residual decoder (+ a separate segmentation decoder).

    - :meth:`encode` — Eq. (1); :meth:`absence` — ``g_com(c)``, Eq. (2);
    - :meth:`residual` — ``g_res(c, u)``, Eq. (3), with the case's own ``u`` or a
      given one (``u ~ N(0, I)`` for A→P, Eq. 5);
    - :meth:`presence` — ``g_com(c) + g_res(c, u)``, Eqs. (3) and (5);
    - :meth:`segment` — logits ``(B, classes, H, W)``, Eq. (4).
    """

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        bottleneck = cfg.features * 2 ** (cfg.depth - 1)
        self.n_unique = max(1, min(bottleneck - 1, int(round(cfg.unique_fraction * bottleneck))))
        n_common = bottleneck - self.n_unique
        self.encoder = Encoder(cfg.in_channels, cfg.features, cfg.depth, self.n_unique, cfg.enc_norm, cfg.short_skips)
        kw = {"skips": cfg.skips, "skip_full_res": cfg.skip_full_res, "norm": cfg.dec_norm}
        self.common = Decoder(n_common, cfg.in_channels, cfg.features, cfg.depth, 3, short_skips=cfg.short_skips, **kw)
        shared = cfg.seg_decoder == "shared"
        self.residual_dec = Decoder(bottleneck, cfg.in_channels, cfg.features, cfg.depth, 5,
                                    modes=2 if shared else 1, classes=cfg.classes if shared else None,
                                    small_classifier=cfg.small_classifier, seg_norm=cfg.seg_norm,
                                    code_grid=code_side(cfg.image_size, cfg.depth), **kw)
        self.segmenter: Decoder | None = None
        if not shared:
            self.segmenter = Decoder(bottleneck, cfg.classes, cfg.features, cfg.depth, 5, out_kernel=1,
                                     small_classifier=cfg.small_classifier, **kw)
        if cfg.spectral:
            keep = {id(self.residual_dec.classifier)}
            if self.segmenter is not None:
                keep.add(id(self.segmenter.out_conv))
            apply_spectral_norm(self, exclude=keep)

    def encode(self, x: torch.Tensor) -> Code:
        return self.encoder(x)

    def absence(self, code: Code) -> torch.Tensor:
        """The absence-domain image ``tanh(g_com(c))`` (x_PA for a present image, x_AA for an absent one)."""
        return torch.tanh(self.common(code.common, code.skips, code.sizes))

    def residual(self, code: Code, unique: torch.Tensor | None = None) -> torch.Tensor:
        """The additive change ``tanh(g_res(c, u))``; ``unique`` replaces the encoded ``u``."""
        u = code.unique if unique is None else unique
        return torch.tanh(self.residual_dec(torch.cat([code.common, u], 1), code.skips, code.sizes, mode=0))

    def presence(self, code: Code, unique: torch.Tensor | None = None) -> torch.Tensor:
        """The presence-domain image ``g_com(c) + g_res(c, u)``: ``x_PP`` with the encoded
        ``u`` (Eq. 3), ``x_AP`` with ``u ~ N(0, I)`` for an absent image (Eq. 5)."""
        return self.absence(code) + self.residual(code, unique)

    def segment(self, code: Code) -> torch.Tensor:
        """Segmentation logits from the residual decoder in segmentation mode (or the separate decoder)."""
        if self.segmenter is not None:
            return self.segmenter(code.full, code.skips, code.sizes)
        return self.residual_dec(code.full, code.skips, code.sizes, mode=1)

    def sample_unique(self, code: Code, generator: torch.Generator | None = None) -> torch.Tensor:
        """``u ~ N(0, I)`` shaped like ``code.unique`` (drawn on the CPU generator, then moved)."""
        u = torch.randn(code.unique.shape, generator=generator)
        return u.to(device=code.unique.device, dtype=code.unique.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits of ``x`` (what inference needs)."""
        return self.segment(self.encode(x))


def apply_spectral_norm(module: nn.Module, exclude: set[int] = frozenset()) -> nn.Module:
    """Spectral normalisation (Miyato et al.) on every convolution and linear layer of
    ``module`` except those whose ``id`` is in ``exclude``."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in exclude:
            spectral_norm(m)
    return module


def min_size(depth: int) -> int:
    """The smallest image side the codec accepts at ``depth`` (the bottleneck must be ≥ 2 px
    for reflection padding)."""
    return 2 ** depth
