"""The usability funnel of a set of generated items: requested → decoded → valid → unique → novel → plausible.

How many of the items a model was asked for survive each screen, the question behind the review's "267,489
generated → 92 confirmed". Each stage is a subset of the one before, decided per item from the per-sample
flags the metric suite already computes (the columns of the run's per-sample table), so a stage's count is
never re-derived loosely:

- ``requested``: every item the model was asked for (one row of the samples file each).
- ``decoded``: the representation turned the item into a structure (crystal track: not a decode failure,
  ``construct_reason != "none"``) or a formula (composition track: a non-empty formula).
- ``valid``: decoded and ``valid`` (crystal: struct_valid, comp_valid and a CrystalNN fingerprint, the
  ``valid`` metric's numerator) or SMACT-valid (composition: ``comp_smact_valid``).
- ``unique``: valid and the first of its set of matching valid items in sample order (the per-sample
  ``unique`` column; on the composition track the first occurrence of the reduced formula).
- ``novel``: unique and matching no training item (the ``novel`` column): the numerator of ``vun_rate`` /
  ``comp_vun_rate``. Unlike the record's ``counts.n_unique`` and ``counts.n_novel``, which count among all
  valid items, the funnel's ``unique`` and ``novel`` are cumulative.
- ``plausible``: novel, and the property the suite's own predictor gives it (the model behind ``wdist_prop``,
  or ``comp_wdist_prop`` on the composition track, fitted on the training split) lies within the central 99%
  of the training split's values of that property (its 0.5th to 99.5th percentile, :class:`PlausibleScreen`).
  A cheap screen, not a stability calculation: it drops items whose predicted property is outside what the
  training data spans. ``None`` (n/a, never 0) when there is no predictor or no property for the dataset.

A stage whose flags are missing (its metric was not computed, or does not apply) is ``None`` with the reason,
and so is every stage after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FUNNEL_VERSION",
    "PLAUSIBLE_QUANTILES",
    "STAGES",
    "SCREENED_COLUMN",
    "STAGE_RULES",
    "PlausibleScreen",
    "decoded_flags",
    "funnel_from_table",
    "predicted_column",
    "stage_flags",
]

FUNNEL_VERSION = "1.0"
STAGES = ("requested", "decoded", "valid", "unique", "novel", "plausible")
PLAUSIBLE_QUANTILES = (0.005, 0.995)
"""The central 99% of the training values: the plausible screen's bounds are these quantiles."""

STAGE_RULES: dict[str, dict[str, str]] = {
    "crystal": {
        "requested": "every item the model was asked for",
        "decoded": "decoded into a structure (not a decode failure)",
        "valid": "decoded and valid: struct_valid, comp_valid and a CrystalNN fingerprint (CDVAE)",
        "unique": "valid and the first of its set of matching valid structures in sample order "
                  "(StructureMatcher)",
        "novel": "unique and matching no training structure (the numerator of vun_rate)",
        "plausible": "novel and its predicted property within the training split's central 99%",
    },
    "composition": {
        "requested": "every item the model was asked for",
        "decoded": "decoded into a formula (not a decode failure)",
        "valid": "decoded and SMACT-valid (charge neutrality and Pauling test, CDVAE's rule)",
        "unique": "valid and the first occurrence of its reduced formula",
        "novel": "unique and not a training formula (the numerator of comp_vun_rate)",
        "plausible": "novel and its predicted target within the training split's central 99%",
    },
}
"""What each stage means, per track; written into each stage of a record's funnel."""

_FLAG_COLUMNS = {
    "crystal": {"valid": "valid", "unique": "unique", "novel": "novel"},
    "composition": {"valid": "smact_valid", "unique": "unique", "novel": "novel"},
}
SCREENED_COLUMN = "funnel_predicted"
"""The per-sample column with the prediction the plausible screen used, for every item that reaches ``novel``
(the ``predicted_<property>`` column covers only the distribution draw)."""
_DEFINED_ON = {"crystal": "valid", "composition": "decoded"}
"""The items the ``unique`` and ``novel`` columns are defined for, per track."""
_METRIC_OF = {
    "crystal": {"valid": "valid", "unique": "unique", "novel": "novel"},
    "composition": {"valid": "comp_smact_valid", "unique": "comp_unique", "novel": "comp_novel"},
}
_TRUE = frozenset({"true", "1", "1.0"})
_FALSE = frozenset({"false", "0", "0.0", "", "nan", "<na>", "none"})


@dataclass(frozen=True)
class PlausibleScreen:
    """The plausible screen: a predicted property within ``[low, high]``, the ``quantiles`` of the training
    split's values.

    Attributes:
        property: The property (a dataset column, e.g. ``heat_ref``; the target on the composition track).
        low: Lower bound (inclusive), the ``quantiles[0]`` quantile of the training values.
        high: Upper bound (inclusive), the ``quantiles[1]`` quantile.
        n_train_values: How many finite training values the bounds come from.
        predictor: The predictor, in words (the model behind ``wdist_prop`` / ``comp_wdist_prop``).
        quantiles: The quantiles (numpy's default linear interpolation).
    """

    property: str
    low: float
    high: float
    n_train_values: int
    predictor: str
    quantiles: tuple[float, float] = PLAUSIBLE_QUANTILES

    @classmethod
    def from_training(
        cls, prop: str, values: Sequence[float] | np.ndarray, predictor: str,
        quantiles: tuple[float, float] = PLAUSIBLE_QUANTILES,
    ) -> PlausibleScreen:
        """The screen whose bounds are ``quantiles`` of the finite training ``values``.

        Raises:
            ValueError: No finite training value.
        """
        data = np.asarray(values, dtype=float)
        finite = data[np.isfinite(data)]
        if not len(finite):
            raise ValueError(f"no finite training values of {prop!r}: the plausible screen has no bounds")
        low, high = np.quantile(finite, quantiles)
        return cls(str(prop), float(low), float(high), len(finite), str(predictor),
                   (float(quantiles[0]), float(quantiles[1])))

    def rule(self) -> str:
        """The screen in one sentence, with its bounds."""
        lo, hi = (f"{100 * q:g}" for q in self.quantiles)
        return (f"predicted {self.property} within [{self.low:.4g}, {self.high:.4g}], the {lo}th to {hi}th "
                f"percentile of its {self.n_train_values} training values (predictor: {self.predictor})")

    def passes(self, predicted: Sequence[float] | np.ndarray) -> np.ndarray:
        """Per item: a finite prediction within the bounds (inclusive)."""
        p = np.asarray(predicted, dtype=float)
        with np.errstate(invalid="ignore"):
            return np.isfinite(p) & (p >= self.low) & (p <= self.high)

    def to_dict(self) -> dict[str, Any]:
        """The screen as the record states it."""
        return {
            "rule": self.rule(),
            "property": self.property,
            "low": self.low,
            "high": self.high,
            "quantiles": list(self.quantiles),
            "n_train_values": self.n_train_values,
            "predictor": self.predictor,
        }


def _flag(value: Any) -> bool:
    """One per-sample flag: True, or False for false and undefined (NaN / NA / empty: an invalid item)."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
        raise ValueError(f"not a boolean cell: {value!r}")
    if value is None or value is pd.NA:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


def _flags(values: Any) -> np.ndarray:
    return np.array([_flag(v) for v in values], dtype=bool)


def decoded_flags(frame: pd.DataFrame, track: str) -> np.ndarray:
    """Per item: decoded, from the per-sample table (crystal: ``construct_reason`` is not ``none``, the reason
    :func:`bench.metrics.structure_checks.check_construction` gives an item that is no structure; composition:
    a non-empty ``formula``).

    Raises:
        ValueError: the table lacks the column.
    """
    column = "construct_reason" if track == "crystal" else "formula"
    if column not in frame.columns:
        raise ValueError(f"the per-sample table has no {column!r} column: cannot tell decoded items")
    if track == "crystal":
        return np.array([str(v).strip() != "none" for v in frame[column]], dtype=bool)
    return np.array([isinstance(v, str) and bool(v.strip()) for v in frame[column]], dtype=bool)


def predicted_column(track: str, prop: str | None) -> str | None:
    """The per-sample column holding the predicted property (``predicted_<property>``; ``predicted_target`` on
    the composition track)."""
    if track == "composition":
        return "predicted_target"
    return f"predicted_{prop}" if prop else None


def stage_flags(
    decoded: np.ndarray,
    valid: np.ndarray | None,
    unique: np.ndarray | None,
    novel: np.ndarray | None,
    plausible: np.ndarray | None,
    *,
    defined_on: str = "valid",
) -> dict[str, np.ndarray | None]:
    """The nested per-item flags of every stage; a stage whose flags are ``None`` makes the later ones None.

    Each stage is its flag AND the stage before. The flags come as the metric suite defines them: ``valid``
    must imply ``decoded``, and ``unique`` and ``novel`` are defined only for the items of stage
    ``defined_on`` (crystal track: ``valid``, ``novel`` among all valid items, unique or not; composition
    track: ``decoded``, every readable formula); a flag set outside that is a table that does not belong
    together, and raises.

    Raises:
        ValueError: flags of different lengths, or a flag set on an item outside its definition.
    """
    n = len(decoded)
    out: dict[str, np.ndarray | None] = {"requested": np.ones(n, dtype=bool), "decoded": decoded.astype(bool)}
    base = out["decoded"] if defined_on == "decoded" else valid
    domain = {"valid": ("decoded", out["decoded"]), "unique": (defined_on, base), "novel": (defined_on, base)}
    previous = out["decoded"]
    for name, flags in (("valid", valid), ("unique", unique), ("novel", novel), ("plausible", plausible)):
        if flags is None or previous is None:
            out[name] = previous = None
            continue
        flags = np.asarray(flags, dtype=bool)
        if len(flags) != n:
            raise ValueError(f"{name}: {len(flags)} flags for {n} items")
        if name in domain:
            where, allowed = domain[name]
            outside = flags & ~np.asarray(allowed, dtype=bool)
            if outside.any():
                raise ValueError(f"item {int(np.flatnonzero(outside)[0])} is {name} but not {where}: the "
                                 "per-sample flags do not belong together")
        out[name] = previous = flags & previous
    return out


def _block(
    flags: Mapping[str, np.ndarray | None], track: str, reasons: Mapping[str, str],
    screen: PlausibleScreen | None, source: str,
) -> dict[str, Any]:
    n = len(flags["requested"])  # type: ignore[arg-type]
    stages = []
    for name in STAGES:
        f = flags[name]
        entry: dict[str, Any] = {"name": name, "n": None, "fraction": None, "rule": STAGE_RULES[track][name]}
        if f is not None:
            entry["n"] = int(f.sum())
            entry["fraction"] = entry["n"] / n if n else None
        else:
            entry["reason"] = reasons.get(name) or "the stage before it is n/a"
        stages.append(entry)
    plausible: dict[str, Any] = (screen.to_dict() if screen is not None
                                 else {"rule": None, "reason": reasons.get("plausible") or "no screen"})
    return {"version": FUNNEL_VERSION, "track": track, "stages": stages, "plausible": plausible,
            "source": source}


def funnel_from_table(
    frame: pd.DataFrame,
    track: str,
    *,
    screen: PlausibleScreen | None,
    screen_reason: str | None = None,
    predicted: Sequence[float] | np.ndarray | None = None,
    reasons: Mapping[str, str] | None = None,
    source: str = "evaluate",
) -> tuple[dict[str, Any], list[str]]:
    """The funnel of a per-sample table (the one ``evaluate`` writes beside a record, or the frame it is
    built from), and the last stage each item reaches.

    Args:
        frame: One row per requested item, with the track's flag columns (crystal: ``construct_reason``,
            ``valid``, ``unique``, ``novel``; composition: ``formula``, ``smact_valid``, ``unique``,
            ``novel``).
        track: ``crystal`` or ``composition``.
        screen: The plausible screen, or None (plausible is n/a, with ``screen_reason``).
        screen_reason: Why there is no screen.
        predicted: Per item, the predicted property (NaN where not predicted); needed with a screen for every
            item that reaches ``novel``. Default: the table's :data:`SCREENED_COLUMN`, else its
            :func:`predicted_column` (tables written before the funnel, whose distribution draw held every
            valid item).
        reasons: Why a flag column is missing, by stage (default: its metric was not computed).
        source: Where the flags come from, for the record (``evaluate``, or the table's file name).

    Returns:
        ``(funnel, last_stage)``: the record's ``funnel`` block and, per item, the name of the last stage
        it reaches.

    Raises:
        ValueError: the flags are not nested (:func:`stage_flags`), or an item that reaches ``novel`` has no
            prediction while a screen is given.
    """
    if track not in _FLAG_COLUMNS:
        raise ValueError(f"unknown track {track!r}; the funnel knows {sorted(_FLAG_COLUMNS)}")
    why = dict(reasons or {})
    columns: dict[str, np.ndarray | None] = {}
    for stage, column in _FLAG_COLUMNS[track].items():
        if column in frame.columns:
            columns[stage] = _flags(frame[column])
        else:
            columns[stage] = None
            why.setdefault(stage, f"{_METRIC_OF[track][stage]} was not computed")
    decoded = decoded_flags(frame, track)
    partial = stage_flags(decoded, columns["valid"], columns["unique"], columns["novel"], None,
                          defined_on=_DEFINED_ON[track])
    reached = partial["novel"]
    plausible = None
    if screen is None:
        why["plausible"] = screen_reason or "no property predictor for this dataset"
    elif reached is None:
        why.setdefault("plausible", "the novel stage is n/a")
    else:
        if predicted is None:
            column = (SCREENED_COLUMN if SCREENED_COLUMN in frame.columns
                      else predicted_column(track, screen.property))
            if column not in frame.columns:
                raise ValueError(f"the per-sample table has no {column!r} column for the plausible screen")
            predicted = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        values = np.asarray(predicted, dtype=float)
        missing = reached & ~np.isfinite(values)
        if missing.any():
            raise ValueError(f"{int(missing.sum())} novel item(s) have no predicted {screen.property} "
                             "(they were outside the distribution draw): predict them first")
        plausible = screen.passes(values)
    flags = stage_flags(decoded, columns["valid"], columns["unique"], columns["novel"], plausible,
                        defined_on=_DEFINED_ON[track])
    depth = np.zeros(len(decoded), dtype=int)
    for k, name in enumerate(STAGES):
        f = flags[name]
        if f is not None:
            depth[f] = k
    return _block(flags, track, why, screen, source), [STAGES[k] for k in depth]
