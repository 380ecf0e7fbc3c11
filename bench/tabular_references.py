"""The tabular track's reference rows: generators without a training loop, fitted on a fold's training rows.

- ``real_only``: no synthetic rows. Its augmentation MAE is the regressor's on the real rows alone, the
  baseline every gain is measured against; TSTR, fidelity and privacy do not apply.
- ``copy``: bootstrap copies of the training rows, the memorising extreme: fidelity as good as the real rows',
  a distance to the closest record of 0.
- ``smoter``: SMOTE for regression (Torgo, Ribeiro, Pfahringer & Branco 2013, "SMOTE for Regression", EPIA,
  LNCS 8154, 378-389), the interpolation step: a new row takes a seed row, one of its ``k`` nearest
  neighbours (on the features, each scaled by its range as in their HEOM distance), and a point
  ``x = x_seed + g (x_nb - x_seed)``, ``g ~ U(0, 1)``, on the segment between their features; its target is
  their targets weighted by the inverse distance of the new point to each, ``y = (d_nb y_seed + d_seed
  y_nb) / (d_seed + d_nb)`` (their algorithm 2), which for this point is ``(1 - g) y_seed + g y_nb``: the
  new row lies on the segment between the two real rows. SMOTER oversamples only the rare targets (those
  of high relevance) and undersamples the others, to balance an imbalanced regression task; here the task
  is augmentation, so every training row is a seed with equal chance and there is no relevance function.
- ``gaussian_copula``: a Gaussian copula with empirical marginals (Sklar 1959; the construction of e.g.
  Patki, Wedge & Veeramachaneni 2016, "The Synthetic Data Vault", IEEE DSAA, section III-B): each column's
  values become normal scores ``z = Phi^-1(rank / (n + 1))`` (average ranks for ties); their Pearson
  correlation matrix ``R`` (a constant column uncorrelated) is the copula; a sample draws ``z ~ N(0, R)``
  and maps each column back through ``Phi`` and the inverse empirical CDF of its training values (the
  smallest value whose empirical CDF reaches ``u``), so every value is one of the column's training values.

Every generator draws its random numbers from the ``numpy.random.Generator`` it is given, so a seed fixes its
rows. The element fractions of SMOTER rows stay on the simplex (convex combinations of rows that are on it);
the copula's do not, and the protocol projects every generator's rows back onto it
(:func:`bench.datasets.tabular.project_fractions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = [
    "REFERENCE_GENERATORS",
    "Copy",
    "GaussianCopula",
    "RealOnly",
    "SMOTER",
    "TableGenerator",
    "build_reference_generator",
]


class TableGenerator(Protocol):
    """Fitted on real rows ``[n, C]`` (target last); draws rows of the same columns."""

    name: ClassVar[str]

    def fit(self, rows: np.ndarray) -> TableGenerator:
        """Learn from the real training rows."""
        ...

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``[n, C]`` rows (``[0, C]`` for a generator that makes none)."""
        ...


def _rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or len(rows) < 2 or not np.isfinite(rows).all():
        raise ValueError(f"a generator is fitted on at least 2 finite rows [n, C], got shape {rows.shape}")
    return rows


class RealOnly:
    """No synthetic rows (the baseline of the augmentation gain)."""

    name: ClassVar[str] = "real_only"

    def fit(self, rows: np.ndarray) -> RealOnly:
        self.width = _rows(rows).shape[1]
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.zeros((0, self.width))


class Copy:
    """Rows drawn with replacement from the training rows (a memorising generator)."""

    name: ClassVar[str] = "copy"

    def fit(self, rows: np.ndarray) -> Copy:
        self.rows = _rows(rows).copy()
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.rows[rng.integers(0, len(self.rows), size=int(n))]


@dataclass
class SMOTER:
    """SMOTER's interpolation between a row and one of its ``k`` nearest neighbours (module docstring).

    Args:
        k: neighbours per seed row (Torgo et al.'s 5).
    """

    k: int = 5
    name: ClassVar[str] = "smoter"

    def fit(self, rows: np.ndarray) -> SMOTER:
        from sklearn.neighbors import NearestNeighbors

        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        self.rows = _rows(rows).copy()
        features = self.rows[:, :-1]
        span = features.max(axis=0) - features.min(axis=0)
        self.scale = np.where(span > 0, span, 1.0)
        k = min(self.k, len(self.rows) - 1)
        index = NearestNeighbors(n_neighbors=k + 1).fit(features / self.scale)
        _, neighbours = index.kneighbors(features / self.scale)
        # a row's own index comes first, unless a duplicate ties with it: drop the row itself wherever it is
        self.neighbours = np.array([[j for j in row if j != i][:k] for i, row in enumerate(neighbours)])
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        seeds = rng.integers(0, len(self.rows), size=int(n))
        picks = self.neighbours[seeds, rng.integers(0, self.neighbours.shape[1], size=int(n))]
        gaps = rng.random(int(n))[:, None]
        a, b = self.rows[seeds], self.rows[picks]
        x = a[:, :-1] + gaps * (b[:, :-1] - a[:, :-1])
        d_seed = np.linalg.norm((x - a[:, :-1]) / self.scale, axis=1)
        d_nb = np.linalg.norm((x - b[:, :-1]) / self.scale, axis=1)
        total = d_seed + d_nb
        same = total == 0  # identical features: the plain mean of the two targets
        w = np.where(same, 0.5, d_nb / np.where(same, 1.0, total))
        y = w * a[:, -1] + (1.0 - w) * b[:, -1]
        return np.column_stack([x, y])


class GaussianCopula:
    """A Gaussian copula with empirical marginals (module docstring)."""

    name: ClassVar[str] = "gaussian_copula"

    def fit(self, rows: np.ndarray) -> GaussianCopula:
        from scipy.special import ndtri
        from scipy.stats import rankdata

        rows = _rows(rows)
        n = len(rows)
        self.sorted = np.sort(rows, axis=0)
        scores = ndtri(rankdata(rows, axis=0) / (n + 1))
        centred = scores - scores.mean(axis=0)
        norms = np.sqrt((centred**2).sum(axis=0))
        safe = np.where(norms > 0, norms, 1.0)
        corr = (centred.T @ centred) / np.outer(safe, safe)
        corr[norms == 0, :] = 0.0
        corr[:, norms == 0] = 0.0
        np.fill_diagonal(corr, 1.0)
        self.correlation = _nearest_correlation(corr)
        self.cholesky = np.linalg.cholesky(self.correlation + 1e-10 * np.eye(len(corr)))
        return self

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        from scipy.special import ndtr

        z = rng.standard_normal((int(n), self.sorted.shape[1])) @ self.cholesky.T
        u = ndtr(z)
        m = len(self.sorted)
        # inverse empirical CDF: the smallest training value x_(i) with i / m >= u
        index = np.clip(np.ceil(u * m).astype(int) - 1, 0, m - 1)
        return np.take_along_axis(self.sorted, index, axis=0)


def _nearest_correlation(corr: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    """A correlation matrix made positive definite: eigenvalues floored, then rescaled to a unit diagonal
    (a no-op for a matrix that already is)."""
    values, vectors = np.linalg.eigh((corr + corr.T) / 2)
    if values.min() >= floor:
        return corr
    fixed = (vectors * np.clip(values, floor, None)) @ vectors.T
    d = np.sqrt(np.diag(fixed))
    return fixed / np.outer(d, d)


REFERENCE_GENERATORS: dict[str, tuple[type, str]] = {
    "real_only": (RealOnly, "the real training rows only (the baseline of the gain)"),
    "copy": (Copy, "bootstrap copies of the real training rows (memorisation)"),
    "smoter": (SMOTER, "SMOTER interpolation between a row and one of its 5 nearest neighbours"),
    "gaussian_copula": (GaussianCopula, "Gaussian copula with empirical marginals"),
}
"""``reference=<name>`` -> (class, what the row is)."""


def build_reference_generator(name: str, **settings: Any) -> TableGenerator:
    """An unfitted reference generator.

    Raises:
        ValueError: an unknown name (the message lists the names).
    """
    if name not in REFERENCE_GENERATORS:
        known = ", ".join(REFERENCE_GENERATORS)
        raise ValueError(f"reference={name}: the tabular reference rows are {known}")
    cls, _ = REFERENCE_GENERATORS[name]
    return cls(**settings)
