"""Inline SVG plots for the HTML board, generated as text: deterministic, testable, no plotting library.

Four plots: quality versus cost (log-scaled x, coloured by family, Pareto front drawn, every point labelled),
per-metric horizontal bars (mean with confidence-interval whiskers, reference values as dashed lines), one
panel of the quality-versus-NFE small multiples (a line per trained model and sampler family over log-scaled
NFE, with interval whiskers, every line labelled), and the usability funnel (per model one line of nested
bars, requested to plausible, as fractions of the requested items).
No label is cut short or drawn over another: widths are estimated (:func:`bench.leaderboard.placement.
text_width`), the plots grow to fit their labels, and point labels are placed clear of each other
(:func:`bench.leaderboard.placement.place_point_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from html import escape

from bench.leaderboard.aggregate import pareto_front
from bench.leaderboard.placement import (
    ASCENT,
    Box,
    leader,
    needed_height,
    place_line_labels,
    place_point_labels,
    stack_labels,
    text_height,
    text_width,
)

__all__ = [
    "FAMILY_COLORS", "STAGE_COLORS", "Point", "Bar", "Curve", "CurvePoint", "FunnelBar", "family_colors",
    "scatter_svg", "bars_svg", "curves_svg", "funnel_svg", "nice_ceiling", "nice_ticks", "log_ticks",
]

# Okabe-Ito colour-blind-safe palette; the usual families keep their colour across datasets and builds.
FAMILY_COLORS = {
    "vae": "#0072B2",
    "gan": "#D55E00",
    "diffusion": "#009E73",
    "flow": "#CC79A7",
    "autoregressive": "#E69F00",
    "external": "#56B4E9",
    "reference": "#777777",
}
STAGE_COLORS = ("#e6e6e6", "#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#08519c")
"""The funnel's stages, requested to plausible: one sequential blue scale, light to dark, so the nested bars
read in order without relying on hue."""
_SPARE_COLORS = ("#000000", "#8C564B", "#17BECF", "#BCBD22", "#9467BD", "#E377C2")
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"
_HALO = 'paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'
"""A white outline under label text, so a label stays legible where it crosses a grid or front line."""


@dataclass(frozen=True)
class Point:
    """One model variant in the quality-versus-cost plot."""

    label: str
    family: str
    x: float
    y: float
    title: str = ""


@dataclass(frozen=True)
class Bar:
    """One model variant in a per-metric bar plot."""

    label: str
    family: str
    mean: float
    low: float | None = None
    high: float | None = None
    title: str = ""


@dataclass(frozen=True)
class CurvePoint:
    """One row on a curve: its x (NFE), mean and 95% interval of the mean (None: undefined, one seed)."""

    x: float
    y: float
    low: float | None = None
    high: float | None = None
    title: str = ""


@dataclass(frozen=True)
class Curve:
    """A labelled line through points in order of x (a single point is drawn as a point)."""

    label: str
    family: str
    points: tuple[CurvePoint, ...]
    dash: str = ""
    """``stroke-dasharray`` of the line, telling apart curves of one family (one colour)."""


@dataclass(frozen=True)
class FunnelBar:
    """One model variant in the funnel plot: its mean count per stage (None: the stage is n/a), or no funnel
    at all (``counts`` empty, ``note`` says why)."""

    label: str
    family: str
    counts: tuple[float | None, ...] = ()
    title: str = ""
    note: str = ""


def family_colors(families: Iterable[str]) -> dict[str, str]:
    """A colour per family: fixed ones for the known families, then spare colours in sorted order."""
    out: dict[str, str] = {}
    spare = iter(_SPARE_COLORS)
    for fam in sorted(set(families)):
        out[fam] = FAMILY_COLORS.get(fam) or next(spare, "#444444")
    return out


def _f(x: float) -> str:
    """Pixel coordinates with one decimal, so output is stable and small."""
    return f"{x:.1f}"


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k not below ``x`` (``x`` > 0)."""
    if x <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * base >= x * (1 - 1e-12):
            return m * base
    return 10 * base


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` equal steps of 1, 2, 2.5 or 5 × 10^k covering ``[lo, hi]``; the first and last tick are the
    axis ends."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    step = nice_ceiling((hi - lo) / n)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    return [round(start + k * step, 12) for k in range(int(round((stop - start) / step)) + 1)]


def _log_domain(xs: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` in log10 units around the positive ``xs``: the data's range padded by a tenth on each side
    (at least a third of a decade wide), so close costs are spread over the plot instead of crowding into
    one decade."""
    logs = [math.log10(x) for x in xs if x > 0]
    if not logs:
        return 0.0, 1.0
    a, b = min(logs), max(logs)
    span = max(b - a, 1 / 3)
    mid = (a + b) / 2
    return mid - span * 0.6, mid + span * 0.6


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log10 axis from ``10**lo`` to ``10**hi``: the first of 1-2-5, 1-2-3-5, 1-9 and
    1-1.5-2-...-9 steps that gives 3 to 12 ticks spread over most of the axis; decades on a long axis."""
    for mantissas in () if hi - lo > 2.5 else ((1, 2, 5), (1, 2, 3, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9),
                      (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [
            m * 10.0**k
            for k in range(math.floor(lo), math.ceil(hi) + 1)
            for m in mantissas
            if lo - 1e-9 <= math.log10(m * 10.0**k) <= hi + 1e-9
        ]
        if 3 <= len(ticks) <= 12 and math.log10(ticks[-1] / ticks[0]) >= 0.6 * (hi - lo):
            return ticks
    decades = [10.0**k for k in range(math.ceil(lo), math.floor(hi) + 1)]
    return decades[:: max(1, math.ceil(len(decades) / 8))] or [10.0**lo, 10.0**hi]


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def _legend(
    families: Sequence[str], colors: Mapping[str, str], x: float, y: float, extra: str = ""
) -> list[str]:
    parts = [f'<g class="legend" font-size="11" style="{_FONT}">']
    for i, fam in enumerate(families):
        yy = y + 15 * i
        parts.append(
            f'<circle cx="{_f(x)}" cy="{_f(yy - 4)}" r="4.5" fill="{colors[fam]}"/>'
            f'<text x="{_f(x + 9)}" y="{_f(yy)}">{escape(fam)}</text>'
        )
    if extra:
        yy = y + 15 * len(families)
        parts.append(extra.format(x=_f(x - 5), x2=_f(x + 5), y=_f(yy - 4), tx=_f(x + 9), ty=_f(yy)))
    parts.append("</g>")
    return parts


def scatter_svg(
    points: Sequence[Point],
    colors: Mapping[str, str],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 600,
    height: int = 380,
    refs: Sequence[tuple[str, float]] = (),
) -> str:
    """Quality (y, linear 0..1) against cost (x, log10) with the Pareto front (lower cost, higher quality);
    every point carries its label, placed clear of the other labels and markers. Reference rows, which have
    no cost, are horizontal dotted lines at their quality.

    Args:
        points: Points with positive ``x``; ``label`` is drawn beside the marker, ``title`` is its tooltip.
        colors: Family -> colour.
        title: Plot title.
        x_label: Label of the cost axis.
        y_label: Label of the quality axis.
        width: Minimum width in pixels (the plot widens until the longest label fits beside any point).
        height: Minimum height in pixels (it grows with the number of points).
        refs: ``(label, quality)`` of reference rows (``Test``, ``Random``).
    """
    size, radius, gap = 11.0, 5.5, 8.0
    fams = sorted({p.family for p in points})
    front = pareto_front([(p.x, p.y) for p in points])
    on_front = set(front)  # labelled in bold
    legend_w = max([text_width(f, 11) for f in fams] + [text_width("Pareto front", 11)])
    left, right, top, bottom = 58, int(math.ceil(legend_w + 36)), 30, 48
    widths = [text_width(p.label, size, bold=i in on_front) for i, p in enumerate(points)]
    # any point has at least half the plot's width on one side: room for its label there
    pw = max(width - left - right, int(math.ceil(2 * (max(widths, default=0) + gap + 4))))
    ph = max(height - top - bottom, needed_height(len(points), size))
    width, height = left + pw + right, top + ph + bottom
    lo, hi = _log_domain([p.x for p in points])
    y_top = max([1.0, *(p.y for p in points), *(v for _, v in refs)])

    def sx(x: float) -> float:
        return left + (math.log10(x) - lo) / (hi - lo) * pw

    def sy(y: float) -> float:
        return top + (1 - y / y_top) * ph

    out = [
        f'<svg class="plot scatter" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="13" font-weight="600" style="{_FONT}">{escape(title)}</text>',
        f'<g font-size="11" style="{_FONT}" fill="#555">',
    ]
    shown_until = -math.inf  # right edge of the last tick label: labels that would touch it are left out
    for tick in log_ticks(lo, hi):
        x = sx(tick)
        out.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + ph}" stroke="#e5e5e5"/>')
        text = _tick_label(tick)
        half = text_width(text, 11) / 2
        if x - half > shown_until + 6:
            out.append(f'<text x="{_f(x)}" y="{top + ph + 15}" text-anchor="middle">{text}</text>')
            shown_until = x + half
    for i in range(5):
        v = y_top * i / 4
        y = sy(v)
        out.append(
            f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end">{_tick_label(round(v, 4))}</text>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(
        f'<text x="{_f(left + pw / 2)}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(14 {_f(top + ph / 2)}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text></g>"
    )
    lines: list[Box] = []  # the front's segments, which reference labels keep off
    if front:
        xs = [sx(points[i].x) for i in front]
        ys = [sy(points[i].y) for i in front]
        path = f"M{_f(xs[0])},{_f(ys[0])}"
        for k, (x, y) in enumerate(zip(xs[1:], ys[1:], strict=True)):
            path += f" H{_f(x)} V{_f(y)}"
            lines += [Box(xs[k], ys[k] - 1, x, ys[k] + 1), Box(x - 1, y, x + 1, ys[k])]
        path += f" H{_f(left + pw)}"
        lines.append(Box(xs[-1], ys[-1] - 1, left + pw, ys[-1] + 1))
        out.append(
            f'<path class="pareto" d="{path}" fill="none" stroke="#333" stroke-width="1.5" '
            'stroke-dasharray="5 3"/>'
        )
    bounds = Box(left + 2, top + 2, left + pw - 2, top + ph - 2)
    ref_texts = [f"{label} {value:.3f}" for label, value in refs]
    markers = [Box(sx(p.x) - radius, sy(p.y) - radius, sx(p.x) + radius, sy(p.y) + radius) for p in points]
    ref_boxes = place_line_labels([sy(v) for _, v in refs], [text_width(t, 10) for t in ref_texts],
                                  left + pw - 4, bounds, avoid=[*markers, *lines])
    for (label, value), text, box in zip(refs, ref_texts, ref_boxes, strict=True):
        y = sy(value)
        out.append(
            f'<g class="ref"><title>{escape(label)} (reference, no training cost): {value:.3f}</title>'
            f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#888" stroke-width="1.2" '
            f'stroke-dasharray="1.5 3"/><text class="ref-label" x="{_f(box.x1)}" '
            f'y="{_f(box.y0 + ASCENT * 10)}" font-size="10" text-anchor="end" fill="#555" {_HALO} '
            f'style="{_FONT}">{escape(text)}</text></g>'
        )
    centres = [(sx(p.x), sy(p.y)) for p in points]
    labels = place_point_labels(centres, widths, bounds, size=size, gap=gap, radius=radius, taken=ref_boxes)
    for i, (p, (x, y), lab) in enumerate(zip(points, centres, labels, strict=True)):
        tip = escape(p.title or f"{p.label}: {p.y:.3f} at {p.x:,.0f} s")
        part = [f'<g class="point" data-family="{escape(p.family)}"><title>{tip}</title>']
        if lab.nudged:  # a thin leader from the marker to its label
            x1, y1, x2, y2 = leader((x, y), lab, radius)
            part.append(
                f'<line class="leader" x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" '
                'stroke="#777" stroke-width="0.9"/>'
            )
        part.append(
            f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{radius}" fill="{colors.get(p.family, "#444")}" '
            f'stroke="#fff" stroke-width="1.2"/>'
        )
        weight = ' font-weight="600"' if i in on_front else ""
        part.append(
            f'<text class="point-label" x="{_f(lab.x)}" y="{_f(lab.baseline)}" font-size="{size:g}"{weight} '
            f'text-anchor="{lab.anchor}" fill="#222" {_HALO} style="{_FONT}">{escape(p.label)}</text></g>'
        )
        out.append("".join(part))
    pareto_key = (
        '<line x1="{x}" y1="{y}" x2="{x2}" y2="{y}" stroke="#333" stroke-width="1.5" '
        'stroke-dasharray="5 3"/><text x="{tx}" y="{ty}">Pareto front</text>'
    )
    out += _legend(fams, colors, left + pw + 18, top + 10, pareto_key)
    out.append("</svg>")
    return "".join(out)


def bars_svg(
    metric: str,
    direction: str,
    bars: Sequence[Bar],
    colors: Mapping[str, str],
    *,
    refs: Sequence[tuple[str, float]] = (),
    description: str = "",
    plot_width: int = 240,
) -> str:
    """One horizontal bar per model variant (coloured by family, labelled in full on the left) with CI
    whiskers; reference values as dashed vertical lines, labelled above the plot in as many rows as keep the
    labels apart.

    Args:
        metric: Metric name (the title).
        direction: ``"max"`` or ``"min"``; a ``max`` metric that stays within [0, 1] gets a 0..1 axis.
        bars: The bars, top to bottom.
        colors: Family -> colour.
        refs: ``(label, value)`` of reference rows (short labels: ``Test``, ``Random``).
        description: Tooltip text for the title.
        plot_width: Width of the value axis in pixels.
    """
    size, ref_size, slot, thickness = 11.0, 10.0, 20, 12
    arrow = "↑ higher is better" if direction == "max" else "↓ lower is better"
    title_w = text_width(metric, 13, bold=True) + text_width(f" {arrow}", 13)
    label_w = max((text_width(b.label, size) for b in bars), default=0.0)
    left, pw, right = int(math.ceil(label_w + 18)), plot_width, 24
    width = int(math.ceil(max(left + pw + right, title_w + 20)))
    values = [b.mean for b in bars] + [v for _, v in refs]
    highs = [b.high if b.high is not None else b.mean for b in bars] + [v for _, v in refs]
    lows = [b.low if b.low is not None else b.mean for b in bars] + [v for _, v in refs]
    # a non-negative metric keeps 0 as its axis end even when a t-interval dips below it; a rate stays in 0..1
    v_lo = 0.0 if min(values, default=0.0) >= 0 else min(lows)
    v_hi = max(highs, default=1.0)
    unit = direction == "max" and 0 <= min(values, default=0.0) and max(values, default=1.0) <= 1
    ticks = [0, 0.25, 0.5, 0.75, 1] if unit else nice_ticks(v_lo, v_hi)
    lo, hi = ticks[0], ticks[-1]

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    ref_widths = [text_width(label, ref_size) for label, _ in refs]
    stacked = stack_labels([sx(v) for _, v in refs], ref_widths, 4, width - 4)
    n_rows = 1 + max((row for _, row in stacked), default=-1)
    row_h = text_height(ref_size) + 2
    top = int(math.ceil(26 + n_rows * row_h + (4 if refs else 0)))
    ph = slot * max(len(bars), 1)
    height = top + ph + 24
    out = [
        f'<svg class="plot bars" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f"<title>{escape(metric)}: {escape(description or arrow)}</title>",
        f'<text x="10" y="18" font-size="13" style="{_FONT}"><tspan font-weight="600">{escape(metric)}'
        f'</tspan> <tspan fill="#666">{arrow}</tspan></text>',
        f'<g font-size="11" style="{_FONT}" fill="#555">',
    ]
    tick_w = max(text_width(_tick_label(t), size) for t in ticks)
    every = 1 if tick_w + 6 <= pw / (len(ticks) - 1) else 2
    for k, t in enumerate(ticks):
        x = sx(t)
        out.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + ph}" stroke="#e5e5e5"/>')
        if k % every == 0:
            out.append(f'<text x="{_f(x)}" y="{top + ph + 15}" text-anchor="middle">{_tick_label(t)}</text>')
    if lo <= 0 <= hi:
        out.append(f'<line x1="{_f(sx(0))}" y1="{top}" x2="{_f(sx(0))}" y2="{top + ph}" stroke="#999"/>')
    out.append("</g>")
    zero = sx(min(max(0.0, lo), hi))
    for i, b in enumerate(bars):
        cy = top + slot * (i + 0.5)
        x1 = sx(b.mean)
        tip = escape(b.title or f"{b.label}: {b.mean:.4g}")
        part = [
            f'<g class="bar" data-family="{escape(b.family)}"><title>{tip}</title>',
            f'<rect x="{_f(min(zero, x1))}" y="{_f(cy - thickness / 2)}" '
            f'width="{_f(max(abs(x1 - zero), 0.8))}" height="{thickness}" '
            f'fill="{colors.get(b.family, "#444")}"/>',
        ]
        if b.low is not None and b.high is not None:  # an end cut at the axis has no cap
            xa, xb = sx(max(b.low, lo)), sx(min(b.high, hi))
            caps = "".join(f" M{_f(x)},{_f(cy - 4)} V{_f(cy + 4)}"
                           for x, inside in ((xa, b.low >= lo), (xb, b.high <= hi)) if inside)
            part.append(
                f'<path d="M{_f(xa)},{_f(cy)} H{_f(xb)}{caps}" stroke="#222" stroke-width="1.2" fill="none"/>'
            )
        baseline = cy - text_height(size) / 2 + ASCENT * size
        part.append(
            f'<text class="bar-label" x="{left - 8}" y="{_f(baseline)}" font-size="{size:g}" '
            f'text-anchor="end" fill="#222" style="{_FONT}">{escape(b.label)}</text></g>'
        )
        out.append("".join(part))
    for (label, value), (x0, row) in zip(refs, stacked, strict=True):
        x = sx(value)
        label_top = 26 + row * row_h
        out.append(
            f'<g class="ref"><title>{escape(label)} (reference): {value:.4g}</title>'
            f'<line x1="{_f(x)}" y1="{_f(label_top + row_h)}" x2="{_f(x)}" y2="{top + ph}" stroke="#555" '
            f'stroke-dasharray="4 3"/><text class="ref-label" x="{_f(x0)}" '
            f'y="{_f(label_top + ASCENT * ref_size)}" font-size="{ref_size:g}" fill="#444" {_HALO} '
            f'style="{_FONT}">{escape(label)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def _range_axis(values: Sequence[float], *, unit: bool) -> tuple[float, float, list[float]]:
    """A linear axis around ``values``: ``(lo, hi, ticks)``, padded a little; a fraction stays in 0..1."""
    a, b = min(values), max(values)
    pad = max((b - a) * 0.08, 0.02 if unit else (abs(b) * 0.05 or 1.0))
    a, b = a - pad, b + pad
    if unit:
        a, b = max(a, 0.0), min(b, 1.0)
    ticks = nice_ticks(a, b, 4)
    return ticks[0], ticks[-1], ticks


def curves_svg(
    curves: Sequence[Curve],
    colors: Mapping[str, str],
    *,
    title: str,
    x_label: str,
    x_values: Sequence[float] = (),
    log_y: bool = False,
    unit: bool = False,
    description: str = "",
    metric: str = "",
    width: int = 300,
    height: int = 230,
) -> str:
    """One panel of a small-multiples figure: each curve a line through its points in order of x (log10), a
    whisker per point from its interval, every curve labelled beside its last point, clear of the other labels
    and markers. Curves without points in this panel are not drawn, but still size it, so the panels of one
    figure share their size.

    Args:
        curves: The curves; a curve of one point is a point.
        colors: Family -> colour.
        title: Panel title (the metric).
        x_label: Label of the x axis.
        x_values: Every x of the figure, so its panels share the x axis (default: this panel's).
        log_y: A log10 y axis (a rate), else linear.
        unit: The values are fractions: a linear axis kept within 0..1.
        description: Tooltip of the title.
        metric: The ``data-metric`` attribute of the panel.
        width: Minimum width in pixels (it grows until the longest label fits beside any point).
        height: Minimum height in pixels (it grows with the number of curves).
    """
    size, radius, gap = 10.0, 4.0, 7.0
    if log_y:  # a log axis has no place for a rate of 0
        curves = [replace(c, points=tuple(p for p in c.points if p.y > 0)) for c in curves]
    shown = [c for c in curves if c.points]
    ys = [v for c in shown for p in c.points for v in (p.y, p.low, p.high) if v is not None]
    if log_y:
        lo_y, hi_y = _log_domain([v for v in ys if v > 0] or [1.0])
        y_ticks = log_ticks(lo_y, hi_y)
    else:
        lo_y, hi_y, y_ticks = _range_axis(ys or [0.0, 1.0], unit=unit)
    tick_w = max(text_width(_tick_label(round(t, 6)), 11) for t in y_ticks)
    # room for tick labels up to "10,000", so the panels of one figure line up and share their width
    left, right, top, bottom = int(math.ceil(max(tick_w, text_width("10,000", 11)) + 14)), 10, 28, 40
    widths = [text_width(c.label, size) for c in curves]
    pw = max(width - left - right, int(math.ceil(2 * (max(widths, default=0) + gap + 4))))
    ph = max(height - top - bottom, needed_height(len(curves), size))
    width, height = left + pw + right, top + ph + bottom
    lo, hi = _log_domain(list(x_values) or [p.x for c in shown for p in c.points])

    def sx(x: float) -> float:
        return left + (math.log10(x) - lo) / (hi - lo) * pw

    def sy(y: float) -> float:
        if log_y:
            return top + (1 - (math.log10(y) - lo_y) / (hi_y - lo_y)) * ph
        return top + (1 - (y - lo_y) / (hi_y - lo_y)) * ph

    bottom_y = 10**lo_y if log_y else lo_y
    top_y = 10**hi_y if log_y else hi_y
    tip = escape(description or title)
    out = [
        f'<svg class="plot nfe-panel" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" style="max-width:min(100%,{width}px)" data-metric="{escape(metric)}">',
        f"<title>{tip}</title>",
        f'<text class="panel-title" x="{left}" y="18" font-size="13" font-weight="600" style="{_FONT}">'
        f"{escape(title)}</text>",
        f'<g font-size="11" style="{_FONT}" fill="#555">',
    ]
    shown_until = -math.inf
    for tick in log_ticks(lo, hi):
        x = sx(tick)
        out.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + ph}" stroke="#e5e5e5"/>')
        text = _tick_label(tick)
        half = text_width(text, 11) / 2
        if x - half > shown_until + 6:
            out.append(f'<text x="{_f(x)}" y="{top + ph + 15}" text-anchor="middle">{text}</text>')
            shown_until = x + half
    for tick in y_ticks:
        y = sy(tick)
        out.append(
            f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end">{_tick_label(round(tick, 6))}</text>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(
        f'<text x="{_f(left + pw / 2)}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text></g>'
    )
    # each curve is labelled beside its last point; the other markers are kept clear of every label
    ends = [(sx(c.points[-1].x), sy(c.points[-1].y)) for c in shown]
    markers = [Box(sx(p.x) - radius, sy(p.y) - radius, sx(p.x) + radius, sy(p.y) + radius)
               for c in shown for p in c.points[:-1]]
    bounds = Box(left + 2, top + 2, left + pw - 2, top + ph - 2)
    placed = place_point_labels(ends, [text_width(c.label, size) for c in shown], bounds, size=size, gap=gap,
                                radius=radius, taken=markers)
    for curve, end, lab in zip(shown, ends, placed, strict=True):
        color = colors.get(curve.family, "#444")
        part = [f'<g class="nfe-curve" data-family="{escape(curve.family)}">'
                f"<title>{escape(curve.label)}</title>"]
        if len(curve.points) > 1:
            path = " ".join(f"{'M' if i == 0 else 'L'}{_f(sx(p.x))},{_f(sy(p.y))}"
                            for i, p in enumerate(curve.points))
            dash = f' stroke-dasharray="{curve.dash}"' if curve.dash else ""
            part.append(f'<path class="nfe-line" d="{path}" fill="none" stroke="{color}" stroke-width="1.8"'
                        f"{dash}/>")
        for p in curve.points:
            x, y = sx(p.x), sy(p.y)
            attrs = f'data-nfe="{p.x!r}" data-mean="{p.y!r}"'
            if p.low is not None and p.high is not None:
                attrs += f' data-low="{p.low!r}" data-high="{p.high!r}"'
            part.append(f'<g class="nfe-point" {attrs}><title>{escape(p.title or curve.label)}</title>')
            if p.low is not None and p.high is not None:  # an end cut at the axis has no cap
                low_in, high_in = p.low >= bottom_y, p.high <= top_y
                ya = sy(p.low) if low_in else top + ph
                yb = sy(p.high) if high_in else top
                caps = "".join(f" M{_f(x - 3)},{_f(v)} H{_f(x + 3)}"
                               for v, inside in ((ya, low_in), (yb, high_in)) if inside)
                part.append(f'<path class="ci" d="M{_f(x)},{_f(ya)} V{_f(yb)}{caps}" stroke="{color}" '
                            'stroke-width="1.1" fill="none"/>')
            part.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{radius:g}" fill="{color}" stroke="#fff" '
                        'stroke-width="1"/></g>')
        if lab.nudged:
            x1, y1, x2, y2 = leader(end, lab, radius)
            part.append(f'<line class="leader" x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" '
                        'stroke="#777" stroke-width="0.9"/>')
        part.append(
            f'<text class="curve-label" x="{_f(lab.x)}" y="{_f(lab.baseline)}" font-size="{size:g}" '
            f'text-anchor="{lab.anchor}" fill="#222" {_HALO} style="{_FONT}">{escape(curve.label)}</text></g>'
        )
        out.append("".join(part))
    out.append("</svg>")
    return "".join(out)


def _count(x: float) -> str:
    return f"{x:,.0f}" if abs(x - round(x)) < 0.05 else f"{x:,.1f}"


def funnel_svg(
    bars: Sequence[FunnelBar],
    stages: Sequence[str],
    *,
    title: str = "Usability funnel",
    description: str = "",
    plot_width: int = 300,
) -> str:
    """One line per model variant: the stages' bars drawn over each other from the left, each as long as its
    share of the requested items (a stage is a subset of the one before, so each bar ends inside the one under
    it), darker for later stages; the last stage's count and share are written after the bars. A variant
    without a funnel gets a dashed outline and its note; a stage that is n/a is not drawn.

    Args:
        bars: The variants, top to bottom; ``counts`` in the order of ``stages``.
        stages: The stage names (the legend), first one the requested items.
        title: Plot title.
        description: Tooltip of the title.
        plot_width: Width of the bar area in pixels (100% of the requested items).
    """
    size, slot, thickness = 11.0, 20, 12
    colors = STAGE_COLORS[: len(stages)]

    def last(bar: FunnelBar) -> str:
        known = [(k, c) for k, c in enumerate(bar.counts) if c is not None]
        if not bar.counts or not known or not bar.counts[0]:
            return bar.note or "n/a"
        k, c = known[-1]
        na = f" ({stages[k + 1]} n/a)" if k < len(bar.counts) - 1 else ""
        return f"{_count(c)} {stages[k]}, {100 * c / bar.counts[0]:.1f}%{na}"

    ends = [last(b) for b in bars]
    label_w = max((text_width(b.label, size) for b in bars), default=0.0)
    end_w = max((text_width(e, size) for e in ends), default=0.0)
    left, pw = int(math.ceil(label_w + 16)), plot_width
    legend = [(name, text_width(name, size)) for name in stages]
    legend_w = sum(w + 26 for _, w in legend)
    title_w = text_width(title, 13, bold=True)
    width = int(math.ceil(max(left + pw + 10 + end_w + 10, legend_w + 20, title_w + 20)))
    top = 48
    height = top + slot * max(len(bars), 1) + 26
    out = [
        f'<svg class="plot funnel" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}">',
        f"<title>{escape(description or title)}</title>",
        f'<text x="10" y="18" font-size="13" font-weight="600" style="{_FONT}">{escape(title)}</text>',
        f'<g class="legend" font-size="{size:g}" style="{_FONT}">',
    ]
    x = 10.0
    for (name, w), color in zip(legend, colors, strict=True):
        out.append(f'<rect x="{_f(x)}" y="28" width="12" height="10" fill="{color}" stroke="#999" '
                   f'stroke-width="0.5"/><text x="{_f(x + 16)}" y="37">{escape(name)}</text>')
        x += w + 26
    out.append(f'</g><g font-size="11" style="{_FONT}" fill="#555">')
    ph = slot * max(len(bars), 1)
    for q in (0, 0.25, 0.5, 0.75, 1.0):
        xx = left + q * pw
        out.append(f'<line x1="{_f(xx)}" y1="{top}" x2="{_f(xx)}" y2="{top + ph}" stroke="#e5e5e5"/>'
                   f'<text x="{_f(xx)}" y="{top + ph + 15}" text-anchor="middle">{100 * q:g}%</text>')
    out.append("</g>")
    for i, (bar, end) in enumerate(zip(bars, ends, strict=True)):
        cy = top + slot * (i + 0.5)
        y0 = cy - thickness / 2
        tip = escape(bar.title or f"{bar.label}: {end}")
        part = [f'<g class="funnel-row" data-family="{escape(bar.family)}"><title>{tip}</title>']
        requested = bar.counts[0] if bar.counts else None
        if not requested:
            part.append(f'<rect class="funnel-none" x="{left}" y="{_f(y0)}" width="{pw}" '
                        f'height="{thickness}" fill="none" stroke="#aaa" stroke-dasharray="3 3"/>')
        else:
            for k, (count, color) in enumerate(zip(bar.counts, colors, strict=False)):
                if count is None:
                    continue
                w = max(pw * count / requested, 0.0)
                part.append(f'<rect class="funnel-stage" data-stage="{escape(stages[k])}" data-n="{count!r}" '
                            f'x="{left}" y="{_f(y0)}" width="{_f(w)}" height="{thickness}" fill="{color}"/>')
            part.append(f'<rect x="{left}" y="{_f(y0)}" width="{pw}" height="{thickness}" fill="none" '
                        'stroke="#bbb" stroke-width="0.6"/>')
        baseline = cy - text_height(size) / 2 + ASCENT * size
        part.append(f'<text class="funnel-label" x="{left - 8}" y="{_f(baseline)}" font-size="{size:g}" '
                    f'text-anchor="end" fill="#222" style="{_FONT}">{escape(bar.label)}</text>')
        shade = "#222" if requested else "#777"
        part.append(f'<text class="funnel-end" x="{left + pw + 10}" y="{_f(baseline)}" font-size="{size:g}" '
                    f'fill="{shade}" style="{_FONT}">{escape(end)}</text></g>')
        out.append("".join(part))
    out.append("</svg>")
    return "".join(out)
