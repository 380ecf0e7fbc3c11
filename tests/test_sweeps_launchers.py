"""Launchers: joblib workers run real cells in parallel; the SLURM config renders its sbatch options.

Each launcher is an optional extra (``.[joblib]``, ``.[slurm]``); its test is skipped, with the reason, when
the plugin is not installed. Ray: tests/test_sweeps_ray.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sweep import CELL_FILE

SHRINK = [
    "dataset=tiny", "logger=none", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
    "train.batch_size=8", "sample.num_samples=4", "record.regenerate_board=false",
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
    "metrics.names=[struct_valid,unique]",
]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _sweep(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
                "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results"), **(env or {})}
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    command = [sys.executable, "-m", "bench.cli", "run", "-m", *SHRINK, sweep_dir]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=tmp_path, env=full_env,
                          timeout=600)


def _check_cells(tmp_path: Path, n: int) -> list[dict]:
    cells = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob(f"*/{CELL_FILE}")]
    assert len(cells) == n and all(c["status"] == "complete" for c in cells)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "tiny").glob("*.json")]
    assert len(records) == n and all(r["status"] == "complete" for r in records)
    # every worker honoured threads=1 (set before torch is imported in the worker, re-applied after)
    assert all(r["provenance"]["hardware"]["torch_threads"] == 1 for r in records)
    return cells


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_joblib_launcher"),
                    reason="hydra-joblib-launcher not installed (pip install -e '.[joblib]')")
def test_joblib_runs_cells_in_two_workers(tmp_path: Path) -> None:
    result = _sweep(tmp_path, "model=vae,realnvp", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 2 cells: 2 complete" in result.stdout
    cells = _check_cells(tmp_path, 2)
    assert len({c["pid"] for c in cells}) == 2 and os.getpid() not in {c["pid"] for c in cells}


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install -e '.[slurm]')")
def test_submitit_slurm_renders_sbatch_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import submitit
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # our file refines the plugin's schema of the same name
        with initialize_config_module(config_module="bench.conf", version_base="1.3"):
            cfg = compose("config", return_hydra_config=True, overrides=[
                "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=2",
                "hydra.launcher.account=chem", "trainer=ddp",
            ])
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["timeout_min"]) == ("gpu", 2, 240)
    assert (launcher["cpus_per_task"], launcher["mem_gb"], launcher["tasks_per_node"]) == (4, 16, 2)

    # The executor the plugin builds: submitit only checks that `srun` exists, so a stand-in is enough to
    # render the submission script (nothing is submitted).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in launcher.items()
              if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    params["name"] = "matgenbench"
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit")
    executor.update_parameters(**params)
    render = getattr(executor._executor, "_make_submission_file_text", None)
    if render is None:
        pytest.skip("this submitit version renders submissions differently")
    script = render("python -m bench.cli run", "uid")
    for option in ("--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=4",
                   "--mem=16GB", "--time=240", "--account=chem", "--job-name=matgenbench"):
        assert f"#SBATCH {option}" in script, script
