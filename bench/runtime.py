"""Process set-up shared by every stage: thread counts, seeds, logging, data loading from config."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bench.config import as_path, cache_dir

__all__ = [
    "crystal_split_protocol", "env_rank", "load_dataset_split", "seed_everything", "set_threads",
    "split_info",
]

log = logging.getLogger(__name__)


def set_threads(n: int | None) -> None:
    """Fix the number of torch / OpenMP threads (1 per job when jobs run in parallel)."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(n))


def env_rank() -> int:
    """This process's global rank as its launcher announced it (``RANK``, ``SLURM_PROCID``, ``LOCAL_RANK``).

    0 when none is set. Known before Lightning sets up its process group, so files that only one process may
    write are guarded even before training starts (the variables, in order, of Lightning's rank-zero guard).
    """
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and (if imported) torch; models draw their own randomness from seeded generators."""
    import sys

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def load_dataset_split(cfg: DictConfig, split: str, limit: int | None = None, niggli: bool = False) -> Any:
    """Load one split of ``cfg.dataset`` from the data dir, the cache, or the pinned download."""
    from bench.datasets import load_split

    return load_split(
        cfg.dataset.name,
        split,
        data_dir=as_path(OmegaConf.select(cfg, "paths.data_dir", default=None)),
        cache_dir=cache_dir(cfg),
        download=bool(OmegaConf.select(cfg, "paths.download", default=True)),
        limit=limit,
        niggli=niggli,
    )


def crystal_split_protocol(ds: Any) -> dict[str, Any]:
    """The crystal track's split protocol of a dataset node: which split trained, which was the reference,
    whether it is the official protocol, the row caps, and its ``label`` and ``id``
    (:func:`bench.datasets.split_protocol`)."""
    from bench.datasets import is_official_protocol, split_protocol

    label, ident = split_protocol(ds)
    return {
        "train": ds.train_split,
        "eval": ds.eval_split,
        "val": OmegaConf.select(ds, "val_split", default=None),
        "official": is_official_protocol(ds),
        "limit_train": OmegaConf.select(ds, "limit_train", default=None),
        "limit_eval": OmegaConf.select(ds, "limit_eval", default=None),
        "label": label,
        "id": ident,
    }


def split_info(cfg: DictConfig, num_samples: int | None = None) -> dict[str, Any]:
    """The protocol of a run: which split trained, which was the reference, whether it is official, and how
    many structures were scored.

    The dataset's track names its splits (:mod:`bench.tracks`: the crystal datasets' split files, the
    composition datasets' seeded split). The pinned experiment (``protocol``, set by ``conf/experiment/*``)
    and the sample count are part of the protocol (``label`` and ``id``): an ad-hoc run on the same splits is
    never pooled with a pinned protocol's runs, and since COV-R and uniqueness depend on the sample count,
    1,000-sample rows are never ranked against 10,000-sample rows.

    Args:
        cfg: the run config.
        num_samples: structures actually scored (default: ``cfg.sample.num_samples``).
    """
    from bench.tracks import TRACKS, dataset_track

    if num_samples is None:
        num_samples = OmegaConf.select(cfg, "sample.num_samples", default=None)
    info = TRACKS[dataset_track(cfg)].split_protocol(cfg.dataset)
    label, ident = info.pop("label"), info.pop("id")
    pinned = OmegaConf.select(cfg, "protocol", default=None)
    if pinned:  # a pinned experiment: its runs are never pooled with ad-hoc runs on the same splits
        label = f"{pinned}: {label}"
        ident = f"{pinned}__{ident}"
    if num_samples is not None:
        label = f"{label}, {int(num_samples):,} samples"
        ident = f"{ident}_n{int(num_samples)}"
    return {
        **info,
        "protocol": pinned or None,
        "num_samples": None if num_samples is None else int(num_samples),
        "label": label,
        "id": ident,
    }
