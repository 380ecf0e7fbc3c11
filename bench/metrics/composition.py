"""Compositional validity: CDVAE's SMACT charge-neutrality + Pauling electronegativity rule.

Definition (Xie et al. 2022, CDVAE, scripts/eval_utils.py ``smact_validity``; compositions from
scripts/compute_metrics.py ``Crystal.get_composition``):

1. Count the atoms of each element (elements sorted by atomic number) and divide the counts by their gcd.
2. A single element is valid; with ``include_alloys``, a composition of metals only (``smact.metals``) is
   valid.
3. Otherwise it is valid if some assignment of one oxidation state per element is charge neutral for exactly
   these counts (CDVAE calls ``smact.neutral_ratios`` with ``stoichs=[(c,) for c in counts]``; the threshold
   argument is then unused) and passes the Pauling test ``smact.screening.pauling_test(ox_states, enegs)``.
   With its defaults (``repeat_anions=repeat_cations=True``, ``threshold=0``) smact 2.2.1's ``pauling_test``
   is ``eneg_states_test``: the (element, element) pairs are taken in order and a cation that is at least as
   electronegative as an anion (equal values included) fails the combination. Missing electronegativities
   (``None``; He, Ne, Ar, Pm, Rn, Lr in SMACT's table): in a cation-anion pair the comparison raised
   ``TypeError``, which CDVAE caught as "assume it is okay", accepting the combination; in a pair of like
   sign smact 2.2.1 returned False. Whichever such pair comes first decides. We reproduce this exactly, in
   every table mode (smact >= 3 instead returns False for any missing value).

``capped`` mode follows DiffCSP (jiaor17/DiffCSP scripts/eval_utils.py): when the number of oxidation-state
combinations exceeds ``max_combinations`` the composition is invalid without enumeration.

Tables (``validity.smact_table``):

* ``smact221`` (default): smact 2.2.1 exactly, the version CDVAE's published numbers used. Oxidation
  states (``smact/data/oxidation_states.txt``), Pauling electronegativities (``el_neg`` of
  ``smact/data/element_data.txt``) and ``smact.metals``, read from the PyPI sdist SMACT-2.2.1.tar.gz and
  shipped in ``data/smact_2_2_1_oxidation_states.json`` (SMACT, WMD-group, MIT licence; provenance and
  checksums in the file's ``_source``). It does not depend on the installed smact.
* ``smact14``: the same 2014 table as shipped with the installed smact (``Element.oxidation_states_smact14``
  of smact >= 3, ``Element.oxidation_states`` before), with the installed electronegativities and metals.
  Against ``smact221`` (checked for smact 4.0.2): Ir has -3 instead of -2 (SMACT issue #31, PR #33, 2020) and
  Zr's electronegativity is 1.33 instead of 2.2.1's typo 0.33 (SMACT PR #181, 2023); all other oxidation
  states, electronegativities and the metals list are identical. So e.g. ``IrB3`` (B+1, Ir-3) is valid under
  ``smact14`` only, and ``ZrCs2H2`` (Zr+4, Cs-1, H-1; the Cs anion is less electronegative than Zr at 1.33)
  is valid under ``smact221`` only.
* ``icsd24``: the ICSD-2024 derived table that is the default ``Element.oxidation_states`` of smact >= 3,
  with the installed electronegativities and metals.

The enumeration itself is vectorised (charges of all combinations in chunks) instead of calling smact once per
combination; it returns the same verdict as the definition above.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["CompositionCheck", "check_composition", "composition_counts", "smact221_table"]

SMACT221_FILE = "smact_2_2_1_oxidation_states.json"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CompositionCheck:
    """Compositional validity of one item and the rule that decided it."""

    valid: bool
    reason: str  # single_element | all_metals | charge_balanced | not_charge_balanced | pauling_failed | ...
    n_combinations: int = 0


@lru_cache(maxsize=1)
def smact221_table() -> dict[str, Any]:
    """smact 2.2.1's oxidation states, Pauling electronegativities and metals (``data/`` + ``SMACT221_FILE``).

    Returns:
        The file's content: ``_source`` (provenance), ``oxidation_states`` (symbol -> list of ints),
        ``pauling_electronegativity`` (symbol -> float or None) and ``metals`` (list of symbols).
    """
    text = resources.files("bench.metrics").joinpath("data", SMACT221_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=256)
def _element_data(symbol: str, table: str) -> tuple[tuple[int, ...], float | None, bool]:
    """(oxidation states, Pauling electronegativity, is metal) of an element in the chosen table.

    Raises:
        KeyError: The element has no data (smact raised ``NameError``/``KeyError`` for it).
    """
    if table == "smact221":
        data = smact221_table()
        if symbol not in data["pauling_electronegativity"]:  # 2.2.1's Element() had no data for it
            raise KeyError(symbol)
        states = tuple(int(s) for s in data["oxidation_states"].get(symbol) or ())
        return states, data["pauling_electronegativity"][symbol], symbol in data["metals"]

    import smact

    if table not in ("smact14", "icsd24"):
        raise ValueError(f"unknown smact_table {table!r}")
    try:
        element = smact.Element(symbol)
    except NameError as err:  # smact < 3 raised NameError for an unknown element, smact >= 3 KeyError
        raise KeyError(symbol) from err
    if table == "smact14":
        states = getattr(element, "oxidation_states_smact14", None)
        if states is None and not hasattr(element, "oxidation_states_smact14"):
            states = element.oxidation_states  # smact < 3: the 2014 table was the default
    else:
        if not hasattr(element, "oxidation_states_icsd24"):
            raise ValueError("smact_table 'icsd24' needs smact >= 3")
        states = element.oxidation_states_icsd24
    return tuple(int(s) for s in (states or ())), element.pauling_eneg, symbol in smact.metals


def _pauling_ok_cdvae(ox_states: tuple[int, ...], enegs: tuple[float | None, ...]) -> bool:
    """smact 2.2.1's ``eneg_states_test`` with CDVAE's ``except TypeError: electroneg_OK = True``.

    Pairs are visited in ``itertools.combinations`` order, as in smact 2.2.1, and the first decisive pair
    wins: a cation-anion pair with a missing value made the comparison raise ``TypeError`` (CDVAE: accept);
    a like-sign pair with a missing value hit 2.2.1's ``elif eneg1 is None or eneg2 is None: return False``.
    """
    for (ox1, e1), (ox2, e2) in itertools.combinations(zip(ox_states, enegs, strict=True), 2):
        if (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0):
            if e1 is None or e2 is None:
                return True  # the comparison raised TypeError in smact 2.2.1; CDVAE accepted the combination
            if (ox1 > 0 and e1 >= e2) or (ox1 < 0 and e1 <= e2):
                return False
        elif e1 is None or e2 is None:
            return False
    return True


_ENUMERABLE = 2**62
"""Above this many combinations ``cdvae`` mode refuses a composition: the flat index of the chunked
enumeration would overflow int64, and the enumeration would not finish anyway."""


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
    if n_comb > _ENUMERABLE:
        raise ValueError(
            f"{''.join(f'{s}{c}' for s, c in zip(symbols, counts, strict=True))}: {n_comb:.3g} "
            "oxidation-state combinations cannot be enumerated (CDVAE's rule would not finish); score it "
            "with mode='capped' (DiffCSP's rule: more than max_combinations is invalid)"
        )
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
    smact_table: str = "smact221",
    pauling_test: bool = True,
    include_alloys: bool = True,
) -> CompositionCheck:
    """CDVAE's SMACT validity of a composition (see the module docstring for the rule).

    Args:
        amounts: element symbol -> number of atoms in the cell (e.g. the symbol -> amount items of
            ``structure.composition.element_composition``).
        mode: ``cdvae`` (full enumeration) or ``capped`` (DiffCSP's cap on the number of combinations).
        max_combinations: The cap for ``capped`` mode.
        smact_table: ``smact221`` (smact 2.2.1 exactly, as CDVAE), ``smact14`` or ``icsd24`` (see the module
            docstring).
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
