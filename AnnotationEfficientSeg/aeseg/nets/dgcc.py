"""Discriminator-guided Generator Channel Calibration (DGCC; seed 000, Sec. II-B-3).

At turn 1 the generator G_A runs without feedback. From D_B's feature map
``h_t = D_B(S'_t)`` right before its output layer (eq. 5), global average pooling and a
squeeze-and-excitation block of two 1×1 convolutions (reduction r = 4) give one
coefficient vector per calibrated decoder scale (eq. 6)::

    β^s_t = W2^s · ReLU(W1^s · P(h_t))

and the decoder features at turn t + 1 become ``û^s = β^s_t·u^s + u^s`` (eq. 7); the
output at turn T is the pseudo label (eq. 8). The paper writes W2 ∈ R^{C×C/r} but
β^s must have the channel count of G_A at scale s: W2^s maps C/r → C_s. Eq. 6 has no
output non-linearity, so β may be negative; W2 starts at zero so that calibration starts
as the identity (training then learns it). Written here because it is specific to the
paper (MONAI's ``SEBlock`` recalibrates a tensor's own channels, not another
network's).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

SCALE_SETS = {"all": (0, 1, 2, 3), "low": (0,), "high": (3,)}
"""Which decoder scales are calibrated: all four (the paper), the bottleneck only
(DGCC(l) of Table III) or the last, full-resolution one (DGCC(h))."""


class DGCC(nn.Module):
    """Four (or fewer) SE branches from D_B's features to G_A's decoder scales."""

    def __init__(self, d_channels: int, scale_channels: Sequence[int], reduction: int = 4, scales: str = "all"):
        super().__init__()
        if scales not in SCALE_SETS:
            raise ValueError(f"scales must be one of {', '.join(SCALE_SETS)}, not {scales!r}")
        self.scales = SCALE_SETS[scales]
        self.n_scales = len(scale_channels)
        hidden = max(1, int(d_channels) // int(reduction))
        self.branches = nn.ModuleDict()
        for s in self.scales:
            w1 = nn.Conv2d(d_channels, hidden, 1)
            w2 = nn.Conv2d(hidden, int(scale_channels[s]), 1)
            nn.init.zeros_(w2.weight)
            nn.init.zeros_(w2.bias)
            self.branches[str(s)] = nn.Sequential(w1, nn.ReLU(inplace=True), w2)

    def forward(self, h: torch.Tensor, gain: float = 1.0) -> list[torch.Tensor | None]:
        """Eq. (6) for every scale: ``(B, C_s, 1, 1)`` coefficients (``None`` where not
        calibrated), multiplied by ``gain`` (0 turns the calibration off)."""
        pooled = h.mean(dim=(2, 3), keepdim=True)
        out: list[torch.Tensor | None] = [None] * self.n_scales
        for s in self.scales:
            out[s] = gain * self.branches[str(s)](pooled)
        return out


def generate_with_feedback(generator: Callable[..., torch.Tensor], d_features: Callable[[torch.Tensor], torch.Tensor],
                           dgcc: DGCC | None, image: torch.Tensor, turns: int, to_mask: Callable[[torch.Tensor], torch.Tensor],
                           gain: float = 1.0) -> list[torch.Tensor]:
    """The recurrent loop of Fig. 2: G_A's output logits at every turn ``t = 1..T``.

    ``to_mask`` maps G_A's logits to D_B's input domain; ``d_features`` returns D_B's
    feature map before its output layer. With ``dgcc=None`` or ``turns=1`` this is one
    plain pass of G_A.
    """
    out = [generator(image)]
    if dgcc is None:
        return out
    for _ in range(1, int(turns)):
        betas = dgcc(d_features(to_mask(out[-1])), gain)
        out.append(generator(image, betas))
    return out
