"""The explicit registry of metrics: config name -> class. Add new metrics here."""

from __future__ import annotations

from bench.metrics.distribution import JSDElements, JSDSpacegroup, WDistDensity, WDistNumElems
from bench.metrics.novelty import Memorized, Novel, Unique
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
    "wdist_density": WDistDensity,
    "wdist_num_elems": WDistNumElems,
    "jsd_spacegroup": JSDSpacegroup,
    "jsd_elements": JSDElements,
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
