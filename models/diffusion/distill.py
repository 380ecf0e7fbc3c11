"""Progressive distillation of deterministic DDIM into few-step students, as a sampler of Gaussian diffusion.

Salimans & Ho (2022), "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR,
arXiv:2202.00512. Applied to an already trained model whose fields are all variance-preserving Gaussian
processes (:class:`~bench.models.diffusion.processes.VPGaussian`): the teacher is the trained epsilon model,
sampled with deterministic DDIM at ``start_steps`` evenly spaced steps. Each round trains a student,
initialised from its teacher, to take in one DDIM step what the teacher takes in two (the paper's
algorithm 2), then the student becomes the teacher, halving the steps ``N -> N/2 -> ... -> steps``.
:class:`DistillSampler` runs the rounds once on the run's training split (its ``prepare``), caches each
round's student, and samples with the final student's deterministic DDIM at ``steps`` steps.

Notation (``a = alpha_bar_t`` of the process, ``alpha_t = sqrt(a)``, ``sigma_t = sqrt(1 - a)``): the DDIM
step ``t -> s`` from a prediction ``x0_hat`` of the data is

    ``z_s = alpha_s x0_hat + sigma_s / sigma_t (z_t - alpha_t x0_hat)``,

the update of :meth:`VPGaussian.ddim_step` written with ``x0_hat`` instead of epsilon. Two teacher steps
``t -> t' -> t''`` land on ``z_t''``; the student's one step ``t -> t''`` lands there exactly when its
prediction is

    ``x~ = (z_t'' - sigma_t'' / sigma_t z_t) / (alpha_t'' - sigma_t'' / sigma_t alpha_t)``

(algorithm 2's target; ``x~ = z_0`` when ``t'' = 0``), which the student regresses with the paper's
truncated-SNR weight ``max(SNR_t, 1)`` on the x-space error. The error is that of the clipped ``x0_hat``
the student's step takes (the gradient passes as if unclipped), so a student equal to its teacher has no
loss where the teacher's prediction leaves the field's bound.

The student must keep ``x0_hat`` well defined as ``alpha_t -> 0``, where an epsilon model's
``x0_hat = (z_t - sigma_t eps) / alpha_t`` divides by almost zero (the paper's section 4), and must start as
its teacher. :class:`CappedEpsilonStudent` does both with the teacher's own network and output: it divides
by ``max(alpha_t, min_alpha)`` instead of ``alpha_t``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from bench.models.diffusion.processes import VPGaussian
from bench.models.diffusion.samplers import (
    NoiseSource,
    Predictor,
    _fingerprint,
    _require_gaussian,
    _SteppedSampler,
)
from bench.models.diffusion.weights_cache import CachedWeights
from torch import Tensor, nn

__all__ = [
    "DistillSampler",
    "X0Predictor",
    "CappedEpsilonStudent",
    "ddim_from_x0",
    "distill_round",
    "distillation_target",
    "epsilon_teacher",
    "nested_grid",
    "progressive_distillation",
]

log = logging.getLogger(__name__)

X0Predictor = Callable[[Mapping[str, Tensor], Tensor], dict[str, Tensor]]
"""``x0_hat = model(z_t, t)`` per field, unclipped, with ``t`` the step ``[B]`` in ``1..T``."""


# ------------------------------------------------------------------------------------------------ arithmetic
def nested_grid(timesteps: int, steps: int) -> list[int]:
    """``0 = t_0 < t_1 < ... < t_steps = T`` with ``t_j = round(j T / steps)`` (halves rounded up).

    Grids of ``N`` and ``2N`` steps are nested (``t_j`` of the first is ``t_2j`` of the second), so every
    student step spans exactly two steps of its teacher, as the paper's ``t' = t - 0.5 / N``,
    ``t'' = t - 1 / N`` in continuous time.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (the training steps), got {steps}")
    return [(2 * j * timesteps + steps) // (2 * steps) for j in range(steps + 1)]


def _as_rows(values: Tensor, like: Tensor) -> Tensor:
    """Per-row ``values`` ``[B]`` (formed in float64) in ``like``'s dtype and device, shaped to broadcast
    against it."""
    return values.to(like.dtype).to(like.device).view(-1, *([1] * (like.dim() - 1)))


def _per_row(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """float64 ``values[t]`` as ``like``'s dtype and device, shaped to broadcast against it."""
    return _as_rows(values[t.detach().cpu().long()], like)


def _alpha_sigma(process: VPGaussian, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha_t, sigma_t)`` at steps ``t`` ``[B]`` (formed in float64), shaped to broadcast against
    ``like`` in its dtype and device."""
    a = process.alpha_bars64[t.detach().cpu().long()]
    return _as_rows(a.sqrt(), like), _as_rows((1.0 - a).sqrt(), like)


def _clipped(process: VPGaussian, x0: Tensor, clip: bool) -> Tensor:
    return x0.clamp(-process.clip, process.clip) if clip and process.clip is not None else x0


def ddim_from_x0(
    process: VPGaussian, x_t: Tensor, x0: Tensor, t: Tensor, s: Tensor, clip: bool = True
) -> Tensor:
    """The deterministic DDIM step ``t -> s`` from ``x0_hat`` (clipped to the process's bound when ``clip``):
    ``alpha_s x0_hat + sigma_s / sigma_t (x_t - alpha_t x0_hat)``; ``x0_hat`` itself at ``s = 0``.

    Args:
        process: the field's Gaussian process.
        x_t: current values.
        x0: the prediction of the data.
        t: current steps ``[B]`` in ``1..T``.
        s: target steps ``[B]``, ``0 <= s < t``.
        clip: clip ``x0`` first.
    """
    x0 = _clipped(process, x0, clip)
    alpha_t, sigma_t = _alpha_sigma(process, t, x_t)
    alpha_s, sigma_s = _alpha_sigma(process, s, x_t)
    return alpha_s * x0 + sigma_s / sigma_t * (x_t - alpha_t * x0)


def distillation_target(process: VPGaussian, x_t: Tensor, x_s: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """Algorithm 2's target: the ``x0_hat`` whose DDIM step ``t -> s`` (:func:`ddim_from_x0`, unclipped) lands
    on ``x_s``, ``(x_s - sigma_s / sigma_t x_t) / (alpha_s - sigma_s / sigma_t alpha_t)``; ``x_s`` at
    ``s = 0``. The coefficients are formed in float64."""
    a = process.alpha_bars64
    t_cpu, s_cpu = t.detach().cpu().long(), s.detach().cpu().long()
    ratio = ((1.0 - a[s_cpu]) / (1.0 - a[t_cpu])).sqrt()
    scale = 1.0 / (a[s_cpu].sqrt() - ratio * a[t_cpu].sqrt())
    return _as_rows(scale, x_t) * (x_s - _as_rows(ratio, x_t) * x_t)


def epsilon_teacher(predictor: Predictor, processes: Mapping[str, VPGaussian]) -> X0Predictor:
    """The ``x0_hat`` (unclipped) of an epsilon model, as every reverse step of its processes forms it."""

    def teacher(x_t: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        pred = predictor(x_t, t)
        return {k: processes[k].denoise(x_t[k], pred[k], t, clip=False) for k in x_t}

    return teacher


# ------------------------------------------------------------------------------------------------ the student
class CappedEpsilonStudent(nn.Module):
    """A student with the teacher's network and output, whose ``x0_hat`` divides by
    ``max(alpha_t, min_alpha)``: ``x0_hat = (z_t - sigma_t eps_tilde) / max(alpha_t, min_alpha)``.

    Where ``alpha_t >= min_alpha`` this is the teacher's own epsilon form, so a student initialised with the
    teacher's weights starts as the teacher there (to float rounding). Where ``alpha_t < min_alpha`` (the last
    steps before ``T``, where an epsilon model's ``x0_hat`` multiplies the network's error by ``1 / alpha_t``)
    it is a prediction of ``x`` through a fixed affine map of the network's output with gain at most
    ``1 / min_alpha``: ``x0_hat`` stays well defined as ``alpha_t -> 0`` and its sensitivity to the network
    stays bounded, which is the point of the paper's x, "x and epsilon" and v parameterisations (section 4).

    Args:
        network: a copy of the teacher's module (:meth:`from_teacher`).
        method: the name of its epsilon-prediction method, called as ``method(z_t, t)``.
        processes: the fields' Gaussian processes (not saved; rebuilt from the model's config).
        min_alpha: the floor of the divisor, in ``(0, 1]``.
    """

    def __init__(
        self, network: nn.Module, method: str, processes: Mapping[str, VPGaussian], min_alpha: float
    ) -> None:
        super().__init__()
        if not 0.0 < min_alpha <= 1.0:
            raise ValueError(f"min_alpha must be in (0, 1], got {min_alpha}")
        self.network = network
        self.method = method
        self.processes = dict(processes)
        self.min_alpha = float(min_alpha)

    @classmethod
    def from_teacher(
        cls, predictor: Predictor, processes: Mapping[str, VPGaussian], min_alpha: float,
        keep: Sequence[Any] = (),
    ) -> CappedEpsilonStudent:
        """The student initialised from the epsilon model ``predictor``, a bound method of a torch module (the
        model's ``predict``): a deep copy of the module, trainable, sharing the objects in ``keep`` (e.g. the
        sampler the module holds) instead of copying them.

        Raises:
            TypeError: ``predictor`` is not a method of a torch module.
        """
        module = getattr(predictor, "__self__", None)
        if not isinstance(module, nn.Module):
            raise TypeError(
                "the distill sampler copies the teacher's network: the predictor must be a method of a torch "
                f"module (the model's predict), got {predictor!r}"
            )
        memo: dict[int, Any] = {id(obj): obj for obj in keep}
        trainer = getattr(module, "_trainer", None)
        if trainer is not None:
            memo[id(trainer)] = None
        network = copy.deepcopy(module, memo)
        network.requires_grad_(True)
        return cls(network, predictor.__func__.__name__, processes, min_alpha)  # type: ignore[attr-defined]

    def forward(self, x_t: Mapping[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        """``x0_hat`` per field (unclipped) at steps ``t`` ``[B]``."""
        out = getattr(self.network, self.method)(x_t, t)
        x0 = {}
        for k, z in x_t.items():
            alpha, sigma = _alpha_sigma(self.processes[k], t, z)
            x0[k] = (z - sigma * self.processes[k].epsilon(out[k])) / alpha.clamp_min(self.min_alpha)
        return x0


# ------------------------------------------------------------------------------------------------ training
def _round_seed(seed: int, round_index: int) -> int:
    """The seed of round ``r``'s draws: one generator per round, so a round's draws do not depend on how
    many rounds follow it."""
    return (int(seed) * 1_000_003 + int(round_index)) % (2**63 - 1)


def distill_round(
    teacher: X0Predictor,
    student: nn.Module,
    processes: Mapping[str, VPGaussian],
    x0: Mapping[str, Tensor],
    grid: Sequence[int],
    iters: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    clip: bool = True,
    device: torch.device | None = None,
    desc: str = "distill",
) -> list[float]:
    """One round of progressive distillation (Salimans & Ho 2022, algorithm 2), training ``student`` in place.

    ``grid`` is the teacher's nested grid ``0 = g_0 < ... < g_2N = T`` (:func:`nested_grid`); the student
    takes the ``N`` steps ``g_2i -> g_2i-2``. Each iteration draws ``batch_size`` training rows, a student
    step
    ``t = g_2i`` (``i`` uniform in ``1..N``) and noise, forms ``z_t`` by each process's ``q_sample``, runs two
    teacher DDIM steps ``t -> g_2i-1 -> g_2i-2`` (``x0_hat`` clipped to each bound when ``clip``, as the
    sampler does), and takes one Adam step on
    ``sum_fields mean(max(SNR_t, 1) (x~ - x0_hat_student(z_t, t))^2)`` with :func:`distillation_target` ``x~``
    (``x0_hat_student`` clipped as its step clips it when ``clip``, with the gradient of the unclipped one).
    The learning rate rises linearly over the first tenth of the round (Adam's first steps move every weight
    by about ``lr`` whatever its gradient, which would knock the student off its teacher) and then decays
    linearly to 0. All draws come from ``generator`` (on the CPU).

    Args:
        teacher: the teacher's ``x0_hat``.
        student: the module being trained (``x0_hat`` per field; train mode).
        processes: the fields' Gaussian processes.
        x0: the training data by field, each ``[N, ...]`` (on the CPU).
        grid: the teacher's steps, ascending, an even number of intervals.
        iters: optimiser steps.
        batch_size: rows per step.
        lr: Adam's peak learning rate.
        generator: seeded CPU generator of every draw.
        clip: clip the teacher's ``x0_hat`` in its steps.
        device: where the networks run (default: the CPU).
        desc: the progress bar's label.

    Returns:
        The loss of every iteration.
    """
    from tqdm.auto import tqdm

    if (len(grid) - 1) % 2:
        raise ValueError(f"the teacher's grid needs an even number of steps, got {len(grid) - 1}")
    device = device if device is not None else torch.device("cpu")
    fields = sorted(processes)
    rows = x0[fields[0]].shape[0]
    steps = (len(grid) - 1) // 2
    table = torch.tensor(list(grid), dtype=torch.long)
    snr = {k: (p.alpha_bars64 / (1.0 - p.alpha_bars64)).clamp_min(1.0) for k, p in processes.items()}
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    warmup = max(1, iters // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) * max(0.0, 1.0 - k / max(iters, 1))
    )
    losses: list[float] = []
    student.train()
    with tqdm(range(iters), desc=desc, unit="it", leave=False, mininterval=2.0) as bar:
        for _ in bar:
            index = torch.randint(0, rows, (batch_size,), generator=generator)
            i = torch.randint(1, steps + 1, (batch_size,), generator=generator)
            noise = {k: torch.randn((batch_size, *x0[k].shape[1:]), generator=generator) for k in fields}
            t, mid, s = (table[2 * i].to(device), table[2 * i - 1].to(device), table[2 * i - 2].to(device))
            z_t = {k: processes[k].q_sample(x0[k][index].to(device), t, noise[k].to(device)) for k in fields}
            with torch.no_grad():
                x_hat = teacher(z_t, t)
                z_mid = {k: ddim_from_x0(processes[k], z_t[k], x_hat[k], t, mid, clip) for k in fields}
                x_hat = teacher(z_mid, mid)
                z_s = {k: ddim_from_x0(processes[k], z_mid[k], x_hat[k], mid, s, clip) for k in fields}
                target = {k: distillation_target(processes[k], z_t[k], z_s[k], t, s) for k in fields}
            pred = student(z_t, t)
            if clip:  # the value of the clipped x0_hat its step takes, the gradient of the unclipped one
                pred = {k: v + (_clipped(processes[k], v, True) - v).detach() for k, v in pred.items()}
            loss = sum(
                ((pred[k] - target[k]) ** 2 * _per_row(snr[k], t, pred[k])).mean() for k in fields
            )
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{desc}: the distillation loss is {value} after {len(losses)} steps; "
                    "lower the sampler's lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    return losses


class _RoundCache:
    """One file per round's student in ``cache_dir``, named and keyed by everything the student depends on."""

    def __init__(self, cache_dir: str | Path | None, key: Mapping[str, Any]) -> None:
        self.dir = cache_dir
        self.key = dict(key)

    def _entry(self, round_index: int, steps: int) -> CachedWeights:
        key = {**self.key, "round": int(round_index), "student_steps": int(steps)}
        return CachedWeights(self.dir, f"DistillSampler-{steps}steps", key)

    def load(self, round_index: int, steps: int) -> dict[str, Tensor] | None:
        entry = self._entry(round_index, steps)
        saved = entry.load()
        if saved is None:
            return None
        log.info("distill: the %d-step student read from %s", steps, entry.path)
        return saved["state"]

    def save(
        self, round_index: int, steps: int, state: Mapping[str, Tensor], losses: Sequence[float]
    ) -> None:
        self._entry(round_index, steps).save(state, losses)


def progressive_distillation(
    teacher: X0Predictor,
    student: nn.Module,
    processes: Mapping[str, VPGaussian],
    x0: Mapping[str, Tensor],
    timesteps: int,
    start_steps: int,
    steps: int,
    iters_per_round: int,
    batch_size: int,
    lr: float,
    seed: int,
    clip: bool = True,
    device: torch.device | None = None,
    cache: _RoundCache | None = None,
    keep: Sequence[Any] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Every round ``N = start_steps / 2 -> start_steps / 4 -> ... -> steps`` (:func:`distill_round`), each
    student initialised from its teacher (round 1: ``student`` as given; later rounds: a copy of the previous
    student, which becomes the frozen teacher). Round ``r`` draws from its own generator, seeded by ``seed``
    and ``r``. With ``cache``, the last round already trained is read back and only the later rounds run.
    The copies share the objects in ``keep`` instead of copying them (as :meth:`CappedEpsilonStudent.
    from_teacher`).

    Returns:
        The final student (eval mode, frozen) and a report: ``rounds`` (one dict per round: ``steps``,
        ``trained``, ``loss_first``, ``loss_last``, ``seconds``) and ``trained_rounds``.
    """
    rounds = _rounds(start_steps, steps)
    device = device if device is not None else torch.device("cpu")
    plan = [(r, start_steps >> r) for r in range(1, rounds + 1)]
    start = 0
    if cache is not None:
        for r, n in reversed(plan):
            state = cache.load(r, n)
            if state is not None:
                student.load_state_dict(state)
                start = r
                break
    report: dict[str, Any] = {"rounds": [{"steps": n, "trained": False} for _, n in plan[:start]]}
    current = student
    if start > 0:
        teacher = _frozen(current)
    for r, n in plan[start:]:
        if r > 1:
            current = copy.deepcopy(current, {id(obj): obj for obj in keep})
            current.requires_grad_(True)
        began = time.perf_counter()
        generator = torch.Generator().manual_seed(_round_seed(seed, r))
        losses = distill_round(
            teacher, current, processes, x0, nested_grid(timesteps, 2 * n), iters_per_round, batch_size, lr,
            generator, clip=clip, device=device, desc=f"distill round {r}/{rounds} ({2 * n} -> {n} steps)",
        )
        seconds = time.perf_counter() - began
        head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10):]
        entry = {"steps": n, "trained": True, "loss_first": sum(head) / len(head),
                 "loss_last": sum(tail) / len(tail), "seconds": seconds}
        report["rounds"].append(entry)
        log.info("distill round %d/%d: %d -> %d steps, %d iterations in %.1f s, loss %.4g -> %.4g (first and "
                 "last tenth)", r, rounds, 2 * n, n, len(losses), seconds, entry["loss_first"],
                 entry["loss_last"])
        if cache is not None:
            cache.save(r, n, current.state_dict(), losses)
        teacher = _frozen(current)
    report["trained_rounds"] = rounds - start
    return _frozen(current), report


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def _rounds(start_steps: int, steps: int) -> int:
    """``R`` with ``start_steps = steps 2^R``, ``R >= 1``."""
    ratio = start_steps // steps if steps >= 1 else 0
    if steps < 1 or start_steps <= steps or start_steps % steps or ratio & (ratio - 1):
        raise ValueError(
            f"start_steps must be steps times a power of two (at least 2): got start_steps={start_steps}, "
            f"steps={steps}"
        )
    return (start_steps // steps).bit_length() - 1


# ------------------------------------------------------------------------------------------------ the sampler
class DistillSampler(_SteppedSampler):
    """Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
    Models", ICLR, arXiv:2202.00512): deterministic DDIM with a student distilled from the trained model.

    :meth:`prepare` (the sample stage calls it with the run's training split) distils the model's
    deterministic DDIM at ``start_steps`` into a student of ``steps`` steps in ``log2(start_steps / steps)``
    rounds of ``iters_per_round`` Adam steps (:func:`progressive_distillation`), the student parameterised by
    :class:`CappedEpsilonStudent`; each round's student is cached in ``cache_dir``, keyed by the settings, the
    schedules, the data and the weights, so sampling again trains nothing and a coarser ``steps`` with the
    same ``start_steps`` trains only the rounds it adds. Sampling is the student's deterministic DDIM
    (:func:`ddim_from_x0`) on the nested grid of ``steps`` steps (:func:`nested_grid`): ``x_T`` is the only
    draw, and the final step returns the clipped ``x0_hat``. Gaussian (``VPGaussian``) processes only.

    Args:
        steps: the student's steps (its NFE per sample).
        start_steps: the teacher's DDIM steps, ``steps`` times a power of two.
        iters_per_round: optimiser steps per round.
        batch_size: training rows per optimiser step.
        lr: Adam's peak learning rate in each round (a linear warm-up over its first tenth, then a linear
            decay to 0).
        min_alpha: the student's floor on ``alpha_t`` in ``x0_hat = (z_t - sigma_t eps) / alpha_t``
            (:class:`CappedEpsilonStudent`).
        seed: seed of every draw of the distillation.
        clip_denoised: clip ``x0_hat`` of bounded fields to their process's range in the teacher's and the
            student's steps.
    """

    needs_data = True

    def __init__(
        self, steps: int = 8, start_steps: int = 256, iters_per_round: int = 300, batch_size: int = 128,
        lr: float = 1e-4, min_alpha: float = 0.05, seed: int = 0, clip_denoised: bool = True,
    ) -> None:
        self.rounds = _rounds(int(start_steps), int(steps))
        if iters_per_round < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"iters_per_round, batch_size and lr must be positive, got {iters_per_round}, "
                             f"{batch_size}, {lr}")
        if not 0.0 < min_alpha <= 1.0:
            raise ValueError(f"min_alpha must be in (0, 1], got {min_alpha}")
        super().__init__(int(steps))
        self.start_steps = int(start_steps)
        self.iters_per_round = int(iters_per_round)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.min_alpha = float(min_alpha)
        self.seed = int(seed)
        self.clip_denoised = bool(clip_denoised)
        #: The final student, after :meth:`prepare`.
        self.student: nn.Module | None = None
        #: What :meth:`prepare` did, round by round (see :func:`progressive_distillation`).
        self.report: dict[str, Any] = {}
        self._prepared_for: int | None = None

    def schedule(self, timesteps: int) -> list[int]:
        """The visited steps ``t`` (descending): the nested grid of ``steps`` steps without 0."""
        return nested_grid(timesteps, int(self.steps))[:0:-1]

    @staticmethod
    def _require_gaussian(processes: Mapping[str, Any]) -> None:
        _require_gaussian(processes, "DistillSampler distils deterministic DDIM")

    def prepare(
        self, predictor: Predictor, processes: Mapping[str, Any], x0: Mapping[str, Tensor], timesteps: int,
        cache_dir: str | Path | None = None, fingerprint: str = "", batch_size: int = 512,
        device: torch.device | None = None,
    ) -> None:
        """Distil the epsilon model ``predictor`` (a method of a torch module: the model's ``predict``) on
        ``x0`` (the training data in the processes' space, by field, on the CPU), reading and writing each
        round's student in ``cache_dir`` (``fingerprint``: the weights'). ``batch_size`` (the sample stage's
        rows per evaluation) is not used: the training batch is the sampler's own."""
        self._require_gaussian(processes)
        self.student, self._prepared_for = None, None
        if self.start_steps > timesteps:
            raise ValueError(f"start_steps={self.start_steps} exceeds the model's {timesteps} training steps")
        x0 = {k: x0[k].detach().cpu().float() for k in sorted(processes)}
        key = {
            "sampler": type(self).__name__,
            "version": 1,
            "timesteps": int(timesteps),
            "start_steps": self.start_steps,
            "iters_per_round": self.iters_per_round,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "student": {"parameterisation": "capped_epsilon", "min_alpha": self.min_alpha},
            "seed": self.seed,
            "clip_denoised": self.clip_denoised,
            "processes": {
                k: {"type": type(p).__name__, "clip": p.clip,
                    "alpha_bars": hashlib.sha256(p.alpha_bars64.numpy().tobytes()).hexdigest()}
                for k, p in sorted(processes.items())
            },
            "data": _fingerprint(x0),
            "model": fingerprint,
        }
        with torch.enable_grad():
            student = CappedEpsilonStudent.from_teacher(predictor, processes, self.min_alpha, keep=(self,))
            self.student, self.report = progressive_distillation(
                epsilon_teacher(predictor, processes), student, processes, x0, timesteps, self.start_steps,
                int(self.steps), self.iters_per_round, self.batch_size, self.lr, self.seed,
                clip=self.clip_denoised, device=device, cache=_RoundCache(cache_dir, key), keep=(self,),
            )
        self._prepared_for = timesteps

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate the student's deterministic DDIM from ``x_T`` (``x``); ``predictor`` (the teacher) and
        ``noise`` are not used."""
        self._require_gaussian(processes)
        if self.student is None or self._prepared_for != timesteps:
            raise RuntimeError(
                "DistillSampler needs its distilled student: call the model's prepare_sampler(train_batch) "
                "first (the sample stage does it)"
                + ("" if self._prepared_for in (None, timesteps) else
                   f"; it was prepared for T = {self._prepared_for}, not T = {timesteps}")
            )
        x = dict(x)
        with torch.no_grad():
            for t, s, _ in self._transitions(timesteps, x):
                x0 = self.student(x, t)
                x = {k: ddim_from_x0(processes[k], x[k], x0[k], t, s, self.clip_denoised) for k in x}
        return x
