"""DDSS: a few-step GGDM sampler whose parameters are fitted by differentiating a sample-quality loss.

Watson, Chan, Ho & Norouzi (2022), "Learning Fast Samplers for Diffusion Models by Differentiating Through
Sample Quality", ICLR, arXiv:2202.05830. The paper's Generalized Gaussian Diffusion Models (GGDM) are
non-Markovian ``K``-step samplers whose step from ``x_{t_n}`` to ``x_{t_{n+1}}`` (visited times ``T = t_0 >
t_1 > ... > t_K = 0``) is Gaussian with a mean that combines the current state and the network's predictions
at the current and every earlier step, and a per-step noise scale. Differentiable Diffusion Sampler Search
(DDSS) fits those degrees of freedom (the combination weights, the noise scales and the timesteps) by gradient
descent on a sample-quality loss (the paper's: KID on Inception features), backpropagating through all ``K``
steps of the chain with the trained network frozen, with the reparameterisation trick for every Gaussian draw
and gradient rematerialisation (each step's network call is recomputed in the backward pass instead of storing
its activations).

The step implemented here, for every field (its own weights) and visited step ``n = 0..K-1``::

    x0_hat_n = clip((x_{t_n} - sqrt(1 - a(t_n)) eps_hat_n) / sqrt(a(t_n)))           (a = alpha_bar)
    eps_n    = (x_{t_n} - sqrt(a(t_n)) x0_hat_n) / sqrt(1 - a(t_n))                  (eps_hat when unclipped)
    x_{t_{n+1}} = (sqrt(a(t_{n+1})) + c_n) x0_hat_n + (sqrt(1 - a(t_{n+1})) + d_n) eps_n
                  + sum_{m < n} (u_{nm} x0_hat_m + v_{nm} eps_m) + sigma_n z_n,       z_n ~ N(0, I)

with ``eps_hat_n = eps_theta(x_{t_n}, t_n)``, no noise at the last step (``sigma_{K-1} = 0``: the sample is
the last mean). Because ``x_{t_m} = sqrt(a(t_m)) x0_hat_m + sqrt(1 - a(t_m)) eps_m`` (the identity when
unclipped), the span of ``{x0_hat_m, eps_m}_{m <= n}`` is the span of the paper's ``{x_{t_m}, eps_hat_m}``:
this is GGDM's mean over all earlier states and predictions, written in the basis in which DDIM is one point:
with ``c = d = u = v = sigma = 0`` and the ``ddim`` sampler's grid it is deterministic DDIM (Song, Meng &
Ermon 2021, eq. 12) step for step, clipping included, bit for bit (tested). The timesteps are real-valued:
``a(t)`` interpolates each process's ``alpha_bar`` table linearly between integer steps (exact at integers)
and the network is called with the real ``t``, so their gradient flows both through the coefficients and
through the network's time input.

:class:`GGDM` holds those parameters (initialised at DDIM); :func:`fit_ggdm` is DDSS: every iteration draws
``x_T`` and all the step noise, runs the chain with each network call under :func:`torch.utils.checkpoint`,
scores the samples by :func:`kid_mmd2` against a batch of real rows in a feature space, and takes an Adam step
on the GGDM parameters only (``torch.autograd.grad`` with respect to them; the network's weights get no
gradient and do not change). The timesteps are kept ordered by a projection after every step.

The loss on crystals (:func:`crystal_features`). KID's Inception features have no crystal analogue in the
suite that is differentiable, and the suite's own metrics (CrystalNN fingerprints, SMACT, coverage) are not.
The loss is KID's estimator (the unbiased squared MMD with the cubic polynomial kernel ``(a . b / D + 1)^3``)
on features computed from the sample in the model's own representation: the composition (softmax of each
site's type scores, averaged over the slots), the six standardised lattice parameters, and translation- and
permutation-invariant periodic pair features of the fractional coordinates (``cos(2 pi m (f_i - f_j))`` per
axis and harmonic, averaged over ordered pairs of filled sites). The three groups are centred and scaled on
the training rows so that each carries the same total variance. The reference rows are the run's training
split (what ``prepare`` is given), never the split the board scores on.

Left out: the paper's Inception features, image datasets and optimisation budget (here 300 Adam steps of 64
chains on a CPU); any constraint tying the learned coefficients to the marginals of a forward process (GGDM's
forward family has them; DDSS, as here, treats the sampler's coefficients as free parameters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from bench.models.diffusion.samplers import (
    NoiseSource,
    Predictor,
    _fingerprint,
    _require_gaussian,
    _SteppedSampler,
)
from bench.models.diffusion.weights_cache import CachedWeights
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "CRYSTAL_FIELDS",
    "DDSSSampler",
    "FeatureScaler",
    "GGDM",
    "crystal_features",
    "fit_ggdm",
    "kid_mmd2",
]

log = logging.getLogger(__name__)

CRYSTAL_FIELDS = ("atom_types", "frac_coords", "lattice")
"""The fields :func:`crystal_features` reads, in the ``ddpm`` model's diffusion space."""

Features = Callable[[Mapping[str, Tensor]], Tensor]
"""``features(x0) -> [B, D]``: a differentiable feature map of a batch of samples."""


# ------------------------------------------------------------------------------------------------ the loss
def kid_mmd2(x: Tensor, y: Tensor, degree: int = 3) -> Tensor:
    """The unbiased estimate of the squared MMD between the rows of ``x`` ``[m, D]`` and ``y`` ``[n, D]``
    with the polynomial kernel ``k(a, b) = (a . b / D + 1)^degree``: KID (Binkowski, Sutherland, Arbel &
    Gretton 2018, "Demystifying MMD GANs", ICLR, arXiv:1801.01401) for ``degree = 3``, the loss of DDSS.

    ``sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1)) - 2 mean k(x_i, y_j)``;
    its expectation is the population MMD^2, so it is near 0 (and may be negative) for two draws of one
    distribution. Differentiable in both arguments.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid_mmd2 needs [m, D] and [n, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"kid_mmd2 needs at least 2 rows on each side, got {m} and {n}")
    dim = x.shape[1]

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T / dim + 1.0) ** degree

    kxx, kyy = kernel(x, x), kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2.0 * kernel(x, y).mean()


def crystal_features(x: Mapping[str, Tensor], harmonics: int = 2, sharpness: float = 5.0) -> Tensor:
    """Differentiable, permutation-invariant features ``[B, (K + 1) + 6 + 3 harmonics]`` of crystals in the
    ``ddpm`` model's diffusion space (types ``2 onehot - 1`` with class 0 the empty slot, coordinates
    ``2 f - 1``, the codec's standardised lattice).

    - composition: ``softmax(sharpness * types)`` of each slot, averaged over the ``N`` slots (the empty class
      included, so it also carries the number of atoms);
    - lattice: the six standardised parameters as they are;
    - structure: for each axis and harmonic ``m = 1..harmonics``, ``cos(2 pi m (f_i - f_j))`` averaged over
      ordered pairs of slots ``i != j`` weighted by ``o_i o_j``, with ``o`` a slot's probability of being
      filled. It depends on coordinate differences only (invariant to translations and to moving an atom by a
      lattice vector: it is periodic) and is symmetric in the pair.

    Args:
        x: ``atom_types`` ``[B, N, K + 1]``, ``frac_coords`` ``[B, N, 3]``, ``lattice`` ``[B, 6]``.
        harmonics: how many harmonics of the pair features.
        sharpness: the softmax's inverse temperature on the type scores (a clean one-hot's margin is 2).
    """
    types, coords, lattice = x["atom_types"], x["frac_coords"], x["lattice"]
    probs = torch.softmax(sharpness * types, dim=-1)
    composition = probs.mean(dim=1)
    filled = 1.0 - probs[..., 0]  # [B, N]
    weight = filled.unsqueeze(2) * filled.unsqueeze(1)
    weight = weight * (1.0 - torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device))
    total = weight.sum(dim=(1, 2)).clamp_min(1e-6)
    # 2 pi (f_i - f_j) = pi (x_i - x_j) in the diffusion space's coordinates x = 2 f - 1
    diff = math.pi * (coords.unsqueeze(2) - coords.unsqueeze(1))  # [B, N, N, 3]
    pairs = [
        (weight.unsqueeze(-1) * torch.cos(m * diff)).sum(dim=(1, 2)) / total.unsqueeze(-1)
        for m in range(1, harmonics + 1)
    ]
    return torch.cat([composition, lattice, *pairs], dim=-1)


def _crystal_groups(num_types: int, harmonics: int) -> list[int]:
    """The sizes of :func:`crystal_features`' three groups (composition, lattice, structure)."""
    return [num_types, 6, 3 * harmonics]


class FeatureScaler:
    """Centre features on reference rows and scale each group of columns so that every group carries the same
    total variance, ``D / G`` (``D`` columns, ``G`` groups): the whole vector then has the total variance of
    ``D`` unit-variance features, which KID's kernel ``a . b / D`` assumes, and no group outweighs another by
    its width (the composition has one column per element, the lattice six).

    Args:
        reference: ``[N, D]`` reference features (the training rows).
        groups: the column counts of the groups, summing to ``D`` (None: one group).
        floor: the smallest standard deviation a group is scaled by (a group that barely varies in the
            reference, e.g. the ideal coordinates of a single prototype, would otherwise blow up any
            deviation).
    """

    def __init__(self, reference: Tensor, groups: Sequence[int] | None = None, floor: float = 0.05) -> None:
        width = reference.shape[1]
        groups = [width] if groups is None else [int(g) for g in groups]
        if sum(groups) != width or any(g < 1 for g in groups):
            raise ValueError(f"groups {groups} must be positive and sum to the {width} feature columns")
        reference = reference.detach().double()
        self.mean = reference.mean(dim=0)
        scale = torch.empty(width, dtype=torch.float64)
        start = 0
        for size in groups:
            block = reference[:, start:start + size]
            spread = block.var(dim=0, unbiased=True).sum().sqrt() if block.shape[0] > 1 else torch.tensor(0.0)
            # total variance of the group after scaling: size_total / len(groups)
            target = math.sqrt(width / len(groups))
            scale[start:start + size] = max(float(spread), floor * math.sqrt(size)) / target
            start += size
        self.scale = scale
        self.groups = groups

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean.to(features)) / self.scale.to(features)


# ------------------------------------------------------------------------------------------------ the family
def _alpha_bar(table: Tensor, t: Tensor) -> Tensor:
    """``alpha_bar`` at a real-valued step ``t`` (0-d): linear interpolation of ``table`` (``[T + 1]``,
    float32) between integer steps, exactly ``table[t]`` at an integer ``t``."""
    top = table.shape[0] - 1
    lo = t.detach().floor().long().clamp(0, top)
    hi = (lo + 1).clamp(max=top)
    frac = t - lo.to(t.dtype)
    return table[lo] + frac * (table[hi] - table[lo])


class GGDM(nn.Module):
    """The parameters of a ``K``-step GGDM sampler (see the module docstring), initialised at deterministic
    DDIM on the ``ddim`` sampler's evenly spaced grid.

    Parameters, per field ``k`` (``weights[k][name]``): ``c``, ``d`` ``[K]`` (corrections
    of DDIM's weights of the current ``x0_hat`` and ``eps``), ``u``, ``v`` ``[K, K]`` (weights of earlier
    steps' ``x0_hat`` and ``eps``; only ``m < n`` is used), ``sigma`` ``[K - 1]`` (noise scales of the steps
    before the last); shared: ``shift`` ``[K - 1]``, the visited steps ``t_1..t_{K-1}`` as offsets from the
    grid in units of ``T`` (``t_0 = T`` and ``t_K = 0`` are fixed).

    Args:
        fields: the field names, in the order noise is drawn for them.
        timesteps: ``T``.
        steps: ``K``, ``1 <= K <= T``.
        history: use earlier steps' predictions (``u``, ``v``); False keeps them at 0.
        learn_times: fit the visited steps; False keeps the grid.
        learn_sigma: fit the noise scales; False keeps them at 0 (a deterministic sampler).
    """

    def __init__(
        self, fields: Sequence[str], timesteps: int, steps: int, history: bool = True,
        learn_times: bool = True, learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= int(steps) <= int(timesteps):
            raise ValueError(f"steps must be in 1..{timesteps}, got {steps}")
        self.fields = list(fields)
        self.history = bool(history)
        self.timesteps = int(timesteps)
        self.steps = int(steps)
        k = self.steps
        grid = _SteppedSampler(k).schedule(self.timesteps)
        self.register_buffer("grid", torch.tensor(grid, dtype=torch.float32))
        self.shift = nn.Parameter(torch.zeros(k - 1), requires_grad=learn_times)
        self.weights = nn.ModuleDict({
            name: nn.ParameterDict({
                "c": nn.Parameter(torch.zeros(k)),
                "d": nn.Parameter(torch.zeros(k)),
                "u": nn.Parameter(torch.zeros(k, k), requires_grad=history),
                "v": nn.Parameter(torch.zeros(k, k), requires_grad=history),
                "sigma": nn.Parameter(torch.zeros(k - 1), requires_grad=learn_sigma),
            })
            for name in self.fields
        })

    def times(self) -> Tensor:
        """The visited steps ``t_0 = T > t_1 > ... > t_{K-1} >= 1``, then ``t_K = 0`` (float32
        ``[K + 1]``)."""
        inner = self.grid[1:] + self.timesteps * self.shift
        return torch.cat([self.grid[:1], inner, self.grid.new_zeros(1)])

    @torch.no_grad()
    def project_(self, gap: float = 1.0) -> None:
        """Keep the visited steps ordered, at least ``gap`` apart and in ``[1, T]``: clamp each from above by
        its predecessor, then from below by its successor (feasible when ``(K - 1) gap <= T - 1``)."""
        tau = self.times()[:-1].double().tolist()
        for n in range(1, len(tau)):
            tau[n] = min(tau[n], tau[n - 1] - gap)
        floor = 1.0
        for n in range(len(tau) - 1, 0, -1):
            tau[n] = max(tau[n], floor)
            floor = tau[n] + gap
        inner = torch.tensor(tau[1:], dtype=torch.float64)
        self.shift.copy_(((inner - self.grid[1:].double()) / self.timesteps).to(self.shift.dtype))

    def schedule(self) -> list[int]:
        """The visited steps rounded to integers (descending), for display and ``nfe``."""
        return [int(round(float(t))) for t in self.times()[:-1].detach()]

    def run(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        noise: NoiseSource,
        clip: bool = True,
        remat: bool = False,
    ) -> dict[str, Tensor]:
        """Integrate the GGDM chain from ``x_T`` (``x``): ``K`` network calls; ``noise()`` is called once
        before each step but the last, whatever ``sigma`` is, so a shared generator stays in step. ``remat``
        wraps each network call in :func:`torch.utils.checkpoint.checkpoint` (recomputed in the backward
        pass)."""
        times = self.times()
        x = dict(x)
        first = x[self.fields[0]]
        history: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in self.fields}
        for n in range(self.steps):
            t_now, t_next = times[n], times[n + 1]
            t_net = t_now.to(first.device).expand(first.shape[0])
            pred = self._predict(predictor, x, t_net, remat)
            last = n + 1 == self.steps
            z = None if last else noise()
            out = {}
            for k in self.fields:
                process = processes[k]
                table = process.alpha_bars.to(first.device)
                a_t = _alpha_bar(table, t_now.to(first.device))
                a_s = _alpha_bar(table, t_next.to(first.device))
                eps = process.epsilon(pred[k])
                x0 = (x[k] - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
                if clip and process.clip is not None:
                    x0 = x0.clamp(-process.clip, process.clip)
                    eps = (x[k] - a_t.sqrt() * x0) / (1.0 - a_t).sqrt()
                w = self.weights[k]
                mean = (a_s.sqrt() + w["c"][n]) * x0 + ((1.0 - a_s).sqrt() + w["d"][n]) * eps
                if self.history:
                    for m, (x0_m, eps_m) in enumerate(history[k]):
                        mean = mean + w["u"][n, m] * x0_m + w["v"][n, m] * eps_m
                    history[k].append((x0, eps))
                out[k] = mean if z is None else mean + w["sigma"][n] * z[k]
            x = out
        return x

    def _predict(
        self, predictor: Predictor, x: Mapping[str, Tensor], t: Tensor, remat: bool
    ) -> dict[str, Tensor]:
        if not remat:
            return predictor(x, t)
        names = list(x)

        def call(t_in: Tensor, *values: Tensor) -> dict[str, Tensor]:
            return predictor(dict(zip(names, values, strict=True)), t_in)

        return checkpoint(call, t, *(x[k] for k in names), use_reentrant=False)


# ------------------------------------------------------------------------------------------------ DDSS
def _draw(
    shapes: Mapping[str, Sequence[int]], size: int, count: int, generator: torch.Generator,
    device: torch.device,
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """``x_T`` and ``count`` step-noise draws for ``size`` rows (every field, in ``shapes``' order)."""
    def one() -> dict[str, Tensor]:
        return {k: torch.randn((size, *shape), generator=generator).to(device) for k, shape in shapes.items()}

    return one(), [one() for _ in range(count)]


def _replay(draws: Sequence[dict[str, Tensor]]) -> NoiseSource:
    it: Iterator[dict[str, Tensor]] = iter(draws)
    return lambda: next(it)


def fit_ggdm(
    ggdm: GGDM,
    predictor: Predictor,
    processes: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int]],
    features: Features,
    reference: Tensor,
    scaler: FeatureScaler,
    iters: int,
    batch_size: int,
    real_batch_size: int,
    lr: float,
    generator: torch.Generator,
    eval_size: int = 512,
    clip: bool = True,
    device: torch.device | None = None,
    remat: bool = True,
) -> dict[str, Any]:
    """DDSS (in place on ``ggdm``): ``iters`` Adam steps on the KID between ``batch_size`` samples of the
    chain and ``real_batch_size`` reference rows drawn with replacement, in ``scaler``'s space of
    ``features``.

    Every draw (``x_T``, the step noise, the reference rows) comes from ``generator`` (CPU). Gradients are
    taken with respect to the GGDM parameters only; the network is never updated. The learning rate rises
    linearly over the first tenth of the steps, then decays linearly to 0; after every step the visited steps
    are projected back into order (:meth:`GGDM.project_`). Before and after, the KID of ``eval_size`` samples
    from fixed draws (made first) against all reference rows is measured: ``kid_before`` is DDIM's when
    ``ggdm`` starts at its initial values.

    Args:
        reference: ``[N, D]`` features of the reference rows (the training split), not scaled.
        shapes: every field's shape per item, in the order the sampler draws noise.

    Returns:
        ``losses`` (every step's), ``loss_first`` / ``loss_last`` (means of the first and last tenth),
        ``kid_before`` / ``kid_after`` and ``seconds``.
    """
    from tqdm.auto import tqdm

    device = device if device is not None else torch.device("cpu")
    ggdm.to(device)
    real = scaler(reference.to(device).float())
    count = ggdm.steps - 1
    held_x, held_noise = _draw(shapes, eval_size, count, generator, device)

    def held_out_kid() -> float:
        with torch.no_grad():
            out = ggdm.run(predictor, processes, held_x, _replay(held_noise), clip=clip)
            return float(kid_mmd2(scaler(features(out)), real))

    began = time.perf_counter()
    before = held_out_kid()
    params = [p for p in ggdm.parameters() if p.requires_grad]
    losses: list[float] = []
    if params and iters > 0:
        optimizer = torch.optim.Adam(params, lr=lr)
        warmup = max(1, iters // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: min(1.0, (k + 1) / warmup) * max(0.0, 1.0 - k / max(iters, 1))
        )
        desc = f"ddss {ggdm.steps} steps"
        with tqdm(range(iters), desc=desc, unit="it", leave=False, mininterval=2.0) as bar:
            for _ in bar:
                x_t, noise = _draw(shapes, batch_size, count, generator, device)
                rows = torch.randint(0, real.shape[0], (real_batch_size,), generator=generator).to(device)
                out = ggdm.run(predictor, processes, x_t, _replay(noise), clip=clip, remat=remat)
                loss = kid_mmd2(scaler(features(out)), real[rows])
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"ddss: the loss is {value} after {len(losses)} steps; lower the sampler's lr"
                    )
                grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                ggdm.project_()
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    after = held_out_kid()
    tenth = max(1, len(losses) // 10)
    return {
        "losses": losses,
        "loss_first": sum(losses[:tenth]) / tenth if losses else None,
        "loss_last": sum(losses[-tenth:]) / tenth if losses else None,
        "kid_before": before,
        "kid_after": after,
        "seconds": time.perf_counter() - began,
    }


# ------------------------------------------------------------------------------------------------ the sampler
class DDSSSampler(_SteppedSampler):
    """DDSS (Watson, Chan, Ho & Norouzi 2022, arXiv:2202.05830): a ``K``-step GGDM sampler fitted on the
    run's training data by differentiating a KID loss through the whole sampling chain.

    :meth:`prepare` (the sample stage calls it with the run's training split) builds a :class:`GGDM` at
    deterministic DDIM, fits it for ``iters`` Adam steps (:func:`fit_ggdm`; crystal features
    :func:`crystal_features`, scaled by :class:`FeatureScaler` on the training rows) and caches its parameters
    in ``cache_dir``, keyed by every setting, the schedules, the data and the network's weights. Sampling runs
    the fitted chain: ``K`` network evaluations; ``noise`` is drawn before every step but the last. Gaussian
    (``VPGaussian``) processes on the ``ddpm`` model's three fields only.

    Args:
        steps: ``K``, the network evaluations per sample.
        iters: Adam steps of the fit (0: the DDIM starting point, unfitted).
        batch_size: chains per Adam step (each backpropagated through ``K`` network calls).
        real_batch_size: training rows per Adam step.
        lr: Adam's peak learning rate (a linear warm-up over the first tenth, then a linear decay to 0).
        seed: seed of every draw of the fit.
        history: let each step use earlier steps' predictions (GGDM's non-Markovian mean).
        learn_times: fit the visited steps.
        learn_sigma: fit per-step noise scales (False: a deterministic sampler).
        eval_size: chains of the held-out KID measured before and after the fit.
        harmonics: harmonics of the coordinate pair features.
        clip_denoised: clip ``x0_hat`` to each field's bound, as the ``ddim`` sampler does.
    """

    needs_data = True

    def __init__(
        self, steps: int = 10, iters: int = 300, batch_size: int = 64, real_batch_size: int = 256,
        lr: float = 5e-3, seed: int = 0, history: bool = True, learn_times: bool = True,
        learn_sigma: bool = True, eval_size: int = 512, harmonics: int = 2, clip_denoised: bool = True,
    ) -> None:
        if steps is None or int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if iters < 0 or batch_size < 2 or real_batch_size < 2 or eval_size < 2 or lr <= 0 or harmonics < 1:
            raise ValueError(
                f"need iters >= 0, batch sizes >= 2, lr > 0 and harmonics >= 1; got iters={iters}, "
                f"batch_size={batch_size}, real_batch_size={real_batch_size}, eval_size={eval_size}, "
                f"lr={lr}, harmonics={harmonics}"
            )
        super().__init__(int(steps))
        self.iters = int(iters)
        self.batch_size = int(batch_size)
        self.real_batch_size = int(real_batch_size)
        self.lr = float(lr)
        self.seed = int(seed)
        self.history = bool(history)
        self.learn_times = bool(learn_times)
        self.learn_sigma = bool(learn_sigma)
        self.eval_size = int(eval_size)
        self.harmonics = int(harmonics)
        self.clip_denoised = bool(clip_denoised)
        #: The fitted sampler, after :meth:`prepare`.
        self.ggdm: GGDM | None = None
        #: What :meth:`prepare` did: ``fitted`` (False when read from the cache), what it was fitted on and
        #: :func:`fit_ggdm`'s summary without the losses.
        self.report: dict[str, Any] = {}
        self._prepared_for: int | None = None

    def schedule(self, timesteps: int) -> list[int]:
        """The visited steps (descending; the fitted ones rounded, once prepared)."""
        if self.ggdm is not None and self._prepared_for == timesteps:
            return self.ggdm.schedule()
        return super().schedule(timesteps)

    def nfe(self, timesteps: int) -> int:
        """Network evaluations per sample: ``K``."""
        return min(int(self.steps), timesteps)

    @staticmethod
    def _require(processes: Mapping[str, Any]) -> None:
        _require_gaussian(processes, "DDSSSampler fits a Gaussian (GGDM) sampler")
        if set(processes) != set(CRYSTAL_FIELDS):
            raise TypeError(
                f"DDSSSampler's loss reads the ddpm model's fields {list(CRYSTAL_FIELDS)}, got "
                f"{sorted(processes)}: use it with model=ddpm"
            )

    def _key(self, processes: Mapping[str, Any], x0: Mapping[str, Tensor], timesteps: int,
             fingerprint: str) -> dict[str, Any]:
        return {
            "sampler": type(self).__name__,
            "version": 1,
            "timesteps": int(timesteps),
            "steps": int(self.steps),
            "iters": self.iters,
            "batch_size": self.batch_size,
            "real_batch_size": self.real_batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "family": {"history": self.history, "learn_times": self.learn_times,
                       "learn_sigma": self.learn_sigma},
            "loss": {"kernel": "kid_cubic", "features": "crystal", "harmonics": self.harmonics},
            "eval_size": self.eval_size,
            "clip_denoised": self.clip_denoised,
            "processes": {
                k: {"type": type(p).__name__, "clip": p.clip,
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
        """Fit the GGDM parameters against the frozen ``predictor`` on ``x0`` (the training data in the
        processes' space, by field, on the CPU), or read them from ``cache_dir`` (``fingerprint``: the
        weights'). ``batch_size`` (the sample stage's rows per evaluation) is not used."""
        self._require(processes)
        self.ggdm, self._prepared_for = None, None
        device = device if device is not None else torch.device("cpu")
        fields = sorted(processes)
        x0 = {k: x0[k].detach().cpu().float() for k in fields}
        rows = int(x0[fields[0]].shape[0])
        if rows < 2:
            raise ValueError(f"DDSSSampler needs at least 2 training rows, got {rows}")
        ggdm = GGDM(fields, timesteps, min(int(self.steps), timesteps), self.history, self.learn_times,
                    self.learn_sigma)
        key = self._key(processes, x0, timesteps, fingerprint)
        cache = CachedWeights(cache_dir, "DDSSSampler", key)
        fitted_on = {"data": "the run's training split", "rows": rows, "data_sha256": key["data"][:16]}
        saved = cache.load()
        if saved is not None:
            log.info("ddss: the fitted sampler read from %s", cache.path)
            ggdm.load_state_dict(saved["state"])
            self.report = {"fitted": False, **json.loads(saved["report"])}
        else:
            features = self._features
            reference = features(x0)
            scaler = FeatureScaler(reference, _crystal_groups(x0["atom_types"].shape[-1], self.harmonics))
            shapes = {k: tuple(x0[k].shape[1:]) for k in fields}
            generator = torch.Generator().manual_seed(self.seed)
            with torch.enable_grad():
                summary = fit_ggdm(
                    ggdm, predictor, processes, shapes, features, reference, scaler, self.iters,
                    self.batch_size, self.real_batch_size, self.lr, generator, eval_size=self.eval_size,
                    clip=self.clip_denoised, device=device,
                )
            report = {
                **fitted_on,
                **{k: v for k, v in summary.items() if k != "losses"},
                "iters": self.iters,
                "times": ggdm.schedule(),
                "sigma": {k: [round(float(s), 5) for s in ggdm.weights[k]["sigma"]] for k in fields},
            }
            cache.save(ggdm.state_dict(), summary["losses"], report=report)
            self.report = {"fitted": True, **report}
            log.info("ddss: %d-step sampler fitted in %.1f s (%d iterations): loss %s -> %s, held-out KID "
                     "%.4g (DDIM) -> %.4g; steps %s", ggdm.steps, summary["seconds"], self.iters,
                     _fmt(summary["loss_first"]), _fmt(summary["loss_last"]), summary["kid_before"],
                     summary["kid_after"], ggdm.schedule())
        ggdm.to(device).eval().requires_grad_(False)
        self.ggdm = ggdm
        self._prepared_for = timesteps

    def _features(self, x: Mapping[str, Tensor]) -> Tensor:
        return crystal_features(x, harmonics=self.harmonics)

    def __call__(
        self,
        predictor: Predictor,
        processes: Mapping[str, Any],
        x: Mapping[str, Tensor],
        timesteps: int,
        noise: NoiseSource,
    ) -> dict[str, Tensor]:
        """Run the fitted GGDM chain from ``x_T`` (``x``)."""
        self._require(processes)
        if self.ggdm is None or self._prepared_for != timesteps:
            raise RuntimeError(
                "DDSSSampler needs its fitted parameters: call the model's prepare_sampler(train_batch) "
                "first (the sample stage does it)"
                + ("" if self._prepared_for in (None, timesteps) else
                   f"; it was prepared for T = {self._prepared_for}, not T = {timesteps}")
            )
        with torch.no_grad():
            return self.ggdm.run(predictor, processes, x, noise, clip=self.clip_denoised)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
