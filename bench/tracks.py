"""The benchmark's tracks, crystals, compositions and tables, and the stage code each one uses.

A dataset config with ``track: composition`` is a composition dataset (``conf/dataset/mp_e_form.yaml``:
formulas, a seeded split, the composition metrics); one without a ``track`` key is a crystal dataset. A model
config says the same with its own ``track`` key (absent: crystal). The train, sample and evaluate stages run
one pipeline for both, and look up the few steps that differ in :data:`TRACKS`, a table keyed by track: how
the training data are loaded and encoded, how samples are written and read, how they are scored into a result
record, how a reference row is drawn, and how the split protocol is named. The entries are import paths, so
this module imports neither torch nor the data code.

The tabular track (``track: tabular``, set on a composition dataset by a tabular experiment such as
``experiment=steels_yield_augment``) reads the dataset as a table under a repeated K-fold and fits its
generator once per fold, so it runs as one stage (:attr:`Track.run`, :mod:`bench.tabular_stages`); its
train, sample and evaluate steps refuse in one line.

A model of one track on a dataset of the other is refused in one line (:func:`check_track`), before any
data is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "COMPOSITION",
    "CRYSTAL",
    "TABULAR",
    "TRACKS",
    "Track",
    "TrackMismatchError",
    "TrainingData",
    "check_track",
    "dataset_track",
    "model_track",
    "track_of_dataset",
]

CRYSTAL = "crystal"
COMPOSITION = "composition"
TABULAR = "tabular"


class TrackMismatchError(ValueError):
    """A model of one track asked to run on a dataset of the other (or a ``track`` value that is no track)."""


@dataclass
class TrainingData:
    """What the train stage trains on, as a track's ``training_data`` step returns it.

    Attributes:
        train: the encoded training batch (the representation's fields, equally long tensors).
        val: the encoded validation batch for ``val/loss``, or None without a validation split.
        n_train: training items encoded.
        n_skipped: training items left out (unreadable rows, or items the representation cannot encode).
        checksums: checksums of the data read, by split name (the record's ``data_checksums``).
        skipped_reasons: why items were left out, reason -> count (empty when none were).
    """

    train: dict[str, Any]
    val: dict[str, Any] | None
    n_train: int
    n_skipped: int
    checksums: dict[str, Any]
    skipped_reasons: dict[str, int] = field(default_factory=dict)


class _Step:
    """A stage step named by ``"module:function"``, imported when first called."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<step {self.path}>"


@dataclass(frozen=True)
class Track:
    """The steps of the pipeline that depend on what a sample is.

    Attributes:
        name: ``crystal`` or ``composition``.
        item: what one generated sample is, in words (``crystal``, ``composition``): progress bars, logs and
            the unit of ``nll_test`` (nats per item).
        examples: a dataset and a model of the track, for messages (``dataset=perov_5``, ``model=vae``).
        training_data: ``(cfg, representation, fit=True, with_val=True) -> TrainingData``: load the training
            split of ``cfg.dataset``, fit the representation on it when ``fit``, encode it (and the
            validation split when ``with_val``).
        write_samples: ``(path, items, meta=None, conditions=None) -> Path``: the samples file of the sample
            stage (decoded items and failures with their reasons, one row per requested item).
        read_samples: ``(path) -> sample set``: read a samples file (this project's or another's).
        score: ``(cfg, sample_set, *, model, family, variant, kind, cost, train_checksums, started,
            likelihood_run, tables) -> (record, path)``: the metrics and the result record.
        reference: ``(cfg) -> (record, path)``: score the reference row ``cfg.reference``.
        split_protocol: ``(dataset node) -> dict``: the split protocol's ``label`` and ``id``, ``official``
            and what else the record's ``split`` says about it.
        run: ``(cfg) -> (record, path)``: the whole run in one stage, for a track whose generator is fitted
            inside its protocol (the tabular track's per fold); None: ``run`` is train, sample, evaluate.
    """

    name: str
    item: str
    examples: tuple[str, str]
    training_data: Callable[..., TrainingData]
    write_samples: Callable[..., Any]
    read_samples: Callable[..., Any]
    score: Callable[..., Any]
    reference: Callable[..., Any]
    split_protocol: Callable[..., dict[str, Any]]
    run: Callable[..., Any] | None = None


TRACKS: dict[str, Track] = {
    CRYSTAL: Track(
        name=CRYSTAL,
        item="crystal",
        examples=("dataset=perov_5", "model=vae"),
        training_data=_Step("bench.train:crystal_training_data"),
        write_samples=_Step("bench.structures_io:write_samples_csv"),
        read_samples=_Step("bench.structures_io:read_samples"),
        score=_Step("bench.evaluate:score"),
        reference=_Step("bench.references:crystal_reference"),
        split_protocol=_Step("bench.runtime:crystal_split_protocol"),
    ),
    COMPOSITION: Track(
        name=COMPOSITION,
        item="composition",
        examples=("dataset=mp_e_form", "model=comp_marginal"),
        training_data=_Step("bench.composition_stages:training_data"),
        write_samples=_Step("bench.composition_stages:write_formula_samples"),
        read_samples=_Step("bench.composition_stages:read_formula_samples"),
        score=_Step("bench.composition_stages:score"),
        reference=_Step("bench.composition_stages:score_reference"),
        split_protocol=_Step("bench.composition_stages:split_protocol"),
    ),
    TABULAR: Track(
        name=TABULAR,
        item="table row",
        examples=("experiment=steels_yield_augment", "model=ctgan"),
        training_data=_Step("bench.tabular_stages:not_a_stage"),
        write_samples=_Step("bench.tabular_stages:not_a_stage"),
        read_samples=_Step("bench.tabular_stages:not_a_stage"),
        score=_Step("bench.tabular_stages:not_a_stage"),
        reference=_Step("bench.tabular_stages:score_reference"),
        split_protocol=_Step("bench.tabular_stages:split_protocol"),
        run=_Step("bench.tabular_stages:run"),
    ),
}
"""Track name -> its steps."""


def _track_value(cfg: DictConfig, key: str, what: str) -> str:
    value = OmegaConf.select(cfg, key, default=None)
    value = CRYSTAL if value in (None, "") else str(value)
    if value not in TRACKS:
        raise TrackMismatchError(
            f"{what}.track={value}: no such track; the tracks are {', '.join(TRACKS)} (leave the key out for "
            f"{CRYSTAL})"
        )
    return value


def dataset_track(cfg: DictConfig) -> str:
    """The track of ``cfg.dataset``: its ``track`` key, ``crystal`` when absent.

    Raises:
        TrackMismatchError: a ``track`` value that is no track.
    """
    return _track_value(cfg, "dataset.track", "dataset")


def model_track(cfg: DictConfig) -> str:
    """The track of ``cfg.model``: its ``track`` key, ``crystal`` when absent.

    Raises:
        TrackMismatchError: a ``track`` value that is no track.
    """
    return _track_value(cfg, "model.track", "model")


def track_of_dataset(cfg: DictConfig) -> Track:
    """The :class:`Track` of ``cfg.dataset`` alone (scoring samples from outside or a reference row: no model
    is involved)."""
    return TRACKS[dataset_track(cfg)]


def _describe(track: str, what: str, name: str) -> str:
    if track == CRYSTAL:
        return f"{what} {name} is a crystal {what} (its config has no track key)"
    return f"{what} {name} is a {track} {what} ({what}.track: {track})"


def check_track(cfg: DictConfig) -> Track:
    """The :class:`Track` of a run, after checking that its model and dataset belong to the same one.

    Raises:
        TrackMismatchError: one line naming the model, the dataset, their tracks and the fix.
    """
    model, dataset = model_track(cfg), dataset_track(cfg)
    if model != dataset:
        model_name = OmegaConf.select(cfg, "model.name", default="?")
        dataset_name = OmegaConf.select(cfg, "dataset.name", default="?")
        same_dataset, _ = TRACKS[model].examples
        _, same_model = TRACKS[dataset].examples
        if dataset == CRYSTAL:
            model_fix = f"a crystal model (a model config without track, e.g. {same_model})"
        else:
            model_fix = f"a {dataset} model (a model config with track: {dataset}, e.g. {same_model})"
        raise TrackMismatchError(
            f"{_describe(model, 'model', model_name)} and {_describe(dataset, 'dataset', dataset_name)}: "
            f"choose a {model} dataset (e.g. {same_dataset}) for it, or {model_fix}"
        )
    return TRACKS[model]
