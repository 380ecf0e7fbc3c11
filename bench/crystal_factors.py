"""Ground-truth factors of crystals, read from each structure alone, for disentanglement scores
(:mod:`bench.mig`).

Only one factor set is defined: ``perovskite``, for the cubic ABX3 perovskites of Perov-5 (Castelli et al.
2012, "New cubic perovskites for one- and two-photon water splitting using the computational materials
repository", Energy Environ. Sci. 5, 9034; as packaged by CDVAE, Xie et al. 2022). Every Perov-5 crystal is
a five-site cubic cell with two cations and three anions from N, O, F, S. Its factors:

- ``A-site element`` and ``B-site element``: the two cations, assigned by the geometry
  (:func:`perovskite_sites`);
- ``anions``: the X3 multiset (Perov-5 has seven: O3, O2N, ON2, N3, O2F, ONF, O2S);
- ``lattice constant``: the cubic lattice constant ``a``, cut into equal-count quantile bins over the scored
  crystals (:func:`quantile_bins`).

Other datasets have no factors here (:data:`DATASET_FACTORS`); ``perovskite`` can still be asked for by name
on any set of structures, and scores those it recognises.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Structure

__all__ = [
    "ANIONS",
    "DATASET_FACTORS",
    "FACTOR_SETS",
    "FactorTable",
    "NotAPerovskiteError",
    "PerovskiteSites",
    "perovskite_factors",
    "perovskite_sites",
    "quantile_bins",
]

ANIONS = frozenset({"N", "O", "F", "S"})
"""The X-site elements of Perov-5."""

_HALF_GRID_TOL = 0.02  # fractional tolerance for "on 0 or 1/2 along this axis"
_CUBIC_TOL = 1e-3  # relative tolerance of equal cell lengths; degrees for the right angles (times 100)


class NotAPerovskiteError(ValueError):
    """A structure that the ABX3 rule of :func:`perovskite_sites` cannot read; the message says why."""


@dataclass(frozen=True)
class PerovskiteSites:
    """What :func:`perovskite_sites` reads from one ABX3 cell.

    Attributes:
        a_site: element of the A site (12 anion neighbours at ``a / sqrt 2`` in the ideal structure).
        b_site: element of the B site (the octahedral site: 6 anion neighbours at ``a / 2``).
        anions: the X3 multiset as a formula, elements in alphabetical order (``"NO2"``, ``"O3"``).
        lattice_constant: ``a`` in angstrom (the cube root of the cell volume).
        axes: the cell axes the A/B assignment was read on.
    """

    a_site: str
    b_site: str
    anions: str
    lattice_constant: float
    axes: tuple[int, ...]


def _off_half_grid(x: np.ndarray) -> np.ndarray:
    """Distance of fractional coordinates from the nearest multiple of 1/2."""
    return np.abs(x - np.round(2.0 * x) / 2.0)


def _is_half(offset: np.ndarray) -> np.ndarray:
    """Whether fractional offsets are 1/2 modulo 1 (within the tolerance)."""
    return np.abs(np.mod(offset, 1.0) - 0.5) < _HALF_GRID_TOL


def perovskite_sites(structure: Structure) -> PerovskiteSites:
    """The A and B sites, the anion multiset and the lattice constant of a five-site cubic ABX3 cell.

    The rule for A and B. In the ideal cubic perovskite the B cation sits at the centre of an octahedron of
    anions at the face centres (``a / 2`` away) and the A cation at the cube corner, ``(1/2, 1/2, 1/2)`` from
    B, with its anions at ``a / sqrt 2``. Along any cell axis, exactly one of the three anions is offset by
    1/2 from B (the one on that axis) and two are offset by 1/2 from A. So, on every axis along which all five
    sites lie 0 or 1/2 away from the first cation (an *informative* axis), B is the cation with one anion
    offset by 1/2 and A the one with two. Many Perov-5 cells have their sites displaced along one axis (a
    polar distortion); their other two axes are informative. An axis whose sites happen to lie on the half
    grid but whose counts are not one and two (a displaced axis that lands there by chance) casts no vote.
    The rule needs at least one vote and every vote to agree; it depends on neither the origin nor the order
    of the axes. On the Perov-5 test split it reads all 3,785 cells (2,193 with three informative axes,
    1,592 with two), and wherever all sites sit on the ideal positions the B site it finds is the one with
    six anions at ``a / 2``.

    Args:
        structure: a cell with the conventional cubic axes (Perov-5's CIFs are such cells).

    Raises:
        NotAPerovskiteError: not five sites, not a cubic cell, not two cations and three N/O/F/S anions, no
            informative axis, or axes that disagree.
    """
    if len(structure) != 5:
        raise NotAPerovskiteError(f"{len(structure)} sites, not the 5 of an ABX3 cell")
    lengths = np.array(structure.lattice.abc)
    angles = np.array(structure.lattice.angles)
    if np.ptp(lengths) > _CUBIC_TOL * lengths.mean() or np.abs(angles - 90.0).max() > 100 * _CUBIC_TOL:
        raise NotAPerovskiteError("not a cubic cell")
    symbols = [site.specie.symbol for site in structure]
    anions = [i for i, s in enumerate(symbols) if s in ANIONS]
    cations = [i for i, s in enumerate(symbols) if s not in ANIONS]
    if len(anions) != 3:
        raise NotAPerovskiteError(f"{len(anions)} anion sites (N, O, F, S), not 3")
    frac = np.mod(structure.frac_coords - structure.frac_coords[cations[0]], 1.0)  # origin on a cation
    votes: list[int] = []  # the index into `cations` of the B site, one per informative axis
    axes: list[int] = []
    for axis in range(3):
        if (_off_half_grid(frac[:, axis]) >= _HALF_GRID_TOL).any():
            continue
        counts = [int(_is_half(frac[anions, axis] - frac[c, axis]).sum()) for c in cations]
        if sorted(counts) == [1, 2]:
            votes.append(counts.index(1))
            axes.append(axis)
    if not votes:
        raise NotAPerovskiteError("no axis with the ABX3 pattern of half-cell offsets")
    if len(set(votes)) > 1:
        raise NotAPerovskiteError("the axes disagree on which cation is the B site")
    b = cations[votes[0]]
    a = cations[1 - votes[0]]
    counts = Counter(symbols[i] for i in anions)
    formula = "".join(f"{el}{n if n > 1 else ''}" for el, n in sorted(counts.items()))
    lattice_constant = float(structure.volume) ** (1.0 / 3.0)
    return PerovskiteSites(symbols[a], symbols[b], formula, lattice_constant, tuple(axes))


def quantile_bins(values: np.ndarray, quantiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of ``values``: the bin index ``[n]`` in ``[0, quantiles)`` of each value and the
    ``quantiles - 1`` inner edges (the empirical quantiles; equal values share a bin)."""
    if quantiles < 2:
        raise ValueError(f"quantiles must be >= 2, got {quantiles}")
    values = np.asarray(values, dtype=np.float64)
    edges = np.quantile(values, np.linspace(0.0, 1.0, quantiles + 1)[1:-1])
    return np.searchsorted(edges, values, side="right"), edges


@dataclass
class FactorTable:
    """The factors of the structures that a factor set could read.

    Attributes:
        names: the factors' names.
        descriptions: one line per factor: what it is.
        labels: ``[n, K]`` labels (strings or integers) of the kept structures.
        kept: indices of the input structures that have factors, in order.
        left_out: reason -> how many input structures were left out for it.
        details: what else a reader needs to reproduce the factors (e.g. the quantile edges).
    """

    names: list[str]
    descriptions: list[str]
    labels: np.ndarray
    kept: list[int]
    left_out: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def perovskite_factors(structures: Sequence[Structure], lattice_quantiles: int = 10) -> FactorTable:
    """The ``perovskite`` factor set (see the module docstring) of the structures it can read.

    Args:
        structures: crystals; those :func:`perovskite_sites` refuses are left out and counted by reason.
        lattice_quantiles: number of equal-count bins of the lattice constant (deciles by default).
    """
    sites: list[PerovskiteSites] = []
    kept: list[int] = []
    left_out: Counter[str] = Counter()
    for i, structure in enumerate(structures):
        try:
            sites.append(perovskite_sites(structure))
        except NotAPerovskiteError as err:
            left_out[f"not read as an ABX3 perovskite: {err}"] += 1
            continue
        kept.append(i)
    names = ["A-site element", "B-site element", "anions", "lattice constant"]
    descriptions = [
        "the cation with two anions half a cell away along every informative axis (12-coordinate)",
        "the cation with one anion half a cell away along every informative axis (octahedral)",
        "the X3 multiset of N, O, F, S",
        f"cube root of the cell volume, in {lattice_quantiles} equal-count bins over the scored crystals",
    ]
    if not sites:
        return FactorTable(names, descriptions, np.empty((0, 4), dtype=object), kept, dict(left_out))
    lattice = np.array([s.lattice_constant for s in sites])
    bins, edges = quantile_bins(lattice, lattice_quantiles)
    labels = np.array([[s.a_site, s.b_site, s.anions, int(q)] for s, q in zip(sites, bins, strict=True)],
                      dtype=object)
    details = {"lattice_quantiles": lattice_quantiles, "lattice_quantile_edges": [float(e) for e in edges]}
    return FactorTable(names, descriptions, labels, kept, dict(left_out), details)


FACTOR_SETS: dict[str, Callable[[Sequence[Structure]], FactorTable]] = {"perovskite": perovskite_factors}
"""Factor sets by name."""

DATASET_FACTORS: dict[str, str] = {"perov_5": "perovskite"}
"""The factor set of each dataset that has one."""
