"""``run``: train → sample → evaluate in one job. A crash at any stage still writes a ``failed`` record."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bench.config import config_hash, resolved
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
        variant=str(cfg.model.variant),
        dataset=str(cfg.dataset.name),
        split_protocol=split.get("label", "unknown"),
        split=split,
        seed=int(cfg.seed),
        status="failed",
        reason=f"{stage}: {type(err).__name__}: {err}",
        provenance={**provenance(), "traceback": traceback.format_exc(limit=20)},
        config=resolved(cfg),
        config_hash=config_hash(cfg),
    )


def run(cfg: DictConfig) -> tuple[ResultRecord, Path | None]:
    """Train, sample and evaluate ``cfg``; return the record and its path.

    Raises:
        Exception: the error of the failing stage, after its ``failed`` record has been written.
    """
    from bench.evaluate import evaluate
    from bench.sample import sample
    from bench.train import train

    stage = "train"
    try:
        train(cfg)
        stage = "sample"
        sample(cfg)
        stage = "evaluate"
        return evaluate(cfg)
    except Exception as err:
        record = failed_record(cfg, stage, err)
        path = write_record(record, cfg.paths.results_dir) if cfg.record.get("write", True) else None
        log.error("run failed at %s: %s (record: %s)", stage, record.reason, path)
        raise
