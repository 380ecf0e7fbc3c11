"""WGAN-GP on the periodic core (``model=wgan_gp_mpnn``) on inputs with known answers: the critic's
invariances, the generator's output ranges and equivariance, the atom-count distribution, the penalty."""

from __future__ import annotations

import functools

import pytest
import torch
from bench.models.backbones.periodic import PeriodicMPNN
from bench.models.base import periodic_difference
from bench.models.gan.periodic import CrystalPeriodicWGANGP, PeriodicGenerator, wrap
from torch import nn

from tests import test_models
from tests.test_models import build, tiny_config

# The model tests' module-scoped fixtures, shared by name (a test's parameter of the same name receives them).
codec = test_models.codec
batch = test_models.batch


@pytest.fixture
def model(codec) -> CrystalPeriodicWGANGP:  # noqa: ANN001
    torch.manual_seed(0)
    built = build(tiny_config("wgan_gp_mpnn"), codec)
    assert isinstance(built, CrystalPeriodicWGANGP)
    return built.eval()


def _crystals(model: CrystalPeriodicWGANGP, size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random critic inputs: continuous one-hot types, coordinates, lattice, a mask with 3..N atoms."""
    g = torch.Generator().manual_seed(seed)
    k, n = model.num_types - 1, model.max_atoms
    counts = torch.randint(3, n + 1, (size,), generator=g)
    mask = (torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)).float()
    types = 2.0 * nn.functional.one_hot(torch.randint(0, k, (size, n), generator=g), k).float() - 1.0
    return {
        "atom_types": types * mask.unsqueeze(-1),
        "frac_coords": torch.rand(size, n, 3, generator=g) * mask.unsqueeze(-1),
        "lattice": torch.randn(size, 6, generator=g),
        "mask": mask,
    }


def test_critic_score_is_invariant_to_permutation_translation_lattice_shift_and_padding(
    model: CrystalPeriodicWGANGP,
) -> None:
    x = _crystals(model)
    score = model.score(x)
    assert score.shape == (4,)

    # Permuting the atoms of each crystal (within its filled slots; the mask moves with them).
    perm = torch.stack([torch.cat([torch.randperm(int(c)), torch.arange(int(c), model.max_atoms)])
                        for c in x["mask"].sum(1)])
    rows = torch.arange(4).unsqueeze(1)
    permuted = {k: (v[rows, perm] if k != "lattice" else v) for k, v in x.items()}
    torch.testing.assert_close(model.score(permuted), score, atol=1e-5, rtol=1e-4)

    # The same global shift of every fractional coordinate, wrapped back into the cell.
    shift = torch.tensor([0.37, -0.81, 0.5])
    shifted = {**x, "frac_coords": wrap(x["frac_coords"] + shift) * x["mask"].unsqueeze(-1)}
    torch.testing.assert_close(model.score(shifted), score, atol=1e-5, rtol=1e-4)

    # One atom moved by a lattice vector.
    moved = {**x, "frac_coords": x["frac_coords"].clone()}
    moved["frac_coords"][2, 1] += torch.tensor([1.0, -3.0, 2.0])
    torch.testing.assert_close(model.score(moved), score, atol=1e-4, rtol=1e-4)

    # Whatever sits in the empty slots.
    padded = {k: v.clone() for k, v in x.items()}
    empty = padded["mask"] == 0
    padded["frac_coords"][empty] = 0.77
    padded["atom_types"][empty] = 1.0
    torch.testing.assert_close(model.score(padded), score)

    # ... while the score does read the structure.
    other = {**x, "frac_coords": torch.rand_like(x["frac_coords"]) * x["mask"].unsqueeze(-1)}
    assert not torch.allclose(model.score(other), score)


def test_generated_fields_have_the_ranges_of_real_data(model: CrystalPeriodicWGANGP, batch) -> None:  # noqa: ANN001
    model.fit_data(batch)
    g = torch.Generator().manual_seed(0)
    out = model.generate(model._noise(64, g))
    m = out["mask"].unsqueeze(-1)
    frac = out["frac_coords"]
    assert torch.all(frac >= 0) and torch.all(frac < 1) and torch.all(frac[out["mask"] == 0] == 0)
    types = out["atom_types"]
    k = model.num_types - 1
    # 2 p - 1 per atom: in [-1, 1] with the sum 2 - K of a real continuous one-hot; empty slots zero.
    assert torch.all(types >= -1) and torch.all(types <= 1)
    sums = types.sum(-1)
    torch.testing.assert_close(sums[out["mask"] > 0], torch.full_like(sums[out["mask"] > 0], 2.0 - k))
    assert torch.all(types * (1 - m) == 0)
    # Saturated logits give exactly the real encoding.
    logits = torch.full((1, 1, k), -1.0e4)
    logits[..., 1] = 1.0e4
    expected = -torch.ones(k)
    expected[1] = 1.0
    torch.testing.assert_close(model.generator.types(logits).flatten(), expected)

    sampled = model.sample(64, generator=torch.Generator().manual_seed(1))
    assert torch.all(sampled["frac_coords"] >= 0) and torch.all(sampled["frac_coords"] < 1)


def test_wrap_stays_below_one() -> None:
    x = torch.tensor([-1.0e-9, -0.25, 1.0, 2.5, 0.999])
    wrapped = wrap(x)
    assert torch.all(wrapped >= 0) and torch.all(wrapped < 1)
    torch.testing.assert_close(wrapped[1:], torch.tensor([0.75, 0.0, 0.5, 0.999]))


def test_atom_counts_follow_the_fitted_distribution(model: CrystalPeriodicWGANGP) -> None:
    n = model.max_atoms
    counts = torch.tensor([2] * 25 + [3] * 75)
    fitted = {"mask": (torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)).float()}
    model.fit_data(fitted)
    expected = torch.zeros(n + 1)
    expected[2], expected[3] = 25, 75
    assert torch.equal(model.atom_counts, expected)
    sampled = model.sample(4000, generator=torch.Generator().manual_seed(0))
    drawn = torch.bincount(sampled["mask"].sum(1).long(), minlength=n + 1).float() / 4000
    assert set(torch.nonzero(drawn).flatten().tolist()) == {2, 3}
    assert float(drawn[3]) == pytest.approx(0.75, abs=0.03)  # 4,000 draws: sd 0.007


def test_critic_step_pairs_generated_atom_counts_with_the_real_batch(
    model: CrystalPeriodicWGANGP, batch,  # noqa: ANN001
) -> None:
    model.fit_data(batch)
    real = model.real_fields(batch)
    torch.testing.assert_close(real["atom_types"].sum(-1)[real["mask"] > 0],
                               torch.full_like(real["mask"][real["mask"] > 0], 3.0 - model.num_types))
    fake = model.fake_like(real)
    assert torch.equal(fake["mask"], real["mask"])
    with pytest.raises(ValueError, match="same atom mask"):
        model.gradient_penalty(real, {**fake, "mask": torch.zeros_like(fake["mask"])})


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic(model: CrystalPeriodicWGANGP) -> None:
    real, fake = _crystals(model, seed=0), _crystals(model, seed=1)
    fake["mask"] = real["mask"]
    width = sum(real[k][0].numel() for k in ("atom_types", "frac_coords", "lattice"))
    w = torch.randn(width, generator=torch.Generator().manual_seed(2))
    w = w / w.norm()

    class Linear(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, fields: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
            flat = torch.cat([fields[k].flatten(1) for k in ("atom_types", "frac_coords", "lattice")], 1)
            return self.scale * flat @ w

    model.penalty_metric = dict.fromkeys(model.penalty_metric, 1.0)  # the paper's Euclidean norm
    model.critic = Linear(1.0)
    assert float(model.gradient_penalty(real, fake)) == pytest.approx(0.0, abs=1e-10)
    model.critic = Linear(3.0)
    assert float(model.gradient_penalty(real, fake)) == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2


def test_penalty_metric_allows_steeper_slopes_along_stretched_fields(model: CrystalPeriodicWGANGP) -> None:
    """A critic with slope 4 along the coordinates alone has gradient norm 1 in a metric that stretches the
    coordinates by 4, and 4 in the Euclidean one."""
    real, fake = _crystals(model, seed=0), _crystals(model, seed=1)
    fake["mask"] = real["mask"]
    w = torch.randn(model.max_atoms * 3, generator=torch.Generator().manual_seed(3))
    w = 4.0 * w / w.norm()

    class Coordinates(nn.Module):
        def forward(self, fields: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
            # The other fields enter with zero weight, so autograd finds them in the graph.
            unused = fields["atom_types"].sum((1, 2)) + fields["lattice"].sum(1)
            return fields["frac_coords"].flatten(1) @ w + 0.0 * unused

    model.critic = Coordinates()
    model.penalty_metric = {"atom_types": 1.0, "frac_coords": 4.0, "lattice": 1.0}
    assert float(model.gradient_penalty(real, fake)) == pytest.approx(0.0, abs=1e-8)
    model.penalty_metric = dict.fromkeys(model.penalty_metric, 1.0)
    assert float(model.gradient_penalty(real, fake)) == pytest.approx(9.0, rel=1e-5)  # (4 - 1)^2


def _generator_and_noise(
    size: int = 2, n: int = 6, template: bool = False, passes: int = 2, pull_dim: int = 2
) -> tuple[PeriodicGenerator, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    backbone = functools.partial(PeriodicMPNN, width=16, n_layers=1, num_frequencies=2)
    gen = PeriodicGenerator(backbone, type_dim=4, noise_dim=3, passes=passes, pull_dim=pull_dim, max_atoms=n,
                            rank_inputs=True, rank_scale=5.0, template=template, template_scale=4.0).eval()
    if template:  # zero-initialised coordinate heads: give them weights so the test sees them too
        for net in gen.passes:
            torch.nn.init.normal_(net.frac_out.weight, std=0.3)
    g = torch.Generator().manual_seed(0)
    noise = {
        "mask": torch.ones(size, n),
        "global": torch.randn(size, 3, generator=g),
        "atom_types": torch.randn(size, n, gen.atom_dim, generator=g),
        "frac_coords": torch.rand(size, n, 3, generator=g),
        "lattice": torch.randn(size, 6, generator=g),
    }
    return gen, noise


@pytest.mark.parametrize("template", [False, True])
def test_generator_is_permutation_and_translation_equivariant(template: bool) -> None:
    gen, noise = _generator_and_noise(template=template)
    out = gen(noise)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    per_atom = ("atom_types", "frac_coords", "mask")
    permuted = {k: (v[:, perm] if k in per_atom else v) for k, v in noise.items()}
    out_p = gen(permuted)
    for key in ("atom_types", "frac_coords", "logits"):
        torch.testing.assert_close(out_p[key], out[key][:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p["lattice"], out["lattice"], atol=1e-5, rtol=1e-4)

    # Shifting every starting coordinate shifts every generated coordinate (mod 1) and changes nothing else.
    shift = torch.tensor([0.3, -0.45, 0.8])
    out_s = gen({**noise, "frac_coords": wrap(noise["frac_coords"] + shift)})
    moved = periodic_difference(out_s["frac_coords"], wrap(out["frac_coords"] + shift))
    torch.testing.assert_close(moved, torch.zeros_like(moved), atol=1e-4, rtol=0)
    for key in ("atom_types", "lattice"):
        torch.testing.assert_close(out_s[key], out[key], atol=1e-4, rtol=1e-4)


def test_template_starts_every_crystal_at_the_same_arrangement() -> None:
    """With the coordinate heads at zero, atom ``i`` sits at ``start + template[rank_i]``: relative positions
    are the template's, whatever the noise."""
    gen, noise = _generator_and_noise(template=True, passes=1, pull_dim=0)
    for net in gen.passes:
        torch.nn.init.zeros_(net.frac_out.weight)
        torch.nn.init.zeros_(net.frac_out.bias)
    noise["frac_coords"] = noise["frac_coords"][:, :1].expand_as(noise["frac_coords"]).contiguous()
    out = gen(noise)
    rank = noise["atom_types"][..., 0].argsort(1).argsort(1)
    expected = wrap(noise["frac_coords"] + gen.template_scale * gen.template[rank])
    moved = periodic_difference(out["frac_coords"], expected)
    torch.testing.assert_close(moved, torch.zeros_like(moved), atol=1e-5, rtol=0)


def test_shared_start_draws_one_point_per_crystal(model: CrystalPeriodicWGANGP, batch) -> None:  # noqa: ANN001
    model.fit_data(batch)
    noise = model._noise(16, torch.Generator().manual_seed(0))
    start = noise["frac_coords"]
    assert model.shared_start and torch.equal(start, start[:, :1].expand_as(start))
    assert noise["atom_types"].shape == (16, model.max_atoms, model.atom_noise_dim)


def test_ranks_are_one_hot_ranks_within_each_crystal() -> None:
    keys = torch.tensor([[0.3, -1.0, 2.0, 0.0], [5.0, 4.0, 9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    ranks = PeriodicGenerator.ranks(keys, mask)
    assert ranks.argmax(-1)[0].tolist() == [2, 0, 3, 1]
    assert ranks.argmax(-1)[1, :2].tolist() == [1, 0] and torch.all(ranks[1, 2:] == 0)


def test_pull_moves_every_atom_onto_the_attended_one() -> None:
    gen, _ = _generator_and_noise()
    frac = torch.tensor([[[0.1, 0.2, 0.3], [0.9, 0.5, 0.05], [0.4, 0.95, 0.6]]])
    mask = torch.ones(1, 3)
    query = torch.full((1, 3, 2), 10.0)
    key = torch.tensor([[[10.0, 10.0], [-10.0, -10.0], [-10.0, -10.0]]])  # every atom attends to atom 0
    moved = wrap(frac + gen.pull(frac, torch.cat([query, key], -1), mask))
    torch.testing.assert_close(moved, frac[:, :1].expand(-1, 3, -1), atol=1e-5, rtol=0)
    # An empty slot is never attended to.
    mask[0, 0] = 0.0
    pulled = gen.pull(frac, torch.cat([query, key], -1), mask)
    assert torch.all(pulled.abs() <= 0.5)
    torch.testing.assert_close(pulled[0, 1] + pulled[0, 2], torch.zeros(3), atol=1e-5, rtol=0)


def test_backbone_readout_options_leave_its_default_outputs_alone() -> None:
    torch.manual_seed(0)
    net = PeriodicMPNN(type_dim=4, width=16, n_layers=1, num_frequencies=2).eval()
    names = [name for name, _ in net.named_parameters()]
    assert any(name.startswith("types_out.") for name in names)
    x = {"atom_types": torch.randn(2, 5, 4), "frac_coords": torch.rand(2, 5, 3), "lattice": torch.randn(2, 6)}
    mask = torch.ones(2, 5)
    mask[0, 3:] = 0
    out = net(x, mask)
    assert list(out) == ["atom_types", "frac_coords", "lattice"]
    with_pooled = net(x, mask, return_pooled=True)
    for key in out:
        assert torch.equal(with_pooled[key], out[key])
    assert with_pooled["pooled"].shape == (2, 16)
    torch.testing.assert_close(net.lattice_out(with_pooled["pooled"]), out["lattice"])

    headless = PeriodicMPNN(type_dim=4, width=16, n_layers=1, num_frequencies=2, atom_heads=False)
    assert not any(n.startswith(("types_out.", "frac_out.")) for n, _ in headless.named_parameters())
    assert list(headless(x, mask, return_pooled=True)) == ["lattice", "pooled"]
