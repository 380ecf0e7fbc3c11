"""Aggregate result records into leaderboard rows: seeds pooled per (dataset, split protocol, model variant).

For every metric a row holds the per-seed values, their mean, sample standard deviation and a
percentile-bootstrap 95% confidence interval of the mean (undefined with a single seed), plus mean costs.
Runs that failed or do not apply become rows of their own with the reason, so nothing disappears.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.leaderboard.format import fmt_value
from bench.records import ResultRecord

__all__ = [
    "COST_KEYS",
    "DATASET_ORDER",
    "COST_DIRECTIONS",
    "PREFERRED_METRICS",
    "QUALITY_METRIC",
    "RERUN_KINDS",
    "MetricSummary",
    "Row",
    "bootstrap_ci",
    "finite_values",
    "summarize",
    "vun_rate",
    "split_superseded",
    "aggregate",
    "metric_columns",
    "best_per_column",
    "pareto_front",
    "quality",
    "total_seconds",
    "sort_rows",
    "dataset_rank",
]

log = logging.getLogger(__name__)

# Kinds whose numbers this project's metric suite computed from generated structures: the only rows that
# compete for "best". References (test set, copies, random) and published numbers are shown beside them.
RERUN_KINDS = frozenset({"run", "external"})
# The derived headline quality: valid x unique x novel per seed (unique, novel: fractions of the valid ones).
QUALITY_METRIC = "vun_rate"
QUALITY_DESCRIPTION = (
    "valid × unique × novel, per seed (unique and novel are fractions of the valid structures); "
    "derived on the board"
)
# Column order on the board; metrics not listed follow alphabetically.
PREFERRED_METRICS = (
    "valid",
    "struct_valid",
    "comp_valid",
    "unique",
    "novel",
    QUALITY_METRIC,
    "cov_recall",
    "cov_precision",
    "wdist_density",
    "wdist_num_elems",
    "wdist_prop",
)
COST_KEYS = (
    "parameters",
    "train_seconds",
    "sample_seconds",
    "samples_per_second",
    "evaluate_seconds",
    "train_peak_memory_mb",
    "gpu_peak_memory_mb",
)
COST_DIRECTIONS = {
    "parameters": "min",
    "train_seconds": "min",
    "sample_seconds": "min",
    "samples_per_second": "max",
}
# The benchmark's usual dataset order on the board; other datasets follow alphabetically.
DATASET_ORDER = ("perov_5", "carbon_24", "mp_20", "mpts_52")
_KIND_ORDER = {"run": 0, "external": 1, "reference": 2, "published": 3}
_STATUS_ORDER = {"complete": 0, "running": 1, "not_applicable": 2, "failed": 3}


@dataclass(frozen=True)
class MetricSummary:
    """One metric of one row: the finite per-seed values and their summary."""

    name: str
    direction: str
    values: tuple[float, ...]
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    description: str = ""

    @property
    def n(self) -> int:
        """Number of finite values (seeds) behind the mean."""
        return len(self.values)


@dataclass
class Row:
    """One line of the board: a model variant on a dataset and split protocol, seeds pooled."""

    dataset: str
    protocol_id: str
    protocol: str
    official: bool | None
    model: str
    family: str
    variant: str
    kind: str
    status: str = "complete"
    reason: str | None = None
    seeds: tuple[int, ...] = ()
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    url: str | None = None

    @property
    def name(self) -> str:
        """Display name: the model, with the variant in brackets when it differs."""
        return self.model if self.variant in ("", self.model) else f"{self.model} ({self.variant})"

    @property
    def is_rerun(self) -> bool:
        """A complete row whose numbers this project computed (competes for best-per-column)."""
        return self.kind in RERUN_KINDS and self.status == "complete"

    def mean(self, metric: str) -> float | None:
        """Mean of ``metric`` (or of a cost key), None when absent."""
        if metric in self.metrics:
            return self.metrics[metric].mean
        value = self.cost.get(metric)
        return None if value is None else float(value)


def finite_values(values: Iterable[Any]) -> list[float]:
    """The values that are finite numbers, as floats (None, booleans, text and NaN/inf are dropped)."""
    out = []
    for v in values:
        if isinstance(v, bool) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def bootstrap_ci(
    values: Sequence[float], *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of the mean.

    Args:
        values: Per-seed values (non-finite ones are ignored).
        n_resamples: Number of bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the ``numpy.random.Generator``; the same inputs and seed give the same interval.

    Returns:
        ``(low, high)``, or None with fewer than two finite values (the interval is undefined).
    """
    data = np.asarray(finite_values(values), dtype=float)
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(
    name: str,
    direction: str,
    values: Iterable[Any],
    *,
    description: str = "",
    n_resamples: int = 2000,
    seed: int = 0,
) -> MetricSummary:
    """Mean, sample standard deviation and bootstrap CI of the finite ``values``."""
    finite = tuple(finite_values(values))
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    ci = bootstrap_ci(finite, n_resamples=n_resamples, seed=seed)
    return MetricSummary(name, direction, finite, mean, std, ci, description)


def vun_rate(metrics: Mapping[str, Mapping[str, Any]]) -> float | None:
    """valid × unique × novel of one record; 0 when nothing is valid; None when a factor is missing."""
    valid = finite_values([metrics.get("valid", {}).get("value")])
    if not valid:
        return None
    if valid[0] == 0.0:
        return 0.0
    unique = finite_values([metrics.get("unique", {}).get("value")])
    novel = finite_values([metrics.get("novel", {}).get("value")])
    if not unique or not novel:
        return None
    return valid[0] * unique[0] * novel[0]


def _protocol_id(record: ResultRecord) -> str:
    return str(record.split.get("id") or record.split_protocol)


def _group_key(record: ResultRecord) -> tuple[str, str, str, str, str]:
    return (record.dataset, _protocol_id(record), record.model, record.variant, record.kind)


def split_superseded(records: Sequence[ResultRecord]) -> tuple[list[ResultRecord], list[ResultRecord]]:
    """Keep one record per (dataset, protocol, model, variant, kind, seed): the newest (complete wins ties).

    Two records for one cell come from different configs of one variant (e.g. a re-run after a failure);
    pooling both would count a seed twice.

    Returns:
        ``(kept, superseded)``, each in input order.
    """
    best: dict[tuple[Any, ...], int] = {}
    for i, r in enumerate(records):
        key = (*_group_key(r), r.seed)
        j = best.get(key)
        if j is None or (r.created, r.status == "complete") >= (
            records[j].created,
            records[j].status == "complete",
        ):
            best[key] = i
    keep = set(best.values())
    superseded = [r for i, r in enumerate(records) if i not in keep]
    for r in superseded:
        log.warning(
            "record %s/%s seed %d (%s, config %s) superseded by a newer record of the same cell",
            r.dataset,
            r.variant,
            r.seed,
            r.status,
            r.config_hash[:8] or "?",
        )
    return [r for i, r in enumerate(records) if i in keep], superseded


def _direction(entries: list[Mapping[str, Any]], name: str) -> str:
    counts = Counter(e.get("direction") for e in entries if e.get("direction") in ("max", "min"))
    if len(counts) > 1:
        log.warning(
            "metric %s has mixed directions across records %s; using the most common", name, dict(counts)
        )
    return counts.most_common(1)[0][0] if counts else "max"


def _reason(records: Sequence[ResultRecord]) -> str:
    by_reason: dict[str, list[int]] = defaultdict(list)
    for r in records:
        default = "still running" if r.status == "running" else "no reason given"
        by_reason[(r.reason or default).strip()].append(r.seed)
    parts = []
    for reason, seeds in by_reason.items():
        label = "seed" if len(seeds) == 1 else "seeds"
        parts.append(f"{label} {', '.join(map(str, sorted(seeds)))}: {reason}")
    return "; ".join(parts)


def _row(records: Sequence[ResultRecord], status: str, n_resamples: int, seed: int) -> Row:
    first = records[0]
    row = Row(
        dataset=first.dataset,
        protocol_id=_protocol_id(first),
        protocol=first.split_protocol,
        official=first.split.get("official"),
        model=first.model,
        family=first.family,
        variant=first.variant,
        kind=first.kind,
        status=status,
        seeds=tuple(sorted(r.seed for r in records)),
    )
    if status != "complete":
        row.reason = _reason(records)
        return row
    names = sorted({m for r in records for m in r.metrics})
    for name in names:
        entries = [r.metrics[name] for r in records if name in r.metrics]
        description = next((str(e["description"]) for e in entries if e.get("description")), "")
        row.metrics[name] = summarize(
            name,
            _direction(entries, name),
            [e.get("value") for e in entries],
            description=description,
            n_resamples=n_resamples,
            seed=seed,
        )
    if QUALITY_METRIC not in row.metrics:
        per_seed = [vun_rate(r.metrics) for r in records]
        if any(v is not None for v in per_seed):
            row.metrics[QUALITY_METRIC] = summarize(
                QUALITY_METRIC,
                "max",
                per_seed,
                description=QUALITY_DESCRIPTION,
                n_resamples=n_resamples,
                seed=seed,
            )
    for key in (*COST_KEYS, "train_steps"):  # train_steps: for the summary's cost lines, not a column
        values = finite_values(r.cost.get(key) for r in records)
        if values:
            row.cost[key] = float(np.mean(values))
    return row


def aggregate(records: Sequence[ResultRecord], *, n_resamples: int = 2000, seed: int = 0) -> list[Row]:
    """Pool seeds per (dataset, split protocol id, model, variant, kind); one row per status within a group.

    Args:
        records: Result records (duplicates of one seed are resolved by :func:`split_superseded`).
        n_resamples: Bootstrap resamples for the confidence intervals.
        seed: Seed of the bootstrap generator (each metric restarts from it, so intervals are reproducible).

    Returns:
        Rows in board order (:func:`sort_rows`).
    """
    kept, _ = split_superseded(records)
    groups: dict[tuple[Any, ...], list[ResultRecord]] = defaultdict(list)
    for r in kept:
        status = r.status if r.status in _STATUS_ORDER else "failed"
        groups[(*_group_key(r), status)].append(r)
    rows = [_row(group, key[-1], n_resamples, seed) for key, group in groups.items()]
    return sort_rows(rows)


def dataset_rank(dataset: str) -> tuple[int, str]:
    """Sort key of a dataset: the usual benchmark order, then alphabetical."""
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    """Board order: dataset, official protocol first, runs before references, name, complete before failed."""
    return sorted(
        rows,
        key=lambda r: (
            dataset_rank(r.dataset),
            r.official is not True,
            r.protocol_id,
            _KIND_ORDER.get(r.kind, 9),
            r.name.lower(),
            _STATUS_ORDER.get(r.status, 9),
        ),
    )


def metric_columns(rows: Iterable[Row]) -> list[str]:
    """Metric names present in ``rows``: the preferred order first, then the rest alphabetically."""
    present = {m for r in rows for m in r.metrics}
    return [m for m in PREFERRED_METRICS if m in present] + sorted(present - set(PREFERRED_METRICS))


def best_per_column(rows: Sequence[Row], metrics: Iterable[str] | None = None) -> dict[str, set[int]]:
    """Indices of the best re-run complete rows per metric, within each split protocol.

    References and published rows never count; a protocol with a single competing row marks nothing; values
    equal at display precision are ties and all marked. The direction of each metric comes from its summaries.

    Returns:
        metric -> set of indices into ``rows``.
    """
    names = list(metrics) if metrics is not None else metric_columns(rows)
    out: dict[str, set[int]] = {}
    for name in names:
        by_protocol: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
        direction = "max"
        for i, row in enumerate(rows):
            summary = row.metrics.get(name)
            if row.is_rerun and summary is not None and summary.mean is not None:
                direction = summary.direction
                by_protocol[(row.dataset, row.protocol_id)].append((summary.mean, i))
        marked: set[int] = set()
        for candidates in by_protocol.values():
            if len(candidates) < 2:  # a lone run is not "best" of anything
                continue
            target = fmt_value((max if direction == "max" else min)(v for v, _ in candidates))
            marked.update(i for v, i in candidates if fmt_value(v) == target)
        out[name] = marked
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x: cost, lower is better; y: quality, higher).

    Of several identical points only the first is kept. Returns indices sorted by increasing x.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def quality(row: Row) -> float | None:
    """The y axis of the quality-versus-cost plot: mean valid·unique·novel rate, else mean ``valid``."""
    for name in (QUALITY_METRIC, "valid"):
        summary = row.metrics.get(name)
        if summary is not None and summary.mean is not None:
            return summary.mean
    return None


def total_seconds(row: Row) -> float | None:
    """Mean train plus mean sample seconds (sampling counted as 0 when unknown); None without train time."""
    train = row.cost.get("train_seconds")
    if train is None:
        return None
    return train + row.cost.get("sample_seconds", 0.0)
