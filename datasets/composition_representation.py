"""The composition track's representation: a formula as MatGAN's count matrix, elements by count levels.

:class:`CompositionCounts` is the :class:`~bench.datasets.representation.Representation` every composition
model trains on (``conf/representation/composition_counts.yaml``). It wraps
:class:`~bench.datasets.composition_codec.CountMatrixCodec` with ``zero_level=True`` (MatGAN, Dan et al. 2020,
npj Comput Mater 6, 84, with a level for "absent" so each element's column is a proper categorical):

- batch ``{"counts": float32 [B, E, L]}``, one-hot over the last axis: ``E`` elements of the training
  vocabulary ordered by atomic number, ``L = levels`` count levels, level ``k`` meaning ``k`` atoms of the
  element in the reduced formula (level 0: absent). This is the transpose of ``CountMatrixCodec.encode``'s
  ``(n, L, E)``.
- ``sizes()`` = ``{"num_elements": E, "num_levels": L}``, the keyword arguments a model is built with.
- ``decode`` takes the argmax over the last axis (one-hots, probabilities or logits alike); a row whose every
  element is at level 0 is a :class:`~bench.datasets.representation.DecodeFailure`, any other row the reduced
  formula of its counts.

Formulas it cannot represent (more than ``levels - 1`` atoms of one element, a fractional amount, an element
outside the vocabulary) are left out of training by the train stage, counted and reported by
:meth:`CompositionCounts.skip_reason` (MatGAN filtered its data the same way). The vocabulary is fitted on the
training formulas that fit the matrix, so every element it knows occurs in what the model learns from.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .composition_codec import CountMatrixCodec, ElementVocabulary, element_amounts
from .representation import ConditionError, DecodeFailure, Field

__all__ = ["COUNTS_FIELD", "CompositionCounts"]

COUNTS_FIELD = "counts"
"""The batch key of the count matrix."""


class CompositionCounts:
    """Formulas as one-hot count matrices ``[E, L]`` (see the module docstring).

    Args:
        levels: count levels per element, level 0 included (9: at most 8 atoms of one element, as MatGAN).
        elements: the vocabulary's element symbols; None fits it on the training formulas (by atomic number).
        condition: must be empty: the composition track has no condition channel.

    Raises:
        ConditionError: a non-empty ``condition``.
        ValueError: fewer than 2 levels.
    """

    def __init__(self, levels: int = 9, elements: Sequence[str] | None = None,
                 condition: Sequence[str] = ()) -> None:
        if isinstance(condition, str):
            condition = [condition]
        if condition:
            raise ConditionError(
                f"representation.condition={list(condition)}: the composition count matrix has no condition "
                "channel; leave representation.condition empty"
            )
        if int(levels) < 2:
            raise ValueError(f"levels must be >= 2 (absent plus at least one count), got {levels}")
        self.levels = int(levels)
        self.elements = None if elements is None else [str(e) for e in elements]
        self.condition: tuple[str, ...] = ()
        self.codec: CountMatrixCodec | None = None
        if self.elements is not None:
            self.codec = self._codec(ElementVocabulary(tuple(self.elements)))

    def _codec(self, vocabulary: ElementVocabulary) -> CountMatrixCodec:
        return CountMatrixCodec(vocabulary, levels=self.levels, zero_level=True)

    @property
    def max_count(self) -> int:
        """The largest number of atoms of one element the matrix holds (``levels - 1``)."""
        return self.levels - 1

    @property
    def fitted(self) -> bool:
        """Whether the vocabulary is known (given, or fitted)."""
        return self.codec is not None

    @property
    def vocabulary(self) -> ElementVocabulary:
        """The element vocabulary (after :meth:`fit`)."""
        return self._require_fitted().vocabulary

    def _require_fitted(self) -> CountMatrixCodec:
        if self.codec is None:
            raise RuntimeError("CompositionCounts is not fitted: call fit(training formulas) first")
        return self.codec

    # ------------------------------------------------------------------ the Representation protocol
    def fields(self) -> dict[str, Field]:
        """``{"counts": Field((E, L), "categorical")}``."""
        return {COUNTS_FIELD: Field((len(self.vocabulary), self.levels), "categorical")}

    def sizes(self) -> dict[str, int]:
        """``{"num_elements": E, "num_levels": L}``: what ``model.module`` is built with."""
        return {"num_elements": len(self.vocabulary), "num_levels": self.levels}

    def skip_reason(self, formula: str) -> str | None:
        """Why ``formula`` cannot be encoded, as a short category (None when it can): ``not a readable
        formula``, ``a fractional amount``, ``more than 8 atoms of one element`` or ``an element outside the
        training vocabulary`` (checked only once the vocabulary is known)."""
        try:
            amounts = element_amounts(formula)
        except ValueError:
            return "not a readable formula"
        if any(not math.isclose(a, round(a), abs_tol=1e-8) for a in amounts.values()):
            return "a fractional amount"
        if any(round(a) > self.max_count for a in amounts.values()):
            return f"more than {self.max_count} atoms of one element"
        if self.codec is not None and self.codec.vocabulary.missing(formula):
            return "an element outside the training vocabulary"
        return None

    def can_encode(self, formula: str) -> bool:
        """Whether ``formula`` can be encoded (:meth:`skip_reason` is None)."""
        return self.skip_reason(formula) is None

    def fit(self, formulas: Sequence[str], properties: Mapping[str, Any] | None = None) -> CompositionCounts:
        """Fit the vocabulary on the training formulas that fit the matrix (unless ``elements`` was given).

        Args:
            formulas: the training formulas.
            properties: ignored (no condition channel).

        Raises:
            ValueError: none of ``formulas`` fits the matrix (the message gives the commonest reason).
        """
        if self.elements is not None:
            return self
        kept = [f for f in formulas if self.skip_reason(f) is None]
        if not kept:
            reasons = Counter(self.skip_reason(f) for f in formulas)
            common = reasons.most_common(1)[0][0] if reasons else "no formulas were given"
            raise ValueError(
                f"none of the {len(formulas)} training formulas fits the count matrix (commonest reason: "
                f"{common}): the count representation needs integer formulas with at most {self.max_count} "
                "atoms of each element"
            )
        self.codec = self._codec(ElementVocabulary.fit(kept))
        return self

    def encode(
        self, formulas: Sequence[str], properties: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``{"counts": float32 tensor [n, E, L]}``, one-hot over the last axis.

        Raises:
            ValueError: a formula cannot be encoded (the message names the first and the count; filter with
                :meth:`can_encode` and report what was left out).
        """
        import torch

        matrices = self._require_fitted().encode(list(formulas))  # (n, L, E)
        return {COUNTS_FIELD: torch.from_numpy(np.ascontiguousarray(matrices.transpose(0, 2, 1)))}

    def decode(self, batch: Mapping[str, Any]) -> list[str | DecodeFailure]:
        """Reduced formulas from ``batch["counts"]`` ``[B, E, L]`` (one-hots, probabilities or logits: the
        argmax over the last axis is each element's level); an all-absent row is a :class:`DecodeFailure`.

        Raises:
            ValueError: the batch has no ``counts`` or it is not ``[B, E, L]``.
        """
        codec = self._require_fitted()
        if COUNTS_FIELD not in batch:
            raise ValueError(f"the batch has no {COUNTS_FIELD!r} field (fields: {sorted(batch)})")
        value = batch[COUNTS_FIELD]
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=float)
        expected = (len(codec.vocabulary), self.levels)
        if array.ndim != 3 or array.shape[1:] != expected:
            raise ValueError(f"counts must be [B, {expected[0]}, {expected[1]}], got {list(array.shape)}")
        return codec.decode(array.transpose(0, 2, 1))

    def decode_settings(self) -> dict[str, Any]:
        """What turned a sample into a failure (recorded with the samples): the argmax rule."""
        return {"rule": "argmax over the count levels of each element; every element absent is a failure",
                "levels": self.levels}

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state: the settings and the fitted vocabulary."""
        return {
            "levels": self.levels,
            "elements": self.elements,
            "vocabulary": self._require_fitted().vocabulary.state_dict(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CompositionCounts:
        """Rebuild a fitted representation from :meth:`state_dict`."""
        built = cls(levels=int(state["levels"]), elements=state.get("elements"))
        built.codec = built._codec(ElementVocabulary.from_state(state["vocabulary"]))
        return built
