"""Tests of the dataset layer: registry, verified files and downloads, cached parsing, the tiny dataset."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bench.datasets import commands, download, loading
from bench.datasets.download import (
    ChecksumMismatchError,
    DatasetUnavailableError,
    cache_path,
    default_cache_dir,
    file_checksums,
    git_blob_sha1,
    resolve_file,
    sha256,
)
from bench.datasets.loading import (
    is_official_protocol,
    load_csv,
    load_split,
    split_protocol,
    split_protocol_id,
)
from bench.datasets.registry import (
    CDVAE_COMMIT,
    DIFFCSP_COMMIT,
    REGISTRY,
    DatasetSpec,
    SplitFile,
    dataset_names,
    get_spec,
)
from bench.datasets.tiny import TINY_SPLITS, tiny_checksums, tiny_structures
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
FILE_DATASETS = ("perov_5", "carbon_24", "mp_20", "mpts_52")


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass data dirs explicitly; an exported MATGENBENCH_DATA_DIR must not change what they see."""
    monkeypatch.delenv("MATGENBENCH_DATA_DIR", raising=False)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the URL opener with one that fails like an offline machine; records the URLs asked for."""
    asked: list[str] = []

    def offline(url: str, timeout: float | None = None) -> io.BytesIO:
        asked.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(download, "urlopen", offline)
    return asked


def _fake_spec(source: Path, name: str = "fake_ds", split: str = "val", **entry: str | None) -> DatasetSpec:
    """A registry-like spec whose one split file is ``source`` (served from a ``file://`` URL)."""
    sums = file_checksums(source)
    split_file = SplitFile(
        split, entry.get("git_blob", sums["git_blob"]), entry.get("sha256", sums["sha256"])
    )
    return dataclasses.replace(
        get_spec("carbon_24"),
        name=name,
        url_template=source.parent.as_uri() + "/{split}.csv",
        files=(split_file,),
    )


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-row CDVAE-style CSV (carbon-like rows, one with a broken CIF), written by the test."""
    good = (
        "# generated using pymatgen\ndata_C\n_symmetry_space_group_name_H-M   'P 1'\n"
        "_cell_length_a   {a}\n_cell_length_b   {a}\n_cell_length_c   {a}\n"
        "_cell_angle_alpha   90.0\n_cell_angle_beta   90.0\n_cell_angle_gamma   90.0\n"
        "_symmetry_Int_Tables_number   1\nloop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n"
        "  1  'x, y, z'\nloop_\n _atom_site_type_symbol\n _atom_site_label\n"
        " _atom_site_symmetry_multiplicity\n"
        " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
        "  C  C0  1  0.0  0.0  0.0  1\n  C  C1  1  0.5  0.5  0.5  1\n"
    )
    df = pd.DataFrame(
        {
            "material_id": ["C-good-1", "C-broken-2", "C-good-3", "C-empty-4"],
            "cif": [
                good.format(a=3.0),
                "data_C\nthis is not a cif\n_cell_length_a x\n",
                good.format(a=3.2),
                "",
            ],
            "energy_per_atom": [-154.1, -154.2, -154.3, -154.4],
            "label": ["x", "y", "z", "w"],
        }
    )
    path = tmp_path_factory.mktemp("small") / "val.csv"
    df.to_csv(path)
    return path


# ---------------------------------------------------------------- registry


def test_registry_has_the_datasets_and_pinned_urls() -> None:
    assert dataset_names() == ["perov_5", "carbon_24", "mp_20", "mpts_52", "tiny"]
    expected = {"perov_5": (5, "heat_ref"), "carbon_24": (24, "energy_per_atom")}
    expected |= {"mp_20": (20, "formation_energy_per_atom"), "mpts_52": (52, "formation_energy_per_atom")}
    expected |= {"tiny": (8, "density")}
    for name, (max_atoms, prop) in expected.items():
        spec = get_spec(name)
        assert spec is REGISTRY[name]
        assert (spec.max_atoms, spec.property) == (max_atoms, prop)
        assert spec.citation and spec.licence and spec.description
        assert spec.splits == ("train", "val", "test")
    for name in FILE_DATASETS:
        spec = get_spec(name)
        commit = DIFFCSP_COMMIT if name == "mpts_52" else CDVAE_COMMIT
        assert spec.url("train") == (
            f"https://raw.githubusercontent.com/{'jiaor17/DiffCSP' if name == 'mpts_52' else 'txie-93/cdvae'}"
            f"/{commit}/data/{name}/train.csv"
        )
        for entry in spec.files:
            assert re.fullmatch(r"[0-9a-f]{40}", entry.git_blob)
            assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    # Values copied from the provenance notes of the data.
    assert get_spec("perov_5").split_file("train").git_blob == "0769074b5d51d293b765c4371b8f55c468c9c9f2"
    assert get_spec("mpts_52").split_file("test").git_blob == "2e8af159618f63be346b6527f155514323964423"
    assert get_spec("carbon_24").split_file("test").sha256 == (
        "386b17c08816f434818d51e46687bf72ff3f92348f3ba24823e4758f1fe8a969"
    )
    assert get_spec("mp_20").split_file("val").sha256 is None


def test_bad_names_are_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown dataset 'perov5'.*perov_5, carbon_24, mp_20, mpts_52, tiny"
    ):
        get_spec("perov5")
    with pytest.raises(ValueError, match=r"no split 'training'.*train, val, test"):
        get_spec("perov_5").split_file("training")
    with pytest.raises(ValueError, match="built in"):
        get_spec("tiny").split_file("train")


def test_package_reexports_the_public_api() -> None:
    import bench.datasets as pkg

    assert pkg.__all__, "bench.datasets should define __all__"
    for name in pkg.__all__:
        assert hasattr(pkg, name), name
    assert pkg.load_split is load_split and pkg.get_spec is get_spec


def test_dataset_configs_match_the_registry() -> None:
    cutoffs = {"perov_5": (0.2, 4), "carbon_24": (0.2, 4), "mp_20": (0.4, 10), "mpts_52": (0.4, 10)}
    for name in dataset_names():
        cfg = OmegaConf.load(REPO_ROOT / "conf" / "dataset" / f"{name}.yaml")
        spec = get_spec(name)
        assert cfg.name == name
        assert (cfg.max_atoms, cfg.property) == (spec.max_atoms, spec.property)
        assert (cfg.train_split, cfg.eval_split) == ("train", "test")
        assert cfg.limit_train is None and cfg.limit_eval is None
        assert "val_split" in cfg
        if name in cutoffs:
            assert (cfg.cov_cutoffs.struct, cfg.cov_cutoffs.comp) == cutoffs[name]
            assert split_protocol(cfg) == ("official", "train-train_eval-test")


def test_split_protocol_labels() -> None:
    official = {"name": "perov_5", "train_split": "train", "eval_split": "test", "limit_train": None}
    label, ident = split_protocol(official)
    assert (label, ident) == ("official", "train-train_eval-test") and is_official_protocol(official)
    offline = OmegaConf.create(official | {"train_split": "val"})
    assert split_protocol(offline).label == "train=val,eval=test (offline, not the official protocol)"
    assert split_protocol(offline).id == split_protocol_id(offline) == "train-val_eval-test"
    capped = official | {"limit_train": 100}
    assert "not the official protocol" in split_protocol(capped).label and not is_official_protocol(capped)
    assert split_protocol_id(capped) == "train-train_eval-test_ltrain-100"
    assert "not a benchmark" in split_protocol(official | {"name": "tiny"}).label


# ---------------------------------------------------------------- checksums and file resolution


@pytest.mark.parametrize("name", ["perov_5", "carbon_24"])
def test_offline_copies_match_the_registry(data_dir: Path, name: str) -> None:
    entry = get_spec(name).split_file("val")
    path = data_dir / name / "val.csv"
    assert git_blob_sha1(path) == entry.git_blob
    assert sha256(path) == entry.sha256
    assert path.stat().st_size == entry.size_bytes


def test_git_blob_matches_git_hash_object(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello\n")
    # `git hash-object` of "hello\n" is a well-known constant.
    assert git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert sha256(path) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATGENBENCH_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MATGENBENCH_CACHE_DIR")
    assert default_cache_dir().name.lower() == "matgenbench"


def test_resolve_from_data_dir(data_dir: Path, tmp_path: Path, no_network: list[str]) -> None:
    path = resolve_file("perov_5", "test", data_dir=data_dir, cache_dir=tmp_path)
    assert path == data_dir / "perov_5" / "test.csv"
    assert not (tmp_path / "datasets").exists() and not no_network


def test_resolve_uses_the_env_data_dir(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATGENBENCH_DATA_DIR", str(data_dir))
    assert (
        resolve_file("carbon_24", "val", cache_dir=tmp_path, download=False)
        == data_dir / "carbon_24" / "val.csv"
    )


def test_checksum_mismatch_is_refused(data_dir: Path, tmp_path: Path, no_network: list[str]) -> None:
    local = tmp_path / "data" / "carbon_24" / "val.csv"
    local.parent.mkdir(parents=True)
    shutil.copyfile(data_dir / "carbon_24" / "val.csv", local)
    with local.open("r+b") as fh:  # flip one byte well inside the file
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0x01]))
    expected = get_spec("carbon_24").split_file("val").sha256
    actual = sha256(local)
    with pytest.raises(ChecksumMismatchError) as info:
        resolve_file("carbon_24", "val", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(local) in message and expected in message and actual in message
    assert not no_network, "a bad local file is refused, never silently replaced by a download"


def test_missing_file_offline_explains_the_way_out(tmp_path: Path, no_network: list[str]) -> None:
    spec = get_spec("perov_5")
    url = spec.url("train")
    with pytest.raises(DatasetUnavailableError) as info:
        resolve_file(spec, "train", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert no_network == [url]
    for needle in (url, "train_split", "MATGENBENCH_DATA_DIR", "paths.data_dir", "perov_5/train.csv"):
        assert needle in message
    assert spec.split_file("train").git_blob in message
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(DatasetUnavailableError, match="downloading is disabled"):
        resolve_file(spec, "train", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", download=False)
    assert len(no_network) == 1, "download=False must not touch the network"
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_download_from_file_url_is_verified_and_cached(small_csv: Path, tmp_path: Path) -> None:
    spec = _fake_spec(small_csv)
    path = resolve_file(spec, "val", data_dir=tmp_path / "nothing", cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "datasets" / "fake_ds" / "val.csv"
    assert path.read_bytes() == small_csv.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.csv"]  # temp file renamed away
    # Second call: served from the cache, not downloaded again.
    offline = dataclasses.replace(spec, url_template="file:///nonexistent/{split}.csv")
    assert resolve_file(offline, "val", cache_dir=tmp_path / "cache", download=False) == path
    # A corrupted cached copy is dropped and fetched again.
    path.write_bytes(b"garbage")
    assert resolve_file(spec, "val", cache_dir=tmp_path / "cache").read_bytes() == small_csv.read_bytes()


def test_download_with_bad_checksum_leaves_nothing(small_csv: Path, tmp_path: Path) -> None:
    spec = _fake_spec(small_csv, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match="0{64}") as info:
        resolve_file(spec, "val", cache_dir=tmp_path / "cache")
    assert spec.url("val") in str(info.value)
    target_dir = cache_path(spec, "val", tmp_path / "cache").parent
    assert not target_dir.exists() or not any(target_dir.iterdir()), "no partial or unverified file is kept"


def test_interrupted_download_leaves_no_partial_file(
    small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(io.BytesIO):
        headers = {"Content-Length": "100000"}

        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise ConnectionResetError("connection dropped (test)")
            return super().read(16)

    monkeypatch.setattr(download, "urlopen", lambda url, timeout=None: Broken(b"x" * 64))
    spec = _fake_spec(small_csv)
    with pytest.raises(DatasetUnavailableError, match="connection dropped"):
        resolve_file(spec, "val", cache_dir=tmp_path / "cache")
    target_dir = cache_path(spec, "val", tmp_path / "cache").parent
    assert not any(target_dir.iterdir())


# ---------------------------------------------------------------- parsing


def test_load_split_with_limit_and_parse_cache(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_split("carbon_24", "val", data_dir=data_dir, cache_dir=tmp_path, limit=25)
    assert (first.name, first.split, len(first), first.n_rows, first.n_skipped) == (
        "carbon_24",
        "val",
        25,
        2032,
        0,
    )
    assert first.ids[0] == "C-148264-7891-51"
    assert set(first.properties) == {"energy_per_atom"}
    assert first.properties["energy_per_atom"].shape == (25,)
    assert np.isclose(first.properties["energy_per_atom"][0], -154.223695)
    assert all(1 <= len(s) <= 24 and s.composition.reduced_formula == "C" for s in first.structures)
    entry = get_spec("carbon_24").split_file("val")
    assert first.checksums == {"git_blob": entry.git_blob, "sha256": entry.sha256}
    assert first.path == data_dir / "carbon_24" / "val.csv"
    assert len(list((tmp_path / "parsed").glob("*.pkl"))) == 1

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parse cache should have been used")

    monkeypatch.setattr(loading, "_parse_rows", no_parsing)
    second = load_split(get_spec("carbon_24"), "val", data_dir=data_dir, cache_dir=tmp_path, limit=40)
    assert len(second) == 40 and second.ids[:25] == first.ids
    assert second.structures[3] == first.structures[3]
    with pytest.raises(AssertionError, match="parse cache"):  # other options are another cache entry
        load_split("carbon_24", "val", data_dir=data_dir, cache_dir=tmp_path, niggli=True)


def test_bad_rows_are_skipped_counted_and_logged(
    small_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bench.datasets"):
        loaded = load_csv(small_csv, name="toy", split="val", cache_dir=tmp_path)
    assert loaded.ids == ["C-good-1", "C-good-3"]
    assert (loaded.n_rows, loaded.n_skipped) == (4, 2)
    assert [i for i, _ in loaded.skipped] == ["C-broken-2", "C-empty-4"]
    assert all(reason for _, reason in loaded.skipped)
    np.testing.assert_allclose(loaded.properties["energy_per_atom"], [-154.1, -154.3])
    assert set(loaded.properties) == {"energy_per_atom"}  # index and text columns are not properties
    assert "skipped 2 of 4" in caplog.text and "C-broken-2" in caplog.text
    # The count is reported again when the rows come from the parse cache.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bench.datasets"):
        again = load_csv(small_csv, name="toy", split="val", cache_dir=tmp_path)
    assert again.n_skipped == 2 and "C-broken-2" in caplog.text


def test_load_split_accepts_a_spec_and_niggli(small_csv: Path, tmp_path: Path) -> None:
    spec = _fake_spec(small_csv)
    loaded = load_split(spec, "val", data_dir=small_csv.parent.parent, cache_dir=tmp_path, limit=1)
    assert loaded.name == "fake_ds" and loaded.ids == ["C-good-1"] and loaded.n_skipped == 2
    reduced = load_split(spec, "val", cache_dir=tmp_path, niggli=True)
    assert reduced.niggli and len(reduced.structures[0]) == 2
    with pytest.raises(ValueError, match="limit"):
        load_split(spec, "val", cache_dir=tmp_path, limit=-1)


# ---------------------------------------------------------------- tiny dataset


def test_tiny_dataset_is_valid_and_deterministic() -> None:
    spec = get_spec("tiny")
    ids: set[str] = set()
    total = 0
    for split in TINY_SPLITS:
        loaded = load_split("tiny", split)
        assert len(loaded) >= 5 and loaded.n_skipped == 0 and loaded.path is None
        assert loaded.checksums == tiny_checksums(split)
        assert set(loaded.properties) == {"density"} and np.all(loaded.properties["density"] > 0)
        assert not ids & set(loaded.ids)
        ids |= set(loaded.ids)
        total += len(loaded)
        for s in loaded.structures:
            assert 1 <= len(s) <= spec.max_atoms
            assert s.is_ordered
            dist = s.distance_matrix + np.eye(len(s)) * 1e9
            assert dist.min() > 1.0, s.composition
        assert [s.composition for s in tiny_structures(split)] == [s.composition for s in loaded.structures]
    assert 35 <= total <= 45
    assert len({tiny_checksums(s)["sha256"] for s in TINY_SPLITS}) == 3
    assert len(load_split("tiny", "train", limit=3)) == 3
    with pytest.raises(ValueError, match="no split"):
        tiny_structures("training")


# ---------------------------------------------------------------- commands


def test_list_verify_fetch(data_dir: Path, tmp_path: Path, no_network: list[str]) -> None:
    rows = commands.list_rows(data_dir=data_dir, cache_dir=tmp_path)
    by_key = {(r["name"], r["split"]): r for r in rows}
    assert by_key[("perov_5", "val")]["present"] == "data_dir" and by_key[("perov_5", "val")]["rows"] == 3787
    assert by_key[("mp_20", "train")]["present"] == "missing"
    assert by_key[("mp_20", "train")]["url"] == get_spec("mp_20").url("train")
    assert by_key[("tiny", "val")]["present"] == "builtin"

    checks = commands.verify("carbon_24", data_dir=data_dir, cache_dir=tmp_path)
    status = {r["split"]: (r["ok"], r["status"]) for r in checks}
    assert status == {"train": (False, "missing"), "val": (True, "ok"), "test": (True, "ok")}
    assert all(r["expected"] == r["actual"] for r in checks if r["ok"])

    assert set(commands.fetch("perov_5", ["val", "test"], data_dir=data_dir, cache_dir=tmp_path)) == {
        "val",
        "test",
    }
    with pytest.raises(DatasetUnavailableError, match="1 of 3"):
        commands.fetch("perov_5", None, data_dir=data_dir, cache_dir=tmp_path)

    assert [r["present"] for r in checks] == [False, True, True]
    out = io.StringIO()
    table = commands.render_table(checks, title="verify", console=Console(file=out, width=300))
    assert isinstance(table, Table) and table.row_count == len(checks)
    assert "carbon_24" in out.getvalue() and "missing" in out.getvalue()
