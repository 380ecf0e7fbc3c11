"""Compositional validity: CDVAE's SMACT charge-neutrality + Pauling electronegativity rule.

Definition (Xie et al. 2022, CDVAE, scripts/eval_utils.py ``smact_validity``; compositions from
scripts/compute_metrics.py ``Crystal.get_composition``):

1. Count the atoms of each element (elements sorted by atomic number) and divide the counts by their gcd.
2. A single element is valid; with ``include_alloys``, a composition of metals only (``smact.metals``) is
   valid.
3. Otherwise it is valid if some assignment of one oxidation state per element is charge neutral for exactly
   these counts (CDVAE calls ``smact.neutral_ratios`` with ``stoichs=[(c,) for c in counts]``) and passes the
   Pauling test: every cation is less electronegative than every anion (``smact.screening.pauling_test``).
   When a Pauling electronegativity is missing, CDVAE's smact 2.2.1 raised ``TypeError`` on the comparison and
   CDVAE then accepted the combination; smact >= 3 returns False instead. We keep CDVAE's behaviour: pairs are
   checked in order and the first cation-anion pair with a missing value accepts the combination.

``capped`` mode follows DiffCSP (jiaor17/DiffCSP scripts/eval_utils.py): when the number of oxidation-state
combinations exceeds ``max_combinations`` the composition is invalid without enumeration.

Oxidation-state tables: CDVAE's published numbers used smact 2.2.1, whose ``Element.oxidation_states`` read
SMACT's 2014 table (``oxidation_states.txt``). smact >= 3 switched the default to an ICSD-2024 derived table;
``smact14`` reads the 2014 table as shipped with the installed smact (``Element.oxidation_states_smact14``),
``icsd24`` the new default. The installed 2014 file may carry small data fixes made after 2.2.1 (for example
Ir's negative state, SMACT PR #33); a byte-exact copy of the 2.2.1 table is not shipped.

The enumeration itself is vectorised (charges of all combinations in chunks) instead of calling smact once per
combination; it returns the same verdict as the definition above.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["CompositionCheck", "check_composition", "composition_counts"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CompositionCheck:
    """Compositional validity of one item and the rule that decided it."""

    valid: bool
    reason: str  # single_element | all_metals | charge_balanced | not_charge_balanced | pauling_failed | ...
    n_combinations: int = 0


@lru_cache(maxsize=256)
def _element_data(symbol: str, table: str) -> tuple[tuple[int, ...], float | None, bool]:
    """(oxidation states, Pauling electronegativity, is metal) of an element from the installed smact."""
    import smact

    element = smact.Element(symbol)
    if table == "smact14":
        states = getattr(element, "oxidation_states_smact14", None)
        if states is None and not hasattr(element, "oxidation_states_smact14"):
            states = element.oxidation_states  # smact < 3: the 2014 table was the default
    elif table == "icsd24":
        if not hasattr(element, "oxidation_states_icsd24"):
            raise ValueError("smact_table 'icsd24' needs smact >= 3")
        states = element.oxidation_states_icsd24
    else:
        raise ValueError(f"unknown smact_table {table!r}")
    return tuple(int(s) for s in (states or ())), element.pauling_eneg, symbol in smact.metals


def _pauling_ok_cdvae(ox_states: tuple[int, ...], enegs: tuple[float | None, ...]) -> bool:
    """smact 2.2.1's ``eneg_states_test`` with CDVAE's ``except TypeError: electroneg_OK = True``."""
    for (ox1, e1), (ox2, e2) in itertools.combinations(zip(ox_states, enegs, strict=True), 2):
        opposite = (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0)
        if not opposite:
            continue
        if e1 is None or e2 is None:
            return True  # the comparison raised TypeError in smact 2.2.1; CDVAE accepted the combination
        if (ox1 > 0 and e1 >= e2) or (ox1 < 0 and e1 <= e2):
            return False
    return True


def _neutral_combinations(ox_lists: list[tuple[int, ...]], counts: tuple[int, ...]):
    """Yield charge-neutral oxidation-state combinations in ``itertools.product`` order."""
    sizes = [len(o) for o in ox_lists]
    total = math.prod(sizes)
    arrays = [np.asarray(o, dtype=np.int64) * c for o, c in zip(ox_lists, counts, strict=True)]
    for start in range(0, total, _CHUNK):
        flat = np.arange(start, min(start + _CHUNK, total), dtype=np.int64)
        idx = np.unravel_index(flat, sizes)
        charge = np.zeros(flat.shape, dtype=np.int64)
        for arr, ix in zip(arrays, idx, strict=True):
            charge += arr[ix]
        for hit in np.flatnonzero(charge == 0):
            yield tuple(int(o[ix[hit]]) for o, ix in zip(ox_lists, idx, strict=True))


@lru_cache(maxsize=65536)
def _check_reduced(
    symbols: tuple[str, ...],
    counts: tuple[int, ...],
    mode: str,
    max_combinations: int,
    table: str,
    pauling_test: bool,
    include_alloys: bool,
) -> CompositionCheck:
    if len(symbols) == 1:
        return CompositionCheck(True, "single_element")
    try:
        data = [_element_data(s, table) for s in symbols]
    except KeyError as err:
        return CompositionCheck(False, f"unknown_element: {err}")
    if include_alloys and all(is_metal for _, _, is_metal in data):
        return CompositionCheck(True, "all_metals")
    ox_lists = [states for states, _, _ in data]
    enegs = tuple(eneg for _, eneg, _ in data)
    n_comb = math.prod(len(o) for o in ox_lists)
    if mode == "capped" and n_comb > max_combinations:
        return CompositionCheck(False, f"too_many_combinations: {n_comb} > {max_combinations}", n_comb)
    neutral_found = False
    for combo in _neutral_combinations(ox_lists, counts):
        neutral_found = True
        if not pauling_test or _pauling_ok_cdvae(combo, enegs):
            return CompositionCheck(True, "charge_balanced", n_comb)
    return CompositionCheck(False, "pauling_failed" if neutral_found else "not_charge_balanced", n_comb)


def composition_counts(amounts: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """Elements sorted by atomic number and their counts divided by the gcd; None if counts are not integers.

    Args:
        amounts: element symbol -> number of atoms in the cell.

    Returns:
        ``(symbols, counts)`` as CDVAE's ``Crystal.get_composition`` builds them, or None.
    """
    from pymatgen.core import Element

    items = sorted(amounts.items(), key=lambda kv: Element(kv[0]).Z)
    raw = [float(v) for _, v in items]
    ints = [round(v) for v in raw]
    if any(abs(v - i) > 1e-6 or i <= 0 for v, i in zip(raw, ints, strict=True)):
        return None
    gcd = math.gcd(*ints)
    return tuple(s for s, _ in items), tuple(i // gcd for i in ints)


def check_composition(
    amounts: Mapping[str, float],
    mode: str = "cdvae",
    max_combinations: int = 10_000_000,
    smact_table: str = "smact14",
    pauling_test: bool = True,
    include_alloys: bool = True,
) -> CompositionCheck:
    """CDVAE's SMACT validity of a composition (see the module docstring for the rule).

    Args:
        amounts: element symbol -> number of atoms in the cell (e.g. the symbol -> amount items of
            ``structure.composition.element_composition``).
        mode: ``cdvae`` (full enumeration) or ``capped`` (DiffCSP's cap on the number of combinations).
        max_combinations: The cap for ``capped`` mode.
        smact_table: ``smact14`` or ``icsd24``.
        pauling_test: Apply the Pauling electronegativity test.
        include_alloys: All-metal compositions are valid.

    Returns:
        The verdict and the rule that decided it.
    """
    if not amounts:
        return CompositionCheck(False, "empty")
    try:
        reduced = composition_counts(amounts)
    except ValueError as err:  # a symbol pymatgen does not know
        return CompositionCheck(False, f"unknown_element: {err}")
    if reduced is None:
        return CompositionCheck(False, "non_integer_composition")
    symbols, counts = reduced
    return _check_reduced(
        symbols, counts, mode, int(max_combinations), smact_table, pauling_test, include_alloys
    )
