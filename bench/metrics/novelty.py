"""Uniqueness and novelty of the valid generated structures, decided by pymatgen's ``StructureMatcher``.

CDVAE defines the matcher convention (Xie et al. 2022, CDVAE, scripts/compute_metrics.py ``RecEval``:
stol 0.5, ltol 0.3, angle_tol 10); uniqueness and novelty over valid samples follow the usage of later
benchmarks (e.g. jiaor17/DiffCSP, microsoft/mattergen). Only structures with the same reduced formula are
compared (the matcher's own composition check would reject the others).

- ``unique``: fraction of valid structures that match no *earlier* valid structure of the set.
- ``novel``: fraction of valid structures that match no training structure; ``memorized`` = 1 - ``novel``.
- ``vun_rate``: fraction of *all requested* samples that are valid AND unique AND novel, decided per structure
  (:func:`vun_flags`). "Unique" is attributed to the first member of each duplicate class in sample order: a
  valid structure is unique when it matches no earlier valid structure (the per-structure ``unique`` column),
  so a class of k matching structures contributes at most one. This is MatterGen's convention
  (microsoft/mattergen: mattergen/evaluation/metrics/structure.py, ``StructureMetricsCapability.is_unique``
  "True for the first structure from a set of duplicates", ``FracNovelUniqueStructures`` = mean of
  ``is_novel & is_unique`` over all samples, with validity added to the conjunction). It is not the
  product valid × unique × novel of the three rates: uniqueness and novelty are not independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import metadata
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from bench.metrics.base import MetricResult, ReferenceSet
from bench.metrics.generated import GeneratedSet
from bench.metrics.matching import (
    FormulaIndex,
    build_matcher,
    first_matches,
    matcher_params,
    reduce_structure,
)
from bench.metrics.settings import MatcherSettings, MetricSettings, settings_hash

__all__ = ["Memorized", "Novel", "Unique", "VUNRate", "reduced_generated", "vun_flags"]


def reduced_generated(gset: GeneratedSet, i: int, primitive_cell: bool) -> Structure:
    """The matcher-reduced form of generated item ``i``, computed once per run (shared by matcher metrics)."""
    cache = gset.memo(("reduced_structures", primitive_cell), dict)
    if i not in cache:
        cache[i] = reduce_structure(gset[i], primitive_cell)
    return cache[i]


def vun_flags(valid: Sequence[Any], unique: Sequence[Any], novel: Sequence[Any]) -> np.ndarray:
    """Per structure: valid AND unique AND novel (missing / NaN / NA counts as false).

    The one definition used by :class:`VUNRate` and by the re-scoring of stored per-sample tables
    (:mod:`bench.rescore`).

    Args:
        valid: Per-sample validity flags.
        unique: Per-sample uniqueness (1/True for the first member of each duplicate class; NaN when invalid).
        novel: Per-sample novelty against the training split (NaN when invalid).

    Returns:
        Boolean array, one entry per sample.
    """

    def as_bool(values: Sequence[Any]) -> np.ndarray:
        return np.array([bool(v) if not pd.isna(v) else False for v in values], dtype=bool)

    flags = [as_bool(v) for v in (valid, unique, novel)]
    if len({len(f) for f in flags}) != 1:
        raise ValueError(f"valid, unique and novel differ in length: {[len(f) for f in flags]}")
    return flags[0] & flags[1] & flags[2]


def _uniqueness(gset: GeneratedSet, settings: MatcherSettings) -> dict[str, Any]:
    """Per-item uniqueness of valid items: each is compared with every earlier valid item of its formula."""
    matcher = build_matcher(settings)
    index = FormulaIndex([], matcher, prefilter=settings.prefilter)
    n = len(gset)
    unique = np.full(n, np.nan)
    duplicate_of = pd.array([pd.NA] * n, dtype="Int64")
    is_first: list[bool] = []  # per index position: matched nothing earlier
    valid = gset.valid_indices
    for i in tqdm(valid, desc="unique", unit="struct", disable=not gset.progress, leave=False):
        structure = gset[int(i)]
        reduced = reduced_generated(gset, int(i), index.primitive_cell) if index.prefilter else None
        earlier = index.candidates(structure, reduced)
        # Any match makes the item a duplicate, so order only matters for speed: first occurrences first.
        ordered = [p for p in earlier if is_first[p]] + [p for p in earlier if not is_first[p]]
        hit = index.first_match(structure, ordered, reduced_query=reduced)
        index.add(structure, int(i), reduced=reduced)
        is_first.append(hit is None)
        unique[i] = float(hit is None)
        if hit is not None:
            duplicate_of[i] = index.ident(hit)
    return {
        "unique": unique,
        "duplicate_of": duplicate_of,
        "n_valid": len(valid),
        "n_unique": int(np.nansum(unique)),
        "n_match_errors": index.n_errors,
        "matcher_calls": index.stats(),
        "matcher": matcher_params(matcher),
    }


def _novelty(gset: GeneratedSet, prepared: FormulaIndex) -> dict[str, Any]:
    """Per-item novelty of valid items against the prepared training index."""
    n = len(gset)
    novel = np.full(n, np.nan)
    match_id = pd.array([pd.NA] * n, dtype="Int64")
    valid = [int(i) for i in gset.valid_indices]
    before = prepared.stats()
    reduced = (
        [reduced_generated(gset, i, prepared.primitive_cell) for i in valid] if prepared.prefilter else None
    )
    hits = first_matches(prepared, [gset[i] for i in valid], reduced, gset.parallel, gset.progress, "novel")
    for i, hit in zip(valid, hits, strict=True):
        novel[i] = float(hit is None)
        if hit is not None:
            match_id[i] = prepared.ident(hit)
    after = prepared.stats()
    return {
        "novel": novel,
        "novel_match_id": match_id,
        "n_valid": len(valid),
        "n_novel": int(np.nansum(novel)),
        "n_match_errors": after["n_errors"] - before["n_errors"],
        "matcher_calls": {k: after[k] - before[k] for k in after},
        "matcher": matcher_params(prepared.matcher),
    }


def _pymatgen_version() -> str | None:
    try:
        return metadata.version("pymatgen")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return None


class _MatcherMetric:
    direction: Literal["max", "min"] = "max"
    version: str = "1.0"
    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    def settings_key(self) -> dict[str, Any]:
        """The settings the reference side depends on (part of the prepare cache key)."""
        return {"matcher": self.settings.to_dict()["matcher"]}


class Unique(_MatcherMetric):
    """Fraction of valid generated structures that match no earlier valid generated structure."""

    name = "unique"
    description = "fraction of valid structures matching no earlier valid structure (StructureMatcher)"
    cacheable: ClassVar[bool] = False  # nothing reference-side

    def prepare(self, reference: ReferenceSet) -> None:
        """No reference-side work."""
        return None

    def __call__(self, generated: Sequence[Structure | None], prepared: Any = None) -> MetricResult:
        gset = GeneratedSet.wrap(generated, self.settings.validity)
        key = ("unique", settings_hash(self.settings.to_dict()["matcher"]))
        res = gset.memo(key, lambda: _uniqueness(gset, self.settings.matcher))
        n_valid = res["n_valid"]
        extra: dict[str, Any] = {
            "n_unique": res["n_unique"],
            "n_valid": n_valid,
            "n_match_errors": res["n_match_errors"],
            "matcher_calls": res["matcher_calls"],
            "matcher_convention": self.settings.matcher.convention,
            "per_sample_columns": {"duplicate_of": res["duplicate_of"]},
        }
        if not n_valid:
            extra["reason"] = "no valid structures"
        value = res["n_unique"] / n_valid if n_valid else math.nan
        return MetricResult(value=value, per_sample=res["unique"], extra=extra)


class Novel(_MatcherMetric):
    """Fraction of valid generated structures that match no training structure."""

    name = "novel"
    description = "fraction of valid structures matching no training structure (StructureMatcher)"
    cacheable: ClassVar[bool] = True  # the reduced training structures (~1 kB each)
    prepare_key: ClassVar[str] = "novel"
    reference_splits: ClassVar[tuple[str, ...]] = ("train",)
    progress: bool = False

    def settings_key(self) -> dict[str, Any]:
        """The matcher settings, and the pymatgen version (the cache holds pickled reduced structures)."""
        return {**super().settings_key(), "pymatgen": _pymatgen_version()}

    def prepare(self, reference: ReferenceSet) -> FormulaIndex:
        """Bucket the training structures by reduced formula and reduce them as the matcher would (cached)."""
        index = FormulaIndex(
            reference.train, build_matcher(self.settings.matcher), prefilter=self.settings.matcher.prefilter
        )
        if index.prefilter:
            index.reduce_all(self.settings.parallel, progress=self.progress)
        return index

    def _result(self, generated: Sequence[Structure | None], prepared: FormulaIndex) -> dict[str, Any]:
        gset = GeneratedSet.wrap(generated, self.settings.validity)
        key = ("novelty", id(prepared))
        held, res = gset.memo(key, lambda: (prepared, _novelty(gset, prepared)))
        if held is not prepared:  # pragma: no cover - id reuse after the prepared object was freed
            res = _novelty(gset, prepared)
        return res

    def __call__(self, generated: Sequence[Structure | None], prepared: FormulaIndex) -> MetricResult:
        res = self._result(generated, prepared)
        n_valid = res["n_valid"]
        extra: dict[str, Any] = {
            "n_novel": res["n_novel"],
            "n_valid": n_valid,
            "n_match_errors": res["n_match_errors"],
            "matcher_calls": res["matcher_calls"],
            "matcher_convention": self.settings.matcher.convention,
            "per_sample_columns": {"novel_match_id": res["novel_match_id"]},
        }
        if not n_valid:
            extra["reason"] = "no valid structures"
        value = res["n_novel"] / n_valid if n_valid else math.nan
        return MetricResult(value=value, per_sample=res["novel"], extra=extra)


class Memorized(Novel):
    """Fraction of valid generated structures that reproduce a training structure (1 - novel)."""

    name = "memorized"
    direction: Literal["max", "min"] = "min"
    description = "fraction of valid structures matching a training structure (1 - novel)"

    def __call__(self, generated: Sequence[Structure | None], prepared: FormulaIndex) -> MetricResult:
        res = self._result(generated, prepared)
        n_valid = res["n_valid"]
        n_memorized = n_valid - res["n_novel"]
        extra: dict[str, Any] = {
            "n_memorized": n_memorized,
            "n_valid": n_valid,
            "matcher_convention": self.settings.matcher.convention,
        }
        if not n_valid:
            extra["reason"] = "no valid structures"
        value = n_memorized / n_valid if n_valid else math.nan
        return MetricResult(value=value, per_sample=1.0 - res["novel"], extra=extra)


class VUNRate(Novel):
    """Fraction of all requested samples that are valid, unique and novel, decided per structure (MatterGen).

    The numerator counts structures with ``valid`` AND ``unique`` (first member of its duplicate class) AND
    ``novel``; the denominator is every generated item, constructed or not. See the module docstring for the
    definition and its sources.
    """

    name = "vun_rate"
    version = "2.0"  # 2.0: per structure; 1.x was the board's product valid × unique × novel (never stored)
    description = (
        "fraction of all samples that are valid AND unique (first of their duplicate class) AND novel, "
        "per structure (MatterGen)"
    )

    def __call__(self, generated: Sequence[Structure | None], prepared: FormulaIndex) -> MetricResult:
        gset = GeneratedSet.wrap(generated, self.settings.validity)
        key = ("unique", settings_hash(self.settings.to_dict()["matcher"]))
        uniq = gset.memo(key, lambda: _uniqueness(gset, self.settings.matcher))
        nov = self._result(generated, prepared)
        flags = vun_flags(gset.flags("valid"), uniq["unique"], nov["novel"])
        n = len(flags)
        extra: dict[str, Any] = {"n_vun": int(flags.sum()), "n_generated": n,
                                 "matcher_convention": self.settings.matcher.convention}
        if not n:
            extra["reason"] = "no generated items"
        return MetricResult(value=float(flags.mean()) if n else math.nan, per_sample=flags.astype(float),
                            extra=extra)
