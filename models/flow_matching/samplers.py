"""ODE samplers of flow-matching models: integrate the learned velocity from ``t = 0`` (prior) to ``t = 1``.

Samplers hold no weights and are chosen by config (``conf/sampler/euler.yaml``, ``heun.yaml``). Each step
moves every field with its own path's exponential map (:meth:`FieldPath.step`), so coordinates stay on the
torus. Each sampler states its number of network evaluations (``nfe``), which the sample stage writes into the
record.

``anti_annealing`` integrates ``dx/dt = (1 + s t) v(x, t)`` for the fields it names (FlowMM's "inference
anti-annealing", Miller et al. 2024, arXiv:2406.04713, section 4; also Yim et al. 2023 for protein frames):
the flow is sharpened near the data end, which trades a little diversity for precision. ``{}`` (the default)
integrates the learned field as is.

A learned velocity near the data end has the form ``v = (x1_hat - x) / (1 - t)`` (the conditional field of the
straight path to the predicted endpoint ``x1_hat``), so the scaled field is a contraction whose rate
``(1 + s t) / (1 - t)`` grows without bound as ``t -> 1``. Plain Euler steps with it overshoot: at
``t = 1 - k dt`` a step moves ``(1 + s t) / k`` times the distance to ``x1_hat``, i.e. past it for
``k < 1 + s t``, amplifying the network's error about ``s``-fold per step over the last steps (with ``s = 10``
and 50 steps, a factor of about 250 over the last five). The samplers therefore take each anti-annealed step
with the exponential integrator of that contraction: holding ``x1_hat`` fixed over the step, the exact
solution moves the fraction ``1 - exp(-I)`` of the way to it, ``I = int_t^{t+dt} (1 + s u) / (1 - u) du
= (1 + s) ln((1 - t) / (1 - t - dt)) - s dt``, i.e. a step of effective length ``(1 - t)(1 - exp(-I))`` along
``v``. This equals ``dt (1 + s t)`` to first order in ``dt``, equals ``dt`` exactly for ``s = 0`` (plain
Euler), never passes the predicted endpoint, and lands on it at the last step.
"""

from __future__ import annotations

import math
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
        return velocity(x, torch.full((size,), t, device=device))

    def step_length(self, key: str, t: float, dt: float) -> float:
        """How far (in time units of ``v``) field ``key`` moves along the velocity from ``t`` to ``t + dt``:
        ``dt`` without anti-annealing, else the exponential-integrator length of the module docstring."""
        s = self.anti_annealing.get(key, 0.0)
        remaining = 1.0 - t
        if s == 0.0:
            return dt
        if remaining - dt <= 1e-12:  # the last step lands on the predicted endpoint
            return remaining
        integral = (1.0 + s) * math.log(remaining / (remaining - dt)) - s * dt
        return remaining * -math.expm1(-integral)


class EulerSampler(_FixedStep):
    """Explicit Euler on the product manifold, ``steps`` equal steps (NFE = steps).

    Args:
        steps: number of steps from ``t = 0`` to ``t = 1``.
        anti_annealing: ``{field: s}``; that field follows ``(1 + s t) v`` (module docstring).
    """

    def __call__(
        self, velocity: VelocityField, paths: Mapping[str, FieldPath], x0: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        x, dt = dict(x0), 1.0 / self.steps
        for i in range(self.steps):
            t = i * dt
            v = self._velocity(velocity, x, t)
            x = {k: paths[k].step(x[k], v[k], self.step_length(k, t, dt)) for k in x}
        return x


class HeunSampler(_FixedStep):
    """Heun's second-order method (explicit trapezoid), ``steps`` steps, NFE = 2 steps - 1.

    The last step is a plain Euler step: its corrector would evaluate the network at ``t = 1``, which training
    never samples exactly.

    Args:
        steps: number of steps from ``t = 0`` to ``t = 1``.
        anti_annealing: ``{field: s}``; that field follows ``(1 + s t) v`` (module docstring).
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
            guess = {k: paths[k].step(x[k], v[k], self.step_length(k, t, dt)) for k in x}
            if i == self.steps - 1:
                x = guess
                break
            v_next = self._velocity(velocity, guess, t + dt)
            x = {k: paths[k].step(x[k], 0.5 * (v[k] + v_next[k]), self.step_length(k, t, dt)) for k in x}
        return x
