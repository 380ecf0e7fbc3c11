"""What every view of the board opens with: the headline metrics, the primary protocol of a dataset, and
short distinct row labels.

Shared by the terminal board (:mod:`bench.leaderboard.terminal`) and the HTML board's first screen
(:mod:`bench.leaderboard.html`), so both name rows and pick metrics the same way.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from bench.leaderboard.aggregate import COMPOSITION_QUALITY_METRIC, QUALITY_METRIC, Row

__all__ = [
    "SHOW_METRICS", "REFERENCE_MODELS", "dataset_title", "short_protocol", "row_label", "row_labels",
    "train_steps", "protocol_order",
]

SHOW_METRICS = (
    "valid", QUALITY_METRIC, "cov_recall", "cov_precision", "wdist_density", "jsd_spacegroup",
    "comp_smact_valid", COMPOSITION_QUALITY_METRIC, "comp_jsd_elements", "comp_magpie_fd", "comp_wdist_prop",
)
"""The headline metrics: what ``leaderboard show`` prints unless ``--metrics`` says otherwise, and the columns
of the HTML board's first table. The crystal track's come first, then the composition track's; a dataset's
rows belong to one track, so each table shows the headline metrics of its own."""

REFERENCE_MODELS = ("Test", "Val", "Random")
"""The reference rows shown beside the headline: the ceiling (the test split scored as if generated; on the
composition track also a draw of the validation split) and the floor (random crystals or compositions) of
every metric (:mod:`bench.references`, :mod:`bench.composition_stages`)."""


def dataset_title(dataset: str, rows: Sequence[Row]) -> str:
    """A dataset's heading: its name, with ``(composition track)`` when its rows are formulas."""
    if any(r.track == "composition" for r in rows if r.dataset == dataset):
        return f"{dataset} (composition track)"
    return dataset


def short_protocol(row: Row) -> str:
    """A protocol's short id: the experiment and the sample count (``perov_5_offline n1000``), or the id."""
    pid = row.protocol_id
    if pid.startswith("published:"):
        return "published"
    name, _, rest = pid.partition("__")
    count = re.search(r"_n(\d+)$", rest)
    return f"{name} n{count.group(1)}" if count else name


def row_label(row: Row) -> str:
    """A short label: the variant (it names the model, and the sampler after ``+``) for runs, the model for
    references and published rows; ``model/variant`` when the variant does not hold every word of the model's
    name."""
    if row.kind == "reference":
        return f"{row.model} (ref)"
    if row.kind == "published" or row.variant in ("", row.model):
        return row.model
    # the variant names the model when it holds each word of the model's name (wgan_gp_mpnn in
    # wgan-gp-periodic-mpnn; gan not in my-net)
    words = set(re.split(r"[-_+.]", row.variant.lower()))
    named = all(word in words for word in re.split(r"[-_]", row.model.lower()) if word)
    label = row.variant if named else f"{row.model}/{row.variant}"
    return f"{label} (ext)" if row.kind == "external" else label


def row_labels(rows: Sequence[Row], *, protocol_column: bool = False) -> list[str]:
    """:func:`row_label` of each row, made distinct within ``rows``: rows that share a label are told apart by
    their protocol (unless a protocol column does it), then their status, then a number."""
    labels = [row_label(r) for r in rows]
    extras = [
        (lambda r: "") if protocol_column else short_protocol,
        lambda r: "" if r.status == "complete" else r.status.replace("_", " "),
    ]
    for extra in extras:
        groups: dict[str, set[str]] = {}
        for label, r in zip(labels, rows, strict=True):
            groups.setdefault(label, set()).add(extra(r))
        labels = [
            f"{label} [{extra(r)}]" if len(groups[label]) > 1 and extra(r) else label
            for label, r in zip(labels, rows, strict=True)
        ]
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        seen[label] += 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def train_steps(rows: Sequence[Row]) -> float | None:
    """The training budget of a protocol: the most optimiser steps (mean over seeds) of its complete runs."""
    steps = [r.cost["train_steps"] for r in rows if r.is_rerun and r.cost.get("train_steps") is not None]
    return max(steps) if steps else None


MIN_COMPARED_ROWS = 2
"""A protocol "compares models" with at least this many rows of runs ..."""
MIN_COMPARED_SEEDS = 3
"""... each with at least this many seeds."""


def protocol_order(rows: Sequence[Row]) -> list[str]:
    """Protocol ids of ``rows`` (one dataset, published rows left out), the primary one first.

    The primary protocol is the one a reader should see first: official before offline, then one that compares
    models (at least :data:`MIN_COMPARED_ROWS` rows of runs with :data:`MIN_COMPARED_SEEDS` seeds or more: a
    single long-budget experiment is not the answer to "which model"), then the longest training budget
    (:func:`train_steps`), then the most competing rows; protocols without a complete run come last. Ties go
    by protocol id, so the order is stable.
    """
    by_id: dict[str, list[Row]] = {}
    for row in rows:
        by_id.setdefault(row.protocol_id, []).append(row)

    def key(pid: str) -> tuple[bool, bool, bool, float, int, str]:
        group = by_id[pid]
        runs = [r for r in group if r.is_rerun]
        compared = sum(1 for r in runs if len(r.seeds) >= MIN_COMPARED_SEEDS) >= MIN_COMPARED_ROWS
        return (not runs, not any(r.official for r in group), not compared, -(train_steps(group) or 0.0),
                -len(runs), pid)

    return sorted(by_id, key=key)
