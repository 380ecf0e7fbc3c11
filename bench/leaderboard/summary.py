"""Plain-words findings computed from the board: who leads each headline metric, and whether the lead is real.

For every dataset and protocol with at least two competing rows (runs of this project, seeds pooled) and every
headline metric, the leader and the runner-up are named with their means and 95% intervals of the mean, and
the finding says whether the lead holds by :func:`bench.leaderboard.stats.compare`: Welch's t-test over the
per-seed values (p shown), after ties at display precision and gaps of at most two units of the last shown
digit are set aside. Interval overlap alone never decides. The text says how many seeds stand behind each
mean. A cost line per dataset gives training seconds, steps and sampling throughput.

Nothing here is written by hand: the findings are recomputed on every ``leaderboard build``. A hand-written
analysis, if any, lives in ``leaderboard/analysis.md`` and is placed above them (see
:func:`bench.leaderboard.build.build`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from bench.leaderboard.aggregate import (
    COMPOSITION_QUALITY_METRIC,
    QUALITY_METRIC,
    MetricSummary,
    Row,
    rank_summaries,
)
from bench.leaderboard.format import fmt_rate, fmt_seconds, fmt_value
from bench.leaderboard.stats import ALPHA, MIN_BOOTSTRAP_SEEDS, MIN_DISPLAY_UNITS, Comparison, compare

__all__ = [
    "HEADLINE_METRICS", "Finding", "findings", "cost_lines", "fmt_p", "not_applicable_lines",
    "summary_markdown",
]

HEADLINE_METRICS = (
    "valid", QUALITY_METRIC, "unique", "novel", "cov_recall", "cov_precision", "wdist_density",
    "wdist_num_elems", "wdist_prop", "jsd_spacegroup",
    "comp_smact_valid", COMPOSITION_QUALITY_METRIC, "comp_unique", "comp_novel", "comp_jsd_elements",
    "comp_magpie_fd", "comp_wdist_prop",
)
"""The metrics with findings: the crystal track's, then the composition track's (a dataset's rows have one
group or the other)."""


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
    comparison: Comparison = Comparison("undefined")
    """Leader against runner-up (:func:`bench.leaderboard.stats.compare`): the verdict and Welch's p."""

    @property
    def holds(self) -> bool:
        """True when the leader's lead is real (Welch p < 0.05, more than two shown units, not a tie)."""
        return not self.tied and self.comparison.holds

    def sentence(self) -> str:
        arrow = "↑" if self.direction == "max" else "↓"
        if self.tied:
            return (f"**{self.metric}** {arrow}: {', '.join(self.tied)} tied at "
                    f"{fmt_value(self.leader_summary.mean)}: no leader.")

        def part(name: str, s: MetricSummary) -> str:
            ci = f" [{fmt_value(s.ci[0])}, {fmt_value(s.ci[1])}]" if s.ci else ""
            return f"{name} {fmt_value(s.mean)}{ci}"

        p = self.comparison.p
        test = f"Welch's t-test {fmt_p(p)}" if p is not None else "no t-test (one seed)"
        verdict = {
            "holds": f"{test}: {self.leader} leads",
            "not_separated": f"{test}: not separated, no leader",
            "too_close": f"{test}; at most {MIN_DISPLAY_UNITS} units of the last digit apart: no leader",
            "undefined": f"{test}: no claim",
            "tied": "tied: no leader",
        }[self.comparison.verdict]
        seeds = sorted({self.leader_summary.n, self.runner_up_summary.n})
        return (f"**{self.metric}** {arrow}: {part(self.leader, self.leader_summary)} vs "
                f"{part(self.runner_up, self.runner_up_summary)}; {verdict} "
                f"({'/'.join(map(str, seeds))} seeds).")


def fmt_p(p: float) -> str:
    """``p = 0.012`` (two significant digits), ``p < 0.001`` below that."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


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
            ranked = rank_summaries([(s, r) for r, s in have])
            (ls, lead), (ss, second) = ranked[0], ranked[1]
            # equal at display precision is a tie, as the board's highlighting counts it
            tied = tuple(r.name for s, r in ranked if fmt_value(s.mean) == fmt_value(ls.mean))
            out.append(Finding(dataset, protocol, metric, ls.direction, lead.name, ls, second.name, ss,
                               tied if len(tied) > 1 else (), compare(ls.values, ss.values)))
    return out


def not_applicable_lines(
    rows: Sequence[Row], metrics: Sequence[str] = HEADLINE_METRICS
) -> dict[str, list[str]]:
    """Per protocol, one line per reason for the headline metrics that do not apply (no leader, no tie)."""
    by_protocol: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in (r for r in rows if r.is_rerun):
        for metric in metrics:
            summary = row.metrics.get(metric)
            if summary is None or not summary.not_applicable:
                continue
            names = by_protocol[row.protocol][summary.not_applicable]
            if metric not in names:
                names.append(metric)
    return {
        protocol: [f"**{', '.join(names)}**: n/a ({reason}); no leader." for reason, names in reasons.items()]
        for protocol, reasons in by_protocol.items()
    }


def cost_lines(rows: Sequence[Row]) -> list[str]:
    """Per competing row: parameters, training seconds and steps, sampling throughput."""
    lines = []
    for row in sorted((r for r in rows if r.is_rerun), key=lambda r: r.cost.get("train_seconds") or 0.0):
        parts = []
        if (train := row.cost.get("train_seconds")) is not None:
            steps = row.cost.get("train_steps")
            parts.append(f"trains in {fmt_seconds(train)} s" + (f" ({steps:,.0f} steps)" if steps else ""))
        if (rate := row.cost.get("samples_per_second")) is not None:
            parts.append(f"samples {fmt_rate(rate)} {row.track}s/s")
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
    not_applicable = not_applicable_lines(mine)
    lines = [
        "Computed from the rows above on every build: leader vs runner-up with 95% intervals of the mean "
        f"(Student-t below {MIN_BOOTSTRAP_SEEDS} seeds, bootstrap from there on). A lead holds only when "
        f"Welch's t-test gives p < {ALPHA:g} and the means are more than {MIN_DISPLAY_UNITS} units of the "
        "last shown digit apart; equal shown values are ties. Interval overlap alone decides nothing.",
        "",
    ]
    protocols = sorted({f.protocol for f in found})
    for protocol in protocols:
        if len(protocols) > 1:
            lines += [f"*{protocol}*", ""]
        lines += [f"- {f.sentence()}" for f in found if f.protocol == protocol]
        lines += [f"- {line}" for line in not_applicable.get(protocol, [])]
        lines.append("")
    costs = cost_lines(mine)
    if costs:
        lines += ["Cost (means over seeds, this machine):", "", *[f"- {c}" for c in costs], ""]
    return lines
