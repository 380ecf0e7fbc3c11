"""Distribution metrics: how far the valid generated structures are from the test split.

- ``wdist_density``, ``wdist_num_elems``: Wasserstein-1 distance (``scipy.stats.wasserstein_distance``)
  between density (g/cm^3) or number-of-distinct-elements values, as in Xie et al. 2022, CDVAE,
  scripts/compute_metrics.py (``GenEval.get_density_wdist`` / ``get_num_elem_wdist``): a draw of up to 1000
  valid generated structures against the whole test split.
- ``jsd_spacegroup``, ``jsd_elements``: Jensen-Shannon distance (``scipy.spatial.distance.jensenshannon``,
  base 2, so 0 = identical and 1 = disjoint) between space-group-number histograms (spglib through pymatgen's
  ``SpacegroupAnalyzer``; failures are counted and left out) and element-frequency histograms.

All four use the same seeded draw of valid generated structures (``distribution.max_samples``, ``seed``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pymatgen.core import Element, Structure
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from bench.metrics.base import MetricResult, ReferenceSet
from bench.metrics.generated import GeneratedSet
from bench.metrics.settings import DistributionSettings, MetricSettings

__all__ = ["JSDElements", "JSDSpacegroup", "WDistDensity", "WDistNumElems", "spacegroup_number"]

logger = logging.getLogger(__name__)

N_SPACEGROUPS = 230
MAX_Z = 118


def spacegroup_number(structure: Structure, symprec: float = 0.1, angle_tolerance: float = 5.0) -> int | None:
    """International space-group number from spglib (via pymatgen), or None when symmetry detection fails."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        number = SpacegroupAnalyzer(
            structure, symprec=symprec, angle_tolerance=angle_tolerance
        ).get_space_group_number()
    except Exception as err:  # spglib raises or returns nothing on degenerate cells
        logger.debug("space-group detection failed: %s", err)
        return None
    return int(number) if number else None


def _num_elems(structure: Structure) -> int:
    """Number of distinct elements (CDVAE: ``len(set(structure.species))``; oxidation states are ignored)."""
    return len(structure.composition.element_composition)


def _element_counts(structures: Sequence[Structure], weight: str) -> np.ndarray:
    counts = np.zeros(MAX_Z + 1)
    for s in structures:
        for el, amount in s.composition.element_composition.items():
            counts[Element(el.symbol).Z] += 1.0 if weight == "presence" else float(amount)
    return counts


def _spacegroup_counts(numbers: Sequence[int | None]) -> tuple[np.ndarray, int]:
    counts = np.zeros(N_SPACEGROUPS + 1)
    failures = 0
    for n in numbers:
        if n is None:
            failures += 1
        else:
            counts[n] += 1
    return counts, failures


def _reference_structures(reference: ReferenceSet) -> list[Structure]:
    test = [s for s in reference.test if s is not None]
    if len(test) < len(reference.test):
        logger.warning(
            "%s test split: %d missing structures skipped", reference.name, len(reference.test) - len(test)
        )
    if not test:
        raise ValueError(
            f"reference set {reference.name!r} has no test structures; distribution metrics need them"
        )
    return test


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(jensenshannon(p, q, base=2))


class _DistributionMetric:
    direction: Literal["max", "min"] = "min"
    version: str = "1.0"
    cacheable: ClassVar[bool] = True
    reference_splits: ClassVar[tuple[str, ...]] = ("test",)
    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    @property
    def dist(self) -> DistributionSettings:
        return self.settings.distribution

    def settings_key(self) -> dict[str, Any]:
        """The settings this metric's reference side depends on (part of its cache key)."""
        return {}

    def _sample(
        self, generated: Sequence[Structure | None]
    ) -> tuple[GeneratedSet, np.ndarray, dict[str, Any]]:
        gset = GeneratedSet.wrap(generated, self.settings.validity)
        idx = gset.distribution_sample(self.dist)
        n_valid = len(gset.valid_indices)
        extra = {
            "n_generated_used": len(idx),
            "n_valid": n_valid,
            "subsampled": len(idx) < n_valid,
            "max_samples": self.dist.max_samples,
            "seed": self.dist.seed,
        }
        return gset, idx, extra


class _WDist(_DistributionMetric):
    def _value(self, structure: Structure) -> float:
        raise NotImplementedError

    def prepare(self, reference: ReferenceSet) -> dict[str, Any]:
        """The test split's values."""
        test = _reference_structures(reference)
        return {"values": np.array([self._value(s) for s in test], dtype=float), "n_reference": len(test)}

    def __call__(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> MetricResult:
        gset, idx, extra = self._sample(generated)
        extra["n_reference"] = prepared["n_reference"]
        if not len(idx):
            return MetricResult(value=math.nan, extra={**extra, "reason": "no valid structures"})
        values = np.array([self._value(gset[int(i)]) for i in idx], dtype=float)
        return MetricResult(value=float(wasserstein_distance(values, prepared["values"])), extra=extra)


class WDistDensity(_WDist):
    """W1 distance between densities (g/cm^3) of valid generated and test structures."""

    name = "wdist_density"
    description = "Wasserstein-1 distance of density (g/cm^3), valid generated vs test (CDVAE)"

    def _value(self, structure: Structure) -> float:
        return float(structure.density)


class WDistNumElems(_WDist):
    """W1 distance between numbers of distinct elements of valid generated and test structures."""

    name = "wdist_num_elems"
    description = "Wasserstein-1 distance of the number of distinct elements, valid generated vs test (CDVAE)"

    def _value(self, structure: Structure) -> float:
        return float(_num_elems(structure))


class JSDSpacegroup(_DistributionMetric):
    """Jensen-Shannon distance between space-group histograms of valid generated and test structures."""

    name = "jsd_spacegroup"
    description = "Jensen-Shannon distance (base 2) of space-group numbers (spglib), valid generated vs test"

    def settings_key(self) -> dict[str, Any]:
        return {"symprec": self.dist.symprec, "angle_tolerance": self.dist.angle_tolerance}

    def _numbers(self, structures: Sequence[Structure], progress: bool, desc: str) -> list[int | None]:
        bar = tqdm(structures, desc=desc, unit="struct", disable=not progress, leave=False)
        return [spacegroup_number(s, self.dist.symprec, self.dist.angle_tolerance) for s in bar]

    def prepare(self, reference: ReferenceSet) -> dict[str, Any]:
        """Space-group histogram of the test split (the slow part; cached on disk by the runner)."""
        test = _reference_structures(reference)
        counts, failures = _spacegroup_counts(self._numbers(test, progress=False, desc="spacegroups (test)"))
        return {"counts": counts, "n_failures": failures, "n_reference": len(test)}

    def __call__(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> MetricResult:
        gset, idx, extra = self._sample(generated)
        key = (
            "spacegroups",
            self.dist.symprec,
            self.dist.angle_tolerance,
            self.dist.max_samples,
            self.dist.seed,
        )
        numbers = gset.memo(
            key, lambda: self._numbers([gset[int(i)] for i in idx], gset.progress, "spacegroups")
        )
        counts, failures = _spacegroup_counts(numbers)
        column = pd.array([pd.NA] * len(gset), dtype="Int64")
        for i, n in zip(idx, numbers, strict=True):
            if n is not None:
                column[int(i)] = n
        extra.update(
            n_failures=failures,
            n_reference=prepared["n_reference"],
            n_reference_failures=prepared["n_failures"],
            symprec=self.dist.symprec,
            angle_tolerance=self.dist.angle_tolerance,
            per_sample_columns={"spacegroup": column},
        )
        value = _jsd(counts, prepared["counts"])
        if math.isnan(value):
            extra["reason"] = "no space group determined for the generated draw"
        return MetricResult(value=value, extra=extra)


class JSDElements(_DistributionMetric):
    """Jensen-Shannon distance between element-frequency histograms of valid generated and test structures."""

    name = "jsd_elements"
    description = "Jensen-Shannon distance (base 2) of element frequencies, valid generated vs test"

    def settings_key(self) -> dict[str, Any]:
        return {"element_weight": self.dist.element_weight}

    def prepare(self, reference: ReferenceSet) -> dict[str, Any]:
        """Element histogram of the test split."""
        test = _reference_structures(reference)
        return {"counts": _element_counts(test, self.dist.element_weight), "n_reference": len(test)}

    def __call__(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> MetricResult:
        gset, idx, extra = self._sample(generated)
        counts = _element_counts([gset[int(i)] for i in idx], self.dist.element_weight)
        extra.update(n_reference=prepared["n_reference"], element_weight=self.dist.element_weight)
        value = _jsd(counts, prepared["counts"])
        if math.isnan(value):
            extra["reason"] = "no valid structures"
        return MetricResult(value=value, extra=extra)
