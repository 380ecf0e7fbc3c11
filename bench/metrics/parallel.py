"""A process pool for the slow per-structure loops of the metric suite (fingerprints, structure matching).

Work goes to the workers in small chunks (``parallel.chunk_size``), so one slow structure does not hold up a
worker's queue, and results come back in input order. Small inputs (``parallel.min_parallel``) and
``parallel.workers == 1`` run in this process. Workers are forked where the platform allows it, so they
inherit what this process has already loaded (matminer's featurizers, a prepared training index) instead
of rebuilding it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from tqdm.auto import tqdm

from bench.metrics.settings import ParallelSettings

__all__ = ["map_chunks", "mp_context", "resolve_workers"]

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int | None) -> int:
    """The worker count to use: ``workers``, or all CPUs when None or 0."""
    if workers is None or workers <= 0:
        return max(1, os.cpu_count() or 1)
    return int(workers)


def mp_context(start_method: str | None) -> multiprocessing.context.BaseContext:
    """The ``multiprocessing`` context: ``start_method``, else ``fork`` where available, else the default."""
    if start_method:
        return multiprocessing.get_context(start_method)
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def map_chunks(
    fn: Callable[[list[T]], list[R]],
    items: Sequence[T],
    settings: ParallelSettings | None = None,
    progress: bool = False,
    desc: str = "",
    require_fork: bool = False,
) -> tuple[list[R], bool]:
    """Apply ``fn`` to consecutive chunks of ``items`` and concatenate the results, in order.

    Args:
        fn: A module-level function mapping a list of items to a list of results of the same length.
        items: The items.
        settings: Workers, chunk size, threshold and start method.
        progress: Show a progress bar.
        desc: Progress-bar label.
        require_fork: ``fn`` reads state this process set up (a module global), so run in this process
            unless the workers are forked.

    Returns:
        ``(results, in_workers)``: one result per item, and whether they were computed in worker processes.
    """
    settings = settings or ParallelSettings()
    items = list(items)
    size = max(1, settings.chunk_size)
    workers = min(resolve_workers(settings.workers), max(1, len(items) // size))
    context = mp_context(settings.start_method)
    serial = workers <= 1 or len(items) < settings.min_parallel
    serial = serial or (require_fork and context.get_start_method() != "fork")
    bar = tqdm(total=len(items), desc=desc, unit="struct", disable=not progress, leave=False)
    try:
        if serial:
            out: list[R] = []
            for start in range(0, len(items), size):
                out.extend(fn(items[start : start + size]))
                bar.update(min(size, len(items) - start))
            return out, False
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        results: list[list[R]] = [[] for _ in chunks]
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(fn, chunk): k for k, chunk in enumerate(chunks)}
            for future in as_completed(futures):
                k = futures[future]
                results[k] = future.result()
                bar.update(len(chunks[k]))
        return [r for chunk in results for r in chunk], True
    finally:
        bar.close()
