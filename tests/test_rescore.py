"""Re-scoring ``vun_rate`` of stored records from their per-structure tables (``--vun-from-tables``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.io_utils import atomic_write_json
from bench.rescore import main, rescore_vun

# valid, unique, novel as the evaluate stage writes them (empty: undefined for an invalid structure)
TABLE = """id,valid,unique,duplicate_of,novel
0,True,True,,True
1,True,False,0,True
2,True,True,,False
3,False,,,
4,True,True,,True
"""


def _record(path: Path, status: str = "complete", n: int = 5) -> Path:
    metrics = {
        "valid": {"value": 0.8, "direction": "max", "description": "v", "version": "1.0"},
        "unique": {"value": 0.75, "direction": "max", "description": "u", "version": "1.0",
                   "matcher_convention": "cdvae"},
        "novel": {"value": 0.75, "direction": "max", "description": "n", "version": "1.0"},
    }
    atomic_write_json(path, {"status": status, "metrics": metrics, "counts": {"n_requested": n}})
    return path


def test_rescore_counts_structures_from_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = _record(tmp_path / "d" / "m__p__s0__abc.json")
    record.with_suffix(".samples.csv").write_text(TABLE)
    lonely = _record(tmp_path / "d" / "other__p__s0__def.json")  # no table beside it
    (done, skipped) = sorted(rescore_vun(tmp_path), key=lambda r: r.path.name)
    # by hand: rows 0 and 4 are valid, first of their kind and novel -> 2 of 5; the product was 0.45
    assert done.before == pytest.approx(0.8 * 0.75 * 0.75) and done.after == pytest.approx(0.4)
    entry = json.loads(record.read_text())["metrics"]["vun_rate"]
    assert entry["value"] == 0.4 and entry["n_vun"] == 2 and entry["version"] == "2.0"
    assert entry["rescored_from"] == record.with_suffix(".samples.csv").name
    assert skipped.after is None and "vun_rate" not in json.loads(lonely.read_text())["metrics"]
    before = record.read_text()
    assert main(["--vun-from-tables", str(tmp_path)]) == 0 and record.read_text() == before  # idempotent
    assert "vun_rate 0.450 -> 0.400" in capsys.readouterr().out


def test_rescore_leaves_incomplete_or_mismatched_records_alone(tmp_path: Path) -> None:
    failed = _record(tmp_path / "f.json", status="failed")
    failed.with_suffix(".samples.csv").write_text(TABLE)
    short = _record(tmp_path / "s.json", n=1000)  # the table does not cover every requested sample
    short.with_suffix(".samples.csv").write_text(TABLE)
    outcomes = {r.path.name: r for r in rescore_vun(tmp_path, write=True)}
    assert outcomes["f.json"].after is None and "failed" in outcomes["f.json"].note
    assert outcomes["s.json"].after is None and "5 rows" in outcomes["s.json"].note
    assert main(["--vun-from-tables", str(tmp_path / "missing")]) == 2


def test_a_record_config_is_given_this_machines_paths(tmp_path: Path) -> None:
    from bench.config import compose, config_hash, config_here, resolved

    original = compose(["model=vae", "dataset=tiny", "paths.data_dir=/elsewhere/data"])
    recorded = resolved(original)
    recorded["paths"]["output_dir"] = "/elsewhere/outputs"
    here = config_here(recorded, tmp_path / "data")
    assert here.paths.data_dir == str(tmp_path / "data")
    assert here.paths.output_dir == compose([]).paths.output_dir  # this machine's, not the record's
    assert config_hash(here) == config_hash(original)  # what is computed is untouched
    with_logger = config_here(recorded, None, ["logger=csv"], take=("paths", "logger"))
    assert with_logger.paths.data_dir == compose([]).paths.data_dir
    assert with_logger.logger == compose(["logger=csv"]).logger
    with pytest.raises(ValueError, match="no resolved config"):
        config_here({})


def test_a_file_that_is_not_a_record_is_refused_in_one_line(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other.json"
    atomic_write_json(other, {"status": "complete", "config": {}, "metrics": {}})
    assert main([str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a result record" in err and "other.json" in err
