"""Known-answer tests of the fingerprint metrics (CDVAE COV, AMSD/AMCD, diversity), the fingerprint validity
rule, ``test_recall`` and the worker pool."""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

import bench.metrics.fingerprints as fingerprints
from bench.metrics import (
    REGISTRY,
    GeneratedSet,
    MetricSettings,
    ParallelSettings,
    ReferenceSet,
    compute_fingerprints,
    run_metrics,
)
from bench.metrics.coverage import nearest_distances
from bench.metrics.settings import FINGERPRINT_NAMES

COV = {"struct": 0.2, "comp": 4}
COVERAGE_NAMES = [
    "cov_recall",
    "cov_precision",
    "amsd_recall",
    "amsd_precision",
    "amcd_recall",
    "amcd_precision",
]


@functools.cache
def _perovskite(a: float, a_site: str, b_site: str) -> Structure:
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"], coords)


def perovskite(a: float = 3.905, a_site: str = "Sr", b_site: str = "Ti") -> Structure:
    return _perovskite(a, a_site, b_site).copy()


def bcc(element: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [element, element], [[0, 0, 0], [0.5, 0.5, 0.5]])


def too_close() -> Structure:
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])


def perovskites() -> list[Structure]:
    return [
        perovskite(a_site="Sr"),
        perovskite(a=4.0, a_site="Ba"),
        perovskite(a=3.8, a_site="Ca"),
        perovskite(a=4.1, a_site="Ba", b_site="Zr"),
    ]


def run(generated, reference, names, **cfg):
    return run_metrics(generated, reference, cfg={"names": names, **cfg}, progress=False)


@pytest.fixture(autouse=True)
def _fresh_reference_memo():
    """Reference fingerprints are memoised per split object within a process; each test starts clean."""
    fingerprints._REFERENCE_MEMO.clear()
    yield
    fingerprints._REFERENCE_MEMO.clear()


@pytest.fixture(scope="module")
def ref() -> ReferenceSet:
    return ReferenceSet("toy", train=[perovskite(a_site="Pb")], test=perovskites())


# --------------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_shapes_and_cdvae_scaler():
    fp = fingerprints.fingerprint_one(perovskite())
    assert fp.ok and fp.reason == ""
    assert fp.struct.shape == (61,) and fp.comp.shape == (132,)
    means, stds = fingerprints.comp_scaler()
    assert means.shape == stds.shape == (132,) and (stds > 0).all()
    raw = np.full(132, np.nan)
    raw[0] = means[0] + 2 * stds[0]
    scaled = fingerprints.scale_composition(raw)
    assert scaled[0] == pytest.approx(2.0) and (scaled[1:] == 0.0).all()  # NaN -> 0 (CDVAE replace_nan_token)


def test_reference_form_is_niggli_reduced_and_keeps_fingerprint():
    s = perovskite()
    skewed = Structure(Lattice([[3.905, 0, 0], [3.905, 3.905, 0], [0, 0, 3.905]]), s.species, s.cart_coords,
                       coords_are_cartesian=True)  # fmt: skip
    form = fingerprints.cdvae_reference_form(skewed)
    assert form.lattice.abc == pytest.approx((3.905, 3.905, 3.905))
    a = fingerprints.fingerprint_one(skewed, reference_form=True)
    b = fingerprints.fingerprint_one(s)
    np.testing.assert_allclose(a.struct, b.struct, atol=1e-8)


def test_worker_pool_matches_in_process():
    structures = [*perovskites(), None, bcc("W", 3.16)]
    serial = compute_fingerprints(structures, ParallelSettings(workers=1))
    pooled = compute_fingerprints(structures, ParallelSettings(workers=2, chunk_size=1, min_parallel=0))
    assert [f.reason for f in pooled] == [f.reason for f in serial]
    assert serial[4].reason == "not_constructed"
    for a, b in zip(serial, pooled, strict=True):
        if a.ok:
            np.testing.assert_array_equal(a.struct, b.struct)
            np.testing.assert_array_equal(a.comp, b.comp)


def test_numpy_and_matminer_fingerprint_codes_agree():
    rng = np.random.default_rng(3)
    structures = [*perovskites(), bcc("W", 3.16)]
    for s in list(structures):
        noisy = s.cart_coords + rng.normal(0, 0.08, (len(s), 3))
        structures.append(Structure(s.lattice, s.species, noisy, coords_are_cartesian=True))
    numpy_fps = compute_fingerprints(structures, ParallelSettings(workers=1, fingerprint_code="numpy"))
    matminer_fps = compute_fingerprints(structures, ParallelSettings(workers=1, fingerprint_code="matminer"))
    for a, b in zip(numpy_fps, matminer_fps, strict=True):
        assert a.ok and b.ok
        np.testing.assert_allclose(a.struct, b.struct, rtol=0, atol=1e-12)
    assert max(np.abs(fp.struct).max() for fp in numpy_fps) > 0.1  # not all zeros


def test_unknown_fingerprint_code_is_an_error_not_a_failed_structure():
    with pytest.raises(ValueError, match="fingerprint_code"):
        ParallelSettings(fingerprint_code="fortran")
    with pytest.raises(ValueError, match="numpy"):
        fingerprints.fingerprint_one(perovskite(), code="fortran")


def test_nearest_distances_in_blocks_equal_full_matrix():
    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(37, 5)), rng.normal(size=(11, 5))
    full = np.linalg.norm(gen[:, None] - ref[None], axis=-1)
    prec, rec = nearest_distances(gen, ref, chunk=4)
    np.testing.assert_allclose(prec, full.min(1))
    np.testing.assert_allclose(rec, full.min(0))


# ------------------------------------------------------------------------------------ validity rule (CDVAE)


@pytest.fixture
def failing_fingerprint(monkeypatch):
    """CrystalNN raises for structures containing Ba."""
    original = fingerprints.structure_fingerprint

    def fake(structure, code="numpy"):
        if "Ba" in structure.composition:
            raise ValueError("no Voronoi neighbours")
        return original(structure, code)

    monkeypatch.setattr(fingerprints, "structure_fingerprint", fake)


def test_fingerprint_failure_forces_invalid(failing_fingerprint, ref):
    report = run([perovskite(), perovskite(a_site="Ba")], ref, ["struct_valid", "comp_valid", "valid"])
    assert report.values() == {"struct_valid": 1.0, "comp_valid": 1.0, "valid": 0.5}
    assert report.per_sample["fingerprint_ok"].tolist() == [True, False]
    assert report.per_sample["fingerprint_reason"].tolist()[1].startswith("crystalnn_failed: ValueError")
    assert report.counts["n_fingerprint_failed"] == 1 and report.metrics["valid"]["n_fingerprint_failed"] == 1
    lax = run(
        [perovskite(), perovskite(a_site="Ba")], ref, ["valid"], validity={"require_fingerprint": False}
    )
    assert lax.values()["valid"] == 1.0


def test_fingerprint_computed_only_for_otherwise_valid_items(ref, monkeypatch):
    calls = []
    original = fingerprints.fingerprint_one
    monkeypatch.setattr(
        fingerprints, "fingerprint_one", lambda s, *args: calls.append(1) or original(s, *args)
    )
    gset = GeneratedSet([perovskite(), too_close(), None])
    assert gset.flags("valid").tolist() == [True, False, False]
    assert len(calls) == 1  # only the struct- and comp-valid item
    gset.fingerprints()  # coverage wants every constructed item: one more, memoised
    gset.fingerprints()
    assert len(calls) == 2


# -------------------------------------------------------------------------------------------- coverage


def test_cov_of_set_against_itself_is_one(ref):
    report = run([s.copy() for s in ref.test], ref, COVERAGE_NAMES, cov_cutoffs=COV)
    v = report.values()
    assert v["cov_recall"] == 1.0 and v["cov_precision"] == 1.0
    for name in ("amsd_recall", "amsd_precision", "amcd_recall", "amcd_precision"):
        assert v[name] == pytest.approx(0.0, abs=1e-6), name
    entry = report.metrics["cov_recall"]
    assert entry["cov_cutoffs"] == {"struct": 0.2, "comp": 4.0} and entry["n_reference_used"] == 4
    assert report.metrics["amsd_recall"]["direction"] == "min" and entry["direction"] == "max"


def test_cov_of_far_structures_is_zero(ref):
    far = [bcc("Li", 3.5), bcc("W", 3.16)]
    v = run(far, ref, COVERAGE_NAMES, cov_cutoffs=COV).values()
    assert v["cov_recall"] == 0.0 and v["cov_precision"] == 0.0
    assert v["amsd_recall"] > 0.5 and v["amcd_recall"] > 20


def test_cov_precision_divides_by_all_generated(failing_fingerprint, ref):
    # 2 fingerprintable copies, one unfingerprintable (Ba), one None, one invalid but fingerprintable copy
    close = too_close()
    generated = [perovskite(), perovskite(a=3.8, a_site="Ca"), perovskite(a=4.0, a_site="Ba"), None, close]
    report = run(generated, ref, COVERAGE_NAMES, cov_cutoffs=COV)
    entry = report.metrics["cov_precision"]
    assert (
        entry["n_generated"] == 5 and entry["n_generated_used"] == 3
    )  # CDVAE keeps invalid-but-fingerprinted
    assert entry["value"] == pytest.approx(2 / 5)
    assert report.per_sample["cov_precision"].tolist() == [True, True, False, False, False]
    assert math.isnan(report.per_sample["amsd_precision"][2]) and report.per_sample["amsd_precision"][4] > 0
    # the reference lost its Ba perovskites to the same failure: recall counts the remaining two
    assert report.metrics["cov_recall"]["n_reference_failed"] == 2
    assert report.metrics["cov_recall"]["value"] == 1.0


def test_cov_without_cutoffs_is_nan_with_reason(ref):
    report = run([perovskite()], ref, ["cov_recall", "amsd_precision"])
    assert math.isnan(report.metrics["cov_recall"]["value"])
    assert "cov_cutoffs" in report.metrics["cov_recall"]["reason"]
    assert report.metrics["amsd_precision"]["value"] == pytest.approx(0.0, abs=1e-6)  # needs no cutoffs


def test_bad_cutoffs_are_named():
    with pytest.raises(ValueError, match="cov_cutoffs"):
        MetricSettings.from_mapping({"cov_cutoffs": {"struct": 0.2}})
    with pytest.raises(ValueError, match="cov_cutoffs"):
        MetricSettings.from_mapping({"cov_cutoffs": {"struct": 0.2, "comp": 4, "sturct": 1}})
    assert MetricSettings.from_mapping({"cov_cutoffs": {}}).cov_cutoffs is None


# ------------------------------------------------------------------------------------------- diversity


def test_diversity_zero_for_identical_positive_for_different(ref):
    same = run([perovskite() for _ in range(3)], ref, ["comp_div", "struct_div"]).values()
    assert same == {"comp_div": 0.0, "struct_div": pytest.approx(0.0, abs=1e-12)}
    different = run([perovskite(), bcc("W", 3.16), perovskite(a_site="Ba")], ref, ["comp_div", "struct_div"])
    assert different.values()["comp_div"] > 1 and different.values()["struct_div"] > 0.1
    one = run([perovskite()], ref, ["comp_div"])
    assert math.isnan(one.metrics["comp_div"]["value"]) and one.metrics["comp_div"]["reason"]


def test_diversity_uses_valid_items_only(ref):
    v = run([perovskite(), perovskite(), too_close(), None], ref, ["comp_div"]).metrics["comp_div"]
    assert v["value"] == 0.0 and v["n_generated_used"] == 2


# ------------------------------------------------------------------------------------------ test_recall


def test_test_recall_of_test_set_is_one_and_disjoint_is_zero(ref):
    itself = run([s.copy() for s in ref.test], ref, ["test_recall"])
    assert itself.values()["test_recall"] == 1.0 and itself.metrics["test_recall"]["n_matched"] == 4
    half = run([perovskite(), perovskite(a=4.0, a_site="Ba")], ref, ["test_recall"])
    assert half.values()["test_recall"] == 0.5
    disjoint = run([bcc("W", 3.16), perovskite(a_site="Pb")], ref, ["test_recall"])
    assert disjoint.values()["test_recall"] == 0.0
    none_valid = run([too_close(), None], ref, ["test_recall"])
    assert none_valid.values()["test_recall"] == 0.0


def test_test_recall_plain_scan_agrees(ref):
    generated = [perovskite(a=3.95), bcc("W", 3.16), perovskite(a=4.1, a_site="Ba", b_site="Zr")]
    fast = run(generated, ref, ["test_recall"]).values()
    plain = run(generated, ref, ["test_recall"], matcher={"prefilter": False}).values()
    assert fast == plain == {"test_recall": 0.5}


# ----------------------------------------------------------------------------------------- whole suite


def test_new_metrics_registered_with_direction_and_version():
    assert set(FINGERPRINT_NAMES) <= set(REGISTRY)
    for name in FINGERPRINT_NAMES:
        metric = REGISTRY[name](MetricSettings())
        assert metric.name == name and metric.direction in ("max", "min") and metric.description
        assert metric.version


def test_reference_side_cached_on_disk(tmp_path, ref):
    reference = ReferenceSet("toy", ref.train, ref.test, train_checksum="trainsum", test_checksum="testsum")
    cfg = {"names": [*COVERAGE_NAMES, "test_recall", "novel"], "cov_cutoffs": COV}
    generated = [perovskite(), perovskite(a_site="Pb")]
    first = run_metrics(generated, reference, cfg, tmp_path, False)
    assert first.metrics["cov_recall"]["prepare_cache"] == "miss"
    assert {first.metrics[n]["prepare_cache"] for n in COVERAGE_NAMES[1:]} == {"shared"}
    fingerprints._REFERENCE_MEMO.clear()
    second = run_metrics(generated, reference, cfg, tmp_path, False)
    for name in ("cov_recall", "test_recall", "novel"):
        assert second.metrics[name]["prepare_cache"] == "hit", name
    assert second.values() == first.values() and first.values()["novel"] == 0.5
    files = sorted(p.name for p in (tmp_path / "metrics").iterdir())
    test_key = hashlib.sha256(b"testsum").hexdigest()[:16]  # test-only metrics: keyed by the test split
    assert len(files) == 3 and sum(f.startswith(f"{test_key}-") for f in files) == 2


def test_full_config_adds_the_fingerprint_metrics():
    from bench.config import compose
    from bench.metrics.settings import DEFAULT_NAMES

    full = MetricSettings.from_mapping(compose(["metrics=full"]).metrics)
    assert full == MetricSettings(names=DEFAULT_NAMES + FINGERPRINT_NAMES)


def test_every_fingerprint_metric_responds_to_its_input():
    train = [perovskite(a=3.8 + 0.05 * k, a_site=a) for k, a in enumerate(("Sr", "Ba", "Ca") * 4)]
    reference = ReferenceSet(
        "toy",
        train=train,
        test=perovskites(),
        properties={"train": {"a": np.array([s.lattice.a for s in train])}},
    )
    cfg = {
        "names": list(FINGERPRINT_NAMES),
        "cov_cutoffs": COV,
        "property": "a",
        "property_model": {"model": "ridge", "crystalnn": False},  # 12 rows: too few for boosting
    }
    first = run_metrics([s.copy() for s in perovskites()], reference, cfg=cfg, progress=False).values()
    second = [bcc("W", 3.16), bcc("Li", 3.5), perovskite(a=3.8, a_site="La", b_site="Al")]
    other = run_metrics(second, reference, cfg=cfg, progress=False).values()
    for name in FINGERPRINT_NAMES:
        assert not math.isnan(first[name]) and not math.isnan(other[name]), name
        assert first[name] != pytest.approx(other[name]), name
