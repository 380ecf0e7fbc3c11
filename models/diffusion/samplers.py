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
- :class:`AnalyticDPMSampler`: each process's ``analytic_step``, with Analytic-DPM's variances estimated from
  the training data (Gaussian processes);
- :class:`DPSampler`: the ancestral sampler along the path of ``K`` steps that maximises the ELBO, found by
  dynamic programming over the processes' ``transition_costs`` measured on the training data (Gaussian
  processes);
- :class:`~bench.models.diffusion.diffcsp.PredictorCorrectorSampler`: the ancestral sampler with each
  process's ``corrector_step`` before every step (DiffCSP's algorithm 2).

Steps are 1-based (``t = 1..T``; ``t = 0`` is the data); every random number comes from the noise function, so
a seeded generator gives the same samples every time.

A sampler that needs statistics of the training data sets ``needs_data = True`` and gets them once, before
sampling, from ``prepare(predictor, processes, x0, timesteps)`` (the model's ``prepare_sampler``, which the
sample stage calls with the run's training split): :func:`monte_carlo_moments` draws them with a generator
seeded by the sampler's ``seed`` and each step, so they are reproducible, and they can be cached as JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from bench.models.diffusion.processes import VPGaussian
from torch import Tensor

__all__ = [
    "AnalyticDPMSampler",
    "AncestralSampler",
    "DDIMSampler",
    "DPSampler",
    "DiffusionSampler",
    "NoiseSource",
    "Predictor",
    "dp_path",
    "monte_carlo_moments",
    "path_cost",
    "respaced_timesteps",
]

log = logging.getLogger(__name__)

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
            latter applies to Gaussian processes only. ``"learned"``: the variances the network predicts
            (Nichol & Dhariwal 2021, eq. 15, respaced as their section 4), for
            :class:`~bench.models.diffusion.processes.LearnedVarianceVPGaussian` fields only.
        clip_denoised: clip ``x0_hat`` of bounded fields to their process's range before each update (False
            applies to Gaussian processes only).
    """

    #: Whether the final step to ``x_0`` draws fresh noise too.
    final_noise: bool = False

    def __init__(
        self, steps: int | None = None, variance: str = "posterior", clip_denoised: bool = True
    ) -> None:
        if variance not in ("posterior", "beta", "learned"):
            raise ValueError(f"variance must be 'posterior', 'beta' or 'learned', got {variance!r}")
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
        if self.variance == "learned":
            fixed = {k: type(p).__name__ for k, p in processes.items()
                     if "learned" not in getattr(p, "variances", ())}
            if fixed:
                raise TypeError(
                    "AncestralSampler(variance='learned') needs a process with learned variances for every "
                    "field; " + ", ".join(f"{k} is {name}" for k, name in sorted(fixed.items()))
                )
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


# ------------------------------------------------------------------------------------------------------------
# Samplers that read statistics of the training data: Analytic-DPM and the ELBO-optimal path.


def _step_seed(seed: int, timesteps: int, t: int) -> int:
    """The seed of step ``t``'s draws: one generator per step, so a step's draws do not depend on which other
    steps are estimated or on how they are batched."""
    return (int(seed) * (timesteps + 1) + int(t)) % (2**63 - 1)


def monte_carlo_moments(
    predictor: Predictor,
    processes: Mapping[str, VPGaussian],
    x0: Mapping[str, Tensor],
    steps: Sequence[int],
    draws: int,
    seed: int,
    clip: bool = True,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> dict[str, dict[str, Tensor]]:
    """Monte Carlo moments of the trained predictor at each step ``t`` of ``steps``, per field.

    At each step, ``draws`` pairs ``(x0, eps)`` are drawn (``x0`` uniformly, with replacement, from the rows
    of ``x0``; ``eps`` standard normal), ``x_t = q_sample(x0, t, eps)`` and the predictor is evaluated.
    Returned, each float64 ``[len(steps)]``:

    - ``gamma``: ``mean ||eps_theta(x_t, t)||^2 / d`` (Analytic-DPM's ``Gamma_t``, Bao et al. 2022);
    - ``x0_mse``: ``mean ||x0 - x0_hat(x_t, t)||^2`` (summed over the field's ``d`` coordinates), with
      ``x0_hat`` formed as the reverse steps form it (clipped when ``clip``): the one number per step of the
      ELBO terms of Watson et al. (2021).

    Step ``t`` draws from its own generator, seeded by ``seed`` and ``t``, on the CPU: the result is the same
    for a given ``seed`` whatever the device, the batch size or the other steps asked for (up to float
    rounding in the network).

    Args:
        predictor: ``eps_hat = predictor(x_t, t)``, per field.
        processes: the model's Gaussian processes by field.
        x0: the training data in the processes' space, by field, each ``[N, ...]``.
        steps: steps ``t`` in ``1..T``.
        draws: Monte Carlo draws per step (``M``).
        seed: seed of the draws.
        clip: clip ``x0_hat`` to each process's bound (as the sampler does).
        batch_size: rows per network evaluation.
        device: where the predictor runs (default: that of ``x0``).
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    fields = sorted(processes)
    first = x0[fields[0]]
    n = first.shape[0]
    if n < 1:
        raise ValueError("monte_carlo_moments needs at least one data row")
    device = device if device is not None else first.device
    timesteps = max(int(p.timesteps) for p in processes.values())
    dims = {k: int(x0[k][0].numel()) for k in fields}
    out = {name: {k: torch.zeros(len(steps), dtype=torch.float64) for k in fields}
           for name in ("gamma", "x0_mse")}

    def flush(rows: list[tuple[int, Tensor, dict[str, Tensor]]]) -> None:
        index = torch.cat([torch.full((len(i),), j, dtype=torch.long) for j, i, _ in rows])
        picks = torch.cat([i for _, i, _ in rows])
        t = torch.tensor([int(steps[j]) for j in index.tolist()], dtype=torch.long, device=device)
        clean = {k: x0[k][picks].to(device) for k in fields}
        eps = {k: torch.cat([z[k] for _, _, z in rows]).to(device) for k in fields}
        x_t = {k: processes[k].q_sample(clean[k], t, eps[k]) for k in fields}
        pred = predictor(x_t, t)
        for k in fields:
            square = processes[k].epsilon(pred[k]).detach().double().pow(2).flatten(1).sum(1) / dims[k]
            x0_hat = processes[k].denoise(x_t[k], pred[k].detach(), t, clip)
            error = (clean[k] - x0_hat).double().pow(2).flatten(1).sum(1)
            out["gamma"][k].index_add_(0, index, square.cpu())
            out["x0_mse"][k].index_add_(0, index, error.cpu())

    pending: list[tuple[int, Tensor, dict[str, Tensor]]] = []
    count = 0
    for j, t_value in enumerate(steps):
        if not 1 <= int(t_value) <= timesteps:
            raise ValueError(f"steps must lie in 1..{timesteps}, got {t_value}")
        g = torch.Generator().manual_seed(_step_seed(seed, timesteps, int(t_value)))
        picks = torch.randint(n, (draws,), generator=g)
        noise = {k: torch.randn((draws, *x0[k].shape[1:]), generator=g, dtype=x0[k].dtype) for k in fields}
        start = 0
        while start < draws:  # fill the batch, flushing it whenever it is full
            take = min(draws - start, batch_size - count)
            part = {k: v[start:start + take] for k, v in noise.items()}
            pending.append((j, picks[start:start + take], part))
            count += take
            start += take
            if count == batch_size:
                flush(pending)
                pending, count = [], 0
    if pending:
        flush(pending)
    for name in out:
        for k in fields:
            out[name][k] /= draws
    return out


def _require_gaussian(processes: Mapping[str, Any], purpose: str) -> None:
    """Refuse fields whose process is not a :class:`VPGaussian`, in one line that starts with ``purpose``
    (what the sampler does) and names the fields and the fix."""
    others = {k: type(p).__name__ for k, p in processes.items() if not isinstance(p, VPGaussian)}
    if others:
        raise TypeError(
            f"{purpose}, which needs a Gaussian (VPGaussian) process for every field, but "
            + ", ".join(f"{k} is {name}" for k, name in sorted(others.items()))
            + ": use it with a model whose fields are all Gaussian (e.g. model=ddpm), or keep this "
            "model's own sampler"
        )


def _fingerprint(x0: Mapping[str, Tensor]) -> str:
    """sha256 of the data (each field's float values in field order)."""
    digest = hashlib.sha256()
    for k in sorted(x0):
        value = x0[k].detach().cpu().contiguous()
        digest.update(f"{k}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


class _DataMixin:
    """What a sampler needs whose steps or variances come from Monte Carlo moments of the trained model on
    training data (:func:`monte_carlo_moments`), computed once by ``prepare`` and reused for every batch."""

    needs_data = True
    #: Moments this sampler needs, for the error message of an unprepared sampler.
    _needs = "Monte Carlo moments"
    draws: int
    seed: int
    clip_denoised: bool
    _prepared_for: int | None

    def _init_data(self, draws: int, seed: int) -> None:
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        self.draws = int(draws)
        self.seed = int(seed)
        self._prepared_for = None

    def _check_prepared(self, timesteps: int) -> None:
        if self._prepared_for != timesteps:
            raise RuntimeError(
                f"{type(self).__name__} needs the {self._needs} of the trained model on its training data: "
                "call the model's prepare_sampler(train_batch) first (the sample stage does it)"
                + ("" if self._prepared_for is None else
                   f"; it was prepared for T = {self._prepared_for}, not T = {timesteps}")
            )

    def _moments(
        self, predictor: Predictor, processes: Mapping[str, VPGaussian], x0: Mapping[str, Tensor],
        timesteps: int, steps: Sequence[int], cache_dir: str | Path | None, fingerprint: str,
        batch_size: int = 512, device: torch.device | None = None,
    ) -> dict[str, dict[str, Tensor]]:
        """:func:`monte_carlo_moments` at ``steps``, read from or written to a JSON file in ``cache_dir``.

        The file is named after everything the moments depend on: the sampler, the steps, ``draws``, ``seed``,
        the clipping, every process's schedule and bound, the data and ``fingerprint`` (the model's weights);
        a file whose recorded key differs is recomputed. Floats are written with their full ``repr``, so a
        cached value is the computed one, bit for bit.
        """
        key = {
            "sampler": type(self).__name__,
            "timesteps": int(timesteps),
            "steps": [int(t) for t in steps],
            "draws": self.draws,
            "seed": self.seed,
            "clip_denoised": bool(self.clip_denoised),
            "processes": {
                k: {"alpha_bars": hashlib.sha256(p.alpha_bars64.numpy().tobytes()).hexdigest(),
                    "clip": p.clip}
                for k, p in sorted(processes.items())
            },
            "data": _fingerprint(x0),
            "model": fingerprint,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = None if cache_dir is None else Path(cache_dir) / f"{type(self).__name__}-{digest}.json"
        if path is not None and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                log.info("%s: moments read from %s", type(self).__name__, path)
                return {name: {k: torch.tensor(v, dtype=torch.float64) for k, v in per_field.items()}
                        for name, per_field in saved["moments"].items()}
        moments = monte_carlo_moments(
            predictor, processes, x0, steps, self.draws, self.seed, clip=self.clip_denoised,
            batch_size=batch_size, device=device,
        )
        if path is not None:
            from bench.io_utils import atomic_write_text

            plain = {name: {k: v.tolist() for k, v in fields.items()} for name, fields in moments.items()}
            atomic_write_text(path, json.dumps({"key": key, "moments": plain}))
        return moments


class AnalyticDPMSampler(_DataMixin, _SteppedSampler):
    """Analytic-DPM: Bao, Li, Zhu & Zhang (2022), "Analytic-DPM: an Analytic Estimate of the Optimal Reverse
    Variance in Diffusion Probabilistic Models", ICLR, arXiv:2201.06503.

    The reverse step ``t -> s`` keeps the mean of ``q_lambda(x_s | x_t, x0_hat)`` (DDPM's posterior mean
    for ``eta = 1``, the DDIM update for ``eta = 0``) and takes the variance that minimises the KL divergence
    to the forward process (their theorem 1), which depends on the data only through
    ``Gamma_t = E ||eps_theta(x_t, t)||^2 / d``. :meth:`prepare` estimates ``Gamma_t`` at the visited steps by
    Monte Carlo (``draws`` per step) from the trained model on the training data; the variances are clipped
    into the bounds of their section 4 (:meth:`VPGaussian.analytic_variance`). A shorter trajectory (``steps``
    evenly spaced, the paper's K-step trajectories) uses the same formula between consecutive visited
    steps. Each field has its own ``Gamma`` and variance (the optimal isotropic variance of each field's
    block). The final step to ``x_0`` returns the mean, as the ancestral sampler does.

    Args:
        steps: number of reverse steps, evenly spaced (``None``: all T).
        eta: ``lambda / sqrt(beta_tilde)`` of the forward family: 1 is Analytic-DDPM, 0 Analytic-DDIM.
        draws: Monte Carlo draws of ``x_t`` per visited step (``M``).
        seed: seed of those draws.
        clip_denoised: clip ``x0_hat`` of bounded fields to their process's range.
    """

    _needs = "Gamma_t estimates (Monte Carlo moments)"

    def __init__(
        self, steps: int | None = 100, eta: float = 1.0, draws: int = 100, seed: int = 0,
        clip_denoised: bool = True,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(steps)
        self._init_data(draws, seed)
        self.eta = float(eta)
        self.clip_denoised = clip_denoised
        #: ``Gamma_t`` by field and visited step, after :meth:`prepare`.
        self.gammas: dict[str, dict[int, float]] = {}

    def prepare(
        self, predictor: Predictor, processes: Mapping[str, Any], x0: Mapping[str, Tensor], timesteps: int,
        cache_dir: str | Path | None = None, fingerprint: str = "", batch_size: int = 512,
        device: torch.device | None = None,
    ) -> None:
        """Estimate ``Gamma_t`` of every field at the visited steps (:func:`monte_carlo_moments`; ``x0`` on
        the CPU, the predictor run on ``device``), cached in ``cache_dir`` (``fingerprint``: the weights')."""
        self._require(processes, "analytic_step", "AnalyticDPMSampler")
        visited = self.schedule(timesteps)
        moments = self._moments(
            predictor, processes, x0, timesteps, visited, cache_dir, fingerprint, batch_size, device
        )
        self.gammas = {k: dict(zip(visited, v.tolist(), strict=True)) for k, v in moments["gamma"].items()}
        self._prepared_for = timesteps

    def variances(self, processes: Mapping[str, Any], timesteps: int) -> dict[str, list[float]]:
        """``sigma*^2`` of every field's reverse steps, in the order the sampler takes them (the last, to
        ``x_0``, is the variance it would have; the sampler takes its mean)."""
        self._check_prepared(timesteps)
        visited = self.schedule(timesteps)
        targets = [*visited[1:], 0]
        return {
            k: [float(processes[k].analytic_variance(t, s, self.gammas[k][t], self.eta))
                for t, s in zip(visited, targets, strict=True)]
            for k in sorted(processes)
        }

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate the reverse process from ``x_T`` (``x``) with the analytic variances."""
        self._require(processes, "analytic_step", "AnalyticDPMSampler")
        self._check_prepared(timesteps)
        variances = self.variances(processes, timesteps)
        x = dict(x)
        for i, (t, s, final) in enumerate(self._transitions(timesteps, x)):
            pred = predictor(x, t)
            z = None if final else noise()
            x = {
                k: processes[k].analytic_step(
                    x[k], pred[k], t, s, None if z is None else z[k], variances[k][i], eta=self.eta,
                    clip=self.clip_denoised,
                )
                for k in x
            }
        return x


def path_cost(costs: Tensor, path: Sequence[int]) -> float:
    """``sum_k costs[t_k, t_{k-1}]`` of a path ``0 = t_0 < t_1 < ... < t_K`` (ascending)."""
    return float(sum(costs[path[k], path[k - 1]] for k in range(1, len(path))))


def dp_path(costs: Tensor, steps: int) -> list[int]:
    """The path ``0 = t_0 < t_1 < ... < t_K = T`` of exactly ``K = steps`` transitions with the least total
    cost ``sum_k costs[t_k, t_{k-1}]``: Watson, Ho, Norouzi & Chan (2021), "Learning to Efficiently Sample
    from Diffusion Models", arXiv:2106.03802.

    Dynamic programming over the number of transitions: ``C_k(t) = min_{s < t} C_{k-1}(s) + costs[t, s]``
    with ``C_0(0) = 0`` and ``C_0(t) = inf`` otherwise; ``O(K T^2)`` time, ``O(K T)`` memory for the
    back-pointers. Ties go to the smaller ``s``.

    Args:
        costs: ``[T + 1, T + 1]``; ``costs[t, s]`` is the cost of the transition ``t -> s`` (entries with
            ``s >= t`` are ignored).
        steps: ``K``, ``1 <= K <= T``.

    Returns:
        The path, ascending, ``K + 1`` steps from 0 to T.
    """
    size = costs.shape[0]
    if costs.dim() != 2 or costs.shape[1] != size:
        raise ValueError(f"costs must be square [T + 1, T + 1], got {tuple(costs.shape)}")
    timesteps = size - 1
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps}, got {steps}")
    index = torch.arange(size)
    table = torch.where(index.view(1, -1) < index.view(-1, 1), costs.to(torch.float64),
                        torch.full((size, size), torch.inf, dtype=torch.float64))
    best = torch.full((size,), torch.inf, dtype=torch.float64)
    best[0] = 0.0
    pointers = []
    for _ in range(steps):
        best, arg = (best.view(1, -1) + table).min(dim=1)
        pointers.append(arg)
    if not torch.isfinite(best[timesteps]):
        raise ValueError("no finite path: the cost table has infinite or NaN entries on every path")
    path = [timesteps]
    for arg in reversed(pointers):
        path.append(int(arg[path[-1]]))
    return path[::-1]


class DPSampler(_DataMixin, AncestralSampler):
    """Ancestral sampling along the ELBO-optimal path of ``K`` steps: Watson, Ho, Norouzi & Chan (2021),
    "Learning to Efficiently Sample from Diffusion Models", arXiv:2106.03802.

    The negative ELBO of a model that takes the reverse steps ``T = t_K -> ... -> t_1 -> 0`` decomposes into
    a sum of per-transition terms ``L(t, s)`` (:meth:`VPGaussian.transition_costs`, summed over fields).
    :meth:`prepare` measures, at every step ``t`` of ``1..T``, the one statistic of the trained model all of
    ``t``'s terms need (``E ||x0 - x0_hat||^2``; ``draws`` Monte Carlo draws per step on the training data),
    so the whole table costs one network evaluation per draw and step, and :func:`dp_path` picks the
    ``K``-step path with the least total. Sampling is :class:`AncestralSampler` along that path (posterior or
    ``beta`` variance, as the table was computed for; no noise at the final step).

    Args:
        steps: ``K``, the number of reverse steps (``None``: all T, which is every step).
        draws: Monte Carlo draws per step.
        seed: seed of those draws.
        variance: the reverse steps' variance, ``"posterior"`` or ``"beta"`` (as :class:`AncestralSampler`).
        clip_denoised: clip ``x0_hat`` of bounded fields to their process's range.
    """

    _needs = "ELBO cost table (Monte Carlo moments)"

    def __init__(
        self, steps: int | None = 100, draws: int = 100, seed: int = 0, variance: str = "posterior",
        clip_denoised: bool = True,
    ) -> None:
        super().__init__(steps, variance=variance, clip_denoised=clip_denoised)
        self._init_data(draws, seed)
        #: The chosen path ``0 = t_0 < ... < t_K = T`` (ascending), after :meth:`prepare`.
        self.path: list[int] = []
        #: ``L[t, s]``, the cost table the path was chosen on (float64 ``[T + 1, T + 1]``), after
        #: :meth:`prepare`.
        self.costs: Tensor | None = None

    def prepare(
        self, predictor: Predictor, processes: Mapping[str, Any], x0: Mapping[str, Tensor], timesteps: int,
        cache_dir: str | Path | None = None, fingerprint: str = "", batch_size: int = 512,
        device: torch.device | None = None,
    ) -> None:
        """Measure the cost table on ``x0`` and choose the path (:func:`dp_path`); the arguments as
        :meth:`AnalyticDPMSampler.prepare`."""
        self._require(processes, "transition_costs", "DPSampler")
        steps = list(range(1, timesteps + 1))
        moments = self._moments(
            predictor, processes, x0, timesteps, steps, cache_dir, fingerprint, batch_size, device
        )
        zero = torch.zeros(1, dtype=torch.float64)
        self.costs = sum(
            processes[k].transition_costs(torch.cat([zero, moments["x0_mse"][k]]), int(x0[k][0].numel()),
                                          self.variance)
            for k in sorted(processes)
        )
        k_steps = timesteps if self.steps is None else min(int(self.steps), timesteps)
        self.path = dp_path(self.costs, k_steps)
        self._prepared_for = timesteps
        even = [0, *(t for t in reversed(_SteppedSampler(self.steps).schedule(timesteps)))]
        log.info("DPSampler: %d-step path with -ELBO %.4g nats (evenly spaced: %.4g), steps %s",
                 k_steps, path_cost(self.costs, self.path), path_cost(self.costs, even), self.path[1:])

    def schedule(self, timesteps: int) -> list[int]:
        """The visited steps ``t`` (descending): the chosen path without 0."""
        self._check_prepared(timesteps)
        return self.path[:0:-1]

    def nfe(self, timesteps: int) -> int:
        """Network evaluations per sample: ``K`` (known before the path is)."""
        return timesteps if self.steps is None else min(int(self.steps), timesteps)

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate the ancestral reverse process along the chosen path from ``x_T`` (``x``)."""
        self._check_prepared(timesteps)
        return super().__call__(predictor, processes, x, timesteps, noise)
