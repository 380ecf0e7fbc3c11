"""VAE-GAN (Larsen et al. 2016) on inputs with known answers: the feature-space reconstruction term, the
gradient routing of algorithm 1, the one optimiser against three, the balance, a checkpoint round trip."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from bench.models.vae.vae_gan import CrystalVAEGAN

from tests import test_models
from tests.test_models import build, fixed_batches, make_trainer, tiny_config

# The model tests' module-scoped fixtures, shared by name (a test's parameter of the same name receives them).
codec = test_models.codec
batch = test_models.batch
_one_thread = test_models._one_thread

FIELDS = ("atom_types", "frac_coords", "lattice")


def tiny_model(codec: Any, overrides: list[str] | None = None, seed: int = 0) -> CrystalVAEGAN:
    torch.manual_seed(seed)
    model = build(tiny_config("vae_gan", overrides), codec)
    assert isinstance(model, CrystalVAEGAN)
    return model


class _SeedEachBatch(pl.Callback):
    """Seeds torch before every training batch, so the step's draws (posterior noise, prior latents) can be
    replayed outside the trainer."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, idx: int) -> None:
        torch.manual_seed(self.seed + idx)


class _Terms(pl.Callback):
    """The logged ``train/<term>`` values after every batch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        metrics = trainer.callback_metrics
        self.rows.append({k[len("train/"):]: float(v) for k, v in metrics.items() if k.startswith("train/")})


def flat(model: CrystalVAEGAN) -> dict[str, torch.Tensor]:
    """Each network's parameters as one flat vector (a copy)."""
    return {k: torch.cat([p.detach().flatten() for p in v]) for k, v in model.network_parameters().items()}


def sgd_gradients(
    model: CrystalVAEGAN, batch: dict[str, torch.Tensor], seed: int = 11
) -> dict[str, torch.Tensor]:
    """Per network, the flat gradient the training step applied: one SGD step at lr 1 on a copy, so the
    update ``before - after`` is the gradient itself."""
    trained = copy.deepcopy(model)
    trained.optimizer_factory = functools.partial(torch.optim.SGD, lr=1.0)
    before = flat(trained)
    make_trainer(1, [_SeedEachBatch(seed)]).fit(trained, fixed_batches(batch, 1))
    after = flat(trained)
    return {k: before[k] - after[k] for k in before}


def replayed_gradient(
    model: CrystalVAEGAN, batch: dict[str, torch.Tensor], term: str, network: str, seed: int = 11
) -> torch.Tensor:
    """The flat gradient of the term ``term`` of :meth:`CrystalVAEGAN.objectives` with respect to ``network``,
    with the training step's draws replayed."""
    replica = copy.deepcopy(model).train()
    torch.manual_seed(seed)
    terms = replica.objectives(batch)
    params = replica.network_parameters()[network]
    grads = torch.autograd.grad(terms[term], params, allow_unused=True)
    filled = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    return torch.cat([g.flatten() for g in filled])


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max().clamp_min(1e-3))))


# ---------------------------------------------------------------------------------------------- feature space
def test_feature_error_is_zero_for_the_same_crystals_and_positive_otherwise(codec, batch) -> None:  # noqa: ANN001
    model = tiny_model(codec).eval()
    real = {k: batch[k] for k in FIELDS}
    with torch.no_grad():
        assert float(model.feature_distance(real, real)) == 0.0
        # A decoder output whose types argmax to the data and whose coordinates and lattice are the data's:
        # straight-through types are exact one-hots and empty slots sit at 0, so the discriminator sees x.
        perfect = {"atom_types": 20.0 * batch["atom_types"], "frac_coords": batch["frac_coords"],
                   "lattice": batch["lattice"]}
        assert float(model.feature_distance(real, model.decoded_fields(perfect))) == 0.0
        # Periodic features: moving every atom by a whole cell is the same crystal.
        shifted = {**real, "frac_coords": real["frac_coords"] + batch["mask"].unsqueeze(-1)}
        assert float(model.feature_distance(real, shifted)) < 1e-9
        moved = {k: v.clone() for k, v in real.items()}
        moved["frac_coords"][0, 0] += 0.25
        retyped = {k: v.clone() for k, v in real.items()}
        retyped["atom_types"][0, 0] = retyped["atom_types"][0, 0].roll(1)
        stretched = {**real, "lattice": real["lattice"] + 0.5}
        for other in (moved, retyped, stretched):
            assert float(model.feature_distance(real, other)) > 1e-4


def test_feature_layer_must_exist(codec) -> None:  # noqa: ANN001
    with pytest.raises(Exception, match="feature_layer must be in 1..1"):  # hydra wraps the ValueError
        tiny_model(codec, ["model.module.feature_layer=2"])
    with pytest.raises(Exception, match="generator_loss must be one of"):
        tiny_model(codec, ["model.module.generator_loss=hinge"])
    with pytest.raises(Exception, match="gamma must be >= 0"):
        tiny_model(codec, ["model.module.gamma=-1.0"])


# ---------------------------------------------------------------------------------------------- routing
def test_each_network_descends_its_own_objective(codec, batch) -> None:  # noqa: ANN001
    """Algorithm 1: encoder <- grad(L_prior + L_llike), decoder <- grad(gamma L_llike - L_GAN), discriminator
    <- grad(L_GAN), all from one forward pass."""
    model = tiny_model(codec, ["model.module.gamma=2.0"])
    applied = sgd_gradients(model, batch)
    for network, term in CrystalVAEGAN.OBJECTIVES.items():
        expected = replayed_gradient(model, batch, term, network)
        assert float(expected.abs().max()) > 0, network
        assert close(applied[network], expected), network


def test_discriminator_gets_the_gan_loss_only(codec, batch) -> None:  # noqa: ANN001
    """Changing every weight of the reconstruction side (gamma, the type term, beta) leaves the
    discriminator's update unchanged: no reconstruction error reaches it."""
    model = tiny_model(codec)
    reweighted = copy.deepcopy(model)
    reweighted.gamma, reweighted.type_weight, reweighted.beta = 7.0, 0.0, 1.0
    base, other = sgd_gradients(model, batch), sgd_gradients(reweighted, batch)
    assert float(base["discriminator"].abs().max()) > 0
    assert close(other["discriminator"], base["discriminator"])
    assert not close(other["decoder"], base["decoder"])  # the change itself was not vacuous
    expected = replayed_gradient(model, batch, "gan", "discriminator")
    assert close(base["discriminator"], expected)


def test_encoder_gets_no_gan_gradient_and_the_decoder_does(codec, batch) -> None:  # noqa: ANN001
    """Re-drawing the discriminator's read-out (which changes L_GAN, not the layer-l features), switching
    the decoder's adversarial term or changing gamma leaves the encoder's update unchanged; the decoder's
    changes."""
    model = tiny_model(codec)
    readout = copy.deepcopy(model)
    with torch.no_grad():
        readout.discriminator.pooled_out.weight.normal_(0.0, 1.0)
    nonsat = copy.deepcopy(model)
    nonsat.generator_loss = "non_saturating"
    gamma = copy.deepcopy(model)
    gamma.gamma = 5.0
    base = sgd_gradients(model, batch)
    assert float(base["encoder"].abs().max()) > 0
    for variant in (readout, nonsat, gamma):
        grads = sgd_gradients(variant, batch)
        assert close(grads["encoder"], base["encoder"])
        assert not close(grads["decoder"], base["decoder"])
    # and the encoder's update is exactly grad(beta KL + L_llike)
    assert close(base["encoder"], replayed_gradient(model, batch, "loss", "encoder"))


def test_decoder_gradient_is_gamma_llike_minus_gan(codec, batch) -> None:  # noqa: ANN001
    """The decoder's update is affine in gamma: ``g(gamma) = gamma grad(L_llike) - grad(L_GAN)``."""
    model = tiny_model(codec)
    by_gamma = {}
    for value in (0.0, 1.0, 3.0):
        variant = copy.deepcopy(model)
        variant.gamma = value
        by_gamma[value] = sgd_gradients(variant, batch)["decoder"]
    llike = replayed_gradient(model, batch, "llike", "decoder")
    gan = replayed_gradient(model, batch, "gan", "decoder")
    assert float(llike.abs().max()) > 0 and float(gan.abs().max()) > 0
    assert close(by_gamma[0.0], -gan)
    assert close(by_gamma[1.0] - by_gamma[0.0], llike, tol=1e-4)
    assert close(by_gamma[3.0] - by_gamma[0.0], 3.0 * llike, tol=1e-4)


def test_one_optimiser_takes_the_steps_of_three(codec, batch) -> None:  # noqa: ANN001
    """Two training steps of the model's one AdamW equal two steps of three AdamW optimisers, one per network,
    each fed its own objective's gradient; and every parameter moved."""
    model = tiny_model(codec)
    start = copy.deepcopy(model)
    trained = copy.deepcopy(model)
    trainer = make_trainer(2, [_SeedEachBatch(100)])
    trainer.fit(trained, fixed_batches(batch, 2))
    assert trainer.global_step == 2  # one optimiser step per batch, as for the VAE

    reference = copy.deepcopy(start).train()
    groups = reference.network_parameters()
    optimisers = {k: reference.build_optimizer(v) for k, v in groups.items()}
    for step in range(2):
        torch.manual_seed(100 + step)
        terms = reference.objectives(batch)
        grads = {
            network: torch.autograd.grad(terms[term], groups[network], retain_graph=True)
            for network, term in CrystalVAEGAN.OBJECTIVES.items()
        }
        for network, optimiser in optimisers.items():
            optimiser.zero_grad()
            for p, g in zip(groups[network], grads[network], strict=True):
                p.grad = g
            optimiser.step()
    for (name, p), q, p0 in zip(
        trained.named_parameters(), reference.parameters(), start.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(p, p0), f"{name} did not move"


def test_balance_skips_the_winning_network(codec, batch) -> None:  # noqa: ANN001
    model = tiny_model(codec, ["model.module.margin=0.4"])

    def update(real: float, fake: float) -> list[str]:
        return model.networks_to_update({"gan_real": torch.tensor(real), "gan_fake": torch.tensor(fake)})

    assert update(0.7, 0.7) == ["encoder", "decoder", "discriminator"]
    assert update(0.1, 0.7) == ["encoder", "decoder"]  # discriminator winning on real crystals
    assert update(0.7, 1.5) == ["encoder", "discriminator"]  # decoder losing
    assert update(0.1, 1.5) == ["encoder", "decoder", "discriminator"]  # both: update both
    model.margin = None
    assert update(0.1, 0.7) == ["encoder", "decoder", "discriminator"]

    # A step the balance gives to the encoder and the decoder leaves the discriminator's weights untouched.
    model.margin, model.equilibrium = 1.0, 100.0  # every cross-entropy is far below 99: discriminator winning
    before = copy.deepcopy(model)
    make_trainer(1).fit(model, fixed_batches(batch, 1))
    for network in ("encoder", "decoder", "discriminator"):
        moved = [
            not torch.equal(p, q)
            for p, q in zip(
                model.network_parameters()[network], before.network_parameters()[network], strict=True
            )
        ]
        assert all(moved) if network != "discriminator" else not any(moved), network


# ---------------------------------------------------------------------------------------------- training
def test_terms_stay_finite_and_the_game_moves(codec, batch) -> None:  # noqa: ANN001
    """Over 30 steps on one batch every logged term is finite, the type cross-entropy falls, and the
    discriminator learns to tell real crystals from decoded ones (L_GAN falls, D(x) rises)."""
    pl.seed_everything(0, verbose=False)
    model = tiny_model(codec)
    terms = _Terms()
    make_trainer(30, [terms]).fit(model, fixed_batches(batch, 30))
    rows = terms.rows
    assert len(rows) == 30
    assert all(math.isfinite(v) for row in rows for v in row.values())
    logged = {"loss", "decoder", "gan", "feature", "type_ce", "kl", "d_real", "update_discriminator"}
    assert logged <= set(rows[0])

    def mean(key: str, part: slice) -> float:
        return sum(r[key] for r in rows[part]) / len(rows[part])

    head, tail = slice(0, 5), slice(-5, None)
    assert mean("type_ce", tail) < mean("type_ce", head)
    assert mean("gan", tail) < mean("gan", head)
    assert mean("d_real", tail) > mean("d_real", head)


def test_checkpoint_round_trip_reproduces_samples_and_discriminator(codec, batch, tmp_path: Path) -> None:  # noqa: ANN001
    pl.seed_everything(0, verbose=False)
    model = tiny_model(codec, ["model.module.gamma=2.5"])
    trainer = make_trainer(5)
    trainer.fit(model, fixed_batches(batch, 5))
    path = tmp_path / "vae_gan.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["gamma"] == 2.5
    fresh = tiny_model(codec, ["model.module.gamma=2.5"], seed=1)
    fresh.load_state_dict(checkpoint["state_dict"])
    first = model.sample(6, generator=torch.Generator().manual_seed(3))
    again = fresh.sample(6, generator=torch.Generator().manual_seed(3))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    real = {k: batch[k] for k in FIELDS}
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model.discriminate(real)[0], fresh.discriminate(real)[0])
