"""GENIE: the DDIM ODE solved by a second-order truncated Taylor method, with a distilled derivative.

Dockhorn, Vahdat & Kreis (2022), "GENIE: Higher-Order Denoising Diffusion Solvers", NeurIPS,
arXiv:2210.05475. For a variance-preserving Gaussian field with ``alpha_t = sqrt(alpha_bar_t)``,
``sigma_t = sqrt(1 - alpha_bar_t)`` and ``gamma_t = sigma_t / alpha_t``, deterministic DDIM is the Euler
method of the probability-flow ODE written in ``x_bar = x / alpha_t`` (the paper's DDIM ODE):

    ``d x_bar / d gamma = eps_theta(x, t)``.

The second-order truncated Taylor method (TTM2) steps ``gamma_t -> gamma_s`` (``h = gamma_s - gamma_t``) as

    ``x_bar_s = x_bar_t + h eps + h^2 / 2 * d eps / d gamma``,

where ``d eps / d gamma`` is the total derivative along the ODE: a Jacobian-vector product of the eps-model in
the direction ``(dx / d gamma, dt / d gamma)``, ``dx / d gamma = alpha eps - gamma alpha^2 x``
(:func:`ode_derivative`, one forward-mode pass). GENIE distils that derivative into a small prediction head
(:class:`GenieHead`), trained on the training data against the exact JVP of the frozen eps-model with the
paper's weight ``gamma_t^2`` (:func:`train_head`), so a sampling step costs one evaluation of the eps-model
plus the head. :class:`GenieSampler` trains the head before sampling (its ``prepare``), caches it in the run
directory and samples; ``exact_jvp=True`` takes the exact JVP at every step instead (the reference the head
is measured against).

A step is written as the DDIM step of the effective prediction ``eps + h / 2 * d eps / d gamma``: each field's
process clips the ``x0_hat`` the step implies, as the ``ddim`` sampler clips its own, and a head that outputs
zero samples exactly as DDIM.

The eps-models here take a discrete step ``t = 1..T``; the ODE is continuous. For the derivative's time term
the network is called with a real-valued ``t``, and ``d gamma / d t`` at the visited (integer) steps is the
central difference of the process's ``gamma`` table (:func:`gamma_table`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
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
from bench.models.embeddings import timestep_embedding
from torch import Tensor, nn

__all__ = [
    "GenieHead",
    "GenieSampler",
    "forward_mode_ad",
    "gamma_table",
    "ode_derivative",
    "relative_error",
    "train_head",
]

log = logging.getLogger(__name__)

SPACINGS = ("uniform", "quadratic")
FIRST_STEPS = ("ddim", "ttm2")


# ------------------------------------------------------------------------------------------------ the ODE
def gamma_table(process: VPGaussian) -> tuple[Tensor, Tensor]:
    """``gamma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` for ``t = 0..T`` and its slope ``d gamma / d t``
    (float64 ``[T + 1]`` each).

    The slope is the central difference ``(gamma_{t+1} - gamma_{t-1}) / 2`` inside, one-sided at ``t = 0``
    and ``t = T``: second-order accurate for a smooth schedule.
    """
    a = process.alpha_bars64
    gamma = ((1.0 - a) / a).sqrt()
    slope = torch.empty_like(gamma)
    slope[1:-1] = (gamma[2:] - gamma[:-2]) / 2.0
    slope[0] = gamma[1] - gamma[0]
    slope[-1] = gamma[-1] - gamma[-2]
    return gamma, slope


def _rows(values: Tensor, like: Tensor) -> Tensor:
    """Per-row ``values`` ``[B]`` (float64) in ``like``'s dtype and device, shaped to broadcast against it."""
    return values.to(like.dtype).to(like.device).view(-1, *([1] * (like.dim() - 1)))


@contextlib.contextmanager
def forward_mode_ad() -> Iterator[None]:
    """Run torch's attention through ops that support forward-mode AD: the fused transformer-encoder fast path
    and the fused attention kernels have no forward derivative, the composite ("math") attention has."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _epsilon(
    predictor: Predictor, processes: Mapping[str, VPGaussian], x: Mapping[str, Tensor], t: Tensor
) -> dict[str, Tensor]:
    """The epsilon of every field (a learned-variance field's network output holds more)."""
    pred = predictor(x, t)
    return {k: processes[k].epsilon(pred[k]) for k in x}


def ode_derivative(
    predictor: Predictor,
    processes: Mapping[str, VPGaussian],
    x: Mapping[str, Tensor],
    t: Tensor,
    eps: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """``d eps_k / d gamma_k`` of every field ``k`` along the DDIM ODE at ``(x, t)``, by one JVP.

    The fields share the network's time ``t``; field ``k`` moves along its own ``x_bar_k`` ODE in its own
    ``gamma_k``, so ``dx_k / dt = (d gamma_k / dt) (alpha_k eps_k - gamma_k alpha_k^2 x_k)``. The JVP is taken
    in the direction ``(dx / dt, 1)`` scaled by ``dt / d gamma`` of the first field (for fields on one
    schedule, as ``ddpm``'s, that is the paper's ``(dx / d gamma, dt / d gamma)``), and each field's output is
    rescaled to its own ``gamma``. The network is called with a real-valued ``t``.

    Args:
        predictor: the eps-model, ``predictor(x, t)``, differentiable by forward-mode AD in ``x`` and ``t``.
        processes: the fields' Gaussian processes.
        x: the current values by field.
        t: the steps ``[B]`` (integers ``1..T``: rows of :func:`gamma_table`).
        eps: the fields' epsilon at ``(x, t)`` when already computed.

    Returns:
        ``d eps / d gamma`` by field, in ``x``'s dtype.
    """
    fields = sorted(x)
    if eps is None:
        eps = _epsilon(predictor, processes, x, t)
    index = t.detach().cpu().long()
    tables = {k: gamma_table(processes[k]) for k in fields}
    reference = tables[fields[0]][1][index]
    tangent: dict[str, Tensor] = {}
    scale: dict[str, Tensor] = {}
    for k in fields:
        gamma, slope = tables[k][0][index], tables[k][1][index]
        alpha = (1.0 + gamma**2).rsqrt()
        ratio = slope / reference
        tangent[k] = _rows(ratio * alpha, x[k]) * eps[k] - _rows(ratio * gamma * alpha**2, x[k]) * x[k]
        scale[k] = 1.0 / ratio
    first = x[fields[0]]
    primals = ({k: x[k] for k in fields}, t.detach().to(first.dtype))
    time_tangent = (1.0 / reference).to(first.dtype).to(first.device)
    with forward_mode_ad():
        _, out = torch.func.jvp(lambda xs, ts: predictor(xs, ts), primals, (tangent, time_tangent))
    return {k: _rows(scale[k], out[k]) * processes[k].epsilon(out[k]) for k in fields}


# ------------------------------------------------------------------------------------------------ the head
class GenieHead(nn.Module):
    """The prediction head of ``d eps / d gamma``: a small set transformer over the crystal's tokens.

    It reads what the eps-model reads and what the eps-model returned: every field's ``x_t`` and ``eps_hat``,
    and the step ``t``. Fields with one vector per item (``[B, C]``, e.g. the lattice) form one global token,
    fields with one row per site (``[B, N, C]``, e.g. types and coordinates) form ``N`` site tokens; a
    sinusoidal embedding of ``t`` is added to every token. Without positional encodings the head is
    permutation-equivariant over sites, as the derivative of an equivariant eps-model is. The output is the
    paper's: three channels ``(k_1, k_2, k_3)`` per coordinate, combined with the field's ``gamma`` as
    ``-k_1 / gamma + k_2 gamma / (1 + gamma^2) + k_3 / (gamma (1 + gamma^2))``. The output layers start at
    zero, so an untrained head predicts 0 and its sampler starts as DDIM.

    Args:
        shapes: each field's shape per item (``[C]`` or ``[N, C]``; the site fields share ``N``).
        width: token width.
        layers: transformer layers.
        heads: attention heads (must divide ``width``).
    """

    def __init__(
        self, shapes: Mapping[str, Sequence[int]], width: int = 32, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        if width < 1 or layers < 1 or heads < 1 or width % heads:
            raise ValueError(f"the head needs a width divisible by its heads, and layers >= 1; got "
                             f"width={width}, layers={layers}, heads={heads}")
        self.shapes = {k: tuple(int(n) for n in shape) for k, shape in sorted(shapes.items())}
        bad = {k: s for k, s in self.shapes.items() if len(s) not in (1, 2)}
        if bad:
            raise ValueError(f"the head takes fields of shape [C] or [N, C] per item, got {bad}")
        self.site_fields = [k for k, s in self.shapes.items() if len(s) == 2]
        self.global_fields = [k for k, s in self.shapes.items() if len(s) == 1]
        if len({self.shapes[k][0] for k in self.site_fields}) > 1:
            raise ValueError(f"the site fields must share their number of sites, got {self.shapes}")
        self.width = int(width)
        site_in = 2 * sum(self.shapes[k][-1] for k in self.site_fields)
        global_in = 2 * sum(self.shapes[k][-1] for k in self.global_fields)
        self.site_in = nn.Linear(site_in, width) if site_in else None
        self.global_in = nn.Linear(global_in, width) if global_in else None
        self.global_token = nn.Parameter(torch.zeros(width))
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.ModuleDict({k: nn.Linear(width, 3 * self.shapes[k][-1]) for k in self.shapes})
        for linear in self.out.values():
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, x: Mapping[str, Tensor], eps: Mapping[str, Tensor], t: Tensor, gamma: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """``d eps / d gamma`` by field from ``x_t`` and ``eps_hat`` (by field), the steps ``t`` ``[B]`` and
        each field's ``gamma_t`` ``[B]``."""
        size = t.shape[0]
        token = self.global_token.expand(size, -1)
        if self.global_in is not None:
            values = torch.cat([v for k in self.global_fields for v in (x[k], eps[k])], dim=-1)
            token = token + self.global_in(values.to(token.dtype))
        tokens = [token.unsqueeze(1)]
        if self.site_in is not None:
            values = torch.cat([v for k in self.site_fields for v in (x[k], eps[k])], dim=-1)
            tokens.append(self.site_in(values.to(token.dtype)))
        hidden = torch.cat(tokens, dim=1)
        time = self.time_mlp(timestep_embedding(t - 1, self.width).to(hidden.dtype))
        hidden = self.norm(self.encoder(hidden + time.unsqueeze(1)))
        out = {}
        for k in self.shapes:
            h = self.out[k](hidden[:, 0] if k in self.global_fields else hidden[:, 1:])
            k1, k2, k3 = h.to(x[k].dtype).chunk(3, dim=-1)
            g = _rows(gamma[k], x[k])
            out[k] = -k1 / g + k2 * g / (1.0 + g**2) + k3 / (g * (1.0 + g**2))
        return out


# ------------------------------------------------------------------------------------------------ training
def _gammas(tables: Mapping[str, tuple[Tensor, Tensor]], t: Tensor) -> dict[str, Tensor]:
    index = t.detach().cpu().long()
    return {k: table[0][index] for k, table in tables.items()}


def _weighted_loss(
    pred: Mapping[str, Tensor], target: Mapping[str, Tensor], gammas: Mapping[str, Tensor]
) -> Tensor:
    """``sum_fields mean(gamma^2 (pred - target)^2)``: the paper's weight, each field averaged over its
    coordinates (as the eps-model's loss averages within a field)."""
    return sum(
        (_rows(gammas[k] ** 2, pred[k]) * (pred[k] - target[k]) ** 2).mean() for k in sorted(pred)
    )


def relative_error(
    pred: Mapping[str, Tensor], target: Mapping[str, Tensor], gammas: Mapping[str, Tensor]
) -> dict[str, float]:
    """Per field, ``sqrt(sum gamma^2 (pred - target)^2 / sum gamma^2 target^2)``: the head's error relative
    to the size of the derivative, in the loss's weighting (1 for a head that predicts 0)."""
    out = {}
    for k in sorted(pred):
        w = _rows(gammas[k] ** 2, pred[k]).double()
        num = (w * (pred[k].double() - target[k].double()) ** 2).sum()
        den = (w * target[k].double() ** 2).sum()
        out[k] = float((num / den).sqrt()) if den > 0 else float("nan")
    return out


def train_head(
    head: GenieHead,
    predictor: Predictor,
    processes: Mapping[str, VPGaussian],
    x0: Mapping[str, Tensor],
    timesteps: int,
    iters: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device | None = None,
    validation: int = 256,
) -> dict[str, Any]:
    """Distil ``d eps / d gamma`` of the frozen ``predictor`` into ``head`` (in place): GENIE's training.

    Each iteration draws ``batch_size`` training rows, steps ``t`` uniformly in ``1..T`` and noise, forms
    ``x_t`` by each process's ``q_sample``, computes the target ``d eps / d gamma`` by :func:`ode_derivative`
    (the exact JVP of the frozen eps-model, no gradient) and takes one Adam step on ``sum_fields
    mean(gamma^2 (head - target)^2)`` (gradients clipped to norm 1, as the paper's code). The learning rate
    rises linearly over the first tenth of the iterations, then decays linearly to 0. A validation batch of
    ``validation`` rows, drawn first, measures the head before and after (:func:`relative_error`). All draws
    come from ``generator`` (on the CPU).

    Returns:
        ``losses`` (every iteration's), ``loss_first`` / ``loss_last`` (means over the first and last tenth),
        ``relative_error_before`` / ``relative_error`` (by field, on the validation batch) and ``seconds``.
    """
    from tqdm.auto import tqdm

    device = device if device is not None else torch.device("cpu")
    fields = sorted(processes)
    rows = x0[fields[0]].shape[0]
    tables = {k: gamma_table(processes[k]) for k in fields}

    Batch = tuple[dict[str, Tensor], Tensor, dict[str, Tensor], dict[str, Tensor]]

    def draw(size: int) -> Batch:
        index = torch.randint(0, rows, (size,), generator=generator)
        t = torch.randint(1, timesteps + 1, (size,), generator=generator)
        noise = {k: torch.randn((size, *x0[k].shape[1:]), generator=generator) for k in fields}
        t = t.to(device)
        x_t = {k: processes[k].q_sample(x0[k][index].to(device), t, noise[k].to(device)) for k in fields}
        with torch.no_grad():
            eps = _epsilon(predictor, processes, x_t, t)
            target = ode_derivative(predictor, processes, x_t, t, eps)
        return x_t, t, eps, target

    def check(batch: Batch) -> dict[str, float]:
        x_t, t, eps, target = batch
        head.eval()
        with torch.no_grad():
            pred = head(x_t, eps, t, _gammas(tables, t))
        head.train()
        return relative_error(pred, target, _gammas(tables, t))

    began = time.perf_counter()
    held_out = draw(validation)
    before = check(held_out)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    warmup = max(1, iters // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) * max(0.0, 1.0 - k / max(iters, 1))
    )
    losses: list[float] = []
    head.train()
    with tqdm(range(iters), desc="genie head", unit="it", leave=False, mininterval=2.0) as bar:
        for _ in bar:
            x_t, t, eps, target = draw(batch_size)
            gammas = _gammas(tables, t)
            loss = _weighted_loss(head(x_t, eps, t, gammas), target, gammas)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"genie head: the loss is {value} after {len(losses)} steps; lower the sampler's lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), max_norm=1.0)
            optimizer.step()
            schedule.step()
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    after = check(held_out)
    head.eval()
    tenth = max(1, len(losses) // 10)
    return {
        "losses": losses,
        "loss_first": sum(losses[:tenth]) / tenth if losses else float("nan"),
        "loss_last": sum(losses[-tenth:]) / tenth if losses else float("nan"),
        "relative_error_before": before,
        "relative_error": after,
        "seconds": time.perf_counter() - began,
    }


# ------------------------------------------------------------------------------------------------ the sampler
class GenieSampler(_SteppedSampler):
    """GENIE (Dockhorn, Vahdat & Kreis 2022, "GENIE: Higher-Order Denoising Diffusion Solvers", NeurIPS,
    arXiv:2210.05475): the DDIM ODE solved by the second-order truncated Taylor method, with
    ``d eps / d gamma`` from a distilled head (or, with ``exact_jvp``, the exact JVP).

    :meth:`prepare` (the sample stage calls it with the run's training split) trains a :class:`GenieHead` for
    ``iters`` Adam steps (:func:`train_head`) and caches it in ``cache_dir``, keyed by the head's settings,
    the schedules, the data and the eps-model's weights. The head does not depend on ``steps``, ``spacing``
    or ``first_step``, so one head serves every grid. Each reverse step ``t -> s`` evaluates the eps-model
    and the head once each and takes every field's DDIM step with ``eps + (gamma_s - gamma_t) / 2 *
    d eps / d gamma``; ``x_T`` is the only draw, and the final step returns the clipped ``x0_hat``. With
    ``first_step="ddim"`` the step from ``t = T`` is the plain DDIM (Euler) step, whose local error keeps the
    global order 2. Gaussian (``VPGaussian``) processes only.

    Args:
        steps: reverse steps (network evaluations per sample with the head).
        spacing: ``"uniform"`` (the ``ddim`` sampler's evenly spaced steps) or ``"quadratic"`` (DDIM's
            quadratic striding, ``t_j = T (j / steps)^2`` rounded half up, denser near the data).
        iters: the head's Adam steps.
        batch_size: training rows per step.
        lr: Adam's peak learning rate (a linear warm-up over the first tenth, then a linear decay to 0).
        width: the head's token width.
        layers: the head's transformer layers.
        heads: the head's attention heads.
        seed: seed of the head's initial weights and of every draw of its training.
        exact_jvp: take the exact JVP of the eps-model at every step instead of the head (nothing to train;
            a step costs one evaluation and one forward-mode JVP, counted as 3 evaluations).
        first_step: ``"ddim"`` (the step from ``T`` is the Euler step) or ``"ttm2"``.
        clip_denoised: clip the ``x0_hat`` each step implies to the process's bound, as the ``ddim`` sampler.
    """

    def __init__(
        self, steps: int = 10, spacing: str = "uniform", iters: int = 2000, batch_size: int = 128,
        lr: float = 1e-3, width: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
        exact_jvp: bool = False, first_step: str = "ddim", clip_denoised: bool = True,
    ) -> None:
        if steps is None or int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if first_step not in FIRST_STEPS:
            raise ValueError(f"first_step must be one of {FIRST_STEPS}, got {first_step!r}")
        if iters < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"iters, batch_size and lr must be positive, got {iters}, {batch_size}, {lr}")
        if width < 1 or layers < 1 or heads < 1 or width % heads:
            raise ValueError(f"the head needs a width divisible by its heads, and layers >= 1; got "
                             f"width={width}, layers={layers}, heads={heads}")
        super().__init__(int(steps))
        self.spacing = spacing
        self.iters = int(iters)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.width, self.layers, self.heads = int(width), int(layers), int(heads)
        self.seed = int(seed)
        self.exact_jvp = bool(exact_jvp)
        self.first_step = first_step
        self.clip_denoised = bool(clip_denoised)
        #: Whether the sample stage must prepare the sampler: a head to train; the exact JVP needs nothing.
        self.needs_data = not self.exact_jvp
        #: The trained head, after :meth:`prepare`.
        self.head: GenieHead | None = None
        #: What :meth:`prepare` did: ``trained`` and :func:`train_head`'s summary (without the losses).
        self.report: dict[str, Any] = {}
        self._prepared_for: int | None = None

    # -------------------------------------------------------------- the grid
    def schedule(self, timesteps: int) -> list[int]:
        """The visited steps ``t`` (descending, in ``1..T``)."""
        if self.spacing == "uniform":
            return super().schedule(timesteps)
        k = int(self.steps)
        grid = {min(timesteps, max(1, math.floor(timesteps * (j / k) ** 2 + 0.5))) for j in range(1, k + 1)}
        return sorted(grid, reverse=True)

    def nfe(self, timesteps: int) -> int:
        """Network evaluations per sample: one per step (the head's cost apart); with ``exact_jvp``, three per
        Taylor step (the evaluation and the JVP, counted as two)."""
        steps = len(self.schedule(timesteps))
        if not self.exact_jvp:
            return steps
        taylor = steps - 1 if self.first_step == "ddim" else steps
        return steps + 2 * taylor

    @staticmethod
    def _require_gaussian(processes: Mapping[str, Any]) -> None:
        _require_gaussian(processes, "GenieSampler solves the DDIM ODE")

    # -------------------------------------------------------------- the head
    def _key(self, processes: Mapping[str, VPGaussian], x0: Mapping[str, Tensor], timesteps: int,
             fingerprint: str) -> dict[str, Any]:
        return {
            "sampler": type(self).__name__,
            "version": 1,
            "timesteps": int(timesteps),
            "iters": self.iters,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "head": {"width": self.width, "layers": self.layers, "heads": self.heads},
            "seed": self.seed,
            "processes": {
                k: {"type": type(p).__name__,
                    "alpha_bars": hashlib.sha256(p.alpha_bars64.numpy().tobytes()).hexdigest()}
                for k, p in sorted(processes.items())
            },
            "data": _fingerprint(x0),
            "model": fingerprint,
        }

    def prepare(
        self, predictor: Predictor, processes: Mapping[str, Any], x0: Mapping[str, Tensor], timesteps: int,
        cache_dir: str | Path | None = None, fingerprint: str = "", batch_size: int = 512,
        device: torch.device | None = None,
    ) -> None:
        """Train the head on ``x0`` (the training data in the processes' space, by field, on the CPU) against
        the eps-model ``predictor``, or read it from ``cache_dir`` (``fingerprint``: the weights'). With
        ``exact_jvp`` nothing is trained. ``batch_size`` (the sample stage's rows per evaluation) is not
        used: the training batch is the sampler's own."""
        self._require_gaussian(processes)
        self.head, self._prepared_for = None, None
        if self.exact_jvp:
            self.report = {"trained": False, "exact_jvp": True}
            self._prepared_for = timesteps
            return
        device = device if device is not None else torch.device("cpu")
        x0 = {k: x0[k].detach().cpu().float() for k in sorted(processes)}
        shapes = {k: tuple(v.shape[1:]) for k, v in x0.items()}
        cache = CachedWeights(cache_dir, "GenieSampler", self._key(processes, x0, timesteps, fingerprint))
        with torch.random.fork_rng(devices=[]):  # seeded initial weights; the global state is left alone
            torch.manual_seed(self.seed)
            head = GenieHead(shapes, self.width, self.layers, self.heads).to(device)
        saved = cache.load()
        if saved is not None:
            log.info("genie: the head read from %s", cache.path)
            head.load_state_dict(saved["state"])
            self.report = {"trained": False, **json.loads(saved["report"])}
        else:
            generator = torch.Generator().manual_seed(self.seed)
            with torch.enable_grad():
                report = train_head(head, predictor, processes, x0, timesteps, self.iters, self.batch_size,
                                    self.lr, generator, device=device)
            cache.save(head.state_dict(), report.get("losses", ()),
                       report={k: v for k, v in report.items() if k != "losses"})
            self.report = {"trained": True, **{k: v for k, v in report.items() if k != "losses"}}
            log.info("genie head: %d iterations in %.1f s, loss %.4g -> %.4g (first and last tenth), "
                     "relative error %s -> %s", self.iters, report["seconds"], report["loss_first"],
                     report["loss_last"], _short(report["relative_error_before"]),
                     _short(report["relative_error"]))
        head.to(device).eval().requires_grad_(False)
        self.head = head
        self._prepared_for = timesteps

    # -------------------------------------------------------------- sampling
    def derivative(
        self, predictor: Predictor, processes: Mapping[str, VPGaussian], x: Mapping[str, Tensor], t: Tensor,
        eps: Mapping[str, Tensor],
    ) -> dict[str, Tensor]:
        """``d eps / d gamma`` at ``(x, t)``: the exact JVP with ``exact_jvp``, else the head's."""
        if self.exact_jvp:
            return ode_derivative(predictor, processes, x, t, eps)
        if self.head is None:
            raise RuntimeError("GenieSampler has no head: call prepare first")
        index = t.detach().cpu().long()
        return self.head(x, eps, t, {k: gamma_table(processes[k])[0][index] for k in x})

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Integrate the DDIM ODE with TTM2 from ``x_T`` (``x``); ``noise`` is not used."""
        self._require_gaussian(processes)
        if not self.exact_jvp and (self.head is None or self._prepared_for != timesteps):
            raise RuntimeError(
                "GenieSampler needs its trained head: call the model's prepare_sampler(train_batch) first "
                "(the sample stage does it), or set exact_jvp=true"
                + ("" if self._prepared_for in (None, timesteps) else
                   f"; it was prepared for T = {self._prepared_for}, not T = {timesteps}")
            )
        gammas = {k: gamma_table(processes[k])[0] for k in processes}
        x = dict(x)
        for i, (t, s, _) in enumerate(self._transitions(timesteps, x)):
            with torch.no_grad():
                eps = _epsilon(predictor, processes, x, t)
                if i == 0 and self.first_step == "ddim":
                    step = eps
                else:
                    slope = self.derivative(predictor, processes, x, t, eps)
                    t_cpu, s_cpu = t.detach().cpu(), s.detach().cpu()
                    step = {k: eps[k] + _rows((gammas[k][s_cpu] - gammas[k][t_cpu]) / 2.0, eps[k]) * slope[k]
                            for k in x}
                # the DDIM step of the effective epsilon (VPGaussian's: a learned-variance field's reads its
                # epsilon half, and this is only the epsilon)
                x = {k: VPGaussian.ddim_step(processes[k], x[k], step[k], t, s, None, eta=0.0,
                                             clip=self.clip_denoised)
                     for k in x}
        return x


def _short(errors: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.3g}" for k, v in sorted(errors.items())) + "}"
