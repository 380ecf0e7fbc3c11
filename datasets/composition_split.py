"""The pinned, seeded train/val/test split of a composition dataset, identified by a checksum.

Rule (version :data:`SPLIT_VERSION`): each unique reduced formula goes to a split by a number in ``[0, 1)``
read from its own hash, ``u = int(sha256(f"{seed}:{formula}")[:8 bytes]) / 2**64``: train when
``u < f_train``, val when ``u < f_train + f_val``, test otherwise. So

- the split is the same on every machine and numpy version, and a formula's split depends only on the seed and
  the formula (not on row order, nor on the other formulas);
- the three splits are disjoint by construction, also after deduplication: a composition never appears in two
  splits (polymorphs were merged by :mod:`bench.datasets.compositions` first), so novelty against the training
  formulas is well defined for the test split;
- the sizes follow the fractions up to sampling noise (binomial), not exactly.

The default protocol is seed 0 with fractions 0.8 / 0.1 / 0.1. A split's :attr:`CompositionSplit.checksum`
(sha256 of the rule version, the source file's sha256, the seed, the fractions and the three formula lists)
names it in records; :attr:`CompositionSplit.split_id` reads e.g. ``mp_e_form:s0:80-10-10:<checksum>``. The
registry pins the checksum of every dataset's default split, so a change in the data or in pymatgen's reduced
formulas that moves the split is reported (``pinned=False``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compositions import (
    NORMALISE_VERSION,
    CompositionData,
    CompositionDatasetSpec,
    get_composition_spec,
    load_compositions,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SEED",
    "SPLIT_NAMES",
    "SPLIT_VERSION",
    "CompositionSplit",
    "assignment_value",
    "load_composition_split",
    "split_checksum",
    "split_compositions",
]

logger = logging.getLogger(__name__)

SPLIT_VERSION = 1
DEFAULT_SEED = 0
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
SPLIT_NAMES = ("train", "val", "test")


def assignment_value(formula: str, seed: int) -> float:
    """The number in ``[0, 1)`` that places ``formula`` in a split for ``seed`` (8 bytes of a sha256)."""
    digest = hashlib.sha256(f"{int(seed)}:{formula}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    if values[0] <= 0 or values[2] <= 0:
        raise ValueError(f"the train and test fractions must be positive, got {fractions!r}")
    return values  # type: ignore[return-value]


def split_checksum(
    source_sha256: str, seed: int, fractions: tuple[float, float, float], parts: dict[str, list[str]]
) -> str:
    """16 hex digits of the sha256 of everything that defines a split.

    Args:
        source_sha256: sha256 of the dataset file.
        seed: the split seed.
        fractions: train, val and test fractions.
        parts: split name -> its formulas, in order.
    """
    payload = {
        "split_version": SPLIT_VERSION,
        "normalise_version": NORMALISE_VERSION,
        "source_sha256": source_sha256,
        "seed": int(seed),
        "fractions": [float(f) for f in fractions],
        **{name: list(parts[name]) for name in SPLIT_NAMES},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CompositionSplit:
    """A train/val/test split of a composition dataset.

    Attributes:
        dataset: dataset name.
        seed: the split seed.
        fractions: the train, val and test fractions asked for.
        formulas: split name -> its reduced formulas (sorted).
        targets: split name -> the targets aligned with ``formulas``.
        source_sha256: sha256 of the dataset file.
        checksum: the split's checksum (:func:`split_checksum`).
        pinned: True when the checksum equals the registry's pinned one, False when it differs, None when the
            registry pins none for these settings (another seed or fractions, or an unregistered file).
    """

    dataset: str
    seed: int
    fractions: tuple[float, float, float]
    formulas: dict[str, list[str]]
    targets: dict[str, np.ndarray]
    source_sha256: str
    checksum: str
    pinned: bool | None = None

    @property
    def train(self) -> list[str]:
        """Training formulas."""
        return self.formulas["train"]

    @property
    def val(self) -> list[str]:
        """Validation formulas."""
        return self.formulas["val"]

    @property
    def test(self) -> list[str]:
        """Test formulas."""
        return self.formulas["test"]

    @property
    def split_id(self) -> str:
        """``<dataset>:s<seed>:<percentages>:<checksum>``, e.g. ``mp_e_form:s0:80-10-10:1a2b...``."""
        pct = "-".join(f"{100 * f:g}" for f in self.fractions)
        return f"{self.dataset}:s{self.seed}:{pct}:{self.checksum}"

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for a result record."""
        return {
            "split_id": self.split_id,
            "dataset": self.dataset,
            "rule": f"sha256 of '<seed>:<reduced formula>' (split version {SPLIT_VERSION})",
            "seed": self.seed,
            "fractions": list(self.fractions),
            "sizes": {name: len(self.formulas[name]) for name in SPLIT_NAMES},
            "source_sha256": self.source_sha256,
            "checksum": self.checksum,
            "pinned": self.pinned,
        }


def split_compositions(
    data: CompositionData,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    spec: CompositionDatasetSpec | None = None,
) -> CompositionSplit:
    """Split a normalised composition dataset by the rule of the module docstring.

    Args:
        data: the dataset (one row per reduced formula).
        seed: the split seed.
        fractions: train, val and test fractions (summing to 1).
        spec: the registry entry, whose pinned checksum of the default split is compared with this one;
            None for an unregistered file.

    Returns:
        The split.
    """
    fractions = _check_fractions(fractions)
    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    index: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for i, formula in enumerate(data.formulas):
        u = assignment_value(formula, seed)
        index["train" if u < cut_train else "val" if u < cut_val else "test"].append(i)
    formulas = {name: [data.formulas[i] for i in idx] for name, idx in index.items()}
    targets = {name: np.asarray(data.targets[idx], dtype=float) for name, idx in index.items()}
    checksum = split_checksum(data.sha256, seed, fractions, formulas)
    pinned: bool | None = None
    is_default = seed == DEFAULT_SEED and fractions == DEFAULT_FRACTIONS
    if spec is not None and data.pinned and is_default and spec.split_checksum:
        pinned = checksum == spec.split_checksum
        if not pinned:
            logger.warning(
                "%s: the default split has checksum %s, not the pinned %s (pymatgen's reduced formulas may "
                "have changed); results are recorded with this split's own checksum",
                data.name,
                checksum,
                spec.split_checksum,
            )
    return CompositionSplit(
        dataset=data.name,
        seed=int(seed),
        fractions=fractions,
        formulas=formulas,
        targets=targets,
        source_sha256=data.sha256,
        checksum=checksum,
        pinned=pinned,
    )


def load_composition_split(
    name: str,
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> CompositionSplit:
    """Load a registered composition dataset and split it.

    Args:
        name: registered name, e.g. ``mp_e_form``.
        seed: the split seed (default 0, the pinned protocol).
        fractions: train, val and test fractions (default 0.8 / 0.1 / 0.1).
        data_dir: local data dir; defaults to ``$MATGENBENCH_DATA_DIR``.
        cache_dir: cache root; defaults to ``$MATGENBENCH_CACHE_DIR``.
        download: allow downloading the pinned file.

    Returns:
        The split.
    """
    spec = get_composition_spec(name)
    data = load_compositions(spec, data_dir=data_dir, cache_dir=cache_dir, download=download)
    return split_compositions(data, seed=seed, fractions=fractions, spec=spec)
