"""VQ-VAE on the periodic core (``vq_vae``), on inputs whose answer is known by hand: a hand-made codebook
and its nearest codes, the straight-through gradient, the codebook and commitment losses and which tensors
each moves, the moving-average codebook, perplexities of chosen code counts, the uniform prior before
training, a prior that learns a code sequence with a rule, and training in two stages end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench.models.vae.latents import BetaTCLatent
from bench.models.vae.vq import CodePrior, VQLatent, code_perplexity, nearest_codes

from tests.test_cdvae import make_model, random_batch
from tests.test_models import compose_model, tiny_config

# A hand-made codebook in the plane and four encoder outputs (two crystals, M = 2 groups of d = 2).
BOOK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
Z_E = torch.tensor([[0.9, 0.2, 0.1, 0.1], [-0.4, -0.6, 0.2, 0.7]])
NEAREST = torch.tensor([[1, 0], [3, 2]])
# squared distances to the nearest codes: 0.05, 0.02, 0.52, 0.13
MEAN_SQUARED_DISTANCE = (0.05 + 0.02 + 0.52 + 0.13) / 4


pytestmark = pytest.mark.usefixtures("one_thread")


def hand_latent(update: str = "loss", **kwargs: object) -> VQLatent:
    latent = VQLatent(groups=2, code_dim=2, codes=4, prior_width=8, prior_heads=2, prior_layers=1,
                      codebook_update=update, **kwargs)
    with torch.no_grad():
        latent.codebook.copy_(BOOK)
    return latent


def quantise_step(latent: VQLatent, params: torch.Tensor, step: int = 0):  # noqa: ANN201
    """The latent's posterior of ``params`` and its penalty (which, in training, updates the codebook)."""
    z, stats = latent.posterior(params)
    return latent.penalty(stats, z, step)


def vq_model(**latent_kwargs: object):  # noqa: ANN201
    """The tiny cdvae of tests/test_cdvae.py with a VQ latent of M = 2 codes of width 2 (z 4 wide)."""
    kwargs = {"groups": 2, "code_dim": 2, "codes": 8, "prior_width": 8, "prior_heads": 2, "prior_layers": 1,
              **latent_kwargs}
    torch.manual_seed(0)
    return make_model(latent=VQLatent(**kwargs))


# ---------------------------------------------------------------------------------------------- quantisation
def test_quantisation_picks_the_nearest_code_and_the_first_of_a_tie() -> None:
    latent = hand_latent()
    z, stats = latent.posterior(Z_E)
    assert torch.equal(stats["codes"], NEAREST)
    torch.testing.assert_close(z, BOOK[NEAREST].reshape(2, 4), rtol=0, atol=1e-7)
    assert torch.equal(latent.codes(Z_E), NEAREST)
    # [0.5, 0] is as far from code 0 as from code 1; [-0.5, -0.5] from codes 0 and 3
    assert nearest_codes(torch.tensor([[0.5, 0.0], [-0.5, -0.5]]), BOOK).tolist() == [0, 0]


def test_the_straight_through_gradient_reaches_the_encoder_unchanged_and_not_the_codebook() -> None:
    latent = hand_latent()
    params = Z_E.clone().requires_grad_(True)
    z, _ = latent.posterior(params)
    upstream = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    (z * upstream).sum().backward()
    assert torch.equal(params.grad, upstream)
    assert latent.codebook.grad is None


def test_codebook_and_commitment_losses_are_their_formulas_and_each_moves_only_its_side() -> None:
    latent = hand_latent("loss", commitment=0.25)
    params = Z_E.clone().requires_grad_(True)
    z, stats = latent.posterior(params)
    out = latent.penalty(stats, z, step=0)
    assert float(out.regulariser) == 0.0  # no KL: the uniform prior's KL is a constant
    assert float(out.terms["vq_codebook"].detach()) == pytest.approx(MEAN_SQUARED_DISTANCE, abs=1e-6)
    assert float(out.terms["vq_commitment"].detach()) == pytest.approx(MEAN_SQUARED_DISTANCE, abs=1e-6)
    assert float(out.auxiliary.detach()) == pytest.approx(1.25 * MEAN_SQUARED_DISTANCE, abs=1e-6)

    e = BOOK[NEAREST].reshape(2, 4)
    out.terms["vq_commitment"].backward(retain_graph=True)
    assert latent.codebook.grad is None  # the commitment loss does not move the codebook
    torch.testing.assert_close(params.grad, 2.0 * (Z_E - e) / 4)  # d/dz_e of the mean of 4 squared norms

    params.grad = None
    out.terms["vq_codebook"].backward()
    assert params.grad is None  # the codebook loss does not move the encoder
    want = torch.zeros_like(BOOK)
    for code, vector in zip(NEAREST.flatten(), Z_E.reshape(4, 2), strict=True):
        want[code] += 2.0 * (BOOK[code] - vector) / 4
    torch.testing.assert_close(latent.codebook.grad, want)


def test_the_moving_average_codebook_is_the_decayed_mean_of_its_vectors() -> None:
    """Appendix A.1 with ``gamma = 0.5``: after two vectors ``[1, 0]``, ``[3, 0]``: ``N = 1``, ``m = [2, 0]``,
    so ``e = [2, 0]``; then one vector ``[5, 5]``: ``N = 1``, ``m = [3.5, 2.5]``. Codes never used keep their
    vectors; evaluation moves nothing; the loss is the commitment term alone."""
    far = torch.tensor([[1.0, 0.0], [-10.0, -10.0], [10.0, -10.0], [-10.0, 10.0]])
    latent = VQLatent(groups=1, code_dim=2, codes=4, prior_width=8, prior_heads=2, prior_layers=1,
                      codebook_update="ema", decay=0.5, commitment=0.25)
    latent.codebook.copy_(far)
    assert "codebook" not in dict(latent.named_parameters())
    params = torch.tensor([[1.0, 0.0], [3.0, 0.0]], requires_grad=True)
    z, stats = latent.posterior(params)
    out = latent.penalty(stats, z, step=0)
    torch.testing.assert_close(out.auxiliary, 0.25 * out.terms["vq_commitment"])
    assert float(out.terms["vq_commitment"].detach()) == pytest.approx((0.0 + 4.0) / 2)  # old e = [1, 0]
    torch.testing.assert_close(latent.codebook[0], torch.tensor([2.0, 0.0]))
    quantise_step(latent, torch.tensor([[5.0, 5.0]]), step=1)
    torch.testing.assert_close(latent.codebook[0], torch.tensor([3.5, 2.5]))
    torch.testing.assert_close(latent.codebook[1:], far[1:], rtol=0, atol=0)
    latent.eval()
    quantise_step(latent, torch.tensor([[9.0, 9.0]]), step=2)
    torch.testing.assert_close(latent.codebook[0], torch.tensor([3.5, 2.5]))


def test_perplexity_is_k_for_uniform_use_and_one_for_a_single_code() -> None:
    k = 16
    assert float(code_perplexity(torch.arange(k).repeat(3), k)) == pytest.approx(k)
    assert float(code_perplexity(torch.full((40,), 5), k)) == pytest.approx(1.0)
    three_to_one = torch.tensor([0, 0, 0, 1])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(code_perplexity(three_to_one, k)) == pytest.approx(math.exp(entropy))


@pytest.mark.parametrize("restart", [False, True])
def test_codes_unused_for_dead_after_batches_are_counted_and_restarted_on_batch_vectors(
    restart: bool,
) -> None:
    latent = hand_latent("ema", dead_after=2, restart_dead=restart)
    near_one = torch.tensor([[0.9, 0.1, 1.1, -0.1]])  # both groups pick code 1: codes 0, 2, 3 go unused
    dead = []
    for step in range(2):
        dead.append(float(quantise_step(latent, near_one, step).terms["dead_codes"]))
    assert dead == [0.0, 3.0]
    vectors = near_one.reshape(2, 2)
    for code in (0, 2, 3):
        on_batch = any(torch.equal(latent.codebook[code], v) for v in vectors)
        assert on_batch == restart, code
    assert latent.idle_batches.tolist() == ([0, 0, 0, 0] if restart else [2, 0, 2, 2])


# ---------------------------------------------------------------------------------------------- the prior
def test_the_untrained_prior_is_uniform_and_draws_by_the_inverse_cdf() -> None:
    prior = CodePrior(num_codes=8, length=3, width=16, num_layers=1, num_heads=2).eval()
    codes = torch.randint(0, 8, (5, 3), generator=torch.Generator().manual_seed(0))
    assert float(prior.nll(codes).detach()) == pytest.approx(math.log(8), abs=1e-6)
    uniform = torch.tensor([[0.01, 0.26, 0.99], [0.5 + 1e-3, 0.124, 0.876]])
    assert prior.sample(uniform).tolist() == [[0, 2, 7], [4, 0, 7]]  # floor(8 u)


def test_sampling_before_the_prior_stage_draws_uniform_codes_from_the_generator() -> None:
    model = vq_model()
    assert model.training_stages == ("autoencoder", "prior")
    z = model.sample_prior(4000, torch.Generator().manual_seed(3))
    codes = model.latent.codes(z)
    x = torch.randn((4000, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(codes, (torch.special.ndtr(x.double()) * 8).floor().long())  # the same numbers
    counts = torch.bincount(codes.flatten(), minlength=8).double()
    assert float(((counts - 1000.0) ** 2 / 1000.0).sum()) < 24.3  # chi-square, 7 dof, p = 0.001
    out = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert out["lattice"].shape == (3, 6)


def test_the_prior_learns_a_code_sequence_with_a_rule_and_samples_it_reproducibly() -> None:
    """Codes ``c_1`` uniform over 8 and ``c_{i+1} = c_i + 1 mod 8``: the entropy is ``log 8`` per sequence,
    ``log(8) / 4 = 0.52`` nats per code, against ``log 8 = 2.08`` for the uniform prior."""
    torch.manual_seed(0)
    latent = VQLatent(groups=4, code_dim=2, codes=8, prior_width=32, prior_heads=2, prior_layers=1,
                      prior_dropout=0.0)
    first = torch.randint(0, 8, (256, 1))
    codes = (first + torch.arange(4)) % 8
    optimiser = torch.optim.Adam(latent.code_prior.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = latent.code_prior.nll(codes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(math.log(8), abs=1e-6)
    assert losses[-1] < 0.7, losses[-1]
    latent.eval()

    def randn(shape, generator):  # noqa: ANN001, ANN202
        return torch.randn(tuple(shape), generator=generator)

    z = latent.prior(200, torch.Generator().manual_seed(5), randn)
    drawn = latent.codes(z)
    follows = ((drawn[:, 1:] - drawn[:, :-1]) % 8 == 1).all(dim=1).float().mean()
    assert float(follows) > 0.9
    assert torch.equal(latent.prior(200, torch.Generator().manual_seed(5), randn), z)
    assert not torch.equal(latent.prior(200, torch.Generator().manual_seed(6), randn), z)


# ---------------------------------------------------------------------------------------------- the model
def test_only_a_latent_with_a_prior_to_train_gives_training_stages() -> None:
    for model in (make_model(), make_model(latent=BetaTCLatent(4))):
        assert model.training_stages == ()
        with pytest.raises(NotImplementedError):
            model.stage_parameters("prior")
        with pytest.raises(ValueError, match="trains in one stage"):
            model.set_stage("prior")
    model = vq_model()
    prior = {id(p) for p in model.latent.code_prior.parameters()}
    autoencoder = {id(p) for p in model.stage_parameters("autoencoder")}
    assert autoencoder == {id(p) for p in model.parameters()} - prior
    assert {id(p) for p in model.stage_parameters("prior")} == prior


def test_one_stage_training_adds_the_prior_cross_entropy_to_the_autoencoder_loss() -> None:
    model = vq_model(commitment=0.25)
    batch = random_batch()
    out = model.loss(batch)
    heads = (out["atom_types_mse"] + out["frac_coords_mse"] + 10.0 * out["lattice_mse"] + out["num_atoms_ce"]
             + out["composition_ce"])
    torch.testing.assert_close(out["loss"], heads + 0.25 * out["vq_commitment"] + out["prior_ce"])
    assert float(out["prior_ce"]) == pytest.approx(math.log(8), abs=1e-6)  # the untrained prior is uniform
    model.set_stage("autoencoder")
    assert "prior_ce" not in model.loss(batch)


def test_the_prior_stage_trains_only_the_prior_and_its_cross_entropy_falls() -> None:
    model = vq_model().train()
    batch = random_batch()
    model.set_stage("prior")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = model.configure_optimizers()
    losses = []
    for _ in range(30):
        out = model.loss(batch)
        assert set(out) == {"loss", "prior_ce"}
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(float(out["loss"].detach()))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("latent.code_prior.") for k in moved), moved
    assert losses[0] == pytest.approx(math.log(8), abs=1e-6)  # uniform before this stage
    assert losses[-1] < losses[0] - 0.1  # three crystals' codes: the prior learns them

    model.set_stage("autoencoder")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = model.configure_optimizers()
    out = model.loss(batch)
    optimiser.zero_grad()
    out["loss"].backward()
    optimiser.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("latent.code_prior."))
    assert not torch.equal(before["encoder.lattice_out.2.weight"], after["encoder.lattice_out.2.weight"])


def test_the_plain_vae_trains_a_vq_prior_in_its_own_stage_too() -> None:
    import hydra
    from bench.datasets.codec import CrystalCodec
    from bench.datasets.tiny import tiny_structures

    codec = CrystalCodec(max_atoms=8).fit(tiny_structures("train"))
    batch = codec.encode(tiny_structures("train"))
    cfg = tiny_config("vae")
    torch.manual_seed(0)
    latent = VQLatent(groups=2, code_dim=2, codes=8, prior_width=8, prior_heads=2, prior_layers=1)
    vae = hydra.utils.instantiate(cfg.module, num_types=codec.num_types, max_atoms=codec.max_atoms,
                                  latent=latent)
    assert vae.training_stages == ("autoencoder", "prior")
    assert {"vq_commitment", "prior_ce"} <= set(vae.loss(batch))
    vae.set_stage("prior")
    trainable = {n for n, p in vae.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("latent.code_prior.") for n in trainable)
    assert set(vae.loss(batch)) == {"loss", "prior_ce"}


def test_the_config_is_cdvae_with_the_vq_latent_and_two_stages() -> None:
    cdvae, vq = compose_model("cdvae"), compose_model("vq_vae")
    assert vq.module._target_ == cdvae.module._target_
    assert [s.name for s in vq.stages] == ["autoencoder", "prior"]
    assert sum(float(s.share) for s in vq.stages) == pytest.approx(1.0)
    latent = vq.module.latent
    assert latent.groups * latent.code_dim == cdvae.module.latent_dim  # z as wide as cdvae's
    assert float(latent.commitment) == 0.25 and float(latent.decay) == 0.99
    assert latent.codebook_update == "ema" and latent.restart_dead
    assert vq.paper.startswith("van den Oord")


def test_training_in_two_stages_end_to_end(tmp_path: Path) -> None:
    """``bench.train.train`` of the tiny config: two stages recorded with their steps; the prior stage leaves
    every weight but the prior's as the autoencoder stage left it; the trained run samples."""
    from bench.config import compose
    from bench.sample import sample
    from bench.train import train

    own = list(compose_model("vq_vae").test_overrides)
    cfg = compose([
        "dataset=tiny", "logger=none", "trainer.enable_progress_bar=false", "train.batch_size=8",
        "sample.num_samples=4", "sample.batch_size=4", "record.regenerate_board=false",
        "metrics.names=[struct_valid]", "model=vq_vae", *own, "trainer.max_steps=8",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}",
    ])
    summary = train(cfg)
    assert [(s["name"], s["max_steps"], s["steps"]) for s in summary["stages"]] == [
        ("autoencoder", 6, 6), ("prior", 2, 2)]
    assert summary["steps"] == 8

    def weights(path: str | Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    first = weights(summary["stages"][0]["checkpoint"])
    final = weights(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt")
    assert first.keys() == final.keys()
    prior = {k for k in first if k.startswith("latent.code_prior.")}
    assert prior and all(torch.equal(first[k], final[k]) for k in first if k not in prior)
    assert any(not torch.equal(first[k], final[k]) for k in prior)
    untrained = first["latent.code_prior.out.weight"]  # stage 1 left the prior uniform (zero logits)
    assert torch.equal(untrained, torch.zeros_like(untrained))
    drawn = sample(cfg)
    assert drawn["num_samples"] == 4 and Path(drawn["path"]).is_file()
