"""The crystal-matrix representation (FTCP-style) on inputs with an independently known answer.

- real Perov-5 and Carbon-24 crystals survive encode -> decode (same composition, StructureMatcher match, and
  exactly the crystal codec's own round trip, whose only loss is float32 storage of the standardised lattice
  and coordinates);
- a hand-written crystal encodes to the matrix the layout states, and a hand-written real matrix (soft
  one-hots, occupancies either side of 0.5, coordinates outside [0, 1), junk in the unused entries) decodes
  to the structure written down;
- malformed matrices become decode failures with their reason (and species where known); a batch of the
  wrong shape is refused;
- the fitted state reloads through the saved class path, and the codec's condition channel passes through.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bench.datasets import tiny_structures
from bench.datasets.codec import CrystalCodec
from bench.datasets.crystal_matrix import CrystalMatrix, CrystalMatrixLayout
from bench.datasets.representation import (
    CLASS_KEY,
    DecodeFailure,
    Field,
    Representation,
    load_representation,
    representation_state,
)
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from bench.config import compose


def _perovskite(a: float) -> Structure:
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"], coords)


@pytest.fixture(scope="module")
def two_perovskites() -> CrystalMatrix:
    """Fitted on SrTiO3 at a = 3.9 and 4.1 A: elements O, Ti, Sr (by Z); log-lengths standardised with mean
    ``(ln 3.9 + ln 4.1) / 2`` and standard deviation ``(ln 4.1 - ln 3.9) / 2``; the constant angles with mean
    90 and unit scale."""
    return CrystalMatrix(max_atoms=5).fit([_perovskite(3.9), _perovskite(4.1)])


# --- round trips on real crystals ---------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "max_atoms", "limit"), [("perov_5", 5, 300), ("carbon_24", 24, 60)])
def test_real_crystals_round_trip(data_dir: Path, dataset: str, max_atoms: int, limit: int) -> None:
    from bench.datasets import load_split

    structures = load_split(dataset, "val", data_dir=data_dir, limit=limit).structures
    rep = CrystalMatrix(max_atoms=max_atoms).fit(structures)
    assert isinstance(rep, Representation)
    matrix = rep.encode(structures)["matrix"]
    k = len(rep.elements)
    assert matrix.shape == (len(structures), k + 6, max(max_atoms, 3)) and matrix.dtype == torch.float32
    decoded = rep.decode({"matrix": matrix})
    codec = CrystalCodec(max_atoms=max_atoms).fit(structures)
    via_codec = codec.decode(codec.encode(structures))
    matcher = StructureMatcher()
    for original, back, reference in zip(structures, decoded, via_codec, strict=True):
        assert isinstance(back, Structure), back
        assert back.composition == original.composition
        assert matcher.fit(original, back)
        assert back == reference  # the codec's round trip, site for site
        np.testing.assert_allclose(back.lattice.abc, original.lattice.abc, rtol=1e-5)
        np.testing.assert_allclose(back.lattice.angles, original.lattice.angles, atol=1e-3)


# --- the layout, by hand ------------------------------------------------------------------------------------


def test_a_hand_written_crystal_encodes_to_the_stated_layout(two_perovskites: CrystalMatrix) -> None:
    rep = two_perovskites
    assert rep.elements == ["O", "Ti", "Sr"]
    (matrix,) = rep.encode([_perovskite(4.1)])["matrix"]
    expected = torch.zeros(9, 5)
    expected[0, :3] = 1.0  # rows 0-2: O, Ti, Sr; sites in the codec's order: three O, then Ti, then Sr
    expected[1, 3] = 1.0
    expected[2, 4] = 1.0
    expected[3, :3] = 1.0  # log(4.1) is one standard deviation above the mean of ln 3.9 and ln 4.1
    expected[4, :3] = 0.0  # 90 degrees, the constant training value
    expected[5:8] = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.0],   # O (0, .5, .5), O (.5, 0, .5), O (.5, .5, 0),
                                  [0.5, 0.0, 0.5, 0.5, 0.0],   # Ti (.5, .5, .5), Sr (0, 0, 0): one column
                                  [0.5, 0.5, 0.0, 0.5, 0.0]])  # each, x, y, z down the rows
    expected[8] = 1.0  # every slot filled
    torch.testing.assert_close(matrix, expected, atol=1e-6, rtol=0)
    two_sites = Structure(Lattice.cubic(3.9), ["O", "Ti"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (smaller,) = rep.encode([two_sites])["matrix"]
    site_rows = [0, 1, 2, 5, 6, 7, 8]
    assert torch.all(smaller[site_rows, 2:] == 0) and torch.all(smaller[3:5, 3:] == 0)  # empty slots: zero
    torch.testing.assert_close(smaller[3, :3], torch.full((3,), -1.0))  # ln 3.9: one deviation below


def test_a_hand_written_real_matrix_decodes_to_the_structure_written_down(
    two_perovskites: CrystalMatrix,
) -> None:
    rep = two_perovskites
    m = torch.zeros(9, 5)
    m[:3] = torch.tensor([[0.1, 0.0, 0.9, 0.6, 0.2],    # O
                          [0.2, 0.8, 0.1, 0.1, 0.7],    # Ti
                          [0.9, 0.3, 0.0, 0.2, 0.1]])   # Sr: argmax per site Sr, Ti, O, O, Ti
    m[3, :3] = torch.tensor([1.0, -1.0, 0.0])           # a = 4.1, b = 3.9, c = sqrt(3.9 * 4.1)
    m[4, :3] = torch.tensor([0.0, 0.0, 30.0])           # alpha = beta = 90, gamma = 120 (unit scale)
    m[3:5, 3:] = 7.0                                    # unused lattice entries are ignored
    m[5:8] = torch.tensor([[0.0, 1.5, 0.5, 0.3, 0.25],
                           [0.0, 0.5, 0.5, 0.3, -1.0],
                           [0.0, 0.5, -0.25, 0.3, 0.0]])
    m[8] = torch.tensor([0.9, 0.7, 1.0, 0.4, 0.6])      # slot 3 is empty (0.4 <= 0.5)
    (structure,) = rep.decode({"matrix": m.unsqueeze(0)})
    expected = Structure(
        Lattice.from_parameters(4.1, 3.9, math.sqrt(3.9 * 4.1), 90, 90, 120),
        ["Sr", "Ti", "O", "Ti"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.75], [0.25, 0, 0]],
    )
    assert isinstance(structure, Structure), structure
    assert [s.species_string for s in structure] == ["Sr", "Ti", "O", "Ti"]
    np.testing.assert_allclose(structure.lattice.parameters, expected.lattice.parameters, rtol=1e-5)
    np.testing.assert_allclose(structure.frac_coords, expected.frac_coords, atol=1e-6)
    # the model-side reading of the same matrix gives the same codec fields
    fields = rep.layout.to_fields(m.unsqueeze(0))
    assert fields["atom_types"][0].argmax(-1).tolist() == [3, 2, 1, 0, 2]  # classes: 0 empty, 1 O, 2 Ti, 3 Sr
    assert torch.all(fields["frac_coords"][0, 3] == 0)


# --- malformed matrices -------------------------------------------------------------------------------------


def test_malformed_matrices_are_decode_failures_with_their_reason(two_perovskites: CrystalMatrix) -> None:
    rep = two_perovskites
    good = rep.encode([_perovskite(4.0)])["matrix"][0]

    def edited(rows: slice | int, cols: slice | int, value: float) -> torch.Tensor:
        m = good.clone()
        m[rows, cols] = value
        return m

    # alpha = 90, beta = 45, gamma = 135 - 1e-5: the three vectors are almost coplanar (V / abc ~ 4e-4)
    cases = [
        (edited(1, 3, float("nan")), "non-finite values in the element block or the occupancy row", ()),
        (edited(8, slice(None), 0.5), "empty cell: no site has occupancy above 0.5", ()),
        (edited(6, 4, float("inf")), "non-finite coordinates or lattice", ("O", "O", "O", "Ti", "Sr")),
        (edited(4, 2, 100.0), "lattice angle outside (0, 180)", ("O", "O", "O", "Ti", "Sr")),
        (edited(3, 0, 1000.0), "lattice length too large", ("O", "O", "O", "Ti", "Sr")),
        (_angles(good, 0.0, -45.0, 44.99999), "degenerate (nearly flat) cell", ("O", "O", "O", "Ti", "Sr")),
    ]
    # garbage in entries decode never reads (an empty slot's coordinates, columns past the lattice) is fine
    partial = edited(8, 4, 0.0)
    partial[5:8, 4] = float("nan")
    decoded = rep.decode({"matrix": torch.stack([good, partial, *(m for m, _, _ in cases)])})
    assert isinstance(decoded[0], Structure) and len(decoded[0]) == 5
    assert isinstance(decoded[1], Structure) and decoded[1].composition.reduced_formula == "TiO3"
    for b, (item, (_, reason, species)) in enumerate(zip(decoded[2:], cases, strict=True), start=2):
        assert isinstance(item, DecodeFailure), (reason, item)
        assert item.reason.startswith(reason) and item.index == b and item.species == species
    with pytest.raises(ValueError, match=r"must be \[B, 9, 5\].*got shape \[1, 8, 5\]"):
        rep.decode({"matrix": torch.zeros(1, 8, 5)})
    with pytest.raises(ValueError, match="do not fit the matrix layout"):
        rep.layout.encode(torch.zeros(1, 6, 4), torch.zeros(1, 6, 3), torch.zeros(1, 6))


def _angles(matrix: torch.Tensor, *values: float) -> torch.Tensor:
    out = matrix.clone()
    out[4, :3] = torch.tensor(values)
    return out


# --- the protocol -------------------------------------------------------------------------------------------


def test_the_fitted_state_reloads_by_class_path_and_the_condition_passes_through() -> None:
    structures = tiny_structures("train")
    rep = CrystalMatrix(max_atoms=8).fit(structures)
    assert rep.fields() == {"matrix": Field((len(rep.elements) + 6, 8), "continuous")}
    assert rep.sizes() == {"num_types": len(rep.elements) + 1, "max_atoms": 8, "output": "matrix"}
    saved = json.loads(json.dumps(representation_state(rep)))
    assert saved[CLASS_KEY] == "bench.datasets.crystal_matrix.CrystalMatrix"
    clone = load_representation(saved)
    assert type(clone) is CrystalMatrix and clone.state_dict() == rep.state_dict()
    assert torch.equal(clone.encode(structures)["matrix"], rep.encode(structures)["matrix"])

    density = np.array([s.density for s in structures])
    conditioned = CrystalMatrix(max_atoms=8, condition=["density"]).fit(structures, {"density": density})
    batch = conditioned.encode(structures, {"density": density})
    assert set(batch) == {"matrix", "condition"} and conditioned.sizes()["condition_dim"] == 1
    assert conditioned.fields()["condition"] == Field((1,), "condition")
    reloaded = load_representation(json.loads(json.dumps(representation_state(conditioned))))
    assert reloaded.condition == ("density",)
    assert torch.equal(reloaded.encode(structures, {"density": density})["condition"], batch["condition"])

    assert not rep.can_encode(_perovskite(4.0))  # Sr is not among the tiny set's elements
    with pytest.raises(RuntimeError, match="not fitted"):
        CrystalMatrix(max_atoms=8).encode(structures)


def test_fewer_than_three_site_slots_still_hold_the_lattice_block() -> None:
    layout = CrystalMatrixLayout(num_types=3, max_atoms=2)
    assert layout.shape == (8, 3)
    types = torch.nn.functional.one_hot(torch.tensor([[1, 2]]), 3).float()
    lattice = torch.arange(6, dtype=torch.float32).unsqueeze(0)
    matrix = layout.encode(types, torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]]), lattice)
    assert torch.all(matrix[0, :, 2] == torch.tensor([0, 0, 2, 5, 0, 0, 0, 0]))  # only the lattice there
    matrix[0, 7, 2] = 1.0  # an occupancy past the last slot is not a site
    fields = layout.to_fields(matrix)
    assert fields["atom_types"].shape == (1, 2, 3) and torch.equal(fields["lattice"], lattice)


def test_the_dcgan_config_chooses_the_matrix_representation() -> None:
    cfg = compose(["model=dcgan", "dataset=carbon_24"])
    assert cfg.representation._target_ == "bench.datasets.crystal_matrix.CrystalMatrix"
    assert cfg.representation.max_atoms == 24
    assert compose(["model=dcgan", "representation=crystal"]).representation._target_.endswith("CrystalCodec")
