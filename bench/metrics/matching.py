"""Structure matching for uniqueness and novelty: pymatgen ``StructureMatcher``, each structure reduced once.

``StructureMatcher.fit`` Niggli-reduces and primitive-reduces both structures on every call (behind a small
LRU cache). Here each structure is reduced once, exactly as the matcher would (Niggli, then
``get_primitive_structure()`` when ``primitive_cell``), and pairs are compared with
``fit(..., skip_structure_reduction=True)``, which gives the same answer. Pairs whose reduced site counts
differ are rejected without calling the matcher; this is exact when ``attempt_supercell`` and
``allow_subset`` are off (the matcher itself returns no match for them).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pymatgen.core import Structure

try:  # pymatgen >= 2025 moved the matcher to pymatgen.core; the old path remains as a shim
    from pymatgen.core.structure_matcher import StructureMatcher
except ImportError:  # pragma: no cover - older pymatgen
    from pymatgen.analysis.structure_matcher import StructureMatcher

from bench.metrics.settings import MatcherSettings

__all__ = ["FormulaIndex", "StructureMatcher", "build_matcher", "formula_key", "matcher_params"]

logger = logging.getLogger(__name__)


def build_matcher(settings: MatcherSettings) -> StructureMatcher:
    """A ``StructureMatcher`` for the configured convention."""
    return StructureMatcher(**settings.kwargs)


def matcher_params(matcher: StructureMatcher) -> dict[str, Any]:
    """The parameters a matcher actually uses, for the record."""
    params = {k: v for k, v in matcher.as_dict().items() if not k.startswith("@") and k != "version"}
    params["comparator"] = params["comparator"].get("@class", str(params["comparator"]))
    params["ignored_species"] = list(params.get("ignored_species", ()))
    return params


def _reduce(structure: Structure, primitive_cell: bool) -> Structure:
    """The reduction ``StructureMatcher`` applies before matching (Niggli, then primitive cell)."""
    reduced = structure.get_reduced_structure(reduction_algo="niggli")
    if primitive_cell:
        reduced = reduced.get_primitive_structure()
    return Structure.from_sites(reduced)


class FormulaIndex:
    """Structures bucketed by reduced formula, reduced lazily once, matched with one ``StructureMatcher``.

    Args:
        structures: The indexed structures (``None`` entries are skipped).
        matcher: The matcher deciding equality.
        ids: Identifier reported for each structure (defaults to its position).
    """

    def __init__(
        self,
        structures: Sequence[Structure | None],
        matcher: StructureMatcher,
        ids: Sequence[int] | None = None,
    ) -> None:
        self.matcher = matcher
        params = matcher.as_dict()
        self._primitive_cell = bool(params["primitive_cell"])
        # exact: with neither supercells nor subsets the matcher rejects pairs of different (reduced) sizes
        self._exact_size_filter = not params["attempt_supercell"] and not params["allow_subset"]
        self._structures = list(structures)
        self._ids = list(ids) if ids is not None else list(range(len(self._structures)))
        self._reduced: dict[int, Structure] = {}
        self.buckets: dict[str, list[int]] = defaultdict(list)
        self.n_errors = 0
        for pos, s in enumerate(self._structures):
            if s is not None:
                self.buckets[formula_key(s)].append(pos)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reduced"] = {}  # cheap to recompute, large to store
        return state

    def reduce(self, structure: Structure) -> Structure:
        """Reduce a structure the way this index's matcher would."""
        return _reduce(structure, self._primitive_cell)

    def reduced(self, pos: int) -> Structure:
        """The reduced form of the indexed structure at ``pos`` (memoised)."""
        if pos not in self._reduced:
            self._reduced[pos] = self.reduce(self._structures[pos])
        return self._reduced[pos]

    def add(self, structure: Structure, ident: int, reduced: Structure | None = None) -> int:
        """Append a structure (and optionally its reduced form) to the index; return its position."""
        self._structures.append(structure)
        self._ids.append(ident)
        pos = len(self._structures) - 1
        self.buckets[formula_key(structure)].append(pos)
        if reduced is not None:
            self._reduced[pos] = reduced
        return pos

    def fits(self, reduced_query: Structure, pos: int) -> bool:
        """Whether a reduced query matches the indexed structure at ``pos`` (exceptions count as no match)."""
        target = self.reduced(pos)
        if self._exact_size_filter and len(reduced_query) != len(target):
            return False
        try:
            return bool(self.matcher.fit(reduced_query, target, skip_structure_reduction=True))
        except Exception as err:  # a degenerate lattice can make the matcher raise; count, never crash
            self.n_errors += 1
            logger.debug("StructureMatcher raised on a pair (%s); counted as no match", err)
            return False

    def first_match(
        self,
        query: Structure,
        candidates: Iterable[int] | None = None,
        reduced_query: Structure | None = None,
    ) -> int | None:
        """Position of the first candidate that matches ``query``, else None.

        Args:
            query: The structure to look up.
            candidates: Positions to try, in order (default: the bucket of ``query``'s reduced formula).
            reduced_query: ``self.reduce(query)`` if already computed.
        """
        positions = list(self.buckets.get(formula_key(query), []) if candidates is None else candidates)
        if not positions:
            return None
        reduced_query = reduced_query if reduced_query is not None else self.reduce(query)
        for pos in positions:
            if self.fits(reduced_query, pos):
                return pos
        return None

    def ident(self, pos: int) -> int:
        """The identifier of the structure at ``pos``."""
        return self._ids[pos]


def formula_key(structure: Structure) -> str:
    """The bucket key: the reduced formula, the same hash ``StructureMatcher``'s default comparator uses."""
    return structure.composition.reduced_formula
