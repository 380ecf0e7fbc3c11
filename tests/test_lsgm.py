"""LSGM (Vahdat, Kreis & Kautz 2021, arXiv:2106.05931) on inputs with an independently known answer.

- the mixed score: with ``alpha = 0`` it is exactly the Normal prior's noise prediction ``sigma_t z_t`` (score
  ``-z_t``), with ``alpha = 1`` exactly the network's;
- the denoising-score-matching cross-entropy: with the all-Normal prior and ``z ~ N(0, I)`` it averages to the
  Gaussian entropy ``D/2 log(2 pi e)``; with a Gaussian posterior ``N(mu, s^2)`` and the analytic score of a
  Gaussian prior it averages to the closed-form cross-entropy (importance-sampled or uniform ``t``);
- the score model's objective: for the Normal prior on ``N(0, I)`` latents the error is ``D alpha_t^2``, so
  each weighting averages to its integral (written out or by quadrature);
- a prior trained on a shifted, narrow latent distribution lowers its cross-entropy towards that
  distribution's entropy, learns a mixing weight, and its ODE samples land on the distribution;
- the stages: ``vae`` is the plain VAE's loss and leaves the prior as it was; ``end_to_end`` trains every
  network, the cross-entropy moving only the encoder and the score objective only the prior; ``prior`` leaves
  the VAE as it was; a staged run of the real training code records both stages and their weights;
- with the Normal prior the ODE sampler and the test NLL are, draw for draw, the plain VAE's; sampling gives
  decodable crystals and is a function of the generator's seed, with either sampler.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from bench.datasets.codec import CrystalCodec, DecodeFailure
from bench.datasets.tiny import tiny_structures
from bench.models.backbone import CrystalTransformer
from bench.models.diffusion.latent_sde import (
    LatentSDEPrior,
    latent_cross_entropy,
    normal_prior_eps,
    score_matching_loss,
)
from bench.models.diffusion.lsgm import CrystalLSGM
from bench.models.diffusion.sde import VPSDE, EulerMaruyamaSampler, ProbabilityFlowSampler
from bench.models.vae.vae import CrystalVAE
from pymatgen.core import Structure
from scipy.integrate import quad

from tests.conftest import tiny_run
from tests.test_models import compose_model

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
SDE = VPSDE(0.1, 20.0, 1e-2)


def coef(t: float) -> tuple[float, float, float]:
    """``(beta, alpha, sigma^2)`` at ``t``, written out from the SDE's definition (not the class)."""
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    return 0.1 + t * (20.0 - 0.1), math.exp(-0.5 * integral), -math.expm1(-integral)


def normal_prior(dim: int, mixing_logit: float = -math.inf) -> LatentSDEPrior:
    """A prior whose mixing weight is ``sigmoid(mixing_logit)`` in every dimension (0: all Normal)."""
    torch.manual_seed(0)
    prior = LatentSDEPrior(dim, SDE, hidden_dim=8, num_blocks=1, time_dim=8)
    with torch.no_grad():
        prior.mixing_logit.fill_(mixing_logit)
    return prior


def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    values = values.detach()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


# ---------------------------------------------------------------------- the mixed score
def test_the_mixed_score_is_the_normal_priors_at_alpha_zero_and_the_networks_at_alpha_one() -> None:
    g = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(64, 5, generator=g), 0.01 + 0.99 * torch.rand(64, generator=g)
    prior = normal_prior(5)
    eps = prior(z_t, t)
    sigma = torch.tensor([math.sqrt(coef(float(ti))[2]) for ti in t])
    assert torch.equal(eps, normal_prior_eps(SDE, z_t, t))
    torch.testing.assert_close(eps, sigma[:, None] * z_t, rtol=1e-6, atol=0)
    torch.testing.assert_close(-eps / sigma[:, None], -z_t, rtol=1e-6, atol=1e-7)  # score of N(0, I)
    with torch.no_grad():
        prior.mixing_logit.fill_(math.inf)
    assert torch.equal(prior(z_t, t), prior.net(z_t, t))
    fresh = LatentSDEPrior(5, SDE)
    torch.testing.assert_close(fresh.mixing, torch.full((5,), 1.0 / (1.0 + math.exp(3.0))))


# ---------------------------------------------------------------------- the cross-entropy
def test_the_cross_entropy_of_normal_latents_under_the_normal_prior_is_the_gaussian_entropy() -> None:
    dim, n = 4, 200_000
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(n, dim, generator=g, dtype=F64)
    prior = normal_prior(dim)
    for importance in (True, False):
        values = latent_cross_entropy(prior, SDE, z0, g, importance)
        mean, error = mean_and_error(values)
        assert abs(mean - 0.5 * dim * math.log(2 * math.pi * math.e)) < 4 * error + 1e-3, (importance, mean)
    # the same through the module's own estimate (what the VAE's loss reads)
    mean, error = mean_and_error(prior.cross_entropy(z0, g))
    assert abs(mean - 0.5 * dim * math.log(2 * math.pi * math.e)) < 4 * error + 1e-3


def gaussian_eps(m: torch.Tensor, v: torch.Tensor):  # noqa: ANN201
    """The exact noise prediction of a prior ``N(m, diag(v))`` diffused by the VP SDE:
    ``p_t = N(alpha_t m, alpha_t^2 v + sigma_t^2)``, ``eps = sigma_t (z_t - alpha_t m) / (alpha_t^2 v +
    sigma_t^2)``."""

    def eps_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = torch.tensor([coef(float(ti)) for ti in t], dtype=F64)
        a, s2 = c[:, 1:2], c[:, 2:3]
        return s2.sqrt() * (z_t - a * m) / (a**2 * v + s2)

    return eps_fn


@pytest.mark.parametrize("importance", [True, False])
def test_the_score_matching_cross_entropy_of_gaussians_is_the_closed_form(importance: bool) -> None:
    """``q = N(mu, s^2)``, ``p = N(m, v)``: ``CE(q_eps || p_eps)`` of the two smoothed by the kernel at
    ``eps``, ``1/2 sum [log 2 pi c_p + (alpha^2 (mu - m)^2 + alpha^2 s^2 + sigma^2) / c_p]``,
    ``c_p = alpha^2 v + sigma^2``. Two priors, so the estimate follows the prior, not a constant."""
    mu, s = torch.tensor([0.8, -1.5, 0.3], dtype=F64), torch.tensor([0.3, 0.6, 1.1], dtype=F64)
    n = 100_000
    g = torch.Generator().manual_seed(2)
    z0 = mu + s * torch.randn(n, 3, generator=g, dtype=F64)
    _, a, s2 = coef(SDE.eps)
    for m, v in ((torch.tensor([0.5, -1.0, 0.0], dtype=F64), torch.tensor([0.4, 0.5, 2.0], dtype=F64)),
                 (torch.tensor([-1.0, 1.0, 2.0], dtype=F64), torch.tensor([1.5, 0.2, 0.7], dtype=F64))):
        values = latent_cross_entropy(gaussian_eps(m, v), SDE, z0, g, importance)
        mean, error = mean_and_error(values)
        c_p = a**2 * v + s2
        closed = float(0.5 * (torch.log(2 * math.pi * c_p) + (a**2 * (mu - m) ** 2 + a**2 * s**2 + s2) / c_p)
                       .sum())
        assert abs(mean - closed) < 4 * error + 1e-3, (mean, closed, error)


# ---------------------------------------------------------------------- the score model's objective
def test_each_weighting_of_the_score_objective_averages_to_its_integral() -> None:
    """All-Normal prior on ``N(0, I)`` latents: ``eps - sigma_t z_t = alpha_t^2 eps - alpha_t sigma_t z_0``,
    so ``E||.||^2 = D alpha_t^2`` and the objective is ``D int_eps^1 w(t) alpha_t^2 dt``:
    ``D/2 log(sigma_1^2 / sigma_eps^2)`` (likelihood), ``D/2 (sigma_1^2 - sigma_eps^2)`` (reweighted),
    quadrature (unweighted)."""
    dim, n = 3, 200_000
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(n, dim, generator=g, dtype=F64)
    prior = normal_prior(dim)
    s2_eps, s2_1 = coef(SDE.eps)[2], coef(1.0)[2]
    expected = {
        "likelihood": 0.5 * dim * math.log(s2_1 / s2_eps),
        "reweighted": 0.5 * dim * (s2_1 - s2_eps),
        "unweighted": dim * quad(lambda t: coef(t)[1] ** 2, SDE.eps, 1.0)[0],
    }
    for weighting, want in expected.items():
        mean, error = mean_and_error(score_matching_loss(prior, SDE, z0, weighting, g))
        assert abs(mean - want) < 4 * error + 1e-4, (weighting, mean, want, error)
    with pytest.raises(ValueError, match="weighting"):
        score_matching_loss(prior, SDE, z0[:2], "uniform", g)


def test_a_trained_prior_fits_a_shifted_narrow_latent_and_samples_it() -> None:
    """Latents ``N([2.5, -1.5], 0.2^2)``: the Normal prior's cross-entropy is about 6.2 nats, their entropy
    -0.38; 400 steps of the reweighted objective bring the cross-entropy down by more than 3 nats (to about
    0.9), raise the mixing weights (0.0025 to about 0.01), and the probability-flow ODE draws land on the
    distribution: their mean on its centre, their spread well inside the Normal's."""
    center, scale = torch.tensor([2.5, -1.5]), 0.2
    torch.manual_seed(0)
    prior = LatentSDEPrior(2, SDE, hidden_dim=64, num_blocks=2, time_dim=16, mixing_logit_init=-6.0)
    optimiser = torch.optim.Adam(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    eval_z = center + scale * torch.randn(20_000, 2, generator=g)

    def cross_entropy() -> float:
        with torch.no_grad():
            return float(prior.cross_entropy(eval_z, torch.Generator().manual_seed(5)).mean())

    before = cross_entropy()
    normal = float(0.5 * (center.pow(2).sum() + 2 * scale**2) + math.log(2 * math.pi))
    assert before == pytest.approx(normal, abs=0.3)  # sigmoid(-6): almost exactly the Normal prior
    for _ in range(400):
        z = center + scale * torch.randn(256, 2, generator=g)
        loss = prior.loss(z).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = cross_entropy()
    assert after < before - 3.0, (before, after)
    assert after > math.log(2 * math.pi * math.e * scale**2) - 0.3  # no lower than the entropy, give or take
    assert bool((prior.mixing > 0.005).all())
    with torch.no_grad():
        draws = prior.sample(torch.randn(2_000, 2, generator=g), ProbabilityFlowSampler("rk4", 50), None)
    torch.testing.assert_close(draws.mean(0), center, atol=0.25, rtol=0)
    assert bool((draws.std(0) < 0.9).all())


# ---------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def codec() -> CrystalCodec:
    return CrystalCodec(max_atoms=8).fit(tiny_structures("train"))


@pytest.fixture(scope="module")
def batch(codec: CrystalCodec) -> dict[str, torch.Tensor]:
    return codec.encode(tiny_structures("train"))


def build(cls: type, codec: CrystalCodec, **kwargs: object):  # noqa: ANN201
    torch.manual_seed(0)
    extra = {"prior_hidden_dim": 16, "prior_blocks": 1, "prior_time_dim": 8} if cls is CrystalLSGM else {}
    return cls(
        backbone=functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2),
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
        num_types=codec.num_types, max_atoms=codec.max_atoms, latent_dim=4, **{**extra, **kwargs},
    )


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model: CrystalLSGM, batch: dict[str, torch.Tensor], steps: int) -> list[dict[str, float]]:
    optimiser = model.configure_optimizers()
    logged = []
    for _ in range(steps):
        out = model.loss(batch)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        logged.append({k: float(v.detach()) for k, v in out.items()})
    return logged


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_the_vae_stage_is_the_plain_vae_and_leaves_the_prior_as_it_was(
    codec: CrystalCodec, batch: dict[str, torch.Tensor]
) -> None:
    lsgm, vae = build(CrystalLSGM, codec), build(CrystalVAE, codec)
    vae_state = vae.state_dict()
    assert all(torch.equal(v, vae_state[k]) for k, v in lsgm.state_dict().items() if k in vae_state)
    lsgm.set_stage("vae")
    torch.manual_seed(7)
    mine = lsgm.loss(batch)
    torch.manual_seed(7)
    theirs = vae.loss(batch)
    assert set(mine) == set(theirs)
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0)
    trainable = {n for n, p in lsgm.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in lsgm.named_parameters() if not n.startswith("prior.")}
    before = state(lsgm)
    train_steps(lsgm, batch, 3)
    after = state(lsgm)
    assert not moved(before, after, "prior.")
    assert moved(before, after, "encoder.") and moved(before, after, "decoder.")


def test_end_to_end_trains_every_network_each_objective_moving_only_its_side(
    codec: CrystalCodec, batch: dict[str, torch.Tensor]
) -> None:
    lsgm = build(CrystalLSGM, codec, kl_warmup_steps=1000)
    lsgm.set_stage("vae")
    assert lsgm.current_beta() == pytest.approx(0.01 / 1000)  # step 0 of the warm-up
    lsgm.set_stage("end_to_end")
    assert lsgm.current_beta() == 0.01  # warmed up in stage vae: the full weight from the stage's first step
    assert all(p.requires_grad for p in lsgm.parameters())
    out = lsgm.loss(batch)
    assert {"kl", "cross_entropy", "entropy", "prior_loss", "mixing"} <= set(out)
    recon = out["type_ce"] + out["frac_mse"] + out["lattice_mse"]
    torch.testing.assert_close(out["loss"], recon + 0.01 * out["kl"] + out["prior_loss"])
    torch.testing.assert_close(out["kl"], out["cross_entropy"] - out["entropy"])

    mu, logvar = lsgm.encode(batch)
    z = lsgm.reparameterise(mu, logvar)
    lsgm.prior.cross_entropy(z, frozen=True).mean().backward()  # the VAE's term: the encoder only
    assert all(p.grad is None for p in lsgm.prior.parameters())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in lsgm.encoder.parameters())
    lsgm.zero_grad(set_to_none=True)
    z = lsgm.reparameterise(*lsgm.encode(batch))
    lsgm.prior.loss(z).mean().backward()  # the score model's objective: the prior only
    assert all(p.grad is None for p in lsgm.encoder.parameters())
    assert lsgm.prior.mixing_logit.grad is not None and lsgm.prior.net.out.weight.grad is not None

    lsgm.zero_grad(set_to_none=True)
    before = state(lsgm)
    train_steps(lsgm, batch, 3)
    after = state(lsgm)
    for prefix in ("encoder.", "decoder.", "prior.net.", "prior.mixing_logit"):
        assert moved(before, after, prefix), prefix


def test_the_prior_stage_trains_the_score_model_alone(
    codec: CrystalCodec, batch: dict[str, torch.Tensor]
) -> None:
    lsgm = build(CrystalLSGM, codec)
    lsgm.set_stage("prior")
    assert {n for n, p in lsgm.named_parameters() if p.requires_grad} == {
        n for n, _ in lsgm.named_parameters() if n.startswith("prior.")}
    before = state(lsgm)
    logged = train_steps(lsgm, batch, 3)
    assert set(logged[0]) == {"loss", "prior_loss", "mixing"}
    after = state(lsgm)
    assert moved(before, after, "prior.")
    assert not moved(before, after, "encoder.") and not moved(before, after, "decoder.")
    with pytest.raises(ValueError, match="no training stage"):
        lsgm.set_stage("autoencoder")


def all_normal(model: CrystalLSGM) -> CrystalLSGM:
    with torch.no_grad():
        model.prior.mixing_logit.fill_(-math.inf)
    return model


def test_with_the_normal_prior_ode_samples_and_the_test_nll_are_the_vaes(
    codec: CrystalCodec, batch: dict[str, torch.Tensor]
) -> None:
    """``alpha = 0``: the probability-flow ODE is ``dz/dt = 1/2 beta (sigma z / sigma - z) = 0``, so the
    latent is its ``N(0, I)`` draw and ``-log p_ODE(z) = -log N(z; 0, I)``: samples and bound are the plain
    VAE's (same weights, same generator)."""
    ode = ProbabilityFlowSampler("dopri5", atol=1e-7, rtol=1e-7)
    lsgm = all_normal(build(CrystalLSGM, codec, sampler=ode))
    vae = build(CrystalVAE, codec)
    mine = lsgm.sample(5, generator=torch.Generator().manual_seed(11))
    theirs = vae.sample(5, generator=torch.Generator().manual_seed(11))
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-5)
    lsgm.eval()
    vae.eval()
    lsgm.fit_likelihood(batch, torch.Generator().manual_seed(1))
    vae.fit_likelihood(batch, torch.Generator().manual_seed(1))
    nll = lsgm.test_nll(batch, draws=1, generator=torch.Generator().manual_seed(3))  # Hutchinson's trace
    want = vae.test_nll(batch, 1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(nll, want, rtol=0, atol=1e-3)
    lsgm.nll_trace = "exact"  # draws nothing but the posterior's noise: two draws are the VAE's two
    nll = lsgm.test_nll(batch, draws=2, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    want = (vae.test_nll(batch, 1, g) + vae.test_nll(batch, 1, g)) / 2
    torch.testing.assert_close(nll, want, rtol=0, atol=1e-3)
    assert lsgm.likelihood_spec().kind == "upper_bound"


@pytest.mark.parametrize("sampler", [ProbabilityFlowSampler("rk4", 8), EulerMaruyamaSampler(10)])
def test_sampling_gives_decodable_crystals_and_follows_the_seed(
    codec: CrystalCodec, batch: dict[str, torch.Tensor], sampler: object
) -> None:
    lsgm = build(CrystalLSGM, codec, sampler=sampler, mixing_logit_init=0.0)
    train_steps(lsgm, batch, 5)
    first = lsgm.sample(6, generator=torch.Generator().manual_seed(1))
    again = lsgm.sample(6, generator=torch.Generator().manual_seed(1))
    other = lsgm.sample(6, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["lattice"], other["lattice"])
    decoded = codec.decode(first)
    assert len(decoded) == 6 and all(isinstance(s, Structure | DecodeFailure) for s in decoded)
    assert any(isinstance(s, Structure) for s in decoded)
    assert lsgm.nfe == sampler.nfe() + 1
    with pytest.raises(TypeError, match="continuous-time"):
        build(CrystalLSGM, codec, sampler=object())


# ---------------------------------------------------------------------- the config and a staged run
def test_the_config_is_the_vae_with_a_score_prior_and_two_stages() -> None:
    vae, lsgm = compose_model("vae"), compose_model("lsgm")
    assert lsgm.family == "diffusion" and lsgm.paper.startswith("Vahdat, Kreis, Kautz (2021)")
    for key in ("latent_dim", "beta", "kl_warmup_steps", "backbone", "optimizer"):
        assert lsgm.module[key] == vae.module[key], key
    assert [s.name for s in lsgm.stages] == ["vae", "end_to_end"]
    assert sum(float(s.share) for s in lsgm.stages) == pytest.approx(1.0)
    assert lsgm.module.prior_weighting == "reweighted" and float(lsgm.module.eps) == 0.01
    assert lsgm.module.sampler._target_.endswith("ProbabilityFlowSampler")


@pytest.mark.parametrize("second", ["end_to_end", "prior"])
def test_training_in_stages_with_the_training_code(tmp_path: Path, second: str) -> None:
    """``bench.train.train`` of the tiny config: stage ``vae`` leaves the prior at its initial state (every
    mixing logit at the config's -3); ``end_to_end`` then moves the VAE and the prior, ``prior`` the prior
    alone."""
    from bench.config import compose
    from bench.sample import sample
    from bench.train import train

    own = list(compose_model("lsgm").test_overrides)
    cfg = compose(tiny_run(
        tmp_path, "metrics.names=[struct_valid]", "model=lsgm", *own, f"model.stages.1.name={second}",
        steps=8, samples=4, sample_batch=4,
    ))
    summary = train(cfg)
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("vae", 4), (second, 4)]

    def weights(path: str | Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    first = weights(summary["stages"][0]["checkpoint"])
    final = weights(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt")
    initial = float(cfg.model.module.mixing_logit_init)
    assert initial == -3.0
    assert torch.equal(first["prior.mixing_logit"], torch.full_like(first["prior.mixing_logit"], initial))
    assert moved(first, final, "prior.")
    assert moved(first, final, "encoder.") == (second == "end_to_end")
    assert moved(first, final, "decoder.") == (second == "end_to_end")
    drawn = sample(cfg)
    assert drawn["num_samples"] == 4 and Path(drawn["path"]).is_file()


def test_a_point_mass_with_its_exact_score_costs_the_entropy_of_its_smoothed_self_on_every_draw() -> None:
    """``z_0 = 0`` and the exact score of the point mass (``eps_hat = z_t / sigma_t``, the noise itself): the
    denoising error is zero, and the estimate is, draw for draw, the entropy of the point mass smoothed at
    ``eps``, ``D/2 log(2 pi e sigma_eps^2)`` (up to ``alpha_1^4`` from ``N(0, I)`` at ``t = 1``)."""
    dim = 3
    z0 = torch.zeros(500, dim, dtype=F64)

    def exact(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = torch.tensor([coef(float(ti)) for ti in t], dtype=F64)
        return z_t / c[:, 2:3].sqrt()

    values = latent_cross_entropy(exact, SDE, z0, torch.Generator().manual_seed(0))
    want = 0.5 * dim * math.log(2 * math.pi * math.e * coef(SDE.eps)[2])
    torch.testing.assert_close(values, torch.full_like(values, want), rtol=0, atol=1e-7)
