"""The metrics table ``matgenbench run`` prints shows the Test and Random values of the same protocol beside
the run's own, says where they come from, and says how to make them when there are none. No training: the
records are written by hand."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.evaluate import metrics_table
from bench.records import ResultRecord, write_record


def _split(protocol: str | None, n: int = 1000) -> dict[str, Any]:
    ident = f"train-val_eval-test_n{n}"
    return {"train": "val", "eval": "test", "val": None, "official": False, "protocol": protocol,
            "num_samples": n, "limit_train": None, "limit_eval": None,
            "label": f"{protocol or 'ad hoc'}: train=val,eval=test, {n:,} samples",
            "id": f"{protocol}__{ident}" if protocol else ident}


def _record(model: str, protocol: str | None, valid: float, *, seed: int = 0, kind: str = "run",
            created: str = "2026-01-01T00:00:00+00:00", n: int = 1000) -> ResultRecord:
    split = _split(protocol, n)
    return ResultRecord(
        model=model, family="reference" if kind == "reference" else "diffusion", variant=model,
        dataset="perov_5", split_protocol=split["label"], split=split, seed=seed, kind=kind,  # type: ignore[arg-type]
        metrics={"valid": {"value": valid, "direction": "max", "version": "1"},
                 "wdist_density": {"value": valid / 10, "direction": "min", "version": "1"},
                 "cov_recall": {"value": None, "direction": "max", "version": "1"}},
        config_hash=f"{created[:4]}{model}{protocol}{seed}", created=created,
    )


def _references(root: Path, protocol: str | None, test: float = 0.986, random: float = 0.852) -> Path:
    write_record(_record("Test", protocol, test, kind="reference"), root)
    write_record(_record("Random", protocol, random, kind="reference"), root)
    return root


def _row(table: str, metric: str) -> list[str]:
    line = next(line for line in table.splitlines() if re.search(rf"[│|] {metric}\s", line))
    return [cell.strip() for cell in re.split(r"[│|]", line) if cell.strip()]


def _header(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if "metric" in line and "value" in line)
    return [cell.strip() for cell in re.split(r"[┃│|]", line) if cell.strip()]


def test_reference_values_of_the_same_protocol_sit_beside_the_run(tmp_path: Path) -> None:
    results = _references(tmp_path / "results", "perov_5_offline")
    _references(results, "perov_5_offline_12k", test=0.5, random=0.1)  # another protocol: never used
    table = metrics_table(_record("ddpm", "perov_5_offline", 0.70), [results])
    assert _header(table) == ["metric", "value", "Test", "Random"]
    assert _row(table, "valid") == ["valid", "0.7000", "0.9860", "0.8520", "↑"]
    assert _row(table, "wdist_density") == ["wdist_density", "0.0700", "0.0986", "0.0852", "↓"]
    assert _row(table, "cov_recall") == ["cov_recall", "n/a", "–", "–", "↑"]  # no value: a dash, not 0
    note = table.strip().splitlines()[-1]
    assert "reference rows of this protocol (perov_5_offline__train-val_eval-test_n1000)" in note
    assert "no pinned protocol" not in note


def test_seeds_of_a_reference_are_averaged_newest_record_first(tmp_path: Path) -> None:
    results = _references(tmp_path / "results", "p")
    write_record(_record("Random", "p", 0.7, seed=1, kind="reference"), results)
    old = _record("Random", "p", 0.0, seed=1, kind="reference", created="2025-01-01T00:00:00+00:00")
    write_record(old, results)  # an older record of the same seed: superseded
    table = metrics_table(_record("ddpm", "p", 0.70), [results])
    assert _row(table, "valid")[3] == "0.7760"  # mean of 0.852 and 0.7


def test_an_ad_hoc_run_falls_back_to_a_pinned_protocol_on_the_same_splits_and_says_so(tmp_path: Path) -> None:
    results = _references(tmp_path / "results", "perov_5_offline", test=0.9, random=0.2)
    _references(results, "perov_5_offline_12k")
    write_record(_record("Test", "a_test_only", 0.3, kind="reference"), results)  # fewer references
    write_record(_record("Test", "other", 0.1, kind="reference", n=500), results)  # another sample count
    table = metrics_table(_record("ddpm", None, 0.70), [results])
    # both full protocols qualify: the first by id ("perov_5_offline_12k__" sorts before "perov_5_offline__")
    assert _row(table, "valid") == ["valid", "0.7000", "0.9860", "0.8520", "↑"]
    note = " ".join(table.split())
    assert "from protocol perov_5_offline_12k__train-val_eval-test_n1000" in note
    assert "this run has no pinned protocol" in note
    # a pinned run never borrows another protocol's references
    pinned = metrics_table(_record("ddpm", "perov_5_offline_30k", 0.70), [results])
    assert "Test" not in _header(pinned)


def test_without_references_the_table_is_as_before_plus_how_to_make_them(tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    table = metrics_table(_record("ddpm", "perov_5_offline", 0.70), [empty])
    assert _header(table) == ["metric", "value"]
    assert _row(table, "valid") == ["valid", "0.7000", "↑"]
    lines = table.strip().splitlines()
    assert lines[-1].startswith("No Test/Random reference of this protocol (perov_5_offline__")
    assert lines[-1].endswith("matgenbench reference -m experiment=perov_5_offline reference=test,random")
    ad_hoc = metrics_table(_record("ddpm", None, 0.70, n=200), [empty]).strip().splitlines()[-1]
    assert ad_hoc.endswith(
        "matgenbench reference -m dataset=perov_5 dataset.train_split=val dataset.eval_split=test "
        "sample.num_samples=200 reference=test,random"
    )


def test_the_run_s_own_results_folder_is_searched_by_default(tmp_path: Path) -> None:
    results = _references(tmp_path / "mine", None)  # ad-hoc references beside an ad-hoc run
    record = _record("ddpm", None, 0.70)
    record.config = {"paths": {"results_dir": str(results), "output_dir": str(tmp_path)}}
    table = metrics_table(record)
    assert _row(table, "valid") == ["valid", "0.7000", "0.9860", "0.8520", "↑"]
    assert f"from {results}/perov_5" in " ".join(table.split())


def test_a_reference_record_shows_the_other_reference_only(tmp_path: Path) -> None:
    results = _references(tmp_path / "results", "p")
    table = metrics_table(_record("Test", "p", 0.986, kind="reference"), [results])
    assert _header(table) == ["metric", "value", "Random"]
