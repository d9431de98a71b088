"""The mask VAE and its latent discriminator D_VAE (seed 000, Sec. II-B-2, eq. 3).

The VAE is MONAI's ``VarAutoEncoder`` (2D, one channel, sigmoid output, latent 32 as
in the paper's Table II). It is pretrained on the auxiliary masks with an L2
reconstruction loss plus the KL divergence to N(0, I) (:func:`vae_loss`), then frozen;
its encoder mean ``μ(S)`` is the compact shape code ``z`` that D_VAE judges.
The reparameterisation noise is drawn by the caller from a seeded generator
(:meth:`MaskVAE.sample`) rather than from the global RNG, so that runs resume exactly.
"""

from __future__ import annotations

import torch
from monai.networks.nets import VarAutoEncoder
from torch import nn


class MaskVAE(nn.Module):
    """VAE of ``(B, 1, size, size)`` masks in [0, 1]; ``size`` must be divisible by 16."""

    def __init__(self, size: int, latent: int = 32, features: int = 16):
        super().__init__()
        f = int(features)
        self.vae = VarAutoEncoder(spatial_dims=2, in_shape=(1, int(size), int(size)), out_channels=1,
                                  latent_size=int(latent), channels=(f, 2 * f, 4 * f, 4 * f), strides=(2, 2, 2, 2),
                                  use_sigmoid=True)
        self.latent = int(latent)

    def encode(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` of ``mask``; ``μ`` is the shape code D_VAE sees."""
        return self.vae.encode_forward(mask)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_forward(z, use_sigmoid=True)

    def sample(self, mask: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction with the reparameterisation trick, noise from ``g``: ``(x̂, μ, log σ²)``."""
        mu, logvar = self.encode(mask)
        eps = torch.randn(mu.shape, generator=g).to(mu.device, mu.dtype)
        return self.decode(mu + eps * torch.exp(0.5 * logvar)), mu, logvar

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encode(mask)[0]


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VAE's pretraining loss: L2 reconstruction summed over pixels + ``kl_weight`` ×
    KL(N(μ, σ²) ‖ N(0, I)), both averaged over the batch → ``(loss, l2, kl)``."""
    b = target.shape[0]
    l2 = (recon - target).pow(2).sum() / b
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
    return l2 + kl_weight * kl, l2, kl


class LatentDiscriminator(nn.Module):
    """D_VAE: three linear layers with LeakyReLU between them, latent code → one score."""

    def __init__(self, latent: int = 32, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
