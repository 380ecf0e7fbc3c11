"""Structure matching (uniqueness, novelty, recall): pymatgen ``StructureMatcher`` with exact prefilters.

``StructureMatcher.fit`` Niggli-reduces and primitive-reduces both structures on every call (behind a small
LRU cache). Here each structure is reduced once, exactly as the matcher would (Niggli, then
``get_primitive_structure()`` when ``primitive_cell``), and pairs are compared with
``fit(..., skip_structure_reduction=True)``, which gives the same answer.

With ``prefilter`` (the default) only pairs that *can* match reach the matcher. With ``attempt_supercell``
and ``allow_subset`` off (the conventions used here) the matcher
1. rejects different compositions (its comparator hash, the reduced formula): structures are bucketed by
   reduced formula;
2. rejects reduced cells with different numbers of sites (``_strict_match`` needs a square site mask):
   within a formula, structures are bucketed by the site count of the reduced cell;
3. tries only the lattices that ``Lattice.find_all_mappings`` finds for the query's (volume-scaled) lattice
   against the target's lattice, within ``ltol`` and ``angle_tol``, with determinant 1: if there is none,
   the matcher's search loop is empty and it returns no match. The prefilter runs that same search on both
   lattices scaled to unit volume (the same ratios and angles as the matcher's common-volume scaling), with
   tolerances widened by 1e-6 (lengths) and 1e-4 degrees so rounding can only let more pairs through.

So a pair pruned by a prefilter is a pair the matcher would reject; candidates keep their order, so the first
match found (and every reported match id) is the one a plain scan finds. ``prefilter=False`` is that plain
scan: every indexed structure with the same reduced formula, ``StructureMatcher.fit`` on the structures as
given (kept for verification and timing).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

try:  # pymatgen >= 2025 moved the matcher to pymatgen.core; the old path remains as a shim
    from pymatgen.core.structure_matcher import StructureMatcher
except ImportError:  # pragma: no cover - older pymatgen
    from pymatgen.analysis.structure_matcher import StructureMatcher

from bench.metrics.parallel import map_chunks
from bench.metrics.settings import MatcherSettings, ParallelSettings

__all__ = [
    "FormulaIndex",
    "StructureMatcher",
    "build_matcher",
    "first_matches",
    "formula_key",
    "matcher_params",
    "reduce_structure",
]

logger = logging.getLogger(__name__)

_LTOL_MARGIN = 1e-6
_ANGLE_MARGIN = 1e-4


def build_matcher(settings: MatcherSettings) -> StructureMatcher:
    """A ``StructureMatcher`` for the configured convention."""
    return StructureMatcher(**settings.kwargs)


def matcher_params(matcher: StructureMatcher) -> dict[str, Any]:
    """The parameters a matcher actually uses, for the record."""
    params = {k: v for k, v in matcher.as_dict().items() if not k.startswith("@") and k != "version"}
    params["comparator"] = params["comparator"].get("@class", str(params["comparator"]))
    params["ignored_species"] = list(params.get("ignored_species", ()))
    return params


def reduce_structure(structure: Structure, primitive_cell: bool) -> Structure:
    """The reduction ``StructureMatcher`` applies before matching (Niggli, then primitive cell)."""
    reduced = structure.get_reduced_structure(reduction_algo="niggli")
    if primitive_cell:
        reduced = reduced.get_primitive_structure()
    return Structure.from_sites(reduced)


_reduce = reduce_structure  # backwards-compatible private name


def formula_key(structure: Structure) -> str:
    """The bucket key: the reduced formula, the same hash ``StructureMatcher``'s default comparator uses."""
    return structure.composition.reduced_formula


class FormulaIndex:
    """Structures bucketed by reduced formula (and reduced-cell size), matched with one ``StructureMatcher``.

    Structures are reduced lazily, once: a formula's bucket is split by reduced-cell size the first time a
    query of that formula arrives.

    Args:
        structures: The indexed structures (``None`` entries are skipped).
        matcher: The matcher deciding equality.
        ids: Identifier reported for each structure (defaults to its position).
        prefilter: Use the exact prefilters of this module (see the module docstring); False = plain scan.
        reduced: Already reduced forms (:meth:`reduce`) of some structures, by position.
    """

    def __init__(
        self,
        structures: Sequence[Structure | None],
        matcher: StructureMatcher,
        ids: Sequence[int] | None = None,
        prefilter: bool = True,
        reduced: Mapping[int, Structure] | None = None,
    ) -> None:
        self.matcher = matcher
        params = matcher.as_dict()
        self._primitive_cell = bool(params["primitive_cell"])
        self._scale = bool(params["scale"])
        self._ltol = float(params["ltol"])
        self._angle_tol = float(params["angle_tol"])
        # exact only without supercells, subsets or ignored species (then the matcher compares whole cells)
        self.prefilter = bool(
            prefilter
            and not params["attempt_supercell"]
            and not params["allow_subset"]
            and not params.get("ignored_species")
        )
        self._structures = list(structures)
        self._ids = list(ids) if ids is not None else list(range(len(self._structures)))
        self._formulas: list[str | None] = [
            formula_key(s) if s is not None else None for s in self._structures
        ]
        self._reduced: dict[int, Structure] = dict(reduced or {})
        self._lattices: dict[int, Lattice] = {}
        self._by_size: dict[str, dict[int, list[int]]] = {}
        self.buckets: dict[str, list[int]] = defaultdict(list)
        self.n_errors = 0
        self.n_fits = 0
        self.n_pruned = 0
        self._persist_reduced = False
        for pos, formula in enumerate(self._formulas):
            if formula is not None:
                self.buckets[formula].append(pos)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lattices"] = {}  # cheap to recompute
        state["_by_size"] = {}
        if self._persist_reduced and self.prefilter and len(self._reduced) == len(self._structures):
            state["_structures"] = [None] * len(self._structures)  # only the reduced forms are used
        else:
            state["_reduced"] = {}
        return state

    def __len__(self) -> int:
        return len(self._structures)

    @property
    def primitive_cell(self) -> bool:
        """Whether the matcher reduces structures to primitive cells."""
        return self._primitive_cell

    def reduce(self, structure: Structure) -> Structure:
        """Reduce a structure the way this index's matcher would."""
        return reduce_structure(structure, self._primitive_cell)

    def reduced(self, pos: int) -> Structure:
        """The reduced form of the indexed structure at ``pos`` (memoised)."""
        if pos not in self._reduced:
            self._reduced[pos] = self.reduce(self._structures[pos])
        return self._reduced[pos]

    def scaled_lattice(self, reduced: Structure) -> Lattice:
        """The lattice the matcher's lattice search sees, up to a common factor (unit volume when scaling)."""
        if not self._scale:
            return reduced.lattice
        return Lattice(reduced.lattice.matrix / reduced.volume ** (1.0 / 3.0))

    def _lattice(self, pos: int) -> Lattice:
        if pos not in self._lattices:
            self._lattices[pos] = self.scaled_lattice(self.reduced(pos))
        return self._lattices[pos]

    def _sizes(self, formula: str) -> dict[int, list[int]]:
        """The positions of a formula bucket grouped by reduced-cell size (built on first use, in order)."""
        if formula not in self._by_size:
            groups: dict[int, list[int]] = defaultdict(list)
            for pos in self.buckets.get(formula, []):
                groups[len(self.reduced(pos))].append(pos)
            self._by_size[formula] = groups
        return self._by_size[formula]

    def candidates(self, query: Structure, reduced_query: Structure | None = None) -> list[int]:
        """Positions that may match ``query``, in index order: same formula (and cell size, prefiltering)."""
        formula = formula_key(query)
        if not self.prefilter:  # plain scan
            return [pos for pos, f in enumerate(self._formulas) if f == formula]
        if formula not in self.buckets:
            return []
        reduced_query = reduced_query if reduced_query is not None else self.reduce(query)
        return list(self._sizes(formula).get(len(reduced_query), []))

    def add(self, structure: Structure, ident: int, reduced: Structure | None = None) -> int:
        """Append a structure (and optionally its reduced form) to the index; return its position."""
        self._structures.append(structure)
        self._ids.append(ident)
        formula = formula_key(structure)
        self._formulas.append(formula)
        pos = len(self._structures) - 1
        self.buckets[formula].append(pos)
        if reduced is not None:
            self._reduced[pos] = reduced
        if formula in self._by_size:
            self._by_size[formula].setdefault(len(self.reduced(pos)), []).append(pos)
        return pos

    def lattice_can_map(self, query_lattice: Lattice, target_lattice: Lattice) -> bool:
        """Whether the matcher's lattice search (query onto target) can find a lattice (see module doc)."""
        mappings = query_lattice.find_all_mappings(
            target_lattice,
            ltol=self._ltol + _LTOL_MARGIN,
            atol=self._angle_tol + _ANGLE_MARGIN,
            skip_rotation_matrix=True,
        )
        return any(abs(abs(np.linalg.det(scale)) - 1.0) <= 0.5 + 1e-9 for _, _, scale in mappings)

    def fits(self, reduced_query: Structure, pos: int, query_lattice: Lattice | None = None) -> bool:
        """Whether a reduced query matches the indexed structure at ``pos`` (exceptions count as no match)."""
        target = self.reduced(pos)
        if self.prefilter:
            if len(reduced_query) != len(target):
                return False
            query_lattice = query_lattice if query_lattice is not None else self.scaled_lattice(reduced_query)
            if not self.lattice_can_map(query_lattice, self._lattice(pos)):
                self.n_pruned += 1
                return False
        return self._fit(reduced_query, target, skip_reduction=True)

    def _fit(self, query: Structure, target: Structure, skip_reduction: bool) -> bool:
        self.n_fits += 1
        try:
            return bool(self.matcher.fit(query, target, skip_structure_reduction=skip_reduction))
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
            candidates: Positions to try, in order (default: :meth:`candidates`). Positions that cannot match
                are skipped without calling the matcher when prefiltering.
            reduced_query: ``self.reduce(query)`` if already computed.
        """
        if not self.prefilter:
            positions = self.candidates(query) if candidates is None else list(candidates)
            for pos in positions:
                if self._fit(query, self._structures[pos], skip_reduction=False):
                    return pos
            return None
        reduced_query = reduced_query if reduced_query is not None else self.reduce(query)
        positions = self.candidates(query, reduced_query) if candidates is None else list(candidates)
        if not positions:
            return None
        query_lattice = self.scaled_lattice(reduced_query)
        for pos in positions:
            if self.fits(reduced_query, pos, query_lattice):
                return pos
        return None

    def ident(self, pos: int) -> int:
        """The identifier of the structure at ``pos``."""
        return self._ids[pos]

    def stats(self) -> dict[str, int]:
        """Matcher calls, pairs pruned by the lattice prefilter, and matcher errors so far."""
        return {"n_fits": self.n_fits, "n_pruned": self.n_pruned, "n_errors": self.n_errors}

    def reduce_all(self, settings: ParallelSettings | None = None, progress: bool = False) -> None:
        """Reduce every indexed structure now, in the worker pool, and keep the reduced forms when pickled
        (so a disk-cached index skips the reduction)."""
        missing = [
            pos for pos, s in enumerate(self._structures) if s is not None and pos not in self._reduced
        ]
        fn = functools.partial(_reduce_chunk, primitive_cell=self._primitive_cell)
        reduced, _ = map_chunks(fn, [self._structures[p] for p in missing], settings, progress, "reducing")
        self._reduced.update(zip(missing, reduced, strict=True))
        self._persist_reduced = True

    def warm(self, formulas: Iterable[str]) -> None:
        """Reduce and bucket the indexed structures of these formulas now (before forking workers)."""
        if not self.prefilter:
            return
        for formula in set(formulas):
            for positions in self._sizes(formula).values():
                for pos in positions:
                    self._lattice(pos)


def _reduce_chunk(chunk: list[Structure], primitive_cell: bool) -> list[Structure]:
    return [reduce_structure(s, primitive_cell) for s in chunk]


_SHARED_INDEX: FormulaIndex | None = None  # the index forked workers read (set only around a pool)


def _first_matches_chunk(
    chunk: list[tuple[Structure, Structure | None]],
) -> list[tuple[int | None, dict[str, int]]]:
    index = _SHARED_INDEX
    assert index is not None
    out = []
    for query, reduced in chunk:
        before = index.stats()
        hit = index.first_match(query, reduced_query=reduced)
        after = index.stats()
        out.append((hit, {k: after[k] - before[k] for k in after}))
    return out


def first_matches(
    index: FormulaIndex,
    queries: Sequence[Structure],
    reduced_queries: Sequence[Structure | None] | None = None,
    settings: ParallelSettings | None = None,
    progress: bool = False,
    desc: str = "matching",
) -> list[int | None]:
    """``index.first_match`` of every query, in a forked worker pool for large inputs; same results in order.

    Queries are independent (the index is only read), so the answers do not depend on how they are split.
    The matcher call counters of ``index`` are updated as if the queries ran here.
    """
    global _SHARED_INDEX
    reduced = list(reduced_queries) if reduced_queries is not None else [None] * len(queries)
    index.warm(formula_key(q) for q in queries)
    _SHARED_INDEX = index
    try:
        results, in_workers = map_chunks(
            _first_matches_chunk,
            list(zip(queries, reduced, strict=True)),
            settings,
            progress,
            desc,
            require_fork=True,
        )
    finally:
        _SHARED_INDEX = None
    if in_workers:  # the workers counted on their copies of the index
        for _, delta in results:
            index.n_fits += delta["n_fits"]
            index.n_pruned += delta["n_pruned"]
            index.n_errors += delta["n_errors"]
    return [hit for hit, _ in results]
