"""The statistics behind the board: per-row confidence intervals of the mean and the test that decides a lead.

- **Interval of the mean over seeds.** With fewer than :data:`MIN_BOOTSTRAP_SEEDS` seeds the Student-t
  interval ``mean ± t(0.975, n-1) · s / √n``; from :data:`MIN_BOOTSTRAP_SEEDS` seeds on, the percentile
  bootstrap. A percentile bootstrap over n values can never leave their range, and with 3 seeds its 95%
  interval is [min, max]: a resample of three copies of the minimum has probability 1/27 ≈ 3.7% > 2.5%, so
  the 2.5% quantile is the minimum (and the 97.5% one the maximum), whatever the spread. The t interval widens
  with few seeds as it should, under the usual normality assumption. Undefined with one seed.
- **A lead** (:func:`compare`) needs three things: the two means differ when shown (values equal at display
  precision are a tie), they are more than :data:`MIN_DISPLAY_UNITS` units of the last shown digit apart (so
  0.998 against 1.000 is never a lead: rounding and a single structure in a thousand make such gaps), and
  Welch's unequal-variance t-test (:func:`welch_p`, scipy) gives p < :data:`ALPHA`. Interval overlap alone
  never decides.
- **Intervals stay inside a metric's range** (:data:`METRIC_RANGES`): a t interval is symmetric, so around a
  fraction near 1 it can reach past 1 (valid ``[0.917, 1.002]``); it is cut at the range's ends
  (:func:`clip_to_range`). The cut keeps the interval's coverage (the mean lies in the range) and only drops
  values no metric can take.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.leaderboard.precision import display_text, display_units_apart

__all__ = [
    "ALPHA",
    "LEVEL",
    "MIN_BOOTSTRAP_SEEDS",
    "MIN_DISPLAY_UNITS",
    "Comparison",
    "METRIC_RANGES",
    "bootstrap_ci",
    "clip_to_range",
    "compare",
    "finite_values",
    "mean_ci",
    "t_ci",
    "welch_p",
]

LEVEL = 0.95
"""Coverage of every interval on the board."""
ALPHA = 0.05
"""Significance level of the lead test (two-sided Welch t-test)."""
MIN_BOOTSTRAP_SEEDS = 10
"""From this many seeds on the interval is a percentile bootstrap; below it, Student-t."""
MIN_DISPLAY_UNITS = 2
"""A lead must be more than this many units of the last shown digit (1.000 vs 0.998 is 2 units: no lead)."""

# Fractions, and the Jensen-Shannon distances in base 2 (bench.metrics.distribution), lie in [0, 1].
_FRACTIONS = ("struct_valid", "comp_valid", "valid", "unique", "novel", "memorized", "vun_rate", "cov_recall",
              "cov_precision", "test_recall", "jsd_spacegroup", "jsd_elements")
_NON_NEGATIVE = ("wdist_density", "wdist_num_elems", "wdist_prop", "amsd_recall", "amsd_precision",
                 "amcd_recall", "amcd_precision", "comp_div", "struct_div")
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    **{name: (0.0, 1.0) for name in _FRACTIONS},
    **{name: (0.0, None) for name in _NON_NEGATIVE},
    "samples_per_second": (0.0, None),  # a cost with an interval (bench.leaderboard.aggregate.INTERVAL_COSTS)
}
"""``metric -> (lowest, highest)`` value it can take (None: unbounded); metrics not listed are not cut."""


def clip_to_range(ci: tuple[float, float] | None, metric: str) -> tuple[float, float] | None:
    """``ci`` cut at the ends of ``metric``'s range (:data:`METRIC_RANGES`); unchanged for other metrics."""
    if ci is None or metric not in METRIC_RANGES:
        return ci
    low, high = METRIC_RANGES[metric]
    lo, hi = ci
    if low is not None:
        lo, hi = max(lo, low), max(hi, low)
    if high is not None:
        lo, hi = min(lo, high), min(hi, high)
    return lo, hi


Verdict = Literal["holds", "not_separated", "undefined", "too_close", "tied"]


def finite_values(values: Iterable[Any]) -> list[float]:
    """The values that are finite numbers, as floats (None, booleans, text and NaN/inf are dropped)."""
    out = []
    for v in values:
        if isinstance(v, bool) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def bootstrap_ci(
    values: Sequence[float], *, n_resamples: int = 2000, level: float = LEVEL, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of the mean (valid for many seeds only; see the module doc).

    Args:
        values: Per-seed values (non-finite ones are ignored).
        n_resamples: Number of bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the ``numpy.random.Generator``; the same inputs and seed give the same interval.

    Returns:
        ``(low, high)``, or None with fewer than two finite values (the interval is undefined).
    """
    data = np.asarray(finite_values(values), dtype=float)
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def t_ci(values: Sequence[float], *, level: float = LEVEL) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean: ``mean ± t((1+level)/2, n-1) · s / √n``.

    Returns:
        ``(low, high)``, or None with fewer than two finite values.
    """
    from scipy import stats

    data = np.asarray(finite_values(values), dtype=float)
    if data.size < 2:
        return None
    mean = float(data.mean())
    t = float(stats.t.ppf((1.0 + level) / 2.0, data.size - 1))
    half = t * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean - half, mean + half


def mean_ci(
    values: Sequence[float], *, n_resamples: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[tuple[float, float] | None, str | None]:
    """The board's interval of the mean and its method: ``"t"`` below :data:`MIN_BOOTSTRAP_SEEDS` values,
    ``"bootstrap"`` from there on, ``(None, None)`` with fewer than two values."""
    n = len(finite_values(values))
    if n < 2:
        return None, None
    if n < MIN_BOOTSTRAP_SEEDS:
        return t_ci(values, level=level), "t"
    return bootstrap_ci(values, n_resamples=n_resamples, seed=seed, level=level), "bootstrap"


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test of equal means.

    None when undefined: fewer than two values on either side, or neither side has spread and the means are
    equal (two spread-free samples with different means give 0).
    """
    from scipy import stats

    x, y = finite_values(a), finite_values(b)
    if len(x) < 2 or len(y) < 2:
        return None
    if np.std(x) == 0 and np.std(y) == 0:
        return None if np.mean(x) == np.mean(y) else 0.0
    with warnings.catch_warnings():  # scipy warns of precision loss on nearly identical values
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


@dataclass(frozen=True)
class Comparison:
    """A leader against a runner-up: the verdict and the Welch p-value behind it (None when not computed)."""

    verdict: Verdict
    p: float | None = None

    @property
    def holds(self) -> bool:
        """True only when the lead is real by every rule of :func:`compare`."""
        return self.verdict == "holds"


def compare(leader: Sequence[float], runner_up: Sequence[float]) -> Comparison:
    """Decide whether ``leader``'s mean leads ``runner_up``'s (per-seed values; the caller orders them).

    Returns:
        ``tied`` (equal when shown), ``too_close`` (at most :data:`MIN_DISPLAY_UNITS` shown units apart),
        ``undefined`` (no p-value: a single seed), ``holds`` (p < :data:`ALPHA`) or ``not_separated``.
    """
    a, b = finite_values(leader), finite_values(runner_up)
    if not a or not b:
        return Comparison("undefined")
    ma, mb = float(np.mean(a)), float(np.mean(b))
    if display_text(ma) == display_text(mb):
        return Comparison("tied")
    p = welch_p(a, b)
    if display_units_apart(ma, mb) <= MIN_DISPLAY_UNITS:
        return Comparison("too_close", p)
    if p is None:
        return Comparison("undefined")
    return Comparison("holds" if p < ALPHA else "not_separated", p)
