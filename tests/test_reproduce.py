"""``matgenbench reproduce``: a cheap record re-run end to end, tolerances, refusals, and the published
comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import compose
from bench.reproduce import (
    EXACT_TOLERANCE,
    compare_metrics,
    compare_published,
    main,
    render_published,
    tolerance,
)
from tests.conftest import TINY_TRANSFORMER, tiny_run

TINY = list(TINY_TRANSFORMER)


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete record of a 6-step VAE on the built-in tiny dataset."""
    from bench.run import run

    tmp = tmp_path_factory.mktemp("original")
    cfg = compose(tiny_run(tmp, "model=vae", "seed=1", *TINY, steps=6, samples=12, sample_batch=5))
    _, path = run(cfg)
    assert path is not None
    return path


def _edited(record: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(record.read_text())
    edit(data)
    out = tmp_path / record.name
    out.write_text(json.dumps(data))
    return out


def test_a_cheap_record_reproduces_exactly(tiny_record: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = tiny_record.read_bytes()
    rc = main([str(tiny_record), "--out", str(tmp_path / "re")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "exact (same structures generated)" in out and "OUTSIDE" not in out
    report = json.loads((tmp_path / "re" / "reproduce.json").read_text())
    assert report["ok"] and report["mode"].startswith("exact") and report["config_hash_matches"]
    recorded = json.loads(before)["metrics"]
    assert {c["name"] for c in report["checks"]} == set(recorded)
    assert all(c["tolerance"] == EXACT_TOLERANCE for c in report["checks"])
    assert Path(report["rerun_record"]).is_file()
    assert tiny_record.read_bytes() == before  # the original record is never overwritten


def test_a_metric_outside_its_tolerance_fails(tiny_record: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def shift(data):
        data["metrics"]["struct_valid"]["value"] = data["metrics"]["struct_valid"]["value"] - 0.5

    rc = main([str(_edited(tiny_record, tmp_path, shift)), "--out", str(tmp_path / "re")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "OUTSIDE" in out and "outside: struct_valid" in out


def test_other_data_are_refused_before_training(tiny_record: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def other_data(data):
        data["data_checksums"]["train"]["sha256"] = "0" * 64

    rc = main([str(_edited(tiny_record, tmp_path, other_data)), "--out", str(tmp_path / "re")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "differ" in err and "tiny/train" in err and "0" * 64 in err
    assert not (tmp_path / "re" / "run").exists()


def test_failed_and_missing_records_are_refused(tiny_record: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def failed(data):
        data["status"], data["reason"] = "failed", "train: RuntimeError: boom"

    assert main([str(_edited(tiny_record, tmp_path, failed))]) == 2
    assert "only complete records" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "no record at" in capsys.readouterr().err


def test_tolerances_exact_and_statistical() -> None:
    recorded = {"valid": {"value": 0.80}, "wdist_density": {"value": 0.2}, "jsd_spacegroup": {"value": None}}
    rerun = {"valid": {"value": 0.84}, "wdist_density": {"value": 0.33}, "jsd_spacegroup": {"value": None}}
    exact = {c.name: c.ok for c in compare_metrics(recorded, rerun, exact=True)}
    assert exact == {"valid": False, "wdist_density": False, "jsd_spacegroup": True}
    stat = {c.name: c for c in compare_metrics(recorded, rerun, exact=False)}
    assert stat["valid"].ok and stat["valid"].tolerance == pytest.approx(0.05)
    # 0.05 + 50% of 0.2 = 0.15 allowed; 0.13 off
    assert stat["wdist_density"].ok and stat["wdist_density"].tolerance == pytest.approx(0.15)
    assert not compare_metrics({"valid": {"value": 0.8}}, {"valid": {"value": 0.86}}, exact=False)[0].ok
    assert not compare_metrics({"valid": {"value": 0.8}}, {}, exact=False)[0].ok  # a lost metric fails
    assert tolerance("unique", 0.5, exact=True) == (EXACT_TOLERANCE, "exact")


def test_published_comparison_states_protocol_differences(tiny_record: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "perov_5").mkdir(parents=True)

    def as_perov(data, seed):
        data["dataset"], data["seed"] = "perov_5", seed
        data["split"].update({"train": "val", "eval": "test", "official": False, "num_samples": 1000,
                              "id": "train-val_eval-test_n1000"})
        data["metrics"]["struct_valid"]["value"] = 0.9 + 0.02 * seed

    for seed in (0, 1):
        edited = _edited(tiny_record, tmp_path, lambda d, s=seed: as_perov(d, s))
        edited.rename(results / "perov_5" / f"r{seed}.json")
    [comp] = compare_published(results, "cdvae")
    assert comp.dataset == "perov_5" and "struct_valid" in comp.metrics
    [ours] = comp.ours
    cdvae = next(r for r in comp.published if r.model == "CDVAE")
    assert ours.mean("struct_valid") == pytest.approx(0.91)
    notes = " | ".join(comp.protocol_notes)
    assert "1,000 per seed, published 10,000" in notes and "'val'" in notes and "2 seed" in notes
    text = render_published([comp])
    assert f"({0.91 - cdvae.mean('struct_valid'):+.3g})" in text
    with pytest.raises(Exception, match="unknown published table"):
        compare_published(results, "nope")
    assert main(["--published", "cdvae", "--results", str(tmp_path / "empty")]) == 2


def test_a_reference_record_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.references import score_reference

    cfg = compose([
        "dataset=tiny", "logger=none", "reference=random", "sample.num_samples=10", "seed=4",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.leaderboard_dir={tmp_path / 'board'}", "record.regenerate_board=false",
    ])
    record, path = score_reference(cfg)
    assert record.kind == "reference" and path is not None
    assert main([str(path), "--out", str(tmp_path / "re")]) == 0
    report = json.loads((tmp_path / "re" / "reproduce.json").read_text())
    assert report["mode"].startswith("exact") and report["ok"]
