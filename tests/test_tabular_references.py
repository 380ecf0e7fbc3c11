"""The tabular track's reference generators (bench.tabular_references) against what each must do by
construction."""

from __future__ import annotations

import numpy as np
import pytest

from bench.tabular_references import (
    REFERENCE_GENERATORS,
    SMOTER,
    Copy,
    GaussianCopula,
    RealOnly,
    build_reference_generator,
)


def _table(n: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fractions = rng.dirichlet([2.0, 1.0, 0.5], size=n)
    target = 100 * fractions[:, 0] + rng.normal(size=n)
    return np.column_stack([fractions, target])


def test_smoter_rows_lie_on_segments_between_a_row_and_one_of_its_neighbours() -> None:
    rows = _table()
    gen = SMOTER(k=3).fit(rows)
    out = gen.sample(200, np.random.default_rng(1))
    assert out.shape == (200, 4)
    # every neighbour list holds k other rows, nearest by range-scaled features
    scaled = rows[:, :-1] / (rows[:, :-1].max(axis=0) - rows[:, :-1].min(axis=0))
    for i, nbrs in enumerate(gen.neighbours):
        assert i not in nbrs and len(nbrs) == 3
        d = np.linalg.norm(scaled - scaled[i], axis=1)
        d[i] = np.inf
        assert np.allclose(np.sort(d[nbrs]), np.sort(d)[:3])
    pairs = [(i, j) for i, nbrs in enumerate(gen.neighbours) for j in nbrs]
    for s in out:
        found = False
        for i, j in pairs:
            a, b = rows[i], rows[j]
            g = float(np.dot(s[:-1] - a[:-1], b[:-1] - a[:-1]) / np.dot(b[:-1] - a[:-1], b[:-1] - a[:-1]))
            if -1e-9 <= g <= 1 + 1e-9 and np.allclose(s, a + g * (b - a), atol=1e-9, rtol=0):
                found = True  # features and target on the same segment, at the same place
                break
        assert found, f"{s} is on no segment between a row and one of its neighbours"
    np.testing.assert_allclose(out[:, :3].sum(axis=1), 1.0)  # convex combinations stay on the simplex


def test_smoter_target_is_torgo_inverse_distance_weighting() -> None:
    """Two rows only: features 0 and 1, targets 10 and 20. A point at x lies x from the first and 1 - x from
    the second, so Torgo's weighting gives ``((1 - x) 10 + x 20) = 10 + 10 x`` from either seed."""
    rows = np.array([[0.0, 10.0], [1.0, 20.0]])
    out = SMOTER(k=1).fit(rows).sample(50, np.random.default_rng(0))
    assert 0.0 < out[:, 0].min() and out[:, 0].max() < 1.0
    np.testing.assert_allclose(out[:, 1], 10.0 + 10.0 * out[:, 0])


def test_gaussian_copula_reproduces_a_known_correlation_and_the_marginals() -> None:
    rng = np.random.default_rng(0)
    rho = 0.7
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=4000)
    rows = np.column_stack([np.exp(z[:, 0]), 3.0 * z[:, 1] + 5.0])  # a log-normal and a normal marginal
    gen = GaussianCopula().fit(rows)
    assert gen.correlation[0, 1] == pytest.approx(rho, abs=0.03)
    out = gen.sample(20000, np.random.default_rng(1))
    # the second column is normal, the first log-normal: the correlation of (log x, y) is rho
    assert np.corrcoef(np.log(out[:, 0]), out[:, 1])[0, 1] == pytest.approx(rho, abs=0.03)
    for j in range(2):
        assert np.isin(out[:, j], rows[:, j]).all()  # inverse empirical CDF: training values only
        assert np.median(out[:, j]) == pytest.approx(np.median(rows[:, j]), rel=0.05)


def test_gaussian_copula_with_a_constant_column_and_ties() -> None:
    rows = np.column_stack([np.zeros(20), np.repeat([0.0, 1.0], 10), np.arange(20.0)])
    gen = GaussianCopula().fit(rows)
    assert np.isfinite(gen.correlation).all() and gen.correlation[0, 1] == 0.0
    out = gen.sample(500, np.random.default_rng(0))
    assert (out[:, 0] == 0).all() and set(np.unique(out[:, 1])) == {0.0, 1.0}
    assert abs(np.mean(out[:, 1]) - 0.5) < 0.1


def test_copy_and_real_only() -> None:
    rows = _table()
    out = Copy().fit(rows).sample(40, np.random.default_rng(0))
    assert all(any(np.array_equal(r, s) for s in rows) for r in out)
    assert RealOnly().fit(rows).sample(40, np.random.default_rng(0)).shape == (0, 4)


@pytest.mark.parametrize("name", sorted(REFERENCE_GENERATORS))
def test_a_seed_fixes_the_rows(name: str) -> None:
    rows = _table()
    a = build_reference_generator(name).fit(rows).sample(25, np.random.default_rng(3))
    b = build_reference_generator(name).fit(rows).sample(25, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    if len(a):
        c = build_reference_generator(name).fit(rows).sample(25, np.random.default_rng(4))
        assert not np.array_equal(a, c)


def test_unknown_reference_is_one_line() -> None:
    with pytest.raises(ValueError, match="smoter"):
        build_reference_generator("smote")
