"""Reverse-process samplers for epsilon-prediction diffusion models, chosen by config (``conf/sampler``).

A sampler holds no weights: it takes the model's noise predictor, the schedule's ``alpha_bar`` values and the
field shapes, and integrates from pure noise to data, drawing every random number from the given
``torch.Generator``. So the same trained checkpoint can be sampled with either sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["AncestralSampler", "DDIMSampler", "DiffusionSampler", "NoisePredictor", "respaced_timesteps"]

NoisePredictor = Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]]
"""``eps_hat = predictor(x_t, t)`` with ``t`` the integer step index ``[B]`` (0-based, ``0..T-1``)."""


class DiffusionSampler(Protocol):
    """What :class:`~bench.models.diffusion.ddpm.CrystalDDPM` needs from a sampler."""

    def __call__(
        self,
        predictor: NoisePredictor,
        alpha_bars: Tensor,
        shapes: Mapping[str, tuple[int, ...]],
        generator: torch.Generator | None,
        device: torch.device,
        clip: Mapping[str, float | None] | None = None,
    ) -> dict[str, Tensor]:
        """Draw samples ``x_0`` with the given per-field shapes (leading dimension = number of samples)."""
        ...


def respaced_timesteps(timesteps: int, steps: int | None) -> list[int]:
    """Evenly spaced step indices ``0 <= t < T`` (ascending) visited by a sampler with ``steps`` steps.

    Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", section 4: any subsequence
    of the training steps defines a valid shorter reverse process. ``None`` (or ``steps >= T``) keeps every
    step.
    """
    if steps is None or steps >= timesteps:
        return list(range(timesteps))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid))


def _noise(
    shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator | None, device: torch.device
) -> dict[str, Tensor]:
    """Standard normal noise per field, drawn in key order from the generator (on its device)."""
    out = {}
    for key in sorted(shapes):
        if generator is None:
            out[key] = torch.randn(shapes[key], device=device)
        else:
            out[key] = torch.randn(shapes[key], generator=generator, device=generator.device).to(device)
    return out


def _batch_size(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Number of samples: the leading dimension shared by every field."""
    return next(iter(shapes.values()))[0]


def _predict_x0(
    x_t: Mapping[str, Tensor],
    eps: Mapping[str, Tensor],
    alpha_bar: Tensor,
    clip: Mapping[str, float | None] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``x0_hat`` from an epsilon prediction, clipped per field, and the epsilon consistent with it."""
    x0, eps_out = {}, {}
    for key, value in x_t.items():
        pred = (value - (1.0 - alpha_bar).sqrt() * eps[key]) / alpha_bar.sqrt()
        bound = None if clip is None else clip.get(key)
        if bound is not None:
            pred = pred.clamp(-bound, bound)
            eps_out[key] = (value - alpha_bar.sqrt() * pred) / (1.0 - alpha_bar).sqrt()
        else:
            eps_out[key] = eps[key]
        x0[key] = pred
    return x0, eps_out


def _reverse_steps(
    alpha_bars: Tensor, steps: int | None, size: int, device: torch.device
) -> Iterator[tuple[bool, Tensor, Tensor, Tensor]]:
    """``(last, a_t, a_prev, t)`` per reverse step, from the noisiest visited step down to the first.

    ``a_t`` and ``a_prev`` are ``alpha_bar`` at this step and at the previous visited one (1 before the first
    step); ``t`` is the step index for each of ``size`` samples; ``last`` marks the final update.
    """
    ts = respaced_timesteps(len(alpha_bars), steps)
    for i in reversed(range(len(ts))):
        a_t = alpha_bars[ts[i]]
        a_prev = alpha_bars[ts[i - 1]] if i > 0 else torch.ones_like(a_t)
        yield i == 0, a_t, a_prev, torch.full((size,), ts[i], device=device, dtype=torch.long)


class AncestralSampler:
    """DDPM ancestral sampling (Ho et al. 2020, algorithm 2) over all or a respaced subset of the steps.

    Each step draws ``x_{t-1}`` from the Gaussian posterior ``q(x_{t-1} | x_t, x0_hat)`` with variance
    ``beta_tilde`` (``variance="posterior"``) or ``beta`` (``variance="beta"``); both are the paper's choices.

    Args:
        steps: number of reverse steps (``None``: every training step, T).
        variance: ``"posterior"`` (``beta_tilde_t``) or ``"beta"`` (``beta_t``).
        clip_denoised: clip ``x0_hat`` of bounded fields to their range before each update.
    """

    def __init__(
        self, steps: int | None = None, variance: str = "posterior", clip_denoised: bool = True
    ) -> None:
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
        self.steps = steps
        self.variance = variance
        self.clip_denoised = clip_denoised

    def __call__(
        self,
        predictor: NoisePredictor,
        alpha_bars: Tensor,
        shapes: Mapping[str, tuple[int, ...]],
        generator: torch.Generator | None,
        device: torch.device,
        clip: Mapping[str, float | None] | None = None,
    ) -> dict[str, Tensor]:
        """Integrate the reverse process from ``x_T ~ N(0, I)``."""
        x = _noise(shapes, generator, device)
        for last, a_t, a_prev, t in _reverse_steps(alpha_bars, self.steps, _batch_size(shapes), device):
            beta = 1.0 - a_t / a_prev
            x0, _ = _predict_x0(x, predictor(x, t), a_t, clip if self.clip_denoised else None)
            coef0 = a_prev.sqrt() * beta / (1.0 - a_t)
            coeft = (1.0 - beta).sqrt() * (1.0 - a_prev) / (1.0 - a_t)
            mean = {k: coef0 * x0[k] + coeft * x[k] for k in x}
            if last:
                x = mean
                break
            var = beta * (1.0 - a_prev) / (1.0 - a_t) if self.variance == "posterior" else beta
            z = _noise(shapes, generator, device)
            x = {k: mean[k] + var.sqrt() * z[k] for k in x}
        return x


class DDIMSampler:
    """DDIM sampling: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models", ICLR, eq. 12.

    arXiv:2010.02502. With ``eta = 1`` and the same steps it matches :class:`AncestralSampler` with the
    posterior variance; with ``eta = 0`` the map from ``x_T`` to ``x_0`` is deterministic.

    Args:
        steps: number of reverse steps, evenly spaced over the training steps.
        eta: 0 for the deterministic DDIM update, 1 for the DDPM posterior variance.
        clip_denoised: clip ``x0_hat`` of bounded fields to their range before each update.
    """

    def __init__(self, steps: int = 50, eta: float = 0.0, clip_denoised: bool = True) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.steps = steps
        self.eta = float(eta)
        self.clip_denoised = clip_denoised

    def __call__(
        self,
        predictor: NoisePredictor,
        alpha_bars: Tensor,
        shapes: Mapping[str, tuple[int, ...]],
        generator: torch.Generator | None,
        device: torch.device,
        clip: Mapping[str, float | None] | None = None,
    ) -> dict[str, Tensor]:
        """Integrate the DDIM update from ``x_T ~ N(0, I)``."""
        x = _noise(shapes, generator, device)
        for last, a_t, a_prev, t in _reverse_steps(alpha_bars, self.steps, _batch_size(shapes), device):
            x0, eps = _predict_x0(x, predictor(x, t), a_t, clip if self.clip_denoised else None)
            if last:
                x = x0
                break
            sigma = self.eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt()
            direction = (1.0 - a_prev - sigma**2).clamp_min(0.0).sqrt()
            x = {k: a_prev.sqrt() * x0[k] + direction * eps[k] for k in x}
            if self.eta > 0:
                z = _noise(shapes, generator, device)
                x = {k: x[k] + sigma * z[k] for k in x}
        return x
