"""The property predictor behind ``wdist_prop``: accuracy on a synthetic property, W1, reasons, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from bench.metrics import ReferenceSet, run_metrics

COORDS = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
# charge-balanced A B O3 pairs (A+ B5+, A2+ B4+, A3+ B3+), so every structure is comp_valid
PAIRS = (
    [(a, b) for a in ("Li", "Na", "K", "Rb", "Cs") for b in ("Nb", "Ta", "V", "Sb")]
    + [(a, b) for a in ("Mg", "Ca", "Sr", "Ba", "Pb") for b in ("Ti", "Zr", "Hf", "Sn", "Ge", "Mn")]
    + [(a, b) for a in ("Sc", "Y", "La", "Pr", "Nd") for b in ("Al", "Ga", "Fe", "Cr", "In", "Co")]
)


def perovskites(n: int, seed: int) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a_site, b_site = PAIRS[rng.integers(len(PAIRS))]
        out.append(Structure(Lattice.cubic(rng.uniform(3.8, 4.3)), [a_site, b_site, "O", "O", "O"], COORDS))
    return out


def mean_z(structures: list[Structure]) -> np.ndarray:
    """A property that is an exact function of composition: the mean atomic number."""
    return np.array([np.mean([site.specie.Z for site in s]) for s in structures])


@pytest.fixture(scope="module")
def synthetic() -> ReferenceSet:
    train, test = perovskites(240, seed=0), perovskites(30, seed=1)
    return ReferenceSet(
        "synthetic",
        train=train,
        test=test,
        train_checksum="train-mean-z",
        test_checksum="test-mean-z",
        properties={"train": {"mean_z": mean_z(train)}, "test": {"mean_z": mean_z(test)}},
    )


CFG = {
    "names": ["wdist_prop"],
    "property": "mean_z",
    "property_model": {"crystalnn": False, "max_iter": 200},
    "validity": {"require_fingerprint": False},
}


def test_predictor_learns_a_composition_function(synthetic):
    report = run_metrics([s.copy() for s in synthetic.test], synthetic, cfg=CFG, progress=False)
    entry = report.metrics["wdist_prop"]
    assert entry["property"] == "mean_z" and "HistGradientBoostingRegressor" in entry["model"]
    assert entry["mae_test"] < 0.2 * entry["mae_test_mean_baseline"]
    assert entry["mae_test"] < 0.5  # atomic-number units; the test values spread over ~10
    # identical generated and test sets: identical predictions, W1 = 0
    assert entry["value"] == pytest.approx(0.0, abs=1e-12)
    assert report.per_sample["predicted_mean_z"].notna().all()


def test_ridge_option_and_shifted_set(synthetic):
    heavy = [s for s in perovskites(200, seed=2) if mean_z([s])[0] > 20][:20]
    ridge = {**CFG, "property_model": {"model": "ridge", "crystalnn": False}}
    report = run_metrics(heavy, synthetic, cfg=ridge, progress=False)
    entry = report.metrics["wdist_prop"]
    assert entry["model"].startswith("Ridge") and entry["mae_test"] < entry["mae_test_mean_baseline"]
    assert entry["value"] > 1.0 and entry["wdist_prop_vs_true_test"] > 1.0


def test_crystalnn_features_path(synthetic):
    small = ReferenceSet(
        "synthetic-small",
        train=synthetic.train[:40],
        test=synthetic.test[:6],
        properties={
            "train": {"mean_z": mean_z(synthetic.train[:40])},
            "test": {"mean_z": mean_z(synthetic.test[:6])},
        },
    )
    cfg = {**CFG, "property_model": {"crystalnn": True, "max_iter": 50}, "validity": {}}
    entry = run_metrics(small.test, small, cfg=cfg, progress=False).metrics["wdist_prop"]
    assert "crystalnn" in entry["model"] and entry["value"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "cfg, properties, reason",
    [
        ({"property": None}, {}, "no property named"),
        ({}, {"train": {"other": np.zeros(240)}}, "no training values"),
        ({}, {"train": {"mean_z": np.zeros(3)}}, "training values"),
        ({}, {"train": {"mean_z": np.full(240, np.nan)}}, "finite"),
    ],
)
def test_missing_property_is_nan_with_reason(synthetic, cfg, properties, reason, tmp_path):
    reference = ReferenceSet("s", synthetic.train, synthetic.test, "a", "b", properties=properties)
    report = run_metrics(
        synthetic.test[:3], reference, cfg={**CFG, **cfg}, cache_dir=tmp_path, progress=False
    )
    entry = report.metrics["wdist_prop"]
    assert math.isnan(entry["value"]) and reason in entry["reason"]
    assert entry["prepare_cache"] == "off"  # an unavailable reference is never cached


def test_property_model_cached_on_disk(synthetic, tmp_path):
    first = run_metrics(synthetic.test[:5], synthetic, cfg=CFG, cache_dir=tmp_path, progress=False)
    second = run_metrics(synthetic.test[:5], synthetic, cfg=CFG, cache_dir=tmp_path, progress=False)
    assert first.metrics["wdist_prop"]["prepare_cache"] == "miss"
    assert second.metrics["wdist_prop"]["prepare_cache"] == "hit"
    assert second.values() == first.values()
    (path,) = (tmp_path / "metrics").iterdir()
    assert path.name.startswith(synthetic.train_checksum[:8]) or "-property_model-" in path.name
    cfg = {**CFG, "property_model": {"crystalnn": False, "max_iter": 50}}
    other = run_metrics(synthetic.test[:5], synthetic, cfg=cfg, cache_dir=tmp_path, progress=False)
    assert other.metrics["wdist_prop"]["prepare_cache"] == "miss"  # settings are part of the key
