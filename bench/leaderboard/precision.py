"""Display precision of metric values, as data: how many decimals a value is shown with, and what "equal when
shown" means. The data layer (ties, leads) and the renderers (:mod:`bench.leaderboard.format`) both use it, so
the board never bolds a difference it cannot show; this module imports nothing from the presentation layer."""

from __future__ import annotations

import math

__all__ = ["decimals", "display_text", "display_units_apart"]


def decimals(x: float) -> int | None:
    """Decimals used for a number of this size; None for tiny numbers (two significant digits instead)."""
    a = abs(x)
    if a >= 100:
        return 1
    if a >= 10:
        return 2
    if 0 < a < 0.01:
        return None
    return 3


def display_text(x: float | None, places: int | None = -1) -> str | None:
    """The number as the board shows it (without thousands separators), None when not finite.

    Args:
        x: The value.
        places: Force this many decimals (None: two significant digits); by default chosen from ``x``.
    """
    if x is None or not math.isfinite(x):
        return None
    d = decimals(x) if places == -1 else places
    return f"{x:.2g}" if d is None else f"{x:.{d}f}"


def _unit(x: float) -> float:
    """The value of one unit in the last digit shown for ``x``."""
    d = decimals(x)
    if d is not None:
        return 10.0 ** -d
    return 10.0 ** (math.floor(math.log10(abs(x))) - 1) if x else 1e-3


def display_units_apart(a: float, b: float) -> float:
    """How many units of the last shown digit separate ``a`` and ``b`` as displayed (0: equal when shown).

    The unit is the finer of the two values' last shown digits, and the distance is between the displayed
    (rounded) numbers, so 1.000 and 0.998 are 2 units apart whatever digits rounding hid.
    """
    ta, tb = display_text(a), display_text(b)
    if ta is None or tb is None:
        return math.inf
    if ta == tb:
        return 0.0
    unit = min(_unit(a), _unit(b))
    return round(abs(float(ta) - float(tb)) / unit, 6)
