"""``run_metrics``: score generated structures against a reference set with the configured metrics."""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from bench.applicability import COMPOSITION_METRICS, NOT_APPLICABLE, not_applicable_reason
from bench.metrics.base import Metric, MetricReport, MetricResult, ReferenceSet
from bench.metrics.cache import cache_path, cached
from bench.metrics.conditional import CondHitRate, ConditionTargets
from bench.metrics.funnel import SCREENED_COLUMN, PlausibleScreen, funnel_from_table, predicted_column
from bench.metrics.generated import GeneratedSet
from bench.metrics.matching import build_matcher, matcher_params
from bench.metrics.registry import build_metric
from bench.metrics.settings import MetricSettings, settings_hash

__all__ = ["package_versions", "reference_elements", "run_metrics"]

logger = logging.getLogger(__name__)

_RECORD_COLUMNS = (
    "constructed",
    "construct_reason",
    "struct_valid",
    "struct_reason",
    "min_distance",
    "comp_valid",
    "comp_reason",
    "fingerprint_ok",
    "fingerprint_reason",
    "valid",
    "formula",
    "density",
    "num_elems",
)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages whose behaviour the metric values depend on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "pymatgen",
        "pymatgen-core",
        "smact",
        "spglib",
        "numpy",
        "scipy",
        "matminer",
        "scikit-learn",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _reference_checksum(metric: Metric, reference: ReferenceSet) -> str | None:
    """Checksum of the splits a metric's ``prepare`` reads, or None when one is unknown (no caching)."""
    splits = getattr(metric, "reference_splits", None) or ("train", "test")
    sums = [getattr(reference, f"{split}_checksum", "") for split in splits]
    if not all(sums):
        return None
    # hashed whole, never cut: a row-capped split's checksum differs from its file's only at the end
    return hashlib.sha256(":".join(sums).encode()).hexdigest()[:16]


def reference_elements(reference: ReferenceSet) -> list[str]:
    """Distinct elements (symbols, sorted) of the reference's train and test structures."""
    found: set[str] = set()
    for structure in (*reference.train, *reference.test):
        found.update(el.symbol for el in structure.composition.element_composition.elements)
    return sorted(found)


def _not_applicable_entry(metric: Metric, reason: str, n_elements: int) -> dict[str, Any]:
    return {
        "value": math.nan,  # written as null
        "direction": metric.direction,
        "description": metric.description,
        "version": metric.version,
        "status": NOT_APPLICABLE,
        "reason": reason,
        "n_reference_elements": n_elements,
    }


def _per_sample_column(values: Any) -> Any:
    """Float arrays holding only 0/1/NaN become nullable booleans; everything else is kept."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        finite = values[~np.isnan(values)]
        if np.isin(finite, (0.0, 1.0)).all():
            return pd.array([pd.NA if math.isnan(v) else bool(v) for v in values], dtype="boolean")
    return values


def _per_sample_frame(
    gset: GeneratedSet, results: dict[str, MetricResult], sample: np.ndarray
) -> pd.DataFrame:
    records = gset.records
    frame = pd.DataFrame(
        {
            "index": np.arange(len(records)),
            **{col: [getattr(r, col) for r in records] for col in _RECORD_COLUMNS},
        }
    )
    frame["num_elems"] = pd.array(frame["num_elems"].tolist(), dtype="Int64")
    frame["fingerprint_ok"] = pd.array(frame["fingerprint_ok"].tolist(), dtype="boolean")
    in_sample = np.zeros(len(records), dtype=bool)
    in_sample[sample] = True
    frame["in_distribution_sample"] = in_sample
    for name, result in results.items():
        if result.per_sample is not None and name not in frame.columns:
            frame[name] = _per_sample_column(np.asarray(result.per_sample))
        for col, values in result.extra.get("per_sample_columns", {}).items():
            frame[col] = values
    return frame


def run_metrics(
    generated: Sequence[Structure | None],
    reference: ReferenceSet,
    cfg: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    compositions: Sequence[Mapping[str, float] | None] | None = None,
    condition: ConditionTargets | None = None,
) -> MetricReport:
    """Score generated structures with the metrics named in ``cfg`` (default: all registered metrics).

    Per-structure work (construction, validity, formula, density) is done once and shared by all metrics;
    reference-side work (``Metric.prepare``) is done once per metric and, when ``cache_dir`` and the
    reference checksums are given, cached on disk.

    Args:
        generated: Generated structures; ``None`` for a sample that could not be made into a crystal.
        reference: Train and test structures of the dataset.
        cfg: The ``metrics`` config mapping (``conf/metrics/default.yaml``); missing keys take the defaults.
        cache_dir: Root of the on-disk cache (files under ``<cache_dir>/metrics/``); None disables it.
        progress: Show progress bars for the slow per-structure loops.
        compositions: Per generated item, the element amounts of an item that is ``None`` but whose atoms
            are known (a decode failure); composition validity scores them, as CDVAE does.
        condition: The property values the items were requested at, or targets to score them against
            (:class:`bench.metrics.conditional.ConditionTargets`); given, ``cond_hit_rate`` is computed too
            (whatever ``cfg`` names) and the targets and window go into the report's settings.

    Returns:
        The report: metric values with direction and details, a per-sample table, counts and settings.
    """
    settings = MetricSettings.from_mapping(cfg)
    metrics = [build_metric(name, settings) for name in settings.names]
    if condition is not None:  # not in the registry: it needs targets, which only a conditional run has
        condition = condition.resolve(reference)
        metrics.append(CondHitRate(settings, condition))
    for metric in metrics:
        if hasattr(metric, "progress"):  # metrics with slow reference-side loops show a bar in prepare()
            metric.progress = progress
    gset = GeneratedSet(
        generated, settings.validity, progress=progress, parallel=settings.parallel,
        compositions=compositions or None,
    )
    t0 = time.perf_counter()
    records = gset.records
    validity_seconds = time.perf_counter() - t0

    prepared_by_key: dict[tuple[str, str], Any] = {}
    prepared_of: dict[str, Any] = {}  # metric name -> its reference side (the funnel reuses wdist_prop's)
    results: dict[str, MetricResult] = {}
    entries: dict[str, dict[str, Any]] = {}
    # composition metrics do not apply to single-element reference data (bench.applicability)
    elements = reference_elements(reference) if COMPOSITION_METRICS & {m.name for m in metrics} else None
    for metric in metrics:
        reason = not_applicable_reason(metric.name, elements)
        if reason is not None:
            entries[metric.name] = _not_applicable_entry(metric, reason, len(elements or ()))
            logger.info("%s: not applicable (%s)", metric.name, reason)
            continue
        prepare_name = getattr(metric, "prepare_key", metric.name)
        key_settings = {
            "version": metric.version,
            **(metric.settings_key() if hasattr(metric, "settings_key") else {}),
        }
        shash = settings_hash(key_settings)
        key = (prepare_name, shash)
        cache_state = "shared"
        prepare_seconds = 0.0
        if key not in prepared_by_key:
            path = None
            checksum = _reference_checksum(metric, reference)
            unavailable = getattr(metric, "unavailable", None)
            missing = unavailable(reference) if unavailable is not None else None
            if missing is not None:
                logger.info("%s: %s (not cached)", metric.name, missing)
            if cache_dir is not None and getattr(metric, "cacheable", True) and checksum and missing is None:
                path = cache_path(Path(cache_dir), checksum, prepare_name, shash)
            t0 = time.perf_counter()
            prepared_by_key[key], hit = cached(path, lambda m=metric: m.prepare(reference))
            prepare_seconds = time.perf_counter() - t0
            cache_state = "off" if path is None else ("hit" if hit else "miss")
        prepared_of[metric.name] = prepared_by_key[key]
        t0 = time.perf_counter()
        result = metric(gset, prepared_by_key[key])
        seconds = time.perf_counter() - t0
        results[metric.name] = result
        extra = {k: v for k, v in result.extra.items() if k != "per_sample_columns"}
        if elements is not None and metric.name in COMPOSITION_METRICS:
            extra["n_reference_elements"] = len(elements)
        entries[metric.name] = _jsonable(
            {
                "value": float(result.value),
                "direction": metric.direction,
                "description": metric.description,
                "version": metric.version,
                **extra,
                "seconds": round(seconds, 4),
                "prepare_seconds": round(prepare_seconds, 4),
                "prepare_cache": cache_state,
            }
        )
        logger.info("%s = %.4g (%s, %.1f s)", metric.name, result.value, metric.direction, seconds)

    sample = gset.distribution_sample(settings.distribution)
    per_sample = _per_sample_frame(gset, results, sample)
    funnel, per_sample["funnel_stage"] = _funnel(gset, per_sample, reference, settings,
                                                 prepared_of.get("wdist_prop"))
    counts: dict[str, int] = {
        "n_generated": len(records),
        "n_none": sum(item is None for item in gset),
        "n_constructed": int(per_sample["constructed"].sum()),
        "n_struct_valid": int(per_sample["struct_valid"].sum()),
        "n_comp_valid": int(per_sample["comp_valid"].sum()),
        "n_fingerprint_failed": int((~per_sample["fingerprint_ok"]).sum(skipna=True)),
        "n_valid": int(per_sample["valid"].sum()),
        "n_distribution_sample": len(sample),
        "n_train": len(reference.train),
        "n_test": len(reference.test),
    }
    for col in ("unique", "novel"):
        if col in per_sample.columns:
            counts[f"n_{col}"] = int(per_sample[col].sum(skipna=True))
    report_settings = {
        **settings.to_dict(),
        "matcher_params": matcher_params(build_matcher(settings.matcher)),
        "reference": {
            "name": reference.name,
            "train_checksum": reference.train_checksum,
            "test_checksum": reference.test_checksum,
        },
        "versions": package_versions(),
        "validity_seconds": round(validity_seconds, 4),
    }
    if condition is not None:
        report_settings["condition"] = condition.settings()
    return MetricReport(
        metrics=entries, per_sample=per_sample, counts=counts, settings=_jsonable(report_settings),
        funnel=_jsonable(funnel),
    )


def _plausible_screen(
    reference: ReferenceSet, settings: MetricSettings, prepared: Any
) -> tuple[PlausibleScreen | None, str | None]:
    """The plausible screen of the crystal track: the property model ``wdist_prop`` fitted on the training
    split, and the central 99% of the training split's values of ``settings.property``; or None and why."""
    prop = settings.property
    if not prop:
        return None, "no property named for the dataset (dataset.property)"
    if prepared is None:
        return None, "wdist_prop, whose property model the screen uses, was not computed (metrics=full)"
    if "reason" in prepared:
        return None, f"no property model: {prepared['reason']}"
    values = ((reference.properties or {}).get("train") or {}).get(prop)
    try:
        return PlausibleScreen.from_training(prop, values, prepared["model"].description), None
    except (TypeError, ValueError) as err:
        return None, str(err)


def _funnel(
    gset: GeneratedSet, frame: pd.DataFrame, reference: ReferenceSet, settings: MetricSettings,
    prepared: Any,
) -> tuple[dict[str, Any], list[str]]:
    """The usability funnel of the run (:mod:`bench.metrics.funnel`) from its per-sample table, and the last
    stage each item reaches. Items that reach ``novel`` outside the distribution draw (which alone has
    ``predicted_<property>``) are predicted by the same property model."""
    screen, reason = _plausible_screen(reference, settings, prepared)
    if screen is None:
        return funnel_from_table(frame, "crystal", screen=None, screen_reason=reason)
    column = predicted_column("crystal", screen.property)
    predicted = (frame[column].to_numpy(dtype=float) if column in frame.columns
                 else np.full(len(frame), np.nan))
    _, last = funnel_from_table(frame, "crystal", screen=None)
    todo = np.array([i for i, stage in enumerate(last) if stage == "novel" and not np.isfinite(predicted[i])],
                    dtype=np.int64)
    if len(todo):
        from bench.metrics.property import predict_generated

        predicted = predicted.copy()
        predicted[todo] = predict_generated(gset, todo, prepared["model"])
    reached = np.array([stage in ("novel", "plausible") for stage in last], dtype=bool)
    frame[SCREENED_COLUMN] = np.where(reached, predicted, np.nan)
    return funnel_from_table(frame, "crystal", screen=screen, predicted=predicted)
