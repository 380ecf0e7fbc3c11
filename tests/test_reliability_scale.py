"""Scale and sinks: the ``ddp`` trainer config on two CPU processes (gloo), and the offline wandb logger.

DDP runs the real command line in a subprocess: Lightning's ``ddp`` strategy starts its second process by
re-running the command, which a test function calling ``train(cfg)`` in pytest cannot offer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHRINK = [
    "dataset=tiny", "model=vae", "trainer.max_steps=4", "trainer.enable_progress_bar=false",
    "train.batch_size=8", "sample.num_samples=4", "record.regenerate_board=false",
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
    "metrics.names=[struct_valid,unique]",
]


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
                "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=full_env, timeout=timeout)


def test_ddp_on_two_cpu_processes_writes_once(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", *SHRINK, "logger=none", "trainer=ddp", "trainer.accelerator=cpu",
                  "trainer.devices=2")
    assert result.returncode == 0, result.stderr[-4000:]
    summaries = list((tmp_path / "outputs" / "runs").glob("*/train_summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["global_zero"] is True
    records = list((tmp_path / "results" / "tiny").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "complete"
    assert result.stdout.count("┃ metric") == 1  # only rank zero evaluated and printed the table


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb not installed (optional: pip install -e '.[wandb]')")
def test_wandb_logger_stays_offline_and_logs_the_evaluation(tmp_path: Path) -> None:
    # online mode asked for by the environment, a key and no network: the config's offline mode still wins
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}
    result = _cli(tmp_path, "run", *SHRINK, "logger=wandb", "trainer.log_every_n_steps=1", env=env,
                  timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/wandb/offline-run-*"))
    assert len(runs) == 1
    history = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"train/loss" in history and b"eval/struct_valid" in history
    tables = list(runs[0].glob("files/media/table/eval/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert "struct_valid" in table["columns"] and len(table["data"]) == 4
    records = list((tmp_path / "results" / "tiny").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "complete"
