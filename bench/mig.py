"""The Mutual Information Gap (MIG), a disentanglement score of a latent code against ground-truth factors.

Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement in Variational Autoencoders",
NeurIPS, arXiv:1802.04942, section 5: for each factor ``v_k`` take the mutual information ``I(z_j; v_k)`` of
every latent dimension ``j``; the factor's gap is the largest minus the second largest, divided by the
factor's entropy ``H(v_k)``; MIG is the mean gap over factors. It is 1 when every factor is carried whole by
one dimension and by no other, and 0 when no dimension carries a factor better than the next one does.

The paper estimates ``I(z_j; v_k)`` from samples of ``q(z_j | x)``; this module uses the common estimator of
later work (Locatello et al. 2019, "Challenging Common Assumptions in the Unsupervised Learning of
Disentangled Representations", ICML, arXiv:1811.12359): each dimension of the encoder's mean is cut into
``bins`` equal-width bins over its range on the scored set, and the mutual information of the two discrete
variables is the exact plug-in value of their joint histogram (:func:`discrete_mutual_information`, in nats).
A dimension that is discrete already (a categorical code) is used as is.

The plug-in estimate is biased upwards on finite samples: for two independent variables with ``r`` and ``c``
observed values, ``2 N I_hat`` is asymptotically chi-square with ``(r - 1)(c - 1)`` degrees of freedom, so
``E[I_hat] ~ (r - 1)(c - 1) / (2 N)`` nats (:func:`independence_bias`). The bias of the best and the second
best dimension largely cancels in the gap; it is reported beside each factor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "FactorGap",
    "discrete_entropy",
    "discrete_mutual_information",
    "discretise",
    "independence_bias",
    "mutual_information_gap",
    "mutual_information_matrix",
]


def discretise(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin indices ``[n, D]`` in ``[0, bins)`` of each column of ``values`` ``[n, D]`` over that
    column's own ``[min, max]`` (the maximum falls in the last bin; a constant column is all bin 0).

    Raises:
        ValueError: ``bins < 2`` or a value that is not finite.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if not np.isfinite(values).all():
        raise ValueError("the latent values to discretise hold NaN or inf")
    out = np.zeros(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        low, high = values[:, j].min(), values[:, j].max()
        if high > low:
            interior = np.linspace(low, high, bins + 1)[1:-1]
            out[:, j] = np.digitize(values[:, j], interior)
    return out


def _codes(x: np.ndarray) -> np.ndarray:
    """Labels of any hashable kind as dense integer codes ``0..m-1``."""
    return np.unique(np.asarray(x), return_inverse=True)[1].reshape(-1)


def discrete_entropy(x: np.ndarray) -> float:
    """Plug-in entropy ``-sum_x p(x) log p(x)`` of a discrete sample, in nats."""
    counts = np.bincount(_codes(x)).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def discrete_mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Plug-in mutual information of two aligned discrete samples, in nats: ``sum_xy p(x, y) log p(x, y) /
    (p(x) p(y))`` over the cells of their joint histogram that are not empty (exact on the histogram).

    Raises:
        ValueError: the samples differ in length or are empty.
    """
    a, b = _codes(x), _codes(y)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two aligned, non-empty samples, got lengths {a.size} and {b.size}")
    n = float(a.size)
    joint = np.bincount(a * (b.max() + 1) + b).astype(np.float64)
    cells = np.flatnonzero(joint)
    n_xy = joint[cells]
    n_x = np.bincount(a).astype(np.float64)[cells // (b.max() + 1)]
    n_y = np.bincount(b).astype(np.float64)[cells % (b.max() + 1)]
    value = float((n_xy / n * (np.log(n_xy) + math.log(n) - np.log(n_x) - np.log(n_y))).sum())
    return max(value, 0.0)  # rounding can leave -1e-17 for independent histograms


def independence_bias(values_a: int, values_b: int, n: int) -> float:
    """Expected plug-in mutual information (nats) of two independent discrete variables with ``values_a`` and
    ``values_b`` observed values on ``n`` samples: ``(values_a - 1)(values_b - 1) / (2 n)`` (the mean of the
    chi-square limit of ``2 n I_hat``)."""
    return (max(values_a, 1) - 1) * (max(values_b, 1) - 1) / (2.0 * n)


def mutual_information_matrix(latents: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``I(z_j; v_k)`` ``[D, K]`` in nats between every discrete latent column ``latents[:, j]`` and every
    factor column ``factors[:, k]`` (both ``[n, .]``, integer or label codes)."""
    latents, factors = np.asarray(latents), np.asarray(factors)
    if latents.ndim != 2 or factors.ndim != 2 or latents.shape[0] != factors.shape[0]:
        raise ValueError(f"need [n, D] latents and [n, K] factors, got {latents.shape} and {factors.shape}")
    return np.array([[discrete_mutual_information(latents[:, j], factors[:, k])
                      for k in range(factors.shape[1])] for j in range(latents.shape[1])])


@dataclass(frozen=True)
class FactorGap:
    """One factor's row of the score.

    Attributes:
        factor: the factor's name.
        entropy: ``H(v_k)`` in nats.
        best_dim: the latent dimension with the largest ``I(z_j; v_k)``.
        best_mi: that mutual information, in nats.
        second_dim: the dimension with the second largest.
        second_mi: its mutual information, in nats.
        gap: ``(best_mi - second_mi) / entropy`` (NaN for a constant factor: it is left out of MIG).
    """

    factor: str
    entropy: float
    best_dim: int
    best_mi: float
    second_dim: int
    second_mi: float
    gap: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mutual_information_gap(mi: np.ndarray, entropies: np.ndarray,
                           factor_names: list[str] | None = None) -> tuple[float, list[FactorGap]]:
    """MIG from the ``[D, K]`` mutual information matrix and the factors' entropies ``[K]`` (nats).

    Ties keep the lower dimension first, so two dimensions holding the same copy of a factor give a gap of
    exactly 0.

    Returns:
        ``(mig, rows)``: the mean normalised gap over the factors whose entropy is positive (NaN when there
        is none), and one :class:`FactorGap` per factor.

    Raises:
        ValueError: fewer than two latent dimensions, or shapes that do not match.
    """
    mi = np.asarray(mi, dtype=np.float64)
    entropies = np.asarray(entropies, dtype=np.float64)
    if mi.ndim != 2 or mi.shape[0] < 2 or mi.shape[1] != entropies.shape[0]:
        raise ValueError(f"need a [D >= 2, K] matrix and K entropies, got {mi.shape} and {entropies.shape}")
    names = factor_names or [f"v{k}" for k in range(mi.shape[1])]
    rows = []
    for k in range(mi.shape[1]):
        order = np.argsort(-mi[:, k], kind="stable")
        best, second = int(order[0]), int(order[1])
        h = float(entropies[k])
        gap = (mi[best, k] - mi[second, k]) / h if h > 0 else math.nan
        rows.append(FactorGap(names[k], h, best, float(mi[best, k]), second, float(mi[second, k]),
                              float(gap)))
    gaps = [r.gap for r in rows if not math.isnan(r.gap)]
    return (float(np.mean(gaps)) if gaps else math.nan), rows
