"""Variational Diffusion Models (Kingma et al. 2021, arXiv:2107.00630) on inputs with an independently known
answer.

- the monotone gamma network is increasing for random weights of either sign, its endpoints are the learned
  parameters whatever the shape, and its closed-form derivative is the finite difference;
- for data exactly ``N(0, I)`` the exact epsilon is ``sigma_t z_t``; with it the VLB of each ``x`` is
  ``-log N(x; 0, I)`` up to ``1/2 [sigma_0^2 (1 - x^2) - log alpha_0^2]`` per coordinate (derived in
  :func:`gaussian_vlb_gap`), and the continuous-time diffusion loss is
  ``1/2 [d log(sigma_1^2 / sigma_0^2) - (sigma_1^2 - sigma_0^2)(d - ||x||^2)]`` whatever the schedule's shape
  between the endpoints (eq. 17), checked by Monte Carlo through the model's own functions for a linear and
  two strongly curved shapes; other endpoints give another value;
- the discrete-time (``T``-step) diffusion loss of that data has its own closed form
  ``sum_i 1/2 (SNR_{i-1} - SNR_i)(sigma_i^4 ||x||^2 + alpha_i^2 sigma_i^2 d)``, above the continuous one;
- the invariance holds for the model's real (untrained) network because it is conditioned on ``gamma``, not
  on ``t``: the diffusion loss integrated over ``t`` on a fine grid is the same for two shapes; a network
  conditioned on ``t`` is not invariant;
- ancestral steps with the exact epsilon of ``N(0, S^2)`` data give the variance of a closed-form recursion
  of the linear Gaussian chain, which reaches ``S^2`` as ``T`` grows; DDIM with ``eta = 1`` is the ancestral
  step;
- section 5.2: the schedule's shape receives the gradient of ``mean L^2`` (its variance), the endpoints and
  the network the VLB's; training the shape that way halves the variance of the diffusion-loss estimate and
  leaves its mean unchanged;
- a tiny crystal run lowers its loss; sampling and the test NLL are deterministic under a fixed generator;
  the NLL is a bound on the codec's fields (coordinate scaling, empty slots integrated out) and the
  evaluate stage records it.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from bench.models.base import CODEC_SPACE
from bench.models.diffusion.samplers import AncestralSampler, DDIMSampler
from bench.models.diffusion.vdm import (
    CrystalVDM,
    FeatureCrystalTransformer,
    GammaGridGaussian,
    MonotoneGamma,
    antithetic_times,
    continuous_diffusion_loss,
    fourier_features,
    prior_kl,
    reconstruction_nll,
)

from tests.conftest import TINY_TRANSFORMER, tiny_run
from tests.nll_helpers import coordinate_gaussian_nll, expected_codec_nll

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TYPES, MAX_ATOMS = 4, 3
ADAM = functools.partial(torch.optim.Adam, lr=3e-3)
BACKBONE = functools.partial(FeatureCrystalTransformer, d_model=16, n_layers=1, n_heads=2)
F64 = torch.float64


def curved_gamma(seed: int, features: int = 64) -> MonotoneGamma:
    """A monotone gamma far from linear: steep sigmoids at random places, a small linear part."""
    torch.manual_seed(seed)
    gamma = MonotoneGamma(-13.3, 5.0, features).double()
    with torch.no_grad():
        gamma.w1.fill_(0.05)
        gamma.w2.mul_(4.0)
        gamma.b2.normal_(0.0, 3.0)
    return gamma


# ---------------------------------------------------------------------- the schedule
def test_the_gamma_network_is_monotone_with_the_learned_endpoints() -> None:
    t = torch.linspace(0.0, 1.0, 4001, dtype=F64)
    for seed in range(5):
        torch.manual_seed(seed)
        gamma = MonotoneGamma(-13.3, 5.0, 32).double()
        with torch.no_grad():
            for p in gamma.shape_parameters():
                p.normal_(0.0, 3.0)  # weights of either sign: the network uses their absolute values
            gamma.gamma_0.fill_(-9.0 + seed)
            gamma.gamma_1.fill_(2.0 + seed)
            values = gamma(t)
        assert bool((values[1:] > values[:-1]).all()), seed
        assert float(values[0]) == pytest.approx(-9.0 + seed, abs=1e-12)
        assert float(values[-1]) == pytest.approx(2.0 + seed, abs=1e-12)
        inner = torch.linspace(0.01, 0.99, 99, dtype=F64)
        with torch.no_grad():
            finite = (gamma(inner + 1e-6) - gamma(inner - 1e-6)) / 2e-6
            torch.testing.assert_close(gamma.derivative(inner), finite, rtol=1e-6, atol=1e-6)
            assert float(gamma.derivative(inner).min()) > 0
    linear = MonotoneGamma(-4.0, 6.0, features=0).double()
    with torch.no_grad():
        torch.testing.assert_close(linear(t), -4.0 + 10.0 * t)
    assert {n for n, _ in linear.named_parameters()} == {"gamma_0", "gamma_1", "w1"}
    with pytest.raises(ValueError, match="gamma_0 < gamma_1"):
        MonotoneGamma(1.0, -1.0)


def test_antithetic_times_are_evenly_spread() -> None:
    t = antithetic_times(8, torch.Generator().manual_seed(0))
    gaps = torch.diff(torch.sort(t).values)
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8))
    assert float(t.min()) >= 0 and float(t.max()) < 1


def test_the_decoders_are_q_of_z0_normalised_over_x() -> None:
    """``p(x | z_0)`` proportional to ``q(z_0 | x) = N(z_0; alpha_0 x, sigma_0^2)``: over the one-hot
    vertices for the types (a soft decoder at ``gamma_0 = 1``), over the reals for continuous values."""
    gamma_0 = torch.tensor(1.0, dtype=F64)
    a0, s0 = float(torch.sigmoid(-gamma_0).sqrt()), float(torch.sigmoid(gamma_0).sqrt())
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 5, (7, 2), generator=g)
    x = 2.0 * torch.nn.functional.one_hot(classes, 5).double() - 1.0
    noise = torch.randn(7, 2, 5, generator=g, dtype=F64)
    z0 = a0 * x + s0 * noise
    vertices = 2.0 * torch.eye(5, dtype=F64) - 1.0
    density = torch.distributions.Normal(a0 * vertices, s0).log_prob(z0.unsqueeze(-2)).sum(-1)  # [7, 2, 5]
    expected = -torch.distributions.Categorical(logits=density).log_prob(classes).sum(1)
    got = reconstruction_nll(gamma_0, x, noise, "categorical")
    assert float(expected.mean()) > 0.3  # not a sure decoder, so the logits' scale matters
    torch.testing.assert_close(got, expected)
    values = torch.randn(7, 4, generator=g, dtype=F64)
    z0 = a0 * values + s0 * noise[:, 0, :4]
    gaussian = -torch.distributions.Normal(z0 / a0, s0 / a0).log_prob(values).sum(1)
    torch.testing.assert_close(reconstruction_nll(gamma_0, values, noise[:, 0, :4]), gaussian)
    with pytest.raises(ValueError, match="decoder"):
        reconstruction_nll(gamma_0, values, noise[:, 0, :4], "poisson")


# ---------------------------------------------------------------------- N(0, I) data, the exact epsilon
def exact_unit_eps(z: dict[str, torch.Tensor], gamma: torch.Tensor) -> dict[str, torch.Tensor]:
    """``E[eps | z_t] = sigma_t z_t`` for ``x ~ N(0, I)`` (then ``z_t ~ N(0, I)`` and ``Cov(eps, z_t) =
    sigma_t``)."""
    sigma = torch.sigmoid(gamma).sqrt()
    return {k: sigma.view(-1, *([1] * (v.dim() - 1))).to(v.dtype) * v for k, v in z.items()}


def diffusion_closed_form(x: torch.Tensor, gamma_0: float, gamma_1: float) -> float:
    """``L_inf(x)`` with the exact epsilon of ``N(0, I)``: ``1/2 int_{gamma_0}^{gamma_1} [alpha^4 d +
    alpha^2 sigma^2 ||x||^2] dgamma``, with ``int sigmoid(-g)^2 = log(sigma_1^2/sigma_0^2) - (sigma_1^2 -
    sigma_0^2)`` and ``int sigmoid(g) sigmoid(-g) = sigma_1^2 - sigma_0^2``."""
    d, sq = x.numel(), float((x.double() ** 2).sum())
    s0, s1 = 1 / (1 + math.exp(-gamma_0)), 1 / (1 + math.exp(-gamma_1))
    return 0.5 * (d * math.log(s1 / s0) - (s1 - s0) * (d - sq))


def gaussian_vlb_gap(x: torch.Tensor, gamma_0: float) -> float:
    """``VLB(x) + log N(x; 0, I)`` with the exact epsilon: adding the prior KL, the Gaussian decoder's
    ``1/2 (log 2 pi + gamma_0 + 1)`` and the diffusion loss above, every ``gamma_1`` term cancels and
    ``1/2 sum [sigma_0^2 (1 - x^2) - log alpha_0^2]`` remains (``O(sigma_0^2)``)."""
    s0 = 1 / (1 + math.exp(-gamma_0))
    return 0.5 * float((s0 * (1 - x.double() ** 2) - math.log(1 - s0)).sum())


@pytest.mark.parametrize("shape", ["linear", "curved", "other_curve"])
def test_the_vlb_of_gaussian_data_is_its_nll_and_the_diffusion_loss_ignores_the_shape(shape: str) -> None:
    gamma = {"linear": MonotoneGamma(-13.3, 5.0, features=0).double(),
             "curved": curved_gamma(1), "other_curve": curved_gamma(2)}[shape]
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 3
    for x in (torch.tensor([0.3, -1.2, 2.0], dtype=F64), torch.tensor([0.0, 0.5, -0.7], dtype=F64)):
        batch = {"x": x.expand(n, d)}
        t = antithetic_times(n, g).double()
        eps = {"x": torch.randn(n, d, generator=g, dtype=F64)}
        with torch.no_grad():
            g0, g1 = gamma.endpoints(F64)
            shape_t, slope_t = gamma.shape(t)  # gamma(t), gamma'(t) as forward() and derivative() form them
            gamma_t, dgamma_t = g0 + (g1 - g0) * shape_t, (g1 - g0) * slope_t
            diffusion = continuous_diffusion_loss(exact_unit_eps, batch, gamma_t, dgamma_t, eps)["x"]
            vlb = (prior_kl(g1, batch["x"]) + diffusion
                   + reconstruction_nll(g0, batch["x"], torch.randn(n, d, generator=g, dtype=F64)))
        sem = float(diffusion.std()) / math.sqrt(n)
        closed = diffusion_closed_form(x, -13.3, 5.0)
        assert abs(float(diffusion.mean()) - closed) < 4 * sem, (shape, float(diffusion.mean()), closed, sem)
        nll = 0.5 * float((x**2).sum()) + 0.5 * d * math.log(2 * math.pi)
        gap = gaussian_vlb_gap(x, -13.3)
        assert 0 < gap < 1e-5
        assert abs(float(vlb.mean()) - (nll + gap)) < 4 * float(vlb.std()) / math.sqrt(n)
        # another gamma_0: another value, far outside the Monte Carlo error
        assert abs(diffusion_closed_form(x, -12.3, 5.0) - closed) > 20 * sem


def test_the_discrete_time_bound_of_gaussian_data() -> None:
    """The T-step model with the exact epsilon: every-step and one-step estimates of the model's bound
    match ``prior + decoder + sum_i 1/2 (SNR_{i-1} - SNR_i)(sigma_i^4 ||x||^2 + alpha_i^2 sigma_i^2 d)``,
    which lies above the continuous-time value and falls towards it like 1/T."""
    T = 10
    model = _tiny_model(T, sampler=AncestralSampler(clip_denoised=False))
    model.predict = exact_unit_eps  # the network replaced by the exact epsilon of N(0, I) data
    g = torch.Generator().manual_seed(0)
    n = 4000
    x0 = {"atom_types": torch.randn(1, MAX_ATOMS, NUM_TYPES, generator=g, dtype=F64).expand(n, -1, -1),
          "frac_coords": torch.randn(1, MAX_ATOMS, 3, generator=g, dtype=F64).expand(n, -1, -1),
          "lattice": torch.randn(1, 6, generator=g, dtype=F64).expand(n, -1)}
    # the decoder of each field as the model declares it: the types' is categorical, so give them Gaussian
    model.decoders = {k: "gaussian" for k in x0}
    d = model.total_dim
    sq = sum(float((v[0] ** 2).sum()) for v in x0.values())
    with torch.no_grad():
        g0, g1 = (float(v) for v in model.gamma.endpoints(F64))
        grid = model.gamma_grid()

    def discrete(grid: torch.Tensor) -> float:
        snr = torch.exp(-grid)
        a2, s2 = torch.sigmoid(-grid), torch.sigmoid(grid)
        return float(0.5 * ((snr[:-1] - snr[1:]) * (s2[1:] ** 2 * sq + a2[1:] * s2[1:] * d)).sum())

    prior = 0.5 * (1 / (1 + math.exp(g1)) * (sq - d) + d * math.log1p(math.exp(-g1)))
    decoder = 0.5 * d * (math.log(2 * math.pi) + g0 + 1)
    expected = prior + decoder + discrete(grid)
    continuous = diffusion_closed_form(torch.zeros(d).add_(math.sqrt(sq / d)), g0, g1)
    with torch.no_grad():
        gaps = {steps: discrete(model.gamma(torch.linspace(0, 1, steps + 1, dtype=F64))) - continuous
                for steps in (T, 100, 1000, 10000)}
    assert gaps[T] > gaps[100] > gaps[1000] > gaps[10000] > 0
    assert 10000 * gaps[10000] == pytest.approx(1000 * gaps[1000], rel=0.05)
    with torch.no_grad():
        every = model.variational_bound(x0, g, every_step=True)
        one = model.variational_bound(x0, g)
    for values in (every, one):
        sem = float(values.std()) / math.sqrt(n)
        assert abs(float(values.mean()) - expected) < 4 * sem + 1e-6, (float(values.mean()), expected, sem)
    assert float(one.std()) > float(every.std())


def test_the_invariance_holds_for_the_real_network_conditioned_on_gamma() -> None:
    """``int_0^1 gamma'(t) ||eps - eps_hat(z_t; gamma(t))||^2 dt = int ||...||^2 dgamma`` for any network of
    ``(z, gamma)``: two shapes with the same endpoints give the same integral (midpoint rule on a fine grid
    of ``t``, the same ``x`` and ``eps``); conditioning the same network on ``t`` breaks it. (The
    conditioning's input weights are scaled up so that the untrained network depends on it clearly.)"""
    model = _tiny_model(20).eval()
    with torch.no_grad():
        model.denoiser.cond_in.weight.mul_(20.0)
    batch = crystals(2, 3)
    x0 = model.to_diffusion_space(batch)
    g = torch.Generator().manual_seed(1)
    eps = {k: torch.randn(v.shape, generator=g) for k, v in x0.items()}
    m = 4000
    t = (torch.arange(m, dtype=F64) + 0.5) / m
    shapes = [MonotoneGamma(-13.3, 5.0, features=0).double(), curved_gamma(5)]

    def integral(gamma: MonotoneGamma, crystal: int, predictor) -> float:  # noqa: ANN001
        x = {k: v[crystal:crystal + 1].expand(m, *v.shape[1:]).double() for k, v in x0.items()}
        e = {k: v[crystal:crystal + 1].expand(m, *v.shape[1:]).double() for k, v in eps.items()}
        with torch.no_grad():
            terms = continuous_diffusion_loss(predictor, x, gamma(t), gamma.derivative(t), e)
        return float(sum(terms.values()).mean())

    def on_gamma(z, gamma):  # noqa: ANN001, ANN202
        return {k: v.double() for k, v in model.predict(z, gamma).items()}

    def on_t(z, gamma):  # noqa: ANN001, ANN202
        """The same network conditioned on ``t`` (row ``i`` of the grid is time ``t_i``) through the linear
        schedule, whatever the schedule that made ``z``: a network of t."""
        with torch.no_grad():
            return on_gamma(z, shapes[0](t))

    for crystal in range(2):
        values = [integral(shape, crystal, on_gamma) for shape in shapes]
        assert values[0] == pytest.approx(values[1], rel=1e-4), values
        broken = [integral(shape, crystal, on_t) for shape in shapes]
        assert abs(broken[0] - broken[1]) > 2e-3 * abs(broken[0]), broken
        assert broken[0] == pytest.approx(values[0], rel=1e-9)  # the same network on the linear shape


# ---------------------------------------------------------------------- ancestral steps
S = 0.5


def chain_variance(grid: torch.Tensor) -> float:
    """The variance of ``z_0 / alpha_0`` from the ancestral chain of ``N(0, S^2)`` data with the exact
    ``x_hat = alpha_t S^2 z_t / (alpha_t^2 S^2 + sigma_t^2)``, ``z_1 ~ N(0, 1)`` and no noise on the last
    step, by the recursion ``v_s = k^2 v_t + c sigma_s^2`` of the linear Gaussian chain, with
    ``k = alpha_s ((1 - c) / alpha_t + c alpha_t S^2 / Var(z_t))``, ``c = 1 - SNR_t / SNR_s``."""
    v = 1.0
    for i in range(len(grid) - 1, 0, -1):
        g_t, g_s = float(grid[i]), float(grid[i - 1])
        a_t, a_s = math.sqrt(1 / (1 + math.exp(g_t))), math.sqrt(1 / (1 + math.exp(g_s)))
        c = 1 - math.exp(g_s - g_t)
        var_t = a_t**2 * S**2 + 1 / (1 + math.exp(-g_t))
        k = a_s * ((1 - c) / a_t + c * a_t * S**2 / var_t)
        v = k**2 * v + (c / (1 + math.exp(-g_s)) if i > 1 else 0.0)
    return v * (1 + math.exp(float(grid[0])))  # / alpha_0^2


def exact_scaled_eps(grid: torch.Tensor):  # noqa: ANN201
    def predict(z: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        g = grid[t].view(-1, 1)
        a2, s2 = torch.sigmoid(-g), torch.sigmoid(g)
        return {"x": (s2.sqrt() * z["x"].double() / (a2 * S**2 + s2)).float()}

    return predict


@pytest.mark.parametrize("T", [20, 1000])
def test_ancestral_steps_with_the_exact_eps_give_the_data_variance(T: int) -> None:
    grid = curved_gamma(1)(torch.linspace(0, 1, T + 1, dtype=F64)).detach()
    process = GammaGridGaussian(grid)
    n = 10000
    g = torch.Generator().manual_seed(0)
    x = {"x": torch.randn(n, 1, generator=g)}
    out = AncestralSampler(steps=None)(exact_scaled_eps(grid), {"x": process}, x, T,
                                       lambda: {"x": torch.randn(n, 1, generator=g)})["x"]
    samples = out.double() * math.sqrt(1 + math.exp(float(grid[0])))
    expected = chain_variance(grid)
    se = expected * math.sqrt(2 / n)
    assert abs(float(samples.var()) - expected) < 4 * se
    assert abs(float(samples.mean())) < 4 * S / math.sqrt(n)
    if T == 20:
        assert expected < S**2 - 0.05  # 20 steps under-disperse: the recursion is informative
    else:
        assert abs(expected - S**2) < 0.005 and abs(float(samples.var()) - S**2) < 4 * se + 0.005


def test_ddim_with_eta_one_is_the_ancestral_step_and_steps_refuse_bad_grids() -> None:
    grid = curved_gamma(3)(torch.linspace(0, 1, 51, dtype=F64)).detach()
    process = GammaGridGaussian(grid, clip=None)
    g = torch.Generator().manual_seed(0)
    z, eps, noise = (torch.randn(6, 4, generator=g) for _ in range(3))
    t, s = torch.tensor([50, 50, 30, 7, 2, 1]), torch.tensor([49, 10, 29, 0, 1, 0])
    torch.testing.assert_close(process.ddim_step(z, eps, t, s, noise, eta=1.0),
                               process.reverse_step(z, eps, t, s, noise), rtol=1e-5, atol=1e-6)
    # the ancestral mean and variance are those of q(z_s | z_t, x_hat) written in alpha and sigma (eq. 31-33)
    a = torch.sigmoid(-grid).sqrt()
    sig2 = torch.sigmoid(grid)
    x_hat = (z.double() - sig2[t].sqrt().view(-1, 1) * eps.double()) / a[t].view(-1, 1)
    a_t, a_s, s2_t, s2_s = (v.view(-1, 1) for v in (a[t], a[s], sig2[t], sig2[s]))
    s2_ts = s2_t - (a_t / a_s) ** 2 * s2_s  # sigma^2_{t|s}
    mean = (a_t / a_s) * s2_s / s2_t * z.double() + a_s * s2_ts / s2_t * x_hat
    var = s2_ts * s2_s / s2_t
    torch.testing.assert_close(process.reverse_step(z, eps, t, s, None).double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((process.reverse_step(z, eps, t, s, noise) - process.reverse_step(
        z, eps, t, s, None)).double(), var.sqrt() * noise.double(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="increase"):
        GammaGridGaussian(torch.tensor([0.0, -1.0]))
    with pytest.raises(ValueError, match="s < t"):
        process.reverse_step(z, eps, s.clamp_min(1), s.clamp_min(1), None)


# ---------------------------------------------------------------------- section 5.2: the schedule's gradient
def _tiny_model(timesteps: int = 20, sampler: AncestralSampler | None = None, objective: str = "variance",
                features: int = 16) -> CrystalVDM:
    torch.manual_seed(0)
    return CrystalVDM(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, sampler=sampler, timesteps=timesteps,
                      schedule_features=features, schedule_objective=objective, time_dim=8)


def gaussian_draws(size: int, seed: int) -> tuple[dict, torch.Tensor, dict, dict]:
    """``N(0, I)`` data in the fields' shapes, antithetic times and the two noises."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"atom_types": (size, MAX_ATOMS, NUM_TYPES), "frac_coords": (size, MAX_ATOMS, 3),
              "lattice": (size, 6)}
    x0 = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    t = antithetic_times(size, g)
    noise = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    return x0, t, noise, {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_the_shape_gets_the_gradient_of_the_variance_and_the_rest_that_of_the_vlb() -> None:
    hooked, plain = _tiny_model(objective="variance"), _tiny_model(objective="vlb")
    x0, t, noise, noise_0 = gaussian_draws(64, 1)
    d = hooked.total_dim
    (hooked._terms(x0, t, noise, noise_0)["vlb"] / d).mean().backward()
    terms = plain._terms(x0, t, noise, noise_0)
    shape = plain.gamma.shape_parameters()
    ends = [plain.gamma.gamma_0, plain.gamma.gamma_1]
    rest = [p for p in plain.parameters() if all(p is not q for q in shape)]
    square = torch.autograd.grad(((terms["diffusion"] / d) ** 2).mean(), shape, retain_graph=True)
    vlb_shape = torch.autograd.grad((terms["vlb"] / d).mean(), shape, retain_graph=True)
    vlb_rest = torch.autograd.grad((terms["vlb"] / d).mean(), rest)
    hooked_shape = hooked.gamma.shape_parameters()
    hooked_rest = [p for p in hooked.parameters() if all(p is not q for q in hooked_shape)]
    for p, expected, other in zip(hooked_shape, square, vlb_shape, strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))
        assert not torch.allclose(p.grad, other, rtol=1e-2)
    for p, expected in zip(hooked_rest, vlb_rest, strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))
    assert all(float(p.grad.abs().max()) > 0 for p in [hooked.gamma.gamma_0, hooked.gamma.gamma_1])
    assert len(ends) == 2 and all(e in rest for e in ends)


def test_training_the_shape_on_the_variance_lowers_the_variance_and_keeps_the_mean() -> None:
    """With the exact epsilon of ``N(0, I)`` data the diffusion loss's mean is fixed by the endpoints
    (``1/2 D log(sigma_1^2 / sigma_0^2)`` over the data); 200 Adam steps on the shape alone with the variance
    objective must lower its variance a lot, and leave the mean where it was."""
    results = {}
    for objective in ("variance", "vlb"):
        model = _tiny_model(objective=objective, features=64)
        model.predict = exact_unit_eps
        optimizer = torch.optim.Adam(model.gamma.shape_parameters(), lr=3e-2)

        def measure(model: CrystalVDM = model) -> tuple[float, float, float]:
            with torch.no_grad():
                values = model._terms(*gaussian_draws(20000, 7))["diffusion"]
            return float(values.mean()), float(values.var()), float(values.std()) / math.sqrt(20000)

        before = measure()
        for step in range(200):
            optimizer.zero_grad()
            (model._terms(*gaussian_draws(256, 100 + step))["vlb"] / model.total_dim).mean().backward()
            optimizer.step()
        results[objective] = (before, measure())
    (mean0, var0, sem0), (mean1, var1, sem1) = results["variance"]
    s0, s1 = 1 / (1 + math.exp(13.3)), 1 / (1 + math.exp(-5.0))
    expected = 0.5 * (MAX_ATOMS * (NUM_TYPES + 3) + 6) * math.log(s1 / s0)
    for mean, sem in ((mean0, sem0), (mean1, sem1)):
        assert abs(mean - expected) < 4 * sem
    assert var1 < 0.6 * var0
    assert results["vlb"][1][1] > 0.8 * var0  # the VLB's own gradient does not do it


# ---------------------------------------------------------------------- the model
def crystals(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Codec-like batches: 1..N filled slots first, types 1..K, coordinates in [0, 1), empty slots zeroed."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = torch.randint(1, MAX_ATOMS + 1, (n,), generator=g)
    filled = (torch.arange(MAX_ATOMS) < n_atoms[:, None]).float()
    types = torch.randint(1, NUM_TYPES, (n, MAX_ATOMS), generator=g) * filled.long()
    return {
        "atom_types": torch.nn.functional.one_hot(types, NUM_TYPES).float(),
        "frac_coords": torch.rand(n, MAX_ATOMS, 3, generator=g) * filled.unsqueeze(-1),
        "lattice": torch.randn(n, 6, generator=g),
        "mask": filled,
    }


def test_a_tiny_run_lowers_the_loss() -> None:
    model = _tiny_model()
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


def test_fourier_features_and_the_extra_input_channels() -> None:
    f = torch.rand(5, 3, dtype=F64)
    feats = fourier_features(2 * f - 1, (7, 8))  # [5, 3 * 2 * 2]: (sin, cos) of n = 7, 8 per channel
    assert feats.shape == (5, 12)
    for j, n in enumerate((7, 8)):  # on the coordinate 2f - 1 they are harmonics 2^(n+1) of the fraction
        torch.testing.assert_close(feats.view(5, 3, 2, 2)[:, :, 0, j], torch.sin(2 ** (n + 1) * math.pi * f))
        torch.testing.assert_close(feats.view(5, 3, 2, 2)[:, :, 1, j], torch.cos(2 ** (n + 1) * math.pi * f))
    torch.testing.assert_close(fourier_features(2 * (f + 1) - 1, (7, 8)), feats, rtol=0, atol=1e-9)
    torch.manual_seed(0)
    net = FeatureCrystalTransformer(NUM_TYPES, MAX_ATOMS, d_model=16, n_layers=1, n_heads=2,
                                    site_feature_dim=12, lattice_feature_dim=24).eval()
    batch = {k: v for k, v in crystals(2, 0).items() if k != "mask"}
    extra = {"site_features": torch.randn(2, MAX_ATOMS, 12), "lattice_features": torch.randn(2, 24)}
    out = net({**batch, **extra})
    moved = net({**batch, **extra, "site_features": extra["site_features"] + 1.0})
    assert not torch.allclose(out["atom_types"], moved["atom_types"])
    with pytest.raises(ValueError, match="lacks"):
        net(batch)


def test_model_samples_deterministically_on_its_grid_and_with_ddim() -> None:
    model = _tiny_model(12).eval()
    assert model.nfe == 12
    with torch.no_grad():
        grid = model.processes()["lattice"].gammas64
        torch.testing.assert_close(grid, model.gamma(torch.linspace(0, 1, 13, dtype=F64)))
    first = model.sample(5, generator=torch.Generator().manual_seed(3))
    again = model.sample(5, generator=torch.Generator().manual_seed(3))
    other = model.sample(5, generator=torch.Generator().manual_seed(4))
    for key in first:
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["lattice"], other["lattice"])
    model.sampler = DDIMSampler(steps=6, eta=0.0)
    assert model.nfe == 6
    ddim = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert ddim["atom_types"].shape == (5, MAX_ATOMS, NUM_TYPES)
    assert not torch.equal(ddim["lattice"], first["lattice"])


def test_model_test_nll_is_a_deterministic_bound_on_the_codec_fields() -> None:
    model = _tiny_model().eval()
    spec = model.likelihood_spec()
    assert spec is not None and spec.kind == "upper_bound" and spec.estimator == "vlb"
    assert model.nll_space() == CODEC_SPACE
    batch = crystals(12, 2)
    nll = model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(0))
    again = model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (12,) and nll.dtype == F64 and bool(torch.isfinite(nll).all())
    assert torch.equal(nll, again)
    assert not torch.equal(nll, model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(1)))
    continuous = model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(0), continuous=True)
    assert bool(torch.isfinite(continuous).all())
    fitted = model.fit_likelihood(batch)
    assert fitted["empty_coordinate_proposal_std"] == pytest.approx(math.exp(-13.3 / 2), rel=1e-6)
    assert fitted["vlb_timesteps"] == 20 and fitted["vlb_decoders"]["atom_types"] == "categorical"


def test_test_nll_turns_the_bound_into_one_on_the_codec_fields() -> None:
    """With the bound replaced by the known ``-log N(y; 0, I)`` of every slot's coordinates ``y = 2 f - 1``,
    the codec's density is ``prod_filled 2^3 N(2 f - 1)`` (empty slots' coordinates integrate to 1) and the
    estimate adds ``KL(N(-1, tau^2) || N(0, 1))`` per empty coordinate, ``tau^2 = exp(gamma_0)``."""
    model = _tiny_model().eval()

    model.variational_bound = lambda x0, generator=None, continuous=False, every_step=False: (
        coordinate_gaussian_nll(x0))
    with torch.no_grad():
        model.gamma.gamma_0.fill_(-3.0)  # a proposal wide enough for its Monte Carlo error to be seen
    batch = crystals(6, 4)
    nll = model.test_nll(batch, draws=4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nll, expected_codec_nll(batch, math.exp(-3.0)), rtol=0, atol=0.05)


def test_evaluate_records_the_bound_as_the_test_nll(tmp_path: Path) -> None:
    from bench.config import compose
    from bench.run import run

    cfg = compose(tiny_run(
        tmp_path, "model=vdm", *TINY_TRANSFORMER, "model.module.timesteps=8",
        "model.module.schedule_features=8", "+evaluate.nll.draws=2", sample_batch=6,
    ))
    record, _ = run(cfg)
    entry = record.metrics["nll_test"]
    kind = (entry["nll_kind"], entry["nll_estimator"], entry["nll_space"])
    assert kind == ("upper_bound", "vlb", CODEC_SPACE)
    assert entry["n_scored"] > 0 and math.isfinite(entry["value"]) and entry["draws"] == 2
    assert entry["vlb_timesteps"] == 8 and record.cost["sample_nfe"] == 8
