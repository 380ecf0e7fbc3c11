"""Round trips of the crystal codec on hand-built and real structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench.datasets.codec import CrystalCodec, DecodeFailure
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure


def _perovskite(a: float = 3.9) -> Structure:
    return Structure(
        Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _assert_round_trip(codec: CrystalCodec, structures: list[Structure]) -> None:
    decoded = codec.decode(codec.encode(structures))
    matcher = StructureMatcher()
    for original, back in zip(structures, decoded, strict=True):
        assert isinstance(back, Structure), back
        assert matcher.fit(original, back)
        np.testing.assert_allclose(back.lattice.abc, original.lattice.abc, rtol=1e-4)
        np.testing.assert_allclose(back.lattice.angles, original.lattice.angles, rtol=1e-4)
        assert back.composition == original.composition


def test_encode_layout_and_round_trip() -> None:
    structures = [_perovskite(3.9), _perovskite(4.1), _rocksalt()]
    codec = CrystalCodec(max_atoms=8).fit(structures)
    batch = codec.encode(structures)
    assert codec.elements == ["O", "Na", "Cl", "Ti", "Sr"]  # sorted by atomic number
    assert batch["atom_types"].shape == (3, 8, 6)
    assert batch["frac_coords"].shape == (3, 8, 3)
    assert batch["lattice"].shape == (3, 6)
    assert batch["mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert torch.all(batch["atom_types"][0, 5:, 0] == 1)  # empty slots are class 0
    assert torch.all((batch["frac_coords"] >= 0) & (batch["frac_coords"] < 1))
    _assert_round_trip(codec, structures)


def test_state_round_trip_gives_same_decoding() -> None:
    structures = [_perovskite(3.9), _perovskite(4.0)]
    codec = CrystalCodec(max_atoms=5).fit(structures)
    clone = CrystalCodec.from_state(codec.state_dict())
    a = codec.decode(codec.encode(structures))
    b = clone.decode(clone.encode(structures))
    assert [s.lattice.abc for s in a] == [s.lattice.abc for s in b]


def test_decode_failures_have_reasons() -> None:
    codec = CrystalCodec(max_atoms=5).fit([_perovskite(3.9), _perovskite(4.1)])
    batch = codec.encode([_perovskite()] * 4)
    batch["atom_types"][0] = 0
    batch["atom_types"][0, :, 0] = 1  # every slot empty
    batch["lattice"][1, 0] = float("nan")
    batch["lattice"][2, 3:] = 1e4  # angles far outside (0, 180)
    out = codec.decode(batch)
    assert isinstance(out[0], DecodeFailure) and "empty" in out[0].reason
    assert isinstance(out[1], DecodeFailure) and "non-finite" in out[1].reason
    assert isinstance(out[2], DecodeFailure) and "angle" in out[2].reason
    assert isinstance(out[3], Structure)
    assert not out[0] and out[0].index == 0


def test_bad_inputs_are_named() -> None:
    codec = CrystalCodec(max_atoms=2)
    with pytest.raises(ValueError, match="max_atoms=2"):
        codec.fit([_perovskite()])
    codec = CrystalCodec(max_atoms=5).fit([_perovskite()])
    with pytest.raises(ValueError, match="Na"):
        codec.encode([_rocksalt()])
    with pytest.raises(RuntimeError, match="not fitted"):
        CrystalCodec(max_atoms=5).encode([_perovskite()])


@pytest.mark.parametrize(("name", "max_atoms"), [("perov_5", 5), ("carbon_24", 24)])
def test_round_trip_on_real_rows(data_dir, name: str, max_atoms: int) -> None:
    from bench.datasets import load_split

    split = load_split(name, "val", data_dir=data_dir, limit=60)
    codec = CrystalCodec(max_atoms=max_atoms).fit(split.structures)
    _assert_round_trip(codec, split.structures)


def test_nearly_flat_cell_is_a_failure() -> None:
    codec = CrystalCodec(max_atoms=5).fit([_perovskite(3.9), _perovskite(4.1)])
    flat = Structure(Lattice.from_parameters(4, 4, 4, 90, 90, 179.99), ["Sr"], [[0, 0, 0]])
    batch = codec.encode([_perovskite()])
    lat = np.array([*np.log(flat.lattice.abc), *flat.lattice.angles])
    batch["lattice"][0] = torch.from_numpy(
        ((lat - codec.lattice_mean) / codec.lattice_std).astype(np.float32)
    )
    (out,) = codec.decode(batch)
    assert isinstance(out, DecodeFailure) and "degenerate" in out.reason
