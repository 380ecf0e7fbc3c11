"""The tabular models' representation: CTGAN's mode-specific normalisation of continuous columns.

Xu, Skoularidou, Cuesta-Infante & Veeramachaneni (2019), "Modeling Tabular data using Conditional GAN",
NeurIPS, arXiv:1907.00503, section 4.2. For each continuous column ``C_i``:

1. a variational Gaussian mixture (scikit-learn's ``BayesianGaussianMixture`` with a Dirichlet-process prior
   of concentration 0.001, at most ``max_modes`` components) is fitted to the column; the modes whose weight
   exceeds ``weight_threshold`` are kept, ``P(c) = sum_k mu_k N(c; eta_k, phi_k)``;
2. a value ``c`` draws its mode ``k`` with probability ``rho_k ~ mu_k N(c; eta_k, phi_k)``;
3. it is written as the scalar ``alpha = (c - eta_k) / (4 phi_k)`` (clipped to ``[-0.99, 0.99]``) and the
   one-hot ``beta`` of ``k``.

A row is ``alpha_1 + beta_1 + ... + alpha_C + beta_C``, :meth:`ModeSpecificNormalizer.sizes` gives the number
of modes per column, and decoding inverts step 3 with the most probable mode of each ``beta`` span. The
composition tables have continuous columns only (element fractions and the target), so there are no
discrete columns ``d_i``.

Changed to fit these tables: each column is standardised by its training mean and standard deviation before
the mixture is fitted (and un-standardised when decoding). The mixture is the same up to that affine map, but
scikit-learn's covariance floor (``reg_covar = 1e-6``) then means the same for an alloying element at a
fraction of 1e-4 as for a yield strength of 2,000 MPa; on raw values it would merge every small fraction into
one mode. Mode responsibilities are computed from the kept modes' fitted weights, means and variances (the
plug-in densities of step 2), so the state is a few numbers per column, saved as JSON.

Randomness (the mixture's initialisation, the modes drawn in step 2) comes from ``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .representation import ConditionError, Field

__all__ = ["ROWS_FIELD", "ColumnModes", "ModeSpecificNormalizer"]

ROWS_FIELD = "rows"
"""The batch key of the encoded rows."""
ALPHA_CLIP = 0.99
"""CTGAN clips the encoded scalar to ``[-0.99, 0.99]``."""


class ColumnModes:
    """The kept modes of one column, in the standardised space ``z = (c - mean) / scale``.

    Attributes:
        mean, scale: the column's training mean and standard deviation (1 for a constant column).
        weights, means, stds: per kept mode, its weight (renormalised), mean and standard deviation.
    """

    def __init__(self, mean: float, scale: float, weights: Sequence[float], means: Sequence[float],
                 stds: Sequence[float]) -> None:
        self.mean, self.scale = float(mean), float(scale)
        self.weights = np.asarray(weights, dtype=float)
        self.means = np.asarray(means, dtype=float)
        self.stds = np.asarray(stds, dtype=float)

    @property
    def n_modes(self) -> int:
        return len(self.means)

    def log_responsibility(self, z: np.ndarray) -> np.ndarray:
        """``log mu_k + log N(z; eta_k, phi_k)`` per value and mode, ``[n, K]`` (unnormalised)."""
        diff = (z[:, None] - self.means[None, :]) / self.stds[None, :]
        return np.log(self.weights)[None, :] - 0.5 * diff**2 - np.log(self.stds)[None, :]

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean, "scale": self.scale, "weights": self.weights.tolist(),
                "means": self.means.tolist(), "stds": self.stds.tolist()}


class ModeSpecificNormalizer:
    """Rows of continuous columns as CTGAN's mode-specific normalisation (module docstring).

    Args:
        max_modes: components of each column's mixture (CTGAN's 10).
        weight_threshold: modes of at most this weight are dropped (CTGAN's 0.005).
        seed: seeds the mixtures and the mode drawn for each encoded value.
        condition: must be empty (the tabular track has no condition channel).

    Raises:
        ConditionError: a non-empty ``condition``.
    """

    def __init__(self, max_modes: int = 10, weight_threshold: float = 0.005, seed: int = 0,
                 condition: Sequence[str] = ()) -> None:
        if condition:
            raise ConditionError("representation.condition: the tabular representation has no condition "
                                 "channel; leave it empty")
        if max_modes < 1 or not 0 <= weight_threshold < 1:
            raise ValueError(f"max_modes must be >= 1 and weight_threshold in [0, 1), got {max_modes}, "
                             f"{weight_threshold}")
        self.max_modes = int(max_modes)
        self.weight_threshold = float(weight_threshold)
        self.seed = int(seed)
        self.condition: tuple[str, ...] = ()
        self.columns: list[ColumnModes] | None = None
        self._rng = np.random.default_rng(self.seed)

    # ------------------------------------------------------------------ the Representation protocol
    def _require_fitted(self) -> list[ColumnModes]:
        if self.columns is None:
            raise RuntimeError("ModeSpecificNormalizer is not fitted: call fit(training rows) first")
        return self.columns

    @property
    def width(self) -> int:
        """C, the table's columns."""
        return len(self._require_fitted())

    @property
    def modes(self) -> list[int]:
        """The kept modes of each column."""
        return [c.n_modes for c in self._require_fitted()]

    @property
    def encoded_width(self) -> int:
        """D = sum over columns of (1 + modes)."""
        return sum(1 + k for k in self.modes)

    def fields(self) -> dict[str, Field]:
        """``{"rows": Field((D,), "continuous")}`` (scalars and one-hot mode spans, interleaved)."""
        return {ROWS_FIELD: Field((self.encoded_width,), "continuous")}

    def sizes(self) -> dict[str, Any]:
        """``{"modes": [K_1, ..., K_C]}``: what a tabular model is built with (its output layout)."""
        return {"modes": self.modes}

    def can_encode(self, row: Sequence[float]) -> bool:
        """Whether a row has the fitted number of columns and only finite values."""
        row = np.asarray(row, dtype=float)
        return row.shape == (self.width,) and bool(np.isfinite(row).all())

    def fit(self, rows: np.ndarray, properties: Mapping[str, Any] | None = None) -> ModeSpecificNormalizer:
        """Fit one mixture per column of the training rows ``[n, C]``.

        Raises:
            ValueError: fewer than 2 rows, or a non-finite value.
        """
        from sklearn.mixture import BayesianGaussianMixture

        rows = np.asarray(rows, dtype=float)
        if rows.ndim != 2 or len(rows) < 2 or not np.isfinite(rows).all():
            raise ValueError(f"fit needs at least 2 finite rows [n, C], got shape {rows.shape}")
        columns = []
        for j in range(rows.shape[1]):
            values = rows[:, j]
            mean, std = float(values.mean()), float(values.std())
            scale = std if std > 0 else 1.0
            z = (values - mean) / scale
            distinct = len(np.unique(z))
            if distinct < 2:
                columns.append(ColumnModes(mean, scale, [1.0], [0.0], [1.0]))
                continue
            mixture = BayesianGaussianMixture(
                n_components=min(self.max_modes, distinct), weight_concentration_prior=0.001,
                weight_concentration_prior_type="dirichlet_process", max_iter=100, n_init=1,
                random_state=self.seed,
            ).fit(z[:, None])
            keep = mixture.weights_ > self.weight_threshold
            weights = mixture.weights_[keep] / mixture.weights_[keep].sum()
            stds = np.sqrt(mixture.covariances_.reshape(-1)[keep])
            columns.append(ColumnModes(mean, scale, weights, mixture.means_[keep, 0], stds))
        self.columns = columns
        self._rng = np.random.default_rng(self.seed)
        return self

    def encode(self, rows: np.ndarray, properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``{"rows": float32 tensor [n, D]}``: per column the scalar ``alpha`` and the one-hot of the mode
        drawn for the value (draws from the representation's seeded generator).

        Raises:
            ValueError: rows of another width, or a non-finite value.
        """
        import torch

        columns = self._require_fitted()
        rows = np.asarray(rows, dtype=float)
        if rows.ndim != 2 or rows.shape[1] != len(columns) or not np.isfinite(rows).all():
            raise ValueError(f"encode needs finite rows [n, {len(columns)}], got shape {rows.shape}")
        parts = []
        for j, col in enumerate(columns):
            z = (rows[:, j] - col.mean) / col.scale
            logits = col.log_responsibility(z)
            gumbel = -np.log(-np.log(self._rng.uniform(1e-12, 1.0, size=logits.shape)))
            mode = np.argmax(logits + gumbel, axis=1)  # a draw from rho (the Gumbel-max trick)
            alpha = np.clip((z - col.means[mode]) / (4.0 * col.stds[mode]), -ALPHA_CLIP, ALPHA_CLIP)
            parts += [alpha[:, None], np.eye(col.n_modes)[mode]]
        return {ROWS_FIELD: torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))}

    def decode(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Rows ``[n, C]`` from ``batch["rows"]`` ``[n, D]``: per column the most probable mode of its span
        and ``c = 4 phi_k alpha + eta_k`` with ``alpha`` clipped to ``[-1, 1]``, un-standardised.

        Raises:
            ValueError: no ``rows`` field, or rows of another width.
        """
        columns = self._require_fitted()
        if ROWS_FIELD not in batch:
            raise ValueError(f"the batch has no {ROWS_FIELD!r} field (fields: {sorted(batch)})")
        value = batch[ROWS_FIELD]
        data = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=float)
        if data.ndim != 2 or data.shape[1] != self.encoded_width:
            raise ValueError(f"rows must be [n, {self.encoded_width}], got {list(data.shape)}")
        out = np.zeros((len(data), len(columns)))
        offset = 0
        for j, col in enumerate(columns):
            alpha = np.clip(data[:, offset], -1.0, 1.0)
            mode = np.argmax(data[:, offset + 1: offset + 1 + col.n_modes], axis=1)
            z = 4.0 * col.stds[mode] * alpha + col.means[mode]
            out[:, j] = z * col.scale + col.mean
            offset += 1 + col.n_modes
        return out

    def decode_settings(self) -> dict[str, Any]:
        """How a generated row becomes table values."""
        return {"rule": "per column: argmax mode of its span, alpha clipped to [-1, 1], c = 4 std_k alpha + "
                        "mean_k, un-standardised"}

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state: the settings and every column's modes."""
        return {"max_modes": self.max_modes, "weight_threshold": self.weight_threshold, "seed": self.seed,
                "columns": [c.state() for c in self._require_fitted()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ModeSpecificNormalizer:
        """Rebuild a fitted representation from :meth:`state_dict`."""
        built = cls(int(state["max_modes"]), float(state["weight_threshold"]), int(state["seed"]))
        built.columns = [ColumnModes(**c) for c in state["columns"]]
        return built

    def __repr__(self) -> str:
        fitted = "unfitted" if self.columns is None else f"modes={self.modes}"
        return f"ModeSpecificNormalizer(max_modes={self.max_modes}, {fitted})"

