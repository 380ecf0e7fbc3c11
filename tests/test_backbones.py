"""Invariances of the periodic message-passing backbone, on random crystals where the answer is known
exactly."""

from __future__ import annotations

import pytest
import torch
from bench.models.backbones import PeriodicMPNN, fourier_features


def _crystals(
    size: int = 3, n: int = 6, types: int = 4, seed: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "atom_types": torch.randn(size, n, types, generator=g),
        "frac_coords": torch.rand(size, n, 3, generator=g),
        "lattice": torch.randn(size, 6, generator=g),
    }
    mask = torch.ones(size, n)
    mask[0, 4:] = 0.0  # a crystal with 4 atoms in 6 slots
    return batch, mask


@pytest.fixture(scope="module")
def net() -> PeriodicMPNN:
    torch.manual_seed(0)
    return PeriodicMPNN(type_dim=4, cond_dim=5, width=32, n_layers=2, num_frequencies=3).eval()


def _run(net: PeriodicMPNN, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    cond = torch.linspace(-1, 1, 5 * mask.shape[0]).view(mask.shape[0], 5)
    return net(batch, mask, cond=cond)


def test_fourier_features_are_periodic() -> None:
    delta = torch.rand(10, 3)
    torch.testing.assert_close(fourier_features(delta + 3.0, 4), fourier_features(delta, 4),
                               atol=1e-5, rtol=0)
    assert fourier_features(delta, 4).shape == (10, 24)


def test_global_translation_changes_nothing(net: PeriodicMPNN) -> None:
    batch, mask = _crystals()
    shifted = {
        **batch, "frac_coords": torch.remainder(batch["frac_coords"] + torch.tensor([0.31, -0.7, 0.05]), 1.0)
    }
    out, out_s = _run(net, batch, mask), _run(net, shifted, mask)
    for key in out:
        torch.testing.assert_close(out_s[key], out[key], atol=1e-5, rtol=1e-4)


def test_lattice_vector_on_one_atom_changes_nothing(net: PeriodicMPNN) -> None:
    batch, mask = _crystals()
    moved = {**batch, "frac_coords": batch["frac_coords"].clone()}
    moved["frac_coords"][1, 2] += torch.tensor([1.0, -2.0, 3.0])
    out, out_m = _run(net, batch, mask), _run(net, moved, mask)
    for key in out:
        torch.testing.assert_close(out_m[key], out[key], atol=1e-4, rtol=1e-4)


def test_permuting_atoms_permutes_outputs(net: PeriodicMPNN) -> None:
    batch, mask = _crystals()
    mask = torch.ones_like(mask)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = {k: (v[:, perm] if v.dim() == 3 else v) for k, v in batch.items()}
    out, out_p = _run(net, batch, mask), _run(net, permuted, mask)
    for key in ("atom_types", "frac_coords"):
        torch.testing.assert_close(out_p[key], out[key][:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p["lattice"], out["lattice"], atol=1e-5, rtol=1e-4)


def test_empty_slots_are_ignored_and_zero(net: PeriodicMPNN) -> None:
    batch, mask = _crystals()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["frac_coords"][0, 4:] = torch.rand(2, 3)
    changed["atom_types"][0, 4:] = 9.0
    out, out_c = _run(net, batch, mask), _run(net, changed, mask)
    for key in out:
        torch.testing.assert_close(out_c[key], out[key])
    assert torch.all(out["frac_coords"][0, 4:] == 0) and torch.all(out["atom_types"][0, 4:] == 0)


def test_outputs_depend_on_geometry(net: PeriodicMPNN) -> None:
    """Not a constant map: moving one atom relative to the others changes the outputs."""
    batch, mask = _crystals()
    moved = {**batch, "frac_coords": batch["frac_coords"].clone()}
    moved["frac_coords"][1, 2] += 0.2
    assert not torch.allclose(_run(net, moved, mask)["frac_coords"], _run(net, batch, mask)["frac_coords"])


def test_conditioning_is_required_when_configured(net: PeriodicMPNN) -> None:
    batch, mask = _crystals()
    with pytest.raises(ValueError, match="cond_dim=5"):
        net(batch, mask)
