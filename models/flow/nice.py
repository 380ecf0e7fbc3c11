"""NICE: additive coupling layers and a final diagonal scaling over the (dequantised) crystal fields.

Dinh, Krueger & Bengio (2015), "NICE: Non-linear Independent Components Estimation", ICLR workshop,
arXiv:1410.8516. In the data direction the flow is ``n_couplings`` additive couplings (section 3.2,
``y_b = x_b + m(x_a)``: volume preserving, log-det 0) whose partitions alternate (odd and even channels, as
the paper partitions its inputs), then the diagonal scaling layer of section 3.3 (``y_i = S_ii x_i``), which
carries the whole log-determinant ``sum_i log S_ii``. The coupling function ``m`` is the suite's shared
backbone (no slot embeddings, zero-initialised head, so each coupling starts as the identity). The
representation, the standard normal base and the loss are those of
:class:`~bench.models.flow.base.CrystalFlow`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.models.backbone import CrystalTransformer
from bench.models.base import OptimizerFactory
from bench.models.flow.base import CrystalFlow
from bench.models.flow.transforms import AdditiveCoupling, DiagonalScale, FieldTransform
from torch import nn

__all__ = ["CrystalNICE"]


class CrystalNICE(CrystalFlow):
    """NICE over the dequantised crystal fields, trained by exact negative log-likelihood per dimension.

    Args:
        backbone: partial of :class:`~bench.models.backbone.CrystalTransformer` (one coupling function per
            coupling layer).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        n_couplings: number of additive coupling layers (the paper uses 4; alternating parity).
        continuous_noise: standard deviation of the Gaussian noise added to filled-slot coordinates (in
            fractions) and to the standardised lattice during training.
    """

    family = "flow"
    paper = (
        "Dinh, Krueger, Bengio (2015). NICE: Non-linear Independent Components Estimation. "
        "ICLR workshop. arXiv:1410.8516"
    )

    def __init__(
        self,
        backbone: Callable[..., CrystalTransformer],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        n_couplings: int = 4,
        continuous_noise: float = 0.01,
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms, continuous_noise)
        if n_couplings < 1:
            raise ValueError(f"n_couplings must be >= 1, got {n_couplings}")
        self._save_plain_hparams()
        self.couplings = nn.ModuleList(
            AdditiveCoupling(
                backbone(
                    num_types=num_types, max_atoms=max_atoms, out_scale=1, raw_frac=True, zero_init=True
                ),
                parity=i % 2,
            )
            for i in range(n_couplings)
        )
        self.scaling = DiagonalScale(num_types)

    def transforms(self) -> Sequence[FieldTransform]:
        """The additive couplings, then the diagonal scaling (data direction)."""
        return [*self.couplings, self.scaling]
