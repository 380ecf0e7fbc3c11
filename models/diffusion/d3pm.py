"""D3PM on the periodic diffusion model: atom types diffused as categories, the rest as in DiffCSP.

Austin, Johnson, Ho, Tarlow, van den Berg (2021), "Structured Denoising Diffusion Models in Discrete
State-Spaces", NeurIPS, arXiv:2107.03006. The atom types are a discrete Markov chain over the K elements
(:class:`~bench.models.diffusion.processes.Categorical`: an absorbing [MASK] state, or uniform transitions),
learnt by the paper's hybrid loss ``L_vb + lambda L_CE`` on the network's logits of ``x0`` (section 3.3's
x0-parameterisation); fractional coordinates (wrapped normal, variance exploding) and the lattice (variance
preserving) are diffused exactly as in :class:`~bench.models.diffusion.diffcsp.CrystalDiffCSP`, whose network,
sampler and atom-count draw this model keeps. Only the type field differs: its states, what the network reads
of them, its loss and how the final states decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import OptimizerFactory
from bench.models.diffusion.diffcsp import CrystalDiffCSP, PredictorCorrectorSampler
from bench.models.diffusion.processes import Categorical
from bench.models.periodic_base import PeriodicCrystalModule
from torch import Tensor

__all__ = ["CrystalD3PM"]


class CrystalD3PM(CrystalDiffCSP):
    """DiffCSP's joint diffusion with the atom types diffused by a D3PM categorical chain.

    Types are one-hot states over the K elements (plus [MASK] for the absorbing chain); empty slots are zero
    rows, which the process carries through untouched, the network masks and the loss leaves out (the
    number of atoms is drawn from the training set first, as in DiffCSP, so no "empty" class is diffused).
    The network reads the K element channels of the state ([MASK] reads as the zero vector) and its type head
    emits logits of ``p(x0 | x_t)``. The type loss is ``L_vb + ce_weight L_CE`` per atom, averaged over the
    crystal's atoms and weighted by ``type_weight``; the coordinate and lattice losses are DiffCSP's.

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN`.
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        processes: ``{"frac_coords": ..., "lattice": ...}`` (an ``atom_types`` entry must be absent or None:
            the types' process is ``type_process``).
        type_process: the :class:`~bench.models.diffusion.processes.Categorical` chain of the atom types
            (same ``timesteps`` as the other processes).
        sampler: a :class:`~bench.models.diffusion.diffcsp.PredictorCorrectorSampler`.
        time_dim: width of the time embedding.
        type_weight: weight of the type loss.
        frac_weight: weight of the coordinate loss.
        lattice_weight: weight of the lattice loss.
    """

    paper = (
        "Austin, Johnson, Ho, Tarlow, van den Berg (2021). "
        "Structured Denoising Diffusion Models in Discrete State-Spaces. NeurIPS. arXiv:2107.03006"
    )

    def __init__(
        self,
        backbone: Callable[..., PeriodicMPNN],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        processes: Mapping[str, Any],
        type_process: Categorical,
        sampler: PredictorCorrectorSampler | None = None,
        time_dim: int = 64,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
    ) -> None:
        if not isinstance(type_process, Categorical):
            raise TypeError(
                f"type_process must be a Categorical process (D3PM), got {type(type_process).__name__}"
            )
        if processes.get("atom_types") is not None:
            raise ValueError(
                "d3pm diffuses the atom types with type_process: leave processes.atom_types unset (null)"
            )
        super().__init__(
            backbone, optimizer, num_types, max_atoms, {**processes, "atom_types": type_process}, sampler,
            time_dim, type_weight, frac_weight, lattice_weight,
        )
        # Built objects stay out of the checkpoint's hyperparameters (weights_only loading).
        self._save_plain_hparams(ignore=["processes", "type_process"])

    @property
    def type_process(self) -> Categorical:
        """The categorical chain of the atom types."""
        return self.processes["atom_types"]

    def data_fields(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """DiffCSP's fields, with the atom types as one-hot states (empty slots: zero rows)."""
        fields, mask = PeriodicCrystalModule.data_fields(batch)
        fields["atom_types"] = self.type_process.states(batch["atom_types"][..., 1:] * mask.unsqueeze(-1))
        return fields, mask

    def field_shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        """DiffCSP's shapes, with one channel per state of the type chain."""
        shapes = super().field_shapes(n)
        shapes["atom_types"] = (n, self.max_atoms, self.type_process.num_states(self.num_types - 1))
        return shapes

    def predict(self, x_t: Mapping[str, Tensor], t: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The network's outputs (type logits of ``p(x0 | x_t)``, DiffCSP's other targets) at steps ``t``."""
        inputs = dict(x_t)
        inputs["atom_types"] = self.type_process.network_input(x_t["atom_types"])
        return self.network(inputs, t, mask)

    def field_loss(
        self, key: str, pred: Tensor, x0: Tensor, x_t: Tensor, noise: Tensor, t: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The hybrid D3PM loss for the types (and its two terms, logged), DiffCSP's for the other fields."""
        if key != "atom_types":
            return super().field_loss(key, pred, x0, x_t, noise, t, mask)
        terms = self.type_process.loss(pred, x0, x_t, t)
        atoms = mask.sum().clamp_min(1.0)

        def mean(value: Tensor) -> Tensor:
            return (value * mask).sum() / atoms

        return mean(terms["loss"]), {"atom_types_vb": mean(terms["vb"]), "atom_types_ce": mean(terms["ce"])}

    def to_batch(self, fields: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Final states back to the codec's layout (the K element channels score the types)."""
        fields = dict(fields)
        fields["atom_types"] = self.type_process.decode(fields["atom_types"])
        return PeriodicCrystalModule.to_batch(fields, mask)
