"""Reverse-process samplers of discrete-time diffusion models, chosen by config (``conf/sampler``).

Every sampler follows one protocol (:class:`DiffusionSampler`). It holds no weights and no schedule: it is
called with the model's predictor, the model's corruption (a dict of per-field processes from
:mod:`bench.models.diffusion.processes`), ``x_T`` drawn from the processes' priors, the number of training
steps ``T`` and a function drawing fresh standard normal noise for every field. The sampler chooses which
steps to visit and where noise enters; each field's process does the arithmetic of its step. So one
checkpoint can be sampled several ways, and one sampler serves every model whose processes provide its
step:

- :class:`AncestralSampler`: each process's ``reverse_step`` (any process);
- :class:`DDIMSampler`: each process's ``ddim_step`` (Gaussian processes);
- :class:`~bench.models.diffusion.diffcsp.PredictorCorrectorSampler`: the ancestral sampler with each
  process's ``corrector_step`` before every step (DiffCSP's algorithm 2).

Steps are 1-based (``t = 1..T``; ``t = 0`` is the data); every random number comes from the noise function, so
a seeded generator gives the same samples every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from bench.models.diffusion.processes import VPGaussian
from torch import Tensor

__all__ = [
    "AncestralSampler",
    "DDIMSampler",
    "DiffusionSampler",
    "NoiseSource",
    "Predictor",
    "respaced_timesteps",
]

Predictor = Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]]
"""``pred = predictor(x_t, t)`` with ``t`` the step ``[B]`` in ``1..T``; per field, what its process's
``prediction_type`` names (e.g. epsilon)."""

NoiseSource = Callable[[], dict[str, Tensor]]
"""``noise()``: a fresh standard normal draw of every field's shape, in a fixed field order."""


class DiffusionSampler(Protocol):
    """What a diffusion model needs from its sampler."""

    steps: int | None

    def schedule(self, timesteps: int) -> list[int]:
        """The visited steps ``t`` (descending, in ``1..T``)."""
        ...

    def nfe(self, timesteps: int) -> int:
        """Network evaluations per sample."""
        ...

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate from ``x_T`` (``x``, one entry per field of ``processes``) to ``x_0``."""
        ...


def respaced_timesteps(timesteps: int, steps: int | None) -> list[int]:
    """Evenly spaced step indices ``0 <= i < T`` (ascending; step ``t = i + 1``) visited by a sampler with
    ``steps`` steps.

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


class _SteppedSampler:
    """The visited steps of a sampler with ``steps`` evenly spaced reverse steps."""

    def __init__(self, steps: int | None) -> None:
        self.steps = steps

    def schedule(self, timesteps: int) -> list[int]:
        """The visited steps ``t`` (descending, in ``1..T``)."""
        return [i + 1 for i in reversed(respaced_timesteps(timesteps, self.steps))]

    def nfe(self, timesteps: int) -> int:
        """Network evaluations per sample: one per visited step."""
        return len(self.schedule(timesteps))

    def _transitions(
        self, timesteps: int, x: Mapping[str, Tensor]
    ) -> Iterator[tuple[Tensor, Tensor, bool]]:
        """``(t, s, final)`` per reverse step: from the noisiest visited step ``t`` to the next visited one
        ``s`` (each ``[B]``; ``s = 0`` after the last, where ``final`` is true)."""
        visited = self.schedule(timesteps)
        first = next(iter(x.values()))
        for i, t_value in enumerate(visited):
            t = torch.full((first.shape[0],), t_value, device=first.device, dtype=torch.long)
            final = i + 1 == len(visited)
            yield t, torch.full_like(t, 0 if final else visited[i + 1]), final

    @staticmethod
    def _require(processes: Mapping[str, Any], method: str, sampler: str) -> None:
        """Refuse a field whose process lacks ``method``, naming it."""
        missing = {k: type(p).__name__ for k, p in processes.items() if not hasattr(p, method)}
        if missing:
            raise TypeError(
                f"{sampler} needs {method} from every field's process; "
                + ", ".join(f"{k} is {name}" for k, name in sorted(missing.items()))
            )


class AncestralSampler(_SteppedSampler):
    """Ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239,
    algorithm 2) over all or a respaced subset of the steps: each step draws ``x_s`` from every field's
    process's ``reverse_step``, with fresh noise, except the final step to ``x_0``, which adds none (the
    paper's ``z = 0`` at ``t = 1``: a Gaussian field takes the posterior mean, a categorical one its most
    probable state). No draw is spent on it, so a generator shared by consecutive batches stays in step.

    Args:
        steps: number of reverse steps (``None``: every training step, T).
        variance: ``"posterior"`` (``beta_tilde_t``) or ``"beta"`` (``beta_t``), the paper's two choices; the
            latter applies to Gaussian processes only.
        clip_denoised: clip ``x0_hat`` of bounded fields to their process's range before each update (False
            applies to Gaussian processes only).
    """

    #: Whether the final step to ``x_0`` draws fresh noise too.
    final_noise: bool = False

    def __init__(
        self, steps: int | None = None, variance: str = "posterior", clip_denoised: bool = True
    ) -> None:
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
        super().__init__(steps)
        self.variance = variance
        self.clip_denoised = clip_denoised

    def _step_options(self, processes: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword options of ``reverse_step`` that differ from every process's default (Gaussian only)."""
        options: dict[str, Any] = {}
        if self.variance != "posterior":
            options["variance"] = self.variance
        if not self.clip_denoised:
            options["clip"] = False
        others = {k: type(p).__name__ for k, p in processes.items() if not isinstance(p, VPGaussian)}
        if options and others:
            raise TypeError(
                f"AncestralSampler options {options} apply to VPGaussian fields only; "
                + ", ".join(f"{k} is {name}" for k, name in sorted(others.items()))
            )
        return options

    def correct(
        self, predictor: Predictor, processes: Mapping[str, Any], x: dict[str, Tensor], t: Tensor,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """What happens at ``t`` before the reverse step (none here; a corrector in subclasses)."""
        return x

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate the reverse process from ``x_T`` (``x``)."""
        x = dict(x)
        options = self._step_options(processes)
        for t, s, final in self._transitions(timesteps, x):
            x = self.correct(predictor, processes, x, t, noise)
            pred = predictor(x, t)
            z = noise() if self.final_noise or not final else None
            x = {
                k: processes[k].reverse_step(x[k], pred[k], t, s, None if z is None else z[k], **options)
                for k in x
            }
        return x


class DDIMSampler(_SteppedSampler):
    """DDIM sampling: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models", ICLR, eq. 12.

    arXiv:2010.02502. Each step is every field's process's ``ddim_step`` (Gaussian processes). With
    ``eta = 1`` and the same steps it matches :class:`AncestralSampler` with the posterior variance in
    distribution; with ``eta = 0`` the map from ``x_T`` to ``x_0`` is deterministic and no noise is drawn.
    The final step returns ``x0_hat`` and draws nothing.

    Args:
        steps: number of reverse steps, evenly spaced over the training steps.
        eta: 0 for the deterministic DDIM update, 1 for the DDPM posterior variance.
        clip_denoised: clip ``x0_hat`` of bounded fields to their process's range before each update.
    """

    def __init__(self, steps: int = 50, eta: float = 0.0, clip_denoised: bool = True) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(steps)
        self.eta = float(eta)
        self.clip_denoised = clip_denoised

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate the DDIM update from ``x_T`` (``x``)."""
        self._require(processes, "ddim_step", "DDIMSampler")
        x = dict(x)
        for t, s, final in self._transitions(timesteps, x):
            pred = predictor(x, t)
            z = noise() if self.eta > 0 and not final else None
            x = {
                k: processes[k].ddim_step(
                    x[k], pred[k], t, s, None if z is None else z[k], eta=self.eta, clip=self.clip_denoised
                )
                for k in x
            }
        return x
