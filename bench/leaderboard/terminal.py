"""The board in a terminal: ``matgenbench leaderboard show [--dataset D] [--protocol P] [--sort METRIC]
[--metrics M,...|all] [--funnel]``.

``--funnel`` prints the usability funnel instead of the metrics: per dataset and protocol, each row's mean
count of requested, decoded, valid, unique, novel and plausible items over its seeds
(:mod:`bench.leaderboard.funnel`).

Readable from 80 columns up: by default only the headline metrics (:data:`SHOW_METRICS`) are shown, each row
has a short distinct label (:func:`row_label`: the variant, which names the model and any sampler, e.g.
``ddpm-eps-cosine+ddim-50``), protocols are named by their short id (:func:`short_protocol`), and when the
table is wider than the terminal the layout sheds detail in a fixed order (intervals, then the family and
cost columns, then the standard deviations) and says what it hid. The headline metrics and the labels live
in :mod:`bench.leaderboard.headline`, shared with the HTML board.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from bench.leaderboard.aggregate import (
    COST_DIRECTIONS,
    Row,
    best_per_column,
    metric_columns,
    other_space,
    primary_space,
)
from bench.leaderboard.board import Board, collect
from bench.leaderboard.format import (
    DASH,
    NA,
    arrow,
    fmt_ci,
    fmt_mean_std,
    fmt_params,
    fmt_rate,
    fmt_seconds,
    fmt_value,
    truncate,
)
from bench.leaderboard.funnel import STAGES as FUNNEL_STAGES
from bench.leaderboard.funnel import fmt_count, funnel_rows
from bench.leaderboard.headline import (
    SHOW_METRICS,
    dataset_title,
    protocol_order,
    row_label,
    row_labels,
    short_protocol,
)
from bench.leaderboard.published import published_meta

__all__ = [
    "SHOW_METRICS", "board_tables", "funnel_tables", "row_label", "row_labels", "short_protocol", "show",
    "sort_keys", "sorted_rows",
]


def sort_keys(rows: Sequence[Row]) -> dict[str, str]:
    """Valid ``--sort`` keys for ``rows`` and their direction: metric names, then cost keys."""
    keys: dict[str, str] = {}
    for name in metric_columns(rows):
        keys[name] = next(r.metrics[name].direction for r in rows if name in r.metrics)
    keys.update(COST_DIRECTIONS)
    return keys


def sorted_rows(rows: Sequence[Row], key: str, direction: str) -> list[Row]:
    """Rows ordered best first on ``key``.

    Complete runs are ranked first, then references (ranked among themselves) and runs whose value measures
    another space than most rows' (:func:`~bench.leaderboard.aggregate.primary_space`: e.g. a token
    likelihood beside densities), then the rows without a value (failed ones among them) in their previous
    order.
    """
    primary = primary_space(rows, key)

    def comparable(row: Row) -> bool:
        summary = row.metrics.get(key)
        return summary is None or summary.space in (None, primary)

    competing = [r for r in rows if r.is_rerun and r.mean(key) is not None and comparable(r)]
    beside = [r for r in rows if r.mean(key) is not None and not (r.is_rerun and comparable(r))]
    rest = [r for r in rows if r.mean(key) is None]
    for group in (competing, beside):
        group.sort(key=lambda r: r.mean(key), reverse=direction == "max")
    return competing + beside + rest


@dataclass(frozen=True)
class _Layout:
    """How much detail a table shows; :data:`_LAYOUTS` goes from the most to the least."""

    ci: bool = True
    extras: bool = True  # family and cost columns
    std: bool = True
    narrow: bool = False  # metric headers broken after each "_", labels folded
    split: bool = False  # one table per protocol (named in its title) instead of a protocol column
    note: str = ""


_LAYOUTS = (
    _Layout(),
    _Layout(ci=False, note="confidence intervals"),
    _Layout(ci=False, extras=False, note="confidence intervals, family and cost columns"),
    _Layout(ci=False, extras=False, std=False,
            note="confidence intervals, family and cost columns, standard deviations (means only)"),
    _Layout(ci=False, extras=False, std=False, narrow=True,
            note="confidence intervals, family and cost columns, standard deviations (means only)"),
    _Layout(ci=False, extras=False, std=False, narrow=True, split=True,
            note="confidence intervals, family and cost columns, standard deviations (means only); one table "
                 "per protocol"),
)
#: The narrowest a folded model label may get: narrower, a terminal would squeeze it out of the table.
_LABEL_MIN_WIDTH = 16


def _header(name: str, direction: str, narrow: bool) -> str:
    """``name ↑``; narrow: one line per ``_``-part and the arrow below (``cov_`` / ``precision`` / ``↑``)."""
    if narrow:
        return name.replace("_", "_\n") + f"\n{arrow(direction)}"
    return f"{name} {arrow(direction)}"


def _metric_text(
    row: Row, name: str, best: bool, reported: bool, layout: _Layout, other: str | None = None
) -> Text:
    summary = row.metrics.get(name)
    if summary is not None and summary.not_applicable:
        return Text(NA, style="dim")
    if summary is None or summary.mean is None:
        return Text(DASH, style="dim")
    main = fmt_mean_std(summary, reported=reported) if layout.std else fmt_value(summary.mean)
    text = Text(main, style="bold" if best else "")
    if layout.ci and not reported:
        text.append("\n" + (fmt_ci(summary) if summary.ci is not None else "(1 seed)"), style="dim")
    if other:  # another space than the column's other rows: said (its name, without settings), never ranked
        text.append("\n" + ("(other space)" if layout.narrow else f"({other.split('(', 1)[0]})"), style="dim")
    return text


def _table(title: str) -> Table:
    return Table(
        title=title, title_justify="left", header_style="bold", caption_justify="left", box=box.SIMPLE_HEAD,
        pad_edge=False, collapse_padding=True,
    )


def _own_table(
    dataset: str, rows: Sequence[Row], sort: str | None, columns: Sequence[str], layout: _Layout
) -> Table:
    best = best_per_column(rows, columns)
    others = other_space(rows, columns)
    directions = sort_keys(rows)
    protocols = sorted({short_protocol(r) for r in rows})
    official = {bool(r.official) for r in rows}
    title = dataset_title(dataset, rows)
    if len(protocols) == 1:  # one protocol: say it once in the title instead of a column
        title += f" — {protocols[0]}" + ("" if official == {True} else " (not official)")
    if sort:
        title += f" — sorted by {sort} {arrow(directions[sort])}"
    table = _table(title)
    labels = row_labels(rows, protocol_column=len(protocols) > 1)
    longest = max((len(label) for label in labels), default=len("model"))
    table.add_column("model", no_wrap=not layout.narrow, overflow="fold",
                     min_width=min(longest, _LABEL_MIN_WIDTH))
    if layout.extras:
        table.add_column("family", no_wrap=True)
    if len(protocols) > 1:
        table.add_column("protocol", no_wrap=True)
    table.add_column("seeds", justify="right")
    for name in columns:
        table.add_column(_header(name, directions[name], layout.narrow), justify="right", no_wrap=True)
    if layout.extras:
        for head in ("params", "train s", "samples/s"):
            table.add_column(head, justify="right", no_wrap=True)
    # narrow layouts name a row's status in its label instead of a column
    show_status = layout.extras and any(r.status != "complete" for r in rows)
    if show_status:
        table.add_column("status", no_wrap=True)
    notes: list[str] = []
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        status = Text("complete")
        if row.status != "complete":  # reasons are long: a numbered note under the table
            notes.append(f"[{len(notes) + 1}] {label}, {row.status}: {truncate(row.reason or '', 300)}")
            status = Text(f"{row.status.replace('_', ' ')} [{len(notes)}]", style="red")
            if not show_status:  # the status goes into the label: "diffcsp [failed 1]"
                tag = f" [{row.status.replace('_', ' ')}]"
                label = label.removesuffix(tag) + f"{tag[:-1]} {len(notes)}]"
        table.add_row(
            Text(label),
            *([row.family] if layout.extras else []),
            *([short_protocol(row)] if len(protocols) > 1 else []),
            str(len(row.seeds)) if row.status == "complete" else DASH,
            *[_metric_text(row, m, i in best.get(m, set()), False, layout, others.get((i, m)))
              for m in columns],
            *((fmt_params(row.cost.get("parameters")), fmt_seconds(row.cost.get("train_seconds")),
               fmt_rate(row.cost.get("samples_per_second"))) if layout.extras else ()),
            *([status] if show_status else []),
            style="italic" if row.kind == "reference" else None,
        )
    na: dict[str, list[str]] = {}  # reason -> metrics, said once under the table
    for row in rows:
        for m in columns:
            summary = row.metrics.get(m)
            if summary is None or not summary.not_applicable:
                continue
            names = na.setdefault(summary.not_applicable, [])
            if m not in names:
                names.append(m)
    notes += [f"n/a ({', '.join(names)}): {reason}" for reason, names in na.items()]
    if others:
        notes.append("(space): a value of another variable than the column's other rows (e.g. a token "
                     "sequence's likelihood beside densities of the codec's fields); not ranked against them")
    if notes:
        table.caption = "\n".join(notes)
    return table


def _published_table(dataset: str, rows: Sequence[Row], columns: Sequence[str], layout: _Layout) -> Table:
    directions = sort_keys(rows)
    meta = published_meta()
    table = _table(f"{dataset}: reported, not re-run ({meta['short_citation']}; {meta['protocol']})")
    table.style = "dim"
    table.add_column("model", no_wrap=not layout.narrow, overflow="fold")
    if layout.extras:
        table.add_column("family", no_wrap=True)
    for name in columns:
        table.add_column(_header(name, directions[name], layout.narrow), justify="right", no_wrap=True)
    for row, label in zip(rows, row_labels(rows), strict=True):
        table.add_row(label, *([row.family] if layout.extras else []),
                      *[_metric_text(row, m, False, True, layout) for m in columns])
    return table


def _natural_width(console: Console, table: Table) -> int:
    """Width the table would take with no limit."""
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _columns(rows: Sequence[Row], metrics: Sequence[str] | None) -> list[str]:
    present = metric_columns(rows)
    return present if metrics is None else [m for m in metrics if m in present]


def _matches_protocol(row: Row, protocol: str) -> bool:
    return protocol in (row.protocol_id, short_protocol(row), row.protocol_id.partition("__")[0])


def board_tables(
    board: Board,
    dataset: str | None = None,
    sort: str | None = None,
    *,
    metrics: Sequence[str] | None = None,
    ci: bool = True,
    protocol: str | None = None,
    layout: _Layout | None = None,
) -> list[Table]:
    """Rich tables of ``board``: per dataset, our rows then the published ones.

    Args:
        board: The aggregated board.
        dataset: Only this dataset (all when None).
        sort: Order rows best first by this metric (or cost key), respecting its direction; complete runs are
            ranked first, references after them, rows without a value last.
        metrics: Show only these metric columns, in this order (all when None).
        ci: Show the 95% confidence interval of the mean under each mean.
        protocol: Only rows of this split protocol: its id, short id (:func:`short_protocol`) or experiment
            name (``perov_5_offline``); published rows are left out then.
        layout: How much detail (default: everything, or no intervals when ``ci`` is false).

    Raises:
        ValueError: For a dataset or protocol not on the board, or a sort key or metric no row has; the
            message lists the valid ones.
    """
    layout = layout or (_LAYOUTS[0] if ci else _LAYOUTS[1])
    datasets = board.datasets()
    if dataset is not None:
        if dataset not in datasets:
            raise ValueError(f"no rows for dataset {dataset!r}; datasets on the board: {datasets}")
        datasets = [dataset]
    shown = [r for r in board.rows if r.dataset in datasets]
    if protocol is not None:
        own = [r for r in shown if r.kind != "published"]
        shown = [r for r in own if _matches_protocol(r, protocol)]
        if not shown:
            valid = sorted({short_protocol(r) for r in own})
            raise ValueError(f"no rows for protocol {protocol!r}; protocols on the board: {valid}")
        datasets = [d for d in datasets if any(r.dataset == d for r in shown)]
    keys = sort_keys(shown)
    if sort is not None and sort not in keys:
        raise ValueError(f"unknown sort key {sort!r}; valid keys: {sorted(keys)}")
    if metrics is not None:
        unknown = [m for m in metrics if m not in metric_columns(shown)]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; metrics on the board: {metric_columns(shown)}")
    tables = []
    for name in datasets:
        own = [r for r in shown if r.dataset == name and r.kind != "published"]
        published = [] if protocol is not None else board.published_rows(name)
        if sort is not None:
            own, published = sorted_rows(own, sort, keys[sort]), sorted_rows(published, sort, keys[sort])
        groups = [own]
        if layout.split:  # one table per protocol, in the order the rows come
            by_protocol: dict[str, list[Row]] = {}
            for row in own:
                by_protocol.setdefault(short_protocol(row), []).append(row)
            groups = list(by_protocol.values())
        for group in groups:
            if group:
                group_sort = sort if sort in sort_keys(group) else None
                tables.append(_own_table(name, group, group_sort, _columns(group, metrics), layout))
        if published and _columns(published, metrics):
            tables.append(_published_table(name, published, _columns(published, metrics), layout))
    return tables


def funnel_tables(board: Board, dataset: str | None = None, protocol: str | None = None) -> list[Table]:
    """Rich tables of the usability funnel: per dataset and protocol, each complete row's mean count per stage
    over the seeds whose records carry a funnel (the share of requested items under it), ``n/a`` where a
    record has none or a stage does not apply.

    Raises:
        ValueError: For a dataset or protocol not on the board (the message lists the valid ones).
    """
    datasets = board.datasets()
    if dataset is not None:
        if dataset not in datasets:
            raise ValueError(f"no rows for dataset {dataset!r}; datasets on the board: {datasets}")
        datasets = [dataset]
    tables = []
    for name in datasets:
        rows = funnel_rows(board.own_rows(name))
        if protocol is not None:
            rows = [r for r in rows if _matches_protocol(r, protocol)]
        by_protocol: dict[str, list[Row]] = {}
        for row in rows:
            by_protocol.setdefault(row.protocol_id, []).append(row)
        for pid in protocol_order(rows):
            group = by_protocol[pid]
            table = _table(f"{dataset_title(name, group)} — {short_protocol(group[0])}: usability funnel")
            table.add_column("model", no_wrap=True)
            table.add_column("seeds", justify="right")
            for stage in FUNNEL_STAGES:
                table.add_column(stage, justify="right", no_wrap=True)
            for row, label in zip(group, row_labels(group), strict=True):
                f = row.funnel
                if f is None:
                    cells = [Text(NA, style="dim")] * len(FUNNEL_STAGES)
                    seeds = Text(str(len(row.seeds)), style="dim")
                else:
                    cells = [Text(NA, style="dim") if s.mean is None else
                             Text(fmt_count(s.mean)).append(f"\n{100 * (s.fraction or 0):.1f}%", style="dim")
                             for s in f.stages]
                    seeds = Text(str(f.n_seeds) if f.complete else f"{f.n_seeds}/{len(row.seeds)}")
                table.add_row(Text(label), seeds, *cells, style="italic" if row.kind == "reference" else None)
            notes = list(dict.fromkeys(f"plausible: {r.funnel.rule}" for r in group
                                       if r.funnel is not None and r.funnel.rule))
            notes += list(dict.fromkeys(f"plausible n/a: {r.funnel.stage('plausible').reason}" for r in group
                                        if r.funnel is not None and r.funnel.stage("plausible").reason))
            if any(r.funnel is None for r in group):
                notes.append("n/a rows: their records were scored before the funnel "
                              "(matgenbench rescore --funnel-from-tables adds it)")
            if notes:
                table.caption = "\n".join(notes)
            tables.append(table)
    if protocol is not None and not tables:
        valid = sorted({short_protocol(r) for r in board.rows if r.kind != "published"})
        raise ValueError(f"no rows for protocol {protocol!r}; protocols on the board: {valid}")
    return tables


def show(
    results_dir: str | Path,
    dataset: str | None = None,
    sort: str | None = None,
    console: Console | None = None,
    *,
    metrics: Sequence[str] | None = None,
    protocol: str | None = None,
    funnel: bool = False,
) -> list[Table]:
    """Print the board of ``results_dir`` as rich tables, as detailed as the console's width allows.

    Args:
        results_dir: Folder of result records.
        dataset: Only this dataset (all when None).
        sort: A metric name, or one of ``parameters``, ``train_seconds``, ``sample_seconds``,
            ``samples_per_second``; rows are ordered best first according to its direction (a metric not
            among the shown ones is added to them).
        console: Where to print (a new ``rich`` console when None).
        metrics: Show these metric columns; None: the headline metrics (:data:`SHOW_METRICS`) present on
            the board; ``["all"]``: every metric.
        protocol: Only rows of this split protocol (id, short id or experiment name).
        funnel: Print the usability funnel tables (:func:`funnel_tables`) instead of the metrics.

    Returns:
        The printed tables.

    Raises:
        ValueError: For an unknown dataset, protocol, sort key or metric, listing the valid ones.
    """
    board = collect(results_dir)
    console = console or Console()
    if funnel:
        tables = funnel_tables(board, dataset, protocol)
        for table in tables:
            console.print(table)
        if not tables:
            console.print(f"No complete rows under {results_dir}: no funnel to show.", style="yellow")
        return tables
    chosen: list[str] | None
    if metrics is None:  # the headline metrics of the rows shown (a crystal or a composition dataset's)
        present = set(metric_columns([r for r in board.rows if dataset in (None, r.dataset)]))
        chosen = [m for m in SHOW_METRICS if m in present] or None
    elif list(metrics) == ["all"]:
        chosen = None
    else:
        chosen = list(metrics)
    if chosen is not None and sort is not None and sort not in chosen and sort not in COST_DIRECTIONS:
        chosen.append(sort)
    tables: list[Table] = []
    for layout in _LAYOUTS:  # the most detail that fits
        tables = board_tables(board, dataset, sort, metrics=chosen, protocol=protocol, layout=layout)
        if all(_natural_width(console, t) <= console.width for t in tables):
            break
    if layout.note:
        console.print(f"Hidden to fit {console.width} columns: {layout.note}.", style="dim")
    if not board.n_records:
        console.print(f"No result records under {results_dir}: run `matgenbench run`.", style="yellow")
    for table in tables:
        console.print(table)
    if metrics is None and chosen is not None:
        console.print(
            "Headline metrics only: --metrics all (or a comma-separated list) for others.", style="dim"
        )
    if board.excluded:
        console.print(
            f"{len(board.excluded)} record file(s) left out (see the log or leaderboard/README.md).",
            style="yellow",
        )
    return tables
