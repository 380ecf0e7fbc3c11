"""The train stage: fit the representation (``representation``, by default the crystal codec) on the training
split, train the model with Lightning, save everything to the run directory (checkpoint, the fitted
representation with its class, resolved config, a training summary)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.config import config_hash, resolved, training_hash
from bench.io_utils import atomic_write_json, atomic_write_text
from bench.records import peak_memory_mb
from bench.rundirs import bind_run_dir, check_run, sampler_override, trained_run_files
from bench.runtime import env_rank, load_dataset_split, seed_everything, set_threads
from bench.tracks import TrainingData

__all__ = [
    "train", "build_module", "crystal_training_data", "load_trained", "model_callbacks", "stage_plan",
    "DictDataset",
]

log = logging.getLogger(__name__)


class DictDataset:
    """A map-style dataset over a dict of equally long tensors (the representation's batch); items are row
    dicts."""

    def __init__(self, batch: dict[str, Any]) -> None:
        lengths = {k: len(v) for k, v in batch.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"batch fields have different lengths: {lengths}")
        self.batch = batch
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.batch.items()}


def build_module(model_cfg: DictConfig, sizes: Mapping[str, int]) -> Any:
    """Instantiate ``model.module`` with the data-dependent sizes of the fitted representation (its
    ``sizes()``: ``num_types`` and ``max_atoms`` for the crystal codec, and ``condition_dim`` with a
    condition), and hand it the learning-rate schedule of ``model.scheduler`` (``conf/scheduler/``) if any.

    Raises:
        bench.conditioning.ConditionRequestError: the representation has a condition and the model's class
            does not declare ``conditional = True`` (an unconditional model would silently ignore it), or the
            class is conditional and the representation has no condition (:func:`check_conditional`).
    """
    from hydra.utils import instantiate

    sizes = dict(sizes)
    check_conditional(model_cfg, bool(sizes.get("condition_dim")))
    module = instantiate(model_cfg.module, **sizes)
    if model_cfg.get("scheduler") is not None:
        module.set_scheduler(instantiate(model_cfg.scheduler))
    return module


def check_conditional(model_cfg: DictConfig, has_condition: bool) -> None:
    """Refuse a condition for a model whose class is unconditional, and a conditional model without one.

    Raises:
        bench.conditioning.ConditionRequestError: one line naming the model and the fix.
    """
    from hydra.utils import get_class

    from bench.conditioning import ConditionRequestError

    target = str(model_cfg.module._target_)
    conditional = bool(getattr(get_class(target), "conditional", False))
    label = f"model {model_cfg.get('name', target)} ({target.rsplit('.', 1)[-1]})"
    if has_condition and not conditional:
        raise ConditionRequestError(
            f"{label} is unconditional, so it would ignore the condition of representation.condition or "
            "model.condition: leave both empty, or choose a model whose class sets conditional = True"
        )
    if conditional and not has_condition:
        raise ConditionRequestError(
            f"{label} is conditional and no condition column is set: name its property in its config "
            "(model.condition: ['${dataset.property}']) or with representation.condition=[<column>]"
        )


def _encode_split(representation: Any, split: Any, fit: bool = False) -> dict[str, Any]:
    """Encode a loaded split with its property columns (fitting the representation first if ``fit``); a
    condition column the split lacks is reported with the dataset and split names."""
    from bench.datasets.representation import ConditionError

    try:
        if fit:
            representation.fit(split.structures, split.properties)
        return representation.encode(split.structures, split.properties)
    except ConditionError as err:
        raise ConditionError(f"dataset {split.name}, split {split.split}: {err}") from err


def crystal_training_data(
    cfg: DictConfig, representation: Any, fit: bool = True, with_val: bool = True
) -> TrainingData:
    """The crystal track's training data: the training split of ``cfg.dataset`` (``limit_train`` rows at
    most), the representation fitted on it when ``fit``, encoded; with ``with_val`` and a
    ``dataset.val_split``, the validation structures the representation can encode (the others are counted
    in a warning and left out of ``val/loss``)."""
    train_split = load_dataset_split(cfg, cfg.dataset.train_split, limit=cfg.dataset.get("limit_train"))
    log.info("training on %s/%s: %d structures", cfg.dataset.name, cfg.dataset.train_split,
             len(train_split.structures))
    train_batch = _encode_split(representation, train_split, fit=fit)
    val_batch = None
    val_name = cfg.dataset.get("val_split") if with_val else None
    if val_name:
        val_split = load_dataset_split(cfg, val_name, limit=cfg.dataset.get("limit_eval"))
        usable = [i for i, s in enumerate(val_split.structures) if representation.can_encode(s)]
        if len(usable) < len(val_split.structures):
            log.warning(
                "validation split %s: %d of %d structures left out of val/loss (the representation cannot "
                "encode them: e.g. elements unseen in training or more than max_atoms sites)", val_name,
                len(val_split.structures) - len(usable), len(val_split.structures),
            )
        if usable:
            val_split = dataclasses.replace(
                val_split, structures=[val_split.structures[i] for i in usable],
                properties={k: v[usable] for k, v in val_split.properties.items()},
            )
            val_batch = _encode_split(representation, val_split)
    return TrainingData(
        train=train_batch, val=val_batch, n_train=len(train_split.structures),
        n_skipped=train_split.n_skipped, checksums={cfg.dataset.train_split: train_split.checksums},
    )


class _LossHistory:
    """Collects ``train/loss`` per optimiser step so the record can show that training lowered the loss."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # built lazily: Lightning is imported only to train
        import pytorch_lightning as pl

        class LossHistory(pl.Callback):
            def __init__(self) -> None:
                self.losses: list[float] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                value = trainer.callback_metrics.get("train/loss")
                if value is not None:
                    self.losses.append(float(value))

        return LossHistory()


def _loader(dataset: DictDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=shuffle and len(dataset) > batch_size,
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset.train_split`` and return the training summary.

    Writes into the run directory (:func:`bench.rundirs.run_dir`, which ``cfg.paths.run_dir`` is set to):
    ``checkpoints/last.ckpt``, ``codec.json`` (the fitted representation and its class), ``config.yaml``
    (resolved) and ``train_summary.json`` (with the training hash). With several processes (``trainer=ddp``)
    every process trains, the rank-zero process alone writes files, and the summary says ``global_zero`` so
    callers can tell them apart.

    The training data come from the dataset's track (:mod:`bench.tracks`): the crystal split files, or on
    the composition track the formulas of the seeded split that the representation can encode (the others
    are counted in ``n_train_skipped``, with their reasons in ``train_skipped_reasons``).

    Raises:
        bench.tracks.TrackMismatchError: the model and the dataset belong to different tracks.
        bench.models.NonFiniteLossError: the loss became NaN or infinite (the message names the step).
        bench.datasets.ConditionError: a condition column (``representation.condition``, else
            ``model.condition``) is missing or has missing values (the message names the dataset, the split
            and the columns it has).
        bench.conditioning.ConditionRequestError: a condition for a model that is unconditional, none for a
            conditional one (:func:`check_conditional`), or a ``model.condition`` that names no column.
    """
    from bench.conditioning import condition_columns
    from bench.config import representation_node
    from bench.tracks import check_track

    track = check_track(cfg)  # a model of the other track is one line, before any data is read
    condition = condition_columns(cfg)  # before any hash: a bad model.condition is one line, no traceback
    set_threads(cfg.threads)
    import pytorch_lightning as pl
    import torch

    from bench.datasets.representation import build_representation, representation_state

    set_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    run_dir = bind_run_dir(cfg)  # <output_dir>/runs/<run_name>__<training hash[:8]> unless paths.run_dir
    if cfg.train.get("ckpt_path") == "last" and trained_run_files(run_dir)[0].is_file():
        check_run(run_dir, cfg)  # resume only a checkpoint of this very training
    run_dir.mkdir(parents=True, exist_ok=True)

    # the condition a conditional model's config names (model.condition) joins the representation it is
    # built with; the config itself is left as composed, so every stage computes the same hashes from it
    representation = build_representation({"representation": {**representation_node(cfg),
                                                               "condition": list(condition)}})
    data = track.training_data(cfg, representation)  # loaded, the representation fitted, encoded
    train_loader = _loader(
        DictDataset(data.train), int(cfg.train.batch_size), True, int(cfg.seed), int(cfg.train.num_workers),
    )
    val_loader = None
    if data.val is not None:
        val_loader = _loader(DictDataset(data.val), int(cfg.train.batch_size), False, 0, 0)

    module = build_module(cfg.model, representation.sizes())
    module.fit_data(train_loader.dataset.batch)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("%s: %s parameters", cfg.model.name, f"{n_params:,}")

    if env_rank() == 0:  # the other data-parallel processes fit the same representation; one writes it
        # codec.json: the fitted state with its class path, so load_trained rebuilds this representation
        atomic_write_json(run_dir / "codec.json", representation_state(representation))
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved(cfg))))

    ckpt_dir = run_dir / "checkpoints"
    loaders = (train_loader, val_loader)
    plan = stage_plan(cfg.model, int(cfg.trainer.get("max_steps") or -1))
    if not plan:
        trainer, losses, train_seconds, ckpt_path = _fit(cfg, module, loaders, run_dir, ckpt_dir,
                                                          cfg.train.get("ckpt_path"))
        stages = None
    else:
        trainer, losses, train_seconds, ckpt_path, stages = _fit_stages(cfg, module, loaders, run_dir,
                                                                        ckpt_dir, plan)
    # The full state (optimiser, loops) so that train.ckpt_path=last can resume; `weights_only` here says what
    # is saved, not how it is loaded. A collective under DDP: every process calls it, rank zero writes.
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)

    window = max(1, min(20, len(losses) // 5))
    max_steps = int(cfg.trainer.get("max_steps") or -1)
    steps = int(trainer.global_step) if stages is None else sum(st["steps"] for st in stages)
    summary = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "train_split": cfg.dataset.train_split,
        "n_train": data.n_train,
        "n_train_skipped": data.n_skipped,
        "data_checksums": data.checksums,
        "steps": steps,
        "epochs": int(trainer.current_epoch),
        "max_steps": max_steps,
        "max_time": cfg.trainer.get("max_time"),
        "stopped_by_time": bool(max_steps > 0 and steps < max_steps),
        "train_seconds": train_seconds,
        "loss_first": float(sum(losses[:window]) / window) if losses else math.nan,
        "loss_last": float(sum(losses[-window:]) / window) if losses else math.nan,
        "parameters": int(n_params),
        "peak_memory_mb": peak_memory_mb(),
        "gpu_peak_memory_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        ),
        "config_hash": config_hash(cfg),
        "training_hash": training_hash(cfg),  # what sample and evaluate check the run against
        "checkpoint": str(ckpt_dir / "last.ckpt"),
        "resumed_from": ckpt_path,
        "world_size": int(trainer.world_size),
        "global_zero": bool(trainer.is_global_zero),
    }
    if data.skipped_reasons:  # why training items were left out, reason -> count
        summary["train_skipped_reasons"] = data.skipped_reasons
    if stages is not None:  # each stage's own cost and loss; the loss above is the last stage's
        summary["stages"] = stages
    if not trainer.is_global_zero:
        return summary
    atomic_write_json(run_dir / "train_summary.json", summary)
    log.info(
        "trained %d steps in %.1f s; train/loss %.4g -> %.4g",
        summary["steps"], train_seconds, summary["loss_first"], summary["loss_last"],
    )
    return summary


def stage_plan(model_cfg: DictConfig, max_steps: int) -> list[dict[str, Any]]:
    """The training stages of a model config (``model.stages``: a list of ``{name, share}``), each with its
    step budget: ``share`` of ``max_steps``, rounded, the last stage taking what is left so that the stages
    together spend exactly the protocol's budget. Empty for a model that trains in one stage.

    Raises:
        ValueError: one line naming the problem: no stage names, shares that are not positive or do not sum
            to 1, a stage named twice, or a step budget that is not fixed (``trainer.max_steps``).
    """
    nodes = model_cfg.get("stages") or []
    if not nodes:
        return []
    names = [str(node.get("name") or "") for node in nodes]
    shares = [float(node.get("share", 0.0)) for node in nodes]
    name = model_cfg.get("name", "?")
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"model {name}: every entry of model.stages needs its own name, got {names}")
    if min(shares) <= 0 or abs(sum(shares) - 1.0) > 1e-6:
        raise ValueError(
            f"model {name}: the shares of model.stages must be positive and sum to 1, got {shares}"
        )
    if max_steps <= 0:
        raise ValueError(
            f"model {name} trains in stages ({', '.join(names)}), which split trainer.max_steps: set "
            f"trainer.max_steps to a positive number (got {max_steps})"
        )
    plan, used = [], 0
    for i, (stage, share) in enumerate(zip(names, shares, strict=True)):
        steps = max_steps - used if i == len(names) - 1 else max(1, round(share * max_steps))
        plan.append({"name": stage, "share": share, "max_steps": steps})
        used += steps
    return plan


def _fit(
    cfg: DictConfig, module: Any, loaders: tuple[Any, Any], run_dir: Path, ckpt_dir: Path,
    ckpt_path: str | None, max_steps: int | None = None, max_seconds: float | None = None,
) -> tuple[Any, list[float], float, str | None]:
    """One Lightning fit of ``module`` with the trainer of ``cfg.trainer`` (``max_steps`` and a wall-clock
    limit of ``max_seconds`` replace the config's when given), checkpointing into ``ckpt_dir``; resumes from
    its ``last.ckpt`` when ``ckpt_path`` is ``"last"``. Returns the trainer, the loss per step, the seconds
    and the checkpoint it resumed from."""
    import datetime

    import pytorch_lightning as pl

    history = _LossHistory()
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="{step}", save_last=True, save_top_k=1,
        every_n_train_steps=int(cfg.train.get("ckpt_every_n_steps", 200)),
        # a resumed training refreshes last.ckpt itself: with Lightning's default it would write last-v1.ckpt
        # beside the old one, and a second resume would start again from the first kill
        enable_version_counter=False,
    )
    logger = _build_logger(cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs = {k: v for k, v in trainer_cfg.items() if v is not None}
    trainer_kwargs.pop("_target_", None)
    if max_steps is not None:
        trainer_kwargs["max_steps"] = int(max_steps)
    if max_seconds is not None:
        trainer_kwargs["max_time"] = datetime.timedelta(seconds=max(1.0, float(max_seconds)))
    _check_strategy(trainer_kwargs)
    train_loader, val_loader = loaders
    if val_loader is None:
        trainer_kwargs.pop("check_val_every_n_epoch", None)
        trainer_kwargs["limit_val_batches"] = 0
    trainer = pl.Trainer(
        **trainer_kwargs, logger=logger, callbacks=[history, checkpoint, *model_callbacks(cfg.model)],
        default_root_dir=str(run_dir),
    )

    if ckpt_path == "last":
        last = ckpt_dir / "last.ckpt"
        ckpt_path = str(last) if last.exists() else None
        if ckpt_path is None:
            log.warning("train.ckpt_path=last but %s does not exist: training from scratch", last)
        else:
            log.info("resuming from %s", last)
    start = time.perf_counter()
    try:
        # Resuming goes through Lightning's own loader (model, optimiser, loop and callback state). Lightning
        # 2.6 hands weights_only to torch.load (None means torch's default, True since torch 2.6); asking for
        # True keeps the guarantee whatever the default: our checkpoints hold only tensors and plain values
        # (GenerativeModule._save_plain_hparams), so no code runs from a checkpoint file.
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path,
                    weights_only=True)
    except Exception as err:
        from bench.models.base import NonFiniteLossError

        if isinstance(err, NonFiniteLossError):
            log.error("training stopped: %s", err)
        raise
    seconds = time.perf_counter() - start
    if ckpt_path is not None:  # resumed: the wall-clock cap's timer carries the earlier attempts' time too
        timer = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)
        if timer is not None:
            seconds = max(seconds, float(timer.time_elapsed("train")))
    return trainer, history.losses, seconds, ckpt_path


def _fit_stages(
    cfg: DictConfig, module: Any, loaders: tuple[Any, Any], run_dir: Path, ckpt_dir: Path,
    plan: list[dict[str, Any]],
) -> tuple[Any, list[float], float, str | None, list[dict[str, Any]]]:
    """Train the stages of ``plan`` in order (see :func:`stage_plan`): :meth:`set_stage`, then a fit of the
    stage's step budget into ``checkpoints/stage-<i>-<name>/``. The protocol's wall-clock cap
    (``trainer.max_time``) holds for all stages together: each gets what the earlier ones left.

    A finished stage is written to ``stages.json`` with its weights (``checkpoints/stage-<i>-<name>.ckpt``);
    with ``train.ckpt_path=last`` a killed training skips the finished stages (their weights are loaded) and
    resumes the unfinished one from its own ``last.ckpt``. Returns the last stage's trainer, its loss per
    step, the seconds of all stages, the checkpoint resumed from, and one summary per stage.
    """
    import torch

    progress_file = run_dir / "stages.json"
    resume = cfg.train.get("ckpt_path") == "last"
    done: list[dict[str, Any]] = []
    if resume and progress_file.exists():
        done = json.loads(progress_file.read_text())
    if [d["name"] for d in done] != [p["name"] for p in plan[: len(done)]]:
        raise ValueError(
            f"{progress_file} records the stages {[d['name'] for d in done]}, which do not start the plan "
            f"{[p['name'] for p in plan]}: train without train.ckpt_path=last"
        )
    if done:
        weights = torch.load(done[-1]["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(weights)
        log.info("stages %s already trained: resuming at stage %d", [d["name"] for d in done], len(done) + 1)
    cap = _seconds(cfg.trainer.get("max_time"))
    trainer, losses, resumed_from = None, [], None
    for i, stage in enumerate(plan):
        if i < len(done):
            continue
        spent = sum(d["seconds"] for d in done)
        left = None if cap is None else cap - spent
        module.set_stage(stage["name"])
        stage_dir = ckpt_dir / f"stage-{i}-{stage['name']}"
        log.info("stage %d/%d: %s, %d steps", i + 1, len(plan), stage["name"], stage["max_steps"])
        if left is not None and left <= 0:  # the cap is spent: the stage does not run, and says so
            done.append({**stage, "steps": 0, "seconds": 0.0, "loss_first": math.nan, "loss_last": math.nan,
                         "stopped_by_time": True, "checkpoint": None})
            continue
        trainer, losses, seconds, resumed = _fit(
            cfg, module, loaders, run_dir, stage_dir, "last" if resume else None, stage["max_steps"], left
        )
        resumed_from = resumed_from or resumed
        window = max(1, min(20, len(losses) // 5))
        stage_ckpt = ckpt_dir / f"stage-{i}-{stage['name']}.ckpt"
        trainer.save_checkpoint(stage_ckpt, weights_only=True)
        done.append({
            **stage,
            "steps": int(trainer.global_step),
            "seconds": seconds,
            "loss_first": float(sum(losses[:window]) / window) if losses else math.nan,
            "loss_last": float(sum(losses[-window:]) / window) if losses else math.nan,
            "stopped_by_time": bool(trainer.global_step < stage["max_steps"]),
            "checkpoint": str(stage_ckpt),
        })
        if env_rank() == 0:
            atomic_write_json(progress_file, done)
    if trainer is None:  # every stage was finished before (or the cap was spent): a trainer to save with
        trainer, losses, _, _ = _fit(cfg, module, loaders, run_dir, ckpt_dir / "final", None, 0, None)
    for p in module.parameters():  # training is over: nothing stays frozen in the saved module
        p.requires_grad_(True)
    module.stage = None
    return trainer, losses, sum(d["seconds"] for d in done), resumed_from, done


def _seconds(max_time: Any) -> float | None:
    """Seconds of a Lightning ``max_time`` (``"DD:HH:MM:SS"`` or a mapping of days/hours/minutes/seconds)."""
    if max_time is None:
        return None
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (int(x) for x in max_time.split(":"))
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    parts = dict(max_time)
    return float(parts.get("days", 0) * 86400 + parts.get("hours", 0) * 3600 + parts.get("minutes", 0) * 60
                 + parts.get("seconds", 0))


def model_callbacks(model_cfg: DictConfig) -> list[Any]:
    """The Lightning callbacks a model config asks for (``model.callbacks``: e.g. ``ema``), built from
    config."""
    from hydra.utils import instantiate

    nodes = model_cfg.get("callbacks") or {}
    return [instantiate(nodes[name]) for name in sorted(nodes) if nodes[name] is not None]


def _build_logger(cfg: DictConfig) -> Any:
    """The Lightning logger of ``cfg.logger`` (False for ``logger=none``); wandb stays offline if asked."""
    import os

    from hydra.utils import instantiate

    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return False
    if str(cfg.logger._target_).endswith("WandbLogger") and cfg.logger.get("offline", False):
        # With an API key configured but no network, wandb.init waits on the server for minutes; offline mode
        # never contacts it (upload later with `wandb sync <run_dir>/wandb/offline-run-*`).
        os.environ["WANDB_MODE"] = "offline"
    return instantiate(cfg.logger)


def _check_strategy(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse the one combination that cannot work: Lightning's ``ddp`` re-launch inside a Hydra sweep.

    ``strategy=ddp`` starts the extra processes by re-running the command line, and in a sweep (``-m``) that
    command is the whole sweep. Under a cluster launcher (SLURM, torchrun) the processes already exist and
    nothing is re-launched.
    """
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    strategy = str(trainer_kwargs.get("strategy", ""))
    relaunches = strategy.startswith("ddp") and not any(k in strategy for k in ("spawn", "fork", "notebook"))
    devices = trainer_kwargs.get("devices", 1)
    several = devices in (-1, "auto") or isinstance(devices, list) or (type(devices) is int and devices > 1)
    cluster = "SLURM_NTASKS" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if not relaunches or not several or cluster:
        return
    try:
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return
    if multirun:
        raise ValueError(
            f"trainer.strategy={strategy} re-launches the command line for its extra processes, which in a "
            "sweep (-m) would re-run the whole sweep: run the cell alone, or give each cell its own "
            "processes (hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=<devices>)"
        )


def load_trained(run_dir: str | Path, model_cfg: DictConfig | None = None) -> tuple[Any, Any, DictConfig]:
    """Rebuild ``(module, representation, saved_config)`` from a run directory written by :func:`train`.

    The representation is the class ``codec.json`` names (a file without one, from runs trained before
    representations were configurable, is the crystal codec), rebuilt from its fitted state. The weights are
    loaded with ``weights_only=True`` (no code runs from the checkpoint). ``model_cfg`` may replace the saved
    ``model`` node's sampler (e.g. ``sampler=ddim`` at sample time); widths always come from the saved run.
    """
    import torch

    from bench.datasets.representation import load_representation

    run_dir = Path(run_dir)
    config_file, codec_file, ckpt = trained_run_files(run_dir)
    missing = [p for p in (config_file, codec_file, ckpt) if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"run directory {run_dir} is incomplete (missing {', '.join(str(m) for m in missing)}): "
            "train first with the same overrides (matgenbench train ...), or point paths.run_dir at a "
            "trained run"
        )
    saved = OmegaConf.load(config_file)
    codec = load_representation(json.loads(codec_file.read_text()))
    model_node = saved.model
    if model_cfg is not None and "sampler" in model_cfg.module and "sampler" in model_node.module:
        tag = sampler_override(model_cfg, model_node)
        if tag is not None:  # another sampler than the run's own: a variant of its own on the board
            model_node.variant = f"{model_node.variant}+{tag}"
        model_node.module.sampler = model_cfg.module.sampler
    module = build_module(model_node, codec.sizes())
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    return module, codec, saved
