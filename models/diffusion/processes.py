"""Per-field forward noise processes of diffusion models, chosen by config (``model.module.processes``).

A diffusion model's corruption of a crystal is a dict keyed by field, each field with its own process (as
MatterGen's corruption config does). Time is discrete, ``t = 1..T``, with ``t = 0`` the clean data. Each
process provides what training and the samplers need:

- ``prior``: a draw of ``x_T``;
- ``q_sample(x0, t, noise)``: ``x_t``;
- ``target(noise, t)``: what the network regresses at ``x_t`` (its ``prediction_type``);
- ``reverse_step(x_t, pred, t, s, noise)``: ``x_s`` for ``s < t`` (ancestral, respacing-safe);
- ``corrector_step(x_t, pred, t, noise, step_lr)``: a Langevin step at fixed ``t`` (optional).

Processes:

- :class:`VPGaussian`: variance-preserving Gaussian (Ho et al. 2020, arXiv:2006.11239; cosine schedule of
  Nichol & Dhariwal 2021, arXiv:2102.09672), epsilon prediction, ancestral steps with the posterior variance.
- :class:`WrappedNormalVE`: variance-exploding wrapped normal on the torus for fractional coordinates (Jiao et
  al. 2023, "Crystal Structure Prediction by Joint Equivariant Diffusion", NeurIPS, arXiv:2309.04475, section
  4.1): ``x_t = (x0 + sigma_t eps) mod 1`` with a geometric ``sigma_t``; the network regresses the score of
  the wrapped normal, normalised by its root mean square; reverse steps follow the VE SDE (Song et al. 2021,
  "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR, arXiv:2011.13456) and
  wrap.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from bench.models.diffusion.schedule import alpha_bars_for
from torch import Tensor

__all__ = ["VPGaussian", "WrappedNormalVE", "wrapped_normal_score", "wrapped_score_norm"]


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:  # noqa: ANN001
    if generator is None:
        return fn(tuple(shape), device=device)
    return fn(tuple(shape), generator=generator, device=generator.device).to(device)


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` shaped to broadcast against ``like`` (``t`` ``[B]``)."""
    return values.to(like.device)[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class VPGaussian:
    """Variance-preserving Gaussian process with epsilon prediction.

    Args:
        timesteps: T.
        schedule: ``"cosine"`` or ``"linear"``.
        clip: bound on ``|x0_hat|`` in reverse steps (``None``: none). Near ``t = T`` the cosine schedule's
            ``alpha_bar`` is tiny and ``x0_hat = (x_t - sqrt(1 - a) eps_hat) / sqrt(a)`` magnifies the
            network's errors; clipping to the data's range keeps them from surviving as absurd values (Ho et
            al. 2020 clip images to ``[-1, 1]`` the same way).
    """

    prediction_type = "eps"

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", clip: float | None = None) -> None:
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or null, got {clip}")
        self.clip = None if clip is None else float(clip)
        alpha_bars = alpha_bars_for(schedule, timesteps)
        self.timesteps = int(timesteps)
        #: ``alpha_bar_t`` for ``t = 0..T`` (``alpha_bar_0 = 1``), float32.
        self.alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars]).to(torch.float32)

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        return _draw(torch.randn, shape, generator, device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        a = _per_sample(self.alpha_bars, t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def target(self, noise: Tensor, t: Tensor) -> Tensor:
        return noise

    def reverse_step(self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None) -> Tensor:
        """Ancestral step ``t -> s`` from the posterior ``q(x_s | x_t, x0_hat)`` (no noise when ``s = 0``)."""
        a_t, a_s = _per_sample(self.alpha_bars, t, x_t), _per_sample(self.alpha_bars, s, x_t)
        x0 = (x_t - (1.0 - a_t).sqrt() * pred) / a_t.sqrt()
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        beta = 1.0 - a_t / a_s
        mean = a_s.sqrt() * beta / (1.0 - a_t) * x0 + (1.0 - beta).sqrt() * (1.0 - a_s) / (1.0 - a_t) * x_t
        if noise is None:
            return mean
        var = beta * (1.0 - a_s) / (1.0 - a_t)  # 0 when s = 0, since alpha_bar_0 = 1
        return mean + var.sqrt() * noise

    def corrector_step(self, x_t: Tensor, pred: Tensor, t: Tensor, noise: Tensor, step_lr: float) -> Tensor:
        """No corrector for this field: unchanged."""
        return x_t


def wrapped_normal_score(x: Tensor, sigma: Tensor, images: int = 10) -> Tensor:
    """``d/dx log sum_k N(x + k; 0, sigma^2)``: the score of the wrapped normal on the unit circle.

    Args:
        x: displacements (any reals; periodic with period 1).
        sigma: standard deviations, broadcastable to ``x``.
        images: ``k = -images..images`` periodic images are summed.
    """
    k = torch.arange(-images, images + 1, device=x.device, dtype=x.dtype)
    shifted = x.unsqueeze(-1) + k
    s2 = (sigma**2).unsqueeze(-1)
    logits = -(shifted**2) / (2.0 * s2)
    weights = torch.softmax(logits, dim=-1)
    return -(weights * shifted).sum(-1) / s2.squeeze(-1)


def wrapped_score_norm(sigmas: Tensor, points: int = 2001, images: int = 5) -> Tensor:
    """``E_x[score(x; sigma)^2]`` under the wrapped normal itself, for each ``sigma``, by quadrature
    (deterministic).

    The grid covers one period, or ``+-10 sigma`` when that is narrower (the rest of the mass is below 1e-22);
    ``images = 5`` is exact to float64 precision for ``sigma <= 1``.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    out = []
    for chunk in sigmas.split(128):
        sig = chunk.unsqueeze(1)
        x = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)[:-1] * torch.clamp(10.0 * sig, max=0.5)
        k = torch.arange(-images, images + 1, dtype=torch.float64)
        density = torch.exp(-((x.unsqueeze(-1) + k) ** 2) / (2 * sig.unsqueeze(-1) ** 2)).sum(-1)
        score = wrapped_normal_score(x, sig, images)
        out.append((score**2 * density).sum(-1) / density.sum(-1))
    return torch.cat(out)


def _sigmas(timesteps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Geometric ``sigma_1..sigma_T`` (float64)."""
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), timesteps, dtype=torch.float64))


@functools.lru_cache(maxsize=8)
def _score_norms(timesteps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``E[score^2]`` for ``t = 0..T`` (1 at ``t = 0``), computed once per schedule."""
    norms = wrapped_score_norm(_sigmas(timesteps, sigma_min, sigma_max))
    return torch.cat([torch.ones(1, dtype=torch.float64), norms]).to(torch.float32)


class WrappedNormalVE:
    """Variance-exploding wrapped normal on the torus, with DiffCSP's normalised score as the regression
    target.

    ``sigma_t`` is geometric from ``sigma_min`` (``t = 1``) to ``sigma_max`` (``t = T``), ``sigma_0 = 0``. The
    network predicts ``-score(x_t - x0; sigma_t) / sqrt(E[score^2])``, a unit-scale target at every ``t`` (the
    score of a narrow wrapped normal is ``-(x_t - x0) / sigma^2``, so the target is ``eps`` when ``sigma`` is
    small).

    Args:
        timesteps: T.
        sigma_min: ``sigma_1`` (DiffCSP: 0.005).
        sigma_max: ``sigma_T`` (DiffCSP: 0.5).
    """

    prediction_type = "score"

    def __init__(self, timesteps: int = 1000, sigma_min: float = 0.005, sigma_max: float = 0.5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.timesteps = int(timesteps)
        #: ``sigma_t`` for ``t = 0..T`` (``sigma_0 = 0``).
        self.sigmas = torch.cat(
            [torch.zeros(1, dtype=torch.float64), _sigmas(timesteps, sigma_min, sigma_max)]
        ).to(torch.float32)
        #: ``E[score^2]`` at each ``t`` (1 at ``t = 0``, unused).
        self.score_norms = _score_norms(self.timesteps, float(sigma_min), float(sigma_max)).clone()

    def prior(self, shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Uniform on the torus (the wrapped normal with ``sigma_max = 0.5`` is within 1e-4 of it)."""
        return _draw(torch.rand, shape, generator, device)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return torch.remainder(x0 + _per_sample(self.sigmas, t, x0) * noise, 1.0)

    def target(self, noise: Tensor, t: Tensor) -> Tensor:
        sigma = _per_sample(self.sigmas, t, noise)
        return -wrapped_normal_score(sigma * noise, sigma) / _per_sample(self.score_norms, t, noise).sqrt()

    def _score(self, pred: Tensor, t: Tensor) -> Tensor:
        return -pred * _per_sample(self.score_norms, t, pred).sqrt()

    def reverse_step(self, x_t: Tensor, pred: Tensor, t: Tensor, s: Tensor, noise: Tensor | None) -> Tensor:
        """Reverse VE step ``sigma_t -> sigma_s``: ``x + (sigma_t^2 - sigma_s^2) score + std z``, wrapped."""
        s_t, s_s = _per_sample(self.sigmas, t, x_t), _per_sample(self.sigmas, s, x_t)
        step = s_t**2 - s_s**2
        x = x_t + step * self._score(pred, t)
        if noise is not None:
            x = x + (s_s**2 * step / s_t**2).sqrt() * noise
        return torch.remainder(x, 1.0)

    def corrector_step(self, x_t: Tensor, pred: Tensor, t: Tensor, noise: Tensor, step_lr: float) -> Tensor:
        """Langevin step at ``sigma_t`` with step ``step_lr (sigma_t / sigma_1)^2`` (DiffCSP's corrector),
        wrapped."""
        ratio = _per_sample(self.sigmas, t, x_t) / self.sigmas[1]
        step = step_lr * ratio**2
        return torch.remainder(x_t + step * self._score(pred, t) + (2.0 * step).sqrt() * noise, 1.0)
