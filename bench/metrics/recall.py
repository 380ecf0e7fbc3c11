"""Generalisation: ``test_recall``, the fraction of test structures that the valid generated set reproduces.

A test structure counts as recalled when at least one valid generated structure matches it under the
configured ``StructureMatcher`` convention (``matcher.convention``; CDVAE's ``RecEval`` tolerances by
default), comparing only structures with the same reduced formula. The matcher is called as
``fit(test, generated)``. This complements ``memorized`` (generated structures that reproduce *training*
structures): a model that generalises recovers held-out structures it never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any, ClassVar, Literal

import numpy as np
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
from bench.metrics.novelty import reduced_generated
from bench.metrics.settings import MetricSettings

__all__ = ["TestRecall"]

logger = logging.getLogger(__name__)


class TestRecall:
    """Fraction of test structures matched by at least one valid generated structure."""

    __test__ = False  # not a pytest class despite the name

    name = "test_recall"
    direction: Literal["max", "min"] = "max"
    description = "fraction of test structures matched by a valid generated structure (StructureMatcher)"
    version = "1.0"
    cacheable: ClassVar[bool] = True
    prepare_key: ClassVar[str] = "test_recall"
    reference_splits: ClassVar[tuple[str, ...]] = ("test",)
    progress: bool = False

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    def settings_key(self) -> dict[str, Any]:
        """The matcher settings decide the reduction; pickled structures depend on the pymatgen version."""
        try:
            pmg = metadata.version("pymatgen")
        except metadata.PackageNotFoundError:  # pragma: no cover
            pmg = None
        return {"matcher": self.settings.to_dict()["matcher"], "pymatgen": pmg}

    def prepare(self, reference: ReferenceSet) -> dict[str, Any]:
        """The test structures, reduced as the matcher reduces them (when prefiltering; cached on disk)."""
        matcher = build_matcher(self.settings.matcher)
        index = FormulaIndex([], matcher, prefilter=self.settings.matcher.prefilter)
        test = list(reference.test)
        if index.prefilter:
            bar = tqdm(
                test, desc="reducing test structures", unit="struct", disable=not self.progress, leave=False
            )
            test = [reduce_structure(s, index.primitive_cell) if s is not None else None for s in bar]
        return {"structures": test, "reduced": index.prefilter, "n_reference": len(test)}

    def __call__(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> MetricResult:
        gset = GeneratedSet.wrap(generated, self.settings.validity, parallel=self.settings.parallel)
        matcher = build_matcher(self.settings.matcher)
        valid = [int(i) for i in gset.valid_indices]
        prefilter = self.settings.matcher.prefilter and prepared["reduced"]
        primitive = bool(matcher.as_dict()["primitive_cell"])
        reduced = (
            {k: reduced_generated(gset, i, primitive) for k, i in enumerate(valid)} if prefilter else None
        )
        index = FormulaIndex(
            [gset[i] for i in valid], matcher, ids=valid, prefilter=prefilter, reduced=reduced
        )
        structures: list[Structure | None] = prepared["structures"]
        matched = np.zeros(len(structures), dtype=bool)
        if valid:
            present = [t for t, s in enumerate(structures) if s is not None]
            queries = [structures[t] for t in present]
            hits = first_matches(
                index, queries, queries if prefilter else None, gset.parallel, gset.progress, "test_recall"
            )
            for t, hit in zip(present, hits, strict=True):
                matched[t] = hit is not None
        n_reference = sum(s is not None for s in structures)
        extra: dict[str, Any] = {
            "n_matched": int(matched.sum()),
            "n_reference": n_reference,
            "n_valid": len(valid),
            "n_match_errors": index.n_errors,
            "matcher_calls": index.stats(),
            "matcher_convention": self.settings.matcher.convention,
            "matcher": matcher_params(matcher),
        }
        if not n_reference:
            return MetricResult(value=float("nan"), extra={**extra, "reason": "no test structures"})
        if not valid:
            extra["note"] = "no valid generated structures: nothing recalled"
        return MetricResult(value=float(matched.sum()) / n_reference, extra=extra)
