"""Improved DDPM (Nichol & Dhariwal 2021, arXiv:2102.09672) on inputs with an independently known answer.

- eq. 15: ``v = 0`` / ``v = 1`` give ``beta_tilde`` / ``beta`` of the step, respaced steps included, and the
  ancestral step with ``variance="learned"`` adds exactly that variance;
- every term of the bound equals ``torch.distributions``' KL of the same two Gaussians (the decoder's and the
  prior's terms likewise); the categorical decoder is the Gaussian normalised over the one-hot vertices;
- the stop-gradient: ``L_vlb`` gives the mean (epsilon) rows of every output head no gradient, the variance
  rows a non-zero one (and without the detach the mean rows would get one);
- on 1-D Gaussian data ``N(m, s^2)`` the optimal reverse variance is the posterior variance of ``x_{t-1}``
  given ``x_t`` under the joint Gaussian: a per-step linear model trained with ``L_hybrid`` learns it within
  10% at every step (from up to 3x off at ``v = 0``);
- with the exact reverse process of that data the bound's expectation is the data's entropy plus
  ``KL(q(x_T) || N(0, 1))`` (the decoder is the true ``q(x0 | x_1)`` there, so it adds nothing): both
  estimators (every step; one uniform step) agree within Monte Carlo error, and a model with ``v = 0`` gets
  its own closed form, larger;
- the exact reverse process sampled with the learned variances reproduces the data's variance; respaced to
  5 of 20 steps, the learned variances stay closer to it than the posterior variance;
- sampling and the test NLL are deterministic under a fixed generator; the evaluate stage records the bound.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from bench.models.backbone import CrystalTransformer
from bench.models.base import CODEC_SPACE
from bench.models.diffusion.improved_ddpm import CrystalImprovedDDPM, variational_bound
from bench.models.diffusion.processes import LearnedVarianceVPGaussian, VPGaussian
from bench.models.diffusion.samplers import AncestralSampler, DPSampler

from tests.conftest import TINY_TRANSFORMER, tiny_run
from tests.nll_helpers import coordinate_gaussian_nll, expected_codec_nll

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TYPES, MAX_ATOMS = 4, 3
ADAM = functools.partial(torch.optim.Adam, lr=3e-3)
BACKBONE = functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2)


def cosine_bars(timesteps: int) -> torch.Tensor:
    """``alpha_bar_t``, ``t = 0..T``, of the clipped cosine schedule written out here (float64)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + 0.008) / 1.008 * math.pi / 2) ** 2
    bars = f / f[0]
    betas = (1 - bars[1:] / bars[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def beta_pair(bars: torch.Tensor, t: int, s: int) -> tuple[float, float]:
    """``(beta, beta_tilde)`` of the step ``t -> s``."""
    beta = 1 - bars[t] / bars[s]
    return float(beta), float((1 - bars[s]) / (1 - bars[t]) * beta)


# ---------------------------------------------------------------------- eq. 15
def test_v_zero_and_one_give_the_posterior_variance_and_beta_of_every_step() -> None:
    T = 50
    process = LearnedVarianceVPGaussian(T)
    bars = cosine_bars(T)
    pairs = [(2, 1), (10, 9), (50, 49), (40, 25), (33, 2), (7, 3)]  # consecutive and respaced steps
    t = torch.tensor([p[0] for p in pairs])
    s = torch.tensor([p[1] for p in pairs])
    shape = (len(pairs), 3)
    at_zero = process.log_variance(torch.zeros(shape, dtype=torch.float64), t, s).exp()
    at_one = process.log_variance(torch.ones(shape, dtype=torch.float64), t, s).exp()
    halfway = process.log_variance(torch.full(shape, 0.5, dtype=torch.float64), t, s).exp()
    for i, (ti, si) in enumerate(pairs):
        beta, tilde = beta_pair(bars, ti, si)
        for got, expected in ((at_zero, tilde), (at_one, beta), (halfway, math.sqrt(beta * tilde))):
            want = torch.full((3,), expected, dtype=torch.float64)
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=0)
    # s = 0: beta_tilde vanishes; its log is that of the step 2 -> 1, as the authors clip it
    one, zero = torch.tensor([1, 6]), torch.tensor([0, 0])
    floor = process.log_variance(torch.zeros(2, 1, dtype=torch.float64), one, zero).exp().flatten()
    torch.testing.assert_close(floor, torch.full((2,), beta_pair(bars, 2, 1)[1], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert float(process.log_variance(torch.ones(1, 1, dtype=torch.float64), one[:1], zero[:1]).exp()) == (
        pytest.approx(1 - float(bars[1]), rel=1e-12))


def test_the_learned_ancestral_step_adds_the_learned_variance() -> None:
    T = 50
    process = LearnedVarianceVPGaussian(T, clip=None)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    t, s = torch.tensor([40, 40, 12, 2]), torch.tensor([25, 39, 3, 1])
    pred = process.join(eps, v)
    mean = process.reverse_step(x_t, pred, t, s, None, variance="learned")
    step = process.reverse_step(x_t, pred, t, s, z, variance="learned")
    bars = cosine_bars(T)
    for i in range(4):
        beta, tilde = beta_pair(bars, int(t[i]), int(s[i]))
        sigma = torch.exp(0.5 * (v[i] * math.log(beta) + (1 - v[i]) * math.log(tilde)))
        torch.testing.assert_close(step[i] - mean[i], sigma * z[i], rtol=1e-5, atol=1e-6)
    # the mean is ddpm's posterior mean; v = 0 is ddpm's posterior-variance step
    fixed = VPGaussian(T, clip=None)
    torch.testing.assert_close(mean, fixed.reverse_step(x_t, eps, t, s, None))
    zero_v = process.join(eps, torch.zeros_like(v))
    torch.testing.assert_close(process.reverse_step(x_t, zero_v, t, s, z, variance="learned"),
                               fixed.reverse_step(x_t, eps, t, s, z), rtol=1e-5, atol=1e-6)
    # the fixed variances and every eps-only method read the epsilon half
    torch.testing.assert_close(process.reverse_step(x_t, pred, t, s, z),
                               fixed.reverse_step(x_t, eps, t, s, z))
    torch.testing.assert_close(process.ddim_step(x_t, pred, t, s, z, eta=0.3),
                               fixed.ddim_step(x_t, eps, t, s, z, eta=0.3))
    torch.testing.assert_close(process.denoise(x_t, pred, t), fixed.denoise(x_t, eps, t))


def test_learned_variances_are_refused_where_they_do_not_apply() -> None:
    plain = {"x": VPGaussian(10)}
    with pytest.raises(TypeError, match="learned variances for every field; x is VPGaussian"):
        AncestralSampler(variance="learned")(lambda x, t: x, plain, {"x": torch.zeros(2, 1)}, 10,
                                             lambda: {"x": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match="fixed variance"):
        LearnedVarianceVPGaussian(10).transition_costs(torch.zeros(11), 1, variance="learned")
    with pytest.raises(ValueError, match="fixed variance"):
        DPSampler(steps=3, draws=1, variance="learned").prepare(
            lambda x, t: {"x": torch.zeros(x["x"].shape[0], 2)}, {"x": LearnedVarianceVPGaussian(10)},
            {"x": torch.zeros(4, 1)}, 10)
    with pytest.raises(ValueError, match="timesteps >= 2"):
        LearnedVarianceVPGaussian(1)


# ---------------------------------------------------------------------- the terms of the bound
def test_every_vlb_term_is_the_kl_of_the_same_gaussians() -> None:
    T = 30
    process = LearnedVarianceVPGaussian(T, clip=None)
    bars = cosine_bars(T)
    g = torch.Generator().manual_seed(3)
    size = 64
    x0 = torch.randn(size, 2, 3, generator=g)
    t = torch.randint(2, T + 1, (size,), generator=g)
    x_t = process.q_sample(x0, t, torch.randn(size, 2, 3, generator=g))
    eps, v = 0.5 * torch.randn(size, 2, 3, generator=g), torch.randn(size, 2, 3, generator=g)
    got = process.vlb_term(x0, x_t, process.join(eps, v), t)
    normal = torch.distributions.Normal
    for i in range(size):
        ti = int(t[i])
        a_t, a_s = bars[ti], bars[ti - 1]
        beta, tilde = beta_pair(bars, ti, ti - 1)
        xt, x = x_t[i].double(), x0[i].double()
        x0_hat = (xt - (1 - a_t).sqrt() * eps[i].double()) / a_t.sqrt()

        def posterior_mean(start: torch.Tensor, a_t=a_t, a_s=a_s, beta=beta, xt=xt) -> torch.Tensor:
            return a_s.sqrt() * beta / (1 - a_t) * start + (1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t) * xt

        var = torch.exp(v[i].double() * math.log(beta) + (1 - v[i].double()) * math.log(tilde))
        q = normal(posterior_mean(x), math.sqrt(tilde))
        p = normal(posterior_mean(x0_hat), var.sqrt())
        expected = torch.distributions.kl_divergence(q, p).sum()
        assert float(got[i]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6), ti

    # t = 1: the decoder N(x0_hat, Sigma(1 -> 0)) at x0, Gaussian and categorical
    one = torch.ones(size, dtype=torch.long)
    x_1 = process.q_sample(x0, one, torch.randn(size, 2, 3, generator=g))
    gaussian = process.vlb_term(x0, x_1, process.join(eps, v), one)
    x0_hat = (x_1.double() - (1 - bars[1]).sqrt() * eps.double()) / bars[1].sqrt()
    _, floor = beta_pair(bars, 2, 1)
    var = torch.exp(v.double() * math.log(1 - float(bars[1])) + (1 - v.double()) * math.log(floor))
    expected = -normal(x0_hat, var.sqrt()).log_prob(x0.double()).flatten(1).sum(1)
    torch.testing.assert_close(gaussian, expected, rtol=1e-5, atol=1e-4)

    # categorical: a decoder that hesitates (x0_hat anywhere, Sigma of order 1, set through eps and v)
    classes = torch.randint(0, 3, (size, 2), generator=g)
    onehot = 2.0 * torch.nn.functional.one_hot(classes, 3).double() - 1.0
    x_1 = process.q_sample(onehot, one, torch.randn(size, 2, 3, generator=g, dtype=torch.float64))
    x0_hat = torch.randn(size, 2, 3, generator=g, dtype=torch.float64)
    var = torch.exp(0.5 * torch.randn(size, 2, 3, generator=g, dtype=torch.float64))
    eps = (x_1 - bars[1].sqrt() * x0_hat) / (1 - bars[1]).sqrt()
    log_beta = math.log(1 - float(bars[1]))
    v = (var.log() - math.log(floor)) / (log_beta - math.log(floor))
    categorical = process.vlb_term(onehot, x_1, process.join(eps, v), one, decoder="categorical")
    vertices = 2.0 * torch.eye(3, dtype=torch.float64) - 1.0  # the K one-hots in {-1, +1}
    density = normal(x0_hat.unsqueeze(-2), var.sqrt().unsqueeze(-2)).log_prob(vertices).sum(-1)  # [B, 2, K]
    decoder = torch.distributions.Categorical(logits=density)
    expected = -decoder.log_prob(classes).sum(1)
    assert float(expected.mean()) > 0.5  # far from a sure decoder, so the logits' scale matters
    torch.testing.assert_close(categorical, expected, rtol=1e-4, atol=1e-4)

    # L_T: KL(q(x_T | x0) || N(0, 1))
    prior = torch.distributions.kl_divergence(normal(bars[T].sqrt() * x0.double(), (1 - bars[T]).sqrt()),
                                              normal(0.0, 1.0))
    torch.testing.assert_close(process.prior_kl(x0), prior.flatten(1).sum(1))


def _tiny_model(timesteps: int = 20, sampler: AncestralSampler | None = None) -> CrystalImprovedDDPM:
    torch.manual_seed(0)
    return CrystalImprovedDDPM(BACKBONE, ADAM, NUM_TYPES, MAX_ATOMS, sampler=sampler, timesteps=timesteps,
                               time_dim=8)


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


def test_the_vlb_term_gives_the_mean_head_no_gradient() -> None:
    model = _tiny_model()
    batch = crystals(16, 1)
    heads = {"atom_types": model.denoiser.types_out, "frac_coords": model.denoiser.frac_out,
             "lattice": model.denoiser.lattice_out}
    widths = {"atom_types": NUM_TYPES, "frac_coords": 3, "lattice": 6}
    torch.manual_seed(5)
    terms = model.loss(batch)
    params = [p for head in heads.values() for p in (head.weight, head.bias)]
    vlb_grads = torch.autograd.grad(terms["vlb"], params, retain_graph=True)
    simple_grads = torch.autograd.grad(terms["simple"], params)
    for i, k in enumerate(heads):
        d = widths[k]
        for grad in (vlb_grads[2 * i], vlb_grads[2 * i + 1]):  # weight, bias: rows [eps (d), v (d)]
            assert torch.count_nonzero(grad[:d]) == 0, f"{k}: L_vlb reaches the mean head"
            assert torch.count_nonzero(grad[d:]) > 0, f"{k}: L_vlb does not reach the variance head"
        for grad in (simple_grads[2 * i], simple_grads[2 * i + 1]):
            assert torch.count_nonzero(grad[d:]) == 0 and torch.count_nonzero(grad[:d]) > 0
    # the control: the same term without the detach does reach the mean head
    x0 = model.to_diffusion_space(batch)
    t = torch.randint(1, model.timesteps + 1, (16,))
    x_t = {k: model.processes[k].q_sample(x0[k], t, torch.randn_like(x0[k])) for k in x0}
    pred = model.predict(x_t, t)
    attached = model.processes["lattice"].vlb_term(x0["lattice"], x_t["lattice"], pred["lattice"], t).sum()
    (grad,) = torch.autograd.grad(attached, heads["lattice"].bias)
    assert torch.count_nonzero(grad[:6]) > 0


# ---------------------------------------------------------------------- 1-D Gaussian data
M, S = 0.5, 0.5


def posterior_x0_variance(a: torch.Tensor) -> torch.Tensor:
    """``Var(x0 | x_t)`` for ``x0 ~ N(M, S^2)`` and ``x_t = sqrt(a) x0 + sqrt(1 - a) eps``."""
    return S**2 * (1 - a) / (a * S**2 + 1 - a)


def optimal_variance(bars: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``Var(x_{t-1} | x_t)`` under the joint Gaussian: ``beta_tilde + c^2 Var(x0 | x_t)`` (``t = 1``:
    ``Var(x0 | x_1)``)."""
    a_t, a_s = bars[t], bars[t - 1]
    beta = 1 - a_t / a_s
    c = a_s.sqrt() * beta / (1 - a_t)
    return (1 - a_s) / (1 - a_t) * beta + c**2 * posterior_x0_variance(a_t)


def exact_predictor(process: LearnedVarianceVPGaussian, zero_v: bool = False):  # noqa: ANN201
    """``[eps, v]`` of the true reverse process of ``N(M, S^2)``: epsilon of the posterior mean of ``x0``
    and the ``v`` whose eq. 15 variance is :func:`optimal_variance` (or ``v = 0``)."""
    bars = process.alpha_bars64

    def predict(x: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
        x_t = x["x"].double()
        a = bars[t].view(-1, 1)
        mean_x0 = M + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x_t - a.sqrt() * M)
        eps = (x_t - a.sqrt() * mean_x0) / (1 - a).sqrt()
        log_beta, log_tilde = (u.view(-1, 1) for u in process.log_beta_pair(t, t - 1))
        v = (optimal_variance(bars, t).log().view(-1, 1) - log_tilde) / (log_beta - log_tilde)
        v = torch.zeros_like(v) if zero_v else v
        return {"x": process.join(eps.to(x["x"].dtype), v.to(x["x"].dtype))}

    return predict


def test_a_trained_model_learns_the_optimal_reverse_variance_of_gaussian_data() -> None:
    """Per step ``t``: ``eps_hat = w_t x_t + b_t`` (the optimal epsilon is linear in ``x_t``) and a constant
    ``v_t``, trained 400 steps on ``L_hybrid`` (lambda = 0.001, stop-gradient as in the model)."""
    T = 10
    process = LearnedVarianceVPGaussian(T)
    bars = process.alpha_bars64
    steps = torch.arange(1, T + 1)
    truth = optimal_variance(bars, steps).log()
    w, b, v = (torch.zeros(T + 1, requires_grad=True) for _ in range(3))

    def learned() -> torch.Tensor:
        return process.log_variance(v.detach()[1:].double().view(-1, 1), steps, steps - 1).flatten()

    start = (learned() - truth).abs()
    optimiser = torch.optim.Adam([w, b, v], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        x0 = M + S * torch.randn(1024, 1, generator=g)
        t = torch.randint(1, T + 1, (1024,), generator=g)
        noise = torch.randn(1024, 1, generator=g)
        x_t = process.q_sample(x0, t, noise)
        eps = w[t].view(-1, 1) * x_t + b[t].view(-1, 1)
        frozen = process.join(eps.detach(), v[t].view(-1, 1))
        vlb = process.vlb_term(x0, x_t, frozen, t).mean() / math.log(2.0)
        loss = ((eps - noise) ** 2).mean() + 0.001 * T * vlb
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    error = (learned() - truth).abs()
    assert float(start.max()) > 1.0  # v = 0 (beta_tilde) is far off at small t
    assert float(error.max()) < 0.1, error  # within 10% of the optimal variance at every step


def _closed_form_bound(bars: torch.Tensor, log_var: torch.Tensor) -> float:
    """``E[L_vlb]`` for ``x0 ~ N(M, S^2)``, the true posterior mean of ``x0`` and the variances
    ``exp(log_var)`` (``[T]``, steps ``1..T``; no clipping): closed-form Gaussian KLs, decoder and prior."""
    T = len(log_var)
    total = 0.5 * (bars[T] * (M**2 + S**2) + (1 - bars[T]) - 1 - torch.log(1 - bars[T]))
    var = log_var.exp()
    v0 = posterior_x0_variance(bars[1])
    total = total + 0.5 * torch.log(2 * math.pi * var[0]) + v0 / (2 * var[0])
    for t in range(2, T + 1):
        a_t, a_s = bars[t], bars[t - 1]
        beta = 1 - a_t / a_s
        tilde, c = (1 - a_s) / (1 - a_t) * beta, a_s.sqrt() * beta / (1 - a_t)
        r = tilde / var[t - 1]
        total = total + 0.5 * (r - 1 - torch.log(r) + c**2 * posterior_x0_variance(a_t) / var[t - 1])
    return float(total)


def test_the_bound_of_the_true_reverse_process_is_the_entropy_of_the_data() -> None:
    T, n = 20, 20000
    process = LearnedVarianceVPGaussian(T)
    bars = process.alpha_bars64
    steps = torch.arange(1, T + 1)
    a_T = bars[T]
    entropy = 0.5 * math.log(2 * math.pi * math.e * S**2)
    prior_gap = 0.5 * float(a_T * (M**2 + S**2) - a_T - torch.log(a_T * S**2 + 1 - a_T))  # KL(q(x_T)||N(0,1))
    assert _closed_form_bound(bars, optimal_variance(bars, steps).log()) == pytest.approx(
        entropy + prior_gap, abs=1e-9)
    zero_v = process.log_variance(torch.zeros(T, 1, dtype=torch.float64), steps, steps - 1).flatten()
    worse = _closed_form_bound(bars, zero_v)
    assert worse > entropy + 0.5  # the posterior variance is a worse model of this data
    g = torch.Generator().manual_seed(0)
    x0 = {"x": M + S * torch.randn(n, 1, generator=g, dtype=torch.float64)}
    for zero, expected in ((False, entropy + prior_gap), (True, worse)):
        predictor = exact_predictor(process, zero_v=zero)
        for every_step in (True, False):
            values = variational_bound(predictor, {"x": process}, x0, generator=g, every_step=every_step,
                                       clip=False)
            sem = float(values.std()) / math.sqrt(n)
            assert abs(float(values.mean()) - expected) < 4 * sem + 1e-3, (zero, every_step, sem)


class _StepAsTerm(LearnedVarianceVPGaussian):
    """A process whose bound terms are known numbers: ``L_{t-1} = t``, ``L_T = 0``."""

    def vlb_term(self, x0, x_t, pred, t, clip=False, decoder="gaussian"):  # noqa: ANN001, ANN201
        return t.double()

    def prior_kl(self, x0):  # noqa: ANN001, ANN201
        return torch.zeros(x0.shape[0], dtype=torch.float64)


def test_the_one_step_estimate_of_the_bound_is_unbiased() -> None:
    """With ``L_{t-1} = t`` the bound is ``1 + 2 + ... + T``: every-step sums it exactly, and the one-step
    estimate ``L_0 + (T - 1) L_{t-1}``, ``t`` uniform in ``2..T``, averages to it."""
    T, n = 20, 20000
    processes = {"x": _StepAsTerm(T)}
    x0 = {"x": torch.zeros(n, 1)}
    g = torch.Generator().manual_seed(0)
    exact = variational_bound(lambda x, t: x, processes, x0, generator=g, every_step=True)
    assert torch.all(exact == T * (T + 1) / 2)
    one_step = variational_bound(lambda x, t: x, processes, x0, generator=g)
    assert set(((one_step - 1) / (T - 1)).round().long().tolist()) == set(range(2, T + 1))
    sem = float(one_step.std()) / math.sqrt(n)
    assert abs(float(one_step.mean()) - T * (T + 1) / 2) < 4 * sem


def test_sampling_the_true_reverse_process_with_learned_variances_matches_the_data() -> None:
    T, n = 20, 20000
    process = LearnedVarianceVPGaussian(T)
    truth = S**2 - float(posterior_x0_variance(process.alpha_bars64[1]))  # the last step returns E[x0 | x_1]

    def sample(variance: str, steps: int | None, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = {"x": torch.randn(n, 1, generator=g)}
        return AncestralSampler(steps=steps, variance=variance)(
            exact_predictor(process), {"x": process}, x, T, lambda: {"x": torch.randn(n, 1, generator=g)}
        )["x"]

    full = sample("learned", None)
    assert abs(float(full.mean()) - M) < 4 * S / math.sqrt(n)
    assert abs(float(full.var()) - truth) < 4 * truth * math.sqrt(2 / n)
    assert float(sample("posterior", None).var()) < truth - 0.03  # beta_tilde under-disperses
    short, fixed = sample("learned", 5), sample("posterior", 5)
    assert abs(float(short.var()) - truth) < abs(float(fixed.var()) - truth)
    torch.testing.assert_close(sample("learned", 5), short, rtol=0, atol=0)
    assert not torch.equal(sample("learned", 5, seed=1), short)


# ---------------------------------------------------------------------- the model
def test_model_samples_deterministically_with_its_learned_variances() -> None:
    model = _tiny_model(sampler=AncestralSampler(steps=6, variance="learned")).eval()
    assert model.nfe == 6
    first = model.sample(5, generator=torch.Generator().manual_seed(3))
    again = model.sample(5, generator=torch.Generator().manual_seed(3))
    other = model.sample(5, generator=torch.Generator().manual_seed(4))
    for key in first:
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["lattice"], other["lattice"])
    model.sampler = AncestralSampler(steps=6)  # the fixed posterior variance: another sample
    fixed = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(first["lattice"], fixed["lattice"])


def test_model_test_nll_is_a_deterministic_bound_on_the_codec_fields() -> None:
    model = _tiny_model().eval()
    spec = model.likelihood_spec()
    assert spec is not None and spec.kind == "upper_bound" and spec.estimator == "vlb"
    assert model.nll_space() == CODEC_SPACE
    batch = crystals(12, 2)
    nll = model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(0))
    again = model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(0))
    assert nll.shape == (12,) and nll.dtype == torch.float64 and bool(torch.isfinite(nll).all())
    assert torch.equal(nll, again)
    assert not torch.equal(nll, model.test_nll(batch, draws=3, generator=torch.Generator().manual_seed(1)))
    fitted = model.fit_likelihood(batch)
    assert fitted["empty_coordinate_proposal_std"] == pytest.approx(
        math.sqrt(1 - float(cosine_bars(20)[1])), rel=1e-12)


def test_test_nll_turns_the_bound_into_one_on_the_codec_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bound replaced by the known ``-log N(y; 0, I)`` of every slot's coordinates ``y = 2 f - 1``
    (types and lattice free), the codec's density of a crystal is ``prod_filled 2^3 N(2 f - 1)`` (the empty
    slots' coordinates integrate to 1), and the estimate adds ``KL(N(-1, tau^2) || N(0, 1))`` per empty
    coordinate, the price of the proposal that integrates them out."""
    from bench.models.diffusion import improved_ddpm

    def known(predictor, processes, x0, decoders, generator, every_step, clip):  # noqa: ANN001, ANN202
        return coordinate_gaussian_nll(x0)

    monkeypatch.setattr(improved_ddpm, "variational_bound", known)
    model = _tiny_model().eval()
    batch = crystals(6, 4)
    draws = 4000
    nll = model.test_nll(batch, draws=draws, generator=torch.Generator().manual_seed(0))
    expected = expected_codec_nll(batch, 1 - float(cosine_bars(20)[1]))
    torch.testing.assert_close(nll, expected, rtol=0, atol=0.15)  # Monte Carlo error ~0.04 per crystal


def test_evaluate_records_the_bound_as_the_test_nll(tmp_path: Path) -> None:
    from bench.config import compose
    from bench.run import run

    cfg = compose(tiny_run(
        tmp_path, "model=improved_ddpm", *TINY_TRANSFORMER, "model.module.timesteps=20",
        "model.module.sampler.steps=4", "+evaluate.nll.draws=2", sample_batch=6,
    ))
    record, _ = run(cfg)
    entry = record.metrics["nll_test"]
    kind = (entry["nll_kind"], entry["nll_estimator"], entry["nll_space"])
    assert kind == ("upper_bound", "vlb", CODEC_SPACE)
    assert entry["n_scored"] > 0 and math.isfinite(entry["value"]) and entry["draws"] == 2
    assert entry["vlb_decoders"]["atom_types"] == "categorical"
