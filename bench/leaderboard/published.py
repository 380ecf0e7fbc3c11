"""Published numbers shown beside our own runs, marked "reported, not re-run".

The data ship inside the package (``bench/leaderboard/data/``): a CSV of the values as printed in the
paper and a JSON file with the citation, the protocol behind the numbers, each metric's direction and each
model's family.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import Iterable
from importlib import resources
from typing import Any

from bench.leaderboard.aggregate import MetricSummary, Row

__all__ = ["PUBLISHED_SOURCES", "PUBLISHED_KIND", "published_meta", "published_rows"]

log = logging.getLogger(__name__)

PUBLISHED_SOURCES = ("cdvae_2022",)
PUBLISHED_KIND = "published"


@functools.cache
def published_meta(source: str = "cdvae_2022") -> dict[str, Any]:
    """Citation, URL, protocol note, metric directions and model families of one published table."""
    if source not in PUBLISHED_SOURCES:
        raise ValueError(f"unknown published source {source!r}; known: {list(PUBLISHED_SOURCES)}")
    data = resources.files("bench.leaderboard").joinpath("data", f"{source}.json").read_text(encoding="utf-8")
    return json.loads(data)


def _read_table(source: str) -> list[dict[str, str]]:
    meta = published_meta(source)
    text = resources.files("bench.leaderboard").joinpath("data", meta["table"]).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def published_rows(
    datasets: Iterable[str] | None = None, sources: Iterable[str] = PUBLISHED_SOURCES
) -> list[Row]:
    """Rows of the published tables, one per (model, dataset); blank cells are left out.

    Args:
        datasets: Keep only these datasets (all when None).
        sources: Published tables to read.

    Returns:
        Rows with ``kind="published"``, the citation in ``source`` and the paper's address in ``url``.
    """
    wanted = None if datasets is None else set(datasets)
    rows: list[Row] = []
    for source in sources:
        meta = published_meta(source)
        for line in _read_table(source):
            if wanted is not None and line["dataset"] not in wanted:
                continue
            row = Row(
                dataset=line["dataset"],
                protocol_id=f"published:{source}",
                protocol=meta["protocol"],
                official=True,
                model=line["model"],
                family=meta["families"].get(line["model"], "other"),
                variant=line["model"],
                kind=PUBLISHED_KIND,
                source=meta["short_citation"],
                url=meta["url"],
            )
            for name, info in meta["metrics"].items():
                cell = (line.get(name) or "").strip()
                if not cell:
                    continue
                value = float(cell)
                row.metrics[name] = MetricSummary(
                    name, info["direction"], (value,), value, None, None, info.get("description", "")
                )
            rows.append(row)
    return rows
