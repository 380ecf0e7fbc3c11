"""The tabular track's metrics (bench.metrics.tabular) on tables whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression

from bench.metrics.tabular import (
    METRICS,
    Scaler,
    augmentation,
    correlation_difference,
    dcr,
    fidelity,
    mae,
    metric_info,
    r2,
    score_fold,
    tstr,
)

IDENTITY = Scaler(np.zeros(2), np.ones(2))


def mean_regressor() -> DummyRegressor:
    """Predicts the mean target of what it was fitted on: its MAE is known by hand."""
    return DummyRegressor(strategy="mean")


def test_mae_and_r2() -> None:
    assert mae(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0])) == pytest.approx(1.0)
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2(y, y) == 1.0
    assert r2(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert r2(y, y + 1.0) == pytest.approx(1.0 - 4.0 / 5.0)  # SS_res 4, SS_tot 5
    assert np.isnan(r2(np.ones(3), np.zeros(3)))


def _linear_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 2))
    return np.column_stack([x, 2.0 * x[:, 0] - x[:, 1] + 0.5])


def test_tstr_is_exact_for_rows_of_the_same_law_and_poor_for_shuffled_targets() -> None:
    test = _linear_rows(50, 0)
    same_law = tstr(LinearRegression, _linear_rows(30, 1), test)
    assert same_law["mae"] < 1e-9 and same_law["r2"] == pytest.approx(1.0)
    shuffled = _linear_rows(30, 2)
    shuffled[:, -1] = np.random.default_rng(3).permutation(shuffled[:, -1])
    assert tstr(LinearRegression, shuffled, test)["r2"] < 0.5


def test_augmentation_mae_and_gain_by_ratio() -> None:
    """Mean regressor: real targets 0 (4 rows), synthetic targets 10, held-out target 5. Ratio 1 adds 4 rows
    (mean 5: MAE 0, gain 5); ratio 0.5 adds 2 (mean 10/3: MAE 5/3); ratio 2 asks for 8 of a pool of 6."""
    train = np.column_stack([np.arange(4.0), np.zeros(4)])
    synthetic = np.column_stack([np.arange(6.0), np.full(6, 10.0)])
    test = np.array([[0.0, 5.0]])
    out = augmentation(mean_regressor, train, test, synthetic, [0.5, 1, 2], baseline_mae=5.0)
    assert set(out) == {"0.5", "1", "2"}
    assert out["1"]["mae"] == pytest.approx(0.0) and out["1"]["gain"] == pytest.approx(5.0)
    assert out["0.5"]["mae"] == pytest.approx(5 / 3) and out["0.5"]["gain"] == pytest.approx(10 / 3)
    assert out["2"]["n_synthetic"] == 6 and out["2"]["mae"] == pytest.approx(60 / 10 - 5.0)


def test_fidelity_w1_ks_and_correlation_by_hand() -> None:
    a = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    shifted = a + np.array([1.0, 10.0])
    out = fidelity(shifted, a, IDENTITY)
    assert out["w1_columns"] == pytest.approx([1.0, 10.0]) and out["w1"] == pytest.approx(5.5)
    assert out["ks_columns"] == pytest.approx([1 / 3, 1.0])  # shift by one step of three; disjoint
    assert out["corr_diff"] == pytest.approx(0.0)  # a shift keeps the correlations
    same = fidelity(a, a, IDENTITY)
    assert same["w1"] == 0.0 and same["ks"] == 0.0
    # the W1 of standardised columns: scaling both by the training scale divides it
    assert fidelity(shifted, a, Scaler(np.zeros(2), np.array([2.0, 5.0])))["w1_columns"] == pytest.approx(
        [0.5, 2.0]
    )


def test_correlation_difference_of_opposite_and_constant_columns() -> None:
    up = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    down = np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])
    assert correlation_difference(up, down) == pytest.approx(2.0)
    constant = np.array([[0.0, 7.0], [1.0, 7.0], [2.0, 7.0]])
    assert correlation_difference(up, constant) == pytest.approx(1.0)  # a constant column: correlation 0
    three = np.column_stack([up, [0.0, 1.0, 2.0]])
    three_mixed = np.column_stack([up, [2.0, 1.0, 0.0]])
    assert correlation_difference(three, three_mixed) == pytest.approx((0 + 2 + 2) / 3)


def test_scaler_standardises_by_training_rows_and_leaves_constant_columns() -> None:
    scaler = Scaler.fit(np.array([[0.0, 3.0], [2.0, 3.0]]))
    np.testing.assert_allclose(scaler.mean, [1.0, 3.0])
    np.testing.assert_allclose(scaler.scale, [1.0, 1.0])
    np.testing.assert_allclose(scaler(np.array([[3.0, 4.0]])), [[2.0, 1.0]])


def test_dcr_distances_and_copies() -> None:
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    out = dcr(np.array([[3.0, 4.0], [10.0, 0.0], [10.0, 1.0]]), train, IDENTITY)
    assert out["median"] == pytest.approx(1.0)  # distances 5, 0, 1
    assert out["p5"] == pytest.approx(0.1)  # linear interpolation between 0 and 1 at 5 %
    assert out["copies"] == pytest.approx(1 / 3)


def test_score_fold_for_a_copier_and_for_the_real_only_row() -> None:
    rng = np.random.default_rng(0)
    train, test = _linear_rows(40, 1), _linear_rows(20, 2)
    copies = train[rng.integers(0, len(train), size=8 * len(train))]
    values, details = score_fold(LinearRegression, train, test, copies, [0.5, 1])
    assert values["tab_dcr_median"] == 0.0 and values["tab_dcr_copies"] == 1.0
    assert details["reference"]["dcr_median"] > 0.1  # fresh rows of the law are not copies
    assert values["tab_tstr_r2"] == pytest.approx(1.0) and values["tab_trtr_r2"] == pytest.approx(1.0)
    assert details["n_synthetic_augment"] == {"0.5": 20, "1": 40}
    assert set(values) == {*METRICS, "tab_aug_mae_r0.5", "tab_aug_gain_r0.5", "tab_aug_mae_r1",
                           "tab_aug_gain_r1"}

    real_only, _ = score_fold(mean_regressor, train, test, None, [0.5, 1])
    assert real_only["tab_tstr_mae"] is None and real_only["tab_dcr_median"] is None
    assert real_only["tab_aug_gain_r1"] == 0.0
    assert real_only["tab_aug_mae_r0.5"] == real_only["tab_trtr_mae"] == pytest.approx(
        mae(test[:, -1], np.full(len(test), train[:, -1].mean()))
    )


def test_every_metric_has_a_direction() -> None:
    for name in [*METRICS, "tab_aug_mae_r2", "tab_aug_gain_r0.5"]:
        assert metric_info(name).direction in ("min", "max")
    assert metric_info("tab_aug_gain_r8").direction == "max"
    with pytest.raises(KeyError):
        metric_info("tab_unknown")
