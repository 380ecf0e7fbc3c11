"""The matgenbench metric suite: score generated crystals (pymatgen ``Structure`` or ``None``).

Definitions follow Xie et al. 2022, CDVAE (txie-93/cdvae scripts/eval_utils.py, scripts/compute_metrics.py).
Usage::

    from bench.metrics import ReferenceSet, run_metrics
    report = run_metrics(structures, ReferenceSet("perov_5", train, test), cfg=cfg.metrics)
    report.values()  # {"struct_valid": 1.0, "comp_valid": 0.98, ...}

The fingerprint metrics (``cov_*``, ``amsd_*``, ``amcd_*``, ``comp_div``, ``struct_div``, ``wdist_prop``) and
``test_recall`` are listed in ``conf/metrics/full.yaml``; matminer is imported only when they (or the
fingerprint rule of ``valid``) run. ``cond_hit_rate`` (``bench.metrics.conditional``) is not in the registry:
``run_metrics(..., condition=ConditionTargets(...))`` adds it when samples carry requested property values or
targets are given.
"""

from bench.metrics.base import Metric, MetricReport, MetricResult, ReferenceSet
from bench.metrics.composition import CompositionCheck, check_composition
from bench.metrics.conditional import CondHitRate, ConditionTargets
from bench.metrics.coverage import (
    AMCDPrecision,
    AMCDRecall,
    AMSDPrecision,
    AMSDRecall,
    COVPrecision,
    COVRecall,
)
from bench.metrics.distribution import JSDElements, JSDSpacegroup, WDistDensity, WDistNumElems
from bench.metrics.diversity import CompDiv, StructDiv
from bench.metrics.fingerprints import Fingerprint, compute_fingerprints
from bench.metrics.generated import GeneratedSet, SampleRecord
from bench.metrics.novelty import Memorized, Novel, Unique, VUNRate
from bench.metrics.property import PropertyModel, WDistProp
from bench.metrics.recall import TestRecall
from bench.metrics.registry import REGISTRY, build_metric
from bench.metrics.runner import run_metrics
from bench.metrics.settings import (
    CoverageCutoffs,
    DistributionSettings,
    MatcherSettings,
    MetricSettings,
    ParallelSettings,
    PropertyModelSettings,
    ValiditySettings,
)
from bench.metrics.structure_checks import check_construction, check_structure
from bench.metrics.validity import CompValid, StructValid, Valid

__all__ = [
    "REGISTRY",
    "AMCDPrecision",
    "AMCDRecall",
    "AMSDPrecision",
    "AMSDRecall",
    "COVPrecision",
    "COVRecall",
    "CompDiv",
    "CompValid",
    "CondHitRate",
    "ConditionTargets",
    "CompositionCheck",
    "CoverageCutoffs",
    "DistributionSettings",
    "Fingerprint",
    "GeneratedSet",
    "JSDElements",
    "JSDSpacegroup",
    "MatcherSettings",
    "Memorized",
    "Metric",
    "MetricReport",
    "MetricResult",
    "MetricSettings",
    "Novel",
    "ParallelSettings",
    "PropertyModel",
    "PropertyModelSettings",
    "ReferenceSet",
    "SampleRecord",
    "StructDiv",
    "StructValid",
    "TestRecall",
    "Unique",
    "VUNRate",
    "Valid",
    "ValiditySettings",
    "WDistDensity",
    "WDistNumElems",
    "WDistProp",
    "build_metric",
    "check_composition",
    "check_construction",
    "check_structure",
    "compute_fingerprints",
    "run_metrics",
]
