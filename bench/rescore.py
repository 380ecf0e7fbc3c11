"""Re-score a stored metric of result records from their per-structure tables, without re-running anything.

``python -m bench.rescore [RESULTS_DIR]`` (default ``leaderboard/results``) recomputes ``vun_rate`` for every
``complete`` record that has its ``*.samples.csv`` beside it: per structure, valid AND unique AND novel
(:func:`bench.metrics.novelty.vun_flags`, the definition the metric suite uses), over all requested samples.
The record's ``vun_rate`` entry is replaced (version :attr:`bench.metrics.novelty.VUNRate.version`, with
``rescored_from`` naming the table); nothing else in the record changes. It prints one line per record,
``before -> after``, where "before" is the board's old product valid × unique × novel.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.io_utils import atomic_write_json, read_json

__all__ = ["Rescored", "product_vun", "rescore_vun", "rescore_vun_record", "main"]

log = logging.getLogger(__name__)

_COLUMNS = ("valid", "unique", "novel")


@dataclass(frozen=True)
class Rescored:
    """One record's outcome: path, the old product (None: undefined), the new value (None: left alone)."""

    path: Path
    before: float | None
    after: float | None
    note: str = ""


def product_vun(metrics: dict[str, Any]) -> float | None:
    """The board's former ``vun_rate``: valid × unique × novel of the stored rates (0 if nothing is valid)."""
    values = [(metrics.get(name) or {}).get("value") for name in _COLUMNS]
    if values[0] is not None and values[0] == 0.0:
        return 0.0
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return float(values[0]) * float(values[1]) * float(values[2])


_TRUE = frozenset({"true", "1", "1.0"})
_FALSE = frozenset({"false", "0", "0.0", "", "nan", "<na>"})


def _flag(text: str) -> bool:
    """A boolean cell of a per-structure table as pandas writes it (``True``/``False``; empty: undefined)."""
    key = text.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"not a boolean cell: {text!r}")


def _entry(flags_sum: int, n: int, table: str, convention: str | None) -> dict[str, Any]:
    from bench.metrics.novelty import VUNRate

    entry: dict[str, Any] = {
        "value": flags_sum / n if n else None,
        "direction": VUNRate.direction,
        "description": VUNRate.description,
        "version": VUNRate.version,
        "n_vun": flags_sum,
        "n_generated": n,
        "rescored_from": table,
    }
    if convention:
        entry["matcher_convention"] = convention
    if not n:
        entry["reason"] = "no generated items"
    return entry


def rescore_vun_record(path: str | Path, *, write: bool = True) -> Rescored:
    """Recompute ``vun_rate`` of the record at ``path`` from ``<record>.samples.csv``.

    Args:
        path: A result record (JSON).
        write: Rewrite the record (atomically); False only computes.

    Returns:
        The outcome; ``after`` is None when the record was left alone (not complete, no table, no columns).
    """
    from bench.metrics.novelty import vun_flags

    path = Path(path)
    data = read_json(path)
    metrics = data.get("metrics") or {}
    before = product_vun(metrics)
    if data.get("status") != "complete":
        return Rescored(path, before, None, f"status {data.get('status')}")
    table = path.with_suffix(".samples.csv")
    if not table.is_file():
        return Rescored(path, before, None, "no per-structure table")
    frame = pd.read_csv(table, usecols=lambda c: c in _COLUMNS, dtype=str, keep_default_na=False)
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        return Rescored(path, before, None, f"table lacks column(s) {', '.join(missing)}")
    n = int((data.get("counts") or {}).get("n_requested", len(frame)))
    if n != len(frame):
        return Rescored(path, before, None, f"table has {len(frame)} rows, record requested {n}")
    flags = vun_flags(*(frame[c].map(_flag).tolist() for c in _COLUMNS))
    convention = (metrics.get("unique") or {}).get("matcher_convention")
    metrics["vun_rate"] = _entry(int(flags.sum()), n, table.name, convention)
    data["metrics"] = metrics
    if write:
        atomic_write_json(path, data)
    return Rescored(path, before, metrics["vun_rate"]["value"])


def rescore_vun(results_dir: str | Path, *, write: bool = True) -> list[Rescored]:
    """:func:`rescore_vun_record` for every record (``*.json``) below ``results_dir``, in path order."""
    return [rescore_vun_record(p, write=write) for p in sorted(Path(results_dir).rglob("*.json"))]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.rescore [RESULTS_DIR] [--dry-run]``: re-score ``vun_rate``, print before -> after."""
    parser = argparse.ArgumentParser(prog="python -m bench.rescore", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("leaderboard/results"))
    parser.add_argument("--dry-run", action="store_true", help="compute and print, write nothing")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"rescore: no such folder: {args.results}", file=sys.stderr)
        return 2
    for item in rescore_vun(args.results, write=not args.dry_run):
        line = f"{item.path}: vun_rate {_fmt(item.before)} -> {_fmt(item.after)}"
        print(line + (f" (left alone: {item.note})" if item.note else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
