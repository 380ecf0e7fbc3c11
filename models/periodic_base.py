"""What the periodic models share: the number of atoms drawn from the training set, and their field layout.

DiffCSP (Jiao et al. 2023) and FlowMM (Miller et al. 2024) generate a crystal in two parts: the number of
atoms is drawn from the training set's distribution, then the network refines the types, coordinates and
lattice of exactly that many atoms. This base holds the first part and the mapping between the codec's batch
(``K + 1`` classes, class 0 the empty slot) and the fields these models work on:

- ``atom_types``: ``2 onehot - 1`` over the K elements (a continuous one-hot; empty slots zero);
- ``frac_coords``: the atoms' fractional coordinates (empty slots zero);
- ``lattice``: the codec's standardised lattice parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.base import FIELDS, GenerativeModule, OptimizerFactory
from bench.models.embeddings import timestep_embedding
from torch import Tensor, nn

__all__ = ["ATOM_FIELDS", "AtomCounts", "PeriodicCrystalModule"]

ATOM_FIELDS = ("atom_types", "frac_coords")
# A type score far outside the range of a continuous one-hot: pads and atoms decode to the right class.
_PAD_SCORE = 1.0e4


class AtomCounts:
    """The training set's distribution of atoms per crystal, for models that draw the atom count first.

    A mixin for a :class:`~bench.models.base.GenerativeModule` (it reads ``max_atoms`` and ``device``): call
    :meth:`register_atom_counts` in ``__init__``; :meth:`fit_data` fills the counts (``bench.train`` calls it
    with the training batch), :meth:`draw_mask` samples atom masks from them.
    """

    atom_counts: Tensor
    max_atoms: int

    def register_atom_counts(self) -> None:
        """The ``atom_counts`` buffer: how many training crystals have n atoms, n = 0..N (set by
        :meth:`fit_data`; saved in checkpoints)."""
        self.register_buffer("atom_counts", torch.zeros(self.max_atoms + 1))  # type: ignore[attr-defined]

    def fit_data(self, data: Mapping[str, Tensor]) -> None:
        """Count the training crystals per number of atoms; sampling draws the atom count from it."""
        n_atoms = data["mask"].sum(dim=1).round().long().cpu()
        counts = torch.bincount(n_atoms, minlength=self.max_atoms + 1).to(self.atom_counts)
        self.atom_counts.copy_(counts[: self.max_atoms + 1])

    def atom_mask(self, n_atoms: Tensor) -> Tensor:
        """``[B, N]`` float mask whose row ``b`` holds ``n_atoms[b]`` atoms in its first slots."""
        device = self.device  # type: ignore[attr-defined]
        slots = torch.arange(self.max_atoms, device=device)
        return (slots.unsqueeze(0) < n_atoms.to(device).unsqueeze(1)).to(torch.float32)

    def draw_mask(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``[n, N]`` float mask of ``n`` crystals whose atom counts are drawn from the training
        distribution."""
        if float(self.atom_counts.sum()) <= 0:
            raise RuntimeError(
                "the atom-count distribution is empty: call fit_data(training batch) before training "
                "(bench.train does), or load a checkpoint of a trained run"
            )
        probs = self.atom_counts / self.atom_counts.sum()
        if generator is not None:
            probs = probs.to(generator.device)
        return self.atom_mask(torch.multinomial(probs, n, replacement=True, generator=generator))


class PeriodicCrystalModule(AtomCounts, GenerativeModule):
    """A generative module over a drawn number of atoms (see the module docstring), with a time-conditioned
    network: a sinusoidal time embedding through a small MLP, and the backbone called with ``type_dim = K``
    and ``cond_dim = time_dim``.

    Args:
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        backbone: partial of the network (e.g. :class:`~bench.models.backbones.periodic.PeriodicMPNN`).
        time_dim: width of the time embedding.
        weights: loss weight per field.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        backbone: Callable[..., nn.Module],
        time_dim: int,
        weights: Mapping[str, float],
    ) -> None:
        super().__init__(optimizer, num_types, max_atoms)
        self.register_atom_counts()
        self.time_dim = int(time_dim)
        self.weights = {key: float(weights[key]) for key in FIELDS}
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, self.time_dim), nn.SiLU(), nn.Linear(self.time_dim, self.time_dim)
        )
        self.net = backbone(type_dim=num_types - 1, cond_dim=self.time_dim)

    @staticmethod
    def require_fields(per_field: Mapping[str, Any], what: str) -> dict[str, Any]:
        """``per_field`` as a dict, refusing one that lacks a field (``what`` names it in the message)."""
        missing = set(FIELDS) - set(per_field)
        if missing:
            raise ValueError(f"{what} must name one for every field; missing {sorted(missing)}")
        return dict(per_field)

    def network(self, x_t: Mapping[str, Tensor], time: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The backbone's per-field output for noisy fields ``x_t`` (empty slots zeroed) at ``time`` ``[B]``
        (the value the sinusoidal embedding reads: a diffusion step or a scaled flow time)."""
        cond = self.time_mlp(timestep_embedding(time, self.time_dim))
        return self.net(self.mask_atoms(x_t, mask), mask, cond=cond)

    def draw_prior(
        self, priors: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], mask: Tensor,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """A draw from each field's ``priors[field].prior`` (in sorted field order, so a generator gives the
        same draws every time), empty slots zeroed."""
        draws = {key: priors[key].prior(shapes[key], generator, self.device) for key in sorted(shapes)}
        return self.mask_atoms(draws, mask)

    def weighted_total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """``sum_f weight_f * terms[f"{f}_mse"]``."""
        return sum(self.weights[k] * terms[f"{k}_mse"] for k in FIELDS)

    @staticmethod
    def data_fields(batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """The fields of a codec batch and its ``[B, N]`` atom mask."""
        mask = batch["mask"]
        fields = {
            "atom_types": (2.0 * batch["atom_types"][..., 1:] - 1.0) * mask.unsqueeze(-1),
            "frac_coords": batch["frac_coords"] * mask.unsqueeze(-1),
            "lattice": batch["lattice"],
        }
        return fields, mask

    def field_shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the fields of ``n`` crystals."""
        return {
            "atom_types": (n, self.max_atoms, self.num_types - 1),
            "frac_coords": (n, self.max_atoms, 3),
            "lattice": (n, 6),
        }

    @staticmethod
    def mask_atoms(fields: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Zero the per-atom fields in empty slots."""
        return {k: v * mask.unsqueeze(-1) if k in ATOM_FIELDS else v for k, v in fields.items()}

    @staticmethod
    def to_batch(fields: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Fields back to the codec's raw layout: ``K + 1`` type scores where empty slots score class 0."""
        pad = torch.where(mask > 0, -_PAD_SCORE, _PAD_SCORE).unsqueeze(-1)
        return {
            "atom_types": torch.cat([pad, fields["atom_types"]], dim=-1),
            "frac_coords": fields["frac_coords"] * mask.unsqueeze(-1),
            "lattice": fields["lattice"],
        }

    @staticmethod
    def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
        """Mean squared error over the atoms of each crystal (``mask`` ``[B, N]``), or over all entries."""
        if mask is None:
            return (pred - target).pow(2).mean()
        sq = (pred - target).pow(2) * mask.unsqueeze(-1)
        return sq.sum() / (mask.sum().clamp_min(1.0) * pred.shape[-1])
