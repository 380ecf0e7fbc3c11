"""The small interfaces of the metric suite: a metric, its result, the reference data and the run report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from bench.metrics.settings import MetricSettings

if TYPE_CHECKING:
    import pandas as pd
    from pymatgen.core import Structure

__all__ = ["GeneratedOnlyMetric", "Metric", "MetricReport", "MetricResult", "ReferenceSet"]


@dataclass
class MetricResult:
    """What one metric returns.

    Attributes:
        value: The headline number (NaN when undefined, e.g. no valid structures; ``extra["reason"]``
            says why).
        per_sample: One value per generated item (NaN where not applicable), or None.
        extra: JSON-friendly details (counts, sample sizes, the seed used...). The optional key
            ``per_sample_columns`` (name -> array of one value per generated item) adds columns to the run's
            per-sample table and is not copied into the metric's entry.
    """

    value: float
    per_sample: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    """A metric: reference-side work in :meth:`prepare` (computed once, cacheable), scoring in ``__call__``.

    Modelled on molecularsets/moses moses/metrics/metrics.py (precalculated reference statistics) with an
    explicit direction as in vanderschaarlab/synthcity metrics/core/metric.py.
    """

    name: str
    direction: Literal["max", "min"]
    description: str
    version: str

    def prepare(self, reference: ReferenceSet) -> Any:
        """Compute (picklable) reference-side statistics once."""
        ...

    def __call__(self, generated: Sequence[Structure | None], prepared: Any) -> MetricResult:
        """Score generated items (``None`` = produced but not constructible) against prepared statistics."""
        ...


class GeneratedOnlyMetric:
    """Base of metrics computed from the generated items alone: nothing reference-side to prepare or cache."""

    version: str = "1.0"
    cacheable: ClassVar[bool] = False

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    def settings_key(self) -> dict[str, Any]:
        """The settings the reference side depends on: none."""
        return {}

    def prepare(self, reference: ReferenceSet) -> None:
        """No reference-side work."""
        return None


@dataclass
class ReferenceSet:
    """The dataset a model is scored against.

    Attributes:
        name: Dataset name, e.g. ``perov_5``.
        train: Training structures (novelty is measured against them).
        test: Test structures (distribution metrics compare with them).
        train_checksum: Content checksum of the training split; with ``test_checksum`` it keys the disk cache.
        test_checksum: Content checksum of the test split.
        properties: Optional per-split property arrays, e.g. ``{"test": {"heat_ref": [...]}}``.
    """

    name: str
    train: list[Structure]
    test: list[Structure]
    train_checksum: str = ""
    test_checksum: str = ""
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricReport:
    """Everything one evaluation produced.

    Attributes:
        metrics: name -> ``{"value", "direction", "description", "version", **extra}``.
        per_sample: One row per generated item (validity flags and reasons, formula, density, uniqueness...).
        counts: ``n_generated``, ``n_constructed``, ``n_valid``, ...
        settings: The exact conventions used (resolved config, matcher parameters, package versions).
        funnel: The usability funnel, requested → decoded → valid → unique → novel → plausible
            (:mod:`bench.metrics.funnel`); None when not computed.
    """

    metrics: dict[str, dict[str, Any]]
    per_sample: pd.DataFrame
    counts: dict[str, int]
    settings: dict[str, Any]
    funnel: dict[str, Any] | None = None

    def values(self) -> dict[str, float]:
        """name -> headline value."""
        return {name: entry["value"] for name, entry in self.metrics.items()}

    def to_dict(self, include_per_sample: bool = False) -> dict[str, Any]:
        """JSON-friendly view for a result record (per-sample rows only when asked)."""
        out: dict[str, Any] = {"metrics": self.metrics, "counts": self.counts, "settings": self.settings}
        if self.funnel is not None:
            out["funnel"] = self.funnel
        if include_per_sample:
            out["per_sample"] = (
                self.per_sample.astype(object).where(self.per_sample.notna(), None).to_dict(orient="records")
            )
        return out
