"""The tabular track's data: a composition table as element fractions plus the target, and the pinned
repeated K-fold (bench.datasets.tabular)."""

from __future__ import annotations

import numpy as np
import pytest
from bench.datasets.composition_codec import ElementVocabulary
from bench.datasets.tabular import (
    CompositionTable,
    fold_view,
    folds_checksum,
    fraction_matrix,
    project_fractions,
    repeated_kfold,
)


def test_repeated_kfold_holds_every_row_out_once_per_repeat() -> None:
    folds = repeated_kfold(23, n_splits=5, n_repeats=3, seed=0)
    assert [f.name for f in folds[:6]] == ["r0f0", "r0f1", "r0f2", "r0f3", "r0f4", "r1f0"]
    assert len(folds) == 15
    for repeat in range(3):
        mine = [f for f in folds if f.repeat == repeat]
        held = np.concatenate([f.test for f in mine])
        assert sorted(held.tolist()) == list(range(23))  # each row held out exactly once
        assert sorted(len(f.test) for f in mine) == [4, 4, 5, 5, 5]  # 23 = 5 + 5 + 5 + 4 + 4
        for f in mine:
            assert not set(f.train.tolist()) & set(f.test.tolist())
            assert len(f.train) + len(f.test) == 23
    # the repeats are different permutations
    assert not np.array_equal(folds[0].test, folds[5].test)


def test_repeated_kfold_is_pinned_by_its_seed() -> None:
    a, b = repeated_kfold(50, 5, 2, seed=0), repeated_kfold(50, 5, 2, seed=0)
    c = repeated_kfold(50, 5, 2, seed=1)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b, strict=True))
    assert folds_checksum(a) == folds_checksum(b) != folds_checksum(c)
    assert folds_checksum(a, "file-a") != folds_checksum(a, "file-b")
    with pytest.raises(ValueError, match="n_splits"):
        repeated_kfold(3, 5, 1, 0)


def test_fraction_matrix_writes_fractions_and_what_falls_outside() -> None:
    vocab = ElementVocabulary(("O", "Na", "Cl", "Fe"))
    fractions, outside = fraction_matrix(["NaCl", "Fe2O3", "KCl"], vocab)
    np.testing.assert_allclose(fractions, [[0, 0.5, 0.5, 0], [0.6, 0, 0, 0.4], [0, 0, 0.5, 0]])
    np.testing.assert_allclose(outside, [0, 0, 0.5])  # K is outside the vocabulary


def test_fold_view_fits_the_vocabulary_on_training_rows_and_counts_what_it_cannot_write() -> None:
    formulas = ["NaCl", "KCl", "NaBr", "KBr", "LiF", "NaF"]
    table = CompositionTable("toy", formulas, np.arange(6.0))
    folds = repeated_kfold(6, 3, 1, seed=0)
    lif = formulas.index("LiF")
    fold = next(f for f in folds if lif in f.test)
    view = fold_view(table, fold)
    elements = {"NaCl": {"Na", "Cl"}, "KCl": {"K", "Cl"}, "NaBr": {"Na", "Br"}, "KBr": {"K", "Br"},
                "LiF": {"Li", "F"}, "NaF": {"Na", "F"}}
    train_elements = set().union(*(elements[formulas[int(i)]] for i in fold.train))
    assert set(view.columns[:-1]) == train_elements and view.columns[-1] == "target"
    assert "Li" not in view.columns  # only LiF holds Li, and it is held out
    unwritable = [int(i) for i in fold.test if not elements[formulas[int(i)]] <= train_elements]
    assert lif in unwritable and view.n_test_left_out == len(unwritable)
    assert sorted(view.test_index.tolist()) == sorted(set(fold.test.tolist()) - set(unwritable))
    np.testing.assert_allclose(view.train[:, view.simplex].sum(axis=1), 1.0)
    np.testing.assert_allclose(view.train[:, -1], table.targets[fold.train])
    np.testing.assert_allclose(view.test[:, -1], table.targets[view.test_index])


def test_project_fractions_clips_renormalises_and_drops_rows_that_are_no_composition() -> None:
    rows = np.array([[-0.1, 0.6, 0.7, 5.0], [0.2, 0.2, 0.6, 1.0], [-1.0, 0.0, -0.5, 2.0],
                     [0.5, 0.5, 0.0, np.nan]])
    out, keep, stats = project_fractions(rows, n_elements=3)
    assert keep.tolist() == [True, True, False, False]
    np.testing.assert_allclose(out, [[0, 6 / 13, 7 / 13, 5.0], [0.2, 0.2, 0.6, 1.0]])
    assert stats["negative_share"] == pytest.approx(3 / 12)
    assert stats["mean_abs_sum_error"] == pytest.approx((0.2 + 0.0 + 2.5 + 0.0) / 4)


def test_steels_yield_folds_are_the_pinned_ones(data_dir) -> None:  # noqa: ANN001
    """The pinned protocol of conf/experiment/steels_yield_augment.yaml: 5 folds x 3 repeats, seed 0."""
    table = CompositionTable.load("steels_yield", data_dir=data_dir)
    folds = repeated_kfold(len(table), 5, 3, seed=0)
    assert len(table) == 312 and table.pinned
    assert folds_checksum(folds, table.sha256) == "92909ca89d079658"
    view = fold_view(table, folds[0])
    assert view.train.shape == (249, 15) and view.test.shape == (63, 15) and view.n_test_left_out == 0
