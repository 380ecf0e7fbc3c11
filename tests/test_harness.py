"""The whole path, run for real on the project's tiny dataset: train → sample → evaluate → result record."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import compose, config_hash
from bench.records import load_records

TINY = [
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2"
]


def _cfg(tmp_path: Path, *overrides: str):
    return compose([
        "dataset=tiny", "logger=none", "trainer.max_steps=6", "trainer.enable_progress_bar=false",
        "train.batch_size=8", "sample.num_samples=12", "sample.batch_size=5",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}", *TINY, *overrides,
    ])


def test_run_writes_a_complete_record(tmp_path: Path) -> None:
    from bench.run import run

    cfg = _cfg(tmp_path, "model=vae", "seed=3")
    record, path = run(cfg)
    assert path is not None and path.exists()
    data = json.loads(path.read_text())
    assert data["status"] == "complete" and data["reason"] is None
    assert (data["model"], data["family"], data["dataset"], data["seed"]) == ("vae", "vae", "tiny", 3)
    assert data["counts"]["n_requested"] == 12
    assert 0 <= data["counts"]["n_valid"] <= data["counts"]["n_decoded"] <= 12
    for key in ("struct_valid", "comp_valid", "valid", "unique", "novel", "wdist_density", "wdist_num_elems"):
        entry = data["metrics"][key]
        assert entry["direction"] in ("max", "min") and entry["description"]
    cost = data["cost"]
    assert cost["train_steps"] == 6 and cost["train_seconds"] > 0 and cost["samples_per_second"] > 0
    assert cost["parameters"] > 0 and cost["train_peak_memory_mb"] > 0
    assert data["split"]["train"] == "train" and data["split"]["official"] is False
    assert set(data["data_checksums"]) >= {"train", "test"}
    assert data["config_hash"] == config_hash(cfg)
    assert data["provenance"]["versions"]["torch"] and data["provenance"]["hardware"]["cpu_count"]
    assert data["config"]["model"]["name"] == "vae"
    per_sample = path.with_suffix(".samples.csv")
    with open(per_sample) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and "struct_reason" in rows[0]


def test_sampling_is_reproducible_from_the_checkpoint(tmp_path: Path) -> None:
    from bench.sample import sample
    from bench.train import train

    cfg = _cfg(tmp_path, "model=ddpm", "model.module.sampler.steps=5")
    summary = train(cfg)
    assert summary["steps"] == 6 and Path(summary["checkpoint"]).exists()
    first = Path(sample(cfg)["path"]).read_text()
    second = Path(sample(cfg)["path"]).read_text()
    assert first == second
    other = Path(
        sample(_cfg(tmp_path, "model=ddpm", "model.module.sampler.steps=5", "sample.seed=99"))["path"]
    )
    assert other.read_text() != first
    # the run's own sampler keeps the model's variant; another sampler is a variant of its own on the board
    assert sample(cfg)["variant"] == "ddpm-eps-cosine"
    ddim = _cfg(tmp_path, "model=ddpm", "sampler@model.module.sampler=ddim", "model.module.sampler.steps=4")
    assert sample(ddim)["variant"] == "ddpm-eps-cosine+ddim-4"
    eta = _cfg(tmp_path, "model=ddpm", "sampler@model.module.sampler=ddim", "model.module.sampler.eta=0.5")
    assert sample(eta)["variant"] == "ddpm-eps-cosine+ddim-50-eta0.5"


def test_a_crash_writes_a_failed_record(tmp_path: Path) -> None:
    from bench.run import run

    cfg = _cfg(tmp_path, "model=vae", "dataset.max_atoms=2")  # tiny has 8-atom cells: the codec refuses them
    with pytest.raises(ValueError, match="max_atoms"):
        run(cfg)
    (path, record), = load_records(tmp_path / "results")
    assert record.status == "failed"
    assert record.reason.startswith("train: ValueError") and "max_atoms" in record.reason
    assert record.config_hash == config_hash(cfg)


def test_evaluate_scores_external_samples(tmp_path: Path) -> None:
    from bench.datasets import tiny_structures

    from bench.evaluate import evaluate

    external = tmp_path / "theirs.csv"
    with open(external, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif"])
        for i, structure in enumerate(tiny_structures("test")):
            writer.writerow([f"x{i}", structure.to(fmt="cif")])
        writer.writerow(["broken", "not a cif"])
    cfg = _cfg(tmp_path, f"samples={external}", "evaluate.model_name=theirs")
    record, path = evaluate(cfg)
    assert record.kind == "external" and record.model == "theirs" and record.family == "external"
    assert record.counts["n_requested"] == 9 and record.counts["n_decoded"] == 8
    # the test split scored against itself: all novel w.r.t. train (disjoint splits), all valid, all unique
    assert record.metrics["struct_valid"]["value"] == pytest.approx(8 / 9)
    assert record.metrics["wdist_density"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert path.exists()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
           "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results")}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)


def test_cli_run_prints_metrics_and_record_path_last(tmp_path: Path) -> None:
    result = _cli(tmp_path, "run", "model=realnvp", "dataset=tiny", "logger=none", "trainer.max_steps=4",
                  "sample.num_samples=8", "trainer.enable_progress_bar=false", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(".json") and Path(tmp_path, last).exists() or Path(last).exists()
    assert "valid" in result.stdout and "↑" in result.stdout
    assert (tmp_path / "leaderboard" / "README.md").exists()


def test_cli_errors_name_the_input(tmp_path: Path) -> None:
    result = _cli(tmp_path, "train", "model=no_such_model", "dataset=tiny")
    assert result.returncode != 0
    assert "no_such_model" in result.stderr and "ddpm" in result.stderr  # lists the valid choices
    result = _cli(tmp_path, "frobnicate")
    assert result.returncode == 2 and "unknown command" in result.stderr
    result = _cli(tmp_path, "evaluate", "dataset=tiny", f"samples={tmp_path / 'nope.csv'}")
    assert result.returncode != 0 and "nope.csv" in result.stderr


def test_another_sampler_writes_its_own_samples_file(tmp_path: Path) -> None:
    from bench.rundirs import sampler_tag, samples_path
    from bench.sample import sample
    from bench.train import train

    cfg = _cfg(tmp_path, "model=ddpm", "model.module.sampler.steps=5")
    train(cfg)
    own = Path(sample(cfg)["path"])
    ddim = _cfg(tmp_path, "model=ddpm", "sampler@model.module.sampler=ddim", "model.module.sampler.steps=4")
    other = Path(sample(ddim)["path"])
    assert own.name == "samples.csv" and other.name == "samples+ddim-4.csv" == samples_path(ddim).name
    assert own.exists() and own.read_text() != other.read_text()  # the run's own samples are kept
    sampler = {"_target_": "bench.models.diffusion.samplers.DDIMSampler", "steps": 50, "eta": 0.0,
               "clip_denoised": False}
    assert sampler_tag(sampler) == "ddim-50-clip_denoisedFalse"
    euler = {"_target_": "bench.models.flow_matching.samplers.EulerSampler", "steps": 50,
             "anti_annealing": {"frac_coords": 10, "lattice": 2}}
    assert sampler_tag(euler) == "euler-50-anti_annealing.frac_coords10-anti_annealing.lattice2"
    from bench.evaluate import evaluate

    record, _ = evaluate(ddim)  # reads the DDIM samples, not the run's own
    # the tiny widths of this test are overrides of the variant's config: named before the sampler's tag
    tiny = "backbone.d_model=16+backbone.n_heads=2+backbone.n_layers=1"
    assert record.variant == f"ddpm-eps-cosine+{tiny}+ddim-4" and record.counts["samples_file"] == str(other)
