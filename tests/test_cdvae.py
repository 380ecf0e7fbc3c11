"""What makes the ``cdvae`` variant itself, on inputs with a known answer: its KL term, the symmetries of its
encoder, the lattice held fixed by its sampler and the atom count read from the latent."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.diffusion.diffcsp import PredictorCorrectorSampler
from bench.models.diffusion.processes import VPGaussian, WrappedNormalVE
from bench.models.vae.cdvae import CrystalCDVAE, gaussian_kl

NUM_TYPES = 5  # K + 1: four elements and the empty slot
MAX_ATOMS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(**overrides: object) -> CrystalCDVAE:
    torch.manual_seed(0)
    kwargs: dict[str, object] = {
        "backbone": functools.partial(PeriodicMPNN, width=16, n_layers=2, num_frequencies=2),
        "optimizer": functools.partial(torch.optim.Adam, lr=1e-3),
        "num_types": NUM_TYPES,
        "max_atoms": MAX_ATOMS,
        "processes": {
            "atom_types": VPGaussian(timesteps=20, clip=1.0),
            "frac_coords": WrappedNormalVE(timesteps=20),
        },
        "sampler": PredictorCorrectorSampler(steps=4),
        "latent_dim": 4,
        "hidden_dim": 8,
        "time_dim": 8,
    }
    kwargs.update(overrides)
    return CrystalCDVAE(**kwargs).eval()


def random_batch(size: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Crystals of 2..MAX_ATOMS-1 atoms in the codec's layout (class 0 in empty slots)."""
    g = torch.Generator().manual_seed(seed)
    n_atoms = torch.tensor([2, 4, 5])[:size]
    mask = (torch.arange(MAX_ATOMS).unsqueeze(0) < n_atoms.unsqueeze(1)).float()
    classes = torch.randint(1, NUM_TYPES, (size, MAX_ATOMS), generator=g) * mask.long()
    return {
        "atom_types": torch.nn.functional.one_hot(classes, NUM_TYPES).float(),
        "frac_coords": torch.rand(size, MAX_ATOMS, 3, generator=g) * mask.unsqueeze(-1),
        "lattice": torch.randn(size, 6, generator=g),
        "mask": mask,
    }


def posterior(model: CrystalCDVAE, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x0, mask = model.data_fields(batch)
    with torch.no_grad():
        return model.encode(x0, mask)


def test_kl_matches_the_closed_form() -> None:
    """``KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2`` per dimension, summed."""
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # Row 0: 1/2 + (2 - 1 - log 2)/2 = 1 - log(2)/2; row 1 (the prior itself): 0. Mean over the batch.
    expected = (1.0 - math.log(2.0) / 2.0) / 2.0
    assert float(gaussian_kl(mu, logvar)) == pytest.approx(expected, rel=1e-6)
    assert float(gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5))) == 0.0
    model = make_model(beta=0.25)
    penalty, terms = model.regulariser(mu, logvar)
    assert float(penalty) == pytest.approx(0.25 * expected, rel=1e-6)
    assert float(terms["kl"]) == pytest.approx(expected, rel=1e-6)


def test_encoder_is_invariant_to_permutation_translation_and_cell_shifts() -> None:
    model = make_model()
    batch = random_batch()
    mu, logvar = posterior(model, batch)

    perm = torch.tensor([3, 0, 5, 1, 4, 2])  # mixes atoms and empty slots
    permuted = {k: v[:, perm] if v.dim() >= 2 and k != "lattice" else v for k, v in batch.items()}
    for got, want in zip(posterior(model, permuted), (mu, logvar), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    shift = torch.tensor([0.31, -0.27, 0.8])
    moved = dict(batch)
    moved["frac_coords"] = torch.remainder(batch["frac_coords"] + shift, 1.0) * batch["mask"].unsqueeze(-1)
    for got, want in zip(posterior(model, moved), (mu, logvar), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    imaged = dict(batch)
    imaged["frac_coords"] = batch["frac_coords"].clone()
    imaged["frac_coords"][:, 0] += torch.tensor([1.0, -2.0, 3.0])  # atom 0 to another cell
    for got, want in zip(posterior(model, imaged), (mu, logvar), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # The encoder reads the crystal: a different lattice moves the posterior.
    other = {**batch, "lattice": batch["lattice"] + 1.0}
    assert not torch.allclose(posterior(model, other)[0], mu)


def test_loss_is_the_weighted_sum_of_its_terms_and_beta_zero_drops_the_kl() -> None:
    batch = random_batch()
    weights = {"type_weight": 1.5, "frac_weight": 0.5, "lattice_weight": 10.0, "num_atoms_weight": 2.0,
               "composition_weight": 3.0}
    for beta in (0.0, 0.5):
        model = make_model(beta=beta, **weights)
        torch.manual_seed(1)
        out = model.loss(batch)
        heads = (
            weights["type_weight"] * out["atom_types_mse"]
            + weights["frac_weight"] * out["frac_coords_mse"]
            + weights["lattice_weight"] * out["lattice_mse"]
            + weights["num_atoms_weight"] * out["num_atoms_ce"]
            + weights["composition_weight"] * out["composition_ce"]
        )
        assert float(out["kl"].detach()) > 0
        torch.testing.assert_close(out["loss"], heads + beta * out["kl"])


def test_atom_count_and_composition_targets() -> None:
    """With heads that always say the truth's class, the cross-entropies reach their minima: 0 for the
    atom count, the composition's entropy for the composition."""
    batch = random_batch(size=1)  # 2 atoms
    model = make_model()
    classes = batch["atom_types"][0, :2].argmax(-1) - 1  # element indices of the two atoms
    with torch.no_grad():
        for head in (model.num_atoms_head, model.composition_head):
            head[-1].weight.zero_()
            head[-1].bias.fill_(-1.0e4)
        model.num_atoms_head[-1].bias[1] = 0.0  # 2 atoms
        model.composition_head[-1].bias[classes] = 0.0
    out = model.loss(batch)
    assert float(out["num_atoms_ce"]) == pytest.approx(0.0, abs=1e-6)
    entropy = 0.0 if classes[0] == classes[1] else math.log(2.0)
    assert float(out["composition_ce"]) == pytest.approx(entropy, abs=1e-5)


def test_sampler_holds_the_predicted_lattice_and_atom_count() -> None:
    """Heads fixed to a known atom count and lattice: every sample has that many atoms, that lattice, and the
    decoder saw that lattice at every one of its NFE evaluations."""
    model = make_model()
    lattice = torch.tensor([0.1, -0.2, 0.3, 0.5, -0.5, 1.0])
    with torch.no_grad():
        model.lattice_head[-1].weight.zero_()
        model.lattice_head[-1].bias.copy_(lattice)
        model.num_atoms_head[-1].weight.zero_()
        model.num_atoms_head[-1].bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 0.0]))  # 3 atoms
    seen: list[torch.Tensor] = []
    forward = model.net.forward

    def spy(batch: dict[str, torch.Tensor], mask: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
        seen.append(batch["lattice"].clone())
        return forward(batch, mask, cond=cond)

    model.net.forward = spy
    out = model.sample(7, generator=torch.Generator().manual_seed(3))
    assert len(seen) == model.nfe == 8  # 4 steps, corrector and predictor
    for fed in seen:
        torch.testing.assert_close(fed, lattice.expand(7, 6), rtol=0, atol=0)
    torch.testing.assert_close(out["lattice"], lattice.expand(7, 6), rtol=0, atol=0)
    assert torch.equal(out["mask"].sum(1), torch.full((7,), 3.0))
    assert torch.all(out["atom_types"][:, :3, 0] == 0)


def test_samples_have_the_atom_count_of_their_latent() -> None:
    """The atom count of each sample is the argmax of the head on the latent drawn first from the
    generator."""
    model = make_model()
    with torch.no_grad():  # spread the head's decisions over the counts
        model.num_atoms_head[-1].weight.mul_(50.0)
    n = 32
    z = torch.randn((n, model.latent_dim), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model.num_atoms_head(z).argmax(-1) + 1
    out = model.sample(n, generator=torch.Generator().manual_seed(11))
    assert torch.equal(out["mask"].sum(1).long(), expected)
    assert len(set(expected.tolist())) > 1


def test_training_feeds_the_true_lattice_to_the_decoder() -> None:
    model = make_model()
    batch = random_batch()
    seen: list[torch.Tensor] = []
    forward = model.net.forward

    def spy(fields: dict[str, torch.Tensor], mask: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
        seen.append(fields["lattice"])
        return forward(fields, mask, cond=cond)

    model.net.forward = spy
    model.loss(batch)
    assert len(seen) == 1 and torch.equal(seen[0], batch["lattice"])


def test_processes_must_be_exactly_the_atom_fields() -> None:
    with pytest.raises(ValueError, match="does not diffuse"):
        make_model(processes={
            "atom_types": VPGaussian(timesteps=20),
            "frac_coords": WrappedNormalVE(timesteps=20),
            "lattice": VPGaussian(timesteps=20),
        })
    with pytest.raises(ValueError, match="same timesteps"):
        make_model(processes={
            "atom_types": VPGaussian(timesteps=20), "frac_coords": WrappedNormalVE(timesteps=30),
        })


def test_nfe_counts_decoder_calls_and_composition_head_is_optional() -> None:
    assert make_model().nfe == 8
    assert make_model(sampler=PredictorCorrectorSampler(steps=4, step_lr=0.0)).nfe == 4
    model = make_model(composition_weight=0.0)
    assert model.composition_head is None
    assert "composition_ce" not in model.loss(random_batch())
