"""Inline SVG plots for the HTML board, generated as text: deterministic, testable, no plotting library.

Two plots: quality versus cost (log-scaled x, coloured by family, Pareto front drawn) and per-metric bars
(mean with confidence-interval whiskers, reference values as dashed lines).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from bench.leaderboard.aggregate import pareto_front

__all__ = ["FAMILY_COLORS", "Point", "Bar", "family_colors", "scatter_svg", "bars_svg", "nice_ceiling"]

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
_SPARE_COLORS = ("#000000", "#8C564B", "#17BECF", "#BCBD22", "#9467BD", "#E377C2")
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


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


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def _short(label: str, limit: int = 17) -> str:
    """Axis labels stay short; the full name is in the tooltip."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


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
) -> str:
    """Quality (y, linear 0..1) against cost (x, log10) with the Pareto front (lower cost, higher quality).

    Args:
        points: Points with positive ``x``.
        colors: Family -> colour.
        title: Plot title.
        x_label: Label of the cost axis.
        y_label: Label of the quality axis.
        width: Width in pixels.
        height: Height in pixels.
    """
    left, right, top, bottom = 58, 130, 30, 48
    pw, ph = width - left - right, height - top - bottom
    logs = [math.log10(p.x) for p in points]
    lo = math.floor(min(logs)) if logs else 0
    hi = math.ceil(max(logs)) if logs else 1
    if hi <= lo:
        hi = lo + 1
    y_top = max(1.0, max((p.y for p in points), default=1.0))

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
    step = 1 if hi - lo <= 6 else 2
    for k in range(lo, hi + 1, step):
        x = sx(10.0**k)
        out.append(
            f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + ph}" stroke="#e5e5e5"/>'
            f'<text x="{_f(x)}" y="{top + ph + 15}" text-anchor="middle">{_tick_label(10.0**k)}</text>'
        )
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
    front = pareto_front([(p.x, p.y) for p in points])
    if front:
        xs = [sx(points[i].x) for i in front]
        ys = [sy(points[i].y) for i in front]
        path = f"M{_f(xs[0])},{_f(ys[0])}"
        for x, y in zip(xs[1:], ys[1:], strict=True):
            path += f" H{_f(x)} V{_f(y)}"
        path += f" H{_f(left + pw)}"
        out.append(
            f'<path class="pareto" d="{path}" fill="none" stroke="#333" stroke-width="1.5" '
            'stroke-dasharray="5 3"/>'
        )
    label_rank = {i: k for k, i in enumerate(front)}
    for i, p in enumerate(points):
        x, y = sx(p.x), sy(p.y)
        tip = escape(p.title or f"{p.label}: {p.y:.3f} at {p.x:,.0f} s")
        out.append(
            f'<g class="point" data-family="{escape(p.family)}"><title>{tip}</title>'
            f'<circle cx="{_f(x)}" cy="{_f(y)}" r="5.5" fill="{colors.get(p.family, "#444")}" '
            f'stroke="#fff" stroke-width="1.2"/>'
        )
        if i in label_rank:  # label the front; alternate above/below so neighbours do not collide
            anchor, dx = ("end", -8) if x > left + pw - 90 else ("start", 8)
            dy = -7 if label_rank[i] % 2 == 0 else 15
            out.append(
                f'<text x="{_f(x + dx)}" y="{_f(y + dy)}" font-size="11" text-anchor="{anchor}" '
                f'style="{_FONT}">{escape(p.label)}</text>'
            )
        out.append("</g>")
    fams = sorted({p.family for p in points})
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
    height: int = 270,
) -> str:
    """One bar per model variant (grouped, coloured by family) with CI whiskers; references as dashed lines.

    Args:
        metric: Metric name (the title).
        direction: ``"max"`` or ``"min"``; a ``max`` metric that stays within [0, 1] gets a 0..1 axis.
        bars: The bars, in display order.
        colors: Family -> colour.
        refs: ``(label, value)`` of reference rows, drawn as dashed horizontal lines.
        description: Tooltip text for the title.
        height: Height in pixels.
    """
    left, right, top, bottom = 58, 58, 30, 112
    slot = 34
    width = max(300, left + right + slot * max(len(bars), 1))
    pw, ph = width - left - right, height - top - bottom
    highs = [b.high if b.high is not None else b.mean for b in bars] + [v for _, v in refs]
    lows = [b.low if b.low is not None else b.mean for b in bars] + [v for _, v in refs]
    y_lo = min(0.0, min(lows, default=0.0))
    y_hi = max(highs, default=1.0)
    y_hi = 1.0 if direction == "max" and 0 <= y_hi <= 1 and y_lo >= 0 else nice_ceiling(y_hi)
    if y_hi <= y_lo:
        y_hi = y_lo + 1

    def sy(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * ph

    arrow = "↑ higher is better" if direction == "max" else "↓ lower is better"
    out = [
        f'<svg class="plot bars" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f"<title>{escape(metric)}: {escape(description or arrow)}</title>",
        f'<text x="{left}" y="18" font-size="13" style="{_FONT}"><tspan font-weight="600">{escape(metric)}'
        f'</tspan> <tspan fill="#666">{arrow}</tspan></text>',
        f'<g font-size="11" style="{_FONT}" fill="#555">',
    ]
    for i in range(5):
        v = y_lo + (y_hi - y_lo) * i / 4
        y = sy(v)
        out.append(
            f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end">{_tick_label(round(v, 6))}</text>'
        )
    out.append(f'<line x1="{left}" y1="{_f(sy(0))}" x2="{left + pw}" y2="{_f(sy(0))}" stroke="#999"/></g>')
    bar_w = 22
    for i, b in enumerate(bars):
        cx = left + slot * (i + 0.5)
        y0, y1 = sy(0), sy(b.mean)
        tip = escape(b.title or f"{b.label}: {b.mean:.4g}")
        part = [
            f'<g class="bar" data-family="{escape(b.family)}"><title>{tip}</title>',
            f'<rect x="{_f(cx - bar_w / 2)}" y="{_f(min(y0, y1))}" width="{bar_w}" '
            f'height="{_f(max(abs(y0 - y1), 0.8))}" fill="{colors.get(b.family, "#444")}"/>',
        ]
        if b.low is not None and b.high is not None:
            ya, yb = sy(b.low), sy(b.high)
            part.append(
                f'<path d="M{_f(cx)},{_f(ya)} V{_f(yb)} M{_f(cx - 5)},{_f(ya)} H{_f(cx + 5)} '
                f'M{_f(cx - 5)},{_f(yb)} H{_f(cx + 5)}" stroke="#222" stroke-width="1.2" fill="none"/>'
            )
        lx, ly = cx + 3, top + ph + 10
        part.append(
            f'<text x="{_f(lx)}" y="{_f(ly)}" font-size="11" text-anchor="end" style="{_FONT}" '
            f'transform="rotate(-55 {_f(lx)} {_f(ly)})">{escape(_short(b.label))}</text></g>'
        )
        out.append("".join(part))
    for label, value in refs:
        y = sy(value)
        out.append(
            f'<g class="ref"><title>{escape(label)} (reference): {value:.4g}</title>'
            f'<line x1="{left}" y1="{_f(y)}" x2="{left + pw}" y2="{_f(y)}" stroke="#555" '
            f'stroke-dasharray="4 3"/><text x="{left + pw + 4}" y="{_f(y + 4)}" font-size="10" '
            f'fill="#555" style="{_FONT}">{escape(label)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
