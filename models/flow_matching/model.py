"""Flow matching over the crystal: the torus for fractional coordinates, Euclidean space for the lattice and
for continuous one-hot atom types, with a periodic message-passing network as the velocity field.

Lipman et al. (2023), "Flow Matching for Generative Modeling", ICLR, arXiv:2210.02747; on manifolds, Chen &
Lipman (2024), "Flow Matching on General Geometries", ICLR, arXiv:2302.03660; on crystals, Miller et al.
(2024), "FlowMM: Generating Materials with Riemannian Flow Matching", ICML, arXiv:2406.04713. The number of
atoms is drawn from the training set's distribution before the flow runs (FlowMM and DiffCSP do the same), so
the network only ever sees the atoms of a crystal; the empty-slot class of the codec is used for padding only.

Fields (data side ``x1``):

- ``frac_coords``: the atoms' fractional coordinates on the torus (``conf`` ``paths.frac_coords``: a
  :class:`~bench.models.flow_matching.paths.TorusPath`);
- ``lattice``: the codec's standardised ``(log a, log b, log c, alpha, beta, gamma)``;
- ``atom_types``: ``2 onehot - 1`` over the K elements (the empty class dropped), decoded by argmax: FlowMM's
  "continuous one-hot" option for de novo generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import FIELDS, OptimizerFactory
from bench.models.flow_matching.paths import FieldPath
from bench.models.flow_matching.samplers import EulerSampler, ODESampler
from bench.models.periodic_base import ATOM_FIELDS, PeriodicCrystalModule
from torch import Tensor

__all__ = ["CrystalFlowMatching"]


class CrystalFlowMatching(PeriodicCrystalModule):
    """Conditional flow matching with one probability path per field and an ODE sampler.

    The loss is the flow-matching regression ``|v_theta(x_t, t) - u_t|^2`` (the network predicts the velocity;
    ``prediction_type`` "velocity"), averaged within each field over the crystal's atoms and summed over
    fields with weights.

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN`; called with
            ``type_dim = K`` and ``cond_dim = time_dim``.
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        paths: ``{field: FieldPath}`` for ``atom_types``, ``frac_coords`` and ``lattice``.
        sampler: an ODE sampler (default: Euler, 50 steps).
        time_dim: width of the time embedding.
        type_weight: weight of the type-velocity loss.
        frac_weight: weight of the coordinate-velocity loss.
        lattice_weight: weight of the lattice-velocity loss.
        remove_drift: project the coordinate velocities, target and prediction alike, onto those with zero
            mean over the crystal's atoms (FlowMM's "no drift" flat torus): a global translation of every
            coordinate changes no crystal, so the network, which reads only coordinate differences, cannot
            predict that part of the target, and keeping it only adds irreducible loss.
    """

    family = "flow"
    paper = (
        "Miller, Chen, Sriram, Wood (2024). FlowMM: Generating Materials with Riemannian Flow Matching. "
        "ICML. arXiv:2406.04713; Lipman et al. (2023). Flow Matching for Generative Modeling. ICLR. "
        "arXiv:2210.02747"
    )

    def __init__(
        self,
        backbone: Callable[..., PeriodicMPNN],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        paths: Mapping[str, FieldPath],
        sampler: ODESampler | None = None,
        time_dim: int = 64,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
        remove_drift: bool = False,
    ) -> None:
        super().__init__(
            optimizer, num_types, max_atoms, backbone, time_dim,
            {"atom_types": type_weight, "frac_coords": frac_weight, "lattice": lattice_weight},
        )
        self._save_plain_hparams(ignore=["paths"])
        self.paths = self.require_fields(paths, "paths")
        self.sampler: ODESampler = sampler if sampler is not None else EulerSampler()
        self.remove_drift = bool(remove_drift)

    @staticmethod
    def drift_free(velocity: Tensor, mask: Tensor) -> Tensor:
        """``velocity`` ``[B, N, 3]`` minus its mean over each crystal's atoms (``mask`` ``[B, N]``); empty
        slots stay zero."""
        m = mask.unsqueeze(-1).to(velocity.dtype)
        mean = (velocity * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        return (velocity - mean) * m

    # ------------------------------------------------------------------ the velocity field
    def velocity(self, x_t: Mapping[str, Tensor], t: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """``v_theta(x_t, t)`` per field; ``t`` ``[B]`` in ``[0, 1]``."""
        v = self.network(x_t, 1000.0 * t, mask)
        if self.remove_drift:
            v = {**v, "frac_coords": self.drift_free(v["frac_coords"], mask)}
        return v

    # ------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weighted per-field velocity MSE at uniformly drawn times."""
        x1, mask = self.data_fields(batch)
        size = mask.shape[0]
        x0 = self.draw_prior(self.paths, {k: tuple(v.shape) for k, v in x1.items()}, mask, None)
        t = torch.rand(size, device=self.device)
        x_t, u_t = {}, {}
        for key in FIELDS:
            x_t[key], u_t[key] = self.paths[key].interpolate(x0[key], x1[key], t)
        if self.remove_drift:
            u_t["frac_coords"] = self.drift_free(u_t["frac_coords"], mask)
        v = self.velocity(x_t, t, mask)
        terms = {
            f"{k}_mse": self.masked_mse(v[k], u_t[k], mask if k in ATOM_FIELDS else None) for k in FIELDS
        }
        return {"loss": self.weighted_total(terms), **terms}

    # ------------------------------------------------------------------ sampling
    @property
    def nfe(self) -> int:
        """Network evaluations per sample (the sampler's)."""
        return int(self.sampler.nfe)

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        mask = self.draw_mask(n, generator)
        x0 = self.draw_prior(self.paths, self.field_shapes(n), mask, generator)
        x1 = self.sampler(lambda x, t: self.velocity(x, t, mask), self.paths, x0)
        return self.to_batch(x1, mask)
