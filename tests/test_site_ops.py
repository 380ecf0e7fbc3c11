"""The NumPy CrystalNN "ops" site fingerprint (bench.metrics.site_ops) against matminer / pymatgen.

matminer's ``CrystalNNFingerprint.from_preset("ops")`` is the reference: same 61 numbers to 1e-10 on
hand-built crystals (ideal and randomly perturbed), on single neighbour shells with degenerate geometry
(antipodal and on-axis neighbours, too few neighbours); ideal motifs give 1 for their own order parameter.
"""

from __future__ import annotations

import functools
import itertools
import math
from unittest import mock

import numpy as np
import pytest
from pymatgen.core import Lattice, Site, Structure

from bench.metrics.site_ops import (
    MAX_CN,
    N_FEATURES,
    OPS_PRESET,
    ops_fingerprint_from_nndata,
    ops_site_fingerprint,
)

ATOL = 1e-10

# CrystalNN warns about missing oxidation states / radii for these bare-element structures
pytestmark = pytest.mark.filterwarnings("ignore:.*(oxidation states|appropriate radius).*:UserWarning")


@functools.cache
def _featurizer():
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


def _slot(cn: int, typ: str = "wt") -> int:
    """Index of feature ``typ`` (or the weight) of coordination number ``cn`` in the 61-vector."""
    pos = sum(1 + len(OPS_PRESET.get(c, ())) for c in range(1, cn))
    if typ == "wt":
        return pos
    return pos + 1 + [t for t, _ in OPS_PRESET[cn]].index(typ)


# ---- (a) the constant table is matminer's preset ----


def test_preset_table_is_matminers():
    f = _featurizer()
    assert sorted(f.ops) == list(range(1, MAX_CN + 1))
    for cn in range(1, MAX_CN + 1):
        assert f.ops[cn][0] == "wt"
        got = [(op._types, op._params) for op in f.ops[cn][1:]]
        assert got == [((typ,), [params]) for typ, params in OPS_PRESET.get(cn, ())], cn
    assert N_FEATURES == len(f.feature_labels()) == 61


# ---- (b) every site of hand-built crystals, ideal and perturbed ----


_CRYSTALS = {
    "NaCl": lambda: Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    ),
    "CsCl": lambda: Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "SrTiO3": lambda: Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    ),
    "diamond": lambda: Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]]),
    "Cu": lambda: Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]),
    "hBN": lambda: Structure(  # graphite-like layers, trigonal planar B and N
        Lattice.hexagonal(2.504, 6.66),
        ["B", "N", "B", "N"],
        [[0, 0, 0], [1 / 3, 2 / 3, 0], [0, 0, 0.5], [2 / 3, 1 / 3, 0.5]],
    ),
    "rutile": lambda: Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]
    ),
}


@functools.cache
def _crystal(name: str) -> Structure:
    """Conventional cell of a hand-built crystal (built once; callers must not modify it)."""
    return _CRYSTALS[name]()


def _perturbed(structure: Structure, seed: int) -> Structure:
    """Cartesian Gaussian noise with a seeded standard deviation between 0.05 and 0.15 Angstrom."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.05, 0.15)
    coords = structure.cart_coords + rng.normal(0.0, sigma, (len(structure), 3))
    return Structure(structure.lattice, structure.species, coords, coords_are_cartesian=True)


CASES = [(name, seed) for name in _CRYSTALS for seed in (None, 1, 2)]


@pytest.mark.parametrize(("name", "seed"), CASES, ids=[f"{n}-{s or 'ideal'}" for n, s in CASES])
def test_every_site_matches_matminer(name, seed):
    f = _featurizer()
    structure = _crystal(name)
    if seed is not None:
        structure = _perturbed(structure, seed)
    for idx in range(len(structure)):
        nndata = f.cnn.get_nn_data(structure, idx)
        with mock.patch.object(f.cnn, "get_nn_data", return_value=nndata):  # same nndata on both sides
            want = np.asarray(f.featurize(structure, idx), dtype=float)
        got = ops_fingerprint_from_nndata(structure, idx, nndata)
        assert got.shape == want.shape == (61,)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"{name} site {idx}")


# ---- single neighbour shells: degenerate geometry and too few neighbours, against pymatgen directly ----


def _reference_shell(cn: int, neighbors: np.ndarray) -> np.ndarray:
    """matminer's values (weight 1) for the ops of ``cn``, given the neighbours of a site at the origin."""
    sites = [Site("H", [0.0, 0.0, 0.0])] + [Site("H", x) for x in neighbors]
    out = [1.0]
    for op in _featurizer().ops[cn][1:]:
        value = op.get_order_parameters(sites, 0, indices_neighs=list(range(1, len(sites))))[0]
        out.append(value or 0)
    return np.asarray(out, dtype=float)


def _ring(k: int, z: float = 0.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(k) / k
    r = math.sqrt(1 - z * z)
    return np.c_[r * np.cos(angles), r * np.sin(angles), np.full(k, z)]


_UP, _DOWN = np.array([[0.0, 0.0, 1.0]]), np.array([[0.0, 0.0, -1.0]])
_TET = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3)
_CUBE = np.array(list(itertools.product([-1, 1], repeat=3))) / math.sqrt(3)
_CUBOCT = np.array(
    [v for v in itertools.product([-1, 0, 1], repeat=3) if sorted(map(abs, v)) == [0, 1, 1]], dtype=float
) / math.sqrt(2)

# (cn, order parameter that the ideal shape maximises, unit vectors of the ideal shape)
IDEAL_MOTIFS = [
    (2, "bent", np.array([[1.0, 0, 0], [0, 1, 0]])),  # L-shaped: the first "bent" (TA = 1/2)
    (3, "tri_plan_max", _ring(3)),
    (3, "tet_max", _TET[:3]),
    (3, "T", np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0]])),
    (4, "sq_plan_max", _ring(4)),
    (4, "tet_max", _TET),
    (4, "see_saw_rect", np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, 0, 1]])),
    (4, "tri_pyr", np.r_[_UP, _ring(3)]),
    (5, "pent_plan_max", _ring(5)),
    (5, "sq_pyr", np.r_[_UP, _ring(4)]),
    (5, "tri_bipyr", np.r_[_UP, _DOWN, _ring(3)]),
    (6, "hex_plan_max", _ring(6)),
    (6, "oct_max", np.r_[_UP, _DOWN, _ring(4)]),
    (6, "pent_pyr", np.r_[_UP, _ring(5)]),
    (7, "hex_pyr", np.r_[_UP, _ring(6)]),
    (7, "pent_bipyr", np.r_[_UP, _DOWN, _ring(5)]),
    (8, "bcc", _CUBE),
    (8, "hex_bipyr", np.r_[_UP, _DOWN, _ring(6)]),
    (12, "cuboct_max", _CUBOCT),
]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _shells() -> list[tuple[str, int, np.ndarray]]:
    """Neighbour shells (cn slot, Cartesian neighbours around the origin) covering the edge cases."""
    rng = np.random.default_rng(7)
    shells = []
    for cn, typ, unit in IDEAL_MOTIFS:
        shells.append((f"{typ}-ideal", cn, 2.1 * unit))  # on-axis and antipodal neighbours: flags, phi = 0
        rotated = 2.1 * unit @ _random_rotation(rng).T
        shells.append((f"{typ}-rotated", cn, rotated))
        shells.append((f"{typ}-noisy", cn, rotated + rng.normal(0, 0.1, rotated.shape)))
    for cn in range(1, 13):
        shells.append((f"random-{cn}", cn, rng.normal(size=(cn, 3)) * 2.0))
    on_axis = np.r_[_UP, _DOWN, [[0, 0, 1 - 1e-13]], _ring(6, z=0.3)] * 2.4  # |z| >= 1 - 1e-12: azimuth 0
    shells.append(("q-on-axis-9", 9, on_axis))
    shells.append(("q-near-axis-9", 9, np.r_[_UP + [[1e-7, 0, 0]], _ring(8, z=-0.2)] * 2.4))
    shells.append(("too-few-bent", 2, np.array([[2.0, 0, 0]])))  # one neighbour in the CN-2 slot: None -> 0
    shells.append(("too-few-bcc", 8, _CUBE[:3] * 2.0))  # bcc needs more than 3 neighbours
    shells.append(("too-few-max", 6, np.array([[0.0, 0, 2.0]])))
    shells.append(("sgl_bd-two", 1, np.array([[2.0, 0, 0], [0, 2.5, 0]])))
    return shells


SHELLS = _shells()


@pytest.mark.parametrize(("label", "cn", "neighbors"), SHELLS, ids=[s[0] for s in SHELLS])
def test_neighbour_shell_matches_pymatgen(label, cn, neighbors):
    want = _reference_shell(cn, neighbors)
    got = ops_site_fingerprint(np.zeros(3), {cn: 1.0}, {cn: neighbors})
    start = _slot(cn)
    np.testing.assert_allclose(got[start : start + len(want)], want, rtol=0, atol=ATOL, err_msg=label)
    rest = np.delete(got, np.arange(start, start + len(want)))
    assert not rest.any()


# ---- (c) known values ----


@pytest.mark.parametrize(("cn", "typ", "unit"), IDEAL_MOTIFS, ids=[m[1] for m in IDEAL_MOTIFS])
def test_ideal_motif_scores_one(cn, typ, unit):
    weight = 0.75
    center = np.array([0.3, -1.2, 4.0])
    got = ops_site_fingerprint(center, {cn: weight}, {cn: center + 2.3 * unit})
    assert got[_slot(cn)] == weight
    assert got[_slot(cn, typ)] == pytest.approx(weight, abs=1e-12)


def test_cuboctahedron_steinhardt_values():
    got = ops_site_fingerprint(np.zeros(3), {12: 1.0}, {12: 2.5 * _CUBOCT})
    assert got[_slot(12, "q2")] == pytest.approx(0.0, abs=1e-12)
    assert got[_slot(12, "q4")] == pytest.approx(math.sqrt(7 / 192), abs=1e-12)  # 0.19094
    assert got[_slot(12, "q6")] == pytest.approx(math.sqrt(169 / 512), abs=1e-12)  # 0.57452


@pytest.mark.parametrize(
    ("name", "idx", "cn", "typ"),
    [
        ("SrTiO3", 1, 6, "oct_max"),  # Ti
        ("NaCl", 0, 6, "oct_max"),
        ("diamond", 0, 4, "tet_max"),
        ("Cu", 0, 12, "cuboct_max"),
        ("CsCl", 0, 8, "bcc"),
        ("hBN", 0, 3, "tri_plan_max"),
    ],
)
def test_ideal_crystal_site_scores_its_weight(name, idx, cn, typ):
    structure = _crystal(name)
    nndata = _featurizer().cnn.get_nn_data(structure, idx)
    weight = nndata.cn_weights[cn]
    assert weight > 0.3
    got = ops_fingerprint_from_nndata(structure, idx, nndata)
    assert got[_slot(cn)] == weight
    assert got[_slot(cn, typ)] == pytest.approx(weight, abs=1e-9)


def test_zero_weights_and_no_neighbours():
    assert not ops_site_fingerprint(np.zeros(3), {0: 1.0}, {}).any()  # CrystalNN's "no neighbours" answer
    got = ops_site_fingerprint(np.zeros(3), {1: 0.4, 2: 0.0, 30: 0.6}, {1: np.array([[0.0, 0, 1.8]])})
    expected = np.zeros(61)
    expected[_slot(1)] = expected[_slot(1, "sgl_bd")] = 0.4
    np.testing.assert_array_equal(got, expected)
