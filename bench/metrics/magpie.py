"""Magpie composition features (matminer ``ElementProperty.from_preset("magpie")``), computed for many
formulas at once.

The 132 features are six statistics (minimum, maximum, range, fraction-weighted mean, fraction-weighted mean
absolute deviation, and the mode: the value of the most abundant element, the smallest value on a tie) of 22
elemental properties from matminer's ``MagpieData`` (Ward et al. 2016, npj Comput Mater 2, 16028), in
matminer's order and with its labels. Missing elemental data are imputed as matminer's preset does by default
(``impute_nan=True``: the mean of the property over the elements that have it), so every element of the
periodic table has all 132 features and no NaN reaches a covariance.

matminer computes them one composition at a time (about a millisecond each); here the element table is read
from matminer once and the statistics are taken over padded arrays, which gives the same numbers (tested
against ``ElementProperty.featurize`` to 1e-9) about a hundred times faster. matminer: BSD-style licence
(Lawrence Berkeley National Laboratory).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from importlib import metadata

import numpy as np
from pymatgen.core import Composition, Element

__all__ = [
    "MAGPIE_PROPERTIES",
    "MAGPIE_STATS",
    "MAGPIE_VERSION",
    "element_table",
    "feature_labels",
    "magpie_features",
    "magpie_versions",
]

MAGPIE_VERSION = "1"
MAGPIE_PROPERTIES: tuple[str, ...] = (
    "Number",
    "MendeleevNumber",
    "AtomicWeight",
    "MeltingT",
    "Column",
    "Row",
    "CovalentRadius",
    "Electronegativity",
    "NsValence",
    "NpValence",
    "NdValence",
    "NfValence",
    "NValence",
    "NsUnfilled",
    "NpUnfilled",
    "NdUnfilled",
    "NfUnfilled",
    "NUnfilled",
    "GSvolume_pa",
    "GSbandgap",
    "GSmagmom",
    "SpaceGroupNumber",
)
MAGPIE_STATS: tuple[str, ...] = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
MAX_Z = 118


def feature_labels() -> list[str]:
    """matminer's labels of the 132 features, in order (``MagpieData <stat> <property>``)."""
    return [f"MagpieData {stat} {prop}" for prop in MAGPIE_PROPERTIES for stat in MAGPIE_STATS]


def magpie_versions() -> dict[str, str | None]:
    """What the feature values depend on (part of every cache key that holds features)."""
    out: dict[str, str | None] = {"magpie": MAGPIE_VERSION}
    for dist in ("matminer", "pymatgen"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[dist] = None
    return out


@functools.cache
def element_table() -> np.ndarray:
    """The 22 Magpie properties of every element, shape ``(119, 22)``, row ``Z`` (row 0 is NaN)."""
    from matminer.utils.data import MagpieData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = MagpieData(impute_nan=True)
    table = np.full((MAX_Z + 1, len(MAGPIE_PROPERTIES)), np.nan)
    for z in range(1, MAX_Z + 1):
        symbol = Element.from_Z(z).symbol
        for k, prop in enumerate(MAGPIE_PROPERTIES):
            table[z, k] = float(data.all_elemental_props[prop][symbol])
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=200_000)
def _parse(formula: str) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(formula).element_composition
    except Exception:  # noqa: BLE001 - any unparsable text gets no features
        return None
    if len(comp) == 0:
        return None
    items = [(el.Z, float(amount)) for el, amount in comp.items()]
    if any(not (1 <= z <= MAX_Z) or not amount > 0 for z, amount in items):
        return None
    return tuple(z for z, _ in items), tuple(a for _, a in items)


def magpie_features(formulas: Sequence[str | None], chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """The 132 Magpie features of each formula.

    Args:
        formulas: formula strings (a reduced formula or any pymatgen-readable formula); None is allowed.
        chunk: rows computed at once (bounds memory: ``chunk x max elements x 22`` floats).

    Returns:
        ``(features, ok)``: features of shape ``(n, 132)`` (NaN rows where ``ok`` is False: an item that is
        None or does not parse).
    """
    table = element_table()
    n = len(formulas)
    n_props = len(MAGPIE_PROPERTIES)
    out = np.full((n, n_props * len(MAGPIE_STATS)), np.nan)
    parsed = [_parse(f) if isinstance(f, str) else None for f in formulas]
    ok = np.array([p is not None for p in parsed], dtype=bool)
    rows = np.flatnonzero(ok)
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        width = max(len(parsed[i][0]) for i in idx)
        z = np.zeros((len(idx), width), dtype=np.int64)
        w = np.zeros((len(idx), width))
        for r, i in enumerate(idx):
            zs, amounts = parsed[i]
            z[r, : len(zs)] = zs
            w[r, : len(zs)] = amounts
        mask = w > 0
        values = table[z]  # (m, width, 22); padded slots read row 0 (NaN) and are masked out below
        masked = np.where(mask[..., None], values, np.nan)
        lo = np.nanmin(masked, axis=1)
        hi = np.nanmax(masked, axis=1)
        total = w.sum(axis=1)[:, None]
        filled = np.where(mask[..., None], values, 0.0)
        mean = (w[..., None] * filled).sum(axis=1) / total
        dev = np.where(mask[..., None], np.abs(values - mean[:, None, :]), 0.0)
        avg_dev = (w[..., None] * dev).sum(axis=1) / total
        # mode: matminer takes np.isclose(weights, weights.max()) and the smallest value among those
        top = w.max(axis=1, keepdims=True)
        tie = mask & (np.abs(w - top) <= 1e-8 + 1e-5 * np.abs(top))
        mode = np.nanmin(np.where(tie[..., None], values, np.nan), axis=1)
        stats = np.stack([lo, hi, hi - lo, mean, avg_dev, mode], axis=2)  # (m, 22, 6)
        out[idx] = stats.reshape(len(idx), n_props * len(MAGPIE_STATS))
    return out, ok
