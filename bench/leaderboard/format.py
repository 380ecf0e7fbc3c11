"""Number formatting shared by the Markdown, HTML and terminal boards."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench.leaderboard.precision import decimals as _decimals

if TYPE_CHECKING:
    from bench.leaderboard.aggregate import MetricSummary

__all__ = [
    "DASH",
    "NA",
    "arrow",
    "fmt_value",
    "fmt_mean_std",
    "fmt_ci",
    "fmt_params",
    "fmt_seconds",
    "fmt_rate",
    "truncate",
]

DASH = "–"
NA = "n/a"
"""Shown for a metric that does not apply to the reference data (with its reason), never a number."""


def arrow(direction: str) -> str:
    """↑ when higher is better, ↓ when lower is better."""
    return "↑" if direction == "max" else "↓"


def fmt_value(x: float | None, decimals: int | None = -1) -> str:
    """A metric value with precision suited to its size (fractions get 3 decimals).

    Args:
        x: The value (None or non-finite: a dash).
        decimals: Force this many decimals (None: two significant digits); by default chosen from ``x``.
    """
    if x is None or not math.isfinite(x):
        return DASH
    d = _decimals(x) if decimals == -1 else decimals
    if d is None:
        return f"{x:.2g}"
    return f"{x:,.{d}f}"


def fmt_mean_std(summary: MetricSummary | None, *, reported: bool = False) -> str:
    """``mean ± std`` at the mean's precision; the bare value for one seed or a reported number."""
    if summary is None or summary.mean is None:
        return DASH
    if reported or summary.std is None:
        return fmt_value(summary.mean)
    d = _decimals(summary.mean)
    return f"{fmt_value(summary.mean)} ± {fmt_value(summary.std, d)}"


def fmt_ci(summary: MetricSummary | None, *, rate: bool = False) -> str:
    """``[low, high]`` 95% CI of the mean (Student-t or bootstrap, see :mod:`bench.leaderboard.stats`) at the
    mean's precision (``rate``: each end as :func:`fmt_rate` shows a throughput); says so when it is undefined
    (one seed)."""
    if summary is None or summary.mean is None:
        return ""
    if summary.ci is None:
        return f"CI n/a ({summary.n} seed)" if summary.n < 2 else "CI n/a"
    if rate:
        return f"[{fmt_rate(summary.ci[0])}, {fmt_rate(summary.ci[1])}]"
    d = _decimals(summary.mean)
    return f"[{fmt_value(summary.ci[0], d)}, {fmt_value(summary.ci[1], d)}]"


def fmt_params(n: float | None) -> str:
    """Parameter count as 950, 35.2k, 1.20M."""
    if n is None:
        return DASH
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def fmt_seconds(s: float | None) -> str:
    """Seconds with thousands separators (one decimal under 10 s)."""
    if s is None:
        return DASH
    return f"{s:.1f}" if s < 10 else f"{s:,.0f}"


def fmt_rate(r: float | None) -> str:
    """A throughput with three significant digits."""
    if r is None:
        return DASH
    return f"{r:,.0f}" if r >= 1000 else f"{r:.3g}"


def truncate(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, with an ellipsis when cut."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1].rstrip() + "…"
