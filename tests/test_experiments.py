"""Every pinned experiment config composes; the offline ones smoke-run end to end on a few rows of real
data."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import compose
from tests.conftest import REPO_ROOT

EXPERIMENTS = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))


def test_there_are_experiments_for_every_dataset() -> None:
    for ds in ("perov_5", "carbon_24", "mp_20", "mpts_52"):
        assert f"{ds}_official" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str) -> None:
    cfg = compose([f"experiment={name}", "model=vae"])
    assert name.startswith(f"{cfg.dataset.name}_") and cfg.protocol in (name, None)
    assert cfg.dataset.eval_split == "test"
    if cfg.dataset.get("track") == "composition":  # the pinned split of the composition track
        assert (cfg.dataset.train_split, cfg.dataset.split_seed) == ("train", 0)
        assert list(cfg.dataset.fractions) == [0.8, 0.1, 0.1]
        assert cfg.sample.num_samples == cfg.metrics.distribution.max_samples == 1000
        return
    if cfg.dataset.get("track") == "tabular":  # the pinned repeated K-fold and the fixed regressor
        assert dict(cfg.dataset.folds) == {"n_splits": 5, "n_repeats": 3, "seed": 0}
        assert cfg.dataset.limit_folds is None and list(cfg.tabular.ratios) == [0.5, 1, 2, 4, 8]
        assert cfg.tabular.regressor.random_state == 0
        return
    assert "cov_recall" in cfg.metrics.names
    if name.endswith("_official"):
        assert cfg.dataset.train_split == "train" and cfg.sample.num_samples == 10_000
    else:
        assert cfg.dataset.train_split == "val" and cfg.sample.num_samples == 1000


def test_longer_budget_protocols_differ_from_their_base_only_in_budget() -> None:
    """``*_offline_12k`` is ``*_offline`` with 12,000 steps: another protocol id, never pooled with the
    2,000-step rows, everything else equal."""
    for ds in ("perov_5", "carbon_24"):
        base = compose([f"experiment={ds}_offline", "model=vae"])
        longer = compose([f"experiment={ds}_offline_12k", "model=vae"])
        assert base.trainer.max_steps == 2000 and longer.trainer.max_steps == 12000
        assert longer.protocol == f"{ds}_offline_12k" != base.protocol
        for key in ("dataset", "sample", "metrics", "model"):
            assert longer[key] == base[key], key


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if "_offline" in e])
def test_offline_experiment_smoke_runs(name: str, data_dir: Path, tmp_path: Path) -> None:
    from bench.run import run

    cfg = compose([
        f"experiment={name}", "model=ddpm", f"paths.data_dir={data_dir}", "logger=none",
        "dataset.limit_train=24", "dataset.limit_eval=12", "trainer.max_steps=2", "sample.num_samples=6",
        "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1",
        "model.module.sampler.steps=3", "trainer.enable_progress_bar=false",
        f"paths.output_dir={tmp_path}", f"paths.results_dir={tmp_path / 'r'}",
    ])
    record, path = run(cfg)
    assert record.status == "complete" and path.exists()
    assert record.split["official"] is False and "not the official" in record.split_protocol
    assert "cov_recall" in record.metrics
