"""The matgenbench metric suite: score generated crystals (pymatgen ``Structure`` or ``None``).

Definitions follow Xie et al. 2022, CDVAE (txie-93/cdvae scripts/eval_utils.py, scripts/compute_metrics.py).
Usage::

    from bench.metrics import ReferenceSet, run_metrics
    report = run_metrics(structures, ReferenceSet("perov_5", train, test), cfg=cfg.metrics)
    report.values()  # {"struct_valid": 1.0, "comp_valid": 0.98, ...}
"""

from bench.metrics.base import Metric, MetricReport, MetricResult, ReferenceSet
from bench.metrics.composition import CompositionCheck, check_composition
from bench.metrics.distribution import JSDElements, JSDSpacegroup, WDistDensity, WDistNumElems
from bench.metrics.generated import GeneratedSet, SampleRecord
from bench.metrics.novelty import Memorized, Novel, Unique
from bench.metrics.registry import REGISTRY, build_metric
from bench.metrics.runner import run_metrics
from bench.metrics.settings import DistributionSettings, MatcherSettings, MetricSettings, ValiditySettings
from bench.metrics.structure_checks import check_construction, check_structure
from bench.metrics.validity import CompValid, StructValid, Valid

__all__ = [
    "REGISTRY",
    "CompValid",
    "CompositionCheck",
    "DistributionSettings",
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
    "ReferenceSet",
    "SampleRecord",
    "StructValid",
    "Unique",
    "Valid",
    "ValiditySettings",
    "WDistDensity",
    "WDistNumElems",
    "build_metric",
    "check_composition",
    "check_construction",
    "check_structure",
    "run_metrics",
]
