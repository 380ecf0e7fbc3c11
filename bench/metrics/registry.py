"""The explicit registry of metrics: config name -> class. Add new metrics here."""

from __future__ import annotations

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
from bench.metrics.novelty import Memorized, Novel, Unique, VUNRate
from bench.metrics.property import WDistProp
from bench.metrics.recall import TestRecall
from bench.metrics.settings import MetricSettings
from bench.metrics.validity import CompValid, StructValid, Valid

__all__ = ["REGISTRY", "build_metric"]

REGISTRY: dict[str, type] = {
    "struct_valid": StructValid,
    "comp_valid": CompValid,
    "valid": Valid,
    "unique": Unique,
    "novel": Novel,
    "memorized": Memorized,
    "vun_rate": VUNRate,
    "wdist_density": WDistDensity,
    "wdist_num_elems": WDistNumElems,
    "jsd_spacegroup": JSDSpacegroup,
    "jsd_elements": JSDElements,
    "cov_recall": COVRecall,
    "cov_precision": COVPrecision,
    "amsd_recall": AMSDRecall,
    "amsd_precision": AMSDPrecision,
    "amcd_recall": AMCDRecall,
    "amcd_precision": AMCDPrecision,
    "comp_div": CompDiv,
    "struct_div": StructDiv,
    "wdist_prop": WDistProp,
    "test_recall": TestRecall,
}


def build_metric(name: str, settings: MetricSettings | None = None):
    """Instantiate the metric registered as ``name``.

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {sorted(REGISTRY)}") from None
    return cls(settings or MetricSettings())
