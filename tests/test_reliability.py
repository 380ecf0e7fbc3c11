"""Reliability: a diverging loss fails the run with the step in its record, a killed training resumes from its
last checkpoint, and mistakes on the command line come back as one line naming the input and the choices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench.models.base import NonFiniteLossError

from bench.config import compose, config_hash
from bench.records import load_records
from bench.rundirs import default_run_dir

SHRINK = [
    "dataset=tiny", "model=vae", "logger=none", "trainer.enable_progress_bar=false", "train.batch_size=8",
    "sample.num_samples=4", "record.regenerate_board=false", "metrics.names=[struct_valid,unique]",
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
]


def _cfg(tmp_path: Path, *overrides: str):
    paths = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
             f"paths.leaderboard_dir={tmp_path / 'board'}"]
    return compose([*SHRINK, *paths, *overrides])


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
           "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results")}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)


class _LossPatch:
    """Wraps CrystalVAE.loss: counts calls in training mode and misbehaves from a given global step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at_step: int | None = None, action: str = "") -> None:
        from bench.models.vae.vae import CrystalVAE

        self.calls: list[int] = []
        original = CrystalVAE.loss
        patch = self

        def loss(module, batch):  # noqa: ANN001, ANN202
            terms = original(module, batch)
            if module.training:
                patch.calls.append(int(module.global_step))
                if at_step is not None and module.global_step >= at_step:
                    if action == "inf":
                        terms["loss"] = terms["loss"] * float("inf")
                    else:
                        raise RuntimeError("simulated kill")
            return terms

        monkeypatch.setattr(CrystalVAE, "loss", loss)


def test_nonfinite_loss_fails_the_run_with_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.run import run

    _LossPatch(monkeypatch, at_step=3, action="inf")
    cfg = _cfg(tmp_path, "trainer.max_steps=10")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        run(cfg)
    (_, record), = load_records(tmp_path / "results")
    assert record.status == "failed" and record.config_hash == config_hash(cfg)
    assert record.reason.startswith("train: NonFiniteLossError: non-finite loss at step 3 (loss=inf)")


def test_diverging_learning_rate_is_one_line_from_the_cli(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", *SHRINK, "trainer.max_steps=5", "model.module.optimizer.lr=1e30")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "matgenbench run: NonFiniteLossError: non-finite loss at step ")
    (_, record), = load_records(tmp_path / "results")
    assert record.status == "failed" and "non-finite loss at step" in record.reason


def test_training_resumes_from_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.train import train

    # first attempt: checkpoints every 2 steps, killed while computing step 5
    crash = _LossPatch(monkeypatch, at_step=5, action="kill")
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(_cfg(tmp_path, "trainer.max_steps=8", "train.ckpt_every_n_steps=2"))
    run_dir = default_run_dir(_cfg(tmp_path, "trainer.max_steps=8", "train.ckpt_every_n_steps=2"))
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)  # loads without running code
    assert saved["global_step"] == 4 and crash.calls[-1] == 5
    monkeypatch.undo()

    # second attempt: same config plus train.ckpt_path=last, trains only steps 4..7
    counter = _LossPatch(monkeypatch)
    cfg = _cfg(tmp_path, "trainer.max_steps=8", "train.ckpt_every_n_steps=2", "train.ckpt_path=last")
    summary = train(cfg)
    assert summary["steps"] == 8 and summary["resumed_from"] == str(last)
    assert counter.calls == [4, 5, 6, 7]  # continued at step 4, did not start over
    assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 8
    # resuming is the same experiment: checkpoint keys are not part of the config hash
    assert config_hash(cfg) == config_hash(_cfg(tmp_path, "trainer.max_steps=8"))


def test_a_moved_training_killed_twice_resumes_from_its_latest_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder copied to another place (another disk, another machine) and resumed there keeps one
    ``last.ckpt``, refreshed, so a second kill resumes from the latest step, not from the first kill."""
    from bench.train import train

    overrides = ["trainer.max_steps=8", "train.ckpt_every_n_steps=2"]
    _LossPatch(monkeypatch, at_step=3, action="kill")  # first kill: last.ckpt holds step 2
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(_cfg(tmp_path / "here", *overrides))
    monkeypatch.undo()
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    _LossPatch(monkeypatch, at_step=7, action="kill")  # resumed there, killed after the step-6 checkpoint
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(_cfg(tmp_path / "there", *overrides, "train.ckpt_path=last"))
    monkeypatch.undo()
    ckpts = default_run_dir(_cfg(tmp_path / "there", *overrides)) / "checkpoints"
    assert not list(ckpts.glob("last-v*.ckpt"))  # never a second "last" beside the stale one
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6

    counter = _LossPatch(monkeypatch)
    assert train(_cfg(tmp_path / "there", *overrides, "train.ckpt_path=last"))["steps"] == 8
    assert counter.calls == [6, 7]


def test_a_resumed_training_counts_the_time_of_its_earlier_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train_seconds of a resumed training is the time the wall-clock cap counted: both attempts."""
    import time

    from bench.models.vae.vae import CrystalVAE

    from bench.train import train

    overrides = ["trainer.max_steps=6", "train.ckpt_every_n_steps=2", "trainer.max_time=00:01:00:00"]
    original = CrystalVAE.loss

    def slow(module, batch):  # noqa: ANN001, ANN202
        if module.training:
            time.sleep(1.0)  # 4 steps before the checkpoint of step 4: at least 4 s in the first attempt
            if module.global_step >= 5:
                raise RuntimeError("simulated kill")
        return original(module, batch)

    monkeypatch.setattr(CrystalVAE, "loss", slow)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(_cfg(tmp_path, *overrides))
    monkeypatch.undo()
    summary = train(_cfg(tmp_path, *overrides, "train.ckpt_path=last"))  # two quick steps
    assert summary["steps"] == 6 and summary["resumed_from"]
    assert summary["train_seconds"] >= 4.0  # not only the second attempt's own time


def test_command_line_mistakes_are_one_line(tmp_path: Path) -> None:
    result = _cli(tmp_path, "train", "dataset=tiny", "trainer.max_stepz=3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "trainer.max_stepz" in result.stderr and "did you mean trainer.max_steps?" in result.stderr

    result = _cli(tmp_path, "run", "-m", "model=vae,no_such_model")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    model_dir = Path(__file__).resolve().parents[1] / "conf" / "model"
    names = ", ".join(sorted(p.stem for p in model_dir.glob("*.yaml")))
    assert f"unknown model 'no_such_model'; choose one of: {names}" in result.stderr

    result = _cli(tmp_path, "run", "dataset=no_such_data")
    choices = "carbon_24, castelli, expt_gap, glass, mp_20, mp_e_form"
    assert result.returncode == 2 and choices in result.stderr

    missing = tmp_path / "nope.csv"
    result = _cli(tmp_path, "evaluate", "dataset=tiny", f"samples={missing}", "record.regenerate_board=false")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("matgenbench evaluate: SampleFileError:") and str(missing) in last


def test_ddp_relaunch_inside_a_sweep_is_refused_with_the_way_out() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from bench.train import _check_strategy

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="bench.conf", version_base="1.3"):
        cfg = hydra_compose("config", return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(ValueError, match="tasks_per_node"):
            _check_strategy({"strategy": "ddp_find_unused_parameters_true", "devices": 2})
        _check_strategy({"strategy": "ddp", "devices": 1})  # one process: nothing is re-launched
        _check_strategy({"strategy": "auto", "devices": 2})
    finally:
        HydraConfig.instance().cfg = None
