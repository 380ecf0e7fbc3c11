"""Result records, atomic writes, sample files and the Markdown board."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench.datasets.codec import DecodeFailure
from pymatgen.core import Lattice, Structure

from bench.io_utils import atomic_write_json
from bench.leaderboard import render_markdown, write_board
from bench.records import ResultRecord, load_records, provenance, record_path, write_record
from bench.structures_io import SampleFileError, read_samples, write_samples_csv


def _record(seed: int, valid: float, status: str = "complete", reason: str | None = None) -> ResultRecord:
    return ResultRecord(
        model="vae", family="vae", variant="vae-gaussian", dataset="perov_5",
        split_protocol="train=val,eval=test (offline)", split={"id": "train-val_eval-test"}, seed=seed,
        status=status, reason=reason,
        metrics={
            "valid": {"value": valid, "direction": "max"}, "wdist_density": {"value": 0.5, "direction": "min"}
        },
        cost={"train_seconds": 10.0, "samples_per_second": 100.0, "parameters": 1000},
        config_hash="abcdef0123456789",
    )


def test_record_round_trip_and_path(tmp_path: Path) -> None:
    record = _record(0, 0.9)
    path = write_record(record, tmp_path)
    assert path == record_path(tmp_path, record)
    assert path.parent.name == "perov_5" and "s0" in path.name and "abcdef01" in path.name
    (loaded_path, loaded), = load_records(tmp_path)
    assert loaded_path == path and loaded == record


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # not serialisable: the old file must survive intact
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "x.json", {"v": math.nan, "w": [1.0, math.inf]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": None, "w": [1.0, None]}


def test_unreadable_record_is_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_record(_record(0, 0.9), tmp_path)
    (tmp_path / "perov_5" / "broken.json").write_text("{not json")
    assert len(load_records(tmp_path)) == 1
    assert "broken.json" in caplog.text


def test_provenance_has_versions_and_hardware() -> None:
    prov = provenance()
    assert prov["versions"]["pymatgen"]
    assert prov["hardware"]["cpu_count"] >= 1


def test_markdown_board_aggregates_seeds_and_shows_failures(tmp_path: Path) -> None:
    for seed, valid in [(0, 0.8), (1, 0.9), (2, 1.0)]:
        write_record(_record(seed, valid), tmp_path)
    failed = _record(3, 0.0, status="failed", reason="train: NonFiniteLossError: non-finite loss at step 7")
    failed.config_hash = "ffff"
    write_record(failed, tmp_path)
    text = write_board(tmp_path, tmp_path / "README.md").read_text()
    assert "## perov_5" in text
    assert "0.900 ± 0.100" in text  # mean ± sample std of 0.8, 0.9, 1.0
    assert "valid ↑" in text and "wdist_density ↓" in text
    assert "non-finite loss at step 7" in text
    assert "| 3 |" in text  # three complete seeds
    assert "No result records" in render_markdown([])


def test_samples_csv_round_trip_keeps_failures(tmp_path: Path) -> None:
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    items = [nacl, DecodeFailure("empty cell", 1), nacl.copy()]
    path = write_samples_csv(tmp_path / "samples.csv", items, meta={"model": "vae"})
    sample_set = read_samples(path)
    assert len(sample_set.structures) == 3 and sample_set.n_constructed == 2
    assert sample_set.structures[1] is None and sample_set.reasons[1] == "empty cell"
    assert sample_set.structures[0].composition.reduced_formula == "NaCl"
    assert sample_set.meta == {"model": "vae"}


def test_cif_folder_and_bad_inputs(tmp_path: Path) -> None:
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    folder = tmp_path / "cifs"
    folder.mkdir()
    nacl.to(filename=str(folder / "a.cif"))
    (folder / "b.cif").write_text("data_garbage\n_cell_length_a x\n")
    sample_set = read_samples(folder)
    assert sample_set.ids == ["a", "b"]
    assert sample_set.structures[0] is not None and sample_set.structures[1] is None
    assert "unreadable" in sample_set.reasons[1]
    with pytest.raises(SampleFileError, match="not found"):
        read_samples(tmp_path / "missing.csv")
    (tmp_path / "nocif.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SampleFileError, match="'cif' column"):
        read_samples(tmp_path / "nocif.csv")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(SampleFileError, match="unsupported"):
        read_samples(tmp_path / "x.parquet")


def test_extxyz_and_cdvae_tensors(tmp_path: Path) -> None:
    import torch

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    pytest.importorskip("ase")
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    ase_write(str(tmp_path / "s.extxyz"), [AseAtomsAdaptor.get_atoms(nacl)] * 2, format="extxyz")
    sample_set = read_samples(tmp_path / "s.extxyz")
    assert sample_set.n_constructed == 2
    assert sample_set.structures[0].composition == nacl.composition

    # CDVAE eval_gen.pt: one evaluation batch holding a 2-atom NaCl primitive cell and a 1-atom Cu cell
    prim = nacl.get_primitive_structure()
    data = {
        "frac_coords": torch.tensor([[*prim.frac_coords.tolist(), [0.0, 0.0, 0.0]]]),
        "atom_types": torch.tensor([[11, 17, 29]]),
        "lengths": torch.tensor([[list(prim.lattice.abc), [3.6, 3.6, 3.6]]]),
        "angles": torch.tensor([[list(prim.lattice.angles), [90.0, 90.0, 90.0]]]),
        "num_atoms": torch.tensor([[2, 1]]),
    }
    torch.save(data, tmp_path / "eval_gen.pt")
    sample_set = read_samples(tmp_path / "eval_gen.pt")
    assert sample_set.ids == ["0-0", "0-1"]
    assert sample_set.structures[0].composition.reduced_formula == "NaCl"
    assert sample_set.structures[1].composition.reduced_formula == "Cu"
    torch.save({"frac_coords": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(SampleFileError, match="missing"):
        read_samples(tmp_path / "bad.pt")


def test_record_config_keeps_no_machine_paths(tmp_path) -> None:
    from bench.config import LOCAL_PATH, compose, config_hash, record_config

    cfg = compose([f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"])
    stored = record_config(cfg)
    assert stored["paths"]["data_dir"] == LOCAL_PATH and stored["paths"]["cache_dir"] == LOCAL_PATH
    assert stored["paths"]["results_dir"] == cfg.paths.results_dir  # output paths stay
    assert str(tmp_path) not in repr(stored)
    assert config_hash(stored) == config_hash(cfg)  # paths never enter the hash


def test_atomic_writes_get_ordinary_permissions(tmp_path) -> None:
    from bench import io_utils

    path = io_utils.atomic_write_text(tmp_path / "r.json", "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == io_utils._FILE_MODE


def test_git_commit_is_read_once_per_process(monkeypatch) -> None:
    from bench import records

    records.code_version.cache_clear()
    calls = []
    monkeypatch.setattr(records, "_git_commit", lambda: calls.append(1) or f"abc{len(calls)}")
    first = records.code_version()
    assert records.provenance()["git_commit"] == first == "abc1" and len(calls) == 1
    records.code_version.cache_clear()


def test_written_records_name_no_machine_paths() -> None:
    """An absolute output directory becomes <output_dir>, other absolute paths <local>/<name>; relative paths
    are kept."""
    from bench.records import scrub_machine_paths

    data = {
        "config": {"paths": {"output_dir": "/srv/me/outputs", "run_dir": "/srv/me/outputs/runs/x__1"}},
        "counts": {"samples_file": "/srv/me/outputs/runs/x__1/samples.csv", "other": "/data/their.csv"},
        "provenance": {
            "argv": ["run", "paths.output_dir=/srv/me/outputs", "samples=/data/their.csv", "seed=0"],
        },
        "note": "valid / unique", "rel": "outputs/runs/x",
    }
    out = scrub_machine_paths(data, "/srv/me/outputs")
    assert out["config"]["paths"] == {"output_dir": "<output_dir>", "run_dir": "<output_dir>/runs/x__1"}
    assert out["counts"] == {
        "samples_file": "<output_dir>/runs/x__1/samples.csv", "other": "<local>/their.csv",
    }
    assert out["provenance"]["argv"] == ["run", "paths.output_dir=<output_dir>", "samples=<local>/their.csv",
                                         "seed=0"]
    assert out["note"] == "valid / unique" and out["rel"] == "outputs/runs/x"
    assert "/srv" not in json.dumps(out) and "/data" not in json.dumps(out)
