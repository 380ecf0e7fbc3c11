"""Wasserstein GAN with gradient penalty over the crystal batch: :class:`~bench.models.gan.base.CrystalGAN`
with the Wasserstein loss, ``lambda = 10`` and five critic updates per generator update.

Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville (2017), "Improved Training of Wasserstein GANs", NeurIPS,
arXiv:1704.00028 (building on Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN", arXiv:1701.07875).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.models.backbone import CrystalTransformer
from bench.models.base import OptimizerFactory
from bench.models.gan.base import CrystalGAN

__all__ = ["CrystalWGANGP"]


class CrystalWGANGP(CrystalGAN):
    """WGAN-GP: the Wasserstein critic loss plus ``gp_weight`` times the gradient penalty, no weight clipping.

    Args: as :class:`~bench.models.gan.base.CrystalGAN`, without ``loss`` and ``clip_value`` (fixed by the
    paper); ``condition_dim`` only for a subclass with ``conditional = True``.
    """

    paper = (
        "Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville (2017). Improved Training of Wasserstein GANs. "
        "NeurIPS. arXiv:1704.00028"
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        noise_dim: int = 32,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        site_noise: bool = True,
        hard_types: bool = True,
        condition_dim: int = 0,
        condition_embed_dim: int = 32,
    ) -> None:
        super().__init__(
            backbone, optimizer, num_types, max_atoms, noise_dim=noise_dim, n_critic=n_critic,
            loss="wasserstein", gp_weight=gp_weight, clip_value=None, site_noise=site_noise,
            hard_types=hard_types, condition_dim=condition_dim, condition_embed_dim=condition_embed_dim,
        )
