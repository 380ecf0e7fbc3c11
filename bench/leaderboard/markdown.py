"""A Markdown leaderboard from the result records: one table per dataset, seeds aggregated per model variant."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.io_utils import atomic_write_text
from bench.records import ResultRecord, load_records

__all__ = ["render_markdown", "write_board", "BOARD_METRICS"]

# Columns shown when present; every other metric stays in the records.
BOARD_METRICS = (
    "valid", "struct_valid", "comp_valid", "unique", "novel", "cov_recall", "cov_precision",
    "wdist_density", "wdist_num_elems", "wdist_prop",
)


def _fmt(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def _fmt_cost(values: Sequence[float | None], digits: int = 0) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.fmean(values):,.{digits}f}" if values else "–"


def render_markdown(records: Sequence[ResultRecord]) -> str:
    """Render records as Markdown: per dataset, one row per (model variant, split protocol), mean ± std over seeds."""
    lines = [
        "# matgenbench leaderboard",
        "",
        "Built from the result records in `leaderboard/results/` by `matgenbench`. Values are mean ± standard "
        "deviation over seeds; ↑ higher is better, ↓ lower is better. Runs not on the official split protocol say so "
        "in the *protocol* column.",
        "",
    ]
    by_dataset: dict[str, list[ResultRecord]] = defaultdict(list)
    for record in records:
        by_dataset[record.dataset].append(record)
    if not by_dataset:
        lines.append("_No result records yet: run `matgenbench run`._")
    for dataset in sorted(by_dataset):
        recs = by_dataset[dataset]
        present = [m for m in BOARD_METRICS if any(m in r.metrics for r in recs)]
        directions = {}
        for r in recs:
            for m in present:
                if m in r.metrics:
                    directions[m] = r.metrics[m].get("direction", "max")
        header = ["model", "family", "protocol", "seeds", *[f"{m} {'↑' if directions.get(m) == 'max' else '↓'}"
                                                             for m in present],
                  "params", "train s", "samples/s", "status"]
        lines += [f"## {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        groups: dict[tuple[str, str, str], list[ResultRecord]] = defaultdict(list)
        for r in recs:
            groups[(r.variant, r.model, r.split.get("id", r.split_protocol))].append(r)
        for (variant, model, _), group in sorted(groups.items()):
            done = [r for r in group if r.status == "complete"]
            failed = [r for r in group if r.status != "complete"]
            status = "complete" if not failed else f"{len(failed)} {failed[0].status}: {failed[0].reason}"
            row = [
                model if variant == model else f"{model} ({variant})",
                group[0].family,
                group[0].split_protocol,
                str(len(done)),
                *[_fmt([r.metrics.get(m, {}).get("value") for r in done]) for m in present],
                _fmt_cost([r.cost.get("parameters") for r in done]),
                _fmt_cost([r.cost.get("train_seconds") for r in done]),
                _fmt_cost([r.cost.get("samples_per_second") for r in done], 1),
                status.replace("|", "/").replace("\n", " ")[:120],
            ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_board(results_dir: str | Path, out_path: str | Path) -> Path:
    """Read every record under ``results_dir`` and write the Markdown board to ``out_path`` atomically."""
    records = [r for _, r in load_records(results_dir)]
    return atomic_write_text(out_path, render_markdown(records))
