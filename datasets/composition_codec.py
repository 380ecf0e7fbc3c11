"""Composition representations: an element vocabulary and two codecs between formulas and arrays.

- :class:`ElementVocabulary`: the elements of the training formulas, ordered by atomic number. Fitted on the
  training split only, so a model never sees an element it could not have learnt.
- :class:`FractionCodec`: a formula as its vector of element fractions over the vocabulary (sums to 1).
  Fractions do not say how many atoms there are; decoding tries ``N = 1, 2, ..., max_atoms`` and keeps the
  first integer counts ``c = round(f * N)`` whose fractions ``c / sum(c)`` are all within ``tol`` of ``f``.
  For an exact encoding of a reduced formula with ``T <= max_atoms`` atoms this returns that formula when
  ``tol`` is below about ``1 / max_atoms**2`` (another composition with fewer atoms differs from it by at
  least ``1 / (T * N)`` in some fraction), which the defaults (300 atoms, ``tol = 1e-6``) satisfy. Generated
  vectors need a looser tolerance and a smaller ``max_atoms`` (e.g. 20 atoms, ``tol = 0.02``), chosen and
  stated by the model.
- :class:`CountMatrixCodec`: MatGAN's representation (Dan et al. 2020, npj Comput Mater 6, 84; code
  originofmatter/MatGAN ``function/one_hot_matrix.py``): a ``levels x elements`` matrix (the released code's
  config: 8 levels, 85 elements) whose column of an element one-hot encodes its number of atoms in the
  reduced formula. As in the released code, level ``k`` stands for ``k + 1`` atoms and an absent element has
  an all-zero column, so counts 1 to 8 are representable; ``zero_level=True`` instead uses level 0 for
  "absent" (counts 0 to 7), which makes every column a proper one-hot categorical. Decoding follows MatGAN's
  ``reduce_molecule``: an entry counts when it is at least ``1 - tolerate`` (MatGAN: ``tolerate = 0.8``);
  where several entries of a column pass, the largest entry decides (the released code kept the last one).
  Formulas with a count above the top level are not representable: on mp_e_form about a third of the reduced
  formulas have an element with more than 8 atoms; :meth:`CountMatrixCodec.can_encode` says which, so
  callers count and report what they leave out.

Every decoder returns, per item, the reduced formula (``pymatgen`` ``Composition.reduced_formula``) or a
:class:`~bench.datasets.representation.DecodeFailure` with its reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element

from .compositions import normalise_formula
from .representation import DecodeFailure

__all__ = [
    "CountMatrixCodec",
    "ElementVocabulary",
    "FractionCodec",
    "element_amounts",
    "formula_from_amounts",
]


def element_amounts(formula: str) -> dict[str, float]:
    """Element symbol -> amount in the reduced formula of ``formula`` (``Na2Cl2`` -> ``{Na: 1, Cl: 1}``).

    Raises:
        ValueError: the formula does not parse or names a non-element (see
            :func:`~bench.datasets.compositions.normalise_formula`).
    """
    return dict(_amounts(formula))


@functools.lru_cache(maxsize=200_000)
def _amounts(formula: str) -> tuple[tuple[str, float], ...]:
    reduced = normalise_formula(formula)
    return tuple((el.symbol, float(amount)) for el, amount in Composition(reduced).items())


def formula_from_amounts(amounts: Mapping[str, float]) -> str:
    """The reduced formula of element amounts (zero amounts are left out).

    Raises:
        ValueError: when no amount is positive.
    """
    kept = {symbol: float(v) for symbol, v in amounts.items() if v > 0}
    if not kept:
        raise ValueError("no element has a positive amount")
    return Composition(kept).reduced_formula


@dataclass(frozen=True)
class ElementVocabulary:
    """The elements a codec knows, ordered by atomic number.

    Attributes:
        symbols: element symbols, ordered by atomic number.
    """

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        z = [Element(s).Z for s in self.symbols]
        if z != sorted(set(z)):
            raise ValueError("vocabulary symbols must be distinct elements ordered by atomic number")

    @classmethod
    def fit(cls, formulas: Iterable[str]) -> ElementVocabulary:
        """The vocabulary of the elements that occur in ``formulas`` (the training split)."""
        found: set[str] = set()
        for formula in formulas:
            found.update(element_amounts(formula))
        return cls(tuple(sorted(found, key=lambda s: Element(s).Z)))

    def __len__(self) -> int:
        return len(self.symbols)

    def index(self, symbol: str) -> int:
        """Position of ``symbol``; raises KeyError for an element outside the vocabulary."""
        return self._positions()[symbol]

    def _positions(self) -> dict[str, int]:
        cached = self.__dict__.get("_pos")
        if cached is None:
            cached = {s: i for i, s in enumerate(self.symbols)}
            object.__setattr__(self, "_pos", cached)
        return cached

    def missing(self, formula: str) -> list[str]:
        """Elements of ``formula`` that are not in the vocabulary."""
        return [s for s in element_amounts(formula) if s not in self._positions()]

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state."""
        return {"symbols": list(self.symbols)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ElementVocabulary:
        """Rebuild from :meth:`state_dict`."""
        return cls(tuple(state["symbols"]))


def _encode_check(vocab: ElementVocabulary, formula: str) -> tuple[dict[str, float] | None, str | None]:
    try:
        amounts = element_amounts(formula)
    except ValueError as err:
        return None, str(err)
    outside = [s for s in amounts if s not in vocab._positions()]
    if outside:
        return None, f"element(s) {', '.join(outside)} not in the vocabulary"
    return amounts, None


def _raise_unencodable(formulas: Sequence[str], reasons: list[tuple[int, str]], what: str) -> None:
    first_i, first_reason = reasons[0]
    raise ValueError(
        f"{len(reasons)} of {len(formulas)} formulas cannot be {what} (first: {formulas[first_i]!r}: "
        f"{first_reason}); filter them with can_encode() and report how many were left out"
    )


class FractionCodec:
    """Element-fraction vectors over a vocabulary (see the module docstring).

    Args:
        vocabulary: the elements.
        max_atoms: the largest number of atoms tried when decoding.
        tol: how far each decoded fraction may be from the vector's when decoding.
    """

    def __init__(self, vocabulary: ElementVocabulary, max_atoms: int = 300, tol: float = 1e-6) -> None:
        if max_atoms < 1 or tol < 0:
            raise ValueError("max_atoms must be >= 1 and tol >= 0")
        self.vocabulary = vocabulary
        self.max_atoms = int(max_atoms)
        self.tol = float(tol)

    @property
    def shape(self) -> tuple[int]:
        """Shape of one encoded item."""
        return (len(self.vocabulary),)

    def can_encode(self, formula: str) -> str | None:
        """None when ``formula`` can be encoded, else the reason."""
        return _encode_check(self.vocabulary, formula)[1]

    def encode(self, formulas: Sequence[str]) -> np.ndarray:
        """Fraction vectors, shape ``(n, len(vocabulary))``, float64, each row summing to 1.

        Raises:
            ValueError: when any formula cannot be encoded (the message names the first and the count).
        """
        out = np.zeros((len(formulas), len(self.vocabulary)))
        bad: list[tuple[int, str]] = []
        for i, formula in enumerate(formulas):
            amounts, reason = _encode_check(self.vocabulary, formula)
            if amounts is None:
                bad.append((i, str(reason)))
                continue
            total = sum(amounts.values())
            for symbol, amount in amounts.items():
                out[i, self.vocabulary.index(symbol)] = amount / total
        if bad:
            _raise_unencodable(formulas, bad, "encoded as fractions")
        return out

    def decode(
        self,
        vectors: np.ndarray,
        max_atoms: int | None = None,
        tol: float | None = None,
        min_fraction: float = 0.0,
        integer: bool = True,
    ) -> list[str | DecodeFailure]:
        """Formulas from fraction vectors.

        Args:
            vectors: shape ``(n, len(vocabulary))``; negative entries count as 0, rows are renormalised.
            max_atoms: override the codec's ``max_atoms``.
            tol: override the codec's ``tol``.
            min_fraction: entries below this (after renormalising) are set to 0 first.
            integer: find integer counts (default); False returns the fractional composition, amounts rounded
                to 6 decimals (for datasets such as ``steels_yield`` whose formulas are fractions).

        Returns:
            One reduced formula or :class:`DecodeFailure` per row.
        """
        arr = np.asarray(vectors, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != len(self.vocabulary):
            raise ValueError(f"expected shape (n, {len(self.vocabulary)}), got {arr.shape}")
        n_max = self.max_atoms if max_atoms is None else int(max_atoms)
        tol = self.tol if tol is None else float(tol)
        sizes = np.arange(1, n_max + 1, dtype=float)[:, None]
        out: list[str | DecodeFailure] = []
        for i, row in enumerate(arr):
            row = np.where(np.isfinite(row), np.clip(row, 0.0, None), 0.0)
            if row.sum() <= 0:
                out.append(DecodeFailure("no positive fraction", index=i))
                continue
            f = row / row.sum()
            f = np.where(f < min_fraction, 0.0, f)
            nz = np.flatnonzero(f)
            if not len(nz):
                out.append(DecodeFailure(f"every fraction is below min_fraction={min_fraction}", index=i))
                continue
            f = f[nz] / f[nz].sum()
            symbols = [self.vocabulary.symbols[j] for j in nz]
            if not integer:
                out.append(formula_from_amounts(dict(zip(symbols, np.round(f, 6), strict=True))))
                continue
            counts = np.rint(sizes * f[None, :])
            totals = counts.sum(axis=1, keepdims=True)
            decoded = counts / np.where(totals > 0, totals, 1.0)
            ok = (np.abs(decoded - f[None, :]).max(axis=1) <= tol) & (totals[:, 0] > 0)
            hits = np.flatnonzero(ok)
            if not len(hits):
                out.append(
                    DecodeFailure(
                        f"no integer formula with at most {n_max} atoms within {tol} of the fractions",
                        index=i,
                    )
                )
                continue
            best = counts[hits[0]]
            out.append(formula_from_amounts(dict(zip(symbols, best, strict=True))))
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state."""
        return {
            "vocabulary": self.vocabulary.state_dict(),
            "max_atoms": self.max_atoms,
            "tol": self.tol,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FractionCodec:
        """Rebuild from :meth:`state_dict`."""
        return cls(ElementVocabulary.from_state(state["vocabulary"]), state["max_atoms"], state["tol"])


class CountMatrixCodec:
    """MatGAN's element-by-count one-hot matrix, shape ``(levels, len(vocabulary))`` per formula.

    Args:
        vocabulary: the elements (the matrix's columns).
        levels: number of count levels (MatGAN: 8).
        zero_level: False (MatGAN's released code): level ``k`` is ``k + 1`` atoms, an absent element has a
            zero column; True: level 0 is "absent" and level ``k`` is ``k`` atoms.
        tolerate: MatGAN's decoding tolerance; an entry counts when it is at least ``1 - tolerate``
            (``zero_level=False`` only; with a zero level every column is decoded by its argmax).
    """

    def __init__(
        self,
        vocabulary: ElementVocabulary,
        levels: int = 8,
        zero_level: bool = False,
        tolerate: float = 0.8,
    ) -> None:
        if levels < 2 or not 0.0 <= tolerate < 1.0:
            raise ValueError("levels must be >= 2 and 0 <= tolerate < 1")
        self.vocabulary = vocabulary
        self.levels = int(levels)
        self.zero_level = bool(zero_level)
        self.tolerate = float(tolerate)

    @property
    def max_count(self) -> int:
        """The largest representable number of atoms of one element."""
        return self.levels - 1 if self.zero_level else self.levels

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one encoded item: ``(levels, len(vocabulary))``."""
        return (self.levels, len(self.vocabulary))

    def can_encode(self, formula: str) -> str | None:
        """None when ``formula`` can be encoded, else the reason."""
        amounts, reason = _encode_check(self.vocabulary, formula)
        if amounts is None:
            return reason
        for symbol, amount in amounts.items():
            if not math.isclose(amount, round(amount), abs_tol=1e-8):
                return f"non-integer amount {amount:g} of {symbol}"
            if round(amount) > self.max_count:
                return f"{round(amount)} atoms of {symbol}, more than the {self.max_count} the matrix holds"
        return None

    def encode(self, formulas: Sequence[str]) -> np.ndarray:
        """One-hot count matrices, shape ``(n, levels, len(vocabulary))``, float32.

        Raises:
            ValueError: when any formula cannot be encoded (the message names the first and the count).
        """
        out = np.zeros((len(formulas), self.levels, len(self.vocabulary)), dtype=np.float32)
        if self.zero_level:
            out[:, 0, :] = 1.0
        bad: list[tuple[int, str]] = []
        for i, formula in enumerate(formulas):
            reason = self.can_encode(formula)
            if reason is not None:
                bad.append((i, reason))
                continue
            for symbol, amount in element_amounts(formula).items():
                j = self.vocabulary.index(symbol)
                count = int(round(amount))
                level = count if self.zero_level else count - 1
                out[i, :, j] = 0.0
                out[i, level, j] = 1.0
        if bad:
            _raise_unencodable(formulas, bad, "encoded as count matrices")
        return out

    def decode(self, matrices: np.ndarray) -> list[str | DecodeFailure]:
        """Formulas from (generated) count matrices, shape ``(n, levels, len(vocabulary))``."""
        arr = np.asarray(matrices, dtype=float)
        if arr.ndim != 3 or arr.shape[1:] != self.shape:
            raise ValueError(f"expected shape (n, {self.levels}, {len(self.vocabulary)}), got {arr.shape}")
        arr = np.where(np.isfinite(arr), arr, -np.inf)
        best = arr.argmax(axis=1)  # (n, V): the level with the largest entry of each column
        if self.zero_level:
            counts = best
        else:
            present = arr.max(axis=1) >= 1.0 - self.tolerate
            counts = np.where(present, best + 1, 0)
        out: list[str | DecodeFailure] = []
        for i, row in enumerate(counts):
            nz = np.flatnonzero(row)
            if not len(nz):
                out.append(DecodeFailure("no element present in the count matrix", index=i))
                continue
            amounts = {self.vocabulary.symbols[j]: float(row[j]) for j in nz}
            out.append(formula_from_amounts(amounts))
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state."""
        return {
            "vocabulary": self.vocabulary.state_dict(),
            "levels": self.levels,
            "zero_level": self.zero_level,
            "tolerate": self.tolerate,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CountMatrixCodec:
        """Rebuild from :meth:`state_dict`."""
        return cls(
            ElementVocabulary.from_state(state["vocabulary"]),
            levels=state["levels"],
            zero_level=state["zero_level"],
            tolerate=state["tolerate"],
        )
