"""The VAE family's pluggable latents (beta-TCVAE, FactorVAE, JointVAE) and the beta-VAE config, on inputs
whose answer is known in closed form: Gaussian aggregate posteriors whose mutual information, total
correlation and dimension-wise KL are textbook formulas, discriminators set by hand, uniform and one-hot
categoricals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench.models.vae.latents import (
    BetaTCLatent,
    DiagonalGaussian,
    FactorLatent,
    JointLatent,
    capacity,
    categorical_kl_uniform,
    gumbel_softmax,
    kl_decomposition,
    permute_dims,
)
from torch.distributions import Categorical, Normal, kl_divergence

from tests.test_cdvae import make_model, random_batch
from tests.test_models import compose_model

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_batch(m: int, d: int, correlated: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Posteriors ``q(z | n) = N(mu_n, s^2 I)`` and one draw from each.

    Independent: ``mu_n ~ N(0, I)``, ``s = 1``, so ``q(z) = N(0, 2 I)``: ``MI = D log(2) / 2``, ``TC = 0``,
    ``dim-KL = D (1 - log 2) / 2``. Correlated: every dimension's mean is one ``u ~ N(0, 1)`` and ``s = 0.1``,
    so ``q(z) = N(0, 11^T + 0.01 I)``, a strongly correlated Gaussian.
    """
    g = torch.Generator().manual_seed(seed)
    if correlated:
        mu = torch.randn(m, 1, generator=g).expand(m, d).clone()
        logvar = torch.full((m, d), math.log(0.01))
    else:
        mu = torch.randn(m, d, generator=g)
        logvar = torch.zeros(m, d)
    z = mu + torch.randn(m, d, generator=g) * torch.exp(0.5 * logvar)
    return z, mu, logvar


def gaussian_tc(cov: torch.Tensor) -> float:
    """Total correlation of ``N(0, cov)``: ``(sum_d log cov_dd - log det cov) / 2``."""
    return 0.5 * float(torch.log(torch.diagonal(cov)).sum() - torch.logdet(cov))


# ---------------------------------------------------------------------------------------------- beta-VAE
def test_beta_vae_is_cdvae_with_four_times_the_kl_weight() -> None:
    cdvae, beta_vae = compose_model("cdvae"), compose_model("beta_vae")
    assert float(cdvae.module.beta) == 0.01 and float(beta_vae.module.beta) == 0.04
    differing = {k for k in cdvae.module if cdvae.module[k] != beta_vae.module[k]}
    assert differing == {"beta"} and set(beta_vae.module) == set(cdvae.module)
    assert beta_vae.get("paper", "").startswith("Higgins")


def test_beta_one_gives_the_plain_kl_loss() -> None:
    """``loss(beta) = loss(0) + beta KL`` exactly, so ``beta = 1`` is the reconstruction terms plus the KL."""
    batch = random_batch()
    out = {}
    for beta in (0.0, 1.0, 0.04):
        torch.manual_seed(1)
        out[beta] = make_model(beta=beta).loss(batch)
    assert torch.equal(out[0.0]["kl"], out[1.0]["kl"]) and float(out[1.0]["kl"].detach()) > 0
    torch.testing.assert_close(out[1.0]["loss"], out[0.0]["loss"] + out[0.0]["kl"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0.04]["loss"], out[0.0]["loss"] + 0.04 * out[0.0]["kl"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the hook
def test_the_gaussian_latent_object_reproduces_cdvae_exactly() -> None:
    """Through the latent hook, a plain Gaussian latent gives cdvae's weights, loss terms and samples."""
    batch = random_batch()
    plain, hooked = make_model(), make_model(latent=DiagonalGaussian(4))
    assert hooked.latent is not None and plain.latent is None
    hooked_state = {k: v for k, v in hooked.state_dict().items()}
    assert hooked_state.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, hooked_state[key]), key
    torch.manual_seed(1)
    want = plain.loss(batch)
    torch.manual_seed(1)
    got = hooked.loss(batch)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    for key, value in plain.sample(5, torch.Generator().manual_seed(2)).items():
        assert torch.equal(hooked.sample(5, torch.Generator().manual_seed(2))[key], value), key


@pytest.mark.parametrize("kind", ["beta_tcvae", "factor_vae", "joint_vae"])
def test_the_module_adds_beta_times_the_regulariser_and_the_auxiliary_loss(kind: str) -> None:
    """``loss = heads + beta * regulariser + auxiliary`` with the latent's terms, for each latent; the
    encoder's readout is ``param_dim`` wide and the heads read ``dim``."""
    latent = {
        "beta_tcvae": lambda: BetaTCLatent(4, alpha=0.5, beta=6.0, gamma=2.0),
        "factor_vae": lambda: FactorLatent(4, gamma=10.0, hidden_dim=8, num_layers=3),
        "joint_vae": lambda: JointLatent(4, codes=(3, 2), gamma=30.0, cont_capacity=2.0, capacity_steps=0),
    }[kind]()
    model = make_model(latent=latent, beta=0.01)
    batch = random_batch()
    model.fit_data(batch)
    assert model.encoder.lattice_out[-1].out_features == latent.param_dim
    assert model.lattice_head[0].in_features == model.latent_in.in_features == latent.dim
    out = model.loss(batch)
    heads = (out["atom_types_mse"] + out["frac_coords_mse"] + 10.0 * out["lattice_mse"] + out["num_atoms_ce"]
             + out["composition_ce"])
    if kind == "beta_tcvae":
        expected = heads + 0.01 * (0.5 * out["mi"] + 6.0 * out["tc"] + 2.0 * out["dim_kl"])
    elif kind == "factor_vae":
        expected = heads + 0.01 * (out["kl"] + 10.0 * out["tc"]) + out["disc_loss"]
    else:
        c_disc = math.log(6)  # two codes: log 3 + log 2, below the default 5 nats
        assert float(out["capacity_cont"]) == 2.0 and float(out["capacity_disc"]) == pytest.approx(c_disc)
        expected = heads + 0.01 * 30.0 * ((out["kl_cont"] - 2.0).abs() + (out["kl_disc"] - c_disc).abs())
    torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-6)
    sampled = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert sampled["lattice"].shape == (4, 6)


def test_the_plain_vae_takes_a_latent_object_too() -> None:
    """CrystalVAE with a Gaussian latent object is its built-in path; with JointVAE's latent its encoder emits
    ``param_dim`` numbers, its decoder reads the codes, and it samples."""
    import hydra
    from bench.datasets.codec import CrystalCodec
    from bench.datasets.tiny import tiny_structures

    from tests.test_models import tiny_config

    codec = CrystalCodec(max_atoms=8).fit(tiny_structures("train"))
    batch = codec.encode(tiny_structures("train"))
    cfg = tiny_config("vae")

    def build_vae(latent: object) -> torch.nn.Module:
        torch.manual_seed(0)
        return hydra.utils.instantiate(cfg.module, num_types=codec.num_types, max_atoms=codec.max_atoms,
                                       latent=latent)

    plain, hooked = build_vae(None), build_vae(DiagonalGaussian(int(cfg.module.latent_dim)))
    assert plain.latent is None and isinstance(hooked.latent, DiagonalGaussian)
    for key, value in plain.state_dict().items():
        assert torch.equal(hooked.state_dict()[key], value), key
    torch.manual_seed(1)
    want = plain.loss(batch)
    torch.manual_seed(1)
    got = hooked.loss(batch)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    for key, value in plain.sample(3, torch.Generator().manual_seed(4)).items():
        assert torch.equal(hooked.sample(3, torch.Generator().manual_seed(4))[key], value), key

    joint = build_vae(JointLatent(4, codes=(7,), capacity_steps=10))
    assert joint.encoder.pooled_dim == 2 * 4 + 7
    out = joint.loss(batch)
    assert {"kl_cont", "kl_disc"} <= set(out) and math.isfinite(float(out["loss"].detach()))
    assert joint.sample(3, generator=torch.Generator().manual_seed(0))["lattice"].shape == (3, 6)


# ---------------------------------------------------------------------------------------------- beta-TCVAE
@pytest.mark.parametrize("estimator", ["mws", "stratified"])
def test_the_three_terms_sum_to_the_monte_carlo_kl(estimator: str) -> None:
    z, mu, logvar = gaussian_batch(64, 5, correlated=False, seed=3)
    terms = kl_decomposition(z, mu, logvar, 1000, estimator)
    own = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    prior = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
    expected = (own - prior).mean()
    torch.testing.assert_close(terms["kl_mc"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dim_kl"], expected, rtol=1e-5, atol=1e-4)


def test_tc_is_zero_for_a_factorial_aggregate_and_large_for_a_correlated_one() -> None:
    """Against the closed forms of a Gaussian aggregate posterior (see :func:`gaussian_batch`)."""
    m, d = 2000, 3
    z, mu, logvar = gaussian_batch(m, d, correlated=False)
    for n in (m, 50 * m):  # the batch as the whole data set, and a batch of a larger one
        terms = kl_decomposition(z, mu, logvar, n, "stratified")
        assert abs(float(terms["tc"])) < 0.02
        assert float(terms["mi"]) == pytest.approx(d * math.log(2.0) / 2, abs=0.05)
        assert float(terms["dim_kl"]) == pytest.approx(d * (1 - math.log(2.0)) / 2, abs=0.05)

    z, mu, logvar = gaussian_batch(m, d, correlated=True)
    cov = torch.ones(d, d) + 0.01 * torch.eye(d)
    terms = kl_decomposition(z, mu, logvar, m, "stratified")
    assert gaussian_tc(cov) == pytest.approx(4.069, abs=1e-3)
    assert float(terms["tc"]) == pytest.approx(gaussian_tc(cov), abs=0.15)
    mi = 0.5 * float(torch.logdet(cov)) - 1.5 * math.log(0.01)  # h(z) - h(z | n)
    assert float(terms["mi"]) == pytest.approx(mi, abs=0.15)


def test_minibatch_weighted_sampling_is_the_batch_estimate_shifted_by_log_n() -> None:
    """MWS's ``- log(N M)`` makes its terms the batch-as-data-set estimate's plus ``log N`` (MI),
    ``(D - 1) log N`` (TC) and ``- D log N`` (dimension-wise KL), whatever ``N``: on a factorial aggregate its
    TC is ``(D - 1) log N``, not 0, though its gradient is the same."""
    m, d = 500, 4
    z, mu, logvar = gaussian_batch(m, d, correlated=False, seed=1)
    batch = kl_decomposition(z, mu, logvar, m, "stratified")
    for n in (m, 3785):
        mws = kl_decomposition(z, mu, logvar, n, "mws")
        log_n = math.log(n)
        torch.testing.assert_close(mws["mi"], batch["mi"] + log_n, rtol=0, atol=1e-4)
        torch.testing.assert_close(mws["tc"], batch["tc"] + (d - 1) * log_n, rtol=0, atol=1e-4)
        torch.testing.assert_close(mws["dim_kl"], batch["dim_kl"] - d * log_n, rtol=0, atol=1e-4)
    zg, mug, lvg = (t.clone().requires_grad_() for t in (z, mu, logvar))
    g_mws = torch.autograd.grad(kl_decomposition(zg, mug, lvg, 3785, "mws")["tc"], (zg, mug, lvg))
    g_batch = torch.autograd.grad(kl_decomposition(zg, mug, lvg, m, "stratified")["tc"], (zg, mug, lvg))
    for a, b in zip(g_mws, g_batch, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_unit_weights_give_a_monte_carlo_estimate_of_the_analytic_kl() -> None:
    """With ``alpha = beta = gamma = 1`` the regulariser is ``E[log q(z|n) - log p(z)]``, whose mean over many
    draws of one posterior is the closed-form KL."""
    latent = BetaTCLatent(3, alpha=1.0, beta=1.0, gamma=1.0)
    latent.fit_data({"mask": torch.zeros(10_000, 4)})
    mu = torch.tensor([[0.5, -1.0, 2.0]]).expand(3000, 3)
    logvar = torch.tensor([[0.0, math.log(0.25), math.log(3.0)]]).expand(3000, 3)
    torch.manual_seed(0)
    z, stats = latent.posterior(torch.cat([mu, logvar], -1))
    out = latent.penalty(stats, z, step=0)
    torch.testing.assert_close(out.regulariser, out.terms["kl_mc"], rtol=1e-5, atol=1e-4)
    analytic = float(kl_divergence(Normal(mu[0], torch.exp(0.5 * logvar[0])), Normal(0.0, 1.0)).sum())
    assert float(out.terms["kl"]) == pytest.approx(analytic, rel=1e-5)
    assert float(out.terms["kl_mc"]) == pytest.approx(analytic, abs=0.25)  # 3000 draws: sd 3.85/sqrt(3000)
    assert float(out.auxiliary) == 0.0


def test_beta_tcvae_needs_the_dataset_size_and_a_checkpoint_keeps_it(tmp_path: Path) -> None:
    batch = random_batch()
    model = make_model(latent=BetaTCLatent(4))
    with pytest.raises(RuntimeError, match="fit_data"):
        model.loss(batch)
    model.fit_data(_repeat(batch, 37))
    assert int(model.latent.dataset_size) == 37
    assert int(model.atom_counts.sum()) == 37  # the base's own statistics are still taken
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = make_model(latent=BetaTCLatent(4))
    assert int(fresh.latent.dataset_size) == 0
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert int(fresh.latent.dataset_size) == 37
    torch.manual_seed(5)
    want = model.loss(batch)
    torch.manual_seed(5)
    got = fresh.loss(batch)
    torch.testing.assert_close(got["tc"], want["tc"], rtol=0, atol=0)


def _repeat(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``n`` crystals cycled from ``batch``."""
    index = torch.arange(n) % next(iter(batch.values())).shape[0]
    return {k: v[index] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- FactorVAE
def test_tc_trains_the_encoder_only_and_the_discriminator_loss_trains_the_discriminator_only() -> None:
    torch.manual_seed(0)
    latent = FactorLatent(3, gamma=10.0, hidden_dim=8, num_layers=3)
    params = torch.randn(16, 6, requires_grad=True)  # what an encoder would emit
    z, stats = latent.posterior(params)
    out = latent.penalty(stats, z, step=0)
    disc = list(latent.discriminator.parameters())
    tc_to_disc = torch.autograd.grad(out.terms["tc"], disc, retain_graph=True, allow_unused=True)
    assert all(g is None for g in tc_to_disc)
    (tc_to_encoder,) = torch.autograd.grad(out.terms["tc"], params, retain_graph=True)
    assert float(tc_to_encoder.abs().sum()) > 0
    (aux_to_encoder,) = torch.autograd.grad(out.auxiliary, params, retain_graph=True, allow_unused=True)
    assert aux_to_encoder is None
    aux_to_disc = torch.autograd.grad(out.auxiliary, disc, retain_graph=True)
    assert all(float(g.abs().sum()) > 0 for g in aux_to_disc[-2:])
    reg_to_disc = torch.autograd.grad(out.regulariser, disc, allow_unused=True)
    assert all(g is None for g in reg_to_disc)


def test_tc_reads_the_discriminators_logit_and_its_loss_is_log_two_at_chance() -> None:
    latent = FactorLatent(2, gamma=1.0, hidden_dim=4, num_layers=2)
    z = torch.randn(32, 2)
    with torch.no_grad():
        latent.discriminator[-1].weight.zero_()
        latent.discriminator[-1].bias.fill_(0.7)  # D = sigmoid(0.7) everywhere
    stats = {"mu": z, "logvar": torch.zeros_like(z)}
    out = latent.penalty(stats, z, step=0)
    assert float(out.terms["tc"]) == pytest.approx(0.7, abs=1e-6)
    softplus = torch.nn.functional.softplus
    assert float(out.auxiliary.detach()) == pytest.approx(0.5 * float(softplus(torch.tensor(-0.7)) + softplus(
        torch.tensor(0.7))), abs=1e-6)
    with torch.no_grad():
        latent.discriminator[-1].bias.zero_()
    chance = latent.discriminator_loss(z, permute_dims(z)).detach()
    assert float(chance) == pytest.approx(math.log(2.0), abs=1e-7)


def test_a_perfect_discriminator_has_zero_loss_and_a_reversed_one_a_large_loss() -> None:
    """``D = sigmoid(100 leaky(z_1 + z_2))``: real draws at ``(1, 1)``, permuted ones at ``(-1, -1)``."""
    latent = FactorLatent(2, hidden_dim=1, num_layers=2)
    with torch.no_grad():
        latent.discriminator[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        latent.discriminator[0].bias.zero_()
        latent.discriminator[-1].weight.fill_(100.0)
        latent.discriminator[-1].bias.zero_()
    real, fake = torch.ones(8, 2), -torch.ones(8, 2)
    with torch.no_grad():
        assert float(latent.discriminator_loss(real, fake)) < 1e-12
        assert float(latent.discriminator_loss(fake, real)) > 20.0


def test_permuting_dims_keeps_each_marginal_and_breaks_the_dependence() -> None:
    torch.manual_seed(0)
    u = torch.randn(4000, 1)
    z = torch.cat([u, u + 0.01 * torch.randn(4000, 1), -u], dim=1)
    permuted = permute_dims(z)
    for d in range(3):
        assert torch.equal(permuted[:, d].sort().values, z[:, d].sort().values)
    assert float(torch.corrcoef(z.T)[0, 1]) > 0.99
    corr = torch.corrcoef(permuted.T)
    assert float(corr[0, 1].abs()) < 0.06 and float(corr[0, 2].abs()) < 0.06  # sd 1/sqrt(4000) = 0.016


def test_a_trained_discriminator_estimates_the_total_correlation_of_a_gaussian() -> None:
    """The density-ratio trick on ``N(0, cov)``: trained on its own loss, ``E[log D / (1 - D)]`` approaches
    the closed-form TC (2.3 nats for correlation 0.995) and stays near 0 for independent dimensions."""
    for rho, low, high in ((0.0, -0.1, 0.1), (1.0 / math.sqrt(1.01), 1.7, 2.9)):
        torch.manual_seed(0)
        latent = FactorLatent(2, hidden_dim=32, num_layers=3)
        optimiser = torch.optim.Adam(latent.parameters(), lr=3e-3)
        chol = torch.linalg.cholesky(torch.tensor([[1.0, rho], [rho, 1.0]]))
        for _ in range(400):
            z = torch.randn(256, 2) @ chol.T
            loss = latent.discriminator_loss(z, permute_dims(z))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        z = torch.randn(8000, 2) @ chol.T
        with torch.no_grad():
            tc = float(latent.density_ratio(z).mean())
        expected = -0.5 * math.log(1 - rho**2)
        assert low < tc < high, (rho, tc, expected)


# ---------------------------------------------------------------------------------------------- JointVAE
def test_gumbel_softmax_draws_the_categorical_and_becomes_one_hot_as_the_temperature_falls() -> None:
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().expand(20_000, 3)
    g = torch.Generator().manual_seed(0)
    soft = gumbel_softmax(logits, 1.0, g)
    torch.testing.assert_close(soft.sum(-1), torch.ones(20_000))
    assert float(soft.max(-1).values.mean()) < 0.9  # relaxed at temperature 1
    frequencies = torch.bincount(soft.argmax(-1), minlength=3).float() / 20_000
    torch.testing.assert_close(frequencies, probs, rtol=0, atol=0.015)  # the Gumbel-max trick
    previous = 0.0
    for tau in (1.0, 0.3, 0.1, 0.01):
        sharp = float(gumbel_softmax(logits, tau, torch.Generator().manual_seed(1)).max(-1).values.mean())
        assert sharp > previous
        previous = sharp
    assert previous > 0.99


def test_the_prior_draws_exact_one_hots_uniformly_and_is_seeded() -> None:
    latent = JointLatent(3, codes=(7, 2))
    model = make_model(latent=latent)
    draws = latent.prior(70_000, torch.Generator().manual_seed(0), model._randn)
    assert draws.shape == (70_000, 3 + 7 + 2)
    cont, codes = draws[:, :3], draws[:, 3:]
    assert torch.all((codes == 0) | (codes == 1))
    assert torch.equal(codes[:, :7].sum(-1), torch.ones(70_000)) and torch.equal(codes[:, 7:].sum(-1),
                                                                                   torch.ones(70_000))
    torch.testing.assert_close(codes[:, :7].mean(0), torch.full((7,), 1 / 7), rtol=0, atol=0.006)
    torch.testing.assert_close(codes[:, 7:].mean(0), torch.full((2,), 0.5), rtol=0, atol=0.01)
    torch.testing.assert_close(cont.mean(0), torch.zeros(3), rtol=0, atol=0.02)
    torch.testing.assert_close(cont.std(0), torch.ones(3), rtol=0, atol=0.02)
    again = latent.prior(70_000, torch.Generator().manual_seed(0), model._randn)
    other = latent.prior(70_000, torch.Generator().manual_seed(1), model._randn)
    assert torch.equal(draws, again) and not torch.equal(draws[:, 3:], other[:, 3:])


def test_the_discrete_kl_is_zero_for_uniform_and_log_k_for_one_hot_posteriors() -> None:
    assert float(categorical_kl_uniform(torch.zeros(4, 7)).abs().max()) < 1e-6
    one_hot = torch.full((1, 7), -1.0e4)
    one_hot[0, 2] = 0.0
    assert float(categorical_kl_uniform(one_hot)) == pytest.approx(math.log(7), abs=1e-6)
    logits = torch.randn(5, 7)
    reference = kl_divergence(Categorical(logits=logits), Categorical(probs=torch.full((7,), 1 / 7)))
    torch.testing.assert_close(categorical_kl_uniform(logits), reference)


def test_capacities_rise_linearly_and_cap() -> None:
    latent = JointLatent(2, codes=(7,), cont_capacity=10.0, disc_capacity=5.0, capacity_steps=200)
    assert latent.disc_capacity == pytest.approx(math.log(7))  # 5 nats capped at log 7
    for step, fraction in ((0, 0.0), (50, 0.25), (100, 0.5), (200, 1.0), (10_000, 1.0)):
        cont, disc = latent.capacities(step)
        assert cont == pytest.approx(10.0 * fraction) and disc == pytest.approx(math.log(7) * fraction)
    assert JointLatent(2, codes=(7,), disc_capacity=1.0).disc_capacity == 1.0  # below the cap: kept
    assert capacity(3.0, 5, 0) == 3.0  # no ramp
    with pytest.raises(ValueError, match="capacity_steps"):
        JointLatent(2, capacity_steps=-1)


def test_joint_penalty_is_gamma_times_the_distances_to_the_capacities() -> None:
    latent = JointLatent(2, codes=(3,), gamma=30.0, cont_capacity=4.0, disc_capacity=5.0, capacity_steps=100)
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(0.5)], [0.0, 0.0]])
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    params = torch.cat([mu, logvar, logits], -1)
    torch.manual_seed(0)
    z, stats = latent.eval().posterior(params)
    assert torch.equal(z[:, 2:], torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))  # argmax one-hots
    out = latent.penalty(stats, z, step=25)
    kl_cont = float(kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1).mean())
    uniform = Categorical(probs=torch.full((3,), 1 / 3))
    kl_disc = float(kl_divergence(Categorical(logits=logits), uniform).mean())
    c_cont, c_disc = 1.0, 0.25 * math.log(3)
    assert float(out.terms["kl_cont"]) == pytest.approx(kl_cont, rel=1e-5)
    assert float(out.terms["kl_disc"]) == pytest.approx(kl_disc, rel=1e-5)
    expected = 30.0 * (abs(kl_cont - c_cont) + abs(kl_disc - c_disc))
    assert float(out.regulariser) == pytest.approx(expected, rel=1e-5)
    latent.train()
    z, _ = latent.posterior(params)
    relaxed = z[:, 2:]
    torch.testing.assert_close(relaxed.sum(-1), torch.ones(2))
    assert not torch.all((relaxed == 0) | (relaxed == 1))  # relaxed in training


def test_variant_configs_build_their_latents() -> None:
    """Each config composes cdvae with its own latent (``dim`` following ``latent_dim``) and paper."""
    import hydra

    for name, cls, dim in (("beta_tcvae", BetaTCLatent, 8), ("factor_vae", FactorLatent, 8),
                           ("joint_vae", JointLatent, 8 + 7)):
        cfg = compose_model(name, [*compose_model(name).test_overrides])
        assert cfg.name == name and cfg.family == "vae" and cfg.card == f"{name}.md" and cfg.paper
        latent = hydra.utils.instantiate(cfg.module.latent)
        assert type(latent) is cls and latent.dim == dim
    joint = hydra.utils.instantiate(compose_model("joint_vae", ["trainer.max_steps=1234"]).module.latent)
    assert joint.capacity_steps == 1234 and joint.codes == [7] and joint.dim == 64 + 7
