"""The conditional VAE (``model=cvae``) on inputs with known answers: its KL is the closed-form KL between two
diagonal Gaussians, the KL's optimal prior is the moment-matched one, the three networks read the condition,
a tiny model learns a toy data set whose crystals depend on their class (and not when the classes are
shuffled), sampling needs conditions and says so in one line, it is deterministic under a fixed generator,
and without a condition channel it is exactly the VAE."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.backbone import CrystalTransformer
from bench.models.vae.cvae import CrystalCVAE, gaussian_kl_between
from bench.models.vae.vae import CrystalVAE
from omegaconf import OmegaConf
from torch.distributions import Normal, kl_divergence

from bench.train import build_module
from tests import test_models
from tests.test_models import build, compose_model, fixed_batches, make_trainer, tiny_config

# The model tests' module-scoped fixtures (no condition channel), shared by name.
codec = test_models.codec
batch = test_models.batch
_one_thread = test_models._one_thread


def _density() -> dict[str, np.ndarray]:
    return {"density": np.array([s.density for s in tiny_structures("train")])}


@pytest.fixture(scope="module")
def cond_codec() -> CrystalCodec:
    """The tiny training split's codec with a ``condition`` channel: the standardised density."""
    return CrystalCodec(max_atoms=8, condition=["density"]).fit(tiny_structures("train"), _density())


@pytest.fixture(scope="module")
def cond_batch(cond_codec: CrystalCodec) -> dict[str, torch.Tensor]:
    return cond_codec.encode(tiny_structures("train"), _density())


def build_cvae(codec: CrystalCodec, overrides: list[str] | None = None) -> CrystalCVAE:
    """``model=cvae`` at its tiny test widths, built as the train stage builds it (sizes of the codec)."""
    model = build_module(tiny_config("cvae", overrides), codec.sizes())
    assert isinstance(model, CrystalCVAE)
    return model


def toy_model(**kwargs: object) -> CrystalCVAE:
    """A tiny CVAE over crystals of at most two sites of two elements (types: empty, A, B)."""
    settings = dict(latent_dim=4, beta=1.0, condition_dim=1, condition_embed_dim=8, prior_hidden_dim=16)
    settings.update(kwargs)
    return CrystalCVAE(
        functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2),
        functools.partial(torch.optim.Adam, lr=3e-3), num_types=3, max_atoms=2, **settings,
    )


# ------------------------------------------------------------------------------------------ the config
def test_the_config_is_vae_with_a_condition_and_the_cvae_settings() -> None:
    vae, cvae = compose_model("vae"), compose_model("cvae")
    raw = yaml.safe_load((test_models.CONF_DIR / "model" / "cvae.yaml").read_text(encoding="utf-8"))
    assert raw["condition"] == ["${dataset.property}"] and cvae.family == "vae"
    added = set(cvae.module) - set(vae.module)
    assert added == {"condition_embed_dim", "prior_hidden_dim", "conditional_prior", "gsnn_weight"}
    differing = {k for k in vae.module if vae.module[k] != cvae.module[k]}
    assert differing == {"_target_"}
    assert cvae.module.conditional_prior is True and cvae.module.gsnn_weight == 0.0


# ------------------------------------------------------------------------------------------ the KL term
def test_the_gaussian_kl_has_its_closed_form_values() -> None:
    # KL(N(1, 0.5^2) || N(-1, 2^2)) = log(2 / 0.5) + (0.5^2 + 2^2) / (2 * 2^2) - 1/2, by hand
    kl = gaussian_kl_between(torch.tensor([[1.0]]), torch.tensor([[math.log(0.25)]]),
                             torch.tensor([[-1.0]]), torch.tensor([[math.log(4.0)]]))
    assert float(kl) == pytest.approx(math.log(4.0) + 4.25 / 8.0 - 0.5, rel=1e-6)
    same = gaussian_kl_between(torch.ones(3, 5), torch.zeros(3, 5), torch.ones(3, 5), torch.zeros(3, 5))
    assert torch.equal(same, torch.zeros(3))
    # against N(0, I) it is the VAE's KL, 0.5 sum(mu^2 + s^2 - 1 - log s^2)
    mu, logvar = torch.tensor([[0.5, -2.0]]), torch.tensor([[0.3, -1.0]])
    expected = 0.5 * float((mu.pow(2) + logvar.exp() - 1 - logvar).sum())
    against_standard = gaussian_kl_between(mu, logvar, torch.zeros(1, 2), torch.zeros(1, 2))
    assert float(against_standard) == pytest.approx(expected)


def test_the_loss_kl_is_the_closed_form_kl_between_posterior_and_conditional_prior(
    cond_codec, cond_batch,  # noqa: ANN001
) -> None:
    torch.manual_seed(0)
    model = build_cvae(cond_codec)
    terms = model.loss(cond_batch)
    with torch.no_grad():
        mu_q, logvar_q = model.posterior_params(cond_batch).chunk(2, dim=-1)
        mu_p, logvar_p = model.prior_net(cond_batch["condition"]).chunk(2, dim=-1)
        q, p = Normal(mu_q, (0.5 * logvar_q).exp()), Normal(mu_p, (0.5 * logvar_p).exp())
        independent = kl_divergence(q, p)
    assert float(terms["kl"]) == pytest.approx(float(independent.sum(-1).mean()), rel=1e-5)
    # not the KL against N(0, I): the prior network's output matters
    standard = kl_divergence(q, Normal(0.0, 1.0)).sum(-1).mean()
    assert abs(float(terms["kl"]) - float(standard)) > 1e-3
    # the total is the ELBO's: reconstruction terms plus beta (no warm-up here) times the KL
    beta = model.beta
    assert model.kl_warmup_steps == 0
    expected = terms["type_ce"] + terms["frac_mse"] + terms["lattice_mse"] + beta * terms["kl"]
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_the_prior_network_learns_the_moment_matched_prior_of_each_condition() -> None:
    """With the posteriors held fixed, the prior minimising the loss's KL for condition ``y`` is
    ``N(mean of mu_q, mean of sigma_q^2 + variance of mu_q)`` over that condition's crystals. Class +1:
    means 1 and 2, variance 0.25, so ``N(1.5, 0.5)``; class -1: means -3 and -1, variance 1, so ``N(-2, 2)``.
    The prior learns it only if each crystal's KL is taken against the prior of its own condition."""
    torch.manual_seed(0)
    model = toy_model(latent_dim=2)
    n = 64
    y = torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(n // 4).unsqueeze(1)
    mu_q = torch.tensor([1.0, 2.0, -3.0, -1.0]).repeat(n // 4).unsqueeze(1).expand(n, 2).clone()
    logvar_q = torch.where(y > 0, math.log(0.25), 0.0).expand(n, 2).clone()
    types = torch.nn.functional.one_hot(torch.ones(n, 2, dtype=torch.long), 3).float()
    data = {"atom_types": types, "frac_coords": torch.zeros(n, 2, 3), "lattice": torch.zeros(n, 6),
            "condition": y}
    model.encode = lambda _batch: (mu_q, logvar_q)  # the recognition network held fixed
    opt = torch.optim.Adam(model.prior_net.parameters(), lr=1e-2)
    for _ in range(800):
        loss = model.loss(data)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mu_p, logvar_p = model.prior_params(torch.tensor([[1.0], [-1.0]]))
    torch.testing.assert_close(mu_p, torch.tensor([[1.5, 1.5], [-2.0, -2.0]]), atol=0.05, rtol=0)
    torch.testing.assert_close(logvar_p.exp(), torch.tensor([[0.5, 0.5], [2.0, 2.0]]), atol=0.05, rtol=0.03)


# ------------------------------------------------------------------------------------------ y is used
def test_the_encoder_the_prior_and_the_decoder_read_the_condition(cond_codec, cond_batch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_cvae(cond_codec).eval()
    assert model.condition_dim == 1
    flipped = {**cond_batch, "condition": -cond_batch["condition"]}
    low, high = torch.full((6, 1), -1.5), torch.full((6, 1), 1.5)
    z = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        posterior, posterior_flipped = model.posterior_params(cond_batch), model.posterior_params(flipped)
        prior_low, prior_high = model.prior_params(low), model.prior_params(high)
        at_low, again, at_high = (model.decode(z, y) for y in (low, low, high))
    assert (posterior - posterior_flipped).abs().amax(-1).min() > 1e-6  # q(z | x, y) for every crystal
    assert (prior_low[0] - prior_high[0]).abs().min() > 1e-6  # p(z | y)
    for key in ("atom_types", "frac_coords", "lattice"):
        torch.testing.assert_close(at_low[key], again[key])  # same z, same y
        assert (at_low[key] - at_high[key]).abs().amax() > 1e-5, key  # same z, other y


def _toy_data(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Class ``y = +1``: every filled site is element A and the lattice parameters are near +1; ``y = -1``:
    element B, lattice near -1. One or two filled sites, coordinates uniform."""
    y = (torch.rand(n, generator=generator) < 0.5).float() * 2 - 1
    element = torch.where(y > 0, 1, 2)
    filled = torch.ones(n, 2, dtype=torch.long)
    filled[:, 1] = (torch.rand(n, generator=generator) < 0.5).long()
    types = torch.where(filled.bool(), element[:, None], torch.zeros_like(filled))
    return {
        "atom_types": torch.nn.functional.one_hot(types, 3).float(),
        "frac_coords": torch.rand(n, 2, 3, generator=generator) * filled[..., None],
        "lattice": y[:, None] + 0.3 * torch.randn(n, 6, generator=generator),
        "mask": filled.float(),
        "condition": y[:, None],
    }


def _class_consistency(shuffle: bool) -> dict[float, float]:
    """Train a toy CVAE 300 steps (batch 64), then the share of 200 samples at each class that are of that
    class: all sites of its element and a mean lattice parameter of its sign."""
    torch.manual_seed(0)
    model = toy_model()
    g = torch.Generator().manual_seed(0)
    data = _toy_data(512, g)
    if shuffle:  # the same crystals and conditions, paired at random: y says nothing about x
        data["condition"] = data["condition"][torch.randperm(512, generator=g)]
    model.fit_data(data)
    opt = model.build_optimizer(model.parameters())
    for _ in range(300):
        rows = torch.randint(512, (64,), generator=g)
        loss = model.loss({k: v[rows] for k, v in data.items()})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    shares = {}
    for y, element in ((1.0, 1), (-1.0, 2)):
        out = model.sample(200, generator=torch.Generator().manual_seed(1), condition=torch.full((200, 1), y))
        types = out["atom_types"].argmax(-1)
        right_element = (types == element).any(-1) & ~(types == 3 - element).any(-1)
        right_lattice = (out["lattice"].mean(-1) > 0) == (y > 0)
        shares[y] = float((right_element & right_lattice).float().mean())
    return shares


def test_a_toy_model_generates_crystals_of_the_requested_class() -> None:
    """Chance (a model ignoring ``y``) is 0.5 at best. The trained model is class-consistent at least 90% of
    the time at both classes; trained on shuffled pairs it cannot be, which shows the test can fail."""
    trained = _class_consistency(shuffle=False)
    assert min(trained.values()) >= 0.9, trained
    shuffled = _class_consistency(shuffle=True)
    assert max(shuffled.values()) <= 0.75, shuffled


# ------------------------------------------------------------------------------------------ sampling
def test_sampling_needs_conditions_and_says_so_in_one_line(cond_codec, cond_batch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_cvae(cond_codec)
    with pytest.raises(RuntimeError, match="no training conditions to draw from: pass condition") as err:
        model.sample(2)
    assert "\n" not in str(err.value)
    out = model.sample(2, condition=torch.zeros(2, 1))  # given conditions need no training set
    assert out["lattice"].shape == (2, 6)
    model.fit_data(cond_batch)
    assert torch.equal(model.condition_bank, cond_batch["condition"])
    assert model.sample(2)["lattice"].shape == (2, 6)


def test_bad_conditions_fail_with_one_line(cond_codec, cond_batch, codec) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_cvae(cond_codec)
    model.fit_data(cond_batch)
    plain = build(tiny_config("cvae"), codec)  # condition_dim 0
    cases = [
        (lambda: model.sample(4, condition=torch.zeros(4, 2)), r"condition must be \[4, 1\]"),
        (lambda: model.sample(4, condition=torch.full((4, 1), math.nan)), "NaN"),
        (lambda: model.loss({k: v for k, v in cond_batch.items() if k != "condition"}),
         "no 'condition' field"),
        (lambda: model.decode(torch.zeros(3, model.latent_dim)), "is conditional"),
        (lambda: plain.sample(2, condition=torch.zeros(2, 1)), "unconditional"),
        (lambda: toy_model(gsnn_weight=1.0), r"gsnn_weight must be in \[0, 1\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value), str(err.value)


def test_sampling_without_a_condition_draws_the_training_conditions(
    cond_codec, cond_batch, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Training conditions ``-1.2`` (three of every four crystals) and ``0.7``: the drawn conditions take
    those two values only, ``0.7`` a quarter of the time, and sampling at the drawn conditions is the same
    draw."""
    torch.manual_seed(0)
    model = build_cvae(cond_codec)
    n_train = cond_batch["lattice"].shape[0]
    values = torch.tensor([-1.2, -1.2, -1.2, 0.7]).repeat(n_train // 4).unsqueeze(1)
    model.fit_data({**cond_batch, "condition": values})
    used: list[torch.Tensor] = []
    decode = model.decode

    def recording(z, condition=None):  # noqa: ANN001, ANN202
        used.append(condition.clone())
        return decode(z, condition)

    monkeypatch.setattr(model, "decode", recording)
    n = 4000
    drawn = model.sample(n, generator=torch.Generator().manual_seed(0))
    conditions = used[-1]
    assert set(conditions.flatten().tolist()) == set(values.flatten().tolist())
    assert float((conditions > 0).float().mean()) == pytest.approx(0.25, abs=0.03)  # 4,000 draws: sd 0.007
    given = model.sample(n, generator=torch.Generator().manual_seed(0), condition=conditions)
    for key in drawn:
        assert torch.equal(drawn[key], given[key]), key


def test_sampling_is_deterministic_and_survives_a_checkpoint(
    cond_codec, cond_batch, tmp_path: Path,  # noqa: ANN001
) -> None:
    pl.seed_everything(0, verbose=False)
    model = build_cvae(cond_codec)
    model.fit_data(cond_batch)
    steps = 8
    losses = test_models._LossHistory()
    trainer = make_trainer(steps, [losses])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(model, fixed_batches(cond_batch, steps))
    assert losses.values and all(math.isfinite(v) for v in losses.values)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged  # the condition layers and the prior network train too
    assert {n.split(".")[0] for n in before} >= {"encoder_condition", "decoder_condition", "prior_net"}

    y = torch.linspace(-1, 1, 6).unsqueeze(1)
    samples = [model.sample(6, generator=torch.Generator().manual_seed(s), condition=c)
               for s, c in ((3, y), (3, y), (4, y), (3, None), (3, None))]
    first, again, other, free, free_again = samples
    for key in first:
        assert torch.equal(first[key], again[key]), key
        assert torch.equal(free[key], free_again[key]), key
    assert not torch.equal(first["lattice"], other["lattice"])

    path = tmp_path / "cvae.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    fresh = build_cvae(cond_codec)  # no fit_data: the training conditions come from the checkpoint
    fresh.load_state_dict(state)
    assert torch.equal(fresh.condition_bank, cond_batch["condition"])
    for seed, condition, expected in ((3, y, first), (3, None, free)):
        reloaded = fresh.sample(6, generator=torch.Generator().manual_seed(seed), condition=condition)
        for key in expected:
            assert torch.equal(expected[key], reloaded[key]), key


# ------------------------------------------------------------------------------------------ variants
def test_without_a_condition_channel_it_is_the_vae(codec, batch) -> None:  # noqa: ANN001
    """The contract test's build (no condition): the same parameters, weights after training and samples as
    ``CrystalVAE`` with the same settings, and a condition is refused."""
    cfg = tiny_config("cvae")
    twin = OmegaConf.to_container(cfg)
    twin["module"]["_target_"] = "bench.models.vae.vae.CrystalVAE"
    for key in ("condition_embed_dim", "prior_hidden_dim", "conditional_prior", "gsnn_weight"):
        twin["module"].pop(key)
    twin = OmegaConf.create(twin)
    models = []
    for c in (cfg, twin):
        pl.seed_everything(0, verbose=False)
        models.append(build(c, codec))
    cvae, vae = models
    assert type(cvae) is CrystalCVAE and type(vae) is CrystalVAE and cvae.condition_dim == 0
    assert cvae.state_dict().keys() == vae.state_dict().keys()
    for model in models:
        pl.seed_everything(1, verbose=False)
        make_trainer(6).fit(model, fixed_batches(batch, 6))
    for key, value in cvae.state_dict().items():
        assert torch.equal(value, vae.state_dict()[key]), key
    a, b = (m.sample(5, generator=torch.Generator().manual_seed(2)) for m in models)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_fixed_prior_variant_takes_the_kl_against_a_standard_normal(cond_codec, cond_batch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_cvae(cond_codec, ["model.module.conditional_prior=false"])
    assert model.prior_net is None and model.prior_params(cond_batch["condition"]) is None
    terms = model.loss(cond_batch)
    with torch.no_grad():
        mu_q, logvar_q = model.posterior_params(cond_batch).chunk(2, dim=-1)
    standard = kl_divergence(Normal(mu_q, (0.5 * logvar_q).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    assert float(terms["kl"]) == pytest.approx(float(standard), rel=1e-5)
    eps = torch.randn(4, model.latent_dim)
    assert torch.equal(model.prior_draw(eps, torch.zeros(4, 1)), eps)


def test_the_hybrid_objective_adds_the_reconstruction_from_prior_draws(cond_codec, cond_batch) -> None:  # noqa: ANN001
    """``gsnn_weight = w``: ``loss = (1 - w) L_CVAE + w L_GSNN``, with ``L_GSNN`` the reconstruction from
    ``z = mu(y) + sigma(y) eps``, ``eps`` the second normal draw (after the posterior's)."""
    w = 0.3
    torch.manual_seed(0)
    model = build_cvae(cond_codec, [f"model.module.gsnn_weight={w}"])
    torch.manual_seed(5)
    hybrid = model.loss(cond_batch)
    model.gsnn_weight = 0.0
    torch.manual_seed(5)
    cvae = model.loss(cond_batch)
    y = cond_batch["condition"]
    torch.manual_seed(5)
    with torch.no_grad():
        mu_q, _ = model.encode(cond_batch)
        torch.randn_like(mu_q)  # the posterior's draw
        mu_p, logvar_p = model.prior_params(y)
        z = mu_p + torch.randn_like(mu_q) * (0.5 * logvar_p).exp()
        gsnn = model.weighted_reconstruction(model.reconstruction_terms(model.decode(z, y), cond_batch))
    assert float(hybrid["gsnn"]) == pytest.approx(float(gsnn), rel=1e-6)
    assert float(hybrid["kl"]) == pytest.approx(float(cvae["kl"]), rel=1e-6)
    assert float(hybrid["loss"]) == pytest.approx((1 - w) * float(cvae["loss"]) + w * float(gsnn), rel=1e-6)
