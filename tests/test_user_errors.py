"""Honest outputs from the command line: zero samples are refused, every user mistake is one line, ``list``
shows what exists, external samples are named after their file, ad-hoc runs stay off the published board,
and the leaderboard's data layer does not import its presentation layer. Subprocesses of the CLI, as in
tests/test_reliability.py."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import PUBLISHED_RESULTS_DIR, compose, leaderboard_dir, results_dir
from tests.conftest import REPO_ROOT


def _cli(tmp_path: Path, *args: str, results_env: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MATGENBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    env.pop("MATGENBENCH_RESULTS_DIR", None)
    if results_env:
        env["MATGENBENCH_RESULTS_DIR"] = str(tmp_path / "results")
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)


def _one_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in err and err.count("\n") == 0, err[-2000:]
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(("args", "needles"), [
    (("train", "dataset=tiny", "dataset.train_split=vall"),
     ("has no split 'vall' (did you mean val?)", "valid splits: train, val, test")),
    (("train", "dataset=tiny", "trainer.max_steps=-5"), ("trainer.max_steps=-5", "-1 for no limit")),
    (("sample", "dataset=tiny", "model=vae", "sampler@model.module.sampler=ddim"),
     ("model 'vae' has no sampler to replace", "ddpm, diffcsp, flowmm")),
    (("sample", "dataset=tiny", "model=ddpm", "sampler=ddim"),
     ("write sampler@model.module.sampler=ddim",)),
    (("run", "dataset=tiny", "sample.num_samples=0"), ("sample.num_samples=0: zero samples give no result",)),
])
def test_config_mistakes_are_one_line_before_anything_runs(tmp_path: Path, args, needles) -> None:
    err = _one_line(_cli(tmp_path, *args), 2, *needles)
    assert "+sampler" not in err  # Hydra's own hint (append a default) is the wrong advice here
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs" / "runs").exists()


def test_unknown_dataset_in_datasets_commands_is_one_line(tmp_path: Path) -> None:
    for action in ("verify", "fetch"):
        _one_line(_cli(tmp_path, "datasets", action, "perov5"), 2, "unknown dataset 'perov5'", "perov_5")


def test_lightning_refusals_are_user_errors() -> None:
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from bench.cli import _user_error

    message = _user_error(MisconfigurationException("`max_steps` must be a non-negative integer or -1"))
    assert message == "MisconfigurationException: `max_steps` must be a non-negative integer or -1"


@pytest.mark.parametrize("content", ["", "id,cif\n"])
def test_zero_samples_are_refused_not_scored(tmp_path: Path, content: str) -> None:
    samples = tmp_path / "empty.csv"
    samples.write_text(content)
    result = _cli(tmp_path, "evaluate", "dataset=tiny", f"samples={samples}", "record.regenerate_board=false")
    err = _one_line(result, 1, "SampleFileError", str(samples))
    assert "no samples" in err or "empty" in err
    assert not (tmp_path / "results").exists()  # no record, not even a NaN one


def test_external_samples_are_named_after_their_file(tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    from bench.evaluate import evaluate

    samples = tmp_path / "their_model.csv"
    cif = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    samples.write_text("id,cif\n" + "".join(f'{i},"{cif}"\n' for i in range(3)))
    cfg = compose(["dataset=tiny", f"samples={samples}", "metrics.names=[struct_valid]",
                   f"paths.results_dir={tmp_path / 'results'}", "record.regenerate_board=false"])
    record, path = evaluate(cfg)
    assert (record.model, record.variant, record.family, record.kind) == (
        "their_model", "their_model", "external", "external")
    assert record.model != cfg.model.name and "their_model" in path.name
    named = compose(["dataset=tiny", f"samples={samples}", "evaluate.model_name=theirs",
                     "metrics.names=[struct_valid]", f"paths.results_dir={tmp_path / 'r2'}"])
    assert evaluate(named)[0].model == "theirs"


def test_ad_hoc_runs_stay_local_pinned_experiments_publish(tmp_path: Path) -> None:
    ad_hoc = compose(["dataset=tiny", f"paths.output_dir={tmp_path}", "paths.results_dir=null"])
    assert ad_hoc.protocol is None
    assert results_dir(ad_hoc) == tmp_path / "results" and leaderboard_dir(ad_hoc) == tmp_path / "leaderboard"
    pinned = compose(["experiment=perov_5_offline", "paths.results_dir=null"])
    assert results_dir(pinned) == PUBLISHED_RESULTS_DIR and leaderboard_dir(pinned) == Path("leaderboard")
    forced = compose(["dataset=tiny", "record.publish=true", "paths.results_dir=null"])
    assert results_dir(forced) == PUBLISHED_RESULTS_DIR
    kept = compose(["experiment=perov_5_offline", "record.publish=false", "paths.results_dir=null",
                    f"paths.output_dir={tmp_path}"])
    assert results_dir(kept) == tmp_path / "results"
    explicit = compose(["dataset=tiny", f"paths.results_dir={tmp_path / 'x'}"])
    assert results_dir(explicit) == tmp_path / "x" and leaderboard_dir(explicit) == tmp_path / "leaderboard"


def test_an_ad_hoc_evaluate_leaves_the_tracked_board_alone(tmp_path: Path) -> None:
    """From a fresh folder with no results setting: the record and the rebuilt board land under outputs/."""
    from pymatgen.core import Lattice, Structure

    samples = tmp_path / "mine.csv"
    cif = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    samples.write_text(f'id,cif\n0,"{cif}"\n')
    (tmp_path / "leaderboard").mkdir()
    result = _cli(tmp_path, "evaluate", "dataset=tiny", f"samples={samples}", "metrics.names=[struct_valid]",
                  results_env=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "outputs" / "results" / "tiny").glob("mine__*.json"))
    assert (tmp_path / "outputs" / "leaderboard" / "README.md").is_file()
    assert list((tmp_path / "leaderboard").iterdir()) == []  # nothing written where the tracked board lives


def test_list_shows_models_datasets_experiments_samplers_metrics(tmp_path: Path) -> None:
    result = _cli(tmp_path, "list")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for section in ("models (", "datasets (", "experiments (", "samplers (", "metrics ("):
        assert section in out
    vae = next(line for line in out.splitlines() if line.split()[:1] == ["vae"])
    assert "vae-gaussian" in vae and "Kingma & Welling (2014)" in vae  # paper from the class
    assert any(line.split()[:3] == ["vun_rate", "↑", "max"] for line in out.splitlines())
    assert any(line.split()[:3] == ["memorized", "↓", "min"] for line in out.splitlines())
    assert any(line.split()[:1] == ["perov_5_offline"] for line in out.splitlines())
    assert any(line.split()[:1] == ["ddim"] for line in out.splitlines())
    from bench.catalog import models

    torch_free = models(papers=False)
    assert {m["name"] for m in torch_free} >= {"vae", "wgan_gp", "ddpm", "realnvp"}
    assert all(m["paper"] == "" for m in torch_free)


def test_leaderboard_data_layer_does_not_import_the_presentation_layer() -> None:
    data = ("aggregate", "stats", "precision", "board", "schema", "published")
    presentation = {"format", "markdown", "html", "terminal", "svg", "summary", "build"}
    for name in data:
        tree = ast.parse((REPO_ROOT / "bench" / "leaderboard" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        bad = {m for m in imported
               if m.startswith("bench.leaderboard.") and m.rsplit(".", 1)[1] in presentation}
        assert not bad, f"{name}.py imports {bad}"


def test_a_sweep_missing_its_data_fails_once_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell of this sweep would fail on the same missing file: one message, nothing run, no record."""
    monkeypatch.delenv("MATGENBENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("MATGENBENCH_CACHE_DIR", str(tmp_path / "cache"))
    result = _cli(tmp_path, "run", "-m", "model=vae,ddpm", "seed=0,1,2", "dataset=perov_5,carbon_24",
                  "paths.download=false")
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr
    assert "Traceback" not in err and err.count("this sweep needs") == 1, err[-2000:]
    assert "perov_5/" in err and "(dataset=perov_5)" in err and "no cell was run" in err
    assert "downloading is disabled" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs").exists()
