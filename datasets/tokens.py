"""A crystal as a sequence of tokens, for autoregressive models.

The sequence (length ``L = 8 + 4 N`` for ``N = max_atoms`` site slots)::

    BOS  a b c alpha beta gamma  (element x y z) * n_sites  EOS  PAD ...

- **Lattice:** the six parameters as the crystal codec standardises them (``log a, log b, log c`` and the
  three angles, each minus its training mean over its training standard deviation; the codec's ``fit``),
  each rounded to the nearest of ``lattice_bins`` evenly spaced values on ``[-lattice_range, lattice_range]``
  (values beyond are clamped to the ends). With an odd number of bins 0 is one of the values, so a parameter
  that is constant in training (every angle of a cubic set) round-trips exactly. The largest rounding error is
  half a bin, ``lattice_range / (lattice_bins - 1)`` standard deviations.
- **Sites:** per site an element token (the codec's element vocabulary, by atomic number unless listed) and
  three coordinate tokens: each fractional coordinate rounded to the nearest multiple of ``1 / coord_bins``,
  modulo 1 (so 0.999 and 0.001 share a token; the largest error is ``0.5 / coord_bins``).
- **Order:** sites sorted by element, then by their coordinate tokens ``x``, ``y``, ``z``, so the sequence is
  a function of the crystal as given (its cell and origin; the sequence is not invariant to changing them).

Vocabulary: ``PAD, BOS, EOS``, then ``K`` element tokens, ``lattice_bins`` lattice tokens, ``coord_bins``
coordinate tokens (each kind of value has its own tokens, so the grammar says which kind each position holds).

:class:`CrystalTokenizer` is the grammar as tensor arithmetic over the codec's batch (no fitted state);
:class:`CrystalTokens` is the :class:`~bench.datasets.representation.Representation`
(``conf/representation/crystal_tokens.yaml``): the codec's fitted vocabulary and lattice scaler followed by
the tokenizer. A generated sequence that does not parse (wrong grammar, no EOS within ``L`` tokens, more than
``max_atoms`` sites) decodes to a :class:`~bench.datasets.representation.DecodeFailure` whose reason starts
with :data:`PARSE_FAILURE`, so it is written to the samples file and counted as undecodable in the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure

from .codec import DEFAULT_MAX_LENGTH, DEFAULT_MIN_CELL_SHAPE, CrystalCodec
from .representation import DecodeFailure, Field

__all__ = [
    "BOS",
    "DEFAULT_COORD_BINS",
    "DEFAULT_LATTICE_BINS",
    "DEFAULT_LATTICE_RANGE",
    "EOS",
    "PAD",
    "PARSE_FAILURE",
    "CrystalTokenizer",
    "CrystalTokens",
    "TokenParse",
]

PAD, BOS, EOS = 0, 1, 2
SPECIAL = 3
"""Number of special tokens; the element tokens start here."""
PARSE_FAILURE = "parse failure"
"""The start of the reason of every sequence that does not parse (count them by it in a samples file)."""

DEFAULT_LATTICE_BINS = 201
DEFAULT_COORD_BINS = 100
DEFAULT_LATTICE_RANGE = 5.0


@dataclass(frozen=True)
class TokenParse:
    """Token sequences read back into the codec's fields.

    Attributes:
        classes: ``[B, N]`` int64 codec classes (0: empty slot, ``i``: element ``i - 1``); all empty for a
            sequence that did not parse.
        frac_coords: ``[B, N, 3]`` fractional coordinates in ``[0, 1)``.
        lattice: ``[B, 6]`` standardised lattice parameters (zeros where the lattice tokens did not parse).
        reasons: per sequence, None when it parsed, else why not.
    """

    classes: np.ndarray
    frac_coords: np.ndarray
    lattice: np.ndarray
    reasons: list[str | None]

    @property
    def n_failed(self) -> int:
        return sum(reason is not None for reason in self.reasons)


class CrystalTokenizer:
    """The token grammar of a crystal (see the module docstring): encode the codec's fields, parse sequences.

    Args:
        num_types: ``K + 1``, the width of the codec's one-hot atom types (K elements and the empty slot).
        max_atoms: ``N``, the most sites a sequence may hold.
        lattice_bins: values per standardised lattice parameter (odd keeps 0 exact).
        coord_bins: values per fractional coordinate.
        lattice_range: the lattice values span ``[-lattice_range, lattice_range]`` training standard
            deviations.
    """

    def __init__(
        self, num_types: int, max_atoms: int, lattice_bins: int = DEFAULT_LATTICE_BINS,
        coord_bins: int = DEFAULT_COORD_BINS, lattice_range: float = DEFAULT_LATTICE_RANGE,
    ) -> None:
        if num_types < 2 or max_atoms < 1:
            raise ValueError(f"num_types must be >= 2 and max_atoms >= 1, got {num_types} and {max_atoms}")
        if lattice_bins < 2 or coord_bins < 2 or not lattice_range > 0:
            raise ValueError(
                "lattice_bins and coord_bins must be >= 2 and lattice_range > 0, got "
                f"{lattice_bins}, {coord_bins}, {lattice_range}"
            )
        self.num_elements = int(num_types) - 1
        self.max_atoms = int(max_atoms)
        self.lattice_bins = int(lattice_bins)
        self.coord_bins = int(coord_bins)
        self.lattice_range = float(lattice_range)
        self.lattice_start = SPECIAL + self.num_elements
        self.coord_start = self.lattice_start + self.lattice_bins
        self.vocab_size = self.coord_start + self.coord_bins

    @property
    def length(self) -> int:
        """``L = 1 + 6 + 4 N + 1``: BOS, the lattice, ``N`` sites, EOS."""
        return 8 + 4 * self.max_atoms

    @property
    def lattice_step(self) -> float:
        """The spacing of the lattice values, in training standard deviations."""
        return 2.0 * self.lattice_range / (self.lattice_bins - 1)

    def settings(self) -> dict[str, Any]:
        return {"max_atoms": self.max_atoms, "lattice_bins": self.lattice_bins, "coord_bins": self.coord_bins,
                "lattice_range": self.lattice_range}

    # ------------------------------------------------------------------ encode
    def encode(self, atom_types: Any, frac_coords: Any, lattice: Any) -> Any:
        """Token sequences ``[B, L]`` (int64) of a codec batch.

        Args:
            atom_types: ``[B, N', K + 1]`` one-hots (or scores: argmax decides), ``N' <= N``.
            frac_coords: ``[B, N', 3]`` fractional coordinates (wrapped mod 1).
            lattice: ``[B, 6]`` standardised lattice parameters.
        """
        import torch

        atom_types, frac_coords, lattice = (torch.as_tensor(x) for x in (atom_types, frac_coords, lattice))
        classes = atom_types.argmax(dim=-1)
        batch, slots = classes.shape
        if slots > self.max_atoms or atom_types.shape[-1] != self.num_elements + 1:
            raise ValueError(
                f"atom_types of shape {tuple(atom_types.shape)} do not fit the tokenizer (max_atoms="
                f"{self.max_atoms}, num_types={self.num_elements + 1})"
            )
        c = self.coord_bins
        coords = torch.remainder(torch.round(frac_coords.to(torch.float64) * c).long(), c)
        filled = classes > 0
        key = ((classes - 1) * c + coords[..., 0]) * c * c + coords[..., 1] * c + coords[..., 2]
        key = torch.where(filled, key, torch.full_like(key, self.num_elements * c**3))  # empty slots last
        order = key.argsort(dim=1, stable=True)
        classes = classes.gather(1, order)
        coords = coords.gather(1, order.unsqueeze(-1).expand(-1, -1, 3))
        filled = filled.gather(1, order)
        sites = torch.cat([(SPECIAL - 1 + classes).unsqueeze(-1), self.coord_start + coords], dim=-1)
        sites = torch.where(filled.unsqueeze(-1), sites, torch.full_like(sites, PAD))
        sites = sites.reshape(batch, 4 * slots)
        z = lattice.to(torch.float64).clamp(-self.lattice_range, self.lattice_range)
        lat = self.lattice_start + torch.round((z + self.lattice_range) / self.lattice_step).long()
        lat = lat.clamp(self.lattice_start, self.coord_start - 1)
        tokens = torch.full((batch, self.length), PAD, dtype=torch.int64, device=classes.device)
        tokens[:, 0] = BOS
        tokens[:, 1:7] = lat
        tokens[:, 7:7 + 4 * slots] = sites
        tokens.scatter_(1, (7 + 4 * filled.sum(dim=1)).unsqueeze(1), EOS)
        return tokens

    # ------------------------------------------------------------------ grammar
    def grammar(self) -> Any:
        """``[L, V]`` bool: the tokens the grammar allows at each position (BOS at 0; a lattice token at 1..6;
        then per site an element, at least one, or EOS, after ``N`` sites only EOS; three coordinates after
        each element)."""
        import torch

        allowed = torch.zeros((self.length, self.vocab_size), dtype=torch.bool)
        allowed[0, BOS] = True
        allowed[1:7, self.lattice_start:self.coord_start] = True
        for site in range(self.max_atoms + 1):
            p = 7 + 4 * site
            allowed[p, SPECIAL:self.lattice_start] = site < self.max_atoms
            allowed[p, EOS] = site > 0
            if site < self.max_atoms:
                allowed[p + 1:p + 4, self.coord_start:] = True
        return allowed

    def kind(self, token: int) -> str:
        """What a token id is, for messages."""
        if token in (PAD, BOS, EOS):
            return ("PAD", "BOS", "EOS")[token]
        if SPECIAL <= token < self.lattice_start:
            return "an element token"
        if self.lattice_start <= token < self.coord_start:
            return "a lattice token"
        if self.coord_start <= token < self.vocab_size:
            return "a coordinate token"
        return f"token id {token} (outside the vocabulary of {self.vocab_size})"

    # ------------------------------------------------------------------ parse
    def parse(self, tokens: Any) -> TokenParse:
        """Read token sequences ``[B, L']`` (any integer array; tokens after EOS are ignored) into the codec's
        fields, with the reason of each sequence that does not parse (without the :data:`PARSE_FAILURE`
        prefix)."""
        rows = np.asarray(tokens.detach().cpu() if hasattr(tokens, "detach") else tokens).astype(np.int64)
        if rows.ndim != 2:
            raise ValueError(f"token sequences must be [B, L], got shape {rows.shape}")
        n = rows.shape[0]
        classes = np.zeros((n, self.max_atoms), dtype=np.int64)
        frac = np.zeros((n, self.max_atoms, 3), dtype=np.float64)
        lattice = np.zeros((n, 6), dtype=np.float64)
        reasons = [self._parse_row(row, classes[b], frac[b], lattice[b]) for b, row in enumerate(rows)]
        return TokenParse(classes, frac, lattice, reasons)

    def _parse_row(
        self, row: np.ndarray, classes: np.ndarray, frac: np.ndarray, lattice: np.ndarray
    ) -> str | None:
        size = len(row)
        no_eos = f"no EOS within the maximum length of {size} tokens"
        if size == 0 or row[0] != BOS:
            return "empty sequence" if size == 0 else f"position 0 holds {self.kind(int(row[0]))}, not BOS"
        if size < 7:
            return no_eos
        for p in range(1, 7):
            if not self.lattice_start <= row[p] < self.coord_start:
                return f"position {p} holds {self.kind(int(row[p]))} where a lattice value belongs"
        lattice[:] = -self.lattice_range + (row[1:7] - self.lattice_start) * self.lattice_step
        site_classes: list[int] = []
        site_coords: list[np.ndarray] = []
        p = 7
        while True:
            if p >= size:
                return no_eos
            token = int(row[p])
            if token == EOS:
                break
            is_element = SPECIAL <= token < self.lattice_start
            if len(site_classes) == self.max_atoms:
                if is_element:
                    return f"too many atoms: an element at position {p} after {self.max_atoms} sites"
                return f"{no_eos} (position {p} holds {self.kind(token)})"
            if not is_element:
                return f"position {p} holds {self.kind(token)} where an element or EOS belongs"
            if p + 3 >= size:
                return no_eos
            for q in range(p + 1, p + 4):
                if not self.coord_start <= row[q] < self.vocab_size:
                    return f"position {q} holds {self.kind(int(row[q]))} where a coordinate belongs"
            site_classes.append(token - SPECIAL + 1)
            site_coords.append((row[p + 1:p + 4] - self.coord_start) / self.coord_bins)
            p += 4
        if not site_classes:
            return "EOS before any site"
        count = len(site_classes)
        classes[:count] = site_classes
        frac[:count] = np.stack(site_coords)
        return None


class CrystalTokens:
    """The token representation (``conf/representation/crystal_tokens.yaml``): the crystal codec's fitted
    element vocabulary and lattice standardisation, then :class:`CrystalTokenizer`.

    Batch: ``tokens`` ``[B, L]`` int64. ``sizes()`` hands the model the codec's sizes, the tokenizer's
    settings and ``output="tokens"`` (the model returns token sequences, which :meth:`decode` parses).

    Args:
        max_atoms: the most sites a crystal may have.
        elements: element symbols of the vocabulary (None: every element of the training split, by Z).
        condition: must be empty (no condition channel).
        lattice_bins, coord_bins, lattice_range: the tokenizer's settings (:class:`CrystalTokenizer`).
        min_cell_shape, max_length: the codec's decode thresholds for the parsed lattice.
    """

    condition: tuple[str, ...] = ()
    """No condition channel: the property columns of the protocol's ``condition``, always empty."""

    def __init__(
        self, max_atoms: int, elements: Sequence[str] | None = None, condition: Sequence[str] = (),
        lattice_bins: int = DEFAULT_LATTICE_BINS, coord_bins: int = DEFAULT_COORD_BINS,
        lattice_range: float = DEFAULT_LATTICE_RANGE, min_cell_shape: float = DEFAULT_MIN_CELL_SHAPE,
        max_length: float = DEFAULT_MAX_LENGTH,
    ) -> None:
        if condition:
            raise ValueError(
                f"the token representation has no condition channel (asked for {list(condition)}): leave "
                "representation.condition empty"
            )
        self.codec = CrystalCodec(max_atoms, elements, (), min_cell_shape, max_length)
        self.settings = {"lattice_bins": int(lattice_bins), "coord_bins": int(coord_bins),
                         "lattice_range": float(lattice_range)}
        CrystalTokenizer(2, max_atoms, **self.settings)  # refuses bad settings now, not after fitting
        self.tokenizer: CrystalTokenizer | None = None

    @property
    def max_atoms(self) -> int:
        return self.codec.max_atoms

    @property
    def elements(self) -> list[str] | None:
        return self.codec.elements

    def _require_fitted(self) -> CrystalTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("the token representation is not fitted: call fit(train_structures)")
        return self.tokenizer

    def fields(self) -> dict[str, Field]:
        return {"tokens": Field((self._require_fitted().length,), "token", "int64")}

    def sizes(self) -> dict[str, Any]:
        self._require_fitted()
        return {**self.codec.sizes(), **self.settings, "output": "tokens"}

    def decode_settings(self) -> dict[str, Any]:
        """The codec's decode thresholds and the grammar's settings (kept with the samples and the record)."""
        return {**self.codec.decode_settings(), **self.settings, "max_atoms": self.max_atoms}

    def fit(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> CrystalTokens:
        """Fit the codec (elements, lattice standardisation) on the training structures."""
        self.codec.fit(structures)
        self.tokenizer = CrystalTokenizer(self.codec.num_types, self.max_atoms, **self.settings)
        return self

    def can_encode(self, structure: Structure) -> bool:
        return self.codec.can_encode(structure)

    def encode(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        tokenizer = self._require_fitted()
        batch = self.codec.encode(structures)
        return {"tokens": tokenizer.encode(batch["atom_types"], batch["frac_coords"], batch["lattice"])}

    def decode(self, batch: Mapping[str, Any]) -> list[Structure | DecodeFailure]:
        """Parse ``tokens``; a sequence that parses becomes a structure through the codec (which may still
        refuse its lattice), one that does not a failure whose reason starts with :data:`PARSE_FAILURE`."""
        tokenizer = self._require_fitted()
        parsed = tokenizer.parse(batch["tokens"])
        types = np.eye(tokenizer.num_elements + 1, dtype=np.float32)[parsed.classes]
        decoded = self.codec.decode({"atom_types": types, "frac_coords": parsed.frac_coords,
                                     "lattice": parsed.lattice})
        return [item if reason is None else DecodeFailure(f"{PARSE_FAILURE}: {reason}", b)
                for b, (item, reason) in enumerate(zip(decoded, parsed.reasons, strict=True))]

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {**self.codec.state_dict(), **self.settings}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CrystalTokens:
        codec = CrystalCodec.from_state(state)
        rep = cls(codec.max_atoms, codec.elements, (), int(state["lattice_bins"]), int(state["coord_bins"]),
                  float(state["lattice_range"]), codec.min_cell_shape, codec.max_length)
        rep.codec = codec
        rep.tokenizer = CrystalTokenizer(codec.num_types, codec.max_atoms, **rep.settings)
        return rep
