"""Diversity of the valid generated structures: ``comp_div`` and ``struct_div`` (CDVAE).

Definitions: Xie et al. 2022, CDVAE, scripts/compute_metrics.py ``GenEval.get_comp_diversity`` /
``get_struct_diversity`` with scripts/eval_utils.py ``get_fp_pdist``: the mean pairwise Euclidean distance
(``scipy.spatial.distance.pdist``) between the fingerprints of the drawn valid structures (the same
seeded draw of up to ``distribution.max_samples`` as the distribution metrics; CDVAE draws 1000
unseeded). Composition fingerprints are scaled with CDVAE's fixed ``CompScaler`` first; structure
fingerprints are used as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pymatgen.core import Structure
from scipy.spatial.distance import pdist

from bench.metrics.base import GeneratedOnlyMetric, MetricResult
from bench.metrics.fingerprints import scale_composition, stack
from bench.metrics.generated import GeneratedSet

__all__ = ["CompDiv", "StructDiv", "mean_pairwise_distance"]


def mean_pairwise_distance(points: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows (CDVAE ``get_fp_pdist``); NaN for fewer than 2 rows."""
    if len(points) < 2:
        return math.nan
    return float(pdist(points).mean())


class _Diversity(GeneratedOnlyMetric):
    name: ClassVar[str]
    description: ClassVar[str]
    direction: Literal["max", "min"] = "max"

    def _points(self, struct: np.ndarray, comp_raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, generated: Sequence[Structure | None], prepared: Any = None) -> MetricResult:
        gset = GeneratedSet.wrap(generated, self.settings.validity, parallel=self.settings.parallel)
        idx = gset.distribution_sample(self.settings.distribution)
        fps = gset.fingerprints(idx)
        struct, comp_raw = stack([fps[int(i)] for i in idx])
        extra: dict[str, Any] = {
            "n_generated_used": len(struct),
            "n_valid": len(gset.valid_indices),
            "n_without_fingerprint": len(idx) - len(struct),
            "max_samples": self.settings.distribution.max_samples,
            "seed": self.settings.distribution.seed,
        }
        value = mean_pairwise_distance(self._points(struct, comp_raw))
        if math.isnan(value):
            extra["reason"] = "fewer than two valid structures with fingerprints"
        return MetricResult(value=value, extra=extra)


class CompDiv(_Diversity):
    """Mean pairwise distance between scaled Magpie fingerprints of the drawn valid structures."""

    name = "comp_div"
    description = "mean pairwise distance of scaled Magpie composition fingerprints, valid generated (CDVAE)"

    def _points(self, struct: np.ndarray, comp_raw: np.ndarray) -> np.ndarray:
        return scale_composition(comp_raw)


class StructDiv(_Diversity):
    """Mean pairwise distance between CrystalNN structure fingerprints of the drawn valid structures."""

    name = "struct_div"
    description = "mean pairwise distance of CrystalNN structure fingerprints, valid generated (CDVAE)"

    def _points(self, struct: np.ndarray, comp_raw: np.ndarray) -> np.ndarray:
        return struct
