"""The exact matcher prefilters give the results of trying every pair, on real Carbon-24 rows."""

from __future__ import annotations

import pytest

from bench.metrics import MatcherSettings, run_metrics
from bench.metrics.base import ReferenceSet
from bench.metrics.matching import FormulaIndex, build_matcher


@pytest.fixture(scope="module")
def carbon(data_dir):
    from bench.datasets import load_split

    test = load_split("carbon_24", "test", data_dir=data_dir).structures
    val = load_split("carbon_24", "val", data_dir=data_dir).structures
    return test, val


def test_lattice_prefilter_never_rejects_a_match(carbon):
    """Pair by pair: whenever the matcher says yes, the prefilter let the pair through."""
    test, val = carbon
    matcher = build_matcher(MatcherSettings())
    index = FormulaIndex(val[:120], matcher)
    n_pairs = n_matches = 0
    for q in test[:12]:
        reduced = index.reduce(q)
        lattice = index.scaled_lattice(reduced)
        for pos in range(len(index)):
            target = index.reduced(pos)
            if len(target) != len(reduced):
                continue
            n_pairs += 1
            fits = matcher.fit(reduced, target, skip_structure_reduction=True)
            n_matches += bool(fits)
            if fits:
                assert index.lattice_can_map(lattice, index._lattice(pos)), pos
    assert n_pairs > 100 and n_matches > 5


def _compare(generated, train, test):
    reference = ReferenceSet("carbon_24", train=train, test=test)
    cfg = {"names": ["unique", "novel", "test_recall"], "validity": {"require_fingerprint": False}}
    fast = run_metrics(generated, reference, cfg=cfg, progress=False)
    plain = run_metrics(generated, reference, cfg={**cfg, "matcher": {"prefilter": False}}, progress=False)
    assert fast.values() == plain.values()
    for col in ("unique", "duplicate_of", "novel", "novel_match_id"):
        assert (
            fast.per_sample[col].astype(object).tolist() == plain.per_sample[col].astype(object).tolist()
        ), col
    return fast, plain


def test_prefiltered_novelty_and_uniqueness_equal_plain_scan(carbon):
    test, val = carbon
    fast, plain = _compare(test[:16] + test[:2], val[:80], test[:6])  # two exact duplicates for uniqueness
    assert 0 < fast.values()["novel"] < 1 and fast.values()["unique"] < 1
    for name in ("novel", "unique", "test_recall"):  # the prefilter skipped matcher calls
        fast_calls, plain_calls = fast.metrics[name]["matcher_calls"], plain.metrics[name]["matcher_calls"]
        assert fast_calls["n_fits"] <= plain_calls["n_fits"], name
    assert fast.metrics["novel"]["matcher_calls"]["n_pruned"] > 0
    assert (
        fast.metrics["novel"]["matcher_calls"]["n_fits"]
        < plain.metrics["novel"]["matcher_calls"]["n_fits"] / 3
    )


@pytest.mark.slow
def test_prefiltered_equal_plain_scan_larger(carbon):
    test, val = carbon
    _compare(test[:80] + test[:8], val[:400], test[:40])


def test_parallel_first_matches_equal_serial(carbon):
    from bench.metrics import ParallelSettings
    from bench.metrics.matching import first_matches

    test, val = carbon
    matcher = build_matcher(MatcherSettings())
    queries = test[:24]
    serial_index, pooled_index = FormulaIndex(val[:150], matcher), FormulaIndex(val[:150], matcher)
    serial = first_matches(serial_index, queries, settings=ParallelSettings(workers=1))
    pooled = first_matches(
        pooled_index, queries, settings=ParallelSettings(workers=2, chunk_size=2, min_parallel=0)
    )
    assert serial == pooled and any(h is not None for h in serial) and any(h is None for h in serial)
    assert pooled_index.stats() == serial_index.stats()  # counters gathered back from the workers
