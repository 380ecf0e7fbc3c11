"""Conditional GAN: the GAN base with the condition ``y`` fed to both networks.

Mirza & Osindero (2014), "Conditional Generative Adversarial Nets", arXiv:1411.1784. The two-player game of
Goodfellow et al. (2014, arXiv:1406.2661) with the generator and the discriminator both conditioned on ``y``
(equation 2): ``min_G max_D E[log D(x | y)] + E[log(1 - D(G(z | y) | y))]``, the generator trained with the
non-saturating loss ``-log D(G(z | y) | y)``. Here ``y`` is the representation's standardised ``condition``
field (e.g. Perov-5's heat of formation); see :class:`~bench.models.gan.base.CrystalGAN` for how it joins
each network (the base's condition hook), and ``models/cards/cgan.md``.
"""

from __future__ import annotations

from bench.models.gan.base import CrystalGAN

__all__ = ["CrystalCGAN"]


class CrystalCGAN(CrystalGAN):
    """The conditional GAN: :class:`~bench.models.gan.base.CrystalGAN` that takes a condition.

    Built with ``condition_dim = C > 0`` (the train stage passes the representation's condition width), both
    networks read ``y``: the generator's conditioning vector is ``[z, h_G(y)]`` and the critic adds a
    projection of ``h_D(y)`` to every token, where ``h_G`` and ``h_D`` are hidden layers of their own (a
    linear map and a ReLU, as the paper's networks map ``y`` before joining it). Critic and generator steps
    use the training batch's conditions; :meth:`sample` takes standardised ``[n, C]`` conditions, or draws
    them from the training set's (kept by :meth:`fit_data`, saved in checkpoints) when given None.

    Built with ``condition_dim = 0`` it is exactly the unconditional GAN of the same settings (same networks,
    same random draws) and refuses a condition at sampling.

    Args: as :class:`~bench.models.gan.base.CrystalGAN`.
    """

    conditional = True
    paper = (
        "Mirza, Osindero (2014). Conditional Generative Adversarial Nets. arXiv:1411.1784"
    )
