"""Reference rows (Test / Copy / Random) bracket every metric: scored by the same suite as the models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench.datasets import tiny_structures

from bench.config import compose
from bench.references import random_crystals, reference_samples, score_reference


def _cfg(tmp_path: Path, *overrides: str):
    return compose(["dataset=tiny", "sample.num_samples=8", f"paths.results_dir={tmp_path / 'results'}",
                    f"paths.output_dir={tmp_path / 'out'}", *overrides])


def test_random_crystals_follow_training_marginals() -> None:
    train = tiny_structures("train")
    out = random_crystals(train, 50, np.random.default_rng(0))
    built = [s for s in out if s is not None]
    assert len(out) == 50 and len(built) > 10
    elements = {site.specie.symbol for s in train for site in s}
    sizes = {len(s) for s in train}
    for s in built:
        assert {site.specie.symbol for site in s} <= elements
        assert len(s) in sizes
    again = random_crystals(train, 50, np.random.default_rng(0))
    assert [None if s is None else s.lattice.abc for s in again] == [None if s is None else s.lattice.abc
                                                                     for s in out]


def test_copy_and_test_rows_bracket_novelty(tmp_path: Path) -> None:
    copy, _ = score_reference(_cfg(tmp_path, "reference=copy"))
    test, _ = score_reference(_cfg(tmp_path, "reference=test"))
    rand, path = score_reference(_cfg(tmp_path, "reference=random"))
    assert copy.kind == test.kind == rand.kind == "reference"
    assert (copy.model, test.model, rand.model) == ("Copy", "Test", "Random")
    assert copy.metrics["novel"]["value"] == 0.0  # every copied training structure matches the training split
    assert test.metrics["novel"]["value"] == 1.0  # tiny's splits are disjoint
    assert test.metrics["struct_valid"]["value"] == 1.0
    assert rand.metrics["struct_valid"]["value"] < test.metrics["struct_valid"]["value"]
    assert path is not None and path.exists()
    assert len({copy.config_hash, test.config_hash, rand.config_hash}) == 3


def test_reference_needs_a_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test, copy, random"):
        score_reference(_cfg(tmp_path))
    with pytest.raises(ValueError, match="unknown reference"):
        reference_samples(_cfg(tmp_path), "nope")
