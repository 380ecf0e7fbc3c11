"""Run identity: one run directory per training (bench.rundirs), shared by single runs and sweep cells, and
sample / evaluate refuse a run or samples file that belongs to another config."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bench.config import compose, config_hash, resolved, training_hash
from bench.rundirs import (
    RunMismatchError,
    default_run_dir,
    find_trained_run,
    samples_path,
    trained_run_files,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "dataset=tiny", "logger=none", "trainer.enable_progress_bar=false", "train.batch_size=8",
    "sample.num_samples=6", "sample.batch_size=3", "record.regenerate_board=false",
    "metrics.names=[struct_valid,unique]", "model.module.backbone.d_model=16",
    "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
]


def _cfg(tmp_path: Path, *overrides: str):
    return compose([
        *TINY, f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}", *overrides,
    ])


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
            "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results")}


def test_two_runs_with_other_max_steps_leave_two_intact_run_dirs(tmp_path: Path) -> None:
    from bench.run import run

    short = _cfg(tmp_path, "model=vae", "trainer.max_steps=3")
    long = _cfg(tmp_path, "model=vae", "trainer.max_steps=5")
    first, _ = run(short)
    first_dir = Path(short.paths.run_dir)
    assert first_dir == default_run_dir(short) == tmp_path / "outputs" / "runs" / (
        f"vae_tiny_train_s0__{training_hash(short)[:8]}")
    files = (*trained_run_files(first_dir), first_dir / "samples.csv", first_dir / "train_summary.json")
    kept = {p: p.read_bytes() for p in files}
    second, _ = run(long)
    second_dir = Path(long.paths.run_dir)
    assert second_dir != first_dir and second_dir.parent == first_dir.parent
    # the first run is intact: checkpoint, codec, config and samples as it left them
    assert {p: p.read_bytes() for p in files} == kept
    for folder, cfg, steps in ((first_dir, short, 3), (second_dir, long, 5)):
        summary = json.loads((folder / "train_summary.json").read_text())
        assert summary["steps"] == steps and summary["training_hash"] == training_hash(cfg)
        assert (folder / "samples.csv").is_file()
    assert (first.cost["train_steps"], second.cost["train_steps"]) == (3, 5)
    assert first.config["paths"]["run_dir"] == str(first_dir)
    # a third training setting has no run: the message names the runs there are and what differs
    with pytest.raises(FileNotFoundError) as caught:
        find_trained_run(_cfg(tmp_path, "model=vae", "trainer.max_steps=4"))
    message = str(caught.value)
    assert "\n" not in message and "no trained run for this config" in message
    assert "trainer.max_steps=3 (asked: 4)" in message and "trainer.max_steps=5 (asked: 4)" in message


def test_a_run_dir_of_another_training_is_refused_by_sample_and_evaluate(tmp_path: Path) -> None:
    from bench.evaluate import evaluate
    from bench.sample import sample
    from bench.train import train

    mine = tmp_path / "mine"
    trained = _cfg(tmp_path, "model=vae", "trainer.max_steps=3", f"paths.run_dir={mine}")
    train(trained)
    assert trained_run_files(mine)[2].is_file()  # an explicit paths.run_dir names the folder exactly
    again = _cfg(tmp_path, "model=vae", "trainer.max_steps=3", f"paths.run_dir={mine}")
    assert sample(again)["path"] == str(mine / "samples.csv")

    other = _cfg(tmp_path, "model=vae", "trainer.max_steps=7", f"paths.run_dir={mine}")
    for stage in (sample, evaluate):
        with pytest.raises(RunMismatchError) as caught:
            stage(other)
        message = str(caught.value)
        assert "\n" not in message
        assert training_hash(trained) in message and training_hash(other) in message
        assert "trainer.max_steps=3 (asked: 7)" in message and "leave out paths.run_dir" in message
    assert not list((tmp_path / "results").rglob("*.json"))  # no record stamped with the other config's hash
    resume = _cfg(tmp_path, "model=vae", "trainer.max_steps=7", "train.ckpt_path=last",
                  f"paths.run_dir={mine}")
    with pytest.raises(RunMismatchError, match=r"trainer.max_steps=3 \(asked: 7\)"):  # nor resumed by it
        train(resume)

    result = subprocess.run(
        [sys.executable, "-m", "bench.cli", "evaluate", *TINY, "model=vae", "trainer.max_steps=7",
         f"paths.run_dir={mine}"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path), timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("matgenbench evaluate: RunMismatchError: paths.run_dir=")
    assert training_hash(trained) in last and training_hash(other) in last


def test_a_samples_file_from_other_settings_is_refused_by_evaluate(tmp_path: Path) -> None:
    from bench.evaluate import evaluate
    from bench.sample import sample
    from bench.train import train

    base = ["model=ddpm", "trainer.max_steps=3", "model.module.sampler.steps=4"]
    own = _cfg(tmp_path, *base)
    train(own)
    own_file = Path(sample(own)["path"])
    ddim = _cfg(tmp_path, *base, "sampler@model.module.sampler=ddim", "model.module.sampler.steps=3")
    more = _cfg(tmp_path, *base, "sample.num_samples=4")
    assert Path(sample(ddim)["path"]).name == "samples+ddim-3.csv" and own_file.name == "samples.csv"
    assert Path(sample(more)["path"]).name == "samples+n4.csv"
    record, _ = evaluate(more)
    assert record.counts["n_requested"] == 4 and record.config_hash == config_hash(more)
    # the DDIM samples copied over the run's own: evaluate no longer scores them as the ancestral sampler's
    for suffix in ("", ".meta.json"):
        shutil.copy(f"{own_file.parent / 'samples+ddim-3.csv'}{suffix}", f"{own_file}{suffix}")
    with pytest.raises(RunMismatchError, match=r"^\S+samples\.csv was drawn with another sampling config"):
        evaluate(_cfg(tmp_path, *base))
    # the same file passed as external samples is scored as it is
    external, _ = evaluate(_cfg(tmp_path, *base, f"samples={own_file}"))
    assert external.kind == "external"


def test_samples_files_are_named_by_how_the_run_is_sampled(tmp_path: Path) -> None:
    cfg = compose(["model=ddpm", f"paths.run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved(cfg))))

    def name(*overrides: str) -> str:
        return samples_path(compose(["model=ddpm", f"paths.run_dir={tmp_path}", *overrides])).name

    assert name() == name("metrics=full", "trainer.max_steps=3") == "samples.csv"
    assert name("sampler@model.module.sampler=ddim") == "samples+ddim-50.csv"
    assert name("sampler@model.module.sampler=ddim", "sample.num_samples=7", "sample.seed=5") == (
        "samples+ddim-50+n7+seed5.csv")
    assert name("seed=3") == "samples+seed3.csv"  # sample.seed follows seed


def test_runs_trained_before_the_training_hash_named_their_folder_are_found(tmp_path: Path) -> None:
    from bench.sample import sample
    from bench.train import train

    cfg = _cfg(tmp_path, "model=vae", "trainer.max_steps=3")
    old = tmp_path / "outputs" / "runs" / str(cfg.run_name)  # a single run's folder before run identity
    train(_cfg(tmp_path, "model=vae", "trainer.max_steps=3", f"paths.run_dir={old}"))
    summary = old / "train_summary.json"
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items()
                                   if k != "training_hash"}))
    assert not default_run_dir(cfg).exists()
    assert Path(sample(cfg)["path"]) == old / "samples.csv"


def test_a_sweep_cell_and_a_single_run_use_the_same_run_dir(tmp_path: Path) -> None:
    from bench.evaluate import evaluate

    shrink = [*TINY, "model=vae", "trainer.max_steps=3"]
    swept = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "-m", *shrink, "seed=0",
         f"hydra.sweep.dir={tmp_path / 'sw'}"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path), timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]
    single = _cfg(tmp_path, "model=vae", "trainer.max_steps=3", "seed=0")
    (record_file,) = (tmp_path / "results" / "tiny").glob("*.json")
    cell = json.loads(record_file.read_text())
    assert cell["config_hash"] == config_hash(single)
    # the record names no machine: the absolute output directory is written as <output_dir>
    run_dir = cell["config"]["paths"]["run_dir"].replace("<output_dir>", str(tmp_path / "outputs"))
    assert run_dir == str(default_run_dir(single))
    # a single evaluate of the same config finds the cell's run and samples in that folder
    record, _ = evaluate(_cfg(tmp_path, "model=vae", "trainer.max_steps=3", "seed=0", "record.write=false"))
    assert record.counts["samples_file"] == str(default_run_dir(single) / "samples.csv")
    assert record.counts["samples_sha256"] == cell["counts"]["samples_sha256"]


def _published_sweep_cells() -> list[list[str]]:
    """Every cell of the sweeps under "The published leaderboard" in README.md that writes a record."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## The published leaderboard", 1)[1].split("```bash", 1)[1].split("```", 1)[0]

    def sweep_values(value: str) -> list[str]:  # commas outside brackets separate sweep values; a list is one
        values, depth, start = [], 0, 0
        for i, char in enumerate(value):
            depth += {"[": 1, "]": -1}.get(char, 0)
            if char == "," and depth == 0:
                values.append(value[start:i])
                start = i + 1
        return [*values, value[start:]]

    cells = []
    for line in block.splitlines():
        found = re.match(r"matgenbench (run|reference|evaluate) -m (.*)", line.split("#")[0].strip())
        if found:
            choices = [[f"{arg.split('=')[0]}={value}" for value in sweep_values(arg.split("=", 1)[1])]
                       for arg in shlex.split(found.group(2))]
            cells.extend(list(combo) for combo in itertools.product(*choices))
    return cells


@pytest.mark.skipif(not (ROOT / "leaderboard" / "results").is_dir(), reason="no committed result records")
def test_the_published_sweeps_find_their_committed_records() -> None:
    from bench.sweep import find_record

    cells = _published_sweep_cells()
    assert len(cells) >= 30
    results = ROOT / "leaderboard" / "results"
    missing = [cell for cell in cells
               if find_record(compose([*cell, f"paths.results_dir={results}"])) is None]
    assert not missing, f"re-running the README's sweeps would redo these cells: {missing}"


def test_runs_that_differ_only_in_sampling_train_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished training of the same config is reused (train.reuse, default true): two runs that sample
    differently share one training and keep both samples files; train.reuse=false trains again."""
    import logging

    from bench.run import run

    first = _cfg(tmp_path, "model=ddpm", "trainer.max_steps=3", "model.module.timesteps=20",
                 "model.module.sampler.steps=4")
    run(first)
    folder = Path(first.paths.run_dir)
    summary = folder / "train_summary.json"
    stamp, checkpoint = summary.stat().st_mtime_ns, (folder / "checkpoints" / "last.ckpt").read_bytes()
    other = _cfg(tmp_path, "model=ddpm", "trainer.max_steps=3", "model.module.timesteps=20",
                 "model.module.sampler.steps=2")
    with caplog.at_level(logging.INFO, logger="bench.run"):
        run(other)
    assert Path(other.paths.run_dir) == folder
    assert "reusing the finished training" in caplog.text
    assert summary.stat().st_mtime_ns == stamp
    assert (folder / "checkpoints" / "last.ckpt").read_bytes() == checkpoint
    assert len(list(folder.glob("samples*.csv"))) == 2
    again = _cfg(tmp_path, "model=ddpm", "trainer.max_steps=3", "model.module.timesteps=20",
                 "model.module.sampler.steps=2", "train.reuse=false")
    run(again)
    assert summary.stat().st_mtime_ns != stamp


def test_a_variant_s_own_config_has_no_override_tag_and_overrides_are_named() -> None:
    from bench.models import model_names

    from bench.rundirs import override_tag, record_variant

    for name in model_names():  # the published rows keep their variant names
        assert override_tag(compose([f"model={name}", "experiment=perov_5_offline"])) is None, name
    cases = {
        ("model=vae", "model.module.beta=4"): "beta=4",
        ("model=diffcsp", "scheduler@model.scheduler=cosine"): "scheduler=cosine",
        ("model=diffcsp", "model.module.backbone.width=256", "model.module.sampler.steps=100"):
            "backbone.width=256",  # the sampler is labelled by its own tag, not here
        ("model=ddpm", "sampler@model.module.sampler=ddim"): None,
        ("model=diffcsp", "model.callbacks.ema.decay=0.99", "model.module.time_dim=32"):
            "callbacks.ema.decay=0.99+time_dim=32",
    }
    for overrides, tag in cases.items():
        assert override_tag(compose(list(overrides))) == tag, overrides
    cfg = compose(["model=ddpm", "model.module.timesteps=500"])
    assert record_variant(cfg, "ddpm-eps-cosine+ddim-50") == "ddpm-eps-cosine+timesteps=500+ddim-50"


def test_a_hyperparameter_override_is_a_row_of_its_own(tmp_path: Path) -> None:
    """Seeds of ``model.module.beta=4`` never pool with the default's: the record's variant names the override
    and the board makes two rows."""
    from bench.leaderboard.aggregate import aggregate
    from bench.run import run

    plain, _ = run(_cfg(tmp_path, "model=vae", "trainer.max_steps=2"))
    beta, _ = run(_cfg(tmp_path, "model=vae", "trainer.max_steps=2", "model.module.beta=4"))
    assert plain.variant == "vae-gaussian+backbone.d_model=16+backbone.n_heads=2+backbone.n_layers=1"
    assert beta.variant == f"{plain.variant.split('+')[0]}+backbone.d_model=16+backbone.n_heads=2" \
        "+backbone.n_layers=1+beta=4"
    assert len(aggregate([plain, beta])) == 2
