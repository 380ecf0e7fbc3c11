"""The board as data: aggregated rows of our records, published rows, and the files that were left out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.leaderboard.aggregate import Row, aggregate, dataset_rank, sort_rows, split_superseded
from bench.leaderboard.published import PUBLISHED_KIND, published_rows
from bench.leaderboard.schema import ExcludedRecord, load_valid_records
from bench.records import ResultRecord, record_path

__all__ = ["Board", "board_from_records", "collect"]


@dataclass
class Board:
    """Everything a renderer needs."""

    rows: list[Row]
    excluded: list[ExcludedRecord] = field(default_factory=list)
    n_records: int = 0

    def datasets(self) -> list[str]:
        """Datasets with at least one row (own or published), in the usual benchmark order: the crystal
        datasets first, then the composition track's."""
        composition = {r.dataset for r in self.rows if r.track == "composition"}
        return sorted({r.dataset for r in self.rows}, key=lambda d: (d in composition, *dataset_rank(d)))

    def own_rows(self, dataset: str) -> list[Row]:
        """Rows of this project's records (runs, external samples, references) on ``dataset``."""
        return [r for r in self.rows if r.dataset == dataset and r.kind != PUBLISHED_KIND]

    def published_rows(self, dataset: str) -> list[Row]:
        """Reported, not re-run rows on ``dataset``."""
        return [r for r in self.rows if r.dataset == dataset and r.kind == PUBLISHED_KIND]


def board_from_records(
    records: Sequence[ResultRecord],
    *,
    published: bool = True,
    excluded: Sequence[ExcludedRecord] = (),
    n_resamples: int = 2000,
    seed: int = 0,
) -> Board:
    """Aggregate ``records`` (already validated) and add the published rows.

    Args:
        records: Result records.
        published: Add the "reported, not re-run" rows of the published tables.
        excluded: Files left out before this step, listed on the board.
        n_resamples: Bootstrap resamples per confidence interval.
        seed: Seed of the bootstrap generator.
    """
    kept, superseded = split_superseded(records)
    dropped = list(excluded) + [
        ExcludedRecord(
            record_path("", r).as_posix(), (f"superseded by a newer {r.variant} seed {r.seed} record",)
        )
        for r in superseded
    ]
    rows = aggregate(kept, n_resamples=n_resamples, seed=seed)
    if published:
        rows = sort_rows([*rows, *published_rows()])
    return Board(rows=rows, excluded=dropped, n_records=len(kept))


def collect(
    results_dir: str | Path, *, published: bool = True, n_resamples: int = 2000, seed: int = 0
) -> Board:
    """Load and validate every record under ``results_dir`` and aggregate them into a :class:`Board`."""
    loaded, excluded = load_valid_records(results_dir)
    return board_from_records(
        [r for _, r in loaded], published=published, excluded=excluded, n_resamples=n_resamples, seed=seed
    )
