"""On-disk cache of metric reference-side statistics (the result of ``Metric.prepare``).

Files live at ``<cache_dir>/metrics/<checksum>-<metric>-<settings hash>.pkl`` and are written atomically
(temporary file in the same folder, then ``os.replace``), so concurrent runs never read a half-written file.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.io_utils import atomic_write_pickle

__all__ = ["cache_path", "cached"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def cache_path(cache_dir: Path, checksum: str, metric: str, settings_hash: str) -> Path:
    """Where the prepared statistics of ``metric`` for a reference with ``checksum`` are stored."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in checksum)
    return Path(cache_dir) / "metrics" / f"{safe}-{metric}-{settings_hash}.pkl"


def _atomic_write(path: Path, obj: Any) -> None:
    atomic_write_pickle(path, obj)


def cached(path: Path | None, compute: Callable[[], T]) -> tuple[T, bool]:
    """Load ``path`` if it holds a readable pickle, else compute and store it.

    Args:
        path: Cache file, or None to disable caching.
        compute: Produces the value on a miss.

    Returns:
        ``(value, hit)``.
    """
    if path is not None and path.is_file():
        try:
            with path.open("rb") as fh:
                return pickle.load(fh), True
        except Exception as err:  # a truncated or incompatible file: recompute and overwrite
            logger.warning("ignoring unreadable metric cache %s (%s); recomputing", path.name, err)
    value = compute()
    if path is not None:
        try:
            _atomic_write(path, value)
        except OSError as err:
            logger.warning("could not write metric cache %s (%s)", path, err)
    return value, False
