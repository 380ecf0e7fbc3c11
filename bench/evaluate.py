"""The evaluate stage: score a set of structures against a dataset's reference splits, write a result record.

Evaluation reads only structures (this project's samples file, any CSV with a ``cif`` column, a folder of
CIFs, a pymatgen JSON list), never model code, so it scores any model's output. Scoring imports neither torch
nor Lightning. The one exception is the test split's likelihood of this project's own runs
(:mod:`bench.likelihood`): for a model that declares one (the flows, the Gaussian VAE, crystal_gpt) the run's
checkpoint is loaded to add ``nll_test`` (nats per crystal, exact or an upper bound as the entry says) to the
record; ``+evaluate.nll.enabled=false`` skips it. External samples and reference rows never load a model.
Samples from outside (``samples=FILE``) are named by ``evaluate.model_name``, else by the file's own metadata,
else by the file (its stem), and marked external: never by the default model's name.

Conditional generation (``bench.metrics.conditional``): a samples file that carries requested property values
(``condition_<property>`` columns, written by ``sample`` with ``+sample.condition.<property>=[...]``) is also
scored by ``cond_hit_rate``. Any other samples file (an unconditional model, a reference row) is scored
against targets given here, ``+evaluate.condition.<property>=[...]``: the baseline at the same windows.
``+evaluate.condition_window=W`` (the property's units) or ``+evaluate.condition_window_std=F`` (a fraction of
the training standard deviation) sets the window; the record's variant names the targets and window.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.config import (
    PUBLISHED_RESULTS_DIR,
    as_path,
    cache_dir,
    config_hash,
    record_config,
    results_dir,
)
from bench.io_utils import atomic_write_text
from bench.records import ResultRecord, peak_memory_mb, provenance, write_record
from bench.rundirs import check_samples, find_trained_run, record_variant, samples_path
from bench.runtime import load_dataset_split, split_info
from bench.structures_io import samples_digest

__all__ = ["evaluate", "condition_targets", "external_name", "score", "build_reference", "metrics_table"]

log = logging.getLogger(__name__)


def _content_key(split: Any) -> str:
    """What the metric cache keys a reference split by: its file's sha256, plus the row cap when one was
    applied (a capped split is other structures than the file; without the cap in the key, a quick
    ``dataset.limit_eval=...`` run would leave reference statistics that a full evaluation then reuses)."""
    sha = split.checksums.get("sha256", "")
    return f"{sha}-first{split.limit}" if sha and split.limit is not None else sha


def build_reference(cfg: DictConfig) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Load the training split (for novelty) and the reference split (for distributions) of ``cfg.dataset``.

    Returns:
        ``(ReferenceSet, data_checksums, skipped_counts)``.
    """
    from bench.metrics import ReferenceSet

    ds = cfg.dataset
    train = load_dataset_split(cfg, ds.train_split, limit=ds.get("limit_train"))
    test = load_dataset_split(cfg, ds.eval_split, limit=ds.get("limit_eval"))
    reference = ReferenceSet(
        name=ds.name,
        train=train.structures,
        test=test.structures,
        train_checksum=_content_key(train),
        test_checksum=_content_key(test),
        properties={"test": test.properties, "train": train.properties},
    )
    checksums = {ds.train_split: train.checksums, ds.eval_split: test.checksums}
    skipped = {ds.train_split: train.n_skipped, ds.eval_split: test.n_skipped}
    return reference, checksums, skipped


def metrics_table(record: ResultRecord, references: Sequence[str | Path] | None = None) -> str:
    """A plain-text table of a record's metrics, with ↑/↓ for the direction and, beside each value, the Test
    and Random reference values of the same protocol (the ceiling and the floor), so a number can be read.

    The references come from result records (:func:`bench.leaderboard.reference_values.find_reference_values`)
    in ``references`` (default: the run's own results folder, then ``leaderboard/results``). A line under the
    table names the protocol they come from, or says how to score them when there are none.

    Args:
        record: The run's record.
        references: Results folders to look in for reference records, in order.
    """
    from rich.console import Console
    from rich.table import Table

    from bench.leaderboard.headline import REFERENCE_MODELS
    from bench.leaderboard.reference_values import find_reference_values

    folders = _reference_folders(record) if references is None else list(references)
    found = find_reference_values(record, folders)
    columns = [m for m in REFERENCE_MODELS if found and m in found.values and m != record.model]
    label = record.split.get("label", record.split_protocol)
    table = Table(title=f"{record.model} on {record.dataset} ({label})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in columns:
        table.add_column(name, justify="right", style="dim")
    table.add_column("", justify="center")
    for name, entry in record.metrics.items():
        value = entry.get("value")
        text = "n/a" if value is None else f"{value:.4f}"
        beside = [found.values[m].get(name) for m in columns] if found else []
        table.add_row(name, text, *("–" if v is None else f"{v:.4f}" for v in beside),
                      "↑" if entry.get("direction") == "max" else "↓")
    console = Console(width=100, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
        # one unbroken line, so the command in it can be copied
        console.print(_references_note(record, found, columns, folders), highlight=False, markup=False,
                      soft_wrap=True)
    return capture.get()


def _reference_folders(record: ResultRecord) -> list[Path]:
    """Where a run's reference rows may be: its own results folder (from its config), then the published
    one."""
    folders = []
    if record.config:
        try:
            folders.append(results_dir(OmegaConf.create(record.config)))
        except Exception as err:  # an old or partial config: the published folder still counts
            log.debug("no results folder in the record's config: %s", err)
    return list(dict.fromkeys([*folders, PUBLISHED_RESULTS_DIR]))


def _references_note(record: ResultRecord, found: Any, columns: list[str], folders: list[Path]) -> str:
    """The line under the metrics table: where the reference columns come from, or how to make them."""
    if found is not None and columns:
        names = " and ".join([", ".join(columns[:-1]), columns[-1]] if len(columns) > 2 else columns)
        where = f"{found.folder}/{record.dataset}"
        item = str(record.split.get("track") or "crystal")  # what a sample is: crystals or compositions
        val = "Val is a draw of the validation split, " if "Val" in columns else ""
        meaning = ("Test is the test split itself scored as if generated (the ceiling of most metrics), "
                   f"{val}Random is random {item}s (the floor).")
        if found.exact:
            return f"{names}: reference rows of this protocol ({found.protocol_id}) from {where}. {meaning}"
        return (f"{names}: from protocol {found.protocol_id} in {where}, the same splits and sample count "
                f"(this run has no pinned protocol). {meaning}")
    split = record.split
    pinned = split.get("protocol")
    if pinned:
        command = f"matgenbench reference -m experiment={pinned} reference=test,random"
    else:
        overrides = [f"dataset={record.dataset}"]
        overrides += [f"dataset.{key}_split={split[key]}" for key in ("train", "eval") if split.get(key)]
        overrides += [f"dataset.{key}={split[key]}" for key in ("limit_train", "limit_eval")
                      if split.get(key) is not None]
        if split.get("num_samples"):
            overrides.append(f"sample.num_samples={split['num_samples']}")
        command = f"matgenbench reference -m {' '.join(overrides)} reference=test,random"
    searched = " or ".join(str(f) for f in folders)
    return (f"No Test/Random reference of this protocol ({_protocol_id(record)}) in {searched}; "
            f"score them with: {command}")


def _protocol_id(record: ResultRecord) -> str:
    return str(record.split.get("id") or record.split_protocol)


def _add_dataset_settings(metric_cfg: dict[str, Any], cfg: DictConfig) -> None:
    """Dataset-specific metric settings live in the dataset config (COV cutoffs, the property to predict)."""
    cutoffs = cfg.dataset.get("cov_cutoffs")
    if cutoffs is not None:
        metric_cfg["cov_cutoffs"] = OmegaConf.to_container(cutoffs, resolve=True)
    if cfg.dataset.get("property"):
        metric_cfg["property"] = str(cfg.dataset.property)


def condition_targets(cfg: DictConfig, sample_set: Any) -> tuple[Any, str | None]:
    """What ``cond_hit_rate`` scores ``sample_set`` against, and what the record's variant gains, or
    ``(None, None)`` when neither the samples nor ``evaluate.condition`` name targets.

    The samples' own requested values (``SampleSet.conditions``) are scored as drawn; ``evaluate.condition``
    gives targets for samples drawn without them (the baseline). The property scored is ``dataset.property``,
    the one the suite's property model predicts.

    Raises:
        bench.conditioning.ConditionRequestError: ``evaluate.condition`` differs from the values the samples
            were drawn at, names a column other than ``dataset.property``, or a window is set with no targets
            to score (one line naming the fix).
    """
    from bench.conditioning import (
        ConditionRequestError,
        condition_tag,
        evaluation_condition,
        normalised_condition,
        windows_tag,
    )
    from bench.metrics.conditional import ConditionTargets

    asked = evaluation_condition(cfg)
    prop = cfg.dataset.get("property")
    prop = str(prop) if prop else None
    carried = getattr(sample_set, "conditions", None) or {}
    if carried:
        drawn = sample_set.meta.get("condition")  # the requested values in order (this project's files)
        if drawn:
            drawn = normalised_condition(drawn)
        else:  # another file with condition_<column> columns: its distinct values in order of appearance
            drawn = {c: list(dict.fromkeys(v for v in values if v == v)) for c, values in carried.items()}
        if asked.targets is not None and asked.targets != drawn:
            raise ConditionRequestError(
                f"{sample_set.source} was drawn at {condition_tag(drawn)}; evaluate.condition asks for "
                f"{condition_tag(asked.targets)}: leave out evaluate.condition (the values a file was drawn "
                "at are the ones scored)"
            )
        targets = ConditionTargets.sampled(prop, carried, drawn, asked.window, asked.window_std)
        return targets, windows_tag(asked, baseline=False)
    if asked.targets is None:
        if asked.window is not None or asked.window_std is not None:
            raise ConditionRequestError(
                "evaluate.condition_window(_std) is set, but the samples carry no requested values and no "
                f"targets are given: add +evaluate.condition.{prop or '<property>'}=[...]"
            )
        return None, None
    unknown = [column for column in asked.targets if column != prop]
    if unknown:
        raise ConditionRequestError(
            f"evaluate.condition.{unknown[0]}: the suite's property model predicts "
            f"{prop or 'nothing (dataset.property is not set)'}: give targets for dataset.property"
        )
    targets = ConditionTargets.baseline(prop, asked.targets[prop], asked.window, asked.window_std)
    return targets, windows_tag(asked, baseline=True)


def external_name(samples_file: Path) -> str:
    """The label of samples from outside: the file's stem (``their_model.csv`` -> ``their_model``), or the
    folder's name for a folder of CIFs."""
    path = Path(samples_file)
    return path.name if path.is_dir() else path.stem


def _read_json_if(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def evaluate(cfg: DictConfig, extra_cost: dict[str, Any] | None = None) -> tuple[ResultRecord, Path | None]:
    """Score the samples of ``cfg`` (``samples``, else the sample stage's file in the run directory) and write
    the record.

    Without ``samples`` the run is :func:`bench.rundirs.find_trained_run` and the samples file must say it was
    drawn from that training with ``cfg``'s sampling settings, so the record's config hash is that of the
    config the samples came from.

    The samples are read and scored by the dataset's track (:mod:`bench.tracks`): structures by the crystal
    metric suite (:func:`score`), formulas by the composition metrics
    (:func:`bench.composition_stages.score`).

    Returns:
        The record and the path it was written to (``None`` when ``record.write`` is false).

    Raises:
        bench.tracks.TrackMismatchError: the run's model and the dataset belong to different tracks.
        bench.rundirs.RunMismatchError: the run or the samples file belongs to another config.
    """
    from bench.tracks import check_track, track_of_dataset

    start = time.perf_counter()
    samples_file = as_path(cfg.get("samples"))
    external = samples_file is not None
    # samples from outside are scored by the dataset's track alone; a run's own must match its model's
    track = track_of_dataset(cfg) if external else check_track(cfg)
    run_dir = None
    if samples_file is None:
        run_dir = find_trained_run(cfg)
        samples_file = samples_path(cfg)
    sample_set = track.read_samples(samples_file)
    meta = sample_set.meta
    if not external:
        check_samples(meta, cfg, samples_file)
    train_summary = {} if external else _read_json_if(Path(cfg.paths.run_dir) / "train_summary.json")
    # external samples are named after what produced them, never after the default model of the config
    default_name = external_name(samples_file) if external else cfg.model.name
    model = cfg.evaluate.get("model_name") or meta.get("model") or default_name
    own_family = "external" if external else cfg.model.family
    family = cfg.evaluate.get("family") or meta.get("family") or own_family
    variant = cfg.evaluate.get("variant") or meta.get("variant") or (model if external else cfg.model.variant)
    if not external and not cfg.evaluate.get("variant"):  # a hyperparameter override is a row of its own
        variant = record_variant(cfg, str(variant))
    cost = {
        "train_seconds": train_summary.get("train_seconds"),
        "train_steps": train_summary.get("steps"),
        "stopped_before_max_steps": train_summary.get("stopped_by_time"),
        "loss_first": train_summary.get("loss_first"),
        "loss_last": train_summary.get("loss_last"),
        "parameters": train_summary.get("parameters"),
        "train_peak_memory_mb": train_summary.get("peak_memory_mb"),
        "gpu_peak_memory_mb": train_summary.get("gpu_peak_memory_mb"),
        "sample_nfe": meta.get("nfe"),
        "sample_seconds": meta.get("sample_seconds"),
        "samples_per_second": meta.get("samples_per_second"),
        "sample_device": meta.get("device"),
        **(extra_cost or {}),
    }
    if meta.get("sampler_prepare_seconds") is not None:  # a sampler's one-off estimate on the training data
        cost["sampler_prepare_seconds"] = meta["sampler_prepare_seconds"]
    if meta.get("sampler_report"):  # what that preparation fitted or trained, and on what data
        cost["sampler_fit"] = meta["sampler_report"]
    if train_summary.get("stages"):  # a model trained in stages: each stage's steps, seconds and loss
        cost["train_stages"] = [
            {k: st.get(k) for k in ("name", "steps", "max_steps", "seconds", "loss_first", "loss_last",
                                    "stopped_by_time")}
            for st in train_summary["stages"]
        ]
    return track.score(
        cfg, sample_set, model=str(model), family=str(family), variant=str(variant),
        kind="external" if external else "run", cost=cost,
        train_checksums=train_summary.get("data_checksums"), started=start, likelihood_run=run_dir,
    )


def score(
    cfg: DictConfig,
    sample_set: Any,
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
    """Run the metric suite on ``sample_set`` against ``cfg.dataset``; write the record, its per-sample CSV
    and (for a model's samples) the scored samples beside it, compressed
    (:func:`bench.rescore.ship_samples`), so ``matgenbench rescore`` can score them again.

    With requested property values in ``sample_set`` or targets in ``evaluate.condition``, ``cond_hit_rate``
    is scored too (:func:`condition_targets`) and the variant names them, unless ``evaluate.variant`` is set.
    With ``likelihood_run`` (the trained run the samples came from) the test split's ``nll_test`` is added
    when the run's model declares a likelihood (:func:`bench.likelihood.likelihood_entry`). ``tables``, when
    given, receives the per-sample table (a DataFrame).
    """
    from bench.metrics import run_metrics

    start = time.perf_counter() if started is None else started
    condition, tag = condition_targets(cfg, sample_set)  # before loading data: a bad request fails at once
    if tag and not cfg.evaluate.get("variant"):
        variant = f"{variant}+{tag}"
    reference, checksums, skipped = build_reference(cfg)
    metric_cfg = OmegaConf.to_container(cfg.metrics, resolve=True) if cfg.get("metrics") else None
    if isinstance(metric_cfg, dict):
        _add_dataset_settings(metric_cfg, cfg)
    report = run_metrics(sample_set.structures, reference, metric_cfg, cache_dir=cache_dir(cfg),
                         progress=True, compositions=sample_set.compositions or None, condition=condition)
    # the decode thresholds that turned samples into failures (this project's samples; None from outside)
    report.settings["decode"] = sample_set.meta.get("decode")
    if likelihood_run is not None:
        from bench.likelihood import NLL_METRIC, likelihood_entry

        nll = likelihood_entry(cfg, likelihood_run, reference.test, reference.train)
        if nll is not None:
            report.metrics[NLL_METRIC] = nll
    cost = dict(cost or {})
    cost["evaluate_seconds"] = time.perf_counter() - start
    cost["evaluate_peak_memory_mb"] = peak_memory_mb()
    if train_checksums:
        checksums.update(train_checksums)
    split = split_info(cfg, num_samples=len(sample_set.structures))
    counts = {
        "n_requested": len(sample_set.structures),
        "n_decoded": sample_set.n_constructed,
        **report.counts,
        "n_train": len(reference.train),
        "n_reference": len(reference.test),
        "n_reference_rows_skipped": skipped,
        "samples_file": str(sample_set.source),
        "samples_sha256": samples_digest(sample_set),
    }
    record = ResultRecord(
        model=model,
        family=family,
        variant=variant,
        dataset=cfg.dataset.name,
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
    frame.insert(1, "build_failure", sample_set.reasons[: len(frame)])
    path = None
    if cfg.record.get("write", True):
        path = write_record(record, results_dir(cfg))
        atomic_write_text(path.with_suffix(".samples.csv"), frame.to_csv(index=False))
        if kind != "reference":  # references are the data splits or a seeded draw: re-derived, not shipped
            from bench.rescore import ship_samples

            ship_samples(path, sample_set)
    if tables is not None:
        tables.append(frame)
    return record, path
