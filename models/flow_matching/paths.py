"""Probability paths of flow matching, one object per field of the crystal (chosen by config).

A path knows its prior, how to interpolate between a prior sample ``x0`` and a data point ``x1`` at time ``t``
(returning ``x_t`` and the conditional velocity ``u_t`` the network regresses), and how to move a point along
a velocity (the exponential map of its space):

- :class:`EuclideanPath`: the straight-line (optimal-transport, ``sigma_min = 0``) path of Lipman et al.
  (2023), "Flow Matching for Generative Modeling", ICLR, arXiv:2210.02747, from a Gaussian prior;
- :class:`TorusPath`: the geodesic path on the flat torus ``[0, 1)^3`` of Chen & Lipman (2024), "Flow Matching
  on General Geometries", ICLR, arXiv:2302.03660, from the uniform prior, as FlowMM (Miller et al. 2024,
  "FlowMM: Generating Materials with Riemannian Flow Matching", ICML, arXiv:2406.04713) uses for fractional
  coordinates. Coordinates are wrapped, never clipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["EuclideanPath", "FieldPath", "TorusPath", "wrap"]


def wrap(delta: Tensor) -> Tensor:
    """The shortest signed representative of a fractional difference, in ``[-1/2, 1/2)``."""
    return delta - torch.floor(delta + 0.5)


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:  # noqa: ANN001
    if generator is None:
        return fn(tuple(shape), device=device)
    return fn(tuple(shape), generator=generator, device=generator.device).to(device)


def _expand_time(t: Tensor, like: Tensor) -> Tensor:
    return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class FieldPath(Protocol):
    """What a field's probability path provides to the flow-matching model and its samplers."""

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """A sample of the prior ``p_0`` with the given shape."""
        ...

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)``: the point at time ``t`` ``[B]`` on the path from ``x0`` to ``x1``, and its
        velocity."""
        ...

    def step(self, x: Tensor, velocity: Tensor, dt: float) -> Tensor:
        """Move ``x`` along ``velocity`` for a time ``dt`` (the exponential map)."""
        ...


class EuclideanPath:
    """``x_t = (1 - t) x0 + t x1``, ``u_t = x1 - x0``, with ``x0 ~ N(0, scale^2 I)``.

    Args:
        scale: standard deviation of the Gaussian prior.
    """

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        return self.scale * _draw(torch.randn, shape, generator, device)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        tt = _expand_time(t, x1)
        return (1.0 - tt) * x0 + tt * x1, x1 - x0

    def step(self, x: Tensor, velocity: Tensor, dt: float) -> Tensor:
        return x + dt * velocity


class TorusPath:
    """Geodesics of the flat torus: ``x_t = x0 + t wrap(x1 - x0) mod 1``, ``u_t = wrap(x1 - x0)``,
    ``x0 ~ U[0,1)``."""

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        return _draw(torch.rand, shape, generator, device)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        u = wrap(x1 - x0)
        return torch.remainder(x0 + _expand_time(t, x1) * u, 1.0), u

    def step(self, x: Tensor, velocity: Tensor, dt: float) -> Tensor:
        return torch.remainder(x + dt * velocity, 1.0)
