"""The JSON Schema of result records, and loading only the records that satisfy it.

The schema ships inside the package (``bench/leaderboard/record.schema.json``) so that a board built from an
installed wheel validates the same way as one built from a checkout. Records that fail validation are excluded
from the board and reported (logged with their path and the problem, and listed on the board), never dropped
silently.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bench.io_utils import read_json
from bench.records import ResultRecord

__all__ = ["SCHEMA_FILE", "ExcludedRecord", "record_schema", "validate_record", "load_valid_records"]

log = logging.getLogger(__name__)

SCHEMA_FILE = "record.schema.json"


@dataclass(frozen=True)
class ExcludedRecord:
    """A file under the results directory that did not make it onto the board, and why."""

    path: str  # relative to the results directory, so the board never shows machine paths
    problems: tuple[str, ...]


@functools.cache
def record_schema() -> dict[str, Any]:
    """The result-record JSON Schema (draft 2020-12), read from the package data."""
    text = resources.files("bench.leaderboard").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = record_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(record)"


def validate_record(data: Any) -> list[str]:
    """Check one record (as loaded from JSON) against the schema.

    Args:
        data: The decoded JSON document.

    Returns:
        One readable problem per violation, ``"<json path>: <message>"``, sorted by path; empty when valid.
    """
    errors = sorted(
        _validator().iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)
    )
    return [f"{_where(e)}: {e.message}" for e in errors]


def load_valid_records(
    results_dir: str | Path,
) -> tuple[list[tuple[Path, ResultRecord]], list[ExcludedRecord]]:
    """Read every ``*.json`` below ``results_dir``; keep those that validate, report the others.

    Args:
        results_dir: Folder of result records (``<dataset>/<name>.json``).

    Returns:
        ``(kept, excluded)``: the valid records with their paths, and the excluded files with their problems
        (unreadable JSON or schema violations). Each exclusion is also logged as a warning.
    """
    root = Path(results_dir)
    kept: list[tuple[Path, ResultRecord]] = []
    excluded: list[ExcludedRecord] = []
    if not root.exists():
        log.info("no results directory %s: the board has no records", root)
        return kept, excluded
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).as_posix()
        try:
            data = read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems = [f"unreadable JSON: {err}"]
        else:
            problems = validate_record(data)
        if problems:
            log.warning("result record %s excluded from the leaderboard: %s", path, "; ".join(problems))
            excluded.append(ExcludedRecord(rel, tuple(problems)))
            continue
        kept.append((path, ResultRecord.from_dict(data)))
    return kept, excluded
