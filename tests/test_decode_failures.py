"""A sample whose lattice cannot be decoded keeps its atoms: comp_valid scores them (CDVAE's rule), the
samples file keeps them, and the decode thresholds are config values recorded with the samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bench.datasets.codec import CrystalCodec, DecodeFailure
from pymatgen.core import Lattice, Structure

from bench.config import compose, config_hash, resolved, training_hash
from bench.metrics import run_metrics
from bench.metrics.base import ReferenceSet
from bench.structures_io import read_samples, samples_digest, write_samples_csv
from tests.conftest import TINY_TRANSFORMER, tiny_run


def _carbon(a: float = 3.6) -> Structure:
    return Structure(Lattice.cubic(a), ["C", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _set_lattice(codec: CrystalCodec, batch: dict, row: int, params: list[float]) -> None:
    lat = np.array([*np.log(params[:3]), *params[3:]])
    scaled = (lat - codec.lattice_mean) / codec.lattice_std
    batch["lattice"][row] = torch.from_numpy(scaled.astype(np.float32))


def test_lattice_failures_keep_the_decoded_species() -> None:
    codec = CrystalCodec(max_atoms=4).fit([_carbon(3.5), _carbon(3.7)])
    batch = codec.encode([_carbon()] * 4)
    _set_lattice(codec, batch, 0, [4, 4, 4, 90, 90, 179.99])  # nearly flat
    _set_lattice(codec, batch, 1, [2e4, 4, 4, 90, 90, 90])  # longer than 1e4 Å
    batch["atom_types"][2] = 0
    batch["atom_types"][2, :, 0] = 1  # every slot empty: no atoms to keep
    flat, long, empty, ok = codec.decode(batch)
    assert isinstance(flat, DecodeFailure) and "degenerate" in flat.reason and flat.species == ("C", "C")
    assert isinstance(long, DecodeFailure) and "too large" in long.reason and long.species == ("C", "C")
    assert isinstance(empty, DecodeFailure) and empty.species == ()
    assert isinstance(ok, Structure)


def test_thresholds_are_settings_and_survive_the_saved_state() -> None:
    structures = [_carbon(3.5), _carbon(3.7)]
    default = CrystalCodec(max_atoms=4).fit(structures)
    assert "min_cell_shape" not in default.state_dict() and "max_length" not in default.state_dict()
    strict = CrystalCodec(max_atoms=4, min_cell_shape=0.9, max_length=3.0).fit(structures)
    batch = strict.encode([_carbon(3.6)])
    _set_lattice(strict, batch, 0, [2.9, 2.9, 2.9, 90, 90, 60])  # V/abc = 0.866 < 0.9
    (out,) = strict.decode(batch)
    assert isinstance(out, DecodeFailure) and "degenerate" in out.reason
    assert isinstance(default.decode(default.encode([_carbon(2.9)]))[0], Structure)
    clone = CrystalCodec.from_state(strict.state_dict())
    assert clone.decode_settings() == {"min_cell_shape": 0.9, "max_length": 3.0}
    (out,) = clone.decode(strict.encode([_carbon(3.6)]))  # 3.6 Å > max_length 3 Å
    assert isinstance(out, DecodeFailure) and "too large" in out.reason
    with pytest.raises(ValueError, match="min_cell_shape"):
        CrystalCodec(max_atoms=4, min_cell_shape=1.5)


def test_thresholds_in_config_leave_hashes_alone() -> None:
    cfg = compose(["model=vae", "experiment=perov_5_offline", "seed=0"])
    assert cfg.representation.min_cell_shape == 1e-3 and cfg.representation.max_length == 1e4
    assert config_hash(cfg) == "a85ccb16af4d8fa3"
    data = resolved(cfg)
    before = (config_hash(data), training_hash(data))
    for key in ("min_cell_shape", "max_length"):  # a config saved before the keys existed
        data["representation"].pop(key)
    assert (config_hash(data), training_hash(data)) == before
    data["representation"]["max_length"] = 50.0  # a changed threshold is another config
    assert config_hash(data) != before[0] and training_hash(data) != before[1]


def test_samples_file_keeps_the_atoms_and_comp_valid_scores_them(tmp_path: Path) -> None:
    items = [
        _carbon(),
        DecodeFailure("degenerate (nearly flat) cell: V/(abc) = 1.00e-04", 1, ("C",) * 6),
        DecodeFailure("lattice length too large: 2e+04 A", 2, ("Na", "Cl", "Cl")),
        DecodeFailure("empty cell: every slot decoded as empty", 3),
    ]
    path = write_samples_csv(tmp_path / "samples.csv", items, meta={"decode": {"min_cell_shape": 1e-3}})
    back = read_samples(path)
    assert back.structures[1] is None and back.reasons[1].startswith("degenerate")
    assert back.compositions == [None, {"C": 6.0}, {"Na": 1.0, "Cl": 2.0}, None]
    old_style = read_samples(path)
    old_style.compositions = []
    assert samples_digest(back) != samples_digest(old_style)  # the atoms of failures are part of the digest

    reference = ReferenceSet("c", [_carbon(3.5)], [_carbon(3.7)])
    names = {"names": ["struct_valid", "comp_valid", "valid"], "validity": {"require_fingerprint": False}}
    report = run_metrics(back.structures, reference, names, progress=False, compositions=back.compositions)
    flags = report.per_sample.set_index("index")
    # carbon: a single element is comp-valid (CDVAE); NaCl2 is not charge-neutral; no atoms: invalid
    assert flags["comp_valid"].tolist() == [True, True, False, False]
    assert report.metrics["comp_valid"]["value"] == 0.5 and report.metrics["comp_valid"]["version"] == "1.2"
    assert report.metrics["struct_valid"]["value"] == 0.25 and report.metrics["valid"]["value"] == 0.25
    assert flags["formula"].tolist()[1:3] == ["C", "NaCl2"]
    # without the atoms (an old samples file), a decode failure is comp-invalid, as before
    report = run_metrics(back.structures, reference, names, progress=False)
    assert report.metrics["comp_valid"]["value"] == 0.25


def test_a_run_records_the_thresholds_and_scores_failed_samples_on_their_atoms(tmp_path: Path) -> None:
    import csv
    import json

    from bench.run import run

    cfg = compose(tiny_run(tmp_path, "model=vae", "representation.max_length=2.0", *TINY_TRANSFORMER,
                           samples=10))
    _, path = run(cfg)
    data = json.loads(path.read_text())
    assert data["metric_settings"]["decode"] == {"min_cell_shape": 1e-3, "max_length": 2.0}
    assert data["counts"]["n_decoded"] == 0  # every tiny cell is longer than 2 Å
    with open(path.with_suffix(".samples.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    assert all(not r["comp_reason"].startswith("not_constructed") for r in rows)  # scored on their atoms
    assert data["metrics"]["comp_valid"]["n_comp_valid"] == sum(r["comp_valid"] == "True" for r in rows)


def _sr_ti_o3_with_overlap() -> Structure:
    """SrTiO3 with two O sites 4e-5 A apart: pymatgen writes it, but refuses to read the CIF back (the two
    sites merge into one of occupancy 2)."""
    return Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5, 0.5, 1e-5]])


def test_an_unreadable_cif_is_scored_on_its_atoms(tmp_path: Path) -> None:
    path = write_samples_csv(tmp_path / "samples.csv", [_sr_ti_o3_with_overlap(), _carbon()])
    back = read_samples(path)
    assert back.structures[0] is None and back.reasons[0].startswith("unreadable CIF")
    # the whole cell's atoms, from the CIF's _chemical_formula_sum (not the reduced formula column)
    assert back.compositions == [{"Sr": 1.0, "Ti": 1.0, "O": 3.0}, None]
    reference = ReferenceSet("c", [_carbon(3.5)], [_carbon(3.7)])
    names = {"names": ["struct_valid", "comp_valid", "valid"], "validity": {"require_fingerprint": False}}
    report = run_metrics(back.structures, reference, names, progress=False, compositions=back.compositions)
    flags = report.per_sample.set_index("index")
    # Sr2+ Ti4+ O2- is charge-neutral: comp-valid as CDVAE scores atom types; not built, so not struct-valid
    assert flags["comp_valid"].tolist() == [True, True]
    assert flags["struct_valid"].tolist() == [False, True]
    assert flags["formula"].tolist()[0] == "SrTiO3"

    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "a.cif").write_text(_sr_ti_o3_with_overlap().to(fmt="cif"))
    assert read_samples(folder).compositions == [{"Sr": 1.0, "Ti": 1.0, "O": 3.0}]


def test_rescore_accepts_the_digest_taken_before_unreadable_cifs_kept_their_atoms(tmp_path: Path) -> None:
    from bench.rescore import _digest_before_cif_compositions

    path = write_samples_csv(tmp_path / "samples.csv", [_sr_ti_o3_with_overlap(), _carbon()])
    back = read_samples(path)
    old_reader = read_samples(path)
    old_reader.compositions = [None, None]
    assert samples_digest(back) != samples_digest(old_reader)
    assert _digest_before_cif_compositions(back) == samples_digest(old_reader)
    # a decode failure's atoms were always digested: they are not dropped by the older-digest check
    failure = write_samples_csv(tmp_path / "f.csv", [DecodeFailure("empty", 0, ("C",) * 2), _carbon()])
    kept = read_samples(failure)
    assert _digest_before_cif_compositions(kept) == samples_digest(kept)
