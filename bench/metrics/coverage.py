"""Coverage of the test split in fingerprint space: COV-R, COV-P, AMSD and AMCD (CDVAE).

Definitions: Xie et al. 2022, CDVAE, scripts/eval_utils.py ``compute_cov`` as called by
scripts/compute_metrics.py ``GenEval.get_coverage``:

- Generated side: every generated item whose fingerprints could be computed (CDVAE passes *all* generated
  crystals and drops only those without fingerprints; invalid but fingerprintable structures take part).
- Reference side: every test structure, in CDVAE's form (Niggli-reduced, ``bench.metrics.fingerprints``).
- Distances: Euclidean between CrystalNN structure fingerprints, and between Magpie composition fingerprints
  scaled with CDVAE's fixed ``CompScaler``. Structure and composition minima are taken independently.
- ``cov_recall``: fraction of test structures whose nearest generated structure fingerprint is within
  ``cov_cutoffs.struct`` and nearest generated composition fingerprint within ``cov_cutoffs.comp``.
- ``cov_precision``: number of fingerprinted generated items with both nearest test distances within the
  cutoffs, divided by the number of *all* generated items (CDVAE's ``num_gen_crystals``, taken before
  dropping items without fingerprints).
- ``amsd_*`` / ``amcd_*``: mean of those nearest structure / composition distances over the test structures
  (recall) or the fingerprinted generated items (precision).

Cutoffs are per dataset (CDVAE ``COV_Cutoffs``: perov_5 and carbon_24 0.2 / 4, mp_20 0.4 / 10) and arrive as
``cov_cutoffs`` in the metrics config, copied from the dataset config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pymatgen.core import Structure
from scipy.spatial.distance import cdist

from bench.metrics.base import MetricResult, ReferenceSet
from bench.metrics.fingerprints import fingerprint_versions, reference_fingerprints, scale_composition, stack
from bench.metrics.generated import GeneratedSet
from bench.metrics.settings import MetricSettings

__all__ = [
    "AMCDPrecision",
    "AMCDRecall",
    "AMSDPrecision",
    "AMSDRecall",
    "COVPrecision",
    "COVRecall",
    "nearest_distances",
]

_CHUNK = 1024  # generated rows per distance block: bounds memory at 1024 x n_reference floats


def nearest_distances(
    generated: np.ndarray, reference: np.ndarray, chunk: int = _CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour Euclidean distances between two point sets, in blocks.

    Args:
        generated: ``(n_gen, d)`` points.
        reference: ``(n_ref, d)`` points.
        chunk: Rows of ``generated`` per block.

    Returns:
        ``(precision, recall)``: for each generated point the distance to its nearest reference point, and
        for each reference point the distance to its nearest generated point (``inf`` when a side is empty).
    """
    precision = np.full(len(generated), np.inf)
    recall = np.full(len(reference), np.inf)
    if not len(generated) or not len(reference):
        return precision, recall
    for start in range(0, len(generated), chunk):
        block = cdist(generated[start : start + chunk], reference)
        precision[start : start + chunk] = block.min(axis=1)
        np.minimum(recall, block.min(axis=0), out=recall)
    return precision, recall


def _coverage(gset: GeneratedSet, prepared: dict[str, Any]) -> dict[str, Any]:
    """Nearest distances between every fingerprinted generated item and the fingerprinted test structures."""
    fps = gset.fingerprints()  # every constructed item
    index = np.array([i for i in range(len(gset)) if fps[i].ok], dtype=int)
    struct, comp_raw = stack([fps[int(i)] for i in index])
    struct_prec, struct_rec = nearest_distances(struct, prepared["struct"])
    comp_prec, comp_rec = nearest_distances(scale_composition(comp_raw), prepared["comp_scaled"])
    return {
        "index": index,
        "struct_precision": struct_prec,
        "struct_recall": struct_rec,
        "comp_precision": comp_prec,
        "comp_recall": comp_rec,
        "n_generated": len(gset),
        "n_without_fingerprint": len(gset) - len(index),
    }


class _CoverageMetric:
    """Shared reference side (test-split fingerprints, cached on disk) and generated side (memoised)."""

    name: ClassVar[str]
    description: ClassVar[str]
    direction: Literal["max", "min"] = "max"
    version: str = "1.0"
    cacheable: ClassVar[bool] = True
    prepare_key: ClassVar[str] = "test_fingerprints"
    reference_splits: ClassVar[tuple[str, ...]] = ("test",)
    needs_cutoffs: ClassVar[bool] = False
    progress: bool = False

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    def settings_key(self) -> dict[str, Any]:
        """What the cached reference fingerprints depend on: the fingerprint code and package versions."""
        return {"fingerprints": fingerprint_versions(), "reference_form": "cdvae_niggli"}

    def prepare(self, reference: ReferenceSet) -> dict[str, Any]:
        """Fingerprints of the test split (the slow part: ~0.04 s per 5-atom structure; cached on disk)."""
        return reference_fingerprints(
            reference.test, self.settings.parallel, progress=self.progress, desc="fingerprints (test)"
        )

    def _result(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> dict[str, Any]:
        gset = GeneratedSet.wrap(generated, self.settings.validity, parallel=self.settings.parallel)
        held, res = gset.memo(("coverage", id(prepared)), lambda: (prepared, _coverage(gset, prepared)))
        if held is not prepared:  # pragma: no cover - id reuse after the prepared object was freed
            res = _coverage(gset, prepared)
        return res

    def _extra(self, res: dict[str, Any], prepared: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "n_generated": res["n_generated"],
            "n_generated_used": len(res["index"]),
            "n_without_fingerprint": res["n_without_fingerprint"],
            "n_reference": prepared["n_reference"],
            "n_reference_used": len(prepared["struct"]),
            "n_reference_failed": prepared["n_failed"],
        }
        cutoffs = self.settings.cov_cutoffs
        if cutoffs is not None:
            extra["cov_cutoffs"] = {"struct": cutoffs.struct, "comp": cutoffs.comp}
        return extra

    def _undefined(self, res: dict[str, Any], prepared: dict[str, Any]) -> str | None:
        if self.needs_cutoffs and self.settings.cov_cutoffs is None:
            return "no cov_cutoffs in the metrics config (the dataset config provides them)"
        if not len(prepared["struct"]):
            return "no test structure has fingerprints"
        if not len(res["index"]):
            return "no generated structure has fingerprints"
        return None

    def __call__(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> MetricResult:
        res = self._result(generated, prepared)
        extra = self._extra(res, prepared)
        reason = self._undefined(res, prepared)
        if reason is not None:
            return MetricResult(value=math.nan, extra={**extra, "reason": reason})
        return self._score(res, extra)

    def _score(self, res: dict[str, Any], extra: dict[str, Any]) -> MetricResult:
        raise NotImplementedError

    def _per_generated(self, res: dict[str, Any], values: np.ndarray, fill: float = math.nan) -> np.ndarray:
        out = np.full(res["n_generated"], fill)
        out[res["index"]] = values
        return out


class COVRecall(_CoverageMetric):
    """Fraction of test structures with a generated structure and composition within the cutoffs (COV-R)."""

    name = "cov_recall"
    description = (
        "fraction of test structures covered by a generated one within the fingerprint cutoffs (CDVAE COV-R)"
    )
    needs_cutoffs = True

    def _score(self, res: dict[str, Any], extra: dict[str, Any]) -> MetricResult:
        cut = self.settings.cov_cutoffs
        assert cut is not None
        covered = (res["struct_recall"] <= cut.struct) & (res["comp_recall"] <= cut.comp)
        return MetricResult(value=float(covered.mean()), extra={**extra, "n_covered": int(covered.sum())})


class COVPrecision(_CoverageMetric):
    """Fraction of all generated items within the cutoffs of some test structure (COV-P)."""

    name = "cov_precision"
    description = (
        "fraction of generated items within the fingerprint cutoffs of a test structure, over all generated "
        "(CDVAE COV-P)"
    )
    needs_cutoffs = True

    def _score(self, res: dict[str, Any], extra: dict[str, Any]) -> MetricResult:
        cut = self.settings.cov_cutoffs
        assert cut is not None
        close = (res["struct_precision"] <= cut.struct) & (res["comp_precision"] <= cut.comp)
        per_sample = self._per_generated(res, close.astype(float), fill=0.0)
        value = float(close.sum()) / res["n_generated"]
        return MetricResult(
            value=value, per_sample=per_sample, extra={**extra, "n_precise": int(close.sum())}
        )


class _MeanNearest(_CoverageMetric):
    """Mean nearest-neighbour fingerprint distance (CDVAE AMSD / AMCD), lower is better.

    ``distances`` names the per-item distances of :func:`_coverage` to average: ``*_recall`` ones are per test
    structure, ``*_precision`` ones per fingerprinted generated item (and so also give a per-sample column).
    """

    direction: Literal["max", "min"] = "min"
    distances: ClassVar[str]

    def _score(self, res: dict[str, Any], extra: dict[str, Any]) -> MetricResult:
        values = res[self.distances]
        per_sample = self._per_generated(res, values) if self.distances.endswith("_precision") else None
        return MetricResult(value=float(np.mean(values)), per_sample=per_sample, extra=extra)


class AMSDRecall(_MeanNearest):
    """Mean over test structures of the distance to the nearest generated structure fingerprint."""

    name = "amsd_recall"
    distances = "struct_recall"
    description = "mean nearest structure-fingerprint distance from test to generated (CDVAE AMSD-R)"


class AMSDPrecision(_MeanNearest):
    """Mean over fingerprinted generated items of the distance to the nearest test structure fingerprint."""

    name = "amsd_precision"
    distances = "struct_precision"
    description = "mean nearest structure-fingerprint distance from generated to test (CDVAE AMSD-P)"


class AMCDRecall(_MeanNearest):
    """Mean over test structures of the distance to the nearest scaled composition fingerprint."""

    name = "amcd_recall"
    distances = "comp_recall"
    description = "mean nearest composition-fingerprint distance from test to generated (CDVAE AMCD-R)"


class AMCDPrecision(_MeanNearest):
    """Mean over fingerprinted generated items of the distance to the nearest test composition fingerprint."""

    name = "amcd_precision"
    distances = "comp_precision"
    description = "mean nearest composition-fingerprint distance from generated to test (CDVAE AMCD-P)"
