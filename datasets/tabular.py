"""A composition dataset read as a table, and the pinned repeated K-fold of the tabular augmentation track.

The tabular track (``docs/tabular_track.md``) asks whether synthetic rows from a generator fitted on a small
real table help a fixed regressor trained on it. Its tables are the composition datasets of
:mod:`bench.datasets.compositions` (``steels_yield``: 312 alloys, yield strength; ``expt_gap``: 4,604
compositions, measured band gap), each row a composition's **element fractions** over the table's element
vocabulary plus the **target** column.

- :func:`repeated_kfold`: ``n_repeats`` times a seeded permutation of the rows cut into ``n_splits`` folds of
  near-equal size (numpy's ``array_split``); repeat ``r`` permutes with ``default_rng([seed, r])``, so the
  folds are the same on every machine and numpy version that keeps PCG64. :func:`folds_checksum` names them.
- :func:`fold_view`: one fold as arrays. The vocabulary is fitted on the training rows only (elements ordered
  by atomic number). A held-out row with an element outside it cannot be written in the training columns, so
  it is left out of that fold's scoring and counted (``n_test_left_out``), never silently kept with a
  fraction missing.

Columns are the element symbols followed by ``target``; the element columns of every row sum to 1
(:data:`TARGET`, :class:`TableFold.simplex`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .composition_codec import ElementVocabulary, element_amounts

__all__ = [
    "FEATURES",
    "TARGET",
    "CompositionTable",
    "Fold",
    "TableFold",
    "fold_view",
    "folds_checksum",
    "fraction_matrix",
    "project_fractions",
    "repeated_kfold",
]

log = logging.getLogger(__name__)

TARGET = "target"
"""Name of the target column (the last column of every table)."""
FEATURES = ("element_fractions",)
"""The feature sets a table can be read with (``dataset.features``)."""
KFOLD_VERSION = 1
"""Version of the fold rule; part of :func:`folds_checksum`."""


@dataclass(frozen=True)
class Fold:
    """One train/held-out split of a repeated K-fold.

    Attributes:
        repeat: which repetition (0-based).
        fold: which fold of the repetition is held out (0-based).
        train: row indices of the training folds, sorted.
        test: row indices of the held-out fold, sorted.
    """

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        """``r<repeat>f<fold>``."""
        return f"r{self.repeat}f{self.fold}"


def repeated_kfold(n_rows: int, n_splits: int, n_repeats: int, seed: int) -> list[Fold]:
    """The pinned repeated K-fold (see the module docstring): ``n_repeats * n_splits`` folds, repeat-major.

    Args:
        n_rows: rows of the table.
        n_splits: K, folds per repetition (at least 2, at most ``n_rows``).
        n_repeats: repetitions (at least 1).
        seed: the protocol's fold seed.

    Raises:
        ValueError: K below 2 or above the number of rows, or no repetition.
    """
    if n_splits < 2 or n_splits > n_rows:
        raise ValueError(f"n_splits must be between 2 and the {n_rows} rows, got {n_splits}")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    folds: list[Fold] = []
    for repeat in range(n_repeats):
        order = np.random.default_rng([int(seed), repeat]).permutation(n_rows)
        chunks = np.array_split(order, n_splits)
        for k, held in enumerate(chunks):
            rest = np.concatenate([c for j, c in enumerate(chunks) if j != k])
            folds.append(Fold(repeat, k, np.sort(rest), np.sort(held)))
    return folds


def folds_checksum(folds: Sequence[Fold], source_sha256: str = "") -> str:
    """sha256 (16 hex) of the fold rule's version, the data file's sha256 and every fold's held-out rows."""
    digest = hashlib.sha256(f"kfold-v{KFOLD_VERSION}:{source_sha256}".encode())
    for f in folds:
        digest.update(f"{f.name}:".encode() + f.test.astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def fraction_matrix(formulas: Sequence[str], vocabulary: ElementVocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Element fractions of ``formulas`` over ``vocabulary``, and the fraction of each formula's amount that
    falls outside it.

    Returns:
        ``(fractions [n, E], outside [n])``: ``fractions`` of the elements in the vocabulary (a row sums to
        ``1 - outside``).
    """
    out = np.zeros((len(formulas), len(vocabulary)))
    outside = np.zeros(len(formulas))
    positions = {s: i for i, s in enumerate(vocabulary.symbols)}
    for i, formula in enumerate(formulas):
        amounts = element_amounts(formula)
        total = sum(amounts.values())
        for symbol, amount in amounts.items():
            if symbol in positions:
                out[i, positions[symbol]] = amount / total
            else:
                outside[i] += amount / total
    return out, outside


def project_fractions(rows: np.ndarray, n_elements: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Put generated rows back on the simplex: negative (or non-finite) fractions become 0 and the element
    columns of each row are divided by their sum; the target column is kept. A row with no positive fraction,
    or a non-finite target, cannot be written as a composition and is dropped.

    Args:
        rows: ``[n, E + 1]``, element columns first.
        n_elements: E.

    Returns:
        ``(kept rows, kept mask [n], diagnostics)``; the diagnostics are how far the raw rows were from the
        simplex: the mean of ``|sum - 1|`` and the share of negative entries, before the projection.
    """
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or rows.shape[1] != n_elements + 1:
        raise ValueError(f"rows must be [n, {n_elements + 1}] (elements, then the target), got {rows.shape}")
    fractions = rows[:, :n_elements]
    finite = np.isfinite(fractions)
    stats = {
        "mean_abs_sum_error": float(np.mean(np.abs(np.where(finite, fractions, 0.0).sum(axis=1) - 1.0)))
        if len(rows) else 0.0,
        "negative_share": float(np.mean(fractions < 0)) if fractions.size else 0.0,
    }
    clipped = np.where(finite, np.clip(fractions, 0.0, None), 0.0)
    sums = clipped.sum(axis=1)
    keep = (sums > 0) & np.isfinite(rows[:, -1])
    out = np.concatenate([clipped[keep] / sums[keep, None], rows[keep, -1:]], axis=1)
    return out, keep, stats


@dataclass
class TableFold:
    """One fold of a table as arrays (see :func:`fold_view`).

    Attributes:
        fold: the fold.
        columns: the element symbols (training vocabulary, by atomic number), then ``target``.
        train: the training rows ``[n_train, E + 1]``.
        test: the held-out rows the vocabulary can write ``[n_test, E + 1]``.
        test_index: the table rows of ``test``.
        n_test_left_out: held-out rows left out because they hold an element outside the vocabulary.
    """

    fold: Fold
    columns: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray
    test_index: np.ndarray
    n_test_left_out: int = 0

    @property
    def n_elements(self) -> int:
        """E, the element columns (all but the target)."""
        return len(self.columns) - 1

    @property
    def simplex(self) -> slice:
        """The columns that sum to 1 in every row (the element fractions)."""
        return slice(0, self.n_elements)


@dataclass
class CompositionTable:
    """A composition dataset as rows (formula, target), with where it came from.

    Attributes:
        name: dataset name.
        formulas: reduced formulas (one row each; duplicates already merged by the dataset loader).
        targets: target per row.
        target_description: what the target is, with its unit.
        sha256: sha256 of the data file.
        pinned: whether the file matched the registry's checksums.
        summary: the loader's counts and provenance (for the record's ``data_checksums``).
    """

    name: str
    formulas: list[str]
    targets: np.ndarray
    target_description: str = ""
    sha256: str = ""
    pinned: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.formulas)

    @classmethod
    def load(
        cls, name: str, data_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None, download: bool = True,
    ) -> CompositionTable:
        """The registered composition dataset ``name`` (pinned file, normalised formulas;
        :func:`~bench.datasets.compositions.load_compositions`)."""
        from .compositions import load_compositions

        data = load_compositions(name, data_dir=data_dir, cache_dir=cache_dir, download=download)
        return cls(data.name, list(data.formulas), np.asarray(data.targets, dtype=float),
                   data.target_description, data.sha256, data.pinned, data.summary())


def fold_view(table: CompositionTable, fold: Fold, features: str = "element_fractions") -> TableFold:
    """One fold of ``table`` as arrays: the vocabulary fitted on the training rows, held-out rows with an
    element outside it left out and counted.

    Raises:
        ValueError: a feature set other than :data:`FEATURES`.
    """
    if features not in FEATURES:
        raise ValueError(f"dataset.features={features}: the tabular track knows {', '.join(FEATURES)}")
    train_formulas = [table.formulas[int(i)] for i in fold.train]
    vocabulary = ElementVocabulary.fit(train_formulas)
    x_train, _ = fraction_matrix(train_formulas, vocabulary)  # the vocabulary holds all their elements
    x_test, outside = fraction_matrix([table.formulas[int(i)] for i in fold.test], vocabulary)
    kept = outside == 0
    if not kept.all():
        log.info("%s fold %s: %d of %d held-out rows hold an element outside the training vocabulary "
                 "(left out)", table.name, fold.name, int((~kept).sum()), len(kept))
    train = np.concatenate([x_train, table.targets[fold.train, None]], axis=1)
    test = np.concatenate([x_test[kept], table.targets[fold.test][kept, None]], axis=1)
    return TableFold(fold, (*vocabulary.symbols, TARGET), train, test, fold.test[kept], int((~kept).sum()))
