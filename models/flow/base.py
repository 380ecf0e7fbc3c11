"""What every normalizing flow of the suite shares: the representation of a crystal as flow variables, the
standard normal base, the exact negative log-likelihood and sampling by inverting the flow.

Representation (data -> flow variable ``x``), applied in training; sampling inverts it:

- ``atom_types``: uniform dequantisation, ``x = onehot + u - 1/2`` with ``u ~ U[0, 1)^{K+1}`` (Theis, van den
  Oord & Bethge 2016, arXiv:1511.01844; Ho et al. 2019, "Flow++", arXiv:1902.00275). The hot channel lies in
  ``[1/2, 3/2)`` and every other one in ``[-1/2, 1/2)``, so the argmax recovers the type exactly, and the
  likelihood of the dequantised variable lower-bounds the discrete one.
- ``frac_coords``: ``x = f - 1/2`` treated as a plain real variable (the decoder wraps mod 1). Empty slots
  carry no coordinates, so their value is replaced by uniform noise (a "don't care" value the flow learns to
  spread).
- ``frac_coords`` of filled slots and ``lattice``: small Gaussian noise (``continuous_noise``) is added,
  because some datasets put all mass on a few exact values (cubic angles, special Wyckoff positions) where a
  density would be unbounded.

Test likelihood (:meth:`CrystalFlow.test_nll`): the exact negative log-density of the dequantised variable,
averaged over draws of the noise above, in nats per crystal. The model's distribution of the codec's fields
is ``P(d) = E_noise[p(x(d, noise))]`` (every noise kernel has unit volume or is a symmetric density: the
types' probability is the flow's mass on their unit cell, empty-slot coordinates are integrated out over
``[0, 1)^3``, filled-slot coordinates and the lattice are read through the same Gaussian smoothing), so by
Jensen's inequality ``E_noise[-log p(x)] >= -log P(d)``: an upper bound on the NLL of the codec's fields.

A variant lists its invertible transforms (:mod:`bench.models.flow.transforms`) in
:meth:`CrystalFlow.transforms`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from bench.models.base import GenerativeModule, Likelihood, OptimizerFactory
from bench.models.flow.transforms import Fields, FieldTransform, forward_through, inverse_through
from torch import Tensor

__all__ = ["CrystalFlow"]


def _sum_per_sample(value: Tensor) -> Tensor:
    return value.flatten(1).sum(dim=1)


class CrystalFlow(GenerativeModule):
    """A normalizing flow over the dequantised crystal fields, trained by exact NLL per dimension.

    Args:
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        continuous_noise: standard deviation of the Gaussian noise added to filled-slot coordinates (in
            fractions) and to the standardised lattice during training.
    """

    family = "flow"
    likelihood = Likelihood(
        "upper_bound",
        "dequantised",
        "exact NLL of the dequantised fields (types plus U[0,1) cell noise, empty-slot coordinates "
        "U[0,1)^3, filled-slot coordinates and standardised lattice plus N(0, continuous_noise^2)), averaged "
        "over draws: an upper bound on the NLL of the codec's fields under the flow's dequantised "
        "distribution",
    )

    def __init__(
        self, optimizer: OptimizerFactory, num_types: int, max_atoms: int, continuous_noise: float
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        self.continuous_noise = float(continuous_noise)
        self.dims = max_atoms * (num_types + 3) + 6

    def transforms(self) -> Sequence[FieldTransform]:
        """The flow's transforms in the data-to-base order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ representation
    def dequantise(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Fields:
        """Map a data batch to the continuous flow variables (random: drawn from ``generator``, else from the
        global torch RNG as in training)."""
        types = batch["atom_types"]
        frac_shape = batch["frac_coords"].shape
        if generator is None:
            u_types, jitter = torch.rand_like(types), torch.randn_like(batch["frac_coords"])
            u_frac = torch.rand_like(batch["frac_coords"])
            eps_lattice = torch.randn_like(batch["lattice"])
        else:
            u_types, jitter = self._rand(types.shape, generator), self._randn(frac_shape, generator)
            u_frac = self._rand(frac_shape, generator)
            eps_lattice = self._randn(batch["lattice"].shape, generator)
        filled = (1.0 - types[..., :1]).clamp(0.0, 1.0)
        x_types = types + u_types - 0.5
        frac = filled * (batch["frac_coords"] + self.continuous_noise * jitter) + (1.0 - filled) * u_frac
        lattice = batch["lattice"] + self.continuous_noise * eps_lattice
        return {"atom_types": x_types, "frac_coords": frac - 0.5, "lattice": lattice}

    @staticmethod
    def quantise(x: Mapping[str, Tensor]) -> Fields:
        """Flow variables back to batch fields (type scores for the argmax, coordinates before wrapping)."""
        return {"atom_types": x["atom_types"], "frac_coords": x["frac_coords"] + 0.5, "lattice": x["lattice"]}

    # ------------------------------------------------------------------ the flow
    def to_base(self, x: Mapping[str, Tensor]) -> tuple[Fields, Tensor]:
        """Data direction: ``z = f(x)`` and ``log|det df/dx|`` ``[B]``."""
        return forward_through(self.transforms(), x)

    def from_base(self, z: Mapping[str, Tensor]) -> Fields:
        """Sampling direction: ``x = f^{-1}(z)``."""
        return inverse_through(self.transforms(), z)

    def log_prob(self, x: Mapping[str, Tensor]) -> Tensor:
        """Exact log-density ``[B]`` of flow variables ``x`` (nats)."""
        z, logdet = self.to_base(x)
        base = sum(_sum_per_sample(-0.5 * v.pow(2)) for v in z.values()) - 0.5 * self.dims * math.log(
            2 * math.pi
        )
        return base + logdet

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Negative log-likelihood per dimension (nats) of the dequantised batch."""
        nll = -self.log_prob(self.dequantise(batch)).mean() / self.dims
        return {"loss": nll, "nll_per_dim": nll, "bits_per_dim": nll / math.log(2.0)}

    def fit_likelihood(
        self, data: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Nothing to fit: returns the dequantisation that defines the value, to be recorded with it."""
        return {
            "dequantisation": "uniform on the types' unit cells and on empty-slot coordinates; Gaussian on "
                              "filled-slot coordinates (fractions) and the standardised lattice",
            "dequantisation_noise": self.continuous_noise,
        }

    def test_nll(
        self, batch: Mapping[str, Tensor], draws: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[B]`` nats per crystal: ``-log p`` of the dequantised batch (the training loss times
        :attr:`dims`, per crystal), averaged over ``draws`` draws of the dequantisation noise from
        ``generator`` (see the module docstring for the bound it is)."""
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        total = torch.zeros(batch["lattice"].shape[0], dtype=torch.float64, device=batch["lattice"].device)
        for _ in range(draws):
            total += -self.log_prob(self.dequantise(batch, generator)).double()
        return total / draws

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        z = {
            "atom_types": self._randn((n, self.max_atoms, self.num_types), generator),
            "frac_coords": self._randn((n, self.max_atoms, 3), generator),
            "lattice": self._randn((n, 6), generator),
        }
        return self.quantise(self.from_base(z))
