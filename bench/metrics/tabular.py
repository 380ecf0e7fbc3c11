"""The tabular augmentation track's metrics: utility (TSTR, augmentation gain), fidelity and privacy of
synthetic rows, one fold at a time.

Every metric compares three tables of the same columns (features, then the target as the last column): the
real **training** rows the generator was fitted on, the real **held-out** rows of the fold, and the
**synthetic** rows. The only model trained for scoring is the fixed downstream regressor (a factory from the
experiment config, ``tabular.regressor``), fitted on features to predict the target.

Utility.

- ``tab_tstr_mae`` / ``tab_tstr_r2``: train on synthetic, test on real (Esteban, Hyland & Rätsch 2017,
  "Real-valued (medical) time series generation with recurrent conditional GANs", arXiv:1706.02633): the
  regressor fitted on ``n_train`` synthetic rows only, scored on the held-out rows.
- ``tab_trtr_mae`` / ``tab_trtr_r2``: the same regressor fitted on the real training rows, its ceiling (and
  the real-only baseline of the gain).
- ``tab_aug_mae_r<ratio>`` and ``tab_aug_gain_r<ratio>``: the regressor fitted on the real training rows plus
  ``round(ratio * n_train)`` synthetic rows (the first of the synthetic pool, so the sets are nested); the
  gain is ``MAE(real only) - MAE(real + synthetic)``, positive when the synthetic rows help.

Fidelity (against the held-out rows, every column standardised by the training rows' mean and standard
deviation, a constant column by 1; the same numbers for the real training rows against the held-out rows are
kept beside each as the level a perfect sampler of the data reaches at that size):

- ``tab_w1``: the mean over columns of the 1-D Wasserstein-1 distance of the empirical distributions,
  ``int |F(x) - G(x)| dx`` (Vallender 1974, Theory Probab. Appl. 18, 784).
- ``tab_ks``: the mean over columns of the two-sample Kolmogorov-Smirnov statistic ``sup |F(x) - G(x)|``.
- ``tab_corr_diff``: the mean over column pairs ``i < j`` of ``|r_ij(synthetic) - r_ij(real)|``, Pearson
  correlations, a constant column's correlations taken as 0 (the pairwise correlation difference of
  Goncalves et al. 2020, BMC Med Res Methodol 20, 108, as a mean absolute entry instead of a Frobenius norm,
  so tables of different widths compare).

Privacy: ``tab_dcr_median`` / ``tab_dcr_p5``: the distance to the closest record (Park et al. 2018, "Data
Synthesis based on Generative Adversarial Networks", PVLDB 11(10), section 5.3): the Euclidean distance, on
the standardised columns, from each synthetic row to its nearest real training row; the median and the 5th
percentile. The reference is the same for the held-out rows (``*_holdout``): a generator that copies training
rows has a DCR of 0, one that draws fresh rows from the data distribution about the held-out level.
``tab_dcr_copies`` is the share of synthetic rows within ``1e-9`` of a training row.

W1 and KS come from SciPy (``scipy.stats.wasserstein_distance``, ``ks_2samp``; BSD), nearest neighbours from
scikit-learn; the rest is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "MetricInfo",
    "Scaler",
    "augmentation",
    "correlation_difference",
    "dcr",
    "fidelity",
    "mae",
    "metric_info",
    "r2",
    "ratio_key",
    "score_fold",
    "tstr",
]

RegressorFactory = Callable[[], Any]
"""Builds a fresh, unfitted scikit-learn style regressor (``fit(X, y)``, ``predict(X)``)."""
COPY_TOLERANCE = 1e-9
"""A synthetic row this close (standardised Euclidean) to a training row counts as a copy."""
VERSION = "1"


@dataclass(frozen=True)
class MetricInfo:
    """A metric's direction and one-line description (the record's entry)."""

    direction: str
    description: str


def ratio_key(ratio: float) -> str:
    """``0.5 -> "0.5"``, ``2.0 -> "2"``: the suffix of the augmentation metrics."""
    return f"{float(ratio):g}"


METRICS: dict[str, MetricInfo] = {
    "tab_tstr_mae": MetricInfo("min", "train on synthetic, test on real: MAE of the regressor fitted on "
                                      "n_train synthetic rows, on the held-out rows"),
    "tab_tstr_r2": MetricInfo("max", "train on synthetic, test on real: R^2 on the held-out rows"),
    "tab_trtr_mae": MetricInfo("min", "train on real, test on real: MAE of the regressor fitted on the real "
                                      "training rows (the ceiling of TSTR, the baseline of the gain)"),
    "tab_trtr_r2": MetricInfo("max", "train on real, test on real: R^2 on the held-out rows"),
    "tab_w1": MetricInfo("min", "mean over columns of the Wasserstein-1 distance to the held-out rows, "
                                "columns standardised by the training rows"),
    "tab_ks": MetricInfo("min", "mean over columns of the Kolmogorov-Smirnov statistic against the held-out "
                                "rows"),
    "tab_corr_diff": MetricInfo("min", "mean absolute difference of the Pearson correlations of column "
                                       "pairs, synthetic against held-out rows"),
    "tab_dcr_median": MetricInfo("max", "median distance from a synthetic row to its closest real training "
                                        "row (standardised columns); 0 for copies, the held-out rows' value "
                                        "for fresh draws of the data distribution"),
    "tab_dcr_p5": MetricInfo("max", "5th percentile of the distance to the closest real training row"),
    "tab_dcr_copies": MetricInfo("min", "share of synthetic rows that copy a real training row"),
}
"""The fixed metrics; the augmentation metrics (one per ratio) are added by :func:`metric_info`."""


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``, the augmentation metrics included.

    Raises:
        KeyError: an unknown metric name.
    """
    if name in METRICS:
        return METRICS[name]
    if name.startswith("tab_aug_mae_r"):
        ratio = name.removeprefix("tab_aug_mae_r")
        return MetricInfo("min", f"MAE of the regressor fitted on the real training rows plus {ratio} x "
                                 "n_train synthetic rows, on the held-out rows")
    if name.startswith("tab_aug_gain_r"):
        ratio = name.removeprefix("tab_aug_gain_r")
        return MetricInfo("max", f"MAE(real only) - MAE(real + {ratio} x n_train synthetic rows): positive "
                                 "when the synthetic rows help")
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------- utility


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (NaN for a constant ``y_true``)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return float("nan") if total == 0 else 1.0 - float(np.sum((y_true - y_pred) ** 2)) / total


def _fit_predict(factory: RegressorFactory, rows: np.ndarray, test: np.ndarray) -> np.ndarray:
    model = factory()
    model.fit(rows[:, :-1], rows[:, -1])
    return np.asarray(model.predict(test[:, :-1]), dtype=float)


def tstr(factory: RegressorFactory, train_rows: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """MAE and R^2 on ``test`` of the regressor fitted on ``train_rows`` (synthetic rows: TSTR; the real
    training rows: TRTR)."""
    pred = _fit_predict(factory, train_rows, test)
    return {"mae": mae(test[:, -1], pred), "r2": r2(test[:, -1], pred)}


def augmentation(
    factory: RegressorFactory, train: np.ndarray, test: np.ndarray, synthetic: np.ndarray,
    ratios: Sequence[float], baseline_mae: float,
) -> dict[str, dict[str, float]]:
    """Per ratio: the MAE on ``test`` of the regressor fitted on ``train`` plus the first
    ``round(ratio * len(train))`` synthetic rows, the gain over ``baseline_mae`` (the real-only MAE) and the
    synthetic rows used (fewer when the pool is short)."""
    out: dict[str, dict[str, float]] = {}
    for ratio in ratios:
        n = min(int(round(float(ratio) * len(train))), len(synthetic))
        rows = np.concatenate([train, synthetic[:n]], axis=0)
        value = mae(test[:, -1], _fit_predict(factory, rows, test))
        out[ratio_key(ratio)] = {"mae": value, "gain": baseline_mae - value, "n_synthetic": n}
    return out


# --------------------------------------------------------------------------------------------- fidelity


@dataclass(frozen=True)
class Scaler:
    """Per-column standardisation fitted on the real training rows (a constant column is divided by 1)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Scaler:
        """Mean and standard deviation (``ddof=0``) per column of ``rows``."""
        std = rows.std(axis=0)
        return cls(rows.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, float) - self.mean) / self.scale


def _correlations(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix; the correlations of a constant column are 0 (1 on the diagonal)."""
    centred = rows - rows.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    safe = np.where(norms > 0, norms, 1.0)
    corr = (centred.T @ centred) / np.outer(safe, safe)
    corr[norms == 0, :] = 0.0
    corr[:, norms == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def correlation_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over column pairs ``i < j`` of ``|corr_a[i, j] - corr_b[i, j]|`` (0 for fewer than 2 columns)."""
    if a.shape[1] < 2:
        return 0.0
    upper = np.triu_indices(a.shape[1], k=1)
    return float(np.mean(np.abs(_correlations(a)[upper] - _correlations(b)[upper])))


def fidelity(rows: np.ndarray, reference: np.ndarray, scaler: Scaler) -> dict[str, Any]:
    """W1 and KS per column and their means, and the correlation difference, of ``rows`` against
    ``reference`` (both standardised by ``scaler``)."""
    from scipy.stats import ks_2samp, wasserstein_distance

    a, b = scaler(rows), scaler(reference)
    w1 = np.array([wasserstein_distance(a[:, j], b[:, j]) for j in range(a.shape[1])])
    ks = np.array([ks_2samp(a[:, j], b[:, j]).statistic for j in range(a.shape[1])])
    return {"w1": float(w1.mean()), "ks": float(ks.mean()), "corr_diff": correlation_difference(a, b),
            "w1_columns": w1.tolist(), "ks_columns": ks.tolist()}


# ---------------------------------------------------------------------------------------------- privacy


def dcr(rows: np.ndarray, train: np.ndarray, scaler: Scaler) -> dict[str, float]:
    """Distance to the closest record: per row of ``rows``, the Euclidean distance to its nearest row of
    ``train`` (both standardised by ``scaler``); its median, 5th percentile and the share of copies."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(scaler(train))
    distances, _ = index.kneighbors(scaler(rows))
    d = distances[:, 0]
    return {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)),
            "copies": float(np.mean(d <= COPY_TOLERANCE))}


# ------------------------------------------------------------------------------------------------- fold


def score_fold(
    factory: RegressorFactory, train: np.ndarray, test: np.ndarray, synthetic: np.ndarray | None,
    ratios: Sequence[float],
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Every metric of one fold (see the module docstring).

    Args:
        factory: the downstream regressor.
        train: the real training rows ``[n_train, C]`` (target last).
        test: the real held-out rows ``[n_test, C]``.
        synthetic: the synthetic pool (at least ``max(ratios) * n_train`` rows for every ratio to be full; its
            first ``n_train`` rows are the TSTR, fidelity and privacy set); None for the real-only row, whose
            TSTR, fidelity and privacy are None and whose augmentation is the real-only MAE (gain 0).
        ratios: synthetic-to-real ratios of the augmentation metrics.

    Returns:
        ``(values, details)``: metric name -> value (None where it does not apply), and the per-column and
        reference numbers.
    """
    trtr = tstr(factory, train, test)
    values: dict[str, float | None] = {"tab_trtr_mae": trtr["mae"], "tab_trtr_r2": trtr["r2"]}
    scaler = Scaler.fit(train)
    real = fidelity(train, test, scaler)
    held_out = dcr(test, train, scaler)
    details: dict[str, Any] = {
        "n_train": len(train), "n_test": len(test),
        "reference": {"w1": real["w1"], "ks": real["ks"], "corr_diff": real["corr_diff"],
                      "dcr_median": held_out["median"], "dcr_p5": held_out["p5"]},
    }
    if synthetic is None:
        values.update({name: None for name in METRICS if not name.startswith("tab_trtr")})
        for ratio in ratios:
            values[f"tab_aug_mae_r{ratio_key(ratio)}"] = trtr["mae"]
            values[f"tab_aug_gain_r{ratio_key(ratio)}"] = 0.0
        return values, details
    head = synthetic[: len(train)]
    if len(head) < 2:
        raise ValueError(f"{len(synthetic)} synthetic rows: TSTR and fidelity need at least 2")
    synth_tstr = tstr(factory, head, test)
    fid = fidelity(head, test, scaler)
    privacy = dcr(head, train, scaler)
    values.update({
        "tab_tstr_mae": synth_tstr["mae"], "tab_tstr_r2": synth_tstr["r2"],
        "tab_w1": fid["w1"], "tab_ks": fid["ks"], "tab_corr_diff": fid["corr_diff"],
        "tab_dcr_median": privacy["median"], "tab_dcr_p5": privacy["p5"], "tab_dcr_copies": privacy["copies"],
    })
    aug = augmentation(factory, train, test, synthetic, ratios, trtr["mae"])
    for key, entry in aug.items():
        values[f"tab_aug_mae_r{key}"] = entry["mae"]
        values[f"tab_aug_gain_r{key}"] = entry["gain"]
    details.update({
        "n_synthetic_scored": len(head),
        "n_synthetic_augment": {key: entry["n_synthetic"] for key, entry in aug.items()},
        "w1_columns": fid["w1_columns"], "ks_columns": fid["ks_columns"],
    })
    return values, details
