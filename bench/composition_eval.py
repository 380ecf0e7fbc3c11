"""``matgenbench composition-eval SAMPLES.csv dataset=NAME``: score a CSV of generated formulas.

The CSV needs a ``formula`` column (or a single column, or the one named by ``--column``); an empty cell is an
item the model failed to produce. The formulas are scored against the pinned split of a composition dataset
(:mod:`bench.datasets.composition_split`) with the composition track's metrics
(:mod:`bench.metrics.composition_track`); the metric table is printed, and ``--out`` writes the full
report (values, directions, details, counts, settings, the split's id and checksum, the samples file's
sha256) as JSON.

Examples::

    matgenbench composition-eval samples.csv dataset=mp_e_form
    matgenbench composition-eval samples.csv dataset=mp_e_form split_seed=1 --references --out report.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "read_formulas"]

logger = logging.getLogger(__name__)

_KEYS = ("dataset", "split_seed", "max_samples", "seed")


def read_formulas(path: str | Path, column: str | None = None) -> list[str | None]:
    """The formulas of a CSV file, in row order; an empty cell gives None.

    Args:
        path: the CSV.
        column: the column to read; default ``formula``, or the only column of a one-column file.

    Raises:
        ValueError: the file has no such column (the message lists the columns and the fix).
    """
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    if column is None:
        if "formula" in df.columns:
            column = "formula"
        elif len(df.columns) == 1:
            column = str(df.columns[0])
        else:
            raise ValueError(
                f"{path} has no 'formula' column (columns: {list(df.columns)}); name one with --column"
            )
    if column not in df.columns:
        raise ValueError(f"{path} has no column {column!r} (columns: {list(df.columns)})")
    return [text.strip() or None for text in df[column].tolist()]


def _parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="matgenbench composition-eval",
        description="Score a CSV of generated formulas against a composition dataset's pinned split. "
        "Settings as key=value: dataset=NAME (required), split_seed=0, max_samples=1000, seed=0.",
    )
    parser.add_argument("samples", type=Path, help="CSV with a 'formula' column")
    parser.add_argument("settings", nargs="*", help="key=value: dataset, split_seed, max_samples, seed")
    parser.add_argument("--column", default=None, help="the column holding the formulas")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--per-sample", type=Path, default=None, help="write the per-sample table (CSV)")
    parser.add_argument("--references", action="store_true",
                        help="also score the reference rows (test and val draws, random compositions)")
    parser.add_argument("--no-download", action="store_true", help="never download the dataset")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the metric cache")
    args = parser.parse_args(argv)
    values: dict[str, str] = {}
    for token in args.settings:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            parser.error(f"expected key=value with key one of {', '.join(_KEYS)}, got {token!r}")
        values[key] = value
    if "dataset" not in values:
        parser.error("dataset=NAME is required (e.g. dataset=mp_e_form)")
    return args, values


def _table(report: Any, references: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="composition track")
    table.add_column("metric")
    table.add_column("better")
    table.add_column("samples", justify="right")
    for name in (references or {}):
        table.add_column(f"ref: {name}", justify="right")

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    for name, entry in report.metrics.items():
        row = [name, "higher" if entry["direction"] == "max" else "lower", fmt(entry["value"])]
        row += [fmt(ref.metrics[name]["value"]) for ref in (references or {}).values()]
        table.add_row(*row)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``matgenbench composition-eval``; returns the exit status."""
    args, values = _parse(list(sys.argv[1:] if argv is None else argv))
    from bench.datasets.download import ChecksumMismatchError, DatasetUnavailableError, file_checksums
    from bench.io_utils import atomic_write_json
    from bench.metrics.composition_track import (
        CompositionMetricSettings,
        build_reference,
        evaluate_compositions,
        reference_rows,
    )

    prog = "matgenbench composition-eval"
    try:
        formulas = read_formulas(args.samples, args.column)
        split_seed = int(values.get("split_seed", 0))
        settings = CompositionMetricSettings(
            max_samples=int(values.get("max_samples", 1000)), seed=int(values.get("seed", 0))
        )
        reference = build_reference(values["dataset"], seed=split_seed, download=not args.no_download)
    except (OSError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    except (DatasetUnavailableError, ChecksumMismatchError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    use_cache = not args.no_cache
    report = evaluate_compositions(formulas, reference, settings, use_cache=use_cache)
    refs = reference_rows(reference, n=len(formulas), seed=settings.seed, settings=settings,
                          use_cache=use_cache) if args.references else None
    _table(report, refs)
    print(f"split {reference.split.get('split_id')}; {report.counts['n_readable']} of "
          f"{report.counts['n_generated']} formulas readable")
    if args.per_sample is not None:
        report.per_sample.to_csv(args.per_sample, index=False)
    if args.out is not None:
        out = {
            "samples": {
                "path": str(args.samples),
                "sha256": file_checksums(args.samples, ("sha256",))["sha256"],
            },
            **report.to_dict(),
        }
        if refs is not None:
            out["references"] = {name: r.to_dict() for name, r in refs.items()}
        atomic_write_json(args.out, out)
        print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
