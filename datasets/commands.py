"""The work behind ``matgenbench datasets list|fetch|verify``: plain functions returning rows, and a table.

Argument parsing lives in the CLI; these functions take resolved arguments and return data.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .download import (
    DatasetUnavailableError,
    cache_path,
    data_dir_path,
    default_data_dir,
    file_checksums,
    find_local,
    resolve_file,
)
from .registry import REGISTRY, DatasetSpec, get_spec
from .tiny import tiny_checksums

__all__ = ["fetch", "list_rows", "render_table", "verify"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _specs(name: str | None) -> list[DatasetSpec]:
    return list(REGISTRY.values()) if name is None else [get_spec(name)]


def list_rows(data_dir: PathLike | None = None, cache_dir: PathLike | None = None) -> list[dict[str, Any]]:
    """One row per dataset split: where it is present, its row count if known, and its pinned URL.

    Args:
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root; defaults to the user cache dir.

    Returns:
        Dicts with keys ``name``, ``split``, ``rows`` (None if unknown), ``present`` (``data_dir``, ``cache``,
        ``missing`` or ``builtin``), ``path`` and ``url``. Files are located, not verified (see
        :func:`verify`).
    """
    rows: list[dict[str, Any]] = []
    for spec in REGISTRY.values():
        for split in spec.splits:
            if spec.builtin:
                rows.append(
                    {
                        "name": spec.name,
                        "split": split,
                        "rows": None,
                        "present": "builtin",
                        "path": None,
                        "url": None,
                    }
                )
                continue
            where, path = find_local(spec, split, data_dir, cache_dir)
            rows.append(
                {
                    "name": spec.name,
                    "split": split,
                    "rows": spec.split_file(split).n_rows,
                    "present": where,
                    "path": str(path) if path else None,
                    "url": spec.url(split),
                }
            )
    return rows


def fetch(
    name: str,
    splits: Sequence[str] | None = None,
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> dict[str, Path]:
    """Make the given splits of a dataset available locally (verified), downloading what is missing.

    Every split is tried; failures are raised together at the end.

    Args:
        name: dataset name.
        splits: splits to fetch (default: all).
        data_dir: local data dir checked first; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root the downloads go to.

    Returns:
        The verified path of every split.

    Raises:
        DatasetUnavailableError: if any split could not be made available (the message lists each one).
    """
    spec = get_spec(name)
    wanted = list(splits) if splits else list(spec.splits)
    for split in wanted:
        spec.check_split(split)
    if spec.builtin:
        logger.info("dataset %s is built in code; nothing to fetch", name)
        return {}
    paths: dict[str, Path] = {}
    errors: list[str] = []
    for split in wanted:
        try:
            paths[split] = resolve_file(spec, split, data_dir=data_dir, cache_dir=cache_dir, download=True)
        except DatasetUnavailableError as err:
            errors.append(str(err))
    if errors:
        raise DatasetUnavailableError(
            f"{len(errors)} of {len(wanted)} file(s) of {name} could not be fetched:\n" + "\n".join(errors)
        )
    return paths


def _locations(
    spec: DatasetSpec, split: str, data_dir: PathLike | None, cache_dir: PathLike | None
) -> Iterable[Path]:
    data_dir = data_dir if data_dir is not None else default_data_dir()
    if data_dir is not None:
        yield data_dir_path(spec, split, data_dir)
    yield cache_path(spec, split, cache_dir)


def verify(
    name: str | None = None, data_dir: PathLike | None = None, cache_dir: PathLike | None = None
) -> list[dict[str, Any]]:
    """Check every local copy of a dataset's files against the pinned checksums.

    Args:
        name: dataset name, or None for all datasets.
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root.

    Returns:
        One dict per present copy (or per missing file) with keys ``name``, ``split``, ``path``,
        ``algorithm``, ``expected``, ``actual``, ``ok``, ``present`` and ``status`` (``ok``, ``mismatch``,
        ``missing`` or ``builtin``).
        A missing file has ``ok=False`` and ``actual=None``.
    """
    rows: list[dict[str, Any]] = []
    for spec in _specs(name):
        for split in spec.splits:
            if spec.builtin:
                sha = tiny_checksums(split)["sha256"]
                rows.append(
                    {
                        "name": spec.name,
                        "split": split,
                        "path": None,
                        "algorithm": "sha256",
                        "expected": sha,
                        "actual": sha,
                        "ok": True,
                        "present": True,
                        "status": "builtin",
                    }
                )
                continue
            entry = spec.split_file(split)
            algo = "sha256" if entry.sha256 else "git_blob"
            expected = entry.sha256 or entry.git_blob
            found = False
            for path in _locations(spec, split, data_dir, cache_dir):
                if not path.is_file():
                    continue
                found = True
                actual = file_checksums(path)
                ok = actual["git_blob"] == entry.git_blob and (
                    entry.sha256 is None or actual["sha256"] == entry.sha256
                )
                rows.append(
                    {
                        "name": spec.name,
                        "split": split,
                        "path": str(path),
                        "algorithm": algo,
                        "expected": expected,
                        "actual": actual[algo],
                        "ok": ok,
                        "present": True,
                        "status": "ok" if ok else "mismatch",
                    }
                )
            if not found:
                rows.append(
                    {
                        "name": spec.name,
                        "split": split,
                        "path": None,
                        "algorithm": algo,
                        "expected": expected,
                        "actual": None,
                        "ok": False,
                        "present": False,
                        "status": "missing",
                    }
                )
    return rows


_HEX_DIGEST = re.compile(r"[0-9a-f]{40,64}")


def _cell(value: Any) -> str:
    """Table text of a value: ``-`` for None, hex digests cut to 12 characters (rows keep full values)."""
    if value is None:
        return "-"
    text = str(value)
    return f"{text[:12]}…" if _HEX_DIGEST.fullmatch(text) else text


def render_table(
    rows: Sequence[dict[str, Any]], title: str | None = None, console: Console | None = None
) -> Table:
    """Print row dicts as a rich table (columns from the first row's keys; digests shortened) and return it.

    Args:
        rows: rows as returned by :func:`list_rows` or :func:`verify`.
        title: optional table title.
        console: where to print (default: a new ``rich`` console on stdout).

    Returns:
        The printed table.
    """
    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col not in ("path", "url"))
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    (console or Console()).print(table)
    return table
