"""The composition track's steps of the train, sample, evaluate and reference stages
(:data:`bench.tracks.TRACKS`).

A composition dataset config (``conf/dataset/mp_e_form.yaml``, ``track: composition``) names a pinned
Matbench task (:mod:`bench.datasets.compositions`) and its seeded split
(:mod:`bench.datasets.composition_split`: ``split_seed``, ``fractions``); ``train_split`` and ``eval_split``
pick the formulas a model learns from and is scored against, and ``limit_train`` / ``limit_eval`` cap them
(debug runs) by a draw seeded with ``split_seed``.

- **train**: the training formulas the run's representation can encode (count matrices: integer formulas with
  at most 8 atoms of each element) are encoded; the others are counted (``n_train_skipped``, with the reasons)
  and the commonest reason is logged.
- **sample**: the samples file holds one row per requested item, ``index,status,reason,formula``: the reduced
  formula, or ``failed`` and the reason the representation could not decode it
  (:func:`write_formula_samples`).
- **evaluate**: the formulas are scored by :func:`bench.metrics.composition_track.evaluate_compositions`
  against the split (settings from the ``metrics`` group, :func:`metric_settings`); a model that declares a
  likelihood adds ``nll_test`` on the encodable test formulas (nats per composition; the entry says how many
  were left out). The record names the split by its ``split_id`` and checksum.
- **reference**: ``reference=test|val|random``: the reference rows of
  :func:`bench.metrics.composition_track.reference_rows` (draws of ``sample.num_samples`` test or validation
  formulas, or random compositions), scored and recorded like a model's samples.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bench.config import as_path, cache_dir, config_hash, record_config, results_dir
from bench.io_utils import atomic_write_text
from bench.records import ResultRecord, peak_memory_mb, provenance, write_record
from bench.tracks import COMPOSITION, TrainingData

__all__ = [
    "REFERENCE_ROWS",
    "FormulaSamples",
    "composition_reference",
    "metric_settings",
    "read_formula_samples",
    "score",
    "score_reference",
    "split_protocol",
    "training_data",
    "write_formula_samples",
]

log = logging.getLogger(__name__)

REFERENCE_ROWS = {
    "test": ("Test", "a draw of the test split, scored as if generated"),
    "val": ("Val", "a draw of the validation split"),
    "random": ("Random", "random compositions, 1 to 8 atoms per element"),
}
"""``reference=<kind>`` -> (the row's model name, what it is): the rows of ``reference_rows``."""
_SAMPLE_COLUMNS = ("index", "status", "reason", "formula")


# ------------------------------------------------------------------------------------------------ split


def _fractions(ds: Any) -> tuple[float, float, float]:
    return tuple(float(f) for f in OmegaConf.select(ds, "fractions", default=[0.8, 0.1, 0.1]))  # type: ignore


def split_protocol(ds: Any) -> dict[str, Any]:
    """The split protocol of a composition dataset node: the seeded split (seed, fractions), which split
    trains and which is scored against, the caps, whether it is the pinned protocol, its ``label`` and
    ``id`` (``split-s0-80-10-10_train-train_eval-test``)."""
    from bench.datasets.composition_split import DEFAULT_FRACTIONS, DEFAULT_SEED

    seed = int(OmegaConf.select(ds, "split_seed", default=DEFAULT_SEED))
    fractions = _fractions(ds)
    train, evaluation = str(ds.train_split), str(ds.eval_split)
    limits = {key: OmegaConf.select(ds, key, default=None) for key in ("limit_train", "limit_eval")}
    pct = "-".join(f"{100 * f:g}" for f in fractions)
    ident = f"split-s{seed}-{pct}_train-{train}_eval-{evaluation}"
    caps = {key: value for key, value in limits.items() if value is not None}
    ident += "".join(f"_{key.replace('limit_', 'l')}-{value}" for key, value in caps.items())
    official = (seed == DEFAULT_SEED and fractions == DEFAULT_FRACTIONS
                and (train, evaluation) == ("train", "test") and not caps)
    settings = f"split seed {seed}, {pct.replace('-', '/')} train/val/test"
    if official:
        label = f"pinned {settings}"
    else:
        capped = "".join(f",{key}={value}" for key, value in caps.items())
        label = f"{settings}, train={train},eval={evaluation}{capped} (not the pinned protocol)"
    return {
        "track": COMPOSITION,
        "train": train,
        "eval": evaluation,
        "val": OmegaConf.select(ds, "val_split", default=None),
        "official": official,
        "split_seed": seed,
        "fractions": list(fractions),
        **limits,
        "label": label,
        "id": ident,
    }


@functools.lru_cache(maxsize=4)
def _load_split(name: str, seed: int, fractions: tuple[float, float, float], data_dir: str | None,
                cache: str, download: bool) -> Any:
    from bench.datasets.composition_split import load_composition_split

    return load_composition_split(name, seed=seed, fractions=fractions, data_dir=data_dir, cache_dir=cache,
                                  download=download)


def _split(cfg: DictConfig) -> Any:
    """The :class:`~bench.datasets.composition_split.CompositionSplit` of ``cfg.dataset`` (loaded once per
    process)."""
    ds = cfg.dataset
    data_dir = as_path(OmegaConf.select(cfg, "paths.data_dir", default=None))
    return _load_split(
        str(ds.name), int(OmegaConf.select(ds, "split_seed", default=0)), _fractions(ds),
        None if data_dir is None else str(data_dir), str(cache_dir(cfg)),
        bool(OmegaConf.select(cfg, "paths.download", default=True)),
    )


def _part(split: Any, which: str, limit: int | None) -> tuple[list[str], np.ndarray]:
    """The formulas and targets of split ``which``; with ``limit``, a draw of that many seeded by the split
    seed (kept in the split's order).

    Raises:
        ValueError: ``which`` is not a split name.
    """
    if which not in split.formulas:
        raise ValueError(
            f"dataset {split.dataset} has no split {which!r}; the composition splits are "
            f"{', '.join(split.formulas)} (dataset.train_split / eval_split / val_split)"
        )
    formulas, targets = split.formulas[which], split.targets[which]
    if limit is None or int(limit) >= len(formulas):
        return list(formulas), np.asarray(targets)
    rng = np.random.default_rng(split.seed)
    take = np.sort(rng.choice(len(formulas), size=int(limit), replace=False))
    return [formulas[int(i)] for i in take], np.asarray(targets)[take]


def _checksums(split: Any) -> dict[str, Any]:
    """The record's ``data_checksums`` of a composition split: the file and the split by its id."""
    return {"file": {"name": f"{split.dataset}.csv", "sha256": split.source_sha256}, "split": split.summary()}


# --------------------------------------------------------------------------------------------- training


def training_data(
    cfg: DictConfig, representation: Any, fit: bool = True, with_val: bool = True
) -> TrainingData:
    """The composition track's training data (see the module docstring): the formulas of
    ``dataset.train_split`` the representation can encode, the representation fitted on them when ``fit``;
    with ``with_val`` and a ``dataset.val_split``, that split's encodable formulas for ``val/loss``.

    Raises:
        ValueError: no training formula can be encoded (one line with the commonest reason).
    """
    ds = cfg.dataset
    split = _split(cfg)
    formulas, _ = _part(split, str(ds.train_split), OmegaConf.select(ds, "limit_train", default=None))
    log.info("training on %s/%s (split %s): %d formulas", ds.name, ds.train_split, split.split_id,
             len(formulas))
    if fit:
        representation.fit(formulas)
    kept, reasons = _encodable(representation, formulas)
    if not kept:
        common = reasons.most_common(1)[0][0] if reasons else "no formulas"
        raise ValueError(
            f"dataset {ds.name}: none of the {len(formulas)} {ds.train_split} formulas can be encoded by "
            f"{type(representation).__name__} (commonest reason: {common}); choose a representation that "
            "can encode them"
        )
    if reasons:
        (common, count), = reasons.most_common(1)
        log.warning(
            "%s/%s: %d of %d training formulas left out (the representation cannot encode them); commonest "
            "reason: %s (%d)", ds.name, ds.train_split, len(formulas) - len(kept), len(formulas), common,
            count,
        )
    val = None
    val_name = OmegaConf.select(ds, "val_split", default=None) if with_val else None
    if val_name:
        val_formulas, _ = _part(split, str(val_name), OmegaConf.select(ds, "limit_eval", default=None))
        usable, left = _encodable(representation, val_formulas)
        if left:
            log.warning("validation split %s: %d of %d formulas left out of val/loss (the representation "
                        "cannot encode them)", val_name, sum(left.values()), len(val_formulas))
        val = representation.encode(usable) if usable else None
    return TrainingData(
        train=representation.encode(kept), val=val, n_train=len(kept), n_skipped=len(formulas) - len(kept),
        checksums=_checksums(split), skipped_reasons=dict(reasons.most_common()),
    )


def _encodable(representation: Any, formulas: Sequence[str]) -> tuple[list[str], Counter[str]]:
    """The formulas ``representation`` can encode, and the reasons (counted) the others cannot."""
    reason_of = getattr(representation, "skip_reason", None)
    kept: list[str] = []
    reasons: Counter[str] = Counter()
    for formula in formulas:
        if callable(reason_of):
            reason = reason_of(formula)
        else:
            reason = None if representation.can_encode(formula) else "the representation cannot encode it"
        if reason is None:
            kept.append(formula)
        else:
            reasons[reason] += 1
    return kept, reasons


# ---------------------------------------------------------------------------------------------- samples


@dataclass
class FormulaSamples:
    """Generated formulas to score: ``None`` where an item failed, with the reason in ``reasons``.

    Attributes:
        formulas: one formula per requested item (None: the item was not produced).
        ids: an id per item.
        reasons: why an item failed (None where it did not).
        source: where the formulas come from (a file, or a reference row).
        meta: the samples file's metadata (model, seed, timings, hashes), empty for files from outside.
    """

    formulas: list[str | None]
    ids: list[str]
    reasons: list[str | None]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_decoded(self) -> int:
        """Items that came out as a formula."""
        return sum(f is not None for f in self.formulas)

    def digest(self) -> str:
        """sha256 of the items in order (formula, or the failure and its reason)."""
        digest = hashlib.sha256()
        for formula, reason in zip(self.formulas, self.reasons, strict=True):
            digest.update((formula if formula is not None else f"failed:{reason}").encode() + b"\n")
        return digest.hexdigest()


def write_formula_samples(
    path: str | Path, items: Sequence[Any], meta: Mapping[str, Any] | None = None,
    conditions: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write generated formulas as CSV, ``index,status,reason,formula``: one row per item, a failure (a
    :class:`~bench.datasets.representation.DecodeFailure`) with ``failed`` and its reason. A
    ``<path>.meta.json`` sidecar carries ``meta``.

    Raises:
        ValueError: requested property values (``conditions``): the composition track has no condition.
    """
    if conditions:
        raise ValueError("composition samples carry no requested property values: leave out sample.condition")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(_SAMPLE_COLUMNS)
    for i, item in enumerate(items):
        if isinstance(item, str):
            writer.writerow([i, "ok", "", item])
        else:
            writer.writerow([i, "failed", getattr(item, "reason", str(item)), ""])
    path = atomic_write_text(path, buf.getvalue())
    if meta is not None:
        text = json.dumps(dict(meta), indent=2, sort_keys=True, default=str)
        atomic_write_text(Path(f"{path}.meta.json"), text)
    return path


def read_formula_samples(path: str | Path) -> FormulaSamples:
    """Read generated formulas: this project's samples file (:func:`write_formula_samples`), or any CSV with a
    ``formula`` column (or a single column; ``.csv.xz`` / ``.csv.gz`` too). An empty cell, or a row whose
    ``status`` is not ``ok``, is a failed item.

    Raises:
        bench.structures_io.SampleFileError: the file is missing, has no formula column, or holds no rows.
    """
    import pandas as pd

    from bench.structures_io import SampleFileError

    path = Path(path)
    if not path.is_file():
        raise SampleFileError(f"samples not found: {path} (pass samples=PATH: a CSV with a 'formula' column)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (ValueError, OSError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise SampleFileError(
            f"{path}: not a readable CSV ({err}); a samples file needs a 'formula' column"
        ) from err
    column = "formula" if "formula" in df.columns else (str(df.columns[0]) if len(df.columns) == 1 else None)
    if column is None:
        raise SampleFileError(
            f"{path}: no 'formula' column (columns: {list(df.columns)}); composition samples need one "
            "formula per row"
        )
    if df.empty:
        raise SampleFileError(f"{path}: holds no samples (a header without rows); nothing to score")
    id_col = next((c for c in ("index", "id") if c in df.columns), None)
    formulas: list[str | None] = []
    reasons: list[str | None] = []
    for _, row in df.iterrows():
        text = str(row[column]).strip()
        status = str(row.get("status", "ok") or "ok")
        if status != "ok" or not text:
            formulas.append(None)
            reasons.append(str(row.get("reason", "")) or "no formula in this row")
        else:
            formulas.append(text)
            reasons.append(None)
    ids = [str(v) for v in df[id_col]] if id_col else [str(i) for i in range(len(df))]
    meta_path = Path(f"{path}.meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    failed = sum(f is None for f in formulas)
    if failed:
        log.info("%s: %d of %d items are failures", path, failed, len(formulas))
    return FormulaSamples(formulas, ids, reasons, str(path), meta)


# -------------------------------------------------------------------------------------------- evaluation


def metric_settings(cfg: DictConfig) -> Any:
    """The composition metrics' settings from the ``metrics`` group, whose keys mean the same here as on the
    crystal track: ``validity``'s SMACT keys (the ``comp_valid`` rule), ``distribution.max_samples`` and
    ``.seed`` (the draw of the distribution metrics), ``distribution.element_weight`` (``presence``; ``atoms``
    becomes per-formula ``fraction``) and ``property_model`` (its ``crystalnn`` does not apply)."""
    from bench.metrics.composition_track import CompositionMetricSettings
    from bench.metrics.settings import PropertyModelSettings, ValiditySettings

    def node(key: str) -> dict[str, Any]:
        value = OmegaConf.select(cfg, f"metrics.{key}", default=None)
        return dict(OmegaConf.to_container(value, resolve=True)) if value is not None else {}

    smact_keys = ("comp_valid_mode", "max_combinations", "smact_table", "pauling_test", "include_alloys")
    validity = ValiditySettings(**{k: v for k, v in node("validity").items() if k in smact_keys})
    distribution = node("distribution")
    weight = {"atoms": "fraction"}.get(distribution.get("element_weight"), distribution.get("element_weight"))
    property_model = {k: v for k, v in node("property_model").items() if k != "crystalnn"}
    return CompositionMetricSettings(
        validity=validity,
        max_samples=int(distribution.get("max_samples", 1000)),
        seed=int(distribution.get("seed", 0)),
        element_weight=weight or "presence",
        property_model=PropertyModelSettings(**property_model, crystalnn=False),
    )


def composition_reference(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The :class:`~bench.metrics.composition_track.CompositionReference` of ``cfg.dataset`` (its train and
    eval splits, capped as configured; the validation split for the reference rows) and the data checksums.

    A capped or re-assigned reference keys the metric cache by the split checksum plus what differs, so its
    statistics are never reused for the full split.
    """
    from bench.datasets.compositions import get_composition_spec
    from bench.metrics.composition_track import CompositionReference

    ds = cfg.dataset
    spec = get_composition_spec(str(ds.name))
    split = _split(cfg)
    limit_train = OmegaConf.select(ds, "limit_train", default=None)
    limit_eval = OmegaConf.select(ds, "limit_eval", default=None)
    train, train_targets = _part(split, str(ds.train_split), limit_train)
    test, test_targets = _part(split, str(ds.eval_split), limit_eval)
    val, _ = _part(split, "val", limit_eval) if split.formulas.get("val") else ([], None)
    key = split.checksum
    if (str(ds.train_split), str(ds.eval_split)) != ("train", "test"):
        key += f"-{ds.train_split}-{ds.eval_split}"
    if limit_train is not None or limit_eval is not None:
        key += f"-ltrain{limit_train}-leval{limit_eval}"
    reference = CompositionReference(
        dataset=str(ds.name), train=train, test=test, train_targets=train_targets, test_targets=test_targets,
        val=val, checksum=key, split=split.summary(), target=spec.target,
        integer_formulas=spec.integer_formulas,
    )
    return reference, _checksums(split)


def _mark_not_applicable(metrics: dict[str, dict[str, Any]]) -> None:
    """Entries the metrics report as not applicable to the data (SMACT validity on fractional formulas) get
    ``status: not_applicable``, so the board shows n/a instead of a dash."""
    from bench.applicability import NOT_APPLICABLE

    for entry in metrics.values():
        if entry.get("value") is None and str(entry.get("reason", "")).startswith("not applicable"):
            entry["status"] = NOT_APPLICABLE


def score(
    cfg: DictConfig,
    sample_set: FormulaSamples,
    *,
    model: str,
    family: str,
    variant: str,
    kind: str,
    cost: dict[str, Any] | None = None,
    train_checksums: dict[str, Any] | None = None,
    started: float | None = None,
    likelihood_run: Path | None = None,
    tables: list[Any] | None = None,
) -> tuple[ResultRecord, Path | None]:
    """Score generated formulas against ``cfg.dataset``'s split with the composition metrics; write the
    record, its per-sample CSV and (for a model's samples) the scored samples beside it, compressed.

    With ``likelihood_run`` the run's model adds ``nll_test`` on the encodable test formulas when it declares
    a likelihood (:func:`bench.likelihood.likelihood_entry`, in nats per composition). ``tables``, when given,
    receives the per-sample table.

    Raises:
        bench.conditioning.ConditionRequestError: ``evaluate.condition`` is set (the composition track scores
            no conditions).
    """
    from bench.conditioning import ConditionRequestError
    from bench.metrics.composition_track import evaluate_compositions
    from bench.runtime import split_info

    start = time.perf_counter() if started is None else started
    if OmegaConf.select(cfg, "evaluate.condition", default=None) is not None:
        raise ConditionRequestError(
            "evaluate.condition: the composition track scores no conditions; leave it out"
        )
    reference, checksums = composition_reference(cfg)
    report = evaluate_compositions(sample_set.formulas, reference, metric_settings(cfg),
                                   cache_dir=cache_dir(cfg))
    _mark_not_applicable(report.metrics)
    report.settings["decode"] = sample_set.meta.get("decode")
    if likelihood_run is not None:
        from bench.likelihood import NLL_METRIC, likelihood_entry

        nll = likelihood_entry(cfg, likelihood_run, reference.test, reference.train, item=COMPOSITION)
        if nll is not None:
            report.metrics[NLL_METRIC] = _finite(nll)
    cost = dict(cost or {})
    cost["evaluate_seconds"] = time.perf_counter() - start
    cost["evaluate_peak_memory_mb"] = peak_memory_mb()
    if train_checksums:
        checksums.update(train_checksums)
    split = split_info(cfg, num_samples=len(sample_set.formulas))
    split.update(split_id=reference.split.get("split_id"), checksum=reference.split.get("checksum"),
                 pinned=reference.split.get("pinned"))
    counts = {
        "n_requested": len(sample_set.formulas),
        "n_decoded": sample_set.n_decoded,
        **report.counts,
        "n_reference": len(reference.test),
        "samples_file": str(sample_set.source),
        "samples_sha256": sample_set.digest(),
        **_training_counts(likelihood_run),
    }
    record = ResultRecord(
        model=model,
        family=family,
        variant=variant,
        dataset=str(cfg.dataset.name),
        split_protocol=split["label"],
        split=split,
        seed=int(cfg.seed),
        data_checksums=checksums,
        counts=counts,
        metrics=report.metrics,
        metric_settings=report.settings,
        funnel=report.funnel,
        cost=cost,
        provenance=provenance(),
        config=record_config(cfg),
        config_hash=config_hash(cfg),
        kind=kind,
    )
    frame = report.per_sample.copy()
    frame.insert(0, "id", sample_set.ids[: len(frame)])
    frame.insert(1, "decode_failure", sample_set.reasons[: len(frame)])
    path = None
    if cfg.record.get("write", True):
        path = write_record(record, results_dir(cfg))
        atomic_write_text(path.with_suffix(".samples.csv"), frame.to_csv(index=False))
        if kind != "reference":  # references are seeded draws of the split: re-derived, not shipped
            from bench.rescore import ship_samples

            ship_samples(path, sample_set)
    if tables is not None:
        tables.append(frame)
    log.info("scored %d formulas of %s against %s", len(sample_set.formulas), model,
             reference.split.get("split_id"))
    return record, path


def _training_counts(run_dir: Path | None) -> dict[str, Any]:
    """What the run trained on, from its ``train_summary.json``: the training formulas encoded, those left out
    and why (empty for samples from outside)."""
    summary_file = None if run_dir is None else Path(run_dir) / "train_summary.json"
    if summary_file is None or not summary_file.is_file():
        return {}
    summary = json.loads(summary_file.read_text())
    return {"n_train_encoded": summary.get("n_train"), "n_train_skipped": summary.get("n_train_skipped"),
            "train_skipped_reasons": summary.get("train_skipped_reasons") or {}}


def _finite(entry: dict[str, Any]) -> dict[str, Any]:
    """A likelihood entry with non-finite numbers as None (records are JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}


def score_reference(cfg: DictConfig) -> tuple[ResultRecord, Path | None]:
    """Score the composition reference row ``cfg.reference`` (``test``, ``val`` or ``random``: the rows of
    :func:`~bench.metrics.composition_track.reference_rows`, ``sample.num_samples`` items drawn with seed
    ``cfg.seed``) and write its record.

    Raises:
        ValueError: an unknown reference kind (the message lists the kinds).
    """
    from bench.metrics.composition_track import reference_items

    kind = cfg.get("reference")
    if kind not in REFERENCE_ROWS:
        raise ValueError(f"reference={kind}: choose one of {', '.join(REFERENCE_ROWS)} (e.g. reference=test)")
    start = time.perf_counter()
    reference, _ = composition_reference(cfg)
    items = reference_items(reference, int(cfg.sample.num_samples), int(cfg.seed))
    if kind not in items:
        raise ValueError(f"reference={kind}: dataset {cfg.dataset.name} has no {kind} formulas to draw from")
    formulas = items[kind]
    name, description = REFERENCE_ROWS[kind]
    sample_set = FormulaSamples(
        list(formulas), [f"{kind}-{i}" for i in range(len(formulas))], [None] * len(formulas),
        f"reference:{kind}:{cfg.dataset.name}", {"reference": kind},
    )
    return score(cfg, sample_set, model=name, family="reference", variant=description, kind="reference",
                 cost={"sample_seconds": time.perf_counter() - start}, started=start)
