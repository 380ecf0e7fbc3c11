"""Analytic-DPM (Bao et al. 2022) and the ELBO-optimal DP path (Watson et al. 2021) as ``ddpm`` samplers,
checked against answers known independently of the code under test.

The Gaussian data set. Let every coordinate of ``x0`` be drawn from ``N(mu, s^2)`` independently, and
``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` with ``a = alpha_bar_t``. Then ``(x0, eps, x_t)`` are jointly Gaussian
per coordinate, ``v_t := Var(x_t) = a s^2 + 1 - a`` and ``Cov(eps, x_t) = sqrt(1 - a)``, so the exact
epsilon-predictor (the regression of ``eps`` on ``x_t``) is

    ``eps*(x_t) = E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / v_t``.

It is Gaussian with variance ``(1 - a) / v_t`` per coordinate, hence

    ``Gamma_t = E ||eps*(x_t)||^2 / d = (1 - a) / (a s^2 + 1 - a)``,

and a Monte Carlo mean of ``M`` draws of ``||eps*||^2 / d`` (a scaled chi-square with ``d`` degrees of
freedom) has standard deviation ``Gamma_t sqrt(2 / (M d))``. The reverse conditionals are Gaussian too, and
are read off the joint Gaussian without Analytic-DPM's formula:

- DDPM (Markov forward, ``eta = 1``): ``x_t = sqrt(a_t / a_s) x_s + noise``, ``Cov(x_s, x_t) = sqrt(a_t / a_s)
  v_s``, so ``Var(x_s | x_t) = v_s - (a_t / a_s) v_s^2 / v_t`` (with ``v_0 = s^2``);
- DDIM (``eta = 0``): ``x_s = sqrt(a_s) x0 + sqrt(1 - a_s) (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)`` given
  ``(x0, x_t)``, so ``Var(x_s | x_t) = c^2 Var(x0 | x_t)`` with ``c = sqrt(a_s) - sqrt((1 - a_s) a_t / (1 -
  a_t))`` and ``Var(x0 | x_t) = s^2 - a_t s^4 / v_t``.

Analytic-DPM's optimal isotropic reverse variance is exactly this conditional variance (the KL-optimal
Gaussian matches the true conditional's second moment), so its estimate from the Monte Carlo ``Gamma_t`` must
agree within the Monte Carlo error propagated through ``sigma^2 = lambda^2 + c^2 (1 - a) / a (1 - Gamma_t)``.
Near ``t = T`` that propagation multiplies the error by ``(1 - a) / a``, which is why the paper clips.

The DP is checked against a brute-force search over all paths, and the ELBO terms against KL divergences and
log-densities computed by ``torch.distributions`` from the reverse steps' own means.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import hydra
import pytest
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.diffusion.ddpm import CrystalDDPM
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.diffusion.samplers import (
    AnalyticDPMSampler,
    AncestralSampler,
    DPSampler,
    dp_path,
    monte_carlo_moments,
    path_cost,
    respaced_timesteps,
)
from bench.models.diffusion.schedule import alpha_bars_for
from torch.distributions import Normal, kl_divergence

from bench.config import compose
from tests.conftest import TINY_TRANSFORMER, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

# The Gaussian data set: per field, the mean, the standard deviation and the per-sample shape.
GAUSS = {"a": (0.3, 0.5, (4, 3)), "b": (-1.0, 1.5, (5,))}


def gaussian_setup(timesteps: int = 100, schedule: str = "cosine", rows: int = 4000):
    """``(processes, x0, predictor, alpha_bar)``: unclipped VP processes, ``rows`` draws of the Gaussian data
    set, its exact epsilon-predictor, and ``alpha_bar_t`` for ``t = 0..T`` (float64)."""
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars_for(schedule, timesteps)])
    processes = {k: VPGaussian(timesteps, schedule, clip=None) for k in GAUSS}
    g = torch.Generator().manual_seed(123)
    x0 = {k: mu + sd * torch.randn((rows, *shape), generator=g) for k, (mu, sd, shape) in GAUSS.items()}

    def predictor(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for k, value in x_t.items():
            mu, sd, _ = GAUSS[k]
            a = alpha_bar[t].view(-1, *([1] * (value.dim() - 1)))
            out[k] = ((1 - a).sqrt() * (value.double() - a.sqrt() * mu) / (a * sd**2 + 1 - a)).float()
        return out

    return processes, x0, predictor, alpha_bar


def closed_form_gamma(a: float, sd: float) -> float:
    return (1 - a) / (a * sd**2 + 1 - a)


def closed_form_reverse_variance(a_t: float, a_s: float, sd: float, eta: float) -> float:
    """``Var(x_s | x_t)`` of the Gaussian data set, from the joint Gaussian (module docstring)."""
    v_t, v_s = a_t * sd**2 + 1 - a_t, a_s * sd**2 + 1 - a_s
    if eta == 1.0:
        return v_s - (a_t / a_s) * v_s**2 / v_t
    assert eta == 0.0
    c = math.sqrt(a_s) - math.sqrt((1 - a_s) * a_t / (1 - a_t))
    return c**2 * (sd**2 - a_t * sd**4 / v_t)


# ------------------------------------------------------------------------------------------- Analytic-DPM
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_analytic_dpm_gamma_and_variances_match_the_gaussian_closed_form(eta: float) -> None:
    timesteps, draws = 100, 20000
    processes, x0, predictor, alpha_bar = gaussian_setup(timesteps, rows=20000)
    sampler = AnalyticDPMSampler(steps=12, eta=eta, draws=draws, seed=0, clip_denoised=False)
    sampler.prepare(predictor, processes, x0, timesteps)
    visited = sampler.schedule(timesteps)
    variances = sampler.variances(processes, timesteps)
    tight = 0
    for k, (_, sd, shape) in GAUSS.items():
        d = math.prod(shape)
        for i, t in enumerate(visited):
            a_t = float(alpha_bar[t])
            s = visited[i + 1] if i + 1 < len(visited) else 0
            a_s = float(alpha_bar[s])
            gamma = closed_form_gamma(a_t, sd)
            # 5 standard deviations of the Monte Carlo mean, plus 1% for the finite data set (20000 rows)
            tol_gamma = 5 * gamma * math.sqrt(2 / (draws * d)) + 0.01 * gamma
            assert abs(sampler.gammas[k][t] - gamma) <= tol_gamma, (k, t)
            # the variance is linear in Gamma with slope c^2 (1 - a_t) / a_t: propagate the tolerance
            lam2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            c = math.sqrt(a_s) - math.sqrt(max(1 - a_s - lam2, 0.0)) * math.sqrt(a_t / (1 - a_t))
            tol_var = c**2 * (1 - a_t) / a_t * tol_gamma + 1e-9
            truth = closed_form_reverse_variance(a_t, a_s, sd, eta)
            assert abs(variances[k][i] - truth) <= tol_var, (k, t, variances[k][i], truth)
            tight += tol_var < 0.1 * truth
    assert tight >= len(visited)  # at least half the (field, step) pairs are checked to within 10%


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.5])
def test_analytic_variance_with_the_exact_gamma_is_the_true_reverse_variance(eta: float) -> None:
    """With the closed-form ``Gamma_t`` plugged in, theorem 1 gives the joint-Gaussian conditional variance
    to float64 precision (for ``eta = 0.5``: ``lambda^2`` plus ``c^2 Var(x0 | x_t)``), between any two steps
    of a shortened trajectory."""
    timesteps = 100
    processes, _, _, alpha_bar = gaussian_setup(timesteps)
    sd = 0.5
    for t, s in [(100, 80), (60, 10), (37, 36), (5, 0), (90, 0)]:
        a_t, a_s = float(alpha_bar[t]), float(alpha_bar[s])
        got = float(processes["a"].analytic_variance(t, s, closed_form_gamma(a_t, sd), eta))
        if eta in (0.0, 1.0):
            expected = closed_form_reverse_variance(a_t, a_s, sd, eta)
        else:
            lam2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            c = math.sqrt(a_s) - math.sqrt(1 - a_s - lam2) * math.sqrt(a_t / (1 - a_t))
            expected = lam2 + c**2 * (sd**2 - a_t * sd**4 / (a_t * sd**2 + 1 - a_t))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-15), (t, s)


def test_analytic_variance_is_clipped_into_the_papers_bounds() -> None:
    """Section 4's bounds: ``Gamma > 1`` (an over-confident estimate) gives ``lambda^2``; data in
    ``[-clip, clip]`` caps the posterior variance of ``x0`` at ``clip^2``."""
    timesteps = 100
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars_for("cosine", timesteps)])
    bounded = VPGaussian(timesteps, clip=1.0)
    for t, s in [(100, 90), (50, 40), (20, 0)]:
        a_t, a_s = float(alpha_bar[t]), float(alpha_bar[s])
        beta_tilde = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        assert float(bounded.analytic_variance(t, s, 1.3, 1.0)) == pytest.approx(beta_tilde, rel=1e-12)
        assert float(bounded.analytic_variance(t, s, 1.3, 0.0)) == 0.0
        # Gamma = 0 means Var(x0 | x_t) = (1 - a) / a, more than clip^2 = 1 wherever a < 1/2
        c = math.sqrt(a_s) - math.sqrt(1 - a_s - beta_tilde) * math.sqrt(a_t / (1 - a_t))
        cap = min((1 - a_t) / a_t, 1.0)
        assert float(bounded.analytic_variance(t, s, 0.0, 1.0)) == pytest.approx(beta_tilde + c**2 * cap)


def test_analytic_dpm_recovers_a_point_mass_and_is_deterministic() -> None:
    """A point mass has ``Gamma_t = 1``: every variance is ``lambda^2`` (within Monte Carlo error), and the
    sampler lands on the point."""
    timesteps = 100
    processes = {"a": VPGaussian(timesteps, clip=1.0), "b": VPGaussian(timesteps)}
    target = {"a": torch.full((3, 2), 0.5), "b": torch.full((6,), -2.0)}
    x0 = {k: v.expand(50, *v.shape).clone() for k, v in target.items()}

    def exact(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in x_t.items():
            a = processes[key].alpha_bars[t].view(-1, *([1] * (value.dim() - 1)))
            out[key] = (value - a.sqrt() * target[key]) / (1 - a).sqrt()
        return out

    sampler = AnalyticDPMSampler(steps=20, draws=400, seed=3)
    sampler.prepare(exact, processes, x0, timesteps)
    for k in processes:
        for gamma in sampler.gammas[k].values():
            assert gamma == pytest.approx(1.0, abs=5 * math.sqrt(2 / (400 * target[k].numel())))

    def run(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        shapes = {k: (4, *v.shape) for k, v in target.items()}
        x = {k: processes[k].prior(shapes[k], g, torch.device("cpu")) for k in sorted(shapes)}
        return sampler(exact, processes, x, timesteps,
                       lambda: {k: torch.randn(shapes[k], generator=g) for k in sorted(shapes)})

    first, second = run(0), run(0)
    for k in target:
        assert torch.equal(first[k], second[k])
        torch.testing.assert_close(first[k], target[k].expand_as(first[k]), atol=2e-3, rtol=0)


def test_moments_do_not_depend_on_batching_or_other_steps_and_follow_the_seed() -> None:
    processes, x0, predictor, _ = gaussian_setup(50, "linear", rows=300)
    full = monte_carlo_moments(predictor, processes, x0, [3, 20, 49], draws=37, seed=5, batch_size=16)
    alone = monte_carlo_moments(predictor, processes, x0, [20], draws=37, seed=5, batch_size=512)
    other = monte_carlo_moments(predictor, processes, x0, [20], draws=37, seed=6, batch_size=512)
    for k in GAUSS:
        torch.testing.assert_close(full["gamma"][k][1:2], alone["gamma"][k], rtol=1e-6, atol=0)
        torch.testing.assert_close(full["x0_mse"][k][1:2], alone["x0_mse"][k], rtol=1e-6, atol=0)
        assert not torch.equal(alone["gamma"][k], other["gamma"][k])


def test_samplers_refuse_non_gaussian_processes_and_sampling_before_prepare() -> None:
    processes = {"frac_coords": WrappedNormalVE(10)}
    x0 = {"frac_coords": torch.rand(4, 2, 3)}
    for sampler in (AnalyticDPMSampler(steps=5), DPSampler(steps=5)):
        with pytest.raises(TypeError, match="frac_coords is WrappedNormalVE"):
            sampler.prepare(lambda x, t: x, processes, x0, 10)
    gauss = {"a": VPGaussian(10)}
    x = {"a": torch.zeros(2, 3)}
    for sampler in (AnalyticDPMSampler(steps=5), DPSampler(steps=5)):
        with pytest.raises(RuntimeError, match="prepare_sampler"):
            sampler(lambda x, t: x, gauss, x, 10, lambda: {"a": torch.zeros(2, 3)})


# ---------------------------------------------------------------------------------------------- the DP path
def brute_force(costs: torch.Tensor, steps: int) -> tuple[float, list[int]]:
    """The least-cost path of ``steps`` transitions from 0 to T, by enumerating every subset of ``1..T-1``."""
    timesteps = costs.shape[0] - 1
    best = (math.inf, [])
    for inner in itertools.combinations(range(1, timesteps), steps - 1):
        path = [0, *inner, timesteps]
        best = min(best, (path_cost(costs, path), path))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_dp_path_equals_brute_force_over_all_subsets(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    timesteps = 9
    costs = torch.randn(timesteps + 1, timesteps + 1, generator=g, dtype=torch.float64) * 3 + 1
    for steps in range(1, timesteps + 1):
        cost, path = brute_force(costs, steps)
        found = dp_path(costs, steps)
        assert found == path and path_cost(costs, found) == pytest.approx(cost, rel=1e-12)
        assert len(found) == steps + 1 and found[0] == 0 and found[-1] == timesteps


def test_dp_path_with_k_equal_t_is_every_step() -> None:
    costs = torch.rand(31, 31, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert dp_path(costs, 30) == list(range(31))
    with pytest.raises(ValueError, match="steps must be in 1..30"):
        dp_path(costs, 31)


def test_elbo_terms_are_the_kl_divergences_of_the_reverse_steps() -> None:
    """``transition_costs`` against ``torch.distributions``: the KL between ``q(x_s | x_t, x0)`` and
    ``p(x_s | x_t)`` with means taken from :meth:`VPGaussian.reverse_step` itself (fed the epsilon that gives
    ``x0`` and ``x0_hat``), and the decoder's negative log-density at ``s = 0``; with the posterior variance
    the KL is ``(SNR_s - SNR_t) / 2 * ||x0 - x0_hat||^2`` (Kingma et al. 2021, "Variational Diffusion Models",
    eq. 13)."""
    timesteps, d = 50, 7
    process = VPGaussian(timesteps, "linear")
    a64 = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars_for("linear", timesteps)])
    g = torch.Generator().manual_seed(0)
    x0, x0_hat, x_t = (torch.randn(1, d, generator=g, dtype=torch.float64) for _ in range(3))
    mse = float(((x0 - x0_hat) ** 2).sum())
    for variance in ("posterior", "beta"):
        table = process.transition_costs(torch.full((timesteps + 1,), mse, dtype=torch.float64), d, variance)
        for t, s in [(50, 49), (50, 10), (30, 1), (7, 3), (20, 0), (1, 0)]:
            step = torch.tensor([t])
            a_t, a_s = a64[t], a64[s]
            means = []
            for clean in (x0, x0_hat):
                eps = (x_t - a_t.sqrt() * clean) / (1 - a_t).sqrt()
                means.append(process.reverse_step(x_t.float(), eps.float(), step, torch.tensor([s]), None,
                                                  clip=False).double())
            if s == 0:
                expected = -Normal(x0_hat, (1 - a_t).sqrt()).log_prob(x0).sum()
            else:
                var_q = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
                var_p = var_q if variance == "posterior" else 1 - a_t / a_s
                expected = kl_divergence(Normal(means[0], var_q.sqrt()), Normal(means[1], var_p.sqrt())).sum()
                if variance == "posterior":
                    snr = a64 / (1 - a64)
                    assert float(table[t, s]) == pytest.approx(0.5 * float(snr[s] - snr[t]) * mse, rel=1e-9)
            assert float(table[t, s]) == pytest.approx(float(expected), rel=2e-3), (variance, t, s)
        assert torch.isinf(table[10, 10]) and torch.isinf(table[3, 20])


@pytest.mark.parametrize("steps", [3, 10, 25])
def test_dp_path_is_no_worse_than_the_evenly_spaced_one(steps: int) -> None:
    """On the ELBO table of the Gaussian data set (exact predictor: ``E ||x0 - x0_hat||^2 = d Var(x0 |
    x_t)``), the DP path's negative ELBO is at most that of the evenly spaced path with the same K."""
    timesteps = 100
    processes, _, _, alpha_bar = gaussian_setup(timesteps)
    costs = 0
    for k, (_, sd, shape) in GAUSS.items():
        d = math.prod(shape)
        mse = d * sd**2 * (1 - alpha_bar) / (alpha_bar * sd**2 + 1 - alpha_bar)
        costs = costs + processes[k].transition_costs(mse, d)
    path = dp_path(costs, steps)
    even = [0, *(i + 1 for i in respaced_timesteps(timesteps, steps))]
    assert len(even) == len(path) == steps + 1
    assert path_cost(costs, path) <= path_cost(costs, even) + 1e-9


# ---------------------------------------------------------------------------------------- on the ddpm model
@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


def tiny_ddpm(codec: CrystalCodec, *overrides: str) -> CrystalDDPM:
    """The ``ddpm`` config shrunk by its own ``test_overrides`` (T = 100), seeded."""
    own = list(compose(["model=ddpm"]).model.test_overrides)
    cfg = compose(["model=ddpm", *own, *overrides])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model.module, num_types=codec.num_types, max_atoms=codec.max_atoms)


SAMPLERS = {
    "analytic_dpm": ["sampler@model.module.sampler=analytic_dpm", "model.module.sampler.steps=8",
                     "model.module.sampler.draws=16"],
    "analytic_ddim": ["sampler@model.module.sampler=analytic_dpm", "model.module.sampler.steps=8",
                      "model.module.sampler.draws=16", "model.module.sampler.eta=0.0"],
    "dp": ["sampler@model.module.sampler=dp", "model.module.sampler.steps=8", "model.module.sampler.draws=4"],
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_ddpm_samples_deterministically_and_the_statistics_are_cached(
    codec: CrystalCodec, name: str, tmp_path: Path
) -> None:
    batch = codec.encode(tiny_structures("train"))
    model = tiny_ddpm(codec, *SAMPLERS[name])
    assert model.nfe == 8
    with pytest.raises(RuntimeError, match="prepare_sampler"):
        model.sample(2, generator=torch.Generator().manual_seed(0))
    model.prepare_sampler(batch, cache_dir=tmp_path)
    cached = list(tmp_path.glob("*.json"))
    assert len(cached) == 1
    first = model.sample(3, generator=torch.Generator().manual_seed(1))
    second = model.sample(3, generator=torch.Generator().manual_seed(1))
    other = model.sample(3, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # a fresh model with the same weights reads the cache and samples bit for bit the same
    again = tiny_ddpm(codec, *SAMPLERS[name])
    again.prepare_sampler(batch, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.json")) == cached
    replay = again.sample(3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], replay[k]) for k in first)
    if name == "dp":
        assert model.sampler.path == again.sampler.path and len(model.sampler.path) == 9
    else:
        assert model.sampler.gammas == again.sampler.gammas
    # other weights: another cache entry
    moved = tiny_ddpm(codec, *SAMPLERS[name])
    with torch.no_grad():
        next(moved.parameters()).add_(0.01)
    moved.prepare_sampler(batch, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_dp_sampler_with_k_equal_t_visits_every_step(codec: CrystalCodec) -> None:
    batch = codec.encode(tiny_structures("train"))
    model = tiny_ddpm(codec, "sampler@model.module.sampler=dp", "model.module.sampler.steps=null",
                      "model.module.sampler.draws=2")
    model.prepare_sampler(batch)
    assert model.sampler.path == list(range(model.timesteps + 1))
    assert model.sampler.schedule(model.timesteps) == list(range(model.timesteps, 0, -1))


def test_default_sampler_needs_no_preparation(codec: CrystalCodec) -> None:
    model = tiny_ddpm(codec)
    model.prepare_sampler({})  # a no-op: the ancestral sampler reads no data
    assert not getattr(model.sampler, "needs_data", False)


def test_sample_stage_prepares_from_the_training_split(tmp_path: Path) -> None:
    """``matgenbench sample ... sampler@model.module.sampler=analytic_dpm`` on a trained run: a variant of its
    own, the statistics cached in the run directory, the same samples file when run again."""
    from bench.sample import sample
    from bench.train import train

    def cfg(*overrides: str):
        return compose(tiny_run(tmp_path, "model=ddpm", *TINY_TRANSFORMER, "model.module.timesteps=50",
                                *overrides, steps=3, sample_batch=4))

    train(cfg("model.module.sampler.steps=4"))
    asked = cfg("sampler@model.module.sampler=analytic_dpm", "model.module.sampler.steps=5",
                "model.module.sampler.draws=8")
    summary = sample(asked)
    assert summary["variant"] == "ddpm-eps-cosine+analyticdpm-5-draws8"
    assert summary["nfe"] == 5 and summary["sampler_prepare_seconds"] > 0
    path = Path(summary["path"])
    assert path.name == "samples+analyticdpm-5-draws8.csv"
    assert len(list((path.parent / "sampler_cache").glob("AnalyticDPMSampler-*.json"))) == 1
    text = path.read_text()
    assert Path(sample(asked)["path"]).read_text() == text
    dp = sample(cfg("sampler@model.module.sampler=dp", "model.module.sampler.steps=5",
                    "model.module.sampler.draws=2"))
    assert dp["variant"] == "ddpm-eps-cosine+dp-5-draws2" and dp["nfe"] == 5
    from bench.evaluate import evaluate

    record, _ = evaluate(asked)  # the one-off preparation is a cost of the row, apart from sampling
    meta = json.loads(Path(f"{path}.meta.json").read_text())  # the last sample call's (a cached estimate)
    assert record.cost["sampler_prepare_seconds"] == meta["sampler_prepare_seconds"] > 0
    assert record.counts["samples_file"] == str(path)


def test_sample_stage_refuses_a_data_sampler_for_a_model_that_cannot_prepare_it() -> None:
    """E.g. ``model=diffcsp sampler@model.module.sampler=analytic_dpm``: one line naming the sampler and the
    model, before any data is loaded."""
    from types import SimpleNamespace

    from bench.sample import _prepare_sampler

    cfg = compose(["model=diffcsp"])
    module = SimpleNamespace(sampler=AnalyticDPMSampler(steps=5))
    message = "AnalyticDPMSampler needs statistics of the training data, which model diffcsp"
    with pytest.raises(ValueError, match=message):
        _prepare_sampler(cfg, module, None, "unused")
    assert _prepare_sampler(cfg, SimpleNamespace(sampler=AncestralSampler()), None, "unused") is None
