"""A crystal as a fixed-size real matrix, for convolutional models (FTCP-style).

After the real-space part of FTCP (Ren et al. 2022, "An invertible crystallographic representation for
general inverse design of inorganic crystals with targeted properties", Matter, arXiv:2005.07609): blocks of
rows for the elements, the lattice, the site coordinates and the site occupancy, stacked into one 2-D array.
Here every site is a column, so a convolution slides along the sites (in the codec's canonical order:
atomic number, then coordinates) and along the rows (elements by atomic number, then the other blocks).

For ``K`` elements and ``N = max_atoms`` site slots the matrix is ``H x W`` with ``H = K + 6`` rows and
``W = max(N, 3)`` columns (column ``j < N`` is site slot ``j``; the lattice block needs three columns):

======================  ==================================================================================
rows                    content
======================  ==================================================================================
``0 .. K-1``            element one-hot: ``M[k, j] = 1`` when site ``j`` holds element ``k`` (elements by
                        atomic number, the codec's vocabulary)
``K``                   ``log a, log b, log c`` in columns 0-2, standardised with the training mean and
                        standard deviation (the crystal codec's lattice scaler)
``K + 1``               ``alpha, beta, gamma`` in columns 0-2, standardised likewise
``K + 2 .. K + 4``      fractional ``x``, ``y``, ``z`` of site ``j`` in ``[0, 1)``
``K + 5``               occupancy: 1 where site slot ``j`` is filled
======================  ==================================================================================

Every other entry is zero: empty site slots (all their rows), the lattice rows beyond column 2 and, when
``N < 3``, the columns ``N .. 2``. Decoding a (generated) real matrix reads only the entries that carry
information: per site slot the argmax of the element block, present where the occupancy exceeds 0.5,
coordinates wrapped into ``[0, 1)``; the lattice from columns 0-2 of the lattice rows.

:class:`CrystalMatrixLayout` is the layout as tensor arithmetic over the crystal codec's fields (no fitted
state, so a model built with the codec's sizes can use it); :class:`CrystalMatrix` is the
:class:`~bench.datasets.representation.Representation` (``conf/representation/crystal_matrix.yaml``): the
crystal codec's fitted vocabulary, lattice scaler and condition channel, followed by the layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Structure

from .codec import DEFAULT_MAX_LENGTH, DEFAULT_MIN_CELL_SHAPE, CrystalCodec
from .representation import DecodeFailure, Field

__all__ = ["OCCUPANCY_THRESHOLD", "CrystalMatrix", "CrystalMatrixLayout"]

OCCUPANCY_THRESHOLD = 0.5
"""A site slot holds an atom where its occupancy entry is above this."""


class CrystalMatrixLayout:
    """The matrix layout of the module docstring, between the crystal codec's fields and ``[B, H, W]``.

    Args:
        num_types: ``K + 1``, the width of the codec's one-hot atom types (K elements and the empty slot).
        max_atoms: ``N``, the number of site slots.
    """

    def __init__(self, num_types: int, max_atoms: int) -> None:
        if num_types < 2 or max_atoms < 1:
            raise ValueError(f"num_types must be >= 2 and max_atoms >= 1, got {num_types} and {max_atoms}")
        self.num_elements = int(num_types) - 1
        self.max_atoms = int(max_atoms)
        k = self.num_elements
        self.lengths_row = k
        self.angles_row = k + 1
        self.coords_rows = slice(k + 2, k + 5)
        self.occupancy_row = k + 5

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W) = (K + 6, max(N, 3))``."""
        return self.num_elements + 6, max(self.max_atoms, 3)

    def encode(self, atom_types: Any, frac_coords: Any, lattice: Any) -> Any:
        """Matrices ``[B, H, W]`` (float32) of a codec batch.

        Args:
            atom_types: ``[B, N', K + 1]`` one-hots (or scores: argmax decides; class 0 is an empty slot),
                ``N' <= N``.
            frac_coords: ``[B, N', 3]`` fractional coordinates (wrapped mod 1).
            lattice: ``[B, 6]`` standardised lattice parameters.
        """
        import torch

        atom_types, frac_coords, lattice = (torch.as_tensor(x) for x in (atom_types, frac_coords, lattice))
        batch, slots, width = atom_types.shape
        if slots > self.max_atoms or width != self.num_elements + 1:
            raise ValueError(
                f"atom_types of shape {tuple(atom_types.shape)} do not fit the matrix layout (max_atoms="
                f"{self.max_atoms}, num_types={self.num_elements + 1})"
            )
        classes = atom_types.argmax(dim=-1)
        filled = (classes > 0).to(torch.float32)
        height, cols = self.shape
        out = torch.zeros((batch, height, cols), dtype=torch.float32, device=atom_types.device)
        elements = torch.nn.functional.one_hot(classes, self.num_elements + 1)[..., 1:].to(torch.float32)
        out[:, : self.num_elements, :slots] = elements.transpose(1, 2)
        frac = torch.remainder(frac_coords.to(torch.float32), 1.0)
        frac = torch.where(frac >= 1.0, torch.zeros_like(frac), frac) * filled.unsqueeze(-1)
        out[:, self.coords_rows, :slots] = frac.transpose(1, 2)
        out[:, self.occupancy_row, :slots] = filled
        lattice = lattice.to(torch.float32)
        out[:, self.lengths_row, :3] = lattice[:, :3]
        out[:, self.angles_row, :3] = lattice[:, 3:]
        return out

    def to_fields(self, matrix: Any) -> dict[str, Any]:
        """The codec's fields of matrices ``[B, H, W]``: ``atom_types`` ``[B, N, K + 1]`` one-hots (the argmax
        of the element block where the occupancy is above :data:`OCCUPANCY_THRESHOLD`, else the empty
        class), ``frac_coords`` ``[B, N, 3]`` wrapped into ``[0, 1)`` (zero in empty slots), ``lattice``
        ``[B, 6]`` (still standardised).

        Raises:
            ValueError: ``matrix`` is not ``[B, H, W]`` of this layout.
        """
        import torch

        matrix = torch.as_tensor(matrix)
        if matrix.dim() != 3 or tuple(matrix.shape[1:]) != self.shape:
            raise ValueError(
                f"a crystal matrix batch must be [B, {self.shape[0]}, {self.shape[1]}] (K="
                f"{self.num_elements} elements, max_atoms={self.max_atoms}), got shape {list(matrix.shape)}"
            )
        n = self.max_atoms
        sites = matrix[:, :, :n].to(torch.float32)
        present = sites[:, self.occupancy_row] > OCCUPANCY_THRESHOLD
        classes = sites[:, : self.num_elements].argmax(dim=1) + 1
        classes = torch.where(present, classes, torch.zeros_like(classes))
        types = torch.nn.functional.one_hot(classes, self.num_elements + 1).to(torch.float32)
        frac = torch.remainder(sites[:, self.coords_rows].transpose(1, 2), 1.0)
        frac = torch.where(frac >= 1.0, torch.zeros_like(frac), frac)
        # where, not a product: an empty slot's entries are never read, even when they are not finite
        frac = torch.where(present.unsqueeze(-1), frac, torch.zeros_like(frac))
        lattice = self.lattice(matrix).to(torch.float32)
        return {"atom_types": types, "frac_coords": frac, "lattice": lattice}

    def lattice(self, matrix: Any) -> Any:
        """The standardised lattice parameters ``[B, 6]`` of matrices ``[B, H, W]`` (columns 0-2 of the two
        lattice rows)."""
        import torch

        return torch.cat([matrix[:, self.lengths_row, :3], matrix[:, self.angles_row, :3]], dim=1)


class CrystalMatrix:
    """The crystal-matrix representation (``conf/representation/crystal_matrix.yaml``): the crystal codec's
    fitted element vocabulary, lattice standardisation and condition channel, then
    :class:`CrystalMatrixLayout`.

    Batch: ``matrix`` ``[B, H, W]`` float32 (and ``condition`` ``[B, C]`` with a condition). ``sizes()`` hands
    the model the codec's sizes and ``output="matrix"`` (the model returns matrices, which :meth:`decode`
    reads).

    Args:
        max_atoms: the most sites a crystal may have (``N``).
        elements: element symbols of the element block (None: every element of the training split, by Z).
        condition: property columns for the ``condition`` field (the codec's condition channel); empty: none.
        min_cell_shape, max_length: the codec's decode thresholds for the decoded lattice.
    """

    def __init__(
        self, max_atoms: int, elements: Sequence[str] | None = None, condition: Sequence[str] = (),
        min_cell_shape: float = DEFAULT_MIN_CELL_SHAPE, max_length: float = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.codec = CrystalCodec(max_atoms, elements, condition, min_cell_shape, max_length)
        self.layout: CrystalMatrixLayout | None = None

    @property
    def condition(self) -> tuple[str, ...]:
        """The property columns of the ``condition`` field (empty: none)."""
        return self.codec.condition

    @property
    def max_atoms(self) -> int:
        return self.codec.max_atoms

    @property
    def elements(self) -> list[str] | None:
        return self.codec.elements

    def _require_fitted(self) -> CrystalMatrixLayout:
        if self.layout is None:
            raise RuntimeError("the crystal matrix representation is not fitted: call fit(train_structures)")
        return self.layout

    def fields(self) -> dict[str, Field]:
        """``matrix`` ``(H, W)`` (mixed values: one-hots, standardised lattice, coordinates, occupancy; see
        the module docstring), plus the codec's ``condition`` when it has one."""
        out = {"matrix": Field(self._require_fitted().shape, "continuous")}
        if self.condition:
            out["condition"] = Field((len(self.condition),), "condition")
        return out

    def sizes(self) -> dict[str, Any]:
        """The codec's sizes (``num_types``, ``max_atoms``, ``condition_dim`` with a condition), from which
        the model rebuilds the layout, and ``output="matrix"``."""
        self._require_fitted()
        return {**self.codec.sizes(), "output": "matrix"}

    def decode_settings(self) -> dict[str, Any]:
        """The codec's decode thresholds and the occupancy threshold (kept with the samples and the
        record)."""
        return {**self.codec.decode_settings(), "occupancy_threshold": OCCUPANCY_THRESHOLD}

    def fit(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> CrystalMatrix:
        """Fit the codec (elements, lattice standardisation, condition) on the training structures."""
        self.codec.fit(structures, properties)
        self.layout = CrystalMatrixLayout(self.codec.num_types, self.max_atoms)
        return self

    def can_encode(self, structure: Structure) -> bool:
        return self.codec.can_encode(structure)

    def encode(
        self, structures: Sequence[Structure], properties: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """``matrix`` of each structure (sites in the codec's canonical order), and the codec's
        ``condition`` when it has one."""
        layout = self._require_fitted()
        batch = self.codec.encode(structures, properties)
        out = {"matrix": layout.encode(batch["atom_types"], batch["frac_coords"], batch["lattice"])}
        if "condition" in batch:
            out["condition"] = batch["condition"]
        return out

    def decode(self, batch: Mapping[str, Any]) -> list[Structure | DecodeFailure]:
        """Structures from ``matrix`` (see the module docstring for how a real matrix is read); a matrix that
        is no crystal is a :class:`DecodeFailure` with its reason: non-finite entries, no occupied site, or
        (with the species of the occupied sites) non-finite coordinates or lattice, or a lattice the codec
        refuses (too long, angles outside ``(0, 180)``, flat cell).

        Raises:
            ValueError: ``matrix`` is not ``[B, H, W]`` of this representation.
        """
        import torch

        layout = self._require_fitted()
        matrix = batch["matrix"]
        matrix = (matrix.detach().cpu() if hasattr(matrix, "detach") else torch.as_tensor(np.asarray(matrix)))
        matrix = matrix.to(torch.float64)
        fields = layout.to_fields(matrix)  # checks the shape
        values = matrix.numpy()
        n, k = layout.max_atoms, layout.num_elements
        failures: dict[int, DecodeFailure] = {}
        for b, item in enumerate(values):
            occupancy = item[layout.occupancy_row, :n]
            if not (np.all(np.isfinite(item[:k, :n])) and np.all(np.isfinite(occupancy))):
                failures[b] = DecodeFailure("non-finite values in the element block or the occupancy row", b)
                continue
            present = occupancy > OCCUPANCY_THRESHOLD
            if not present.any():
                failures[b] = DecodeFailure(
                    f"empty cell: no site has occupancy above {OCCUPANCY_THRESHOLD}", b
                )
                continue
            species = tuple(self.elements[c] for c in item[:k, :n][:, present].argmax(axis=0))
            lattice = np.concatenate([item[layout.lengths_row, :3], item[layout.angles_row, :3]])
            if not (np.all(np.isfinite(item[layout.coords_rows, :n][:, present]))
                    and np.all(np.isfinite(lattice))):
                failures[b] = DecodeFailure("non-finite coordinates or lattice", b, species)
        if failures:  # the codec reads only finite values; the failed items' are replaced by zeros
            bad = torch.tensor(sorted(failures))
            fields = {key: value.clone() for key, value in fields.items()}
            for value in fields.values():
                value[bad] = 0.0
        decoded = self.codec.decode(fields)
        return [failures.get(b, item) for b, item in enumerate(decoded)]

    def state_dict(self) -> dict[str, Any]:
        """The codec's fitted state (the layout follows from its sizes)."""
        self._require_fitted()
        return self.codec.state_dict()

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CrystalMatrix:
        codec = CrystalCodec.from_state(state)
        rep = cls(codec.max_atoms, codec.elements, (), codec.min_cell_shape, codec.max_length)
        rep.codec = codec
        rep.layout = CrystalMatrixLayout(codec.num_types, codec.max_atoms)
        return rep
