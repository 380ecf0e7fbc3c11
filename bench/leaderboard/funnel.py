"""The usability funnel on the board: per row, the records' stage counts averaged over seeds.

A record's ``funnel`` (:mod:`bench.metrics.funnel`) says how many of its requested items were decoded, valid,
unique, novel and plausible, each stage a subset of the one before. A row pools its seeds: each stage's mean
count and mean fraction of the requested items over the seeds whose record has that stage, with the seed
count. Records written before the funnel have none; a row none of whose records has one is shown as n/a, and
a row whose plausible screen does not apply (no property predictor) shows n/a for that stage, never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.leaderboard.aggregate import Row
    from bench.records import ResultRecord

__all__ = [
    "STAGES", "FunnelStage", "FunnelSummary", "funnel_rows", "summarize_funnel", "fmt_count", "fmt_stage",
]

STAGES = ("requested", "decoded", "valid", "unique", "novel", "plausible")
"""The funnel's stages in order (as :data:`bench.metrics.funnel.STAGES`; the board imports no metric code)."""


@dataclass(frozen=True)
class FunnelStage:
    """One stage of a row's funnel, pooled over seeds.

    Attributes:
        name: The stage.
        mean: Mean count over the seeds that have the stage; None: n/a in every seed.
        fraction: Mean fraction of the requested items over those seeds.
        n_seeds: Seeds behind the mean.
        reason: Why the stage is n/a (the first seed's reason), when it is.
    """

    name: str
    mean: float | None
    fraction: float | None
    n_seeds: int
    reason: str | None = None


@dataclass(frozen=True)
class FunnelSummary:
    """A row's funnel: its stages, how many of its seeds have a funnel, and the plausible screen's rule.

    Attributes:
        stages: The six stages in order.
        n_seeds: Seeds whose record has a funnel.
        n_records: Seeds of the row (complete records).
        rule: The plausible screen of the row's records (their rules, distinct, joined); None without one.
        track: ``crystal`` or ``composition``.
    """

    stages: tuple[FunnelStage, ...]
    n_seeds: int
    n_records: int
    rule: str | None = None
    track: str = "crystal"

    def stage(self, name: str) -> FunnelStage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)

    @property
    def complete(self) -> bool:
        """Every seed of the row has a funnel."""
        return self.n_seeds == self.n_records


def summarize_funnel(records: Sequence[ResultRecord]) -> FunnelSummary | None:
    """Pool the funnels of one row's records (its seeds); None when no record has one.

    Args:
        records: The complete records of a row.
    """
    funnels = [r.funnel for r in records if isinstance(r.funnel, dict) and r.funnel.get("stages")]
    if not funnels:
        return None
    stages = []
    for k, name in enumerate(STAGES):
        entries = [_stage(f, k, name) for f in funnels]
        counts = [e["n"] for e in entries if e.get("n") is not None]
        fractions = [e["fraction"] for e in entries
                     if e.get("n") is not None and e.get("fraction") is not None]
        reason = next((str(e["reason"]) for e in entries if e.get("n") is None and e.get("reason")), None)
        stages.append(FunnelStage(
            name,
            float(np.mean(counts)) if counts else None,
            float(np.mean(fractions)) if fractions else None,
            len(counts),
            None if counts else reason,
        ))
    rules = list(dict.fromkeys(str(rule) for f in funnels
                               if (rule := (f.get("plausible") or {}).get("rule"))))
    return FunnelSummary(tuple(stages), len(funnels), len(records), "; ".join(rules) or None,
                         str(funnels[0].get("track") or "crystal"))


def _stage(funnel: dict[str, Any], k: int, name: str) -> dict[str, Any]:
    """Stage ``name`` of a record's funnel (at position ``k``, where the schema puts it)."""
    stages = funnel.get("stages") or []
    entry = stages[k] if k < len(stages) else {}
    if entry.get("name") != name:
        entry = next((s for s in stages if s.get("name") == name), {})
    return entry


def funnel_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows a funnel table shows: complete rows of this project's records (runs, external samples,
    references), in board order; published rows have no samples to count."""
    return [r for r in rows if r.status == "complete" and r.kind != "published"]


def fmt_count(x: float | None) -> str:
    """A mean count: a whole number as such, else one decimal (``n/a`` for None)."""
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x - round(x)) < 0.05 else f"{x:,.1f}"


def fmt_stage(stage: FunnelStage | None, *, percent: bool = True) -> str:
    """``579 (57.9%)``: the mean count and the mean fraction of requested; ``n/a`` for a stage without one."""
    if stage is None or stage.mean is None:
        return "n/a"
    if not percent or stage.fraction is None:
        return fmt_count(stage.mean)
    return f"{fmt_count(stage.mean)} ({100 * stage.fraction:.1f}%)"
