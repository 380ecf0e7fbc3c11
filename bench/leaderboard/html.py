"""A static HTML board (``leaderboard/index.html``) that works offline from the file system.

It opens with the answer: per dataset a compact headline table (with the Test and Random references and the
published CDVAE row beside the runs) and the quality-versus-cost plot, every point labelled; the written
analysis and the details (every row and metric, findings, the quality-versus-NFE figure of the rows sampled at
several NFE, per-metric plots) follow.
Everything is inline: CSS, a few lines of JavaScript (sortable columns, a family filter) and SVG plots
generated in Python. The page loads nothing from the network; links to papers are plain anchors.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from html import escape

from bench.leaderboard.aggregate import (
    INTERVAL_COSTS,
    RERUN_KINDS,
    Row,
    best_per_column,
    metric_columns,
    other_space,
    primary_space,
    quality,
    quality_metric,
    total_seconds,
)
from bench.leaderboard.board import Board
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
    REFERENCE_MODELS,
    SHOW_METRICS,
    dataset_title,
    protocol_order,
    row_labels,
    short_protocol,
    train_steps,
)
from bench.leaderboard.nfe import (
    NFE_PANELS,
    NfeCurve,
    missing_sentence,
    nfe,
    nfe_curves,
    panel_summary,
    shows_nfe,
)
from bench.leaderboard.published import published_meta
from bench.leaderboard.stats import METRIC_RANGES
from bench.leaderboard.summary import summary_markdown
from bench.leaderboard.svg import (
    Bar,
    Curve,
    CurvePoint,
    FunnelBar,
    Point,
    bars_svg,
    curves_svg,
    family_colors,
    funnel_svg,
    scatter_svg,
)

__all__ = ["render_html"]

_CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --best:#fff4c2; --bg-alt:#f7f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif; color: var(--fg); margin: 0;
       padding: 16px 32px 48px; max-width: 1600px; }
h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin: 36px 0 8px; font-size: 21px;
       border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { margin: 22px 0 6px; font-size: 16px; }
.lead, .muted { color: var(--muted); }
nav { display: inline; } nav a { margin-right: 12px; } .lead { margin: 2px 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin: 8px 0;
            padding: 6px 14px;
            background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px; }
.controls label { white-space: nowrap; cursor: pointer; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin: 0 4px 0 2px;
          vertical-align: -1px; }
details.legend { margin: 8px 0 4px; } details.legend ul { margin: 6px 0; padding-left: 20px; }
.table-wrap { overflow-x: auto; }
table.board { border-collapse: collapse; margin: 6px 0 4px; font-variant-numeric: tabular-nums;
              font-size: 13px; }
table.board th, table.board td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: right;
                                 vertical-align: top; }
table.board th { background: #f0f1f4; position: sticky; top: 0; cursor: pointer; user-select: none;
                 vertical-align: bottom; }
table.board th:hover { background: #e4e6eb; }
table.board th[aria-sort=ascending]::after { content: " ▲"; font-size: 10px; }
table.board th[aria-sort=descending]::after { content: " ▼"; font-size: 10px; }
table.board td.text, table.board th.text { text-align: left; }
table.board tbody tr:nth-child(even) { background: #fafafa; }
td .m { display: block; white-space: nowrap; } td .ci { display: block; font-size: 11px; color: var(--muted);
        white-space: nowrap; }
td.best { background: var(--best); font-weight: 600; }
td.na { color: var(--muted); } td.na .ci { white-space: normal; min-width: 9em; }
tr.kind-reference td { color: #555; font-style: italic; }
tr.status-failed td, tr.status-not_applicable td, tr.status-running td { color: #8a1f11; }
.badge { display: inline-block; font-size: 10.5px; font-style: normal; padding: 0 6px; border-radius: 9px;
         margin-left: 4px; border: 1px solid currentColor; vertical-align: 1px; }
.badge.reference { color: #555; } .badge.external { color: #1f5f8a; } .badge.failed { color: #a32; }
.badge.published { color: #6b4e00; } .badge.unofficial { color: #8a5a00; }
table.board td.reason { text-align: left; white-space: normal; font-size: 12.5px; }
.name { white-space: nowrap; }
.plots { display: flex; flex-wrap: wrap; gap: 12px 20px; align-items: flex-start; }
.plots svg { background: #fff; border: 1px solid #eee; border-radius: 4px; }
.note { font-size: 12px; color: var(--muted); margin: 2px 0 8px; }
.findings, #analysis { max-width: 980px; font-size: 14px; }
.findings li, #analysis li { margin: 2px 0; }
.filtered { display: none !important; }
section.published { border-left: 4px solid #e8d9a8; padding-left: 12px; }
nav .muted { margin-left: 18px; margin-right: 8px; }
.controls details.legend { margin: 0 0 0 auto; } .controls details.legend[open] { flex-basis: 100%; }
details.legend summary { cursor: pointer; }
section.glance h2 { margin-top: 16px; }
table.glance th, table.glance td { padding-top: 3px; padding-bottom: 3px; }
.tabs { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 6px 0 4px; }
.tabs .tab { font: inherit; font-size: 13px; padding: 3px 10px; border: 1px solid #bbb; border-radius: 14px;
             background: #fff; cursor: pointer; }
.tabs .tab[aria-selected=true] { background: #1d1d1f; color: #fff; border-color: #1d1d1f; }
p.facts { margin: 4px 0; font-size: 13px; }
.glance-body { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
.glance-table { max-width: 100%; } .glance-table p.note { max-width: 860px; }
figure.glance-plot { margin: 0; max-width: 100%; }
figure.glance-plot svg, .plots svg { max-width: 100%; height: auto; }
table.glance th { cursor: default; position: static; }
table.glance th:hover { background: #f0f1f4; }
table.glance td.label { text-align: left; }
td.label .seg { white-space: nowrap; }
tr.glance-ref td { color: #555; font-style: italic; background: #f6f6f6; }
tr.first-ref td { border-top: 2px solid #bbb; }
tr.glance-published td { color: #6b4e00; background: #fffaf0; }
tr.glance-published td.label, tr.glance-ref td.label { font-style: normal; }
p.more { margin: 6px 0 0; font-size: 13px; }
figure.nfe { margin: 6px 0 14px; } figure.nfe figcaption { max-width: 980px; }
figure.funnel { margin: 6px 0 14px; } figure.funnel figcaption { max-width: 980px; }
figure.funnel .funnel-body { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
table.funnel td .ci { display: inline; margin-left: 4px; }
figure.nfe .plots > svg { flex: 1 1 520px; height: auto; }
"""

_JS = """
(function () {
  function cellValue(row, key) {
    var cell = row.querySelector('td[data-col="' + key + '"]');
    return cell ? cell.getAttribute('data-v') : null;
  }
  function sortTable(table, th) {
    var key = th.getAttribute('data-col');
    var current = th.getAttribute('aria-sort');
    var numeric = th.getAttribute('data-type') === 'num';
    var ascending;
    if (current === 'ascending') { ascending = false; }
    else if (current === 'descending') { ascending = true; }
    else { ascending = numeric ? th.getAttribute('data-dir') === 'min' : true; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row.setAttribute('data-i', i); });
    rows.sort(function (a, b) {
      var x = cellValue(a, key), y = cellValue(b, key), order = 0;
      if (numeric) {
        var fx = (x === null || x === '') ? NaN : parseFloat(x);
        var fy = (y === null || y === '') ? NaN : parseFloat(y);
        if (isNaN(fx) && !isNaN(fy)) { return 1; }
        if (!isNaN(fx) && isNaN(fy)) { return -1; }
        if (!isNaN(fx) && !isNaN(fy)) { order = ascending ? fx - fy : fy - fx; }
      } else {
        order = (x || '').localeCompare(y || '', undefined, {numeric: true});
        if (!ascending) { order = -order; }
      }
      return order || (parseInt(a.getAttribute('data-i'), 10) - parseInt(b.getAttribute('data-i'), 10));
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.tabIndex = 0;
      th.addEventListener('click', function () { sortTable(table, th); });
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortTable(table, th); }
      });
    });
  });
  function applyFilter() {
    var hidden = {};
    Array.prototype.forEach.call(document.querySelectorAll('input.family-filter'), function (box) {
      if (!box.checked) { hidden[box.value] = true; }
    });
    Array.prototype.forEach.call(document.querySelectorAll('[data-family]'), function (el) {
      el.classList.toggle('filtered', hidden[el.getAttribute('data-family')] === true);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('input.family-filter'), function (box) {
    box.addEventListener('change', applyFilter);
  });
  applyFilter();
  Array.prototype.forEach.call(document.querySelectorAll('.tabs .tab'), function (tab) {
    tab.addEventListener('click', function () {
      var section = tab.closest('section');
      Array.prototype.forEach.call(section.querySelectorAll('.tabs .tab'), function (other) {
        var selected = other === tab;
        other.setAttribute('aria-selected', selected ? 'true' : 'false');
        document.getElementById(other.getAttribute('aria-controls')).hidden = !selected;
      });
    });
  });
})();
"""


def _num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _td(key: str, value: str, content: str, *, cls: str = "", title: str = "") -> str:
    """A cell: ``data-col`` names its column (the sort looks cells up by it), ``data-v`` is its sort value."""
    attrs = f' data-col="{escape(key)}" data-v="{escape(value)}"'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{escape(title)}"'
    return f"<td{attrs}>{content}</td>"


def _metric_td(row: Row, name: str, best: bool, reported: bool = False, other: str | None = None) -> str:
    summary = row.metrics.get(name)
    if summary is not None and summary.not_applicable:
        reason = escape(summary.not_applicable)
        content = f'<span class="m">{NA}</span><span class="ci">{reason}</span>'
        return _td(name, "", content, cls="na", title=summary.not_applicable)
    if summary is None or summary.mean is None:
        return _td(name, "", DASH)
    main = escape(fmt_mean_std(summary, reported=reported))
    if reported:
        return _td(name, _num(summary.mean), f'<span class="m">{main}</span>')
    values = ", ".join(fmt_value(v) for v in summary.values)
    content = f'<span class="m">{main}</span><span class="ci">{escape(fmt_ci(summary))}</span>'
    if other:  # another space than the column's other rows: no sort value, so a sort never ranks it
        short = other.split("(", 1)[0]  # the full name, with its settings, is in the tooltip
        content += f'<span class="ci">{escape(short)}: another space, not ranked</span>'
        return _td(name, "", content, title=f"per seed: {values}; measured in {other}, not compared")
    return _td(name, _num(summary.mean), content, cls="best" if best else "", title=f"per seed: {values}")


def _th(key: str, label: str, *, numeric: bool, direction: str | None = None, title: str = "") -> str:
    attrs = f' data-col="{escape(key)}"'
    attrs += ' data-type="num"' if numeric else ' data-type="text" class="text"'
    if direction:
        attrs += f' data-dir="{direction}"'
    if title:
        attrs += f' title="{escape(title)}"'
    return f"<th{attrs}>{escape(label).replace('_', '_<wbr>')}</th>"


def _metric_headers(columns: Sequence[str], rows: Sequence[Row]) -> list[str]:
    out = []
    for name in columns:
        summary = next(r.metrics[name] for r in rows if name in r.metrics)
        label = f"{name} {arrow(summary.direction)}"
        out.append(_th(name, label, numeric=True, direction=summary.direction, title=summary.description))
    return out


def _name_td(row: Row) -> str:
    """The row's name; a reference row shows its model (``Test``) and says what it is in the tooltip."""
    badges = ""
    if row.kind in ("reference", "external"):
        badges += f'<span class="badge {row.kind}">{row.kind}</span>'
    if row.status != "complete":
        badges += f'<span class="badge failed">{escape(row.status.replace("_", " "))}</span>'
    shown, title = (row.model, row.variant) if row.kind == "reference" else (row.name, "")
    return _td("model", row.name, f'<span class="name">{escape(shown)}</span>{badges}', cls="text",
               title=title)


def _protocol_td(row: Row) -> str:
    """The protocol's short id (the full label in the tooltip), so a row stays one line high."""
    badge = "" if row.official else '<span class="badge unofficial">not official</span>'
    content = f'<span class="name">{escape(short_protocol(row))}</span>{badge}'
    return _td("protocol", row.protocol, content, cls="text", title=row.protocol)


def _own_table(dataset: str, rows: Sequence[Row]) -> str:
    columns = metric_columns(rows)
    best = best_per_column(rows, columns)
    others = other_space(rows, columns)
    protocols = sorted({(r.protocol, bool(r.official)) for r in rows})
    show_protocol = len(protocols) > 1  # one protocol: said once above the table instead of in every row
    head = [
        _th("model", "model", numeric=False),
        _th("family", "family", numeric=False),
        *([_th("protocol", "protocol", numeric=False)] if show_protocol else []),
        _th("seeds", "seeds", numeric=True, direction="max"),
        *_metric_headers(columns, rows),
        _th("parameters", "params", numeric=True, direction="min", title="trainable parameters (mean)"),
        _th("train_seconds", "train s", numeric=True, direction="min", title="training wall time, seconds"),
        _th("samples_per_second", "samples/s", numeric=True, direction="max", title="structures per second"),
    ]
    body = []
    for i, row in enumerate(rows):
        cells = [
            _name_td(row),
            _td("family", row.family, escape(row.family), cls="text"),
            *([_protocol_td(row)] if show_protocol else []),
        ]
        if row.status == "complete":
            seeds = ", ".join(map(str, row.seeds))
            cells.append(_td("seeds", str(len(row.seeds)), str(len(row.seeds)), title=f"seeds: {seeds}"))
            cells += [_metric_td(row, m, i in best.get(m, set()), other=others.get((i, m))) for m in columns]
        else:  # the reason spans the metric columns, which a failed run has no values for
            cells.append(_td("seeds", "", DASH))
            reason = escape(truncate(row.reason or "no reason recorded", 400))
            cells.append(
                f'<td class="reason" colspan="{len(columns)}" title="{escape(row.reason or "")}">'
                f"<b>{escape(row.status.replace('_', ' '))}</b>: {reason}</td>"
            )
        cells += [
            _td("parameters", _num(row.cost.get("parameters")), fmt_params(row.cost.get("parameters"))),
            _td(
                "train_seconds",
                _num(row.cost.get("train_seconds")),
                fmt_seconds(row.cost.get("train_seconds")),
            ),
            _td(
                "samples_per_second",
                _num(row.cost.get("samples_per_second")),
                fmt_rate(row.cost.get("samples_per_second")),
            ),
        ]
        body.append(
            f'<tr class="kind-{escape(row.kind)} status-{escape(row.status)}" '
            f'data-family="{escape(row.family)}">{"".join(cells)}</tr>'
        )
    caption = ""
    if not show_protocol:
        label, official = protocols[0]
        badge = "" if official else '<span class="badge unofficial">not official</span>'
        caption = f'<p class="note">Split protocol: <b>{escape(label)}</b>{badge}</p>'
    return (
        f'{caption}<div class="table-wrap"><table class="board sortable" id="table-{escape(dataset)}">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _published_section(dataset: str, rows: Sequence[Row]) -> str:
    meta = published_meta()
    columns = metric_columns(rows)
    head = [
        _th("model", "model", numeric=False),
        _th("family", "family", numeric=False),
        *_metric_headers(columns, rows),
    ]
    body = []
    for row in rows:
        badge = '<span class="badge published">reported, not re-run</span>'
        name = f'<span class="name">{escape(row.name)}</span>{badge}'
        cells = [
            _td("model", row.name, name, cls="text"),
            _td("family", row.family, escape(row.family), cls="text"),
            *[_metric_td(row, m, False, reported=True) for m in columns],
        ]
        body.append(f'<tr class="kind-published" data-family="{escape(row.family)}">{"".join(cells)}</tr>')
    return (
        f'<section class="published"><h3>{escape(dataset)}: reported, not re-run</h3>'
        f'<p class="note">Copied from <a href="{escape(meta["url"])}">{escape(meta["citation"])}</a> '
        f"{escape(meta['protocol_note'])} Not comparable with runs on other protocols.</p>"
        f'<div class="table-wrap"><table class="board sortable published" id="published-{escape(dataset)}">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


_QUALITY_LABELS = {
    "crystal": "valid·unique·novel rate (else valid)",
    "composition": "comp_vun_rate (else comp_smact_valid)",
}
"""The y axis of the quality-versus-cost plot by track
(:func:`~bench.leaderboard.aggregate.quality_metric`)."""


def _scatter(runs: Sequence[Row], labels: dict[int, str], colors: dict[str, str],
             refs: Sequence[Row] = ()) -> str:
    """The quality-versus-cost plot of one protocol's complete runs, every point labelled, the reference rows
    as lines, and a note naming the runs it cannot show."""
    points, missing = [], []
    for r in runs:
        q, x = quality(r), total_seconds(r)
        if q is None or x is None or x <= 0:
            missing.append(labels[id(r)])
            continue
        y_name = quality_metric(r)
        points.append(
            Point(
                labels[id(r)],
                r.family,
                x,
                q,
                f"{r.name} ({r.family}): {y_name} {q:.3f}, train+sample {x:,.0f} s, {len(r.seeds)} seed(s)",
            )
        )
    parts = []
    if points:
        parts.append(
            scatter_svg(
                points,
                colors,
                title="Quality versus cost",
                x_label="train + sample seconds (log scale)",
                y_label=_QUALITY_LABELS.get(runs[0].track, _QUALITY_LABELS["crystal"]),
                refs=[(r.model, q) for r in refs if (q := quality(r)) is not None],
            )
        )
    if missing:
        parts.append(
            f'<p class="note">Not in the quality-versus-cost plot (no quality or no recorded cost): '
            f"{escape(', '.join(missing))}.</p>"
        )
    return "".join(parts)


def _bar_plots(rows: Sequence[Row], colors: dict[str, str]) -> str:
    """Per protocol, one bar plot per metric of the complete runs, the reference rows as dashed lines."""
    by_protocol: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_protocol[row.protocol_id].append(row)
    parts = []
    for pid in protocol_order(rows):
        protocol_rows = by_protocol[pid]
        runs = [r for r in protocol_rows if r.is_rerun]
        refs = [r for r in protocol_rows if r.kind == "reference" and r.status == "complete"]
        if not runs:
            continue
        ordered = sorted(runs, key=lambda r: (r.family, r.name.lower()))
        labels = dict(zip(map(id, ordered), row_labels(ordered), strict=True))
        parts.append(
            f'<h3>Per-metric plots <span class="muted">(protocol: {escape(protocol_rows[0].protocol)})'
            f'</span></h3><div class="plots">'
        )
        not_applicable: dict[str, list[str]] = defaultdict(list)
        not_plotted: list[str] = []
        for name in metric_columns(runs):
            reason = next((r.metrics[name].not_applicable for r in runs
                           if name in r.metrics and r.metrics[name].not_applicable), None)
            if reason is not None:  # no flat panel of zeros: the metric says nothing here
                not_applicable[reason].append(name)
                continue
            bars = []
            primary, elsewhere = primary_space(ordered, name), []
            for r in ordered:
                s = r.metrics.get(name)
                if s is None or s.mean is None:
                    continue
                if s.space not in (None, primary):  # another variable: never on the same axis
                    elsewhere.append(labels[id(r)])
                    continue
                low, high = s.ci if s.ci is not None else (None, None)
                ci_text = f" [{fmt_value(low)}, {fmt_value(high)}]" if s.ci else " (1 seed, no CI)"
                bars.append(Bar(labels[id(r)], r.family, s.mean, low, high,
                                f"{r.name}: {fmt_mean_std(s)}{ci_text}"))
            if not bars:
                continue
            ref_lines = [
                (r.model, r.metrics[name].mean)
                for r in refs
                if name in r.metrics and r.metrics[name].mean is not None
            ]
            direction, description = next(
                (r.metrics[name].direction, r.metrics[name].description) for r in runs if name in r.metrics
            )
            parts.append(bars_svg(name, direction, bars, colors, refs=ref_lines, description=description))
            if elsewhere:
                not_plotted.append(f"{name} of {', '.join(elsewhere)} (another space)")
        parts.append("</div>")
        if not_plotted:
            listed = escape("; ".join(not_plotted))
            parts.append(f'<p class="note">Not plotted beside the others: {listed}.</p>')
        for reason, names in not_applicable.items():
            parts.append(
                f'<p class="note">Not plotted, n/a ({escape(reason)}): {escape(", ".join(names))}.</p>'
            )
    return "".join(parts)


_DASHES = ("", "6 3", "2 3", "8 3 2 3")
"""Line styles telling apart the curves of one family (one colour) in the quality-versus-NFE figure."""


def _nfe_figure(dataset: str, k: int, rows: Sequence[Row], curves: Sequence[NfeCurve],
                colors: dict[str, str]) -> str:
    """One protocol's quality-versus-NFE small multiples: a panel per :data:`~bench.leaderboard.nfe.
    NFE_PANELS` entry, the same curves (mean over seeds, 95% interval whiskers) and labels in each."""
    x_values = [x for c in curves for x in c.nfes]
    per_family: dict[str, int] = defaultdict(int)
    dashes = []
    for c in curves:  # the lines of one family (one colour) get different styles; points need none
        dashes.append(_DASHES[per_family[c.family] % len(_DASHES)] if c.is_curve else "")
        per_family[c.family] += c.is_curve
    panels = []
    for key, title in NFE_PANELS:
        drawn, direction, description = [], "max", ""
        for curve, dash in zip(curves, dashes, strict=True):
            points = []
            for r in curve.rows:
                summary, x = panel_summary(r, key), nfe(r)
                if summary is None or x is None:
                    continue
                direction, description = summary.direction, description or summary.description
                low, high = summary.ci if summary.ci is not None else (None, None)
                rate = key in INTERVAL_COSTS
                shown = fmt_rate(summary.mean) if rate else fmt_mean_std(summary)
                tip = (f"{r.name}: NFE {x:,.0f}, {title} {shown} {fmt_ci(summary, rate=rate)}, "
                       f"{len(summary.values)} seed(s)")
                points.append(CurvePoint(x, summary.mean, low, high, tip))
            drawn.append(Curve(curve.label, curve.family, tuple(points), dash))
        if not any(c.points for c in drawn):
            continue
        rate = key in INTERVAL_COSTS  # a cost: structures per second, on a log axis
        panels.append(curves_svg(
            drawn, colors, title=f"{title} {arrow(direction)}" + (" (log)" if rate else ""),
            x_label="NFE per sample (log scale)", x_values=x_values, log_y=rate,
            unit=METRIC_RANGES.get(key) == (0.0, 1.0), metric=key,
            description=description or ("structures generated per second, on the device each run sampled on"
                                        if rate else title),
        ))
    first = rows[0]
    unplaced = [r.name for r in rows if r.kind == "run" and r.status == "complete" and nfe(r) is None]
    caption = (
        f"Quality versus NFE, {escape(short_protocol(first))}: each line joins the rows of one trained model "
        "sampled by one sampler family at different NFE (network function evaluations per sample); a lone "
        "point is a model sampled at one NFE. Points: mean over seeds; whiskers: the 95% interval of the "
        "mean, as in the tables. samples/s was measured on the device each run sampled on."
    )
    if unplaced:
        caption += f" Not placed (no NFE recorded): {escape(', '.join(unplaced))}."
    return (
        f'<figure class="nfe" id="nfe-{escape(dataset)}-{k}" data-protocol="{escape(first.protocol_id)}">'
        f'<div class="plots">{"".join(panels)}</div>'
        f'<figcaption class="note">{caption}</figcaption></figure>'
    )


def _nfe_section(dataset: str, rows: Sequence[Row], colors: dict[str, str]) -> str:
    """Per protocol (in :func:`~bench.leaderboard.headline.protocol_order`), the quality-versus-NFE figure
    when one of its trained models has rows at two or more NFE, else one sentence saying which rows would
    make it."""
    by_protocol: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_protocol[row.protocol_id].append(row)
    parts = []
    for k, pid in enumerate(protocol_order(rows)):
        protocol_rows = by_protocol[pid]
        curves = nfe_curves(protocol_rows)
        if shows_nfe(curves):
            parts.append(_nfe_figure(dataset, k, protocol_rows, curves, colors))
        elif (sentence := missing_sentence(protocol_rows)) is not None:
            parts.append(f'<p class="note nfe-none" data-protocol="{escape(pid)}">'
                         f"<b>{escape(short_protocol(protocol_rows[0]))}</b>: {_inline(sentence)}</p>")
    if not parts:
        return ""
    return f'<h3 id="nfe-{escape(dataset)}">Quality versus NFE</h3>{"".join(parts)}'


_FUNNEL_INTRO = (
    "How many of the requested items survive each screen, each stage a subset of the one before: decoded "
    "(the representation made a {item} of it), valid, unique (the first of its duplicates), novel (not in "
    "the training split; the numerator of <code>{vun}</code>), plausible (the property the suite's own "
    "predictor gives it within the training split's central 99%). Mean count over seeds, the share of the "
    "requested items beside it; <i>n/a</i>: no funnel in the records (scored before it) or a stage that "
    "does not apply."
)


def _funnel_figure(dataset: str, k: int, rows: Sequence[Row]) -> str:
    """One protocol's funnel: the nested-bar plot, the counts table and the plausible rule."""
    labels = row_labels(rows)
    bars, body = [], []
    for row, label in zip(rows, labels, strict=True):
        f = row.funnel
        seeds = len(row.seeds)
        if f is None:
            note = "n/a: no funnel in its records (scored before it)"
            bars.append(FunnelBar(label, row.family, (), f"{row.name}: {note}", note))
        else:
            counts = tuple(s.mean for s in f.stages)
            tip = "; ".join(f"{s.name} {fmt_count(s.mean)}" + (f" ({100 * s.fraction:.1f}%)" if s.fraction
                                                               is not None else "") for s in f.stages)
            over = f"{f.n_seeds} of {seeds} seeds" if not f.complete else f"{seeds} seed{'s' * (seeds != 1)}"
            bars.append(FunnelBar(label, row.family, counts, f"{row.name} ({over}): {tip}"))
        cells = [_td("model", label, f'<span class="name">{_label_html(label)}</span>', cls="text",
                     title=row.name)]
        if f is None:
            cells.append(_td("seeds", str(seeds), str(seeds), title="no funnel in these records"))
            cells += [_td(name, "", NA, cls="na", title="recorded before the funnel")
                      for name in FUNNEL_STAGES]
        else:
            shown = str(f.n_seeds) if f.complete else f"{f.n_seeds} of {seeds}"
            cells.append(_td("seeds", str(f.n_seeds), shown, title="seeds whose records carry the funnel"))
            for stage in f.stages:
                if stage.mean is None:
                    cells.append(_td(stage.name, "", NA, cls="na", title=stage.reason or "n/a"))
                    continue
                pct = "" if stage.fraction is None else f'<span class="ci">{100 * stage.fraction:.1f}%</span>'
                cells.append(_td(stage.name, _num(stage.mean), f"{escape(fmt_count(stage.mean))}{pct}"))
        kind = f" kind-{escape(row.kind)}" if row.kind != "run" else ""
        body.append(f'<tr class="funnel-row{kind}" data-family="{escape(row.family)}">{"".join(cells)}</tr>')
    head = [_th("model", "model", numeric=False), _th("seeds", "seeds", numeric=True, direction="max")]
    head += [_th(name, name, numeric=True, direction="max") for name in FUNNEL_STAGES]
    rules = list(dict.fromkeys(r.funnel.rule for r in rows if r.funnel is not None and r.funnel.rule))
    reasons = list(dict.fromkeys(r.funnel.stage("plausible").reason for r in rows if r.funnel is not None
                                 and r.funnel.stage("plausible").reason))
    notes = [f"<i>plausible</i>: {escape(rule)}." for rule in rules]
    notes += [f"<i>plausible</i> n/a: {escape(reason)}." for reason in reasons]
    first = rows[0]
    svg = funnel_svg(bars, FUNNEL_STAGES, title=f"Usability funnel, {short_protocol(first)}",
                     description="share of the requested items that reach each stage, mean over seeds")
    table = (f'<div class="table-wrap"><table class="board sortable funnel" '
             f'id="funnel-table-{escape(dataset)}-{k}"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    return (
        f'<figure class="funnel" id="funnel-{escape(dataset)}-{k}" '
        f'data-protocol="{escape(first.protocol_id)}">'
        f'<div class="funnel-body"><div class="plots">{svg}</div>{table}</div>'
        f'<figcaption class="note"><b>{escape(short_protocol(first))}</b>. {" ".join(notes)}</figcaption>'
        "</figure>"
    )


def _funnel_section(dataset: str, rows: Sequence[Row]) -> str:
    """Per protocol (in :func:`~bench.leaderboard.headline.protocol_order`), the usability funnel of its
    complete rows; one sentence when no record of the dataset has a funnel."""
    shown = funnel_rows(rows)
    if not shown:
        return ""
    first = shown[0]
    item = "formula" if first.track == "composition" else "structure"
    vun = "comp_vun_rate" if first.track == "composition" else "vun_rate"
    intro = f'<p class="note">{_FUNNEL_INTRO.format(item=item, vun=vun)}</p>'
    head = f'<h3 id="funnel-{escape(dataset)}">Usability funnel</h3>{intro}'
    if not any(r.funnel is not None for r in shown):
        return (f'{head}<p class="note funnel-none">No record of {escape(dataset)} carries the funnel yet '
                "(scored before it): n/a for every row. "
                "<code>matgenbench rescore --funnel-from-tables</code> adds it from the records' per-sample "
                "tables.</p>")
    by_protocol: dict[str, list[Row]] = defaultdict(list)
    for row in shown:
        by_protocol[row.protocol_id].append(row)
    figures = [_funnel_figure(dataset, k, by_protocol[pid]) for k, pid in enumerate(protocol_order(shown))]
    return head + "".join(figures)


def _label_html(label: str) -> str:
    """A row label that may wrap only after a ``+`` (model+sampler), never inside a name."""
    pieces = label.split("+")
    return "<wbr>+".join(f'<span class="seg">{escape(p)}</span>' for p in pieces)


def _glance_metric_td(row: Row, name: str, best: bool, reported: bool = False) -> str:
    summary = row.metrics.get(name)
    if summary is not None and summary.not_applicable:
        return f'<td class="na" title="{escape(summary.not_applicable)}">{NA}</td>'
    if summary is None or summary.mean is None:
        return f"<td>{DASH}</td>"
    main = escape(fmt_mean_std(summary, reported=reported))
    if reported:
        return f'<td><span class="m">{main}</span></td>'
    values = ", ".join(fmt_value(v) for v in summary.values)
    cls = ' class="best"' if best else ""
    return (f'<td{cls} title="per seed: {escape(values)}"><span class="m">{main}</span>'
            f'<span class="ci">{escape(fmt_ci(summary))}</span></td>')


def _glance_row(row: Row, label: str, columns: Sequence[str], best: set[str], *, cls: str, badge: str) -> str:
    name = f'<span class="name">{_label_html(label)}</span>{badge}'
    cells = [f'<td class="label text" title="{escape(row.name)}">{name}</td>']
    if row.kind == "published":
        cells.append('<td class="muted">paper</td>')
        cells += [_glance_metric_td(row, m, False, reported=True) for m in columns]
    elif row.kind == "reference" and row.status == "complete":  # one draw each: the value, no interval
        cells.append(f"<td>{len(row.seeds)}</td>")
        cells += [_glance_metric_td(row, m, False, reported=True) for m in columns]
    elif row.status == "complete":
        seeds = ", ".join(map(str, row.seeds))
        cells.append(f'<td title="seeds: {seeds}">{len(row.seeds)}</td>')
        cells += [_glance_metric_td(row, m, m in best) for m in columns]
    else:
        cells.append(f"<td>{DASH}</td>")
        reason = escape(truncate(row.reason or "no reason recorded", 160))
        cells.append(
            f'<td class="reason" colspan="{len(columns)}" title="{escape(row.reason or "")}">'
            f"<b>{escape(row.status.replace('_', ' '))}</b>: {reason}</td>"
        )
    return f'<tr class="{cls}" data-family="{escape(row.family)}">{"".join(cells)}</tr>'


def _glance_panel(dataset: str, k: int, rows: Sequence[Row], cdvae: Row | None, colors: dict[str, str],
                  *, shown: bool, tabbed: bool) -> str:
    """One protocol's first screen: the headline table (the runs by name, no ranking implied beyond the
    highlighted leads; then the Test and Random references and the published CDVAE row) and the
    quality-versus-cost plot."""
    runs = sorted((r for r in rows if r.kind in RERUN_KINDS),
                  key=lambda r: (r.status != "complete", r.kind != "run", r.name.lower()))
    refs = sorted((r for r in rows if r.kind == "reference" and r.status == "complete"
                   and r.model in REFERENCE_MODELS), key=lambda r: REFERENCE_MODELS.index(r.model))
    present = set(metric_columns([*runs, *refs]))
    columns = [m for m in SHOW_METRICS if m in present]
    best_idx = best_per_column(runs, columns)
    labels = dict(zip(map(id, runs), row_labels(runs), strict=True))
    first = rows[0]
    steps = train_steps(rows)
    facts = [f"<b>{escape(short_protocol(first))}</b>"]
    if steps:
        facts.append(f"{steps:,.0f} training steps")
    if first.official:
        facts.append("the project's pinned protocol" if "pinned" in first.protocol else "official protocol")
    else:
        facts.append("not the official protocol")
    facts.append(f'<span class="muted">{escape(first.protocol)}</span>')
    head = ['<th class="text">model</th>', '<th title="training seeds pooled in the row">seeds</th>']
    for name in columns:
        summary = next(r.metrics[name] for r in [*runs, *refs] if name in r.metrics)
        head.append(f'<th title="{escape(summary.description)}">{escape(name).replace("_", "_<wbr>")} '
                    f"{arrow(summary.direction)}</th>")
    body = [
        _glance_row(r, labels[id(r)], columns, {m for m in columns if i in best_idx.get(m, set())},
                    cls=f"glance-run status-{escape(r.status)}",
                    badge="" if r.kind == "run" else f'<span class="badge {r.kind}">{r.kind}</span>')
        for i, r in enumerate(runs)
    ]
    body += [
        _glance_row(r, r.model, columns, set(), cls="glance-ref" + (" first-ref" if j == 0 else ""),
                    badge='<span class="badge reference">reference</span>')
        for j, r in enumerate(refs)
    ]
    if cdvae is not None:
        body.append(_glance_row(cdvae, cdvae.model, columns, set(), cls="glance-published",
                                badge='<span class="badge published">reported, not re-run</span>'))
    meta = published_meta()
    notes = ["Cells: mean ± standard deviation over seeds, the 95% interval of the mean below; highlighted: "
             "a lead that holds (Welch's t-test)."]
    if refs:
        has_val = any(r.model == "Val" for r in refs)
        val = "Val: the validation split, another draw of the data; " if has_val else ""
        notes.append(f"{' and '.join(r.model for r in refs)}: reference rows of this protocol, scored by the "
                     f"same suite (Test: the test split itself, the ceiling; {val}Random: random "
                     f"{first.track}s, the floor).")
    if cdvae is not None:
        notes.append(f"CDVAE: reported by {escape(meta['short_citation'])} on their protocol "
                     f"({escape(meta['protocol'])}), not re-run here: not comparable.")
    if shows_nfe(nfe_curves(rows)):
        notes.append(f'<a href="#nfe-{escape(dataset)}-{k}">Quality versus NFE</a> of the runs sampled with '
                     "several step counts: in the details.")
    if any(r.funnel is not None for r in rows):
        notes.append(f'<a href="#funnel-{escape(dataset)}">Usability funnel</a> (requested → decoded → '
                     "valid → unique → novel → plausible) of every row: in the details.")
    scatter = _scatter([r for r in runs if r.is_rerun], labels, colors, refs)
    hidden = "" if shown else " hidden"
    tab = f' role="tabpanel" aria-labelledby="tab-{escape(dataset)}-{k}"' if tabbed else ""
    return (
        f'<div class="glance-panel" id="panel-{escape(dataset)}-{k}"{tab} '
        f'data-protocol="{escape(first.protocol_id)}"{hidden}>'
        f'<p class="facts">{" · ".join(f for f in facts if f)}</p>'
        f'<div class="glance-body"><div class="glance-table"><div class="table-wrap">'
        f'<table class="board glance" id="glance-{escape(dataset)}-{k}">'
        f'<thead><tr>{"".join(head)}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
        f'<p class="note">{" ".join(notes)}</p></div>'
        f'<figure class="glance-plot">{scatter}</figure></div></div>'
    )


def _glance(dataset: str, own: Sequence[Row], published: Sequence[Row], colors: dict[str, str]) -> str:
    """A dataset's first screen: a tab per protocol (the primary one open), each with its headline table and
    plot."""
    cdvae = next((r for r in published if r.model == "CDVAE"), None)
    parts = [f'<section class="dataset glance" id="ds-{escape(dataset)}">'
             f'<h2>{escape(dataset_title(dataset, own))}</h2>']
    if not own:
        parts.append(
            '<p class="muted">No runs of this project on this dataset yet; the published numbers are under '
            f'<a href="#details-{escape(dataset)}">details</a>.</p></section>'
        )
        return "".join(parts)
    order = protocol_order(own)
    by_protocol: dict[str, list[Row]] = defaultdict(list)
    for row in own:
        by_protocol[row.protocol_id].append(row)
    if len(order) > 1:
        tabs = []
        for k, pid in enumerate(order):
            rows = by_protocol[pid]
            steps = train_steps(rows)
            text = short_protocol(rows[0]) + (f" · {steps:,.0f} steps" if steps else "")
            tabs.append(
                f'<button type="button" class="tab" role="tab" id="tab-{escape(dataset)}-{k}" '
                f'aria-controls="panel-{escape(dataset)}-{k}" '
                f'aria-selected="{"true" if k == 0 else "false"}">'
                f"{escape(text)}</button>"
            )
        parts.append(f'<div class="tabs" role="tablist" aria-label="split protocol">'
                     f'<span class="muted">Protocol:</span>{"".join(tabs)}</div>')
    for k, pid in enumerate(order):
        parts.append(_glance_panel(dataset, k, by_protocol[pid], cdvae, colors, shown=k == 0,
                                   tabbed=len(order) > 1))
    parts.append(f'<p class="more"><a href="#details-{escape(dataset)}">Every row, metric and finding of '
                 f"{escape(dataset)} ↓</a></p></section>")
    return "".join(parts)


def _legend(composition: bool = False) -> str:
    """The reading guide; ``composition``: the board has composition-track rows, which get an item of their
    own (a crystal-only board reads as before)."""
    meta = published_meta()
    items = [
        "Cells: mean ± sample standard deviation over seeds; below it the 95% confidence interval of the "
        "mean: Student-t below 10 seeds, percentile bootstrap (2,000 resamples) from 10 seeds on. One seed: "
        "no spread, <i>CI n/a (1 seed)</i>.",
        "↑ higher is better, ↓ lower is better. Highlighted: the leader of its column among this project's "
        "complete runs on the same split protocol, only when its lead over the runner-up holds (Welch's "
        "t-test p &lt; 0.05 and more than two units of the last shown digit apart); ties at display "
        "precision, references and published numbers never are.",
        "<code>vun_rate</code>: fraction of all samples that are valid AND unique AND novel, decided per "
        "structure (unique: the first of each set of matching structures; MatterGen's convention). It is "
        "the y axis of the quality-versus-cost plot (<code>valid</code> where it is missing).",
        "<i>Usability funnel</i> (in the details): of the requested items, how many were decoded, valid, "
        "unique, novel and plausible (predicted property within the training split's central 99%), each "
        "stage a subset of the one before; mean count over seeds. <i>n/a</i> for records scored before it.",
        "<i>Quality versus NFE</i> (in the details): one trained model sampled with several step counts, "
        "one line per sampler family (the variant's <code>+ddim-50</code>-style tag without its step count) "
        "over the network evaluations per sample; mean over seeds with the 95% interval of the mean.",
        "Click a column header to sort (first click: best first; again: reverse). Untick a family to "
        "hide its rows and plot marks.",
        "<i>reference</i> rows are baselines scored by the same metric suite; <i>external</i> rows are "
        "someone "
        "else's samples scored here. Failed or not-applicable runs stay on the board with their reason.",
        "<i>n/a</i>: the metric does not apply to the dataset, with the reason under it (composition "
        "metrics on single-element data such as Carbon-24, where every model would score 0); it is neither "
        "ranked nor plotted.",
        f"<i>Reported, not re-run</i>: numbers copied from {escape(meta['short_citation'])}, "
        "on their protocol "
        f"({escape(meta['protocol'])}).",
    ]
    if composition:
        items.append(
            "<i>Composition track</i> (datasets marked so): the models generate formulas, scored by the "
            "composition metrics (<code>comp_*</code>: SMACT validity, uniqueness, novelty and their "
            "<code>comp_vun_rate</code>; element-histogram JSD, Magpie Fréchet distance, predicted-target W1 "
            "on a draw of the samples against the test split); <code>nll_test</code> there is in nats per "
            "composition. Reference rows: draws of the test and validation formulas (Test, Val) and random "
            "compositions (Random)."
        )
    return (
        '<details class="legend"><summary>How to read this page</summary><ul>'
        + "".join(f"<li>{item}</li>" for item in items)
        + "</ul></details>"
    )


def _inline(text: str) -> str:
    out = escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", out)
    return re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', out)


def markdown_block(text: str) -> str:
    """The small Markdown subset of the findings and the analysis as HTML: ``#``-headings (shown one level
    below the page's), ``-`` bullets nested by two-space indents, paragraphs, ``**bold**``, ``*italic*``,
    `` `code` `` and links."""
    html: list[str] = []
    paragraph: list[str] = []
    depth = 0  # open <ul> levels, each with an open <li>

    def end_paragraph() -> None:
        if paragraph:
            html.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    def close_lists(to: int) -> None:
        nonlocal depth
        while depth > to:
            html.append("</li></ul>")
            depth -= 1

    for raw in text.splitlines():
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if not line:
            end_paragraph()
            close_lists(0)
        elif line.startswith("#"):
            end_paragraph()
            close_lists(0)
            level = min(6, len(line) - len(line.lstrip("#")) + 1)
            html.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            end_paragraph()
            level = min(indent // 2 + 1, depth + 1)
            if level > depth:
                html.append("<ul>")
                depth = level
            else:
                close_lists(level)
                html.append("</li>")
            html.append(f"<li>{_inline(line[2:])}")
        elif depth and indent:  # continuation of the open bullet
            html.append(f" {_inline(line)}")
        else:
            close_lists(0)
            paragraph.append(line)
    end_paragraph()
    close_lists(0)
    return "".join(html)


def render_html(board: Board, *, title: str = "matgenbench leaderboard", analysis: str | None = None) -> str:
    """Render a :class:`Board` as one self-contained HTML page (inline CSS, JS and SVG; no network).

    The page opens with the answer: per dataset, the headline table of its primary protocol (runs best first,
    the Test and Random references and the published CDVAE row beside them) and the quality-versus-cost plot,
    with a tab per other protocol. The hand-written analysis follows, then the details: every row and metric,
    the findings, the per-metric plots and the published tables.

    Args:
        board: The aggregated board.
        title: Page title.
        analysis: Hand-written Markdown (``leaderboard/analysis.md``), under "Analysis" after the headline
            tables.
    """
    colors = family_colors(r.family for r in board.rows)
    datasets = board.datasets()
    composition = any(r.track == "composition" for r in board.rows)
    formulas = " (and, on the composition track, of formulas)" if composition else ""
    filters = "".join(
        f'<label><input type="checkbox" class="family-filter" value="{escape(fam)}" checked>'
        f'<span class="swatch" style="background:{colors[fam]}"></span>{escape(fam)}</label>'
        for fam in sorted(colors)
    )
    has_analysis = bool(analysis and analysis.strip())
    links = [f'<a href="#ds-{escape(d)}">{escape(d)}</a>' for d in datasets]
    if has_analysis:
        links.append('<a href="#analysis">analysis</a>')
    links.append("<span class=\"muted\">details:</span>" + "".join(
        f'<a href="#details-{escape(d)}">{escape(d)}</a>' for d in datasets))
    glances, details = [], []
    for dataset in datasets:
        own, published = board.own_rows(dataset), board.published_rows(dataset)
        glances.append(_glance(dataset, own, published, colors))
        parts = [f'<section class="dataset details" id="details-{escape(dataset)}">'
                 f'<h2>{escape(dataset_title(dataset, own))}: every row, finding and metric</h2>']
        if own:
            parts.append(_own_table(dataset, own))
            found = summary_markdown(own, dataset)
            if found:
                block = markdown_block(chr(10).join(found))
                parts.append(f'<div class="findings"><h3>Findings</h3>{block}</div>')
            parts.append(_funnel_section(dataset, own))
            parts.append(_nfe_section(dataset, own, colors))
            parts.append(_bar_plots(own, colors))
        else:
            parts.append('<p class="muted">No runs of this project on this dataset yet.</p>')
        if published:
            parts.append(_published_section(dataset, published))
        parts.append("</section>")
        details.append("".join(parts))
    excluded = ""
    if board.excluded:
        items = "".join(
            f"<li><code>{escape(e.path)}</code>: {escape(truncate('; '.join(e.problems), 300))}</li>"
            for e in board.excluded
        )
        excluded = (
            f'<section id="excluded"><h2>Records left out</h2><p>{len(board.excluded)} file(s) under '
            f"<code>leaderboard/results/</code> are not on the board:</p><ul>{items}</ul></section>"
        )
    empty = (
        ""
        if board.n_records
        else '<p class="muted">No result records yet: run <code>matgenbench run</code>.</p>'
    )
    n = board.n_records
    analysis_html = (f'<section id="analysis"><h2>Analysis</h2>{markdown_block(analysis or "")}</section>'
                     if has_analysis else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>"
        f'<div class="lead">Generative models of crystals{formulas} trained and scored the same way. '
        f"Built from {n} result "
        f"record{'s' if n != 1 else ''}, each validated against <code>record.schema.json</code>. "
        f"<nav>{''.join(links)}</nav></div></header>"
        f'<div class="controls"><b>Families</b>{filters}{_legend(composition)}</div>{empty}'
        f"{''.join(glances)}{analysis_html}{''.join(details)}{excluded}<script>{_JS}</script></body></html>\n"
    )
