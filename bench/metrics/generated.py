"""The generated set, with its per-structure work (validity, formula, density) done once per run."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from bench.metrics.composition import check_composition
from bench.metrics.settings import DistributionSettings, ParallelSettings, ValiditySettings
from bench.metrics.structure_checks import check_construction, check_structure

if TYPE_CHECKING:
    from bench.metrics.fingerprints import Fingerprint

__all__ = ["GeneratedSet", "SampleRecord"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class SampleRecord:
    """Everything the suite derives from one generated item without a reference."""

    index: int
    constructed: bool
    construct_reason: str
    struct_valid: bool
    struct_reason: str
    min_distance: float
    comp_valid: bool
    comp_reason: str
    formula: str | None
    element_amounts: tuple[tuple[str, float], ...]
    density: float
    num_elems: int | None
    fingerprint_ok: bool | None = None
    fingerprint_reason: str = ""

    @property
    def valid(self) -> bool:
        """CDVAE's ``valid``: structurally and compositionally valid, and (when required) fingerprintable.

        ``fingerprint_ok`` is None when the fingerprint was not required (or not needed: the item is already
        invalid), so only a computed failure makes an item invalid.
        """
        return self.struct_valid and self.comp_valid and self.fingerprint_ok is not False


def _record(
    index: int,
    item: Structure | None,
    validity: ValiditySettings,
    composition: Mapping[str, float] | None = None,
) -> SampleRecord:
    construction = check_construction(item, validity.min_volume)
    struct = check_structure(
        item, validity.min_distance, validity.min_volume, validity.self_image, construction=construction
    )
    formula: str | None = None
    amounts: tuple[tuple[str, float], ...] = ()
    comp_valid, comp_reason = False, f"not_constructed: {construction.reason}"
    known = item is not None and len(item) > 0
    if known or (item is None and composition):
        try:
            if known:
                element_comp = item.composition.element_composition
            else:  # not built, but its atoms are known (a decode failure of the lattice): CDVAE scores them
                from pymatgen.core import Composition

                element_comp = Composition(dict(composition)).element_composition
            amounts = tuple((el.symbol, float(n)) for el, n in element_comp.items())
            formula = item.composition.reduced_formula if known else element_comp.reduced_formula
        except Exception as err:  # e.g. dummy species without an element
            comp_reason = f"composition_error: {err}"
        else:
            comp = check_composition(
                dict(amounts),
                mode=validity.comp_valid_mode,
                max_combinations=validity.max_combinations,
                smact_table=validity.smact_table,
                pauling_test=validity.pauling_test,
                include_alloys=validity.include_alloys,
            )
            comp_valid, comp_reason = comp.valid, comp.reason
    density = math.nan
    if construction.constructed and item is not None:
        try:
            density = float(item.density)
        except Exception:  # no atomic mass (dummy species)
            density = math.nan
    return SampleRecord(
        index=index,
        constructed=construction.constructed,
        construct_reason=construction.reason,
        struct_valid=struct.valid,
        struct_reason=struct.reason,
        min_distance=struct.min_distance,
        comp_valid=comp_valid,
        comp_reason=comp_reason,
        formula=formula,
        element_amounts=amounts,
        density=density,
        num_elems=len(amounts) if amounts else None,
    )


class GeneratedSet(Sequence[Structure | None]):
    """Generated items plus lazily computed, memoised per-item checks shared by every metric of a run.

    Composition validity is computed for every item that has sites, constructed or not, as CDVAE does
    (its ``Crystal.get_composition`` reads the atom types even when the lattice failed): a ``None`` item is
    scored on its entry of ``compositions`` when one is given (a decode failure's atoms), else it is
    comp-invalid (``not_constructed``).

    With ``validity.require_fingerprint`` the structure fingerprint of every struct- and comp-valid item is
    computed with the records (CDVAE counts an item whose fingerprint raises as invalid); fingerprints are
    memoised per item and shared with the fingerprint metrics.

    Args:
        items: Generated structures; ``None`` marks a sample that could not be made into a crystal.
        validity: Validity conventions.
        progress: Show a progress bar for the per-structure loops.
        parallel: Worker pool settings for the per-structure fingerprints.
        compositions: Per item, element amounts of an item that was not built (None elsewhere); aligned with
            ``items``. None: no such information.
    """

    def __init__(
        self,
        items: Sequence[Structure | None],
        validity: ValiditySettings | None = None,
        progress: bool = False,
        parallel: ParallelSettings | None = None,
        compositions: Sequence[Mapping[str, float] | None] | None = None,
    ) -> None:
        self.items: list[Structure | None] = list(items)
        if compositions is not None and len(compositions) != len(self.items):
            raise ValueError(f"{len(compositions)} compositions for {len(self.items)} generated items")
        self.compositions = list(compositions) if compositions is not None else [None] * len(self.items)
        self.validity = validity or ValiditySettings()
        self.progress = progress
        self.parallel = parallel or ParallelSettings()
        self._records: list[SampleRecord] | None = None
        self._fingerprints: dict[int, Fingerprint] = {}
        self._memo: dict[Any, Any] = {}

    @classmethod
    def wrap(
        cls,
        generated: Sequence[Structure | None],
        validity: ValiditySettings | None = None,
        progress: bool = False,
        parallel: ParallelSettings | None = None,
    ) -> GeneratedSet:
        """Reuse ``generated`` if it already is a ``GeneratedSet`` with the same validity settings."""
        validity = validity or ValiditySettings()
        if isinstance(generated, GeneratedSet) and generated.validity == validity:
            return generated
        if isinstance(generated, GeneratedSet):
            return cls(generated.items, validity, progress, parallel, generated.compositions)
        return cls(generated, validity, progress, parallel)

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, i: int) -> Structure | None: ...
    @overload
    def __getitem__(self, i: slice) -> list[Structure | None]: ...
    def __getitem__(self, i: int | slice) -> Structure | None | list[Structure | None]:
        return self.items[i]

    def __iter__(self) -> Iterator[Structure | None]:
        return iter(self.items)

    @property
    def records(self) -> list[SampleRecord]:
        """One :class:`SampleRecord` per item (computed on first access)."""
        if self._records is None:
            bar = tqdm(self.items, desc="validity", unit="struct", disable=not self.progress, leave=False)
            records = [
                _record(i, item, self.validity, self.compositions[i]) for i, item in enumerate(bar)
            ]
            if self.validity.require_fingerprint:
                records = self._with_fingerprint_validity(records)
            self._records = records
            n_invalid = sum(not r.valid for r in records)
            logger.info("validity: %d of %d generated items invalid", n_invalid, len(records))
        return self._records

    def _with_fingerprint_validity(self, records: list[SampleRecord]) -> list[SampleRecord]:
        """Records of struct- and comp-valid items, marked with whether their fingerprint is computable."""
        candidates = [r.index for r in records if r.struct_valid and r.comp_valid]
        fps = self._compute_fingerprints(candidates)
        out = list(records)
        for i in candidates:
            fp = fps[i]
            out[i] = dataclasses.replace(records[i], fingerprint_ok=fp.ok, fingerprint_reason=fp.reason)
        n_failed = sum(not fps[i].ok for i in candidates)
        if n_failed:
            logger.warning(
                "%d struct- and comp-valid items have no fingerprint and count as invalid", n_failed
            )
        return out

    def _compute_fingerprints(self, indices: Iterable[int]) -> dict[int, Fingerprint]:
        from bench.metrics.fingerprints import compute_fingerprints

        wanted = [int(i) for i in indices]
        missing = [i for i in dict.fromkeys(wanted) if i not in self._fingerprints]
        if missing:
            fps = compute_fingerprints(
                [self.items[i] for i in missing],
                self.parallel,
                progress=self.progress,
                desc="fingerprints",
            )
            self._fingerprints.update(zip(missing, fps, strict=True))
        return {i: self._fingerprints[i] for i in wanted}

    def fingerprints(self, indices: Iterable[int] | None = None) -> dict[int, Fingerprint]:
        """Fingerprints of the items at ``indices`` (default: every constructed item), computed once per item.

        Items that were not constructed get a ``not_constructed`` failure without being fingerprinted (CDVAE
        has no structure for them; it would fingerprint a cell below ``min_volume``, which is skipped here).
        """
        from bench.metrics.fingerprints import Fingerprint

        records = self.records
        wanted = range(len(self.items)) if indices is None else [int(i) for i in indices]
        built = [i for i in wanted if records[i].constructed]
        out = self._compute_fingerprints(built)
        for i in wanted:
            if i not in out:
                out[i] = Fingerprint(None, None, f"not_constructed: {records[i].construct_reason}")
        return {i: out[i] for i in wanted}

    def flags(self, name: str) -> np.ndarray:
        """Boolean array of a record flag: ``constructed``, ``struct_valid``, ``comp_valid`` or ``valid``."""
        return np.array([bool(getattr(r, name)) for r in self.records], dtype=bool)

    @property
    def valid_indices(self) -> np.ndarray:
        """Positions of the valid items, in order."""
        return np.flatnonzero(self.flags("valid"))

    def memo(self, key: Any, factory: Callable[[], T]) -> T:
        """Compute ``factory()`` once per key for this set (shared work between metrics)."""
        if key not in self._memo:
            self._memo[key] = factory()
        return self._memo[key]

    def distribution_sample(self, settings: DistributionSettings) -> np.ndarray:
        """Positions of the valid items the distribution metrics use: all of them, or a seeded draw of
        ``max_samples`` without replacement (CDVAE ``GenEval`` draws 1000 with an unseeded
        ``np.random.choice``). Sorted ascending."""

        def draw() -> np.ndarray:
            valid = self.valid_indices
            if len(valid) <= settings.max_samples:
                return valid
            rng = np.random.default_rng(settings.seed)
            return np.sort(rng.choice(valid, size=settings.max_samples, replace=False))

        return self.memo(("distribution_sample", settings.max_samples, settings.seed), draw)
