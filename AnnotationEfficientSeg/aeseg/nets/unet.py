"""The default segmentation network: MONAI ``UNet`` in 2D, sized by a config."""

from __future__ import annotations

from dataclasses import dataclass, field

from monai.networks.layers import Norm
from monai.networks.nets import UNet
from torch import nn


@dataclass
class NetConfig:
    """Size of the segmentation U-Net (MONAI ``UNet``): ``features·2^i`` channels at level ``i``."""

    features: int = field(default=16, metadata={"help": "channels at the first U-Net level", "min": 4, "max": 128})
    depth: int = field(default=4, metadata={"help": "U-Net levels", "min": 2, "max": 6})
    res_units: int = field(default=1, metadata={"help": "residual units per U-Net block", "min": 0, "max": 3})


def make_unet(in_channels: int, out_channels: int = 2, cfg: NetConfig | None = None, norm=Norm.BATCH,
              dropout: float = 0.0) -> nn.Module:
    cfg = cfg or NetConfig()
    channels = tuple(cfg.features * 2**i for i in range(cfg.depth))
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=channels,
                strides=(2,) * (cfg.depth - 1), num_res_units=cfg.res_units, norm=norm, dropout=dropout)
