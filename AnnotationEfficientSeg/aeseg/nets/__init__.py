"""Networks. The segmentation network is MONAI's 2D ``UNet``; this package holds only
what MONAI lacks (GAN generators and discriminators, the VAE, DGCC, the P/A codec)."""

from .unet import NetConfig, make_unet  # noqa: F401
