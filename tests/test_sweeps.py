"""Idempotent sweeps: done cells are skipped, a failing cell never stops the rest, a killed sweep resumes.

The sweeps run through the real command line (``matgenbench run -m``) with the in-process (basic) launcher on
the tiny dataset, so the exit status and the end-of-sweep summary are the ones a user sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.sweep import CELL_FILE, LAUNCHER_PLUGINS, SweepSummary, launcher_problem, summarize

SHRINK = [
    "dataset=tiny", "model=vae", "logger=none", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
    "train.batch_size=8", "sample.num_samples=4", "record.regenerate_board=false",
    "model.module.backbone.d_model=16", "model.module.backbone.n_layers=1", "model.module.backbone.n_heads=2",
    "metrics.names=[struct_valid,unique]",
]


def _sweep(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
           "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results")}
    command = [sys.executable, "-m", "bench.cli", "run", "-m", *SHRINK, f"hydra.sweep.dir={tmp_path / name}"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)


def _cells(sweep_dir: Path) -> dict[str, dict]:
    """cell.json of every job, keyed by its dataset.max_atoms override."""
    out = {}
    for path in sweep_dir.glob(f"*/{CELL_FILE}"):
        cell = json.loads(path.read_text())
        key = next(o.split("=")[1] for o in cell["overrides"] if o.startswith("dataset.max_atoms="))
        out[key] = cell
    return out


def _records(results: Path) -> dict[str, tuple[Path, dict]]:
    """Result records keyed by the dataset.max_atoms of their config."""
    out = {}
    for path in (results / "tiny").glob("*.json"):
        data = json.loads(path.read_text())
        out[str(data["config"]["dataset"]["max_atoms"])] = (path, data)
    return out


def test_killed_sweep_resumes_skipping_done_cells_and_a_failure_does_not_stop_it(tmp_path: Path) -> None:
    results = tmp_path / "results" / "tiny"
    # 1. a three-cell sweep, killed (SIGKILL, the whole process group) once its first cell has a record
    env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
           "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results")}
    command = [sys.executable, "-m", "bench.cli", "run", "-m", *SHRINK,
               f"hydra.sweep.dir={tmp_path / 'killed'}", "dataset.max_atoms=8,9,10"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(results.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    done = _records(tmp_path / "results")
    assert 1 <= len(done) < 3 and all(r[1]["status"] == "complete" for r in done.values())
    mtimes = {key: path.stat().st_mtime_ns for key, (path, _) in done.items()}

    # 2. the same cells plus one that fails (max_atoms=2 cannot hold tiny's 8-atom cells): the finished cells
    # are skipped, the missing ones run, the failure is recorded, reported, and does not stop the others
    second = _sweep(tmp_path, "second", "dataset.max_atoms=2,8,9,10")
    assert second.returncode == 1, second.stderr[-3000:]
    cells = _cells(tmp_path / "second")
    expected = {"2": "failed", **{k: "skipped" if k in done else "complete" for k in ("8", "9", "10")}}
    assert {k: c["status"] for k, c in cells.items()} == expected
    assert "1 of 4 cells failed" in second.stdout
    assert "dataset.max_atoms=2: train: ValueError" in second.stdout
    assert f"{3 - len(done)} complete, {len(done)} skipped (already complete), 1 failed" in second.stdout
    assert {k: done[k][0].stat().st_mtime_ns for k in done} == mtimes  # finished cells did not run again
    records = _records(tmp_path / "results")
    assert {k: r[1]["status"] for k, r in records.items()} == {
        "2": "failed", "8": "complete", "9": "complete", "10": "complete"}
    assert "max_atoms" in records["2"][1]["reason"] and "max_atoms" in cells["2"]["reason"]
    # each cell trained in its own run directory, the one a single run of its config uses
    from bench.config import training_hash

    for key in ("8", "9", "10"):
        config = records[key][1]["config"]
        run_dir = Path(config["paths"]["run_dir"].replace("<output_dir>", str(tmp_path / "outputs")))
        assert run_dir.name == f"{config['run_name']}__{training_hash(config)[:8]}"
        assert run_dir.parent == tmp_path / "outputs" / "runs" and (run_dir / "codec.json").exists()

    # 3. force=true re-runs a finished cell; a sweep without failures exits 0
    kept = records["8"][0]
    before = kept.stat().st_mtime_ns
    third = _sweep(tmp_path, "third", "dataset.max_atoms=8", "force=true")
    assert third.returncode == 0, third.stderr[-3000:]
    assert kept.stat().st_mtime_ns != before and _cells(tmp_path / "third")["8"]["status"] == "complete"


def test_summary_counts_and_names_failures(tmp_path: Path) -> None:
    def cell(job: int, status: str, reason: str | None = None) -> None:
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        overrides = ["model=vae", f"seed={job}"]
        (folder / CELL_FILE).write_text(json.dumps({"status": status, "reason": reason, "job": job,
                                                    "overrides": overrides}))

    cell(0, "complete")
    cell(1, "skipped")
    cell(2, "failed", "train: NonFiniteLossError: non-finite loss at step 7")
    (tmp_path / "3" / ".hydra").mkdir(parents=True)  # started, never reported (killed)
    summary = summarize(tmp_path)
    assert isinstance(summary, SweepSummary) and not summary.ok
    assert (summary.total, summary.count("complete"), summary.count("skipped")) == (4, 1, 1)
    text = "\n".join(summary.lines())
    assert "2 of 4 cells failed" in text
    # the overrides every cell shares are left out of the failure lines
    assert "#2 seed=2: train: NonFiniteLossError: non-finite loss at step 7" in text
    assert "3: no cell.json" in text


def test_missing_launcher_plugin_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LAUNCHER_PLUGINS, "joblib", ("hydra_plugins.no_such_launcher_plugin", "joblib"))
    message = launcher_problem(["model=vae", "hydra/launcher=joblib"])
    assert message is not None and "\n" not in message
    assert "hydra/launcher=joblib" in message and "pip install 'matgenbench[joblib]'" in message
    assert launcher_problem(["hydra/launcher=basic"]) is None


def test_training_hash_ignores_how_a_model_is_sampled_and_scored() -> None:
    from bench.config import compose, config_hash, training_hash

    base = compose(["model=ddpm"])
    ddim = compose(["model=ddpm", "sampler@model.module.sampler=ddim", "sample.num_samples=7",
                    "metrics.names=[unique]"])
    other_lr = compose(["model=ddpm", "model.module.optimizer.lr=0.123"])
    assert training_hash(ddim) == training_hash(base) and config_hash(ddim) != config_hash(base)
    assert training_hash(other_lr) != training_hash(base)


def test_sampling_a_swept_run_with_another_sampler_finds_its_trained_run(tmp_path: Path) -> None:
    """``run -m`` trains in ``<run_name>__<training hash8>``; ``sample -m`` / ``evaluate -m`` with DDIM find
    it."""
    shrink = [o for o in SHRINK if not o.startswith("model=")]
    env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
           "MATGENBENCH_RESULTS_DIR": str(tmp_path / "results")}

    def cli(command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bench.cli", command, "-m", *shrink, "model=ddpm", "seed=0,1",
             f"hydra.sweep.dir={tmp_path / command}", *args],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)

    trained = cli("run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    ddim = ("sampler@model.module.sampler=ddim", "model.module.sampler.steps=3")
    sampled = cli("sample", *ddim)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "runs").glob("ddpm_tiny_*__*"))
    assert len(runs) == 2 and all((r / "samples+ddim-3.csv").is_file() for r in runs)
    scored = cli("evaluate", *ddim)
    assert scored.returncode == 0, scored.stderr[-3000:]
    records = (tmp_path / "results" / "tiny").glob("*.json")
    variants = sorted(json.loads(p.read_text())["variant"] for p in records)
    tiny = "ddpm-eps-cosine+backbone.d_model=16+backbone.n_heads=2+backbone.n_layers=1"  # SHRINK's widths
    assert variants == [tiny] * 2 + [f"{tiny}+ddim-3"] * 2


def test_no_trained_run_is_found_for_an_untrained_config(tmp_path: Path) -> None:
    from bench.config import compose
    from bench.rundirs import find_trained_run

    cfg = compose(["model=ddpm", f"paths.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no trained run for this config"):
        find_trained_run(cfg)  # no runs folder at all
    folder = tmp_path / "runs" / f"{cfg.run_name}__deadbeef"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    (folder / "codec.json").write_text("{}")
    (folder / "config.yaml").write_text("seed: 99\nmodel: {name: ddpm}\n")  # another training config
    with pytest.raises(FileNotFoundError, match="no trained run for this config"):
        find_trained_run(cfg)


def test_speed_settings_do_not_change_the_hash_and_older_records_are_still_found(tmp_path: Path) -> None:
    from bench.config import compose, config_hash, resolved
    from bench.records import ResultRecord, write_record
    from bench.sweep import find_record

    cfg = compose(["model=vae", "seed=3", f"paths.results_dir={tmp_path}"])
    faster = compose(["model=vae", "seed=3", "metrics.parallel.workers=8",
                      "metrics.parallel.fingerprint_code=matminer"])
    assert config_hash(faster) == config_hash(cfg)
    stricter = compose(["model=vae", "seed=3", "metrics.matcher.convention=default"])
    assert config_hash(stricter) != config_hash(cfg)
    # a record whose stored hash was computed under another rule (here: a made-up one) is found by its config
    stored = resolved(cfg)
    record = ResultRecord(model="vae", family="vae", variant="vae-gaussian", dataset=str(cfg.dataset.name),
                          split_protocol="p", split={"id": "p"}, seed=3, config=stored,
                          config_hash="0123456789abcdef")
    path = write_record(record, tmp_path)
    assert find_record(cfg) == path
    assert find_record(compose(["model=vae", "seed=4", f"paths.results_dir={tmp_path}"])) is None
