"""The conditional GAN (``model=cgan``) and the GAN base's condition hook on inputs with known answers: both
networks read the condition, only a critic that joins it with the crystal can tell matched from mismatched
pairs, the training conditions are kept for sampling and survive a checkpoint, bad conditions fail in one
line, and without a condition channel the class is exactly the unconditional GAN."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from bench.datasets.codec import CrystalCodec
from bench.datasets.tiny import tiny_structures
from bench.models.backbone import CrystalTransformer
from bench.models.gan.base import ADVERSARIAL_LOSSES, CrystalGAN
from bench.models.gan.cgan import CrystalCGAN
from bench.models.gan.periodic import CrystalPeriodicWGANGP
from omegaconf import OmegaConf

from bench.train import build_module
from tests import test_models
from tests.test_models import build, fixed_batches, make_trainer, tiny_config

# The model tests' module-scoped fixtures (no condition channel), shared by name.
codec = test_models.codec
batch = test_models.batch
_one_thread = test_models._one_thread


class ConditionalPeriodicWGANGP(CrystalPeriodicWGANGP):
    """The periodic WGAN-GP made conditional by the class flag alone (the base's hook does the rest)."""

    conditional = True


def _density() -> dict[str, np.ndarray]:
    return {"density": np.array([s.density for s in tiny_structures("train")])}


@pytest.fixture(scope="module")
def cond_codec() -> CrystalCodec:
    """The tiny training split's codec with a ``condition`` channel: the standardised density."""
    return CrystalCodec(max_atoms=8, condition=["density"]).fit(tiny_structures("train"), _density())


@pytest.fixture(scope="module")
def cond_batch(cond_codec: CrystalCodec) -> dict[str, torch.Tensor]:
    return cond_codec.encode(tiny_structures("train"), _density())


def build_cgan(codec: CrystalCodec, overrides: list[str] | None = None) -> CrystalCGAN:
    """``model=cgan`` at its tiny test widths, built as the train stage builds it (sizes of the codec)."""
    model = build_module(tiny_config("cgan", overrides), codec.sizes())
    assert isinstance(model, CrystalCGAN)
    return model


def build_periodic(codec: CrystalCodec) -> ConditionalPeriodicWGANGP:
    cfg = tiny_config("wgan_gp_mpnn")
    module = OmegaConf.merge(cfg.module, {"_target_": f"{__name__}.ConditionalPeriodicWGANGP"})
    return hydra.utils.instantiate(module, **codec.sizes())


def test_the_generator_and_the_critic_read_the_condition(cond_codec, cond_batch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_cgan(cond_codec).eval()
    assert model.condition_dim == 1
    low, high = torch.full((6, 1), -1.5), torch.full((6, 1), 1.5)
    noise = model._noise(6, torch.Generator().manual_seed(0))
    with torch.no_grad():
        at_low, again, at_high = (model.generate(noise, y) for y in (low, low, high))
        real = model.real_fields(cond_batch)
        scores = model.score(real, cond_batch["condition"])
        flipped = model.score(real, -cond_batch["condition"])
    torch.testing.assert_close(at_low["lattice"], again["lattice"])  # same noise, same condition
    assert (at_low["lattice"] - at_high["lattice"]).abs().min() > 1e-4  # every sample moved
    assert (scores - flipped).abs().min() > 1e-5


def test_only_a_critic_that_joins_the_condition_with_the_crystal_tells_matched_pairs(
    cond_codec, cond_batch,  # noqa: ANN001
) -> None:
    """Real crystals with the conditions of other crystals are what a perfect generator that ignores ``y``
    would produce. Pair each crystal with the one half-way along the density order (an involution). A
    critic whose score ignores ``y``, or adds a term in ``y`` to one in ``x``, puts at most half of the
    crystals above their mismatch: for a pair ``(i, j)``, ``g(y_i) > g(y_j)`` and ``g(y_j) > g(y_i)`` cannot
    both hold. The cGAN critic, whose hidden layer of ``y`` joins every token, learns to rank nearly every
    matched pair first."""
    torch.manual_seed(0)
    model = build_cgan(cond_codec)
    y = cond_batch["condition"]
    order = y[:, 0].argsort()
    partner = torch.empty_like(order)
    partner[order] = order.roll(len(order) // 2)
    assert torch.equal(partner[partner], torch.arange(len(y)))  # an involution: the bound above holds
    wrong = y[partner]
    real = model.real_fields(cond_batch)
    opt = torch.optim.Adam(list(model.critic_parameters()), lr=3e-3)
    for _ in range(100):
        loss = ADVERSARIAL_LOSSES["non_saturating"](model.score(real, y), model.score(real, wrong))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((model.score(real, y) > model.score(real, wrong)).float().mean())
    assert accuracy >= 0.9, accuracy


def test_fit_data_keeps_the_training_conditions_and_a_checkpoint_restores_them(
    cond_codec, cond_batch, tmp_path: Path,  # noqa: ANN001
) -> None:
    torch.manual_seed(0)
    model = build_cgan(cond_codec)
    assert model.condition_bank.shape == (0, 1)
    with pytest.raises(RuntimeError, match="no training conditions"):
        model.sample(2)
    model.fit_data(cond_batch)
    assert torch.equal(model.condition_bank, cond_batch["condition"])
    trainer = make_trainer(4)
    trainer.fit(model, fixed_batches(cond_batch, 4))
    first = model.sample(8, generator=torch.Generator().manual_seed(3))

    path = tmp_path / "cgan.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    fresh = build_cgan(cond_codec)  # no fit_data: the conditions must come from the checkpoint
    fresh.load_state_dict(state)
    assert torch.equal(fresh.condition_bank, cond_batch["condition"])
    reloaded = fresh.sample(8, generator=torch.Generator().manual_seed(3))
    for key in first:
        assert torch.equal(first[key], reloaded[key]), key


def test_sampling_without_a_condition_draws_the_training_conditions(
    cond_codec, cond_batch, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Training conditions ``-1.2`` (three of every four crystals) and ``0.7``: the drawn conditions take
    those two values only, ``0.7`` a quarter of the time, and sampling at the drawn conditions is the same
    draw."""
    torch.manual_seed(0)
    model = build_cgan(cond_codec)
    n_train = cond_batch["lattice"].shape[0]
    values = torch.tensor([-1.2, -1.2, -1.2, 0.7]).repeat(n_train // 4).unsqueeze(1)
    model.fit_data({**cond_batch, "condition": values})
    used: list[torch.Tensor] = []
    generate = model.generate

    def recording(noise, condition=None):  # noqa: ANN001, ANN202
        used.append(condition.clone())
        return generate(noise, condition)

    monkeypatch.setattr(model, "generate", recording)
    n = 4000
    drawn = model.sample(n, generator=torch.Generator().manual_seed(0))
    conditions = used[-1]
    assert conditions.shape == (n, 1)
    assert set(conditions.flatten().tolist()) == set(values.flatten().tolist())  # exactly the two values
    assert float((conditions > 0).float().mean()) == pytest.approx(0.25, abs=0.03)  # 4,000 draws: sd 0.007
    given = model.sample(n, generator=torch.Generator().manual_seed(0), condition=conditions)
    for key in drawn:
        assert torch.equal(drawn[key], given[key]), key


def test_bad_conditions_fail_with_one_line(cond_codec, cond_batch, codec) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_cgan(cond_codec)
    model.fit_data(cond_batch)
    cases = [
        (lambda: model.sample(4, condition=torch.zeros(4, 2)), r"condition must be \[4, 1\]"),
        (lambda: model.sample(4, condition=torch.full((4, 1), math.nan)), "NaN"),
        (lambda: model.loss({k: v for k, v in cond_batch.items() if k != "condition"}),
         "no 'condition' field"),
        (lambda: CrystalGAN(  # a class without conditional = True refuses a condition
            functools.partial(CrystalTransformer, d_model=16, n_layers=1, n_heads=2),
            functools.partial(torch.optim.Adam), codec.num_types, codec.max_atoms, condition_dim=1,
        ), "unconditional"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value), str(err.value)


def test_without_a_condition_channel_it_is_the_unconditional_gan(codec, batch) -> None:  # noqa: ANN001
    """The contract test's build (no condition): the same networks, weights and samples as the GAN base with
    the same settings, before and after training, and a condition at sampling is refused."""
    cfg = tiny_config("cgan")
    twin = OmegaConf.merge(cfg, {"module": {"_target_": "bench.models.gan.base.CrystalGAN"}})
    models = []
    for c in (cfg, twin):
        pl.seed_everything(0, verbose=False)
        models.append(build(c, codec))
    cgan, gan = models
    assert type(cgan) is CrystalCGAN and type(gan) is CrystalGAN and cgan.condition_dim == 0
    assert cgan.state_dict().keys() == gan.state_dict().keys()
    for model in models:
        pl.seed_everything(1, verbose=False)
        make_trainer(6).fit(model, fixed_batches(batch, 6))
    for key, value in cgan.state_dict().items():
        assert torch.equal(value, gan.state_dict()[key]), key
    a, b = (m.sample(5, generator=torch.Generator().manual_seed(2)) for m in models)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="unconditional"):
        cgan.sample(2, condition=torch.zeros(2, 1))


def test_training_with_a_condition_steps_both_networks_and_their_condition_layers(
    cond_codec, cond_batch,  # noqa: ANN001
) -> None:
    pl.seed_everything(0, verbose=False)
    model = build_cgan(cond_codec)
    model.fit_data(cond_batch)
    sum(model.training_objectives(cond_batch)).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = 12
    losses = test_models._LossHistory()
    make_trainer(steps, [losses]).fit(model, fixed_batches(cond_batch, steps))
    assert losses.values and all(math.isfinite(v) for v in losses.values)
    assert int(model.critic_updates) == 8 and model.n_critic == 2  # 8 critic + 4 generator steps
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged  # both optimisers reached every network, the condition layers too
    assert {n.split(".")[0] for n in before} >= {"generator_condition", "critic_condition"}


def test_the_periodic_gan_becomes_conditional_through_the_same_hook(cond_codec, cond_batch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_periodic(cond_codec)
    model.fit_data(cond_batch)
    assert torch.equal(model.condition_bank, cond_batch["condition"])
    assert float(model.atom_counts.sum()) == cond_batch["lattice"].shape[0]  # the atom counts still fitted
    sum(model.training_objectives(cond_batch)).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.eval()
    noise = model._noise(5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        low = model.generate(noise, torch.full((5, 1), -1.5))
        high = model.generate(noise, torch.full((5, 1), 1.5))
        real = model.real_fields(cond_batch)
        scores = model.score(real, cond_batch["condition"])
        flipped = model.score(real, -cond_batch["condition"])
    assert (low["lattice"] - high["lattice"]).abs().min() > 1e-5
    assert (scores - flipped).abs().min() > 1e-6
    gp = model.gradient_penalty(real, model.fake_like(real, cond_batch["condition"]), cond_batch["condition"])
    assert math.isfinite(float(gp.detach()))
    out = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert out["lattice"].shape == (4, 6)
