"""Glow: steps of actnorm, an invertible 1x1 channel mixing in LU form and an affine coupling, over the
(dequantised) crystal fields.

Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS,
arXiv:1807.03039. Each step (section 3, table 1), in the data direction:

1. actnorm: a per-channel scale and bias with data-dependent initialisation (the first training batch leaves
   it with zero mean and unit variance per channel);
2. an invertible 1x1 convolution in LU-decomposed form, ``W = P L (U + diag(sign * exp(log_s)))``, with
   ``log|det W| = sum log_s`` per position. On a crystal a "position" is an atom slot and its "channels" are
   the slot's ``K+1`` type channels and 3 coordinates: one matrix mixes them, shared over the slots (as a 1x1
   convolution is shared over pixels), which keeps the flow equivariant to permutations of the slots; a second
   matrix mixes the 6 lattice channels;
3. an affine coupling ``y_b = (x_b + t) * sigmoid(log s + 2)`` with ``(log s, t)`` from the shared backbone
   applied to the kept half. The halves are the even and odd channels of every field, the same in every step:
   the learned mixing replaces a fixed permutation, as in the paper.

The representation, the standard normal base and the loss are those of
:class:`~bench.models.flow.base.CrystalFlow`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.models.backbone import CrystalTransformer
from bench.models.base import OptimizerFactory
from bench.models.flow.base import CrystalFlow
from bench.models.flow.transforms import (
    ActNorm,
    FieldTransform,
    FlowSequence,
    GlowAffineCoupling,
    SlotChannelMixing,
)
from torch import nn

__all__ = ["CrystalGlow", "glow_step"]


def glow_step(conditioner: CrystalTransformer, num_types: int, actnorm_eps: float = 1e-6) -> FlowSequence:
    """One step of flow: actnorm, LU channel mixing, affine coupling (parity 0).

    Args:
        conditioner: a :class:`~bench.models.backbone.CrystalTransformer` built with ``out_scale=2``.
        num_types: K + 1.
        actnorm_eps: added to the standard deviation at actnorm's initialisation.
    """
    mixing = SlotChannelMixing(num_types)
    return FlowSequence([ActNorm(num_types, eps=actnorm_eps), mixing, GlowAffineCoupling(conditioner, 0)])


class CrystalGlow(CrystalFlow):
    """Glow over the dequantised crystal fields, trained by exact negative log-likelihood per dimension.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (one conditioner per step).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        n_steps: number of steps of flow (the paper's ``K`` per level; a single level here).
        continuous_noise: standard deviation of the Gaussian noise added to filled-slot coordinates (in
            fractions) and to the standardised lattice during training.
    """

    family = "flow"
    paper = (
        "Kingma, Dhariwal (2018). Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS. "
        "arXiv:1807.03039"
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        n_steps: int = 6,
        continuous_noise: float = 0.01,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms, continuous_noise)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self._save_plain_hparams()
        self.flow_steps = nn.ModuleList(
            glow_step(
                backbone(
                    num_types=num_types, max_atoms=max_atoms, out_scale=2, raw_frac=True, zero_init=True
                ),
                num_types,
            )
            for _ in range(n_steps)
        )

    def transforms(self) -> Sequence[FieldTransform]:
        """The steps of flow (data direction)."""
        return list(self.flow_steps)
