"""ScoreFlow (Song, Durkan, Murray & Ermon 2021, arXiv:2101.09258) on the VP SDE, on inputs with an
independently known answer.

- the VP SDE's closed forms: ``alpha_t = exp(-1/2 int beta)`` against quadrature, ``gamma'`` against a finite
  difference, the inverse of ``gamma``; the marginal mean and variance against a simulated forward SDE;
- the importance density of ``t`` (proportional to ``g^2 / sigma^2``) integrates to one, the drawn times
  follow its distribution function, and the importance-weighted estimator of ``int 1/2 g^2 / sigma^2 h(t) dt``
  has the expectation of the uniform one (and of quadrature) with a smaller variance;
- the bound computed from vdm's terms is the paper's theorem 2 closed by a decoder (the closed-form parts
  agree);
- Gaussian data ``N(mu, diag(s^2))`` and linear score models ``-(x - m(t)) / c(t)``: the reverse SDE and the
  probability-flow ODE are then linear, so their densities follow from moment / flow-map ODEs solved by scipy.
  The probability-flow NLL equals the closed form (exact score: an affine map) and scipy's flow map (a wrong
  score); the likelihood-weighted bound equals the SDE model's NLL for the exact score and lies clearly above
  it for a wrong one; the ODE bound with the decoder is the ODE model's NLL;
- Hutchinson's divergence: exact for diagonal Jacobians with Rademacher probes, unbiased otherwise;
- both samplers reach the data's marginal at ``eps`` with the exact score (the ODE as its closed-form map);
- the model: its loss with a zero noise prediction has the known expectation under every weighting, sampling
  and the test NLL are deterministic under a generator, the NLL is turned into a bound on the codec's fields,
  and the evaluate stage records it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import CODEC_SPACE
from bench.models.diffusion.samplers import AncestralSampler
from bench.models.diffusion.scoreflow import CrystalScoreFlow, likelihood_bound, ode_bound
from bench.models.diffusion.sde import (
    VPSDE,
    EulerMaruyamaSampler,
    ProbabilityFlowSampler,
    probability_flow_nll,
)
from bench.models.diffusion.vdm import prior_kl
from bench.models.flow.cnf import ODESolver
from scipy.integrate import quad, solve_ivp

from tests.conftest import TINY_TRANSFORMER, tiny_run
from tests.nll_helpers import coordinate_gaussian_nll, expected_codec_nll

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
SDE = VPSDE(0.1, 20.0, 1e-5)
MU = np.array([0.7, -1.2])
S = np.array([0.5, 1.3])
NUM_TYPES, MAX_ATOMS = 4, 3


def coef(t: float) -> tuple[float, float, float]:
    """``(beta, alpha, sigma^2)`` at ``t``, written out here from the SDE's definition (not the class)."""
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    return 0.1 + t * (20.0 - 0.1), math.exp(-0.5 * integral), -math.expm1(-integral)


# ---------------------------------------------------------------------- linear (Gaussian) score models
class LinearScore:
    """``score(x, t) = -(x - m(t)) / c(t)`` per coordinate; ``exact``: the score of ``N(MU, diag(S^2))`` data
    (``m = alpha MU``, ``c = alpha^2 S^2 + sigma^2``); otherwise a wrong one (half the mean, a wobbling
    variance), which is the score of no diffusion of any data."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact

    def mc(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        _, a, s2 = coef(t)
        v = a**2 * S**2 + s2
        if self.exact:
            return a * MU, v
        return 0.5 * a * MU, v * (1.0 + 0.8 * math.sin(3.0 * math.pi * t))

    def __call__(self, x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        """``eps_hat = -sigma_t score`` (float64), ``m`` and ``c`` formed once per distinct time."""
        times, index = torch.unique(t.detach().double(), return_inverse=True)
        m = torch.tensor(np.stack([self.mc(ti)[0] for ti in times.tolist()]), dtype=F64)[index]
        c = torch.tensor(np.stack([self.mc(ti)[1] for ti in times.tolist()]), dtype=F64)[index]
        sigma = torch.tensor([math.sqrt(coef(ti)[2]) for ti in times.tolist()], dtype=F64)[index, None]
        return {"x": sigma * (x["x"].double() - m) / c}

    def sde_model(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the reverse SDE's ``x_eps`` from ``N(0, I)`` at ``t = 1``, then of ``x`` under
        the Gaussian decoder ``N(x_eps / alpha_eps, sigma_eps^2 / alpha_eps^2)``: the reverse SDE
        ``dy = [beta (1/2 - 1/c) y + beta m / c] dtau + sqrt(beta) dw`` in ``tau = 1 - t`` is linear."""

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            b = coef(t)[0]
            m, c = self.mc(t)
            mean, var = y[:2], y[2:]
            return np.concatenate([-(b * (0.5 - 1 / c) * mean + b * m / c), -(b * (1 - 2 / c) * var + b)])

        sol = solve_ivp(rhs, [1.0, SDE.eps], np.r_[0.0, 0.0, 1.0, 1.0], method="DOP853", rtol=1e-11,
                        atol=1e-12)
        _, a, s2 = coef(SDE.eps)
        return sol.y[:2, -1] / a, (sol.y[2:, -1] + s2) / a**2

    def flow_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``x_1 = phi x_eps + psi`` of the probability-flow ODE
        ``dx/dt = 1/2 beta (1/c - 1) x - 1/2 beta m / c`` from ``eps`` to 1."""

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            b = coef(t)[0]
            m, c = self.mc(t)
            slope = 0.5 * b * (1 / c - 1)
            return np.concatenate([slope * y[:2], slope * y[2:] - 0.5 * b * m / c])

        sol = solve_ivp(rhs, [SDE.eps, 1.0], np.r_[1.0, 1.0, 0.0, 0.0], method="DOP853", rtol=1e-11,
                        atol=1e-12)
        return sol.y[:2, -1], sol.y[2:, -1]


def gaussian_nll(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (0.5 * ((x - mean) ** 2 / var + np.log(2 * np.pi * var))).sum(-1)


def data_points(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(MU) + torch.tensor(S) * torch.randn(n, 2, generator=g, dtype=F64)


# ---------------------------------------------------------------------- the SDE
def test_vp_sde_coefficients_are_the_closed_forms() -> None:
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=F64)
    assert float(SDE.beta(torch.tensor(0.0))) == pytest.approx(0.1)
    assert float(SDE.beta(torch.tensor(1.0))) == 20.0
    for ti, a, s2 in zip(t.tolist(), SDE.alpha(t).tolist(), SDE.sigma2(t).tolist(), strict=True):
        integral, _ = quad(lambda u: 0.1 + u * 19.9, 0.0, ti, epsabs=1e-14)
        assert a == pytest.approx(math.exp(-0.5 * integral), rel=1e-12)
        assert s2 == pytest.approx(-math.expm1(-integral), rel=1e-10)
    torch.testing.assert_close(SDE.alpha(t) ** 2 + SDE.sigma2(t), torch.ones_like(t), rtol=0, atol=1e-15)
    torch.testing.assert_close(SDE.gamma(t), torch.log(SDE.sigma2(t) / SDE.alpha(t) ** 2), rtol=1e-12, atol=0)
    h = 1e-7 * t
    finite = (SDE.gamma(t + h) - SDE.gamma(t - h)) / (2 * h)
    torch.testing.assert_close(SDE.dgamma(t), finite, rtol=1e-6, atol=0)
    torch.testing.assert_close(SDE.time_of_gamma(SDE.gamma(t)), t, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(20.0, 0.1)
    with pytest.raises(ValueError, match="eps"):
        VPSDE(eps=0.0)


def test_the_marginal_is_that_of_a_simulated_forward_sde() -> None:
    """Euler-Maruyama on ``dx = -1/2 beta x dt + sqrt(beta) dw`` from ``x_0 = 1.5`` (20,000 paths, 1,000
    steps): mean ``alpha_t x_0`` and variance ``sigma_t^2`` at t = 0.1, 0.3, 1."""
    g = torch.Generator().manual_seed(0)
    n, steps, x0 = 20_000, 1000, 1.5
    x = torch.full((n,), x0, dtype=F64)
    checks = {100: 0.1, 300: 0.3, 1000: 1.0}
    dt = 1.0 / steps
    for i in range(steps):
        beta = coef(i * dt)[0]
        x = x - 0.5 * beta * x * dt + math.sqrt(beta * dt) * torch.randn(n, generator=g, dtype=F64)
        if i + 1 in checks:
            t = torch.tensor(checks[i + 1], dtype=F64)
            mean, var = float(SDE.alpha(t)) * x0, float(SDE.sigma2(t))
            assert abs(float(x.mean()) - mean) < 4 * math.sqrt(var / n) + 5e-3
            assert abs(float(x.var()) - var) < 4 * var * math.sqrt(2 / n) + 5e-3


# ---------------------------------------------------------------------- the importance sampling of t
def test_the_importance_density_integrates_to_one_and_the_draws_follow_it() -> None:
    z = SDE.importance_normaliser()
    assert z == pytest.approx(float(SDE.gamma(torch.tensor(1.0)) - SDE.gamma(torch.tensor(1e-5))))

    def density(u: float) -> float:  # in u = log t, where 1/t near eps is smooth
        t = math.exp(u)
        return float(SDE.importance_density(torch.tensor(t, dtype=F64))) * t

    total, _ = quad(density, math.log(1e-5), 0.0, epsabs=1e-12, limit=200)
    assert total == pytest.approx(1.0, abs=1e-9)
    n = 50_000
    t = SDE.sample_times(n, True, torch.Generator().manual_seed(0))
    assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0
    cdf = ((SDE.gamma(t.sort().values) - SDE.gamma(torch.tensor(1e-5, dtype=F64))) / z).numpy()
    ks = np.max(np.abs(cdf - (np.arange(1, n + 1) - 0.5) / n))
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    uniform = SDE.sample_times(n, False, torch.Generator().manual_seed(0))
    assert float(uniform.min()) >= 1e-5 and abs(float(uniform.mean()) - 0.5) < 0.01


def test_the_importance_weighted_estimator_is_unbiased_and_has_a_lower_variance() -> None:
    """``int_eps^1 1/2 g^2 / sigma^2 h(t) dt`` for a smooth ``h``: the importance draws weighted ``Z / 2``
    and the uniform draws weighted ``(1 - eps) / 2 g^2 / sigma^2`` both average to quadrature's value; the
    importance draws' standard deviation is several times smaller."""

    def h(t: torch.Tensor) -> torch.Tensor:
        return 3.0 + torch.sin(6.0 * t) + 1.0 / (1.0 + 40.0 * t)

    exact, _ = quad(
        lambda u: float(0.5 * SDE.dgamma(torch.tensor(math.exp(u), dtype=F64)) * h(torch.tensor(math.exp(u))))
        * math.exp(u), math.log(1e-5), 0.0, epsabs=1e-10, limit=200,
    )
    n = 200_000
    draws = {}
    for importance in (True, False):
        t = SDE.sample_times(n, importance, torch.Generator().manual_seed(1))
        weight = SDE.estimator_weight(t, "likelihood", importance)
        if importance:
            torch.testing.assert_close(weight, torch.full_like(weight, SDE.importance_normaliser() / 2))
        draws[importance] = weight * h(t)
        mean, se = float(draws[importance].mean()), float(draws[importance].std()) / math.sqrt(n)
        assert abs(mean - exact) < 4 * se, (importance, mean, exact, se)
    assert float(draws[True].std()) < 0.2 * float(draws[False].std())
    # score matching: w(t) = 1 / (1 - eps) against the uniform density, whatever importance says
    t = SDE.sample_times(10, True, torch.Generator().manual_seed(2))
    torch.testing.assert_close(SDE.estimator_weight(t, "score_matching", True), torch.ones_like(t))


def test_the_bound_from_vdms_terms_is_theorem_2_closed_by_a_decoder() -> None:
    """Song et al. (2021b), theorem 2, for the VP SDE: ``-E log pi(x_1) - D/2 int_eps^1 (g^2 / sigma^2 -
    g^2) dt`` (the ``||grad log p_0t||^2`` and ``div f`` terms in closed form) plus the decoder's
    ``E log q(x_eps | x)`` is ``KL(q(x_1 | x) || N(0, I))``, the prior term of :func:`likelihood_bound`."""
    x = torch.tensor([[0.3, -1.1, 2.0, 0.0]], dtype=F64)
    d = x.shape[1]
    _, a1, s1 = coef(1.0)
    _, ae, se = coef(SDE.eps)
    neg_log_prior = 0.5 * d * math.log(2 * math.pi) + 0.5 * (a1**2 * float((x**2).sum()) + d * s1)
    correction, _ = quad(lambda t: coef(t)[0] / coef(t)[2] - coef(t)[0], SDE.eps, 1.0, epsabs=1e-12,
                         limit=400, points=[1e-4, 1e-3, 1e-2])
    expected_log_q = -0.5 * d * math.log(2 * math.pi * se) - 0.5 * d
    paper = neg_log_prior - 0.5 * d * correction + expected_log_q
    gamma_1 = SDE.gamma(torch.tensor(1.0, dtype=F64))
    assert float(prior_kl(gamma_1, x)) == pytest.approx(paper, rel=1e-7)


# ---------------------------------------------------------------------- the probability-flow ODE
@pytest.mark.parametrize("exact", [True, False])
def test_probability_flow_nll_is_the_linear_flows_closed_form(exact: bool) -> None:
    """``-log p(x_eps) = -log N(phi x + psi; 0, 1) - log phi`` per coordinate; for the exact score
    ``phi = sqrt(v_1 / v_eps)``, ``psi = alpha_1 MU - phi alpha_eps MU`` (the affine map between the
    marginals), otherwise scipy's flow map."""
    model = LinearScore(exact)
    x = data_points() * coef(SDE.eps)[1]
    if exact:
        v = lambda t: coef(t)[1] ** 2 * S**2 + coef(t)[2]  # noqa: E731
        phi = np.sqrt(v(1.0) / v(SDE.eps))
        psi = coef(1.0)[1] * MU - phi * coef(SDE.eps)[1] * MU
        np.testing.assert_allclose(model.flow_map(), (phi, psi), rtol=1e-7, atol=1e-9)
    else:
        phi, psi = model.flow_map()
    z1 = phi * x.numpy() + psi
    closed = (0.5 * z1**2 + 0.5 * math.log(2 * math.pi) - np.log(phi)).sum(1)
    tight = ODESolver("dopri5", atol=1e-9, rtol=1e-9)
    nll, calls = probability_flow_nll(model, SDE, {"x": x}, tight, "exact")
    assert nll.dtype == F64 and calls > 10
    np.testing.assert_allclose(nll.numpy(), closed, rtol=0, atol=1e-5)
    # Rademacher probes: v^T J v = tr J exactly for this diagonal Jacobian
    rademacher, _ = probability_flow_nll(model, SDE, {"x": x}, tight, "hutchinson", "rademacher",
                                         torch.Generator().manual_seed(0))
    np.testing.assert_allclose(rademacher.numpy(), closed, rtol=0, atol=1e-5)


def test_hutchinson_averages_to_the_exact_divergence_of_a_mixing_network() -> None:
    """A nonlinear noise prediction with a full Jacobian, on one fixed grid: the mean of Gaussian-probe
    estimates (one probe per row) is the exact-trace value within its standard error, and single estimates
    scatter."""
    torch.manual_seed(0)
    w = torch.randn(5, 5, dtype=F64) / math.sqrt(5)

    def eps_fn(x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": torch.tanh(x["x"] @ w + t[:, None]) * (1.0 - 0.5 * t[:, None])}

    x = torch.randn(1, 5, dtype=F64)
    solver = ODESolver("rk4", steps=40)
    exact, _ = probability_flow_nll(eps_fn, SDE, {"x": x}, solver, "exact")
    rows = 4000
    estimates, _ = probability_flow_nll(eps_fn, SDE, {"x": x.expand(rows, 5)}, solver, "hutchinson",
                                        "gaussian", torch.Generator().manual_seed(1))
    se = float(estimates.std()) / math.sqrt(rows)
    assert float(estimates.std()) > 0.1
    assert abs(float(estimates.mean()) - float(exact)) < 4 * se


# ---------------------------------------------------------------------- the bounds on Gaussian data
def test_the_likelihood_weighted_bound_is_the_sde_nll_for_the_exact_score_and_above_it_otherwise() -> None:
    """The bound (importance-sampled ``t``) of each point against the exact NLL of the reverse-SDE model with
    the Gaussian decoder (scipy moment ODEs): equal within Monte Carlo error for the exact score (the bound is
    tight), many standard errors above it for a wrong score, never below."""
    x = data_points()
    n = 20_000
    for exact in (True, False):
        model = LinearScore(exact)
        mean, var = model.sde_model()
        nll = gaussian_nll(x.numpy(), mean, var)
        bound = likelihood_bound(model, SDE, {"x": x.repeat_interleave(n, 0)},
                                 generator=torch.Generator().manual_seed(3)).view(len(x), n)
        gap = bound.mean(1).numpy() - nll
        se = (bound.std(1) / math.sqrt(n)).numpy()
        assert np.all(gap > -4 * se), (exact, gap, se)
        if exact:
            assert np.all(np.abs(gap) < 4 * se + 0.01), (gap, se)
            data_nll = gaussian_nll(x.numpy(), MU, S**2)  # the SDE model with the exact score is the data
            np.testing.assert_allclose(nll, data_nll, atol=0.03)
        else:
            assert np.all(gap > 10 * se) and np.all(gap > 5.0), (gap, se)


def test_the_uniform_and_the_importance_sampled_bound_agree() -> None:
    model = LinearScore(False)
    x = data_points(1).repeat_interleave(40_000, 0)
    values = [likelihood_bound(model, SDE, {"x": x}, generator=torch.Generator().manual_seed(4),
                               importance=importance) for importance in (True, False)]
    se = math.sqrt(sum(float(v.var()) for v in values) / len(x))
    assert abs(float(values[0].mean() - values[1].mean())) < 4 * se
    assert float(values[0].std()) < 0.8 * float(values[1].std())  # 86 against 152 here


@pytest.mark.parametrize("exact", [True, False])
def test_the_ode_bound_with_the_decoder_is_the_ode_models_nll(exact: bool) -> None:
    """``E[-log p_ode(x_eps) + log q - log p(x | x_eps)]`` against the NLL of the ODE model with the decoder
    (``x_eps = (z - psi) / phi``, ``z ~ N(0, 1)``, then ``N(x_eps / alpha_eps, sigma_eps^2 / alpha_eps^2)``):
    the gap is ``KL(q(x_eps | x) || p(x_eps | x))``, of order ``sigma_eps^2``."""
    model = LinearScore(exact)
    x = data_points()
    phi, psi = model.flow_map()
    _, a, s2 = coef(SDE.eps)
    nll = gaussian_nll(x.numpy(), -psi / phi / a, (1 / phi**2 + s2) / a**2)
    n = 100
    bound, _ = ode_bound(model, SDE, {"x": x.repeat_interleave(n, 0)}, solver=ODESolver(atol=1e-8, rtol=1e-8),
                         trace="exact", generator=torch.Generator().manual_seed(5))
    bound = bound.view(len(x), n)
    se = (bound.std(1) / math.sqrt(n)).numpy()
    np.testing.assert_array_less(np.abs(bound.mean(1).numpy() - nll), 4 * se + 1e-3)


# ---------------------------------------------------------------------- samplers
def test_euler_maruyama_reaches_the_data_marginal_with_the_exact_score() -> None:
    model = LinearScore(True)
    n, g = 20_000, torch.Generator().manual_seed(6)
    x1 = {"x": torch.randn(n, 2, generator=g, dtype=F64)}
    sampler = EulerMaruyamaSampler(steps=500)
    out = sampler(model, SDE, x1, lambda: {"x": torch.randn(n, 2, generator=g, dtype=F64)})["x"]
    _, a, s2 = coef(SDE.eps)
    var = a**2 * S**2 + s2
    assert sampler.nfe() == 500
    np.testing.assert_array_less(np.abs(out.mean(0).numpy() - a * MU), 4 * np.sqrt(var / n) + 0.01)
    np.testing.assert_array_less(np.abs(out.var(0).numpy() / var - 1.0), 4 * math.sqrt(2 / n) + 0.02)
    coarse = EulerMaruyamaSampler(steps=5)(model, SDE, x1,
                                           lambda: {"x": torch.randn(n, 2, generator=g, dtype=F64)})
    assert np.abs(coarse["x"].var(0).numpy() / var - 1.0).max() > 0.1  # too few steps is visibly wrong


def test_the_probability_flow_sampler_is_the_inverse_flow_map() -> None:
    model = LinearScore(True)
    x1 = {"x": torch.randn(6, 2, generator=torch.Generator().manual_seed(7), dtype=F64)}
    sampler = ProbabilityFlowSampler("dopri5", atol=1e-9, rtol=1e-9)
    assert sampler.nfe() == 0
    out = sampler(model, SDE, x1, lambda: {})["x"]
    phi, psi = model.flow_map()
    np.testing.assert_allclose(out.numpy(), (x1["x"].numpy() - psi) / phi, rtol=0, atol=1e-6)
    assert sampler.nfe() > 10
    assert ProbabilityFlowSampler("rk4", steps=7).nfe() == 28
    with pytest.raises(ValueError, match="needs steps"):
        ProbabilityFlowSampler("rk4")


# ---------------------------------------------------------------------- the crystal model
def tiny_model(**kwargs: object) -> CrystalScoreFlow:
    torch.manual_seed(0)
    return CrystalScoreFlow(
        functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2),
        functools.partial(torch.optim.Adam, lr=3e-3), NUM_TYPES, MAX_ATOMS, time_dim=16, **kwargs,
    )


def crystals(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, NUM_TYPES, (n, MAX_ATOMS), generator=g)
    classes[:, 0] = 1 + classes[:, 0] % (NUM_TYPES - 1)  # at least one atom
    types = torch.nn.functional.one_hot(classes, NUM_TYPES).float()
    filled = 1.0 - types[..., 0]
    return {
        "atom_types": types,
        "frac_coords": torch.rand(n, MAX_ATOMS, 3, generator=g) * filled[..., None],
        "lattice": torch.randn(n, 6, generator=g),
        "mask": filled,
    }


@pytest.mark.parametrize(("weighting", "importance"),
                         [("likelihood", True), ("likelihood", False), ("score_matching", False)])
def test_the_loss_of_a_zero_prediction_has_its_known_expectation(weighting: str, importance: bool) -> None:
    """``eps_hat = 0``: the error is ``||eps||^2`` (mean ``D``), so the loss averages to ``Z / 2`` under the
    likelihood weighting (importance-sampled or not) and to 1 under the original weighting; the logged
    diffusion term of the bound to ``D Z / 2`` per crystal. Uniform times weighted by ``g^2 / sigma^2 ~ 1/t``
    are heavy-tailed, so the tolerance is four standard errors of the batch means."""
    model = tiny_model(weighting=weighting, importance_sampling=importance)
    model.predict = lambda x, t: {k: torch.zeros_like(v) for k, v in x.items()}
    batch = crystals(2000, 0)
    torch.manual_seed(1)
    terms = [model.loss(batch) for _ in range(40)]
    z = SDE.importance_normaliser()
    for key, expected in (("loss", z / 2 if weighting == "likelihood" else 1.0),
                          ("diffusion", model.total_dim * z / 2)):
        values = torch.tensor([float(v[key]) for v in terms], dtype=F64)
        se = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - expected) < 4 * se + 1e-4 * expected, (key, values.mean(), se)
        if importance or (key == "loss" and weighting == "score_matching"):
            assert se < 1e-3 * expected  # a constant weight: only ||eps||^2 varies


def test_a_tiny_run_lowers_the_loss() -> None:
    model = tiny_model()
    optimizer = model.configure_optimizers()
    batch = crystals(32, 0)
    losses = []
    torch.manual_seed(1)
    for _ in range(80):
        optimizer.zero_grad()
        terms = model.loss(batch)
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10, (losses[:10], losses[-10:])


def test_model_samples_deterministically_with_both_samplers_and_refuses_discrete_ones() -> None:
    model = tiny_model(sampler=EulerMaruyamaSampler(steps=6)).eval()
    assert model.nfe == 6
    first = model.sample(5, generator=torch.Generator().manual_seed(3))
    again = model.sample(5, generator=torch.Generator().manual_seed(3))
    other = model.sample(5, generator=torch.Generator().manual_seed(4))
    for key in first:
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["lattice"], other["lattice"])
    model.sampler = ProbabilityFlowSampler("rk4", steps=4)
    ode = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert model.nfe == 16 and ode["atom_types"].shape == (5, MAX_ATOMS, NUM_TYPES)
    assert not torch.equal(ode["lattice"], first["lattice"])
    clipped = tiny_model(sampler=EulerMaruyamaSampler(steps=6), lattice_clip=0.3).eval()
    free = tiny_model(sampler=EulerMaruyamaSampler(steps=6), lattice_clip=None).eval()
    lattice = clipped.sample(50, generator=torch.Generator().manual_seed(3))["lattice"]
    unclipped = free.sample(50, generator=torch.Generator().manual_seed(3))["lattice"]
    assert float(unclipped.abs().max()) > 0.3 and float(lattice.abs().max()) <= 0.3 + 1e-6
    torch.testing.assert_close(lattice, unclipped.clamp(-0.3, 0.3))  # the path itself is not clipped
    with pytest.raises(TypeError, match="reverse_sde"):
        tiny_model(sampler=AncestralSampler())
    with pytest.raises(ValueError, match="weighting"):
        tiny_model(weighting="uniform")
    with pytest.raises(ValueError, match="nll_estimator"):
        tiny_model(nll_estimator="iwae")


def test_test_nll_is_a_deterministic_bound_with_either_estimator() -> None:
    model = tiny_model(nll_solver="rk4", nll_steps=6).eval()
    spec = model.likelihood_spec()
    assert spec.kind == "upper_bound" and spec.estimator == "probability_flow_ode"
    assert model.nll_space() == CODEC_SPACE
    batch = crystals(6, 2)
    nll = model.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(0))
    again = model.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (6,) and nll.dtype == F64 and bool(torch.isfinite(nll).all())
    assert torch.equal(nll, again) and model.last_nll_evaluations == 24
    assert not torch.equal(nll, model.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(1)))
    elbo = model.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(0), estimator="elbo")
    assert bool(torch.isfinite(elbo).all())
    assert tiny_model(nll_estimator="elbo").likelihood_spec().estimator == "elbo"
    fitted = model.fit_likelihood(batch)
    assert fitted["nll_decoders"]["atom_types"] == "categorical" and fitted["ode"]["trace"] == "hutchinson"
    assert fitted["ode"]["steps"] == 6 and fitted["ode"]["atol"] is None
    assert fitted["empty_coordinate_proposal_std"] == pytest.approx(math.exp(0.5 * fitted["gamma_eps"]))


def test_test_nll_turns_the_bound_into_one_on_the_codec_fields() -> None:
    """With the diffusion-space bound replaced by the known ``-log N(y; 0, I)`` of every slot's coordinates
    ``y = 2 f - 1``, the codec's density is ``prod_filled 2^3 N(2 f - 1)`` and the estimate adds
    ``KL(N(-1, tau^2) || N(0, 1))`` per empty coordinate."""
    model = tiny_model(eps=0.05).eval()  # a proposal wide enough for its Monte Carlo error to be seen

    model.diffusion_space_bound = lambda x0, generator=None, estimator=None: coordinate_gaussian_nll(x0)
    batch = crystals(6, 4)
    nll = model.test_nll(batch, draws=4000, generator=torch.Generator().manual_seed(0))
    expected = expected_codec_nll(batch, model.empty_coordinate_std**2)
    torch.testing.assert_close(nll, expected, rtol=0, atol=0.05)


def test_evaluate_records_the_ode_likelihood_as_the_test_nll(tmp_path: Path) -> None:
    from bench.config import compose
    from bench.run import run

    cfg = compose(tiny_run(
        tmp_path, "model=scoreflow", *TINY_TRANSFORMER, "model.module.sampler.steps=5",
        "+evaluate.nll.draws=1", sample_batch=6,
    ))
    record, _ = run(cfg)
    entry = record.metrics["nll_test"]
    kind = (entry["nll_kind"], entry["nll_estimator"], entry["nll_space"])
    assert kind == ("upper_bound", "probability_flow_ode", CODEC_SPACE)
    assert entry["n_scored"] > 0 and math.isfinite(entry["value"]) and entry["draws"] == 1
    assert entry["ode"]["method"] == "dopri5" and entry["ode"]["rtol"] == 1e-3
    assert record.cost["sample_nfe"] == 5
