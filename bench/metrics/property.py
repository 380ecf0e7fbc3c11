"""Property fidelity: ``wdist_prop``, the W1 distance between predicted properties of generated and test sets.

CDVAE (Xie et al. 2022, scripts/compute_metrics.py ``GenEval.get_prop_wdist``) predicts the dataset's property
with a trained property model for the drawn valid generated crystals and for the test crystals, and reports
the Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) between the two predicted distributions.
CDVAE's predictor is a trained graph network; here it is a descriptor model, so values are comparable across
models scored by this suite, not with CDVAE's published numbers:

- features: Magpie composition features (matminer ``ElementProperty.from_preset("magpie")``), a few cheap
  geometric features (density, volume per atom, nearest-neighbour distance statistics, neighbour counts) and,
  with ``property_model.crystalnn``, the mean CrystalNN fingerprint (``bench.metrics.fingerprints``);
- model: scikit-learn ``HistGradientBoostingRegressor`` (default) or a standardised ridge regression;
- trained on the training split's structures and property values (``ReferenceSet.properties["train"]``),
  its mean absolute error measured on the test split (when the test split has the property) and reported;
- the fitted model and the test predictions are the metric's reference side, cached on disk by the
  training and test checksums and these settings.

The property name comes from the dataset config (``property`` in the metrics config). Without it, or without
training values, the metric is NaN with a reason.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pymatgen.core import Structure
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from bench.metrics.base import MetricResult, ReferenceSet
from bench.metrics.fingerprints import (
    STRUCT_FP_SIZE,
    Fingerprint,
    composition_fingerprint,
    fingerprint_versions,
    reference_fingerprints,
)
from bench.metrics.generated import GeneratedSet
from bench.metrics.settings import MetricSettings, PropertyModelSettings

__all__ = ["GEOMETRY_FEATURES", "PropertyModel", "WDistProp", "geometry_features", "predict_generated"]

logger = logging.getLogger(__name__)

GEOMETRY_FEATURES = (
    "density",
    "volume_per_atom",
    "nn_distance_min",
    "nn_distance_mean",
    "nn_distance_max",
    "nn_distance_std",
    "neighbours_within_1.2nn",
    "neighbours_within_1.5nn",
)
_NEIGHBOUR_RADIUS = 6.0  # Å; sites with no neighbour within it get NaN distance features
_FP_DECIMALS = 6


def geometry_features(structure: Structure) -> np.ndarray:
    """Cheap geometric descriptors of a structure (see :data:`GEOMETRY_FEATURES`); NaN where undefined."""
    out = np.full(len(GEOMETRY_FEATURES), np.nan)
    try:
        out[0] = float(structure.density)
        out[1] = structure.volume / len(structure)
        centers, _, _, dists = structure.get_neighbor_list(_NEIGHBOUR_RADIUS)
    except Exception as err:  # dummy species, degenerate lattice
        logger.debug("geometry features failed: %s", err)
        return out
    keep = dists > 1e-8
    centers, dists = centers[keep], dists[keep]
    if not len(dists):
        return out
    nearest = np.full(len(structure), np.inf)
    np.minimum.at(nearest, centers, dists)
    has = np.isfinite(nearest)
    near = nearest[has]
    out[2:6] = near.min(), near.mean(), near.max(), near.std()
    counts_12 = np.bincount(centers[dists <= 1.2 * nearest[centers]], minlength=len(structure))
    counts_15 = np.bincount(centers[dists <= 1.5 * nearest[centers]], minlength=len(structure))
    out[6] = float(counts_12[has].mean())
    out[7] = float(counts_15[has].mean())
    return out


def _features(
    structures: Sequence[Structure], fps: Sequence[Fingerprint | None] | None, progress: bool, desc: str
) -> np.ndarray:
    """Feature matrix: Magpie (raw; NaN kept) + geometry (+ CrystalNN mean fingerprint when ``fps`` given)."""
    rows = []
    bar = tqdm(structures, desc=desc, unit="struct", disable=not progress, leave=False)
    for k, s in enumerate(bar):
        parts = [composition_fingerprint(s.composition), geometry_features(s)]
        if fps is not None:
            fp = fps[k]
            struct = (
                fp.struct if fp is not None and fp.struct is not None else np.full(STRUCT_FP_SIZE, np.nan)
            )
            # rounded: CrystalNN values of equivalent environments differ by ~1e-17 between cell choices,
            # and a tree must not split on that noise
            parts.append(np.round(struct, _FP_DECIMALS))
        rows.append(np.concatenate(parts))
    return np.array(rows, dtype=float)


class PropertyModel:
    """A descriptor-based regressor of one property, trained on a dataset's training split.

    Args:
        settings: Model family, features and hyperparameters.
    """

    def __init__(self, settings: PropertyModelSettings) -> None:
        self.settings = settings
        self.model: Any = None
        self.n_train = 0

    @property
    def description(self) -> str:
        """A short name of the model and its features, for the record."""
        s = self.settings
        feats = "magpie+geometry" + ("+crystalnn" if s.crystalnn else "")
        if s.model == "hgb":
            params = f"max_iter={s.max_iter}, learning_rate={s.learning_rate}"
            return f"HistGradientBoostingRegressor({params}) on {feats}"
        return f"Ridge(alpha={s.alpha}) on standardised {feats}"

    def _build(self) -> Any:
        s = self.settings
        if s.model == "hgb":
            from sklearn.ensemble import HistGradientBoostingRegressor

            return HistGradientBoostingRegressor(
                max_iter=s.max_iter, learning_rate=s.learning_rate, random_state=s.seed, early_stopping=False
            )
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(), Ridge(s.alpha)
        )

    def fit(self, features: np.ndarray, targets: np.ndarray) -> PropertyModel:
        """Fit on a feature matrix and targets (rows with a non-finite target must be removed before)."""
        self.model = self._build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(features, targets)
        self.n_train = len(targets)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted property values."""
        if self.model is None:
            raise RuntimeError("PropertyModel.predict called before fit")
        if not len(features):
            return np.zeros(0)
        return np.asarray(self.model.predict(features), dtype=float)


class WDistProp:
    """W1 distance between predicted properties of drawn valid generated structures and of the test split."""

    name = "wdist_prop"
    direction: Literal["max", "min"] = "min"
    description = (
        "Wasserstein-1 distance of the property predicted by a descriptor model, valid generated vs test"
    )
    version = "1.0"
    cacheable: ClassVar[bool] = True
    prepare_key: ClassVar[str] = "property_model"
    reference_splits: ClassVar[tuple[str, ...]] = ("train", "test")
    progress: bool = False

    def __init__(self, settings: MetricSettings | None = None) -> None:
        self.settings = settings or MetricSettings()

    def settings_key(self) -> dict[str, Any]:
        """The property, the model settings and the packages that shape the fitted model."""
        from importlib import metadata

        try:
            sklearn = metadata.version("scikit-learn")
        except metadata.PackageNotFoundError:  # pragma: no cover
            sklearn = None
        return {
            "property": self.settings.property,
            "model": self.settings.to_dict()["property_model"],
            "fingerprints": fingerprint_versions(),
            "scikit-learn": sklearn,
            "features": list(GEOMETRY_FEATURES),
        }

    def unavailable(self, reference: ReferenceSet) -> str | None:
        """Why the metric is undefined for ``reference`` (None when defined); such results are not cached."""
        prop = self.settings.property
        if not prop:
            return "no property named in the metrics config (the dataset config provides it)"
        train = (reference.properties or {}).get("train") or {}
        if prop not in train:
            return f"no training values of property {prop!r} in the reference set"
        values = np.asarray(train[prop], dtype=float)
        if len(values) != len(reference.train):
            return f"{len(values)} training values of {prop!r} for {len(reference.train)} training structures"
        if np.isfinite(values).sum() < 10:
            return f"fewer than 10 finite training values of {prop!r}"
        if not any(s is not None for s in reference.test):
            return "no test structures"
        return None

    def _structure_fps(self, structures: Sequence[Structure | None], desc: str) -> list[Fingerprint] | None:
        if not self.settings.property_model.crystalnn:
            return None
        summary = reference_fingerprints(
            structures, self.settings.parallel, progress=self.progress, desc=desc
        )
        fps: list[Fingerprint] = [Fingerprint(None, None, "failed")] * len(structures)
        for row, pos in enumerate(summary["index"]):
            fps[int(pos)] = Fingerprint(summary["struct"][row], summary["comp_raw"][row])
        return fps

    def prepare(self, reference: ReferenceSet) -> dict[str, Any]:
        """Train the property model on the training split and predict the test split (cached on disk)."""
        reason = self.unavailable(reference)
        if reason is not None:
            return {"reason": reason}
        prop = str(self.settings.property)
        s = self.settings.property_model
        t0 = time.perf_counter()
        values = np.asarray(reference.properties["train"][prop], dtype=float)
        keep = [i for i, st in enumerate(reference.train) if st is not None and np.isfinite(values[i])]
        if s.max_train is not None and len(keep) > s.max_train:
            rng = np.random.default_rng(s.seed)
            keep = sorted(rng.choice(keep, size=s.max_train, replace=False).tolist())
        train = [reference.train[i] for i in keep]
        x_train = _features(
            train, self._structure_fps(train, "fingerprints (train)"), self.progress, "features (train)"
        )
        model = PropertyModel(s).fit(x_train, values[keep])
        test_pos = [i for i, st in enumerate(reference.test) if st is not None]
        test = [reference.test[i] for i in test_pos]
        test_fps = self._structure_fps(reference.test, "fingerprints (test)")
        x_test = _features(
            test,
            [test_fps[i] for i in test_pos] if test_fps is not None else None,
            self.progress,
            "features (test)",
        )
        test_pred = model.predict(x_test)
        out: dict[str, Any] = {
            "model": model,
            "property": prop,
            "test_pred": test_pred,
            "n_train": len(keep),
            "n_train_skipped": len(reference.train) - len(keep),
            "n_test": len(test),
            "mae_test": math.nan,
            "test_true": None,
            "fit_seconds": round(time.perf_counter() - t0, 2),
        }
        test_values = ((reference.properties or {}).get("test") or {}).get(prop)
        if test_values is not None and len(test_values) == len(reference.test):
            true = np.asarray(test_values, dtype=float)[test_pos]
            finite = np.isfinite(true)
            if finite.any():
                out["mae_test"] = float(np.mean(np.abs(test_pred[finite] - true[finite])))
                out["test_true"] = true
                out["mae_test_mean_baseline"] = float(np.mean(np.abs(true[finite] - values[keep].mean())))
        logger.info(
            "property model for %s: MAE on test %.4g (%d training structures)",
            prop,
            out["mae_test"],
            len(keep),
        )
        return out

    def __call__(self, generated: Sequence[Structure | None], prepared: dict[str, Any]) -> MetricResult:
        if "reason" in prepared:
            return MetricResult(
                value=math.nan, extra={"property": self.settings.property, "reason": prepared["reason"]}
            )
        gset = GeneratedSet.wrap(generated, self.settings.validity, parallel=self.settings.parallel)
        idx = gset.distribution_sample(self.settings.distribution)
        model: PropertyModel = prepared["model"]
        extra: dict[str, Any] = {
            "property": prepared["property"],
            "model": model.description,
            "mae_test": prepared["mae_test"],
            "mae_test_mean_baseline": prepared.get("mae_test_mean_baseline", math.nan),
            "n_train": prepared["n_train"],
            "n_test": prepared["n_test"],
            "n_generated_used": len(idx),
            "max_samples": self.settings.distribution.max_samples,
            "seed": self.settings.distribution.seed,
        }
        if not len(idx):
            return MetricResult(value=math.nan, extra={**extra, "reason": "no valid structures"})
        key = ("property_predictions", id(prepared), tuple(int(i) for i in idx))
        held, pred = gset.memo(key, lambda: (prepared, self._predict(gset, idx, model)))
        if held is not prepared:  # pragma: no cover - id reuse after the prepared object was freed
            pred = self._predict(gset, idx, model)
        value = float(wasserstein_distance(pred, prepared["test_pred"]))
        if prepared.get("test_true") is not None:
            true = prepared["test_true"]
            extra["wdist_prop_vs_true_test"] = float(wasserstein_distance(pred, true[np.isfinite(true)]))
        column = np.full(len(gset), np.nan)
        column[idx] = pred
        extra["per_sample_columns"] = {f"predicted_{prepared['property']}": column}
        return MetricResult(value=value, extra=extra)

    def _predict(self, gset: GeneratedSet, idx: np.ndarray, model: PropertyModel) -> np.ndarray:
        return predict_generated(gset, idx, model)


def predict_generated(gset: GeneratedSet, idx: np.ndarray, model: PropertyModel) -> np.ndarray:
    """The property ``model`` predicts for the generated items at positions ``idx`` (constructed structures;
    their CrystalNN fingerprints come from ``gset``'s memo when the model uses them)."""
    structures = [gset[int(i)] for i in idx]
    fps = None
    if model.settings.crystalnn:
        by_index = gset.fingerprints(idx)
        fps = [by_index[int(i)] for i in idx]
    return model.predict(_features(structures, fps, False, "features (generated)"))
