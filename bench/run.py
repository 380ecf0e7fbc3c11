"""``run``: train → sample → evaluate in one job. A crash at any stage still writes a ``failed`` record."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.config import config_hash, record_config, results_dir
from bench.records import ResultRecord, provenance, write_record

__all__ = ["run", "failed_record"]

log = logging.getLogger(__name__)


def failed_record(cfg: DictConfig, stage: str, err: BaseException) -> ResultRecord:
    """A record for a run that crashed: what was asked, where it broke and why."""
    split: dict[str, Any] = {}
    try:
        from bench.runtime import split_info

        split = split_info(cfg)
    except Exception:  # the failure may be in the dataset config itself
        split = {"label": str(cfg.dataset.get("train_split", "?")), "id": "unknown"}
    return ResultRecord(
        model=str(cfg.model.name),
        family=str(cfg.model.family),
        variant=_variant(cfg),
        dataset=str(cfg.dataset.name),
        split_protocol=split.get("label", "unknown"),
        split=split,
        seed=int(cfg.seed),
        status="failed",
        reason=f"{stage}: {type(err).__name__}: {err}",
        provenance={**provenance(), "traceback": traceback.format_exc(limit=20)},
        config=record_config(cfg),
        config_hash=config_hash(cfg),
    )


def _variant(cfg: DictConfig) -> str:
    try:
        from bench.rundirs import record_variant

        return record_variant(cfg, str(cfg.model.variant))
    except Exception:  # the failure may be in the model config itself
        return str(cfg.model.get("variant", "?"))


def run(cfg: DictConfig) -> tuple[ResultRecord | None, Path | None]:
    """Train, sample and evaluate ``cfg``; return the record and its path.

    With several data-parallel processes (``trainer=ddp``) all of them train and the rank-zero process alone
    samples, evaluates and writes the record; the others return ``(None, None)``.

    Raises:
        bench.tracks.TrackMismatchError: the model and the dataset belong to different tracks (before any
            stage runs; no record is written).
        Exception: the error of the failing stage, after its ``failed`` record has been written.
    """
    from bench.evaluate import evaluate
    from bench.runtime import env_rank
    from bench.sample import sample
    from bench.tracks import check_track
    from bench.train import train

    track = check_track(cfg)  # a model of another track is refused in one line, with no failed record
    stage = "train"
    try:
        if track.run is not None:  # a track whose generator is fitted inside its protocol (tabular: per fold)
            stage = track.name
            return track.run(cfg)
        summary = _reusable_training(cfg) or train(cfg)
        if not summary.get("global_zero", True):
            return None, None
        stage = "sample"
        sample(cfg)
        stage = "evaluate"
        record, path = evaluate(cfg)
    except Exception as err:
        if env_rank() != 0:
            raise
        record = failed_record(cfg, stage, err)
        path = write_record(record, results_dir(cfg)) if cfg.record.get("write", True) else None
        log.error("run failed: %s (record: %s)", record.reason, path)
        if _is_wandb(cfg):
            _finish_wandb(exit_code=1)
        raise
    if _is_wandb(cfg):
        _log_to_wandb(cfg, record, path)
    return record, path


def _reusable_training(cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of a finished training of this very config in its run directory, when ``train.reuse``
    (default true) allows using it instead of training again: runs that differ only in how they sample or
    score (``model.module.sampler.steps=10,50,100``) train once and never overwrite each other's training."""
    from bench.rundirs import bind_run_dir, finished_training

    if not OmegaConf.select(cfg, "train.reuse", default=True):
        return None
    bind_run_dir(cfg)
    summary = finished_training(cfg)
    if summary is not None:
        log.info("reusing the finished training in %s (train.reuse=false trains again)", cfg.paths.run_dir)
    return summary


def _is_wandb(cfg: DictConfig) -> bool:
    target = OmegaConf.select(cfg, "logger._target_", default=None)
    return bool(target) and str(target).endswith("WandbLogger")


def _log_to_wandb(cfg: DictConfig, record: ResultRecord, path: Path | None, max_rows: int = 200) -> None:
    """Log the evaluation metrics and a table of samples to the wandb run that training opened.

    wandb is a sink for curves and a view of the samples; the result record stays the source of truth, so a
    wandb failure is logged and never fails the run.
    """
    try:
        import wandb

        run = wandb.run
        if run is None:  # training ran in another process (or finished its run): open one for the evaluation
            run = wandb.init(
                project=cfg.logger.get("project"), name=cfg.logger.get("name"), job_type="evaluate",
                dir=str(cfg.logger.get("save_dir") or cfg.paths.run_dir),
                mode="offline" if cfg.logger.get("offline", False) else None,
            )
        values = {f"eval/{name}": entry.get("value") for name, entry in record.metrics.items()
                  if isinstance(entry.get("value"), int | float)}
        run.log(values)
        run.summary.update({**values, "record": str(path) if path else None,
                            "config_hash": record.config_hash})
        per_sample = path.with_suffix(".samples.csv") if path is not None else None
        if per_sample is not None and per_sample.exists():
            import pandas as pd

            frame = pd.read_csv(per_sample, nrows=max_rows)
            run.log({"eval/samples": wandb.Table(dataframe=frame.astype(str))})
        wandb.finish()
    except Exception as err:  # the record is written; wandb is only a view of it
        log.warning("could not log the evaluation to wandb: %s", err)
        _finish_wandb(exit_code=1)


def _finish_wandb(exit_code: int) -> None:
    """Close the active wandb run, so the next cell of an in-process sweep never logs into this one."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=exit_code)
        except Exception as err:
            log.warning("could not close the wandb run: %s", err)
