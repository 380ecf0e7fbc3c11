"""Which metrics apply to which reference data: one rule, used by the metric suite and by the board.

A composition metric compares the elements of generated structures with those of the reference data. On a
dataset whose training and test splits hold a single element (Carbon-24: carbon only) every valid sample
that matches the data has that element too, so the metric is 0 for every model: a tie that says nothing,
not a result. Such a metric is *not applicable*:

- the metric suite (:func:`bench.metrics.runner.run_metrics`) counts the elements of the reference splits
  (train and test) and stores ``status: not_applicable`` with ``reason`` and ``n_reference_elements`` in the
  metric's entry instead of a value;
- the board (:mod:`bench.leaderboard.aggregate`) applies the same rule to records written before that: the
  element count comes from the metric entry when stored, else from the dataset registry
  (:attr:`bench.datasets.registry.DatasetSpec.elements`) for the record's dataset.

This module imports neither torch nor pymatgen, so the board can use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "COMPOSITION_METRICS",
    "MIN_REFERENCE_ELEMENTS",
    "NOT_APPLICABLE",
    "not_applicable_reason",
    "record_not_applicable",
    "registry_elements",
]

NOT_APPLICABLE = "not_applicable"
"""The ``status`` of a metric entry that does not apply (its ``value`` is null, ``reason`` says why)."""

COMPOSITION_METRICS = frozenset(
    {"wdist_num_elems", "jsd_elements", "amcd_recall", "amcd_precision", "comp_div"}
)
"""Metrics that measure only the composition side. ``cov_recall``/``cov_precision`` are not among them:
their composition cutoff is always met on single-element data, so they reduce to their structure side and
still mean something."""

MIN_REFERENCE_ELEMENTS = 2
"""A composition metric needs at least this many distinct elements in the reference splits."""


def not_applicable_reason(metric: str, elements: Iterable[str] | None) -> str | None:
    """Why ``metric`` does not apply to reference data with these ``elements``, or None when it does.

    Args:
        metric: Metric name.
        elements: Distinct elements of the reference splits (train and test); None when unknown (applies).

    Returns:
        A short reason (``"composition metric; the reference data have one element (C)"``) or None.
    """
    if metric not in COMPOSITION_METRICS or elements is None:
        return None
    found = sorted(set(elements))
    if len(found) >= MIN_REFERENCE_ELEMENTS:
        return None
    which = f" ({found[0]})" if found else ""
    count = "one element" if found else "no elements"
    return f"composition metric; the reference data have {count}{which}"


def registry_elements(dataset: str) -> tuple[str, ...] | None:
    """The elements the dataset registry states for ``dataset`` (None: not stated, or an unknown dataset).

    Imported lazily: the registry's package imports pymatgen, which the board needs only for old records.
    """
    from bench.datasets.registry import REGISTRY

    spec = REGISTRY.get(dataset)
    return None if spec is None else spec.elements


def record_not_applicable(metric: str, entry: Mapping[str, Any], dataset: str) -> str | None:
    """Why a stored metric entry of a record on ``dataset`` does not apply, or None when it does.

    The entry's own ``status``/``reason`` wins; entries written before the rule existed are judged by the
    element count stored in the entry (``n_reference_elements``) or, failing that, by the dataset
    registry.
    """
    if entry.get("status") == NOT_APPLICABLE:
        return str(entry.get("reason") or "does not apply to the reference data")
    if metric not in COMPOSITION_METRICS:
        return None
    n_stored = entry.get("n_reference_elements")
    if isinstance(n_stored, int) and n_stored >= MIN_REFERENCE_ELEMENTS:
        return None
    return not_applicable_reason(metric, registry_elements(dataset))
