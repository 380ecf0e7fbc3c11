"""VQ-VAE-2 on the periodic core (``vq_vae2``), on inputs whose answer is known by hand: both levels' codes,
commitment losses, code usage and moving averages on hand-made vectors (empty atom slots counting for
nothing), the bottom encoder reading the top, the bottom prior's conditioning on the top codes, a decoder that
reconstructs from both levels what the top alone cannot carry, valid codes at both levels when sampling, and
the priors trained only after the autoencoder."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.periodic_base import ATOM_FIELDS
from bench.models.vae.cdvae import CrystalCDVAE
from bench.models.vae.vq import CodePrior, HierarchicalCode, HierarchicalVQLatent, VQLatent
from bench.models.vae.vq_vae2 import CrystalVQVAE2
from omegaconf import OmegaConf
from torch import nn

from tests.test_cdvae import MAX_ATOMS, NUM_TYPES, random_batch
from tests.test_models import compose_model

pytestmark = pytest.mark.usefixtures("one_thread")

# The top level: vq_vae's hand-made case (two crystals, M = 2 codes of d = 2).
TOP_BOOK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
TOP_Z_E = torch.tensor([[0.9, 0.2, 0.1, 0.1], [-0.4, -0.6, 0.2, 0.7]])
TOP_CODES = torch.tensor([[1, 0], [3, 2]])
TOP_DISTANCE = (0.05 + 0.02 + 0.52 + 0.13) / 4  # mean squared distance to the nearest codes
# The bottom level: three slots, crystal 0 with two atoms (its third slot empty and far from every code),
# crystal 1 with three.
BOTTOM_BOOK = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
ATOMS = torch.tensor([[[0.1, 0.2], [1.8, 0.1], [9.0, 9.0]], [[1.9, 2.3], [0.3, 1.6], [2.2, -0.1]]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
BOTTOM_FILLED_CODES = [0, 1, 3, 2, 1]
BOTTOM_DISTANCE = (0.05 + 0.05 + 0.10 + 0.25 + 0.05) / 5  # over the five atoms; the empty slot's 98 left out


def hand_latent(update: str = "ema", **kwargs: object) -> HierarchicalVQLatent:
    """A latent with the hand-made codebooks and an ``E_bottom`` that passes each atom's two features
    through unchanged (so the bottom vectors are :data:`ATOMS`)."""
    latent = HierarchicalVQLatent(
        slots=3, groups=2, code_dim=2, codes=4, bottom_code_dim=2, bottom_codes=4, atom_features=2,
        prior_width=8, prior_heads=2, prior_layers=1, codebook_update=update, **kwargs,
    )
    passthrough = nn.Linear(2 + 4, 2, bias=False)
    with torch.no_grad():
        passthrough.weight.copy_(torch.cat([torch.eye(2), torch.zeros(2, 4)], dim=1))
        latent.top.codebook.copy_(TOP_BOOK)
        latent.bottom.codebook.copy_(BOTTOM_BOOK)
    latent.bottom_encoder = passthrough
    return latent


def hand_params(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {"crystal": TOP_Z_E.clone().requires_grad_(requires_grad),
            "atoms": ATOMS.clone().requires_grad_(requires_grad), "mask": MASK}


def perplexity_of(counts: list[int]) -> float:
    total = sum(counts)
    return math.exp(-sum(c / total * math.log(c / total) for c in counts if c))


def tiny_vq2(**latent_kwargs: object) -> CrystalVQVAE2:
    """A tiny vq_vae2 on tests/test_cdvae.py's shapes: top M = 2 codes of width 2 from 8, one bottom code of
    width 2 from 8 per atom."""
    kwargs = {"groups": 2, "code_dim": 2, "codes": 8, "bottom_code_dim": 2, "bottom_codes": 8,
              "atom_features": 8, "prior_width": 8, "prior_heads": 2, "prior_layers": 1, **latent_kwargs}
    torch.manual_seed(0)
    return CrystalVQVAE2(
        backbone=functools.partial(PeriodicMPNN, width=16, n_layers=2, num_frequencies=2),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        num_types=NUM_TYPES, max_atoms=MAX_ATOMS,
        processes={"atom_types": VPGaussian(timesteps=20, clip=1.0),
                   "frac_coords": WrappedNormalVE(timesteps=20)},
        latent=functools.partial(HierarchicalVQLatent, **kwargs),
        sampler=PredictorCorrectorSampler(steps=4), hidden_dim=8, time_dim=8, beta=0.0,
    ).eval()


def randomise_output(prior: CodePrior, seed: int = 0) -> None:
    """Give the prior's zero-initialised output layer random weights, so its logits depend on its input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.out.weight.copy_(torch.randn(prior.out.weight.shape, generator=g))
        prior.out.bias.copy_(torch.randn(prior.out.bias.shape, generator=g))


def randn(shape, generator):  # noqa: ANN001, ANN201
    return torch.randn(tuple(shape), generator=generator)


# ---------------------------------------------------------------------------------------------- both levels
def test_both_levels_quantise_to_their_nearest_codes_and_empty_slots_are_zero() -> None:
    latent = hand_latent()
    z, stats = latent.posterior(hand_params())
    assert isinstance(z, HierarchicalCode)
    assert torch.equal(z.top_codes, TOP_CODES)
    torch.testing.assert_close(z.top, TOP_BOOK[TOP_CODES].reshape(2, 4), rtol=0, atol=1e-7)
    assert z.bottom_codes[MASK > 0].tolist() == BOTTOM_FILLED_CODES
    assert int(z.bottom_codes[0, 2]) == 3  # the empty slot is quantised ([9, 9] -> [2, 2]) ...
    want = BOTTOM_BOOK[z.bottom_codes] * MASK.unsqueeze(-1)
    torch.testing.assert_close(z.bottom, want, rtol=0, atol=1e-7)
    assert torch.equal(z.bottom[0, 2], torch.zeros(2))  # ... but the decoder sees zero there


def test_both_levels_commitment_losses_and_code_usage_are_their_formulas() -> None:
    """Top: vq_vae's case, four codes each used once (perplexity 4). Bottom: the five atoms' distances and
    codes (code 1 twice: perplexity of ``(1, 2, 1, 1) / 5``); counting the empty slot would add 98 / 6 to the
    distance and a second use of code 3."""
    latent = hand_latent("loss", commitment=0.25)
    z, stats = latent.posterior(hand_params())
    out = latent.penalty(stats, z, step=0)
    assert float(out.regulariser) == 0.0  # no KL at either level
    terms = {k: float(v.detach()) for k, v in out.terms.items()}
    assert terms["top_vq_commitment"] == pytest.approx(TOP_DISTANCE, abs=1e-6)
    assert terms["top_vq_codebook"] == pytest.approx(TOP_DISTANCE, abs=1e-6)
    assert terms["bottom_vq_commitment"] == pytest.approx(BOTTOM_DISTANCE, abs=1e-6)
    assert terms["bottom_vq_codebook"] == pytest.approx(BOTTOM_DISTANCE, abs=1e-6)
    assert terms["top_perplexity"] == pytest.approx(4.0, abs=1e-5)
    assert terms["bottom_perplexity"] == pytest.approx(perplexity_of([1, 2, 1, 1]), abs=1e-5)
    assert terms["top_codes_used"] == 4.0 and terms["bottom_codes_used"] == 4.0
    assert terms["top_dead_codes"] == 0.0 and terms["bottom_dead_codes"] == 0.0
    # equation 2 at each level: codebook loss + beta x commitment loss
    assert float(out.auxiliary.detach()) == pytest.approx(1.25 * (TOP_DISTANCE + BOTTOM_DISTANCE), abs=1e-6)


def test_the_bottom_commitment_moves_the_atom_encoding_and_the_codebook_loss_the_bottom_codebook() -> None:
    latent = hand_latent("loss")
    params = hand_params(requires_grad=True)
    z, stats = latent.posterior(params)
    out = latent.penalty(stats, z, step=0)
    out.terms["bottom_vq_commitment"].backward(retain_graph=True)
    e = BOTTOM_BOOK[z.bottom_codes]
    want = 2.0 * (ATOMS - e) / 5 * MASK.unsqueeze(-1)  # d/dz_e of the mean over five atoms; none for the pad
    torch.testing.assert_close(params["atoms"].grad, want)
    assert latent.bottom.codebook.grad is None and latent.top.codebook.grad is None
    params["atoms"].grad = None
    out.terms["bottom_vq_codebook"].backward()
    assert params["atoms"].grad is None and latent.top.codebook.grad is None
    want_book = torch.zeros_like(BOTTOM_BOOK)
    for code, vector in zip(BOTTOM_FILLED_CODES, ATOMS[MASK > 0], strict=True):
        want_book[code] += 2.0 * (BOTTOM_BOOK[code] - vector) / 5
    torch.testing.assert_close(latent.bottom.codebook.grad, want_book)


def test_each_codebook_follows_the_moving_average_of_its_own_kept_vectors() -> None:
    """Decay 0.5, one training step from zero averages: each used code becomes the mean of the vectors
    assigned to it; the bottom's code 3 takes crystal 1's atom alone (the empty slot's [9, 9] is not
    averaged in); unused codes keep their vectors."""
    latent = hand_latent("ema", decay=0.5).train()
    z, stats = latent.posterior(hand_params())
    latent.penalty(stats, z, step=0)
    torch.testing.assert_close(latent.bottom.codebook[3], torch.tensor([1.9, 2.3]))
    torch.testing.assert_close(latent.bottom.codebook[1], (ATOMS[0, 1] + ATOMS[1, 2]) / 2)
    torch.testing.assert_close(latent.bottom.codebook[0], ATOMS[0, 0])
    torch.testing.assert_close(latent.top.codebook[3], TOP_Z_E[1, :2])
    assert latent.bottom.idle_batches.tolist() == [0, 0, 0, 0]


def test_dead_codes_count_only_the_atoms() -> None:
    """Every atom picks bottom code 1 or 2 and the empty slot would pick code 3: after ``dead_after = 2``
    batches codes 0 and 3 are dead (without restarts they stay where they are)."""
    latent = hand_latent("ema", dead_after=2, restart_dead=False).train()
    atoms = torch.tensor([[[1.9, 0.1], [0.1, 1.9], [9.0, 9.0]], [[2.1, 0.0], [0.0, 2.1], [1.8, 0.2]]])
    params = {**hand_params(), "atoms": atoms}
    dead = []
    for step in range(2):
        z, stats = latent.posterior(params)
        dead.append(float(latent.penalty(stats, z, step).terms["bottom_dead_codes"]))
    assert dead == [0.0, 2.0]
    assert latent.bottom.idle_batches.tolist() == [2, 0, 0, 2]


def test_the_bottom_encoder_reads_the_quantised_top_straight_through() -> None:
    """``E_bottom(x, e_top)``: the bottom's vectors change with the top codes, and its commitment loss reaches
    the top encoder's output through the straight-through top."""
    torch.manual_seed(0)
    latent = HierarchicalVQLatent(slots=3, groups=2, code_dim=2, codes=4, bottom_code_dim=2, bottom_codes=4,
                                  atom_features=2, prior_width=8, prior_heads=2, prior_layers=1)
    latent.top.codebook.copy_(TOP_BOOK)
    params = hand_params(requires_grad=True)
    z, stats = latent.posterior(params)
    other_top = {**hand_params(), "crystal": torch.tensor([[0.0, 0.9, -0.8, -1.1], [0.1, 0.0, 1.0, 0.1]])}
    z_other, stats_other = latent.posterior(other_top)
    assert not torch.equal(z_other.top_codes, z.top_codes)
    assert not torch.allclose(stats_other["bottom_z_e"], stats["bottom_z_e"])
    latent.penalty(stats, z, 0).terms["bottom_vq_commitment"].backward()
    assert params["crystal"].grad is not None and float(params["crystal"].grad.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------- the priors
def test_the_bottom_prior_without_its_context_is_the_unconditional_prior() -> None:
    """Built from the same seed, the conditional prior's shared weights are an unconditional prior's; called
    without the top codes it computes exactly what that prior computes."""
    torch.manual_seed(0)
    conditional = CodePrior(8, 5, width=16, num_layers=2, num_heads=2, context_codes=4, context_length=2)
    torch.manual_seed(0)
    plain = CodePrior(8, 5, width=16, num_layers=2, num_heads=2)
    shared, own = plain.state_dict(), conditional.state_dict()
    assert set(own) - set(shared) == {"context_embed.weight", "context_position"}
    assert all(torch.equal(shared[k], own[k]) for k in shared)
    randomise_output(conditional)
    plain.load_state_dict({k: v for k, v in conditional.state_dict().items() if k in shared})
    conditional.eval(), plain.eval()
    codes = torch.randint(0, 8, (6, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(conditional(codes), plain(codes))
    assert torch.equal(conditional.nll(codes), plain.nll(codes))
    top = torch.randint(0, 4, (6, 2), generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(conditional(codes, top), plain(codes))


@torch.no_grad()
def test_changing_a_top_code_changes_every_bottom_logit_and_the_bottom_prior_is_causal() -> None:
    torch.manual_seed(0)
    prior = CodePrior(8, 5, width=16, num_layers=2, num_heads=2, context_codes=4, context_length=2).eval()
    randomise_output(prior)
    codes = torch.tensor([[3, 1, 4, 1, 5]])
    top = torch.tensor([[0, 2]])
    logits = prior(codes, top)
    for changed in (torch.tensor([[1, 2]]), torch.tensor([[0, 3]])):  # either top code
        moved = (prior(codes, changed) - logits).abs().amax(dim=-1)
        assert bool((moved > 1e-4).all()), moved  # at every bottom position, the first included
    for j in range(5):  # a later bottom code leaves the logits up to and including its own position alone
        other = codes.clone()
        other[0, j] = (other[0, j] + 1) % 8
        moved = (prior(other, top) - logits).abs().amax(dim=-1)[0]
        assert float(moved[: j + 1].max()) == 0.0
        assert j == 4 or float(moved[j + 1 :].min()) > 1e-4
    with pytest.raises(ValueError, match="context must be"):
        prior(codes, torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="without a context"):
        CodePrior(8, 5, width=16, num_layers=1, num_heads=2)(codes, top)


def test_the_masked_cross_entropy_averages_the_kept_codes_only() -> None:
    torch.manual_seed(0)
    prior = CodePrior(8, 4, width=16, num_layers=1, num_heads=2, context_codes=4, context_length=2).eval()
    randomise_output(prior)
    codes = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    top = torch.tensor([[0, 1], [2, 3]])
    keep = torch.tensor([[True, True, False, False], [True, True, True, False]])
    per_code = -torch.log_softmax(prior(codes, top), dim=-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    want = float(per_code[keep].mean())
    assert float(prior.nll(codes, top, keep)) == pytest.approx(want, rel=1e-6)
    everything = float(prior.nll(codes, top, torch.ones_like(keep)))
    assert everything == pytest.approx(float(per_code.mean()), rel=1e-6)


def test_only_the_conditional_bottom_prior_learns_codes_set_by_the_top() -> None:
    """Top codes ``(t_1, t_2)`` uniform over 4 x 4, bottom codes ``b_i = (2 t_1 + t_2 + i) mod 8``: given the
    top, the bottom is certain (0 nats); without it only ``b_1`` is uncertain, at best ``log(8) / 4 = 0.52``
    nats per code, the floor of any prior that does not read the top."""
    torch.manual_seed(0)
    top = torch.randint(0, 4, (256, 2))
    bottom = (2 * top[:, :1] + top[:, 1:] + torch.arange(4)) % 8
    final = {}
    for name, context in (("conditional", top), ("unconditional", None)):
        torch.manual_seed(0)
        prior = CodePrior(8, 4, width=32, num_layers=1, num_heads=2, dropout=0.0, context_codes=4,
                          context_length=2)
        optimiser = torch.optim.Adam(prior.parameters(), lr=3e-3)
        for _ in range(150):
            loss = prior.nll(bottom, context)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        final[name] = float(loss.detach())
        if context is not None:
            prior.eval()
            uniform = torch.rand(256, 4, generator=torch.Generator().manual_seed(3))
            drawn = prior.sample(uniform, context=top)
            assert float((drawn == bottom).all(dim=1).float().mean()) > 0.9
    assert final["conditional"] < 0.1, final
    assert final["unconditional"] > math.log(8) / 4 - 0.05, final


# ---------------------------------------------------------------------------------------------- the model
def test_sampling_before_the_prior_stage_draws_uniform_codes_at_both_levels() -> None:
    """Untrained priors are uniform: the top codes are ``floor(K u)`` and the bottom codes ``floor(K_b u)``
    for the generator's next uniform numbers (normal draws through the normal CDF), top first."""
    model = tiny_vq2()
    n = 500
    z = model.sample_prior(n, torch.Generator().manual_seed(3))
    mask = model.atom_mask(torch.full((n,), 3))
    z = model.complete_latent(z, mask, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    top_u = torch.special.ndtr(torch.randn((n, 2), generator=g).double())
    assert torch.equal(z.top_codes, (top_u * 8).floor().long())
    g = torch.Generator().manual_seed(3)  # complete_latent was handed a fresh generator of the same seed
    bottom_u = torch.special.ndtr(torch.randn((n, MAX_ATOMS), generator=g).double())
    assert torch.equal(z.bottom_codes, (bottom_u * 8).floor().long())


def test_trained_priors_sample_valid_codes_at_both_levels_reproducibly() -> None:
    model = tiny_vq2().train()
    batch = random_batch()
    model.set_stage("prior")
    optimiser = model.configure_optimizers()
    for _ in range(20):
        loss = model.loss(batch)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    n = 64
    z = model.sample_prior(n, torch.Generator().manual_seed(0))
    stats = model.decode_stats(z)
    mask = model.atom_mask(stats["num_atoms"].argmax(dim=-1) + 1)
    z = model.complete_latent(z, mask, torch.Generator().manual_seed(1))
    top, bottom = model.latent.top, model.latent.bottom
    assert z.top_codes.shape == (n, 2) and z.bottom_codes.shape == (n, MAX_ATOMS)
    assert z.top_codes.dtype == torch.long and z.bottom_codes.dtype == torch.long
    assert int(z.top_codes.min()) >= 0 and int(z.top_codes.max()) < top.num_codes
    assert int(z.bottom_codes.min()) >= 0 and int(z.bottom_codes.max()) < bottom.num_codes
    assert torch.equal(z.top, top.codebook[z.top_codes].reshape(n, -1))
    assert torch.equal(z.bottom, bottom.codebook[z.bottom_codes] * mask.unsqueeze(-1))
    first = model.sample(5, generator=torch.Generator().manual_seed(9))
    again = model.sample(5, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first["atom_types"].shape == (5, MAX_ATOMS, NUM_TYPES)


def test_the_priors_train_only_in_the_prior_stage_after_the_autoencoder() -> None:
    model = tiny_vq2().train()
    assert model.training_stages == ("autoencoder", "prior")
    prior = {id(p) for m in (model.latent.top.code_prior, model.latent.bottom_prior) for p in m.parameters()}
    assert {id(p) for p in model.stage_parameters("prior")} == prior
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for p in model.stage_parameters("autoencoder")} == everything - prior
    batch = random_batch()

    model.set_stage("autoencoder")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = model.configure_optimizers()
    for _ in range(3):
        out = model.loss(batch)
        assert not {"top_prior_ce", "bottom_prior_ce"} & set(out)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
    after = model.state_dict()
    priors = ("latent.top.code_prior.", "latent.bottom_prior.")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(priors))
    assert not torch.equal(before["encoder.types_out.weight"], after["encoder.types_out.weight"])

    model.set_stage("prior")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = model.configure_optimizers()
    losses = []
    for _ in range(30):
        out = model.loss(batch)
        assert set(out) == {"loss", "top_prior_ce", "bottom_prior_ce"}
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append({k: float(v.detach()) for k, v in out.items()})
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith(priors[0]) for k in moved) and any(k.startswith(priors[1]) for k in moved)
    assert all(k.startswith(priors) for k in moved), moved
    for key in ("top_prior_ce", "bottom_prior_ce"):
        assert losses[0][key] == pytest.approx(math.log(8), abs=1e-6)  # uniform before this stage
        assert losses[-1][key] < losses[0][key] - 0.1, key  # three crystals' codes: each prior learns them


def test_one_stage_training_adds_both_levels_and_both_priors_to_cdvaes_loss() -> None:
    model = tiny_vq2(commitment=0.25)
    out = model.loss(random_batch())
    heads = (out["atom_types_mse"] + out["frac_coords_mse"] + 10.0 * out["lattice_mse"] + out["num_atoms_ce"]
             + out["composition_ce"])
    vq = 0.25 * (out["top_vq_commitment"] + out["bottom_vq_commitment"])
    torch.testing.assert_close(out["loss"], heads + vq + out["top_prior_ce"] + out["bottom_prior_ce"])


def test_training_in_two_stages_end_to_end(tmp_path: Path) -> None:
    """``bench.train.train`` of the tiny config: the autoencoder stage leaves both priors uniform (zero output
    layers); the prior stage moves both priors and nothing else; the trained run samples."""
    from bench.config import compose
    from bench.sample import sample
    from bench.train import train

    own = list(compose_model("vq_vae2").test_overrides)
    cfg = compose([
        "dataset=tiny", "logger=none", "trainer.enable_progress_bar=false", "train.batch_size=8",
        "sample.num_samples=4", "sample.batch_size=4", "record.regenerate_board=false",
        "metrics.names=[struct_valid]", "model=vq_vae2", *own, "trainer.max_steps=8",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}",
    ])
    summary = train(cfg)
    assert [(s["name"], s["max_steps"], s["steps"]) for s in summary["stages"]] == [
        ("autoencoder", 6, 6), ("prior", 2, 2)]

    def weights(path: str | Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    first = weights(summary["stages"][0]["checkpoint"])
    final = weights(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt")
    priors = ("latent.top.code_prior.", "latent.bottom_prior.")
    for name in priors:
        untrained = first[f"{name}out.weight"]
        assert torch.equal(untrained, torch.zeros_like(untrained)), name
        assert any(not torch.equal(first[k], final[k]) for k in first if k.startswith(name)), name
    assert all(torch.equal(first[k], final[k]) for k in first if not k.startswith(priors))
    drawn = sample(cfg)
    assert drawn["num_samples"] == 4 and Path(drawn["path"]).is_file()


# ------------------------------------------------------------------------------------------- reconstruction
def test_the_decoder_reconstructs_from_both_levels_what_the_top_alone_cannot_carry() -> None:
    """64 crystals of four atoms on fixed sites, each atom's element drawn from four: 8 bits of types per
    crystal. A top level of one code from two carries 1 bit, so from the top alone (vq_vae with that top,
    trained the same) per-atom accuracy stays near the 1/4 of guessing; the bottom level (a code from 8 per
    atom, 3 bits) can carry every element. Reconstruction: the encoded codes, then the sampler from noise on
    the true lattice."""
    k, n, size = 4, 4, 64
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(1, k + 1, (size, n), generator=g)
    sites = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    batch = {"atom_types": torch.nn.functional.one_hot(classes, k + 1).float(),
             "frac_coords": sites.expand(size, n, 3).clone(), "lattice": torch.zeros(size, 6),
             "mask": torch.ones(size, n)}
    top = {"groups": 1, "code_dim": 4, "codes": 2, "prior_width": 8, "prior_heads": 2, "prior_layers": 1}

    def common() -> dict[str, object]:
        return {"backbone": functools.partial(PeriodicMPNN, width=32, n_layers=2, num_frequencies=2),
                "optimizer": functools.partial(torch.optim.Adam, lr=3e-3), "num_types": k + 1, "max_atoms": n,
                "processes": {"atom_types": VPGaussian(timesteps=20, clip=1.0),
                              "frac_coords": WrappedNormalVE(timesteps=20)},
                "sampler": PredictorCorrectorSampler(steps=4), "hidden_dim": 16, "time_dim": 16, "beta": 0.0}

    torch.manual_seed(0)
    bottom = {"bottom_code_dim": 4, "bottom_codes": 8, "atom_features": 16}
    both = CrystalVQVAE2(latent=functools.partial(HierarchicalVQLatent, **top, **bottom), **common())
    torch.manual_seed(0)
    alone = CrystalCDVAE(latent=VQLatent(**top), **common())

    def accuracy(model: CrystalCDVAE) -> float:
        model.fit_data(batch)
        model.train().set_stage("autoencoder")
        optimiser = model.configure_optimizers()
        for _ in range(150):
            loss = model.loss(batch)["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            x0, mask = model.data_fields(batch)
            z, _ = model.latent.posterior(model.latent_inputs(x0, mask))
            generator = torch.Generator().manual_seed(1)
            shapes = {f: tuple(x0[f].shape) for f in ATOM_FIELDS}
            x = model.draw_prior(model.processes, shapes, mask, generator)

            def noise() -> dict[str, torch.Tensor]:
                return {f: model._randn(shapes[f], generator) for f in sorted(shapes)}

            def predictor(x_t: dict[str, torch.Tensor], t: torch.Tensor) -> dict[str, torch.Tensor]:
                return model.predict({**x_t, "lattice": x0["lattice"]}, t, z, mask)

            out = model.sampler(predictor, model.processes, x, model.timesteps, noise)
        return float((out["atom_types"].argmax(-1) + 1 == classes).float().mean())

    from_both, from_top = accuracy(both), accuracy(alone)
    assert from_both > 0.95, (from_both, from_top)
    assert from_top < 0.45, (from_both, from_top)


# ---------------------------------------------------------------------------------------------- the config
def test_the_config_is_vq_vae_with_a_bottom_level_and_the_same_stages() -> None:
    vq, vq2 = compose_model("vq_vae"), compose_model("vq_vae2")
    assert vq2.module._target_ == "bench.models.vae.vq_vae2.CrystalVQVAE2"
    assert OmegaConf.to_container(vq2.stages) == OmegaConf.to_container(vq.stages)
    assert vq2.family == vq.family == "vae" and vq2.paper.startswith("Razavi")
    own, base = OmegaConf.to_container(vq2.module), OmegaConf.to_container(vq.module)
    differs = {k for k in own if k != "latent" and own[k] != base.get(k)}
    assert differs == {"_target_"}  # everything else is vq_vae's (cdvae's heads, denoiser, sampler, weights)
    latent, base_latent = own["latent"], base["latent"]
    shared = {k for k in base_latent if k != "_target_"}
    assert {k for k in shared if latent[k] != base_latent[k]} == {"groups"}
    assert latent["groups"] < base_latent["groups"]  # the coarse level has fewer positions than vq_vae's
    assert latent["_partial_"] is True
    assert set(latent) - set(base_latent) == {"_partial_", "bottom_code_dim", "bottom_codes", "atom_features"}
