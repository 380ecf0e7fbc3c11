"""Quality versus NFE: what speed costs when one trained model is sampled with fewer or more steps.

Rows of one trained model sampled with different samplers are board rows of their own
(``ddpm-eps-cosine``, ``ddpm-eps-cosine+ddim-50``); the record's ``cost.sample_nfe`` (network function
evaluations per sample) is their x. Rows are grouped by (dataset, protocol, model, trained variant, sampler
family) (:mod:`bench.leaderboard.sampling`): a group with two or more NFE values is a curve, any other group a
point. A protocol gets the figure only when one of its trained models has rows at two or more NFE values;
otherwise :func:`missing_sentence` says which rows would make it. Every value plotted is the board's own: a
metric's summary of the row (mean over seeds, 95% interval of the mean), and for samples per second the
row's :attr:`~bench.leaderboard.aggregate.Row.cost_summaries` made by the same helpers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bench.leaderboard.aggregate import QUALITY_METRIC, MetricSummary, Row
from bench.leaderboard.headline import row_label

__all__ = ["NFE_PANELS", "NfeCurve", "curve_label", "missing_sentence", "nfe", "nfe_curves",
           "nfe_rows", "panel_summary", "shows_nfe"]

NFE_PANELS: tuple[tuple[str, str], ...] = (
    ("valid", "valid"),
    ("cov_recall", "COV-R"),
    ("cov_precision", "COV-P"),
    (QUALITY_METRIC, "vun_rate"),
    ("samples_per_second", "samples/s"),
)
"""``(key, title)`` of each panel: a metric of the row, or a cost with an interval (samples per second)."""


@dataclass(frozen=True)
class NfeCurve:
    """One trained model sampled by one sampler family, its rows in order of NFE."""

    model: str
    family: str
    trained_variant: str
    sampler: str | None
    sampler_label: str | None
    rows: tuple[Row, ...]
    label: str
    """The curve's name on the board: the trained model's label and the sampler family's."""

    @property
    def nfes(self) -> list[float]:
        """The NFE of each row, increasing."""
        return [float(n) for r in self.rows if (n := nfe(r)) is not None]

    @property
    def is_curve(self) -> bool:
        """Two or more NFE values: a line; one: a point."""
        return len(set(self.nfes)) >= 2


def nfe(row: Row) -> float | None:
    """The row's NFE per sample (mean over seeds of ``cost.sample_nfe``), None when not recorded."""
    value = row.cost.get("sample_nfe")
    return float(value) if value is not None and value > 0 else None


def panel_summary(row: Row, key: str) -> MetricSummary | None:
    """What a panel plots for ``row``: the metric's summary, else the cost's; None without a mean (absent,
    or not applicable to the dataset)."""
    summary = row.metrics.get(key) or row.cost_summaries.get(key)
    if summary is None or summary.mean is None or summary.not_applicable:
        return None
    return summary


def nfe_rows(rows: Sequence[Row]) -> list[Row]:
    """The complete runs of this project with a recorded NFE: the rows the figure can place."""
    return [r for r in rows if r.kind == "run" and r.status == "complete" and r.sampling is not None
            and nfe(r) is not None]


def _trained(row: Row) -> tuple[str, str, str, str]:
    assert row.sampling is not None
    return (row.dataset, row.protocol_id, row.model, row.sampling.trained_variant)


def curve_label(row: Row) -> str:
    """The label of ``row``'s curve: its trained model as the board names it (:func:`~bench.leaderboard.
    headline.row_label`), then the sampler family after `` · ``."""
    assert row.sampling is not None
    name = row_label(replace(row, variant=row.sampling.trained_variant))
    return f"{name} · {row.sampling.label}" if row.sampling.label else name


def nfe_curves(rows: Sequence[Row]) -> list[NfeCurve]:
    """Group the placeable rows (:func:`nfe_rows`) into curves: one per (dataset, protocol, model, trained
    variant, sampler family), rows in order of NFE; curves ordered by family, then label. Labels are made
    distinct (a number is added to the rare family whose label another one already has)."""
    groups: dict[tuple[object, ...], list[Row]] = defaultdict(list)
    for row in nfe_rows(rows):
        assert row.sampling is not None
        groups[(*_trained(row), row.sampling.sampler)].append(row)
    curves = []
    for members in groups.values():
        first = members[0]
        assert first.sampling is not None
        ordered = tuple(sorted(members, key=lambda r: (nfe(r), r.variant)))
        curves.append(NfeCurve(first.model, first.family, first.sampling.trained_variant,
                               first.sampling.sampler, first.sampling.label, ordered, curve_label(first)))
    curves.sort(key=lambda c: (c.family, c.label.lower(), c.sampler or ""))
    seen: Counter[str] = Counter()
    out = []
    for curve in curves:
        seen[curve.label] += 1
        k = seen[curve.label]
        out.append(curve if k == 1 else replace(curve, label=f"{curve.label} #{k}"))
    return out


def shows_nfe(curves: Sequence[NfeCurve]) -> bool:
    """True when one trained model has rows at two or more NFE values (in one sampler family or across
    several): the figure is worth drawing."""
    by_model: dict[tuple[str, ...], set[float]] = defaultdict(set)
    for curve in curves:
        for row in curve.rows:
            by_model[_trained(row)].add(float(nfe(row) or 0.0))
    return any(len(values) >= 2 for values in by_model.values())


def _quoted(names: Sequence[str], limit: int = 3) -> str:
    shown = [f"`{n}`" for n in names[:limit]]
    if len(names) > limit:
        shown.append(f"{len(names) - limit} more")
    return ", ".join(shown[:-1]) + (" and " if len(shown) > 1 else "") + shown[-1]


def missing_sentence(rows: Sequence[Row]) -> str | None:
    """One sentence (Markdown) for a protocol without the figure: which rows would make it. None when the
    protocol has no complete run of this project."""
    runs = [r for r in rows if r.kind == "run" and r.status == "complete" and r.sampling is not None]
    if not runs:
        return None
    by_model: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in runs:
        by_model[_trained(row)].append(row)
    unplaced = next((sorted(m, key=lambda r: r.variant) for m in by_model.values()
                     if len(m) > 1 and any(nfe(r) is None for r in m)), None)
    if unplaced:
        names = _quoted([r.variant for r in unplaced])
        return (f"No quality-versus-NFE figure: {names} are one trained model sampled in different ways, "
                "but their records carry no NFE (`cost.sample_nfe`); sampling and evaluating them again "
                "records it and draws the figure.")
    samplers = sorted((r for r in runs if r.sampling is not None and r.sampling.sampler is not None),
                      key=lambda r: r.variant)
    if samplers:
        example = samplers[0]
        assert example.sampling is not None
        trained = example.sampling.trained_variant
        name, _, rest = (example.sampling.label or "").partition("-")  # the step count follows the name
        return (f"No quality-versus-NFE figure: each trained model here is sampled at one NFE; a row of "
                f"{_quoted(sorted({r.variant for r in samplers}))} sampled with another step count (e.g. "
                f"`{trained}+{name}-<steps>{'-' + rest if rest else ''}`, from "
                "`model.module.sampler.steps=<steps>` at sample and evaluate) would draw it.")
    return ("No quality-versus-NFE figure: no run here has a sampler with a step count; rows of one "
            "diffusion or flow model sampled at two step counts (`model.module.sampler.steps=<steps>`) "
            "would draw it.")
