"""ODE samplers of flow-matching models: integrate the learned velocity from ``t = 0`` (prior) to ``t = 1``.

Samplers hold no weights and are chosen by config (``conf/sampler/euler.yaml``, ``heun.yaml``). Each step
moves every field with its own path's exponential map (:meth:`FieldPath.step`), so coordinates stay on the
torus. Each sampler states its number of network evaluations (``nfe``), which the sample stage writes into the
record.

``anti_annealing`` multiplies a field's velocity by ``1 + s t`` (FlowMM's "inference anti-annealing", Miller
et al. 2024, arXiv:2406.04713, section 4; also Yim et al. 2023 for protein frames): the flow is sharpened near
the data end, which trades a little diversity for precision. ``{}`` (the default) integrates the learned field
as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from bench.models.flow_matching.paths import FieldPath
from torch import Tensor

__all__ = ["EulerSampler", "HeunSampler", "ODESampler", "VelocityField"]

VelocityField = Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]]
"""``v = field(x_t, t)`` with ``t`` ``[B]`` in ``[0, 1]``."""


class ODESampler(Protocol):
    """What :class:`~bench.models.flow_matching.model.CrystalFlowMatching` needs from a sampler."""

    nfe: int

    def __call__(
        self, velocity: VelocityField, paths: Mapping[str, FieldPath], x0: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Integrate from the prior sample ``x0`` to ``t = 1``."""
        ...


class _FixedStep:
    """Shared settings of fixed-step samplers: the number of steps and the anti-annealing per field."""

    evaluations_per_step = 1

    def __init__(self, steps: int = 50, anti_annealing: Mapping[str, float] | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.anti_annealing = {k: float(v) for k, v in (anti_annealing or {}).items()}

    @property
    def nfe(self) -> int:
        """Network evaluations per sample batch."""
        return self.steps * self.evaluations_per_step

    def _velocity(self, velocity: VelocityField, x: Mapping[str, Tensor], t: float) -> dict[str, Tensor]:
        size = next(iter(x.values())).shape[0]
        device = next(iter(x.values())).device
        v = velocity(x, torch.full((size,), t, device=device))
        return {k: v[k] * (1.0 + self.anti_annealing.get(k, 0.0) * t) for k in x}


class EulerSampler(_FixedStep):
    """Explicit Euler on the product manifold, ``steps`` equal steps (NFE = steps).

    Args:
        steps: number of steps from ``t = 0`` to ``t = 1``.
        anti_annealing: ``{field: s}``; that field's velocity is multiplied by ``1 + s t``.
    """

    def __call__(
        self, velocity: VelocityField, paths: Mapping[str, FieldPath], x0: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        x, dt = dict(x0), 1.0 / self.steps
        for i in range(self.steps):
            v = self._velocity(velocity, x, i * dt)
            x = {k: paths[k].step(x[k], v[k], dt) for k in x}
        return x


class HeunSampler(_FixedStep):
    """Heun's second-order method (explicit trapezoid), ``steps`` steps, NFE = 2 steps - 1.

    The last step is a plain Euler step: its corrector would evaluate the network at ``t = 1``, which training
    never samples exactly.

    Args:
        steps: number of steps from ``t = 0`` to ``t = 1``.
        anti_annealing: ``{field: s}``; that field's velocity is multiplied by ``1 + s t``.
    """

    evaluations_per_step = 2

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1

    def __call__(
        self, velocity: VelocityField, paths: Mapping[str, FieldPath], x0: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        x, dt = dict(x0), 1.0 / self.steps
        for i in range(self.steps):
            t = i * dt
            v = self._velocity(velocity, x, t)
            guess = {k: paths[k].step(x[k], v[k], dt) for k in x}
            if i == self.steps - 1:
                x = guess
                break
            v_next = self._velocity(velocity, guess, t + dt)
            x = {k: paths[k].step(x[k], 0.5 * (v[k] + v_next[k]), dt) for k in x}
        return x
