"""Noise schedules of variance-preserving diffusion: the cumulative signal level ``alpha_bar_t``.

Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models", NeurIPS, arXiv:2006.11239 (linear)
and Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", ICML, arXiv:2102.09672
(cosine).
The corruption itself is a per-field process (:class:`~bench.models.diffusion.processes.VPGaussian`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["alpha_bars_for", "cosine_alpha_bars", "linear_alpha_bars"]


def cosine_alpha_bars(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cumulative signal level ``alpha_bar_t`` of the cosine schedule for ``t = 1..T``.

    Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", ICML, arXiv:2102.09672,
    eq. 17; betas are clipped at ``max_beta`` as the paper does to avoid a singularity at ``t = T``.

    Args:
        timesteps: T.
        s: the small offset keeping ``beta_t`` from being too small near ``t = 0``.
        max_beta: upper clip of each ``beta_t``.

    Returns:
        float64 tensor ``[T]``; entry ``i`` is ``alpha_bar`` at step ``i + 1``.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    alpha_bar = f / f[0]
    betas = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


def linear_alpha_bars(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """``alpha_bar_t`` of the linear schedule of Ho et al. (2020), with betas scaled for ``T != 1000``."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    scale = 1000.0 / timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64).clamp(
        max=0.999
    )
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bars_for(schedule: str, timesteps: int) -> Tensor:
    """``alpha_bar_t`` (``t = 1..T``, float64) of the named schedule: ``"cosine"`` or ``"linear"``."""
    if schedule == "cosine":
        return cosine_alpha_bars(timesteps)
    if schedule == "linear":
        return linear_alpha_bars(timesteps)
    raise ValueError(f"schedule must be 'cosine' or 'linear', got {schedule!r}")
