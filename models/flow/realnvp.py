"""RealNVP affine coupling flow over the (dequantised) fields of the crystal batch.

Dinh, Sohl-Dickstein & Bengio (2017), "Density estimation using Real NVP", ICLR, arXiv:1605.08803. The flow
maps the flattened fields ``(atom_types, frac_coords, lattice)`` to a standard normal base with exact
log-likelihood.

The representation (dequantisation of the types, coordinates as plain reals, small noise on continuous
fields), the base and the loss are those of :class:`~bench.models.flow.base.CrystalFlow`.

Coupling layers alternate channel-parity masks inside every field; the conditioner of each coupling is the
shared backbone (no slot embeddings, so the flow is permutation-equivariant over slots and its density
exchangeable) with ``out_scale=2`` heads for log-scale and shift, and log-scales bounded by
``scale_bound * tanh(. / scale_bound)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.models.backbone import CrystalTransformer
from bench.models.base import OptimizerFactory
from bench.models.flow.base import CrystalFlow
from bench.models.flow.transforms import AffineCoupling, FieldAffine, FieldTransform
from torch import nn

__all__ = ["AffineCoupling", "CrystalRealNVP", "FieldAffine"]


class CrystalRealNVP(CrystalFlow):
    """RealNVP over the dequantised crystal fields, trained by exact negative log-likelihood per dimension.

    The flow (data direction) is a learned per-channel affine map of each field, then ``n_couplings`` affine
    couplings with alternating channel parity.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (called once per coupling).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        n_couplings: number of coupling layers (alternating parity; even numbers transform every channel
            equally often).
        scale_bound: bound of each coupling's log-scale.
        continuous_noise: standard deviation of the Gaussian noise added to filled-slot coordinates (in
            fractions) and to the standardised lattice during training.
    """

    family = "flow"
    paper = "Dinh, Sohl-Dickstein, Bengio (2017). Density estimation using Real NVP. ICLR. arXiv:1605.08803"

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        n_couplings: int = 4,
        scale_bound: float = 2.0,
        continuous_noise: float = 0.01,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms, continuous_noise)
        if n_couplings < 1:
            raise ValueError(f"n_couplings must be >= 1, got {n_couplings}")
        self._save_plain_hparams()
        self.affine = FieldAffine(num_types)
        self.couplings = nn.ModuleList(
            AffineCoupling(
                backbone(
                    num_types=num_types, max_atoms=max_atoms, out_scale=2, raw_frac=True, zero_init=True
                ),
                parity=i % 2,
                scale_bound=scale_bound,
            )
            for i in range(n_couplings)
        )

    def transforms(self) -> Sequence[FieldTransform]:
        """The input affine map, then the couplings (data direction)."""
        return [self.affine, *self.couplings]
