"""The crystal representation shared by every model family.

A crystal becomes a fixed-size set of tensors (the convention of CDVAE/DiffCSP, Xie et al. 2022 and Jiao et
al. 2023: lattice + per-site element + fractional coordinates), padded to the dataset's maximum number of
atoms:

- ``atom_types`` ``[B, N, K+1]``: one-hot over the dataset's K elements, column 0 meaning "empty slot";
- ``frac_coords`` ``[B, N, 3]``: fractional coordinates in ``[0, 1)``, zero in empty slots;
- ``lattice`` ``[B, 6]``: ``(log a, log b, log c, alpha, beta, gamma)`` standardised with statistics fitted on
  the training split;
- ``mask`` ``[B, N]``: 1 for a filled slot (a convenience; ``decode`` reads the types instead);
- ``condition`` ``[B, C]``, only when ``condition`` names property columns (e.g. ``["heat_ref"]``): the
  structures' property values, standardised with statistics fitted on the training split.

Sites are stored in a canonical order (atomic number, then fractional coordinates), filled slots first. The
codec owns its scalers (``fit``), as CTGAN's data transformer does, and serialises them with ``state_dict``.
It is the default :class:`~bench.datasets.representation.Representation`
(``conf/representation/crystal.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from .representation import ConditionScaler, DecodeFailure, Field

__all__ = ["CrystalCodec", "DecodeFailure", "FIELDS"]

FIELDS = ("atom_types", "frac_coords", "lattice")

# Decode thresholds; the defaults of conf/representation/crystal.yaml. Smallest V / (a b c) accepted: 1 for a
# cuboid, 0 for coplanar vectors (1e-3: ~0.06 degrees of out-of-plane tilt). Longest lattice vector, Å.
DEFAULT_MIN_CELL_SHAPE = 1e-3
DEFAULT_MAX_LENGTH = 1e4


def _lattice_params(structure: Structure) -> np.ndarray:
    lat = structure.lattice
    return np.array([*lat.abc, *lat.angles], dtype=np.float64)


def _canonical_order(structure: Structure) -> list[int]:
    """Site order: atomic number, then fractional coordinates (wrapped to [0, 1))."""
    keys = []
    for i, site in enumerate(structure):
        frac = np.mod(site.frac_coords, 1.0)
        keys.append((site.specie.Z, *np.round(frac, 6).tolist(), i))
    return [k[-1] for k in sorted(keys)]


class CrystalCodec:
    """Encode pymatgen structures into fixed-size tensors and decode them back.

    Args:
        max_atoms: number of site slots N; a structure with more sites cannot be encoded.
        elements: the element symbols of the one-hot, in order (column ``i + 1`` is ``elements[i]``). When
            ``None``, ``fit`` takes every element seen in the training structures, sorted by atomic number.
        condition: property columns of the dataset (e.g. ``["heat_ref"]``) for the ``condition`` field;
            empty (the default): no ``condition`` field.
        min_cell_shape: decode: smallest ``V / (a b c)`` of a cell (flatter cells are a DecodeFailure).
        max_length: decode: longest lattice vector in Å (longer ones are a DecodeFailure).
    """

    def __init__(
        self,
        max_atoms: int,
        elements: Sequence[str] | None = None,
        condition: Sequence[str] = (),
        min_cell_shape: float = DEFAULT_MIN_CELL_SHAPE,
        max_length: float = DEFAULT_MAX_LENGTH,
    ) -> None:
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        if not 0 <= min_cell_shape < 1 or max_length <= 0:
            raise ValueError(
                f"min_cell_shape must be in [0, 1) and max_length > 0, got {min_cell_shape}, {max_length}"
            )
        self.min_cell_shape = float(min_cell_shape)
        self.max_length = float(max_length)
        self.max_atoms = int(max_atoms)
        self.elements: list[str] | None = list(elements) if elements is not None else None
        self.lattice_mean: np.ndarray | None = None
        self.lattice_std: np.ndarray | None = None
        self.conditioner = ConditionScaler(condition)

    def decode_settings(self) -> dict[str, float]:
        """The decode thresholds (stored with the samples and in the record's metric settings)."""
        return {"min_cell_shape": self.min_cell_shape, "max_length": self.max_length}

    @property
    def condition(self) -> tuple[str, ...]:
        """The property columns of the ``condition`` field (empty: none)."""
        return self.conditioner.columns

    # ------------------------------------------------------------------ fitting and state
    @property
    def fitted(self) -> bool:
        return self.elements is not None and self.lattice_mean is not None and self.conditioner.fitted

    @property
    def num_types(self) -> int:
        """K + 1: the number of classes of ``atom_types`` (elements plus the empty slot)."""
        self._require_fitted()
        return len(self.elements) + 1

    def fields(self) -> dict[str, Field]:
        """The batch layout of :meth:`encode` (see the module docstring)."""
        n, k1 = self.max_atoms, self.num_types
        out = {
            "atom_types": Field((n, k1), "categorical"),
            "frac_coords": Field((n, 3), "periodic"),
            "lattice": Field((6,), "continuous"),
            "mask": Field((n,), "mask"),
        }
        if self.condition:
            out["condition"] = Field((len(self.condition),), "condition")
        return out

    def sizes(self) -> dict[str, int]:
        """What ``model.module`` is built with: ``num_types`` and ``max_atoms`` (and ``condition_dim`` when
        the codec has a condition)."""
        sizes = {"num_types": self.num_types, "max_atoms": self.max_atoms}
        if self.condition:
            sizes["condition_dim"] = len(self.condition)
        return sizes

    def fit(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> CrystalCodec:
        """Fit the element vocabulary (if not given) and the lattice standardisation on training structures,
        and the condition's standardisation on their ``properties`` (columns aligned with ``structures``).

        Raises:
            ValueError: a structure has more than ``max_atoms`` sites.
            bench.datasets.representation.ConditionError: a condition column is missing (the available ones
                are named) or has missing values.
        """
        if len(structures) == 0:
            raise ValueError("cannot fit the codec on an empty list of structures")
        too_big = [i for i, s in enumerate(structures) if len(s) > self.max_atoms]
        if too_big:
            raise ValueError(
                f"{len(too_big)} training structures have more than max_atoms={self.max_atoms} sites "
                f"(first index {too_big[0]}, {len(structures[too_big[0]])} sites): raise dataset.max_atoms"
            )
        if self.elements is None:
            seen = {site.specie.symbol for s in structures for site in s}
            self.elements = sorted(seen, key=lambda sym: Element(sym).Z)
        params = np.stack([_lattice_params(s) for s in structures])
        feats = np.concatenate([np.log(params[:, :3]), params[:, 3:]], axis=1)
        self.lattice_mean = feats.mean(axis=0)
        # A constant feature (e.g. every angle 90 degrees) gets unit scale, not a division by zero.
        std = feats.std(axis=0)
        self.lattice_std = np.where(std < 1e-6, 1.0, std)
        self.conditioner.fit(properties, len(structures))
        return self

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: enough to rebuild the codec with :meth:`from_state`."""
        self._require_fitted()
        state = {
            "max_atoms": self.max_atoms,
            "elements": list(self.elements),
            "lattice_mean": self.lattice_mean.tolist(),
            "lattice_std": self.lattice_std.tolist(),
        }
        if self.condition:  # without one, the state is what it was before the condition channel existed
            state["condition"] = self.conditioner.state_dict()
        # likewise the decode thresholds: stored only when they differ from the defaults
        if self.min_cell_shape != DEFAULT_MIN_CELL_SHAPE:
            state["min_cell_shape"] = self.min_cell_shape
        if self.max_length != DEFAULT_MAX_LENGTH:
            state["max_length"] = self.max_length
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CrystalCodec:
        codec = cls(
            int(state["max_atoms"]),
            state["elements"],
            min_cell_shape=float(state.get("min_cell_shape", DEFAULT_MIN_CELL_SHAPE)),
            max_length=float(state.get("max_length", DEFAULT_MAX_LENGTH)),
        )
        codec.lattice_mean = np.asarray(state["lattice_mean"], dtype=np.float64)
        codec.lattice_std = np.asarray(state["lattice_std"], dtype=np.float64)
        codec.conditioner = ConditionScaler.from_state(state.get("condition"))
        return codec

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "the codec is not fitted: call fit(train_structures) or build it with from_state"
            )

    # ------------------------------------------------------------------ encode
    def can_encode(self, structure: Structure) -> bool:
        """Whether ``structure`` fits the slots and uses only the codec's elements."""
        self._require_fitted()
        known = set(self.elements)
        return len(structure) <= self.max_atoms and all(site.specie.symbol in known for site in structure)

    def encode(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """Encode structures into a batch of float32 tensors (see the module docstring for the layout).

        Args:
            structures: the crystals.
            properties: property columns aligned with ``structures``; read only when the codec has a
                ``condition``.

        Raises:
            ValueError: naming the structure index when it has too many sites or an element outside the
                vocabulary.
            bench.datasets.representation.ConditionError: a condition column is missing or has missing values.
        """
        import torch

        self._require_fitted()
        n, big_n, k1 = len(structures), self.max_atoms, self.num_types
        index = {sym: i + 1 for i, sym in enumerate(self.elements)}
        types = np.zeros((n, big_n, k1), dtype=np.float32)
        types[:, :, 0] = 1.0
        frac = np.zeros((n, big_n, 3), dtype=np.float32)
        mask = np.zeros((n, big_n), dtype=np.float32)
        lattice = np.zeros((n, 6), dtype=np.float64)
        for b, structure in enumerate(structures):
            if len(structure) > big_n:
                raise ValueError(
                    f"structure {b} ({structure.composition.reduced_formula}) has {len(structure)} sites, "
                    f"more than max_atoms={big_n}"
                )
            for slot, site_idx in enumerate(_canonical_order(structure)):
                site = structure[site_idx]
                sym = site.specie.symbol
                if sym not in index:
                    raise ValueError(
                        f"structure {b} contains {sym}, which is not in the codec's elements; "
                        "fit the codec on data that contains it"
                    )
                types[b, slot, 0] = 0.0
                types[b, slot, index[sym]] = 1.0
                frac[b, slot] = np.mod(site.frac_coords, 1.0)
                mask[b, slot] = 1.0
            params = _lattice_params(structure)
            lattice[b] = np.concatenate([np.log(params[:3]), params[3:]])
        lattice = (lattice - self.lattice_mean) / self.lattice_std
        # np.mod can return exactly 1.0 for tiny negative inputs in float32; keep [0, 1).
        frac = np.where(frac >= 1.0, 0.0, frac)
        batch = {
            "atom_types": torch.from_numpy(types),
            "frac_coords": torch.from_numpy(frac.astype(np.float32)),
            "lattice": torch.from_numpy(lattice.astype(np.float32)),
            "mask": torch.from_numpy(mask),
        }
        if self.condition:
            batch["condition"] = torch.from_numpy(self.conditioner.transform(properties, n))
        return batch

    # ------------------------------------------------------------------ decode
    def decode(self, batch: Mapping[str, Any]) -> list[Structure | DecodeFailure]:
        """Decode a batch (tensors or arrays) into structures, or a :class:`DecodeFailure` with its reason.

        ``atom_types`` may be one-hots, logits or probabilities (argmax is taken); fractional coordinates are
        wrapped into the unit cell; the lattice standardisation is inverted.
        """
        self._require_fitted()
        types = _to_numpy(batch["atom_types"])
        frac = _to_numpy(batch["frac_coords"])
        lattice = _to_numpy(batch["lattice"]).astype(np.float64) * self.lattice_std + self.lattice_mean
        out: list[Structure | DecodeFailure] = []
        for b in range(types.shape[0]):
            out.append(self._decode_one(b, types[b], frac[b], lattice[b]))
        return out

    def _decode_one(
        self, b: int, types: np.ndarray, frac: np.ndarray, lattice: np.ndarray
    ) -> Structure | DecodeFailure:
        if not np.all(np.isfinite(types)):
            return DecodeFailure("non-finite values", b)
        cls = types.argmax(axis=-1)
        filled = np.nonzero(cls > 0)[0]
        if filled.size == 0:
            return DecodeFailure("empty cell: every slot decoded as empty", b)
        # the atom types are known from here on: a failure keeps them, so its composition is still scored
        species = tuple(self.elements[c - 1] for c in cls[filled])
        if not (np.all(np.isfinite(frac)) and np.all(np.isfinite(lattice))):
            return DecodeFailure("non-finite values", b, species)
        log_lengths, angles = lattice[:3], lattice[3:]
        if np.any(log_lengths > math.log(self.max_length)):
            return DecodeFailure(f"lattice length too large: {np.exp(log_lengths).max():.3g} A", b, species)
        lengths = np.exp(log_lengths)
        if np.any(angles <= 0) or np.any(angles >= 180):
            angle_list = np.round(angles, 2).tolist()
            return DecodeFailure(f"lattice angle outside (0, 180): {angle_list}", b, species)
        try:
            lat = Lattice.from_parameters(*lengths, *angles)
            volume = lat.volume
        except Exception as err:  # pymatgen raises several types for impossible cells
            return DecodeFailure(f"invalid lattice: {err}", b, species)
        if not np.isfinite(volume) or volume <= 0:
            angle_list = np.round(angles, 2).tolist()
            return DecodeFailure(f"non-positive cell volume for angles {angle_list}", b, species)
        if volume < self.min_cell_shape * float(np.prod(lengths)):
            # V / (abc) near 0: the three vectors are almost coplanar; no crystal, and pymatgen's distance
            # routines fail on the near-singular matrix.
            shape = volume / np.prod(lengths)
            return DecodeFailure(f"degenerate (nearly flat) cell: V/(abc) = {shape:.2e}", b, species)
        coords = np.mod(frac[filled], 1.0)
        try:
            return Structure(lat, list(species), coords)
        except Exception as err:
            return DecodeFailure(f"pymatgen could not build the structure: {err}", b, species)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
