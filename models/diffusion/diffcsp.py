"""DiffCSP for de novo generation: joint diffusion of lattice, wrapped fractional coordinates and atom types.

Jiao, Huang, Lin, Han, Liu, Liu (2023), "Crystal Structure Prediction by Joint Equivariant Diffusion",
NeurIPS, arXiv:2309.04475; sections 4.1 (lattice: variance-preserving DDPM), 4.2 (coordinates: score matching
of the wrapped normal on the torus, variance-exploding), 4.3 (ab initio generation: atom types diffused as a
continuous one-hot with a DDPM) and algorithm 2 (predictor-corrector sampling). The number of atoms is drawn
from the training set, then one periodic message-passing network (after CSPNet) predicts every field's target
at once.

Each field's forward process is an object from :mod:`bench.models.diffusion.processes` chosen by config
(``model.module.processes``); the sampler is :class:`PredictorCorrectorSampler`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import FIELDS, OptimizerFactory
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.diffusion.samplers import AncestralSampler, NoiseSource, Predictor
from bench.models.periodic_base import ATOM_FIELDS, PeriodicCrystalModule
from torch import Tensor

__all__ = ["CrystalDiffCSP", "PredictorCorrectorSampler"]


class PredictorCorrectorSampler(AncestralSampler):
    """DiffCSP's algorithm 2: per step, a Langevin corrector at ``t`` for fields that have one, then the
    reverse (predictor) step ``t -> s`` of every field's process, each from a fresh network evaluation
    (NFE = 2 per step). It is the :class:`~bench.models.diffusion.samplers.AncestralSampler` with the
    corrector before each step.

    Args:
        steps: number of reverse steps, evenly spaced over ``1..T`` (``None``: every step, as the paper).
        step_lr: the corrector's step size at ``sigma_1`` (DiffCSP: ``step_lr``); 0 switches the corrector off
            (and halves NFE).
    """

    #: DiffCSP draws noise at every step, the final one included (for D3PM's categorical types it is the final
    #: draw of ``x_0``).
    final_noise = True

    def __init__(self, steps: int | None = None, step_lr: float = 1e-5) -> None:
        if step_lr < 0:
            raise ValueError(f"step_lr must be >= 0, got {step_lr}")
        super().__init__(steps)
        self.step_lr = float(step_lr)

    def nfe(self, timesteps: int) -> int:
        """Network evaluations per sample."""
        return len(self.schedule(timesteps)) * (2 if self.step_lr > 0 else 1)

    def correct(
        self, predictor: Predictor, processes: Mapping[str, Any], x: dict[str, Tensor], t: Tensor,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Each field's ``corrector_step`` at ``t`` from a fresh prediction and fresh noise."""
        if self.step_lr <= 0:
            return x
        pred, z = predictor(x, t), noise()
        return {k: processes[k].corrector_step(x[k], pred[k], t, z[k], self.step_lr) for k in x}


class CrystalDiffCSP(PeriodicCrystalModule):
    """DiffCSP's joint diffusion with one periodic network predicting every field's target.

    The loss is ``sum_f w_f |pred_f - target_f|^2`` with each process's target (epsilon for the lattice and
    the types, the normalised wrapped-normal score for coordinates), averaged over the crystal's atoms per
    field.

    Args:
        backbone: partial of :class:`~bench.models.backbones.periodic.PeriodicMPNN` (``type_dim = K``,
            ``cond_dim = time_dim``).
        optimizer: partial building the optimiser.
        num_types: K + 1 (from the fitted codec).
        max_atoms: N (from the fitted codec).
        processes: ``{field: process}`` with a common ``timesteps``.
        sampler: a :class:`PredictorCorrectorSampler`.
        time_dim: width of the time embedding.
        type_weight: weight of the type loss.
        frac_weight: weight of the coordinate loss.
        lattice_weight: weight of the lattice loss.
    """

    family = "diffusion"
    paper = (
        "Jiao, Huang, Lin, Han, Liu, Liu (2023). "
        "Crystal Structure Prediction by Joint Equivariant Diffusion. NeurIPS. arXiv:2309.04475"
    )

    def __init__(
        self,
        backbone: Callable[..., PeriodicMPNN],
        optimizer: OptimizerFactory,
        num_types: int,
        max_atoms: int,
        processes: Mapping[str, VPGaussian | WrappedNormalVE],
        sampler: PredictorCorrectorSampler | None = None,
        time_dim: int = 64,
        type_weight: float = 1.0,
        frac_weight: float = 1.0,
        lattice_weight: float = 1.0,
    ) -> None:
        super().__init__(
            optimizer, num_types, max_atoms, backbone, time_dim,
            {"atom_types": type_weight, "frac_coords": frac_weight, "lattice": lattice_weight},
        )
        self._save_plain_hparams(ignore=["processes"])
        steps = {k: p.timesteps for k, p in processes.items()}
        if len(set(steps.values())) != 1:
            raise ValueError(f"every field's process needs the same timesteps, got {steps}")
        self.processes = self.require_fields(processes, "processes")
        self.timesteps = next(iter(steps.values()))
        self.sampler = sampler if sampler is not None else PredictorCorrectorSampler()

    def predict(self, x_t: Mapping[str, Tensor], t: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The network's per-field prediction at integer steps ``t`` ``[B]`` in ``1..T``."""
        return self.network(x_t, t, mask)

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``sum_f w_f field_loss(f)`` at uniformly drawn steps (for diffcsp, the regression of each process's
        target)."""
        x0, mask = self.data_fields(batch)
        t = torch.randint(1, self.timesteps + 1, (mask.shape[0],), device=self.device)
        noise = {k: torch.randn_like(v) for k, v in x0.items()}
        x_t = {k: self.processes[k].q_sample(x0[k], t, noise[k]) for k in FIELDS}
        pred = self.predict(x_t, t, mask)
        total: Tensor | int = 0
        terms: dict[str, Tensor] = {}
        for k in FIELDS:
            value, logged = self.field_loss(k, pred[k], x0[k], x_t[k], noise[k], t, mask)
            total = total + self.weights[k] * value
            terms.update(logged)
        return {"loss": total, **terms}

    def field_loss(
        self, key: str, pred: Tensor, x0: Tensor, x_t: Tensor, noise: Tensor, t: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Field ``key``'s loss (weighted by the model) and the terms to log: the mean squared error against
        its process's target, over the crystal's atoms for per-atom fields (a variant whose process is not
        a regression overrides it)."""
        target = self.processes[key].target(noise, t)
        value = self.masked_mse(pred, target, mask if key in ATOM_FIELDS else None)
        return value, {f"{key}_mse": value}

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        return self.sampler.nfe(self.timesteps)

    def _sample(self, n: int, generator: torch.Generator | None, condition: Any) -> dict[str, Tensor]:
        mask = self.draw_mask(n, generator)
        shapes = self.field_shapes(n)
        x = self.draw_prior(self.processes, shapes, mask, generator)

        def noise() -> dict[str, Tensor]:
            return {k: self._randn(shapes[k], generator) for k in sorted(shapes)}

        out = self.sampler(
            lambda x_t, t: self.predict(x_t, t, mask), self.processes, x, self.timesteps, noise
        )
        return self.to_batch(out, mask)
