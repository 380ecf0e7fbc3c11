"""Aggregate result records into leaderboard rows: seeds pooled per (dataset, split protocol, model variant).

For every metric a row holds the per-seed values, their mean, sample standard deviation and a 95% confidence
interval of the mean (Student-t below 10 seeds, percentile bootstrap from 10 on, undefined with a single
seed: :mod:`bench.leaderboard.stats`), plus mean costs. Every metric, ``vun_rate`` included, is read from the
records as the metric suite stored it; nothing is derived here.
Runs that failed or do not apply become rows of their own with the reason, so nothing disappears. A metric
that does not apply to the reference data (composition metrics on a single-element dataset,
:mod:`bench.applicability`) gets no mean, only its reason: it is never a tie at 0. A metric whose entries name
the variable they measure (``nll_test``'s ``nll_space``, :mod:`bench.likelihood`) carries it as the summary's
``space``: rows in different spaces are never compared (no best, no common ranking).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bench.applicability import record_not_applicable
from bench.leaderboard.funnel import FunnelSummary, summarize_funnel
from bench.leaderboard.sampling import Sampling, sampling_of
from bench.leaderboard.stats import bootstrap_ci, clip_to_range, compare, finite_values, mean_ci
from bench.records import ResultRecord

__all__ = [
    "COST_KEYS",
    "DATASET_ORDER",
    "COST_DIRECTIONS",
    "INTERVAL_COSTS",
    "PREFERRED_METRICS",
    "COMPOSITION_METRIC_ORDER",
    "COMPOSITION_QUALITY_METRIC",
    "QUALITY_METRIC",
    "QUALITY_METRICS",
    "RERUN_KINDS",
    "MetricSummary",
    "Row",
    "bootstrap_ci",
    "finite_values",
    "summarize",
    "split_superseded",
    "aggregate",
    "metric_columns",
    "best_per_column",
    "primary_space",
    "other_space",
    "rank_summaries",
    "pareto_front",
    "quality",
    "quality_metric",
    "total_seconds",
    "sort_rows",
    "dataset_rank",
]

log = logging.getLogger(__name__)

# Kinds whose numbers this project's metric suite computed from generated structures: the only rows that
# compete for "best". References (test set, copies, random) and published numbers are shown beside them.
RERUN_KINDS = frozenset({"run", "external"})
# The headline quality: valid AND unique AND novel per structure, over all samples (stored by the metric
# suite, bench.metrics.novelty.VUNRate).
QUALITY_METRIC = "vun_rate"
# The composition track's headline quality: SMACT-valid AND unique AND novel per formula, over all samples
# (bench.metrics.composition_track.CompVUNRate).
COMPOSITION_QUALITY_METRIC = "comp_vun_rate"
# The composition track's metrics in board order (bench.metrics.composition_track.COMPOSITION_METRICS); a
# dataset's rows are of one track, so its table shows one group or the other.
COMPOSITION_METRIC_ORDER = (
    "comp_smact_valid",
    "comp_unique",
    "comp_novel",
    COMPOSITION_QUALITY_METRIC,
    "comp_jsd_elements",
    "comp_magpie_fd",
    "comp_wdist_prop",
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
    *COMPOSITION_METRIC_ORDER,
)
# The metrics the quality axis of the quality-versus-cost plot reads, the first a row has.
QUALITY_METRICS = (QUALITY_METRIC, "valid", COMPOSITION_QUALITY_METRIC, "comp_smact_valid")
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
INTERVAL_COSTS = ("samples_per_second",)
"""Costs that also get a mean with its 95% interval over seeds (:attr:`Row.cost_summaries`), for the
quality-versus-NFE figure (:mod:`bench.leaderboard.nfe`)."""
# Entry keys naming what a metric's value measures (bench.likelihood: the likelihood's variable and the fitted
# representation it was encoded with); values whose keys differ are never compared.
SPACE_KEYS = ("nll_space", "representation_sha256")
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
    ci_method: str | None = None
    """How ``ci`` was computed: ``"t"`` (Student-t), ``"bootstrap"``, or None when undefined."""
    not_applicable: str | None = None
    """Why the metric does not apply to this row's reference data (:mod:`bench.applicability`); the mean is
    then None and the board shows "n/a" with this reason. None when it applies."""
    space: str | None = None
    """What the values measure, for a metric whose entries say so (``nll_test``: its ``nll_space`` and the
    fitted representation, ``@``-joined); summaries of different spaces are never compared. None otherwise."""

    @property
    def n(self) -> int:
        """Number of finite values (seeds) behind the mean."""
        return len(self.values)

    @property
    def space_label(self) -> str | None:
        """The readable part of :attr:`space` (the variable, without the representation's digest)."""
        return None if self.space is None else self.space.split("@", 1)[0]


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
    cost_summaries: dict[str, MetricSummary] = field(default_factory=dict)
    """Per-seed summaries of the :data:`INTERVAL_COSTS` (the same mean as :attr:`cost`, with its interval)."""
    sampling: Sampling | None = None
    """The trained variant and sampler family of the row's runs (:func:`bench.leaderboard.sampling.
    sampling_of`); None for published rows."""
    track: str = "crystal"
    """What the row's samples are: ``crystal``, or ``composition`` for the composition track's records (their
    ``split.track``)."""
    funnel: FunnelSummary | None = None
    """The usability funnel pooled over the row's seeds (:mod:`bench.leaderboard.funnel`); None when none of
    its records has one (written before it)."""

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


def summarize(
    name: str,
    direction: str,
    values: Iterable[Any],
    *,
    description: str = "",
    n_resamples: int = 2000,
    seed: int = 0,
) -> MetricSummary:
    """Mean, sample standard deviation and 95% CI of the mean (:func:`bench.leaderboard.stats.mean_ci`, cut at
    the metric's range by :func:`~bench.leaderboard.stats.clip_to_range`) of the finite ``values``."""
    finite = tuple(finite_values(values))
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    ci, method = mean_ci(finite, n_resamples=n_resamples, seed=seed)
    ci = clip_to_range(ci, name)
    return MetricSummary(name, direction, finite, mean, std, ci, description, method)


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


def _space(entries: list[Mapping[str, Any]], name: str) -> str | None:
    """The space the entries of one row's metric measure (see :data:`SPACE_KEYS`), None when they name none;
    seeds that disagree (they should not) make a space of their own, compared with nothing else."""
    spaces = sorted({"@".join(str(e.get(k) or "") for k in SPACE_KEYS)
                     for e in entries if e.get(SPACE_KEYS[0]) is not None})
    if len(spaces) > 1:
        log.warning("metric %s measures different spaces across the seeds of one row: %s", name, spaces)
    return " | ".join(spaces) if spaces else None


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
        sampling=_sampling(records),
        track=str(first.split.get("track") or "crystal"),
    )
    if status != "complete":
        row.reason = _reason(records)
        return row
    row.funnel = summarize_funnel(records)
    names = sorted({m for r in records for m in r.metrics})
    for name in names:
        entries = [r.metrics[name] for r in records if name in r.metrics]
        description = next((str(e["description"]) for e in entries if e.get("description")), "")
        # decided from the reference data, for records written before the suite stored it too
        reason = next(
            (x for r in records if name in r.metrics
             if (x := record_not_applicable(name, r.metrics[name], r.dataset)) is not None),
            None,
        )
        if reason is not None:
            row.metrics[name] = MetricSummary(
                name, _direction(entries, name), (), None, None, None, description, None, reason
            )
            continue
        row.metrics[name] = summarize(
            name,
            _direction(entries, name),
            [e.get("value") for e in entries],
            description=description,
            n_resamples=n_resamples,
            seed=seed,
        )
        space = _space(entries, name)
        if space is not None:
            row.metrics[name] = replace(row.metrics[name], space=space)
    # train_steps: for the summary's cost lines; sample_nfe: the x of the quality-versus-NFE figure
    for key in (*COST_KEYS, "train_steps", "sample_nfe"):
        values = finite_values(r.cost.get(key) for r in records)
        if values:
            row.cost[key] = float(np.mean(values))
        if key == "sample_nfe" and len(set(values)) > 1:
            log.warning("seeds %s of %s/%s record different NFE %s; the figure uses their mean",
                        row.seeds, row.dataset, row.variant, sorted(set(values)))
        if key in INTERVAL_COSTS and values:
            row.cost_summaries[key] = summarize(key, COST_DIRECTIONS.get(key, "max"), values,
                                                n_resamples=n_resamples, seed=seed)
    return row


def _sampling(records: Sequence[ResultRecord]) -> Sampling:
    """The sampling of a row's records (the most common should seeds disagree; they share one variant)."""
    counts = Counter(sampling_of(r) for r in records)
    if len(counts) > 1:
        log.warning("the seeds of %s/%s were sampled differently: %s", records[0].dataset, records[0].variant,
                    sorted(counts, key=str))
    return counts.most_common(1)[0][0]


def aggregate(records: Sequence[ResultRecord], *, n_resamples: int = 2000, seed: int = 0) -> list[Row]:
    """Pool seeds per (dataset, split protocol id, model, variant, kind); one row per status within a group.

    Args:
        records: Result records (duplicates of one seed are resolved by :func:`split_superseded`).
        n_resamples: Bootstrap resamples for the confidence intervals (rows with 10 or more seeds).
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
    """Indices of the leading re-run complete row per metric, within each split protocol (for a metric whose
    summaries name a :attr:`MetricSummary.space`, among the rows in the protocol's :func:`primary_space` only:
    a value of another variable is never ranked).

    A row is marked only when its lead over the runner-up holds by :func:`bench.leaderboard.stats.compare`
    (shown values differ by more than two units of the last digit and Welch's t-test gives p < 0.05), the same
    rule the findings under each table state. Ties at display precision mark nothing, and neither does a
    protocol with a single competing row. References and published rows never count. The direction of each
    metric comes from its summaries.

    Returns:
        metric -> set of indices into ``rows`` (at most one per protocol).
    """
    names = list(metrics) if metrics is not None else metric_columns(rows)
    out: dict[str, set[int]] = {}
    for name in names:
        by_protocol: dict[tuple[str, str], list[tuple[MetricSummary, int]]] = defaultdict(list)
        for i, row in enumerate(rows):
            summary = row.metrics.get(name)
            if row.is_rerun and summary is not None and summary.mean is not None:
                by_protocol[(row.dataset, row.protocol_id)].append((summary, i))
        marked: set[int] = set()
        for candidates in by_protocol.values():
            primary = _most_common_space(s.space for s, _ in candidates)
            candidates = [(s, i) for s, i in candidates if s.space in (None, primary)]
            if len(candidates) < 2:  # a lone run is not "best" of anything
                continue
            (lead, i), (second, _) = rank_summaries(candidates)[:2]
            if compare(lead.values, second.values).holds:
                marked.add(i)
        out[name] = marked
    return out


def _most_common_space(spaces: Iterable[str | None]) -> str | None:
    counts = Counter(space for space in spaces if space is not None)
    if not counts:
        return None
    return min(counts, key=lambda space: (-counts[space], space))  # ties: the first by name


def primary_space(rows: Iterable[Row], name: str) -> str | None:
    """The space most rows with a value of ``name`` measure (ties: the first by name); None when the metric
    names no space. The board ranks and plots a column in this space; other spaces are shown, not ranked."""
    return _most_common_space(s.space for r in rows if (s := r.metrics.get(name)) is not None
                              and s.mean is not None)


def other_space(rows: Sequence[Row], metrics: Iterable[str]) -> dict[tuple[int, str], str]:
    """``(row index, metric) -> label`` for the cells whose space is not their protocol's
    :func:`primary_space` of that metric: the board names the space in the cell and does not rank it there."""
    by_protocol: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_protocol[(row.dataset, row.protocol_id)].append(i)
    out: dict[tuple[int, str], str] = {}
    for name in metrics:
        for members in by_protocol.values():
            primary = primary_space([rows[i] for i in members], name)
            for i in members:
                summary = rows[i].metrics.get(name)
                if summary is None or summary.mean is None or summary.space in (None, primary):
                    continue
                label = summary.space_label or ""
                if primary is not None and label == primary.split("@", 1)[0]:
                    label = f"{label}, another fitted representation"
                out[(i, name)] = label
    return out


def rank_summaries(items: Sequence[tuple[MetricSummary, Any]]) -> list[tuple[MetricSummary, Any]]:
    """``(summary, payload)`` pairs, best mean first in the metric's direction (stable for ties)."""
    if not items:
        return []
    sign = -1.0 if items[0][0].direction == "max" else 1.0
    return sorted(items, key=lambda item: sign * float(item[0].mean))


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


def quality_metric(row: Row) -> str | None:
    """The metric the quality-versus-cost plot reads for ``row``: the first of :data:`QUALITY_METRICS` with a
    mean (``vun_rate``, else ``valid``; ``comp_vun_rate``, else ``comp_smact_valid`` on the composition
    track), None when it has none."""
    for name in QUALITY_METRICS:
        summary = row.metrics.get(name)
        if summary is not None and summary.mean is not None:
            return name
    return None


def quality(row: Row) -> float | None:
    """The y axis of the quality-versus-cost plot: the mean of :func:`quality_metric`."""
    name = quality_metric(row)
    return None if name is None else row.metrics[name].mean


def total_seconds(row: Row) -> float | None:
    """Mean train plus mean sample seconds (sampling counted as 0 when unknown); None without train time."""
    train = row.cost.get("train_seconds")
    if train is None:
        return None
    return train + row.cost.get("sample_seconds", 0.0)
