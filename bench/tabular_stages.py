"""The tabular augmentation track's one stage: per fold, fit a generator on the real training rows, draw
synthetic rows, score them, and write one result record per (dataset, generator, seed).

A tabular experiment (``conf/experiment/steels_yield_augment.yaml``) reads a composition dataset as a table
(``dataset.track: tabular``, :mod:`bench.datasets.tabular`) under a pinned repeated K-fold
(``dataset.folds``); its ``tabular`` node pins the downstream regressor and the synthetic-to-real ratios
(:mod:`bench.metrics.tabular`). The generator is either a model of ``conf/model/`` whose config says
``track: tabular`` (a Lightning module trained per fold, ``matgenbench run``), or a reference row
(``matgenbench reference reference=smoter``; :mod:`bench.tabular_references`).

Per fold ``r<repeat>f<fold>``:

1. the fold's table (vocabulary fitted on the training rows, held-out rows it cannot write left out and
   counted);
2. the generator fitted on the training rows only, seeded by (run seed, repeat, fold);
3. ``max(ratios) * n_train`` synthetic rows drawn and projected onto the simplex
   (:func:`~bench.datasets.tabular.project_fractions`: negative fractions to 0, rows renormalised; rows with
   no positive fraction dropped and counted);
4. every metric of :func:`bench.metrics.tabular.score_fold`.

The record holds, per metric, the mean over folds as ``value``, the standard deviation across folds
(``sd``), every fold's value (``per_fold``) and, for fidelity and privacy, the same statistic of the real
training rows against the held-out rows (``reference_value``); a CSV of the per-fold values is written
beside it. The train, sample and evaluate stages alone do not apply to this track: a generator lives only
inside its fold.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bench.config import config_hash, record_config, results_dir
from bench.io_utils import atomic_write_text
from bench.records import ResultRecord, peak_memory_mb, provenance, write_record

__all__ = [
    "ModelGenerator",
    "not_a_stage",
    "regressor_factory",
    "run",
    "score_reference",
    "split_protocol",
]

log = logging.getLogger(__name__)

TABULAR = "tabular"
_DEFAULT_FOLDS = {"n_splits": 5, "n_repeats": 3, "seed": 0}
"""The pinned repeated K-fold: 5 folds, 3 repeats, fold seed 0."""
_REFERENCE_LEVELS = {"tab_w1": "w1", "tab_ks": "ks", "tab_corr_diff": "corr_diff",
                     "tab_dcr_median": "dcr_median", "tab_dcr_p5": "dcr_p5"}
"""Metric -> the key of its real-against-real level in a fold's details."""


# ------------------------------------------------------------------------------------------------ protocol


def _folds(ds: Any) -> dict[str, int]:
    node = OmegaConf.select(ds, "folds", default=None)
    given = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return {key: int(given.get(key, default)) for key, default in _DEFAULT_FOLDS.items()}


def split_protocol(ds: Any) -> dict[str, Any]:
    """The protocol of a tabular dataset node: the repeated K-fold (``dataset.folds``), the features, an
    optional cap on the folds scored (``dataset.limit_folds``, debug runs), its ``label`` and ``id``
    (``kfold5x3-s0_element_fractions``)."""
    folds = _folds(ds)
    features = str(OmegaConf.select(ds, "features", default="element_fractions"))
    limit = OmegaConf.select(ds, "limit_folds", default=None)
    ident = f"kfold{folds['n_splits']}x{folds['n_repeats']}-s{folds['seed']}_{features}"
    label = (f"repeated {folds['n_splits']}-fold x {folds['n_repeats']} (fold seed {folds['seed']}), "
             f"{features.replace('_', ' ')} + target")
    if limit is not None:
        ident += f"_lf{int(limit)}"
        label += f", first {int(limit)} folds only (not the pinned protocol)"
    official = folds == _DEFAULT_FOLDS and features == "element_fractions" and limit is None
    return {"track": TABULAR, "train": "training folds", "eval": "held-out fold", "val": None,
            "official": official, **{f"fold_{k}": v for k, v in folds.items()}, "features": features,
            "limit_folds": limit, "label": label, "id": ident}


def _split_info(cfg: DictConfig) -> dict[str, Any]:
    info = split_protocol(cfg.dataset)
    pinned = OmegaConf.select(cfg, "protocol", default=None)
    if pinned:  # a pinned experiment: never pooled with ad-hoc runs of the same folds
        info["label"] = f"{pinned}: {info['label']}"
        info["id"] = f"{pinned}__{info['id']}"
    info["protocol"] = pinned or None
    return info


def regressor_factory(cfg: DictConfig) -> Callable[[], Any]:
    """The fixed downstream regressor of ``cfg.tabular.regressor`` (a ``_partial_`` config): a callable that
    builds a fresh, unfitted one.

    Raises:
        ValueError: the config has no ``tabular.regressor`` (not a tabular experiment).
    """
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, "tabular.regressor", default=None)
    if node is None:
        raise ValueError("no tabular.regressor: run the tabular track through its experiment, e.g. "
                         "experiment=steels_yield_augment")
    built = instantiate(node)
    return built if callable(built) and not hasattr(built, "fit") else (lambda: instantiate(node))


def _ratios(cfg: DictConfig) -> list[float]:
    ratios = [float(r) for r in OmegaConf.select(cfg, "tabular.ratios", default=[0.5, 1, 2, 4, 8])]
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"tabular.ratios must be positive synthetic-to-real ratios, got {ratios}")
    return ratios


def _fold_seed(seed: int, repeat: int, fold: int) -> int:
    """The generator's seed in one fold: a function of the run seed and the fold only."""
    return int(np.random.SeedSequence([int(seed), int(repeat), int(fold)]).generate_state(1)[0])


def not_a_stage(*args: Any, **kwargs: Any) -> Any:
    """The steps of the train, sample and evaluate stages on the tabular track: they do not apply.

    Raises:
        bench.tracks.TrackMismatchError: always, with the command that does apply.
    """
    from bench.tracks import TrackMismatchError

    raise TrackMismatchError(
        "the tabular track fits its generator once per fold inside one stage: use `matgenbench run "
        "experiment=<dataset>_augment model=<generator>` (or `matgenbench reference ... reference=smoter`); "
        "train, sample and evaluate alone do not apply"
    )


# ----------------------------------------------------------------------------------------------- generators


class _ReferenceGenerator:
    """A reference row's generator behind the fold loop's interface: ``fit(rows, seed)``, ``sample(n)``."""

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        from bench.tabular_references import build_reference_generator

        self.generator = build_reference_generator(name, **settings)
        self.cost: dict[str, Any] = {}

    def fit(self, rows: np.ndarray, seed: int) -> None:
        self.generator.fit(rows)
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> np.ndarray:
        return self.generator.sample(n, self.rng)


class ModelGenerator:
    """A ``track: tabular`` model config behind the fold loop's interface: per fold its representation
    (mode-specific normalisation) is fitted on the training rows, a fresh module is trained with Lightning for
    ``trainer.max_steps`` optimiser steps on batches of ``train.batch_size`` rows drawn with replacement, and
    it samples from a generator seeded like the fold.

    Args:
        cfg: the run config.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.cost: dict[str, Any] = {}

    def fit(self, rows: np.ndarray, seed: int) -> None:
        import pytorch_lightning as pl
        import torch
        from hydra.utils import instantiate

        from bench.config import representation_node
        from bench.train import DictDataset, build_module

        cfg = self.cfg
        pl.seed_everything(seed % 2**32, verbose=False)
        self.representation = instantiate(representation_node(cfg), seed=seed, _convert_="all")
        self.representation.fit(rows)
        batch = self.representation.encode(rows)
        self.module = build_module(cfg.model, self.representation.sizes())
        self.module.fit_data(batch)
        steps = int(cfg.trainer.max_steps)
        size = int(cfg.train.batch_size)
        data = DictDataset(batch)
        sampler = torch.utils.data.RandomSampler(
            data, replacement=True, num_samples=size * steps, generator=torch.Generator().manual_seed(seed)
        )
        loader = torch.utils.data.DataLoader(data, batch_size=size, sampler=sampler, drop_last=True)
        trainer = pl.Trainer(
            accelerator=str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu")), devices=1,
            max_steps=steps, max_epochs=-1, max_time=OmegaConf.select(cfg, "trainer.max_time", default=None),
            precision=OmegaConf.select(cfg, "trainer.precision", default="32-true"), logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0,
        )
        start = time.perf_counter()
        trainer.fit(self.module, loader)
        loss = trainer.callback_metrics.get("train/loss")
        self.cost = {"steps": int(trainer.global_step), "train_seconds": time.perf_counter() - start,
                     "final_loss": None if loss is None else float(loss),
                     "parameters": int(self.module.num_parameters()),
                     "stopped_by_time": int(trainer.global_step) < steps}
        self.sample_seed = seed + 1

    def sample(self, n: int) -> np.ndarray:
        import torch

        generator = torch.Generator().manual_seed(self.sample_seed % 2**63)
        size = int(OmegaConf.select(self.cfg, "sample.batch_size", default=500))
        parts = []
        for start in range(0, n, size):
            batch = self.module.sample(min(size, n - start), generator=generator)
            parts.append(self.representation.decode({k: v.cpu() for k, v in batch.items()}))
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.representation.width))


# --------------------------------------------------------------------------------------------------- stage


def run(cfg: DictConfig) -> tuple[ResultRecord, Path | None]:
    """Score the model of ``cfg.model`` (``track: tabular``) under the tabular protocol; write its record."""
    from bench.rundirs import record_variant

    variant = record_variant(cfg, str(cfg.model.variant))
    return _evaluate(cfg, ModelGenerator(cfg), model=str(cfg.model.name), family=str(cfg.model.family),
                     variant=variant, kind="run")


def score_reference(cfg: DictConfig) -> tuple[ResultRecord, Path | None]:
    """Score the reference row ``cfg.reference`` (``real_only``, ``copy``, ``smoter``, ``gaussian_copula``)
    under the tabular protocol; write its record.

    Raises:
        ValueError: an unknown reference row (the message lists them).
    """
    from bench.tabular_references import REFERENCE_GENERATORS

    kind = str(cfg.get("reference"))
    if kind not in REFERENCE_GENERATORS:
        known = ", ".join(REFERENCE_GENERATORS)
        raise ValueError(f"reference={kind}: the tabular reference rows are {known} (e.g. reference=smoter)")
    node = OmegaConf.select(cfg, f"tabular.references.{kind}", default=None)
    settings = dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}
    _, description = REFERENCE_GENERATORS[kind]
    return _evaluate(cfg, _ReferenceGenerator(kind, settings), model=kind, family="reference",
                     variant=description, kind="reference", real_only=kind == "real_only")


def _evaluate(
    cfg: DictConfig, generator: Any, *, model: str, family: str, variant: str, kind: str,
    real_only: bool = False,
) -> tuple[ResultRecord, Path | None]:
    from bench.config import as_path, cache_dir
    from bench.datasets.tabular import (
        CompositionTable,
        fold_view,
        folds_checksum,
        project_fractions,
        repeated_kfold,
    )
    from bench.metrics.tabular import score_fold

    started = time.perf_counter()
    ds = cfg.dataset
    data_dir = as_path(OmegaConf.select(cfg, "paths.data_dir", default=None))
    table = CompositionTable.load(str(ds.name), data_dir=data_dir, cache_dir=cache_dir(cfg),
                                  download=bool(OmegaConf.select(cfg, "paths.download", default=True)))
    plan = _folds(ds)
    folds = repeated_kfold(len(table), plan["n_splits"], plan["n_repeats"], plan["seed"])
    checksum = folds_checksum(folds, table.sha256)
    limit = OmegaConf.select(ds, "limit_folds", default=None)
    scored = folds if limit is None else folds[: int(limit)]
    features = str(OmegaConf.select(ds, "features", default="element_fractions"))
    factory = regressor_factory(cfg)
    ratios = _ratios(cfg)
    per_fold: list[dict[str, Any]] = []
    column_values: dict[str, dict[str, list[float]]] = {"w1": {}, "ks": {}}
    costs = {"train_seconds": 0.0, "sample_seconds": 0.0, "score_seconds": 0.0}
    fold_costs: list[dict[str, Any]] = []
    counts = {"n_rows": len(table), "n_folds": len(scored), "n_test_left_out": 0, "n_synthetic_requested": 0,
              "n_synthetic_dropped": 0}
    simplex: list[dict[str, float]] = []
    for i, fold in enumerate(scored):
        view = fold_view(table, fold, features)
        seed = _fold_seed(int(cfg.seed), fold.repeat, fold.fold)
        t0 = time.perf_counter()
        generator.fit(view.train, seed)
        t1 = time.perf_counter()
        n_pool = int(math.ceil(max(ratios) * len(view.train)))
        synthetic = None
        if not real_only:
            raw = generator.sample(n_pool)
            synthetic, keep, stats = project_fractions(raw, view.n_elements)
            simplex.append(stats)
            counts["n_synthetic_requested"] += n_pool
            counts["n_synthetic_dropped"] += int((~keep).sum())
        t2 = time.perf_counter()
        values, details = score_fold(factory, view.train, view.test, synthetic, ratios)
        t3 = time.perf_counter()
        counts["n_test_left_out"] += view.n_test_left_out
        for key in column_values:
            for column, value in zip(view.columns, details.get(f"{key}_columns", []), strict=False):
                column_values[key].setdefault(column, []).append(float(value))
        costs["train_seconds"] += t1 - t0
        costs["sample_seconds"] += t2 - t1
        costs["score_seconds"] += t3 - t2
        fold_costs.append({"fold": fold.name, "fit_seconds": t1 - t0, **getattr(generator, "cost", {})})
        per_fold.append({"fold": fold.name, "n_train": len(view.train), "n_test": len(view.test),
                         "n_test_left_out": view.n_test_left_out, "values": values,
                         "reference": details["reference"]})
        log.info("%s on %s fold %s (%d/%d): TSTR MAE %s, gain at ratio 1 %s", model, ds.name, fold.name,
                 i + 1, len(scored), _fmt(values.get("tab_tstr_mae")), _fmt(values.get("tab_aug_gain_r1")))
    metrics = _aggregate(per_fold, column_values, real_only)
    record = ResultRecord(
        model=model, family=family, variant=variant, dataset=str(ds.name),
        split_protocol=_split_info(cfg)["label"], split=_split_info(cfg), seed=int(cfg.seed),
        data_checksums={"file": {"name": f"{table.name}.csv", "sha256": table.sha256, "pinned": table.pinned},
                        "folds": {"checksum": checksum, **plan, "n_scored": len(scored)},
                        "dataset": table.summary},
        counts={**counts, "n_train_per_fold": [f["n_train"] for f in per_fold],
                "n_test_per_fold": [f["n_test"] for f in per_fold]},
        metrics=metrics,
        metric_settings={
            "regressor": OmegaConf.to_container(cfg.tabular.regressor, resolve=True),
            "ratios": ratios, "tstr_rows": "n_train (the first n_train rows of the synthetic pool)",
            "synthetic_pool": "ceil(max(ratios) * n_train) rows per fold, projected onto the simplex",
            "scaling": "every column standardised by the training rows' mean and standard deviation",
            "simplex_before_projection": _mean_stats(simplex),
            "target": table.target_description,
        },
        cost={**costs, "evaluate_seconds": time.perf_counter() - started,
              "evaluate_peak_memory_mb": peak_memory_mb(), "folds": fold_costs,
              "parameters": next((c.get("parameters") for c in fold_costs if c.get("parameters")), None)},
        provenance=provenance(), config=record_config(cfg), config_hash=config_hash(cfg), kind=kind,
    )
    path = None
    if cfg.record.get("write", True):
        path = write_record(record, results_dir(cfg))
        atomic_write_text(path.with_suffix(".folds.csv"), _folds_csv(per_fold))
    return record, path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _aggregate(per_fold: list[dict[str, Any]], columns: dict[str, dict[str, list[float]]],
               real_only: bool) -> dict[str, dict[str, Any]]:
    """Per metric: the mean over folds, the standard deviation across folds, every fold's value; the
    real-against-real level beside the fidelity and privacy metrics."""
    from bench.metrics.tabular import VERSION, metric_info

    names = list(per_fold[0]["values"]) if per_fold else []
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        info = metric_info(name)
        values = [f["values"][name] for f in per_fold]
        present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        entry: dict[str, Any] = {
            "value": float(np.mean(present)) if present else None,
            "sd": float(np.std(present, ddof=1)) if len(present) > 1 else None,
            "n_folds": len(present), "per_fold": values, "direction": info.direction,
            "description": info.description, "version": VERSION,
        }
        if name in _REFERENCE_LEVELS:
            levels = [f["reference"][_REFERENCE_LEVELS[name]] for f in per_fold]
            entry["reference_value"] = float(np.mean(levels))
            entry["reference"] = "the real training rows against the held-out rows (mean over folds)"
        if not present:
            entry["status"] = "not_applicable"
            entry["reason"] = ("not applicable: the real-only row draws no synthetic rows" if real_only
                               else "no fold gave a value")
        key = {"tab_w1": "w1", "tab_ks": "ks"}.get(name)
        if key:
            entry["columns"] = {c: float(np.mean(v)) for c, v in columns[key].items()}
        out[name] = entry
    return out


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float] | None:
    if not stats:
        return None
    return {key: float(np.mean([s[key] for s in stats])) for key in stats[0]}


def _folds_csv(per_fold: list[dict[str, Any]]) -> str:
    import pandas as pd

    rows = [{"fold": f["fold"], "n_train": f["n_train"], "n_test": f["n_test"],
             "n_test_left_out": f["n_test_left_out"], **f["values"],
             **{f"reference_{k}": v for k, v in f["reference"].items()}} for f in per_fold]
    return pd.DataFrame(rows).to_csv(index=False)
