"""The board in a terminal: ``matgenbench leaderboard show [--dataset D] [--sort METRIC]``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from bench.leaderboard.aggregate import COST_DIRECTIONS, Row, best_per_column, metric_columns
from bench.leaderboard.board import Board, collect
from bench.leaderboard.format import (
    DASH,
    arrow,
    fmt_ci,
    fmt_mean_std,
    fmt_params,
    fmt_rate,
    fmt_seconds,
    truncate,
)
from bench.leaderboard.published import published_meta

__all__ = ["show", "board_tables", "sort_keys", "sorted_rows"]


def sort_keys(rows: Sequence[Row]) -> dict[str, str]:
    """Valid ``--sort`` keys for ``rows`` and their direction: metric names, then cost keys."""
    keys: dict[str, str] = {}
    for name in metric_columns(rows):
        keys[name] = next(r.metrics[name].direction for r in rows if name in r.metrics)
    keys.update(COST_DIRECTIONS)
    return keys


def sorted_rows(rows: Sequence[Row], key: str, direction: str) -> list[Row]:
    """Rows ordered best first on ``key``.

    Complete runs are ranked first, then references (ranked among themselves), then the rows without a value
    (failed ones among them) in their previous order.
    """
    competing = [r for r in rows if r.is_rerun and r.mean(key) is not None]
    beside = [r for r in rows if not r.is_rerun and r.mean(key) is not None]
    rest = [r for r in rows if r.mean(key) is None]
    for group in (competing, beside):
        group.sort(key=lambda r: r.mean(key), reverse=direction == "max")
    return competing + beside + rest


def _metric_text(row: Row, name: str, best: bool, reported: bool, ci: bool = True) -> Text:
    summary = row.metrics.get(name)
    if summary is None or summary.mean is None:
        return Text(DASH, style="dim")
    text = Text(fmt_mean_std(summary, reported=reported), style="bold" if best else "")
    if ci and not reported:
        text.append("\n" + (fmt_ci(summary) if summary.ci is not None else "(1 seed)"), style="dim")
    return text


def _own_table(
    dataset: str, rows: Sequence[Row], sort: str | None, columns: Sequence[str], ci: bool = True
) -> Table:
    best = best_per_column(rows, columns)
    directions = sort_keys(rows)
    protocols = {r.protocol for r in rows}
    title = dataset
    if len(protocols) == 1:  # one protocol: say it once in the title instead of a column
        title += f" — protocol: {next(iter(protocols))}"
    if sort:
        title += f" — sorted by {sort} {arrow(directions[sort])}"
    table = Table(
        title=title, title_justify="left", header_style="bold", caption_justify="left", box=box.SIMPLE_HEAD
    )
    table.add_column("model", min_width=10)
    table.add_column("family")
    if len(protocols) > 1:
        table.add_column("protocol", overflow="fold")
    table.add_column("seeds", justify="right")
    for name in columns:
        table.add_column(f"{name} {arrow(directions[name])}", justify="right", min_width=7)
    for head in ("params", "train s", "samples/s"):
        table.add_column(head, justify="right")
    table.add_column("status")
    notes: list[str] = []
    for i, row in enumerate(rows):
        name = Text(row.name)
        if row.kind != "run":
            name.append(f" ({row.kind})", style="italic dim")
        if row.status == "complete":
            status = Text("complete")
        else:  # reasons are long: a numbered note under the table keeps the columns readable
            notes.append(f"[{len(notes) + 1}] {row.name}, {row.status}: {truncate(row.reason or '', 300)}")
            status = Text(f"{row.status} [{len(notes)}]", style="red")
        table.add_row(
            name,
            row.family,
            *([row.protocol] if len(protocols) > 1 else []),
            str(len(row.seeds)) if row.status == "complete" else DASH,
            *[_metric_text(row, m, i in best.get(m, set()), False, ci) for m in columns],
            fmt_params(row.cost.get("parameters")),
            fmt_seconds(row.cost.get("train_seconds")),
            fmt_rate(row.cost.get("samples_per_second")),
            status,
            style="italic" if row.kind == "reference" else None,
        )
    if notes:
        table.caption = "\n".join(notes)
    return table


def _published_table(dataset: str, rows: Sequence[Row], columns: Sequence[str]) -> Table:
    directions = sort_keys(rows)
    meta = published_meta()
    table = Table(
        title=f"{dataset}: reported, not re-run ({meta['short_citation']}; {meta['protocol']})",
        title_justify="left",
        header_style="bold",
        style="dim",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model")
    table.add_column("family")
    for name in columns:
        table.add_column(f"{name} {arrow(directions[name])}", justify="right")
    for row in rows:
        table.add_row(row.name, row.family, *[_metric_text(row, m, False, True) for m in columns])
    return table


def _natural_width(console: Console, table: Table) -> int:
    """Width the table would take with no limit."""
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _columns(rows: Sequence[Row], metrics: Sequence[str] | None) -> list[str]:
    present = metric_columns(rows)
    return present if metrics is None else [m for m in metrics if m in present]


def board_tables(
    board: Board,
    dataset: str | None = None,
    sort: str | None = None,
    *,
    metrics: Sequence[str] | None = None,
    ci: bool = True,
) -> list[Table]:
    """Rich tables of ``board``: per dataset, our rows then the published ones.

    Args:
        board: The aggregated board.
        dataset: Only this dataset (all when None).
        sort: Order rows best first by this metric (or cost key), respecting its direction; complete runs are
            ranked first, references after them, rows without a value last.
        metrics: Show only these metric columns, in this order (all when None).
        ci: Show the 95% confidence interval of the mean under each mean.

    Raises:
        ValueError: For a dataset not on the board, or a sort key or metric no row has; the message lists the
            valid ones.
    """
    datasets = board.datasets()
    if dataset is not None:
        if dataset not in datasets:
            raise ValueError(f"no rows for dataset {dataset!r}; datasets on the board: {datasets}")
        datasets = [dataset]
    shown = [r for r in board.rows if r.dataset in datasets]
    keys = sort_keys(shown)
    if sort is not None and sort not in keys:
        raise ValueError(f"unknown sort key {sort!r}; valid keys: {sorted(keys)}")
    if metrics is not None:
        unknown = [m for m in metrics if m not in metric_columns(shown)]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; metrics on the board: {metric_columns(shown)}")
    tables = []
    for name in datasets:
        own, published = board.own_rows(name), board.published_rows(name)
        if sort is not None:
            own, published = sorted_rows(own, sort, keys[sort]), sorted_rows(published, sort, keys[sort])
        if own:
            own_sort = sort if sort in sort_keys(own) else None
            tables.append(_own_table(name, own, own_sort, _columns(own, metrics), ci))
        if published and _columns(published, metrics):
            tables.append(_published_table(name, published, _columns(published, metrics)))
    return tables


def show(
    results_dir: str | Path,
    dataset: str | None = None,
    sort: str | None = None,
    console: Console | None = None,
    *,
    metrics: Sequence[str] | None = None,
) -> list[Table]:
    """Print the board of ``results_dir`` as rich tables.

    Args:
        results_dir: Folder of result records.
        dataset: Only this dataset (all when None).
        sort: A metric name, or one of ``parameters``, ``train_seconds``, ``sample_seconds``,
            ``samples_per_second``; rows are ordered best first according to its direction.
        console: Where to print (a new ``rich`` console when None).
        metrics: Show only these metric columns (all when None); narrow terminals want a few.

    Returns:
        The printed tables.

    Raises:
        ValueError: For an unknown dataset, sort key or metric, listing the valid ones.
    """
    board = collect(results_dir)
    console = console or Console()
    tables = board_tables(board, dataset, sort, metrics=metrics)
    if any(_natural_width(console, t) > console.width for t in tables):  # too wide: drop the CI lines
        tables = board_tables(board, dataset, sort, metrics=metrics, ci=False)
        console.print(
            "Confidence intervals hidden: the terminal is too narrow (choose columns with metrics).",
            style="dim",
        )
    if not board.n_records:
        console.print(f"No result records under {results_dir}: run `matgenbench run`.", style="yellow")
    for table in tables:
        console.print(table)
    if board.excluded:
        console.print(
            f"{len(board.excluded)} record file(s) left out (see the log or leaderboard/README.md).",
            style="yellow",
        )
    return tables
