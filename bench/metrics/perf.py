"""``matgenbench perf evaluate``: time the metric suite's fast path against a straightforward one, in one run.

The same N generated structures (test structures of a dataset, each perturbed with seeded Gaussian noise) are
scored twice with the same metrics:

- fast path: reference statistics cached on disk (first run cold, then warm), exact matcher prefilters
  (``matcher.prefilter``), fingerprints and matching in a worker pool (``parallel.workers``), the CrystalNN
  order parameters vectorised (``parallel.fingerprint_code=numpy``, :mod:`bench.metrics.site_ops`);
- straightforward path: the code CDVAE's scripts run -- matminer's ``CrystalNNFingerprint``, no cache, every
  same-formula pair handed to ``StructureMatcher.fit``, one process.

Before both, it times the fingerprint of 100 structures with each code, so the share of the speed-up that
comes from the fingerprint code is visible.

It prints both times and their ratio, checks that every metric value agrees, and times the warm fast path at
several N to show linear growth. Usage::

    matgenbench perf evaluate --n 2000 --data-dir DIR      # or MATGENBENCH_DATA_DIR=DIR
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

from bench.metrics.base import ReferenceSet
from bench.metrics.fingerprints import _REFERENCE_MEMO
from bench.metrics.parallel import resolve_workers
from bench.metrics.runner import run_metrics
from bench.metrics.settings import DEFAULT_NAMES, FINGERPRINT_NAMES

__all__ = ["compare_values", "load_reference", "main", "perturbed", "time_run"]

logger = logging.getLogger(__name__)

COV_CUTOFFS = {"perov_5": {"struct": 0.2, "comp": 4}, "carbon_24": {"struct": 0.2, "comp": 4}}
PROPERTIES = {"perov_5": "heat_ref", "carbon_24": "energy_per_atom"}


def perturbed(structures: Sequence[Structure], n: int, sigma: float = 0.05, seed: int = 0) -> list[Structure]:
    """``n`` structures cycled from ``structures``, each with Gaussian site noise and ±1 % strain.

    Args:
        structures: The structures to perturb (cycled when ``n`` exceeds their number).
        n: How many to return.
        sigma: Standard deviation of the Cartesian displacement of every site, in Å.
        seed: Seed of the ``numpy.random.Generator``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        s = structures[k % len(structures)]
        strain = np.eye(3) + np.diag(rng.normal(0.0, 0.01, 3))
        lattice = Lattice(s.lattice.matrix @ strain)
        frac = s.frac_coords + rng.normal(0.0, sigma, (len(s), 3)) @ np.linalg.inv(lattice.matrix)
        out.append(Structure(lattice, s.species, frac))
    return out


def load_reference(dataset: str, data_dir: Path, train_split: str = "train") -> ReferenceSet:
    """Train and test splits of a dataset from a local data dir (``val`` for a missing ``train``)."""
    from bench.datasets import DatasetUnavailableError, load_split

    try:
        train = load_split(dataset, train_split, data_dir=data_dir, download=False)
    except DatasetUnavailableError:
        if train_split != "train":
            raise
        logger.warning(
            "%s/train.csv is not in %s: using the val split as the training split", dataset, data_dir
        )
        train = load_split(dataset, "val", data_dir=data_dir, download=False)
    test = load_split(dataset, "test", data_dir=data_dir, download=False)
    return ReferenceSet(
        name=dataset,
        train=train.structures,
        test=test.structures,
        train_checksum=train.checksums.get("sha256", ""),
        test_checksum=test.checksums.get("sha256", ""),
        properties={"train": train.properties, "test": test.properties},
    )


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the fingerprint workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_run(
    generated: Sequence[Structure], reference: ReferenceSet, cfg: dict[str, Any], cache_dir: Path | None
) -> tuple[float, float, dict[str, float], dict[str, Any]]:
    """Wall seconds, CPU seconds, metric values and per-metric timings of one ``run_metrics`` call.

    The in-process memo of reference fingerprints is cleared first, so each call starts from the disk cache.
    """
    _REFERENCE_MEMO.clear()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    report = run_metrics(generated, reference, cfg=cfg, cache_dir=cache_dir, progress=False)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    timings = {
        name: (entry["seconds"], entry["prepare_seconds"], entry["prepare_cache"])
        for name, entry in report.metrics.items()
    }
    timings["_validity"] = report.settings["validity_seconds"]
    return seconds, cpu, report.values(), timings


def compare_values(a: dict[str, float], b: dict[str, float], rtol: float = 1e-9) -> list[str]:
    """Names of the metrics whose values differ (NaN equals NaN)."""
    bad = []
    for name in a:
        x, y = a[name], b.get(name, math.nan)
        if not (math.isnan(x) and math.isnan(y)) and not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12):
            bad.append(name)
    return bad


def _cfg(
    dataset: str, names: Sequence[str], workers: int, prefilter: bool, fingerprint_code: str
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "names": list(names),
        "parallel": {"workers": workers, "fingerprint_code": fingerprint_code},
        "matcher": {"prefilter": prefilter},
    }
    if dataset in COV_CUTOFFS:
        cfg["cov_cutoffs"] = COV_CUTOFFS[dataset]
    if dataset in PROPERTIES:
        cfg["property"] = PROPERTIES[dataset]
    return cfg


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _table(title: str, timings: dict[str, Any]) -> None:
    _say(f"  {title}: validity {timings['_validity']:.1f} s")
    for name, value in timings.items():
        if name != "_validity":
            seconds, prepare, cache = value
            _say(f"    {name:<16} {seconds:8.2f} s   prepare {prepare:8.2f} s ({cache})")


def _fingerprint_timing(structures: Sequence[Structure]) -> None:
    """Time the CrystalNN fingerprint of a few structures with both codes, in this process, and compare."""
    from bench.metrics.fingerprints import structure_fingerprint

    seconds, values = {}, {}
    for code in ("matminer", "numpy"):
        t0 = time.perf_counter()
        values[code] = np.array([structure_fingerprint(s, code) for s in structures])
        seconds[code] = time.perf_counter() - t0
    diff = float(np.abs(values["matminer"] - values["numpy"]).max())
    _say(
        f"CrystalNN fingerprint of {len(structures)} structures, one process: matminer "
        f"{1000 * seconds['matminer'] / len(structures):.1f} ms/struct, numpy order parameters "
        f"{1000 * seconds['numpy'] / len(structures):.1f} ms/struct "
        f"({seconds['matminer'] / seconds['numpy']:.1f}x), largest difference {diff:.1e}"
    )


def evaluate(args: argparse.Namespace) -> int:
    """The ``evaluate`` benchmark; returns a process exit code (1 when the two paths disagree)."""
    data_dir = args.data_dir or os.environ.get("MATGENBENCH_DATA_DIR")
    if not data_dir or not Path(data_dir).is_dir():
        _say(
            "matgenbench perf evaluate: give --data-dir or set MATGENBENCH_DATA_DIR "
            "to a folder of <dataset>/<split>.csv"
        )
        return 2
    names = DEFAULT_NAMES + FINGERPRINT_NAMES if args.metrics == "full" else DEFAULT_NAMES
    workers = resolve_workers(args.workers)
    reference = load_reference(args.dataset, Path(data_dir))
    sizes = sorted({min(int(s), args.n) for s in args.sizes.split(",") if s.strip()} | {args.n})
    generated = perturbed(reference.test, max(sizes), sigma=args.sigma, seed=args.seed)
    _say(
        f"perf evaluate: {args.dataset}, {args.metrics} metrics ({len(names)}), N = {args.n} perturbed test "
        f"structures (sigma {args.sigma} Å), {len(reference.train)} train / {len(reference.test)} test, "
        f"{workers} workers, {os.cpu_count()} CPUs"
    )
    fast_cfg = _cfg(args.dataset, names, workers, prefilter=True, fingerprint_code="numpy")
    plain_cfg = _cfg(args.dataset, names, 1, prefilter=False, fingerprint_code="matminer")
    _fingerprint_timing(generated[: min(args.n, 100)])
    with tempfile.TemporaryDirectory(prefix="mgb-perf-") as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        cold, cold_cpu, fast_values, cold_t = time_run(generated[: args.n], reference, fast_cfg, cache)
        state = "as found" if args.cache_dir else "cold"
        _say(f"fast path, first run (reference cache {state}): {cold:.1f} s wall, {cold_cpu:.1f} s CPU")
        if args.verbose:
            _table("fast, first run", cold_t)
        warm, warm_cpu, warm_values, warm_t = time_run(generated[: args.n], reference, fast_cfg, cache)
        _say(f"fast path, warm cache: {warm:.1f} s wall, {warm_cpu:.1f} s CPU")
        if args.verbose:
            _table("fast, warm", warm_t)
        growth = []
        for n in sizes:
            seconds = warm if n == args.n else time_run(generated[:n], reference, fast_cfg, cache)[0]
            growth.append((n, seconds))
        _say(
            "fast path (warm) by N: "
            + ", ".join(f"N={n}: {s:.1f} s ({1000 * s / n:.1f} ms/struct)" for n, s in growth)
        )
        if args.no_straightforward:
            return 0
        plain, plain_cpu, plain_values, plain_t = time_run(generated[: args.n], reference, plain_cfg, None)
        _say(
            "straightforward path (no cache, plain matching, 1 process, matminer fingerprints): "
            f"{plain:.1f} s wall, {plain_cpu:.1f} s CPU"
        )
        if args.verbose:
            _table("straightforward", plain_t)
    _say(f"speed-up: {plain / warm:.1f}x with a warm cache, {plain / cold:.1f}x on the first run")
    bad = compare_values(fast_values, plain_values) + compare_values(fast_values, warm_values)
    if bad:
        for name in sorted(set(bad)):
            _say(
                f"MISMATCH {name}: fast {fast_values[name]!r} / warm {warm_values[name]!r} "
                f"/ plain {plain_values.get(name)!r}"
            )
        return 1
    _say(f"all {len(fast_values)} metric values agree between the paths")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``matgenbench perf``; returns the exit code.

    Args:
        argv: Arguments after ``perf`` (e.g. ``["evaluate", "--n", "2000"]``).
    """
    parser = argparse.ArgumentParser(prog="matgenbench perf", description="Benchmark the evaluation stage.")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="time the metric suite: fast path vs straightforward path")
    ev.add_argument("--n", type=int, default=2000, help="generated structures (default 2000)")
    ev.add_argument("--dataset", default="perov_5", choices=sorted(COV_CUTOFFS), help="reference dataset")
    ev.add_argument(
        "--data-dir", default=None, help="folder of <dataset>/<split>.csv (default $MATGENBENCH_DATA_DIR)"
    )
    ev.add_argument(
        "--metrics", default="full", choices=("default", "full"), help="metric list (default full)"
    )
    ev.add_argument("--sizes", default="500,1000,2000", help="N values timed on the warm fast path")
    ev.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    ev.add_argument("--cache-dir", default=None, help="reuse this cache dir (default: a fresh temporary one)")
    ev.add_argument("--sigma", type=float, default=0.05, help="site noise in Å (default 0.05)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-straightforward", action="store_true", help="time only the fast path")
    ev.add_argument("--verbose", action="store_true", help="per-metric timings")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.n < 1:
        parser.error("--n must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return evaluate(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
