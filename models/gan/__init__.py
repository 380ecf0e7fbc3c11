"""GAN family: the base (adversarial loss, penalty and weight constraint as hooks) and its variants."""

from __future__ import annotations

from bench.models.gan.base import ADVERSARIAL_LOSSES, CrystalGAN
from bench.models.gan.cgan import CrystalCGAN
from bench.models.gan.wgan_gp import CrystalWGANGP

__all__ = ["ADVERSARIAL_LOSSES", "CrystalCGAN", "CrystalGAN", "CrystalWGANGP"]
