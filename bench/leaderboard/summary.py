"""Plain-words findings computed from the board: who leads each headline metric, and whether the lead is real.

For every dataset and protocol with at least two competing rows (runs of this project, seeds pooled) and every
headline metric, the leader and the runner-up are named with their means and 95% bootstrap intervals, and the
finding says whether the intervals are apart ("ahead") or overlap ("not separated"). With three seeds a bootstrap
interval is rough, so "not separated" is the honest reading of close numbers, and the text says how many seeds
stand behind each mean. A cost line per dataset gives training seconds, steps and sampling throughput.

Nothing here is written by hand: the findings are recomputed on every ``leaderboard build``. A hand-written
analysis, if any, lives in ``leaderboard/analysis.md`` and is placed above them (see
:func:`bench.leaderboard.build.build`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from bench.leaderboard.aggregate import QUALITY_METRIC, MetricSummary, Row
from bench.leaderboard.format import fmt_rate, fmt_seconds, fmt_value

__all__ = ["HEADLINE_METRICS", "Finding", "findings", "cost_lines", "summary_markdown"]

HEADLINE_METRICS = (
    "valid", QUALITY_METRIC, "unique", "novel", "cov_recall", "cov_precision", "wdist_density",
    "wdist_num_elems", "wdist_prop", "jsd_spacegroup",
)


@dataclass(frozen=True)
class Finding:
    """The leader of one metric on one dataset and protocol, against the runner-up."""

    dataset: str
    protocol: str
    metric: str
    direction: str
    leader: str
    leader_summary: MetricSummary
    runner_up: str
    runner_up_summary: MetricSummary
    tied: tuple[str, ...] = ()
    """Every row equal to the leader at display precision, leader included (empty: the leader is alone)."""

    @property
    def separated(self) -> bool | None:
        """True when the two 95% intervals do not overlap; None when either interval is undefined."""
        a, b = self.leader_summary.ci, self.runner_up_summary.ci
        if a is None or b is None:
            return None
        return a[1] < b[0] or b[1] < a[0]

    def sentence(self) -> str:
        arrow = "↑" if self.direction == "max" else "↓"
        if self.tied:
            return (f"**{self.metric}** {arrow}: {', '.join(self.tied)} tied at "
                    f"{fmt_value(self.leader_summary.mean)}: no leader.")

        def part(name: str, s: MetricSummary) -> str:
            ci = f" [{fmt_value(s.ci[0])}, {fmt_value(s.ci[1])}]" if s.ci else ""
            return f"{name} {fmt_value(s.mean)}{ci}"

        verdict = {
            True: "intervals apart: the lead holds",
            False: "intervals overlap: not separated",
            None: "interval undefined (one seed): no claim",
        }[self.separated]
        seeds = sorted({self.leader_summary.n, self.runner_up_summary.n})
        return (f"**{self.metric}** {arrow}: {part(self.leader, self.leader_summary)} leads "
                f"{part(self.runner_up, self.runner_up_summary)}; {verdict} "
                f"({'/'.join(map(str, seeds))} seeds).")


def _competing(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        if row.is_rerun:
            groups[(row.dataset, row.protocol)].append(row)
    return groups


def findings(rows: Sequence[Row], metrics: Sequence[str] = HEADLINE_METRICS) -> list[Finding]:
    """One :class:`Finding` per (dataset, protocol, metric) with two or more competing rows that have it."""
    out = []
    for (dataset, protocol), group in _competing(rows).items():
        for metric in metrics:
            have = [(r, r.metrics[metric]) for r in group
                    if metric in r.metrics and r.metrics[metric].mean is not None]
            if len(have) < 2:
                continue
            direction = have[0][1].direction
            have.sort(key=lambda item: item[1].mean if direction == "min" else -item[1].mean)
            (lead, ls), (second, ss) = have[0], have[1]
            # equal at display precision is a tie, as the board's highlighting counts it
            tied = tuple(r.name for r, s in have if fmt_value(s.mean) == fmt_value(ls.mean))
            out.append(Finding(dataset, protocol, metric, direction, lead.name, ls, second.name, ss,
                               tied if len(tied) > 1 else ()))
    return out


def cost_lines(rows: Sequence[Row]) -> list[str]:
    """Per competing row: parameters, training seconds and steps, sampling throughput."""
    lines = []
    for row in sorted((r for r in rows if r.is_rerun), key=lambda r: r.cost.get("train_seconds") or 0.0):
        parts = []
        if (train := row.cost.get("train_seconds")) is not None:
            steps = row.cost.get("train_steps")
            parts.append(f"trains in {fmt_seconds(train)} s" + (f" ({steps:,.0f} steps)" if steps else ""))
        if (rate := row.cost.get("samples_per_second")) is not None:
            parts.append(f"samples {fmt_rate(rate)} crystals/s")
        if (params := row.cost.get("parameters")) is not None:
            parts.append(f"{params:,.0f} parameters")
        if parts:
            lines.append(f"{row.name}: " + ", ".join(parts) + ".")
    return lines


def summary_markdown(rows: Sequence[Row], dataset: str) -> list[str]:
    """Markdown bullet lines of the findings and costs on ``dataset`` (empty when nothing competes)."""
    mine = [r for r in rows if r.dataset == dataset]
    found = findings(mine)
    if not found:
        return []
    lines = ["Computed from the rows above on every build (leader vs runner-up, 95% bootstrap intervals):", ""]
    protocols = sorted({f.protocol for f in found})
    for protocol in protocols:
        if len(protocols) > 1:
            lines += [f"*{protocol}*", ""]
        lines += [f"- {f.sentence()}" for f in found if f.protocol == protocol]
        lines.append("")
    costs = cost_lines(mine)
    if costs:
        lines += ["Cost (means over seeds, this machine):", "", *[f"- {c}" for c in costs], ""]
    return lines
