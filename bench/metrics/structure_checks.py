"""Per-structure geometric checks: was a crystal constructed, and are its atoms far enough apart.

Definitions follow Xie et al. 2022, CDVAE, scripts/compute_metrics.py (``Crystal.get_structure``: negative
lattice lengths, construction failure or a volume under 0.1 Å^3 mean "not constructed"; DiffCSP's copy,
jiaor17/DiffCSP scripts/compute_metrics.py, adds NaN values) and scripts/eval_utils.py
(``structure_validity``: every off-diagonal entry of pymatgen's periodic ``distance_matrix`` must be at least
0.5 Å and the volume at least 0.1 Å^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

__all__ = ["ConstructionCheck", "StructureCheck", "check_construction", "check_structure"]


@dataclass(frozen=True)
class ConstructionCheck:
    """Whether a generated item is a usable crystal, and why not."""

    constructed: bool
    reason: str  # "ok" or a short cause: "none", "non_finite", "non_positive_lattice", "volume", "empty"


@dataclass(frozen=True)
class StructureCheck:
    """Structural validity of one item."""

    valid: bool
    reason: str  # "ok", "too_close: 0.31 Å", "volume: 0.05 Å^3", "not_constructed: <cause>"
    min_distance: float  # Å; NaN when not constructed, +inf for a single atom without self-images


def check_construction(structure: Structure | None, min_volume: float = 0.1) -> ConstructionCheck:
    """Decide whether a generated item counts as a constructed crystal.

    Not constructed: ``None``; NaN or infinite lattice or coordinates; a lattice length <= 0; no sites; or a
    volume below ``min_volume`` (CDVAE's "unrealistically_small_lattice").

    Args:
        structure: The generated item.
        min_volume: Smallest volume in Å^3 of a constructed cell.

    Returns:
        The verdict with its reason.
    """
    if structure is None:
        return ConstructionCheck(False, "none")
    if len(structure) == 0:
        return ConstructionCheck(False, "empty")
    matrix = structure.lattice.matrix
    if not (np.isfinite(matrix).all() and np.isfinite(structure.frac_coords).all()):
        return ConstructionCheck(False, "non_finite")
    if min(structure.lattice.abc) <= 0:
        return ConstructionCheck(False, "non_positive_lattice")
    volume = float(structure.volume)
    if volume < min_volume:
        return ConstructionCheck(False, f"volume: {volume:.3g} Å^3 < {min_volume:g}")
    return ConstructionCheck(True, "ok")


def _shortest_lattice_vector(structure: Structure) -> float:
    """Length of the shortest non-zero lattice vector: the distance of any atom to its own nearest image."""
    reduced = structure.lattice.get_lll_reduced_lattice()
    shifts = np.array(
        [[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
    )
    return float(np.linalg.norm(shifts @ reduced.matrix, axis=1).min())


def check_structure(
    structure: Structure | None,
    min_distance: float = 0.5,
    min_volume: float = 0.1,
    self_image: bool = False,
    construction: ConstructionCheck | None = None,
) -> StructureCheck:
    """CDVAE's structural validity of one generated item.

    The diagonal of the distance matrix is ignored as in CDVAE (which pads it with a large number), so by
    default a one-atom cell is valid whatever its lattice; ``self_image=True`` also requires the shortest
    lattice vector (an atom's distance to its own image) to reach ``min_distance``.

    Args:
        structure: The generated item.
        min_distance: Smallest allowed distance in Å between two sites (periodic minimum image).
        min_volume: Smallest allowed cell volume in Å^3.
        self_image: Include each atom's distance to its own periodic images.
        construction: A construction verdict already computed for this item (recomputed when None).

    Returns:
        The verdict, its reason and the smallest distance found.
    """
    construction = construction or check_construction(structure, min_volume)
    if not construction.constructed or structure is None:
        return StructureCheck(False, f"not_constructed: {construction.reason}", float("nan"))
    dist = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(dist, np.inf)
    shortest = float(dist.min()) if dist.size else float("inf")
    if self_image:
        shortest = min(shortest, _shortest_lattice_vector(structure))
    if shortest < min_distance:
        return StructureCheck(False, f"too_close: {shortest:.2f} Å", shortest)
    volume = float(structure.volume)
    if volume < min_volume:
        return StructureCheck(False, f"volume: {volume:.3g} Å^3", shortest)
    return StructureCheck(True, "ok", shortest)
