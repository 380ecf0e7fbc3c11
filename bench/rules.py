"""Rule checks for crystal structures: does a structure obey the domain rules stated for its material?

Liu et al. 2023 (J. Materiomics, §3.1) judge language-model-written CIFs of NaZr2(PO4)3 against rules a
chemist states: space group R-3c; Na on 6b, Zr on 12c, P on 18e; ZrO6 octahedra and PO4 tetrahedra sharing
only corners. This module checks any structure against such rules, read from a YAML file
(``docs/rule_checks.md`` gives the schema; ``examples/nzp/rules.yaml`` the NZP example):

=====================  ==================================================================================
rule                   what is measured
=====================  ==================================================================================
``composition``        the reduced formula, against an expected formula
``charge_balance``     oxidation states summing to zero: CDVAE's SMACT rule (``comp_valid``, the default),
                       pymatgen's oxidation-state guesser, or fixed states
``min_distance``       the smallest interatomic distance (``struct_valid``'s rule, 0.5 Å by default)
``spacegroup``         spglib's space group through pymatgen's ``SpacegroupAnalyzer`` at a stated
                       ``symprec`` / ``angle_tolerance``
``wyckoff``            the Wyckoff sites (multiplicity and letter) of each element, on the symmetrised
                       structure at the same tolerance
``coordination``       per cation, the number of neighbours of each named anion (CrystalNN by default, or a
                       distance cutoff)
``polyhedra_sharing``  how pairs of coordination polyhedra share anions: 1 corner, 2 edge, >= 3 face
``match``              pymatgen ``StructureMatcher`` against a target structure, with its RMS distance
=====================  ==================================================================================

Every rule reports pass/fail with the measured and the expected value. :func:`load_rules` reads a rules
file, :func:`check_structure` checks one structure and :func:`check_files` a list of files;
``matgenbench check`` (:mod:`bench.check`) is the command.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from pymatgen.core import Composition, Element, Structure

__all__ = [
    "CHECK_ORDER",
    "ChargeBalanceRule",
    "CompositionRule",
    "CoordinationRule",
    "MatchRule",
    "MinDistanceRule",
    "NeighbourSettings",
    "RuleResult",
    "RuleSet",
    "RulesFileError",
    "SharingRule",
    "SpacegroupRule",
    "StructureReadError",
    "StructureReport",
    "WyckoffRule",
    "check_files",
    "check_structure",
    "load_rules",
    "read_structure",
    "summarize",
]

CHECK_ORDER = (
    "composition", "charge_balance", "min_distance", "spacegroup", "wyckoff", "coordination",
    "polyhedra_sharing", "match",
)
"""The rules, in the order they are checked and reported."""

_META_KEYS = ("name", "description", "neighbours")
_SHARING_MODES = ("corner", "edge", "face")
_WYCKOFF_LABEL = re.compile(r"^(\d+)([a-zA-Z])$")
_CRYSTALNN_SEARCH = 7.0
"""CrystalNN's default ``search_cutoff`` (Å)."""


class RulesFileError(ValueError):
    """A rules file (or mapping) that cannot be used; the message names the file and the fix."""


class StructureReadError(ValueError):
    """A structure file that cannot be read; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class SpacegroupRule:
    """The expected space group, measured by spglib at ``symprec`` (Å) and ``angle_tolerance`` (degrees).

    ``symprec`` 0.1 Å is the tolerance generative-model benchmarks use for generated crystals (whose
    coordinates are rarely exact); pymatgen's own default is 0.01 Å. ``angle_tolerance`` 5° is pymatgen's.
    """

    number: int | None = None
    symbol: str | None = None
    symprec: float = 0.1
    angle_tolerance: float = 5.0


@dataclass(frozen=True)
class WyckoffRule:
    """Per element, the Wyckoff sites (e.g. ``12c``) its atoms may occupy.

    Measured on spglib's symmetrised structure at the space group rule's tolerance; letters are those of the
    standard setting (hexagonal axes for rhombohedral groups) and multiplicities those of its conventional
    cell, whatever cell the structure is given in.
    """

    allowed: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class NeighbourSettings:
    """How neighbours are found, for ``coordination`` and ``polyhedra_sharing``.

    ``crystalnn`` (default): pymatgen's ``CrystalNN`` with its default parameters (Pan et al. 2021, Inorg.
    Chem. 60, 1590), integer coordination. It needs no bond-length cutoff for each chemistry and follows
    the scale of the structure (a generated cell a few per cent too large keeps its coordination), which a
    fixed cutoff does not. ``cutoff``: every atom within ``cutoff`` Å, one value for all pairs or one per
    ``cation-anion`` pair (pairs not listed have no bonds).
    """

    method: Literal["crystalnn", "cutoff"] = "crystalnn"
    cutoff: float | Mapping[str, float] | None = None

    def cutoff_for(self, cation: str, anion: str) -> float | None:
        """The bond cutoff of a cation-anion pair in ``cutoff`` mode (None when the pair has none)."""
        if isinstance(self.cutoff, Mapping):
            return self.cutoff.get(f"{cation}-{anion}")
        return self.cutoff


@dataclass(frozen=True)
class CoordinationRule:
    """Per cation, the allowed numbers of neighbours of each anion, e.g. ``{"Zr": {"O": (6,)}}``."""

    expected: Mapping[str, Mapping[str, tuple[int, ...]]]


@dataclass(frozen=True)
class SharingRule:
    """How polyhedra around ``cations`` (a pair, possibly the same element twice) may share ``anion`` atoms.

    ``allowed``: the sharing modes that may occur (``corner`` = 1 shared anion, ``edge`` = 2, ``face`` = 3
    or more; an empty tuple means the polyhedra share nothing). ``required``: modes that must occur at
    least once.
    """

    cations: tuple[str, str]
    anion: str
    allowed: tuple[str, ...] = _SHARING_MODES
    required: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.cations[0]}-{self.cations[1]}"


@dataclass(frozen=True)
class ChargeBalanceRule:
    """Oxidation states that sum to zero.

    ``smact`` (default): the project's ``comp_valid`` rule (CDVAE's SMACT charge neutrality with the Pauling
    electronegativity test, :func:`bench.metrics.composition.check_composition`), with ``smact_table`` and
    ``pauling_test`` as in ``ValiditySettings``. ``pymatgen``: ``Composition.oxi_state_guesses`` finds a
    neutral assignment of common oxidation states (mixed valence allowed). ``fixed``: the given
    ``oxidation_states`` must sum to zero over the cell.
    """

    method: Literal["smact", "pymatgen", "fixed"] = "smact"
    oxidation_states: Mapping[str, float] | None = None
    smact_table: str = "smact221"
    pauling_test: bool = True


@dataclass(frozen=True)
class MinDistanceRule:
    """No two atoms closer than ``value`` Å (the project's ``struct_valid`` distance rule)."""

    value: float = 0.5


@dataclass(frozen=True)
class CompositionRule:
    """The expected reduced formula (elements only; oxidation states are ignored)."""

    formula: str


@dataclass(frozen=True)
class MatchRule:
    """A pymatgen ``StructureMatcher`` match against ``target``.

    ``ltol`` 0.2, ``stol`` 0.3 and ``angle_tol`` 5° are pymatgen's defaults (primitive cells, volumes scaled
    to each other). ``attempt_supercell`` is true by default, unlike pymatgen: the matcher first reduces
    each structure to its primitive cell, and a conventional cell whose atoms are off by a tenth of an
    ångström is not reduced (one Zr of the NZP reference moved by 0.15 Å keeps all 108 sites), so without
    it a slightly noisy cell fails against the 36-site primitive reference although every atom is within
    ``stol``. Sites are compared by element (``ElementComparator``), so oxidation states written in a CIF do
    not matter. ``max_rms``, when given, also bounds the RMS displacement (pymatgen's units: Å divided by
    ``(V/n)^(1/3)``)."""

    target: str
    structure: Structure = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    attempt_supercell: bool = True
    max_rms: float | None = None


@dataclass(frozen=True)
class RuleSet:
    """The rules to check; each is optional (None when the rules file does not state it)."""

    spacegroup: SpacegroupRule | None = None
    wyckoff: WyckoffRule | None = None
    coordination: CoordinationRule | None = None
    polyhedra_sharing: tuple[SharingRule, ...] | None = None
    charge_balance: ChargeBalanceRule | None = None
    min_distance: MinDistanceRule | None = None
    composition: CompositionRule | None = None
    match: MatchRule | None = None
    neighbours: NeighbourSettings = NeighbourSettings()
    name: str | None = None
    source: str | None = None

    @property
    def rule_names(self) -> list[str]:
        """The rules this set states, in :data:`CHECK_ORDER`."""
        return [name for name in CHECK_ORDER if getattr(self, name) is not None]

    @property
    def symmetry_tolerance(self) -> tuple[float, float]:
        """``(symprec, angle_tolerance)`` of the space group and Wyckoff rules."""
        rule = self.spacegroup or SpacegroupRule()
        return rule.symprec, rule.angle_tolerance

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<rules>", base_dir: str | Path | None = None) -> RuleSet:
        """Rules from a parsed YAML mapping (see ``docs/rule_checks.md`` for the schema).

        Args:
            data: the mapping.
            source: the name used in error messages (the file's path).
            base_dir: where a ``match`` target's relative path starts (default: the working directory).

        Raises:
            RulesFileError: a key, value or target file the checker cannot use; the message says which.
        """
        return _parse_rules(data, source, Path(base_dir) if base_dir is not None else Path.cwd())

    def to_dict(self) -> dict[str, Any]:
        """The rules with every default filled in (what was checked, for the JSON report)."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        symprec, angle = self.symmetry_tolerance
        if self.spacegroup is not None:
            out["spacegroup"] = {"symbol": self.spacegroup.symbol, "number": self.spacegroup.number,
                                 "symprec": symprec, "angle_tolerance": angle}
        if self.wyckoff is not None:
            out["wyckoff"] = {el: list(labels) for el, labels in self.wyckoff.allowed.items()}
            out["wyckoff_tolerance"] = {"symprec": symprec, "angle_tolerance": angle}
        if self.coordination is not None or self.polyhedra_sharing is not None:
            cutoff = self.neighbours.cutoff
            out["neighbours"] = {"method": self.neighbours.method,
                                 "cutoff": dict(cutoff) if isinstance(cutoff, Mapping) else cutoff}
        if self.coordination is not None:
            out["coordination"] = {c: {a: list(n) for a, n in anions.items()}
                                   for c, anions in self.coordination.expected.items()}
        if self.polyhedra_sharing is not None:
            out["polyhedra_sharing"] = [
                {"between": list(r.cations), "anion": r.anion, "allowed": list(r.allowed),
                 "required": list(r.required)} for r in self.polyhedra_sharing
            ]
        if self.charge_balance is not None:
            rule = self.charge_balance
            out["charge_balance"] = {"method": rule.method}
            if rule.method == "fixed":
                out["charge_balance"]["oxidation_states"] = dict(rule.oxidation_states or {})
            if rule.method == "smact":
                out["charge_balance"].update(smact_table=rule.smact_table, pauling_test=rule.pauling_test)
        if self.min_distance is not None:
            out["min_distance"] = self.min_distance.value
        if self.composition is not None:
            out["composition"] = self.composition.formula
        if self.match is not None:
            m = self.match
            out["match"] = {"target": m.target, "ltol": m.ltol, "stol": m.stol, "angle_tol": m.angle_tol,
                            "attempt_supercell": m.attempt_supercell, "max_rms": m.max_rms}
        return out


# ------------------------------------------------------------------------------------------------- parsing


def _fail(source: str, what: str, fix: str) -> RulesFileError:
    return RulesFileError(f"{source}: {what}; {fix}")


def _element(symbol: Any, source: str, where: str) -> str:
    text = str(symbol).strip()
    if not Element.is_valid_symbol(text):
        raise _fail(source, f"{where}: {symbol!r} is not an element symbol", "write it as e.g. Zr or O")
    return text


def _number(value: Any, source: str, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < minimum:
        raise _fail(source, f"{where} must be a number >= {minimum:g}, got {value!r}", "give a number")
    return float(value)


def _mapping(value: Any, source: str, where: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(source, f"{where} must be a mapping, got {type(value).__name__}", f"write e.g. {example}")
    return value


def _no_unknown(given: Mapping[str, Any], allowed: Sequence[str], source: str, where: str) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(allowed)}"
            raise _fail(source, f"unknown key '{key}' in {where}", hint)


def _spacegroup_number(symbol: Any, source: str) -> tuple[int, str]:
    """``(number, short symbol)`` of a space group given by number or Hermann-Mauguin symbol (short or
    full, any spacing, with or without underscores and a setting suffix such as ``:H``)."""
    import spglib

    table = _spacegroup_table()
    if isinstance(symbol, int) and not isinstance(symbol, bool):
        if not 1 <= symbol <= 230:
            raise _fail(source, f"spacegroup number {symbol} is not in 1..230", "give a number from 1 to 230")
        return symbol, table[symbol]
    text = str(symbol).strip()
    wanted = {_normalise_symbol(text)}
    if text[-1:] in ("H", "R") and " " not in text.strip()[-2:]:
        wanted.add(_normalise_symbol(text[:-1]))  # R-3cH, R-3R: a setting letter glued to the symbol
    for hall_number in range(1, 531):  # every setting spglib knows
        kind = spglib.get_spacegroup_type(hall_number)
        names = {_normalise_symbol(kind.international_short), _normalise_symbol(kind.international_full)}
        if wanted & names:
            return int(kind.number), table[int(kind.number)]
    raise _fail(source, f"spacegroup {symbol!r} is not a space group symbol",
                "give the Hermann-Mauguin symbol (e.g. R-3c) or the number (e.g. 167)")


@lru_cache(maxsize=1)
def _spacegroup_table() -> dict[int, str]:
    """Space group number -> spglib's short international symbol (standard setting)."""
    import spglib

    out: dict[int, str] = {}
    for hall_number in range(1, 531):
        kind = spglib.get_spacegroup_type(hall_number)
        out.setdefault(int(kind.number), kind.international_short)
    return out


def _normalise_symbol(text: str) -> str:
    text = text.split(":")[0]
    return text.replace(" ", "").replace("_", "").lower()


def _parse_spacegroup(value: Any, source: str) -> SpacegroupRule:
    if isinstance(value, Mapping):
        _no_unknown(value, ("symbol", "number", "symprec", "angle_tolerance"), source, "spacegroup")
        given = value.get("symbol", value.get("number"))
        if given is None:
            raise _fail(source, "spacegroup needs 'symbol' (or 'number')",
                        "write e.g. spacegroup: {symbol: R-3c}")
        symprec = _number(value.get("symprec", 0.1), source, "spacegroup.symprec", minimum=1e-6)
        angle = _number(value.get("angle_tolerance", 5.0), source, "spacegroup.angle_tolerance")
    else:
        given, symprec, angle = value, 0.1, 5.0
    number, symbol = _spacegroup_number(given, source)
    return SpacegroupRule(number=number, symbol=symbol, symprec=symprec, angle_tolerance=angle)


def _parse_wyckoff(value: Any, source: str) -> WyckoffRule:
    value = _mapping(value, source, "wyckoff", "wyckoff: {Zr: [12c], P: [18e]}")
    allowed: dict[str, tuple[str, ...]] = {}
    for key, labels in value.items():
        element = _element(key, source, "wyckoff")
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not labels:
            raise _fail(source, f"wyckoff.{element} must be a list of sites", f"write e.g. {element}: [12c]")
        clean = []
        for label in labels:
            match = _WYCKOFF_LABEL.match(str(label).strip())
            if match is None:
                raise _fail(source, f"wyckoff.{element}: {label!r} is not a Wyckoff site",
                            "write multiplicity and letter, e.g. 12c")
            clean.append(f"{int(match.group(1))}{match.group(2)}")
        allowed[element] = tuple(clean)
    return WyckoffRule(allowed=allowed)


def _parse_neighbours(value: Any, source: str) -> NeighbourSettings:
    value = _mapping(value, source, "neighbours", "neighbours: {method: crystalnn}")
    _no_unknown(value, ("method", "cutoff"), source, "neighbours")
    method = value.get("method", "crystalnn")
    if method not in ("crystalnn", "cutoff"):
        raise _fail(source, f"neighbours.method {method!r} is unknown", "use crystalnn or cutoff")
    cutoff = value.get("cutoff")
    if method == "crystalnn":
        if cutoff is not None:
            raise _fail(source, "neighbours.cutoff is only used with method: cutoff",
                        "remove it or set method: cutoff")
        return NeighbourSettings("crystalnn", None)
    if cutoff is None:
        raise _fail(source, "neighbours.method cutoff needs 'cutoff'",
                    "give one distance in Å (cutoff: 2.6) or one per pair (cutoff: {Zr-O: 2.6, P-O: 1.9})")
    if isinstance(cutoff, Mapping):
        pairs: dict[str, float] = {}
        for pair, dist in cutoff.items():
            parts = str(pair).split("-")
            if len(parts) != 2:
                raise _fail(source, f"neighbours.cutoff key {pair!r} is not a pair", "write it as Zr-O")
            a, b = (_element(p, source, "neighbours.cutoff") for p in parts)
            pairs[f"{a}-{b}"] = _number(dist, source, f"neighbours.cutoff.{pair}", minimum=1e-6)
        return NeighbourSettings("cutoff", pairs)
    return NeighbourSettings("cutoff", _number(cutoff, source, "neighbours.cutoff", minimum=1e-6))


def _counts(value: Any, source: str, where: str) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _fail(source, f"{where} must be a whole number >= 0 or a list of them, got {value!r}",
                        "write e.g. 6 or [6, 8]")
        out.append(int(v))
    if not out:
        raise _fail(source, f"{where} is an empty list", "give at least one number")
    return tuple(sorted(set(out)))


def _parse_coordination(value: Any, source: str) -> CoordinationRule:
    value = _mapping(value, source, "coordination", "coordination: {Zr: {O: 6}, P: {O: 4}}")
    expected: dict[str, dict[str, tuple[int, ...]]] = {}
    for cation, anions in value.items():
        c = _element(cation, source, "coordination")
        anions = _mapping(anions, source, f"coordination.{c}", f"{c}: {{O: 6}}")
        if not anions:
            raise _fail(source, f"coordination.{c} names no anion", f"write e.g. {c}: {{O: 6}}")
        expected[c] = {_element(a, source, f"coordination.{c}"): _counts(n, source, f"coordination.{c}.{a}")
                       for a, n in anions.items()}
    return CoordinationRule(expected=expected)


def _modes(value: Any, source: str, where: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v not in _SHARING_MODES:
            raise _fail(source, f"{where}: {v!r} is not a sharing mode", "use corner, edge or face")
    return tuple(m for m in _SHARING_MODES if m in values)


def _parse_sharing(value: Any, source: str, coordination: CoordinationRule | None) -> tuple[SharingRule, ...]:
    example = "polyhedra_sharing: [{between: [Zr, P], anion: O, allowed: [corner]}]"
    if not isinstance(value, list) or not value:
        raise _fail(source, "polyhedra_sharing must be a list of pair rules", f"write e.g. {example}")
    rules = []
    for i, item in enumerate(value):
        where = f"polyhedra_sharing[{i}]"
        item = _mapping(item, source, where, example)
        _no_unknown(item, ("between", "anion", "allowed", "required"), source, where)
        between = item.get("between")
        if not isinstance(between, list) or len(between) != 2:
            raise _fail(source, f"{where}.between must name two cations", "write e.g. between: [Zr, P]")
        cations = (_element(between[0], source, where), _element(between[1], source, where))
        anion = item.get("anion")
        if anion is None:
            anion = _shared_anion(cations, coordination, source, where)
        anion = _element(anion, source, where)
        allowed = _modes(item.get("allowed", list(_SHARING_MODES)), source, f"{where}.allowed")
        required = _modes(item.get("required", []), source, f"{where}.required")
        if not set(required) <= set(allowed):
            raise _fail(source, f"{where}: required {list(required)} not within allowed {list(allowed)}",
                        "a required mode must also be allowed")
        rules.append(SharingRule(cations=cations, anion=anion, allowed=allowed, required=required))
    return tuple(rules)


def _shared_anion(cations: tuple[str, str], coordination: CoordinationRule | None, source: str,
                  where: str) -> str:
    if coordination is not None:
        sets = [set(coordination.expected.get(c, {})) for c in cations]
        common = sets[0] & sets[1]
        if len(common) == 1:
            return next(iter(common))
    raise _fail(source, f"{where} names no anion and the coordination rule does not fix one",
                "add anion: O (the atoms at the polyhedra's corners)")


def _parse_charge(value: Any, source: str) -> ChargeBalanceRule:
    if value is True:
        return ChargeBalanceRule()
    value = _mapping(value, source, "charge_balance", "charge_balance: {method: smact}")
    _no_unknown(value, ("method", "oxidation_states", "smact_table", "pauling_test"), source,
                "charge_balance")
    method = value.get("method", "smact")
    if method not in ("smact", "pymatgen", "fixed"):
        raise _fail(source, f"charge_balance.method {method!r} is unknown", "use smact, pymatgen or fixed")
    states = value.get("oxidation_states")
    if method == "fixed":
        states = _mapping(states, source, "charge_balance.oxidation_states", "{Na: 1, Zr: 4, P: 5, O: -2}")
        states = {_element(el, source, "charge_balance.oxidation_states"):
                  _number(ox, source, f"charge_balance.oxidation_states.{el}", minimum=-math.inf)
                  for el, ox in states.items()}
    elif states is not None:
        raise _fail(source, "charge_balance.oxidation_states is only used with method: fixed",
                    "remove it or set method: fixed")
    table = value.get("smact_table", "smact221")
    from bench.metrics.settings import SMACT_TABLES

    if table not in SMACT_TABLES:
        raise _fail(source, f"charge_balance.smact_table {table!r} is unknown", f"use one of {SMACT_TABLES}")
    pauling = value.get("pauling_test", True)
    if not isinstance(pauling, bool):
        raise _fail(source, "charge_balance.pauling_test must be true or false", "write true or false")
    return ChargeBalanceRule(method=method, oxidation_states=states, smact_table=table, pauling_test=pauling)


def _parse_min_distance(value: Any, source: str) -> MinDistanceRule:
    from bench.metrics.settings import ValiditySettings

    if value is True:
        return MinDistanceRule(ValiditySettings().min_distance)
    if isinstance(value, Mapping):
        _no_unknown(value, ("value",), source, "min_distance")
        value = value.get("value", ValiditySettings().min_distance)
    return MinDistanceRule(_number(value, source, "min_distance"))


def _parse_composition(value: Any, source: str) -> CompositionRule:
    if isinstance(value, Mapping):
        _no_unknown(value, ("formula",), source, "composition")
        value = value.get("formula")
    try:
        comp = Composition(str(value))
        if not comp or any(not isinstance(el, Element) for el in comp.elements):
            raise ValueError("no elements")
    except Exception as err:
        raise _fail(source, f"composition {value!r} is not a chemical formula ({err})",
                    "write e.g. NaZr2(PO4)3") from None
    return CompositionRule(formula=str(value))


def _parse_match(value: Any, source: str, base_dir: Path) -> MatchRule:
    if isinstance(value, str):
        value = {"target": value}
    value = _mapping(value, source, "match", "match: {target: reference.cif}")
    _no_unknown(value, ("target", "ltol", "stol", "angle_tol", "attempt_supercell", "max_rms"), source,
                "match")
    target = value.get("target")
    if not target:
        raise _fail(source, "match needs 'target'", "give the path of the target structure file")
    path = Path(str(target))
    if not path.is_absolute():
        path = base_dir / path
    try:
        structure = read_structure(path)
    except StructureReadError as err:
        raise _fail(source, f"match target: {err}", "point 'target' at a readable structure file") from None
    max_rms = value.get("max_rms")
    supercell = value.get("attempt_supercell", True)
    if not isinstance(supercell, bool):
        raise _fail(source, "match.attempt_supercell must be true or false", "write true or false")
    return MatchRule(
        target=str(target), structure=structure,
        ltol=_number(value.get("ltol", 0.2), source, "match.ltol", minimum=1e-6),
        stol=_number(value.get("stol", 0.3), source, "match.stol", minimum=1e-6),
        angle_tol=_number(value.get("angle_tol", 5.0), source, "match.angle_tol", minimum=1e-6),
        attempt_supercell=supercell,
        max_rms=None if max_rms is None else _number(max_rms, source, "match.max_rms"),
    )


def _parse_rules(data: Any, source: str, base_dir: Path) -> RuleSet:
    if not isinstance(data, Mapping):
        raise _fail(source, f"the file must hold a mapping of rules, not {type(data).__name__}",
                    f"write rules as 'name: value' lines ({', '.join(CHECK_ORDER)})")
    _no_unknown(data, (*CHECK_ORDER, *_META_KEYS), source, "the rules file")
    if not any(k in data for k in CHECK_ORDER):
        raise _fail(source, "the file states no rule", f"give at least one of {', '.join(CHECK_ORDER)}")
    coordination = _parse_coordination(data["coordination"], source) if "coordination" in data else None
    sharing = _parse_sharing(data["polyhedra_sharing"], source, coordination) \
        if "polyhedra_sharing" in data else None
    neighbours = (_parse_neighbours(data["neighbours"], source) if "neighbours" in data
                  else NeighbourSettings())
    if neighbours.method == "cutoff" and isinstance(neighbours.cutoff, Mapping):
        expected = coordination.expected if coordination is not None else {}
        pairs = [(c, a) for c, anions in expected.items() for a in anions]
        pairs += [(c, r.anion) for r in sharing or () for c in r.cations]
        missing = sorted({f"{c}-{a}" for c, a in pairs if neighbours.cutoff_for(c, a) is None})
        if missing:
            raise _fail(source, f"neighbours.cutoff has no distance for {', '.join(missing)}",
                        "add one per cation-anion pair the rules use")
    name = data.get("name")
    return RuleSet(
        spacegroup=_parse_spacegroup(data["spacegroup"], source) if "spacegroup" in data else None,
        wyckoff=_parse_wyckoff(data["wyckoff"], source) if "wyckoff" in data else None,
        coordination=coordination,
        polyhedra_sharing=sharing,
        charge_balance=_parse_charge(data["charge_balance"], source) if "charge_balance" in data else None,
        min_distance=_parse_min_distance(data["min_distance"], source) if "min_distance" in data else None,
        composition=_parse_composition(data["composition"], source) if "composition" in data else None,
        match=_parse_match(data["match"], source, base_dir) if "match" in data else None,
        neighbours=neighbours,
        name=None if name is None else str(name),
        source=source,
    )


def load_rules(path: str | Path) -> RuleSet:
    """Read a rules YAML file (schema in ``docs/rule_checks.md``); a ``match`` target is read relative to it.

    Raises:
        RulesFileError: the file is missing, is not YAML, or states a rule the checker cannot use.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RulesFileError(f"{path}: cannot read the rules file ({err.strerror or err}); "
                             f"check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RulesFileError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', err)}); "
                             f"fix the syntax (docs/rule_checks.md shows the schema)") from None
    return RuleSet.from_mapping(data, source=str(path), base_dir=path.parent)


# ------------------------------------------------------------------------------------------------ reading


def read_structure(path: str | Path) -> Structure:
    """One structure from a file pymatgen reads (CIF, POSCAR, pymatgen JSON...); a CIF's cell as written.

    Raises:
        StructureReadError: the file is missing, unparsable or holds no atoms.
    """
    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"{path}: no such file; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(str(path))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StructureReadError(
            f"{path}: cannot read a structure ({reason}); give a valid CIF (or POSCAR / pymatgen JSON) file"
        ) from None
    if len(structure) == 0:
        raise StructureReadError(f"{path}: the structure has no atoms; give a file with atom sites")
    return structure


# --------------------------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict on one structure: JSON values and the same shown as short text."""

    rule: str
    passed: bool
    measured: Any
    expected: Any
    measured_text: str
    expected_text: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "measured": self.measured,
                "expected": self.expected, "measured_text": self.measured_text,
                "expected_text": self.expected_text, "detail": self.detail}


@dataclass
class StructureReport:
    """The rule results of one structure."""

    source: str
    formula: str
    n_sites: int
    results: list[RuleResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.rule for r in self.results if not r.passed]

    def result(self, rule: str) -> RuleResult:
        """The result of ``rule`` (KeyError when the rules did not state it)."""
        for r in self.results:
            if r.rule == rule:
                return r
        raise KeyError(rule)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "formula": self.formula, "n_sites": self.n_sites,
                "passed": self.passed, "failed": self.failed, "results": [r.to_dict() for r in self.results]}


def _elements(site: Any) -> set[str]:
    """Element symbols on a site (several for a disordered site; oxidation states dropped)."""
    return {getattr(sp, "symbol", str(sp)) for sp in site.species}


def _join(items: Iterable[str]) -> str:
    return ", ".join(items)


def _limit(items: list[str], n: int = 4) -> str:
    shown = items[:n]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return _join(shown) + more


class _Measure:
    """Lazily computed measurements of one structure, shared between rules."""

    def __init__(self, structure: Structure, rules: RuleSet) -> None:
        self.structure = structure
        self.rules = rules
        self._neighbour_cache: dict[int, list[tuple[int, tuple[int, int, int], str]]] = {}

    @cached_property
    def symmetry(self) -> Any:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        symprec, angle = self.rules.symmetry_tolerance
        return SpacegroupAnalyzer(self.structure, symprec=symprec, angle_tolerance=angle)

    @cached_property
    def wyckoff_sites(self) -> dict[str, list[str]]:
        """Per element, the Wyckoff site (conventional multiplicity + letter) of each of its orbits."""
        sga = self.symmetry
        dataset = sga.get_symmetry_dataset()
        if dataset is None:
            raise RuntimeError("spglib found no symmetry dataset at this tolerance")
        n_conventional = len(dataset.std_types)
        symmetrized = sga.get_symmetrized_structure()
        out: dict[str, list[str]] = defaultdict(list)
        for group, symbol in zip(symmetrized.equivalent_indices, symmetrized.wyckoff_symbols, strict=True):
            # pymatgen's symbol counts the orbit in the given cell; the rule uses the conventional cell's
            multiplicity = len(group) * n_conventional / len(self.structure)
            label = f"{round(multiplicity)}{symbol[-1]}"
            for element in sorted(_elements(self.structure[group[0]])):
                out[element].append(label)
        return {el: sorted(labels, key=_wyckoff_sort_key) for el, labels in out.items()}

    @cached_property
    def _crystalnn(self) -> Any:
        from pymatgen.analysis.local_env import CrystalNN

        # CrystalNN's default 7 Å search sphere holds ~100 atoms in an ordinary solid but ~10^5 in a
        # collapsed generated cell (rock salt shrunk to 0.3 Å bonds took minutes): below 5.4 Å^3 per atom
        # the sphere shrinks with the cell, to 4 atomic spacings; ordinary solids keep the default
        spacing = (self.structure.volume / len(self.structure)) ** (1 / 3)
        return CrystalNN(search_cutoff=min(_CRYSTALNN_SEARCH, 4.0 * spacing))

    def ligands(self, index: int, anion: str) -> list[tuple[int, tuple[int, int, int]]]:
        """Anion neighbours of site ``index`` as ``(site index, lattice image)`` (neighbour position =
        that site's fractional coordinates + image)."""
        return [(j, image) for j, image, element in self._neighbours(index) if element == anion]

    def _neighbours(self, index: int) -> list[tuple[int, tuple[int, int, int], str]]:
        cache = self._neighbour_cache
        if index not in cache:
            cache[index] = self._find_neighbours(index)
        return cache[index]

    def _find_neighbours(self, index: int) -> list[tuple[int, tuple[int, int, int], str]]:
        structure = self.structure
        settings = self.rules.neighbours
        out: list[tuple[int, tuple[int, int, int], str]] = []
        if settings.method == "crystalnn":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                infos = self._crystalnn.get_nn_info(structure, index)
            for info in infos:
                image = tuple(int(round(float(x))) for x in info["image"])
                for element in _elements(structure[info["site_index"]]):
                    out.append((int(info["site_index"]), image, element))
            return out
        centre = _elements(structure[index])
        cutoffs = [settings.cutoff_for(c, a) for c in centre for a in self._anions_of(centre)]
        reach = max((c for c in cutoffs if c is not None), default=None)
        if reach is None:
            return out
        for nb in structure.get_neighbors(structure[index], reach):
            image = tuple(int(round(float(x))) for x in nb.image)
            for element in _elements(structure[nb.index]):
                limits = [settings.cutoff_for(c, element) for c in centre]
                if any(lim is not None and nb.nn_distance <= lim for lim in limits):
                    out.append((int(nb.index), image, element))
        return out

    def _anions_of(self, cations: set[str]) -> set[str]:
        """Anions the rules pair with ``cations`` (for the search radius in cutoff mode)."""
        anions: set[str] = set()
        if self.rules.coordination is not None:
            for c in cations:
                anions |= set(self.rules.coordination.expected.get(c, {}))
        for rule in self.rules.polyhedra_sharing or ():
            if cations & set(rule.cations):
                anions.add(rule.anion)
        return anions

    def sites_of(self, element: str) -> list[int]:
        return [i for i, site in enumerate(self.structure) if element in _elements(site)]


def _wyckoff_sort_key(label: str) -> tuple[int, str]:
    match = _WYCKOFF_LABEL.match(label)
    return (int(match.group(1)), match.group(2)) if match else (0, label)


def _check_composition(m: _Measure, rule: CompositionRule) -> RuleResult:
    expected = Composition(rule.formula).element_composition.reduced_composition
    comp = m.structure.composition.element_composition
    measured = comp.reduced_composition
    passed = measured.almost_equals(expected, rtol=0.0, atol=1e-6)
    return RuleResult("composition", passed, measured.reduced_formula, expected.reduced_formula,
                      measured.reduced_formula, expected.reduced_formula,
                      "" if passed else f"cell holds {comp.formula}")


def _check_charge(m: _Measure, rule: ChargeBalanceRule) -> RuleResult:
    comp = m.structure.composition.element_composition
    amounts = {el.symbol: float(n) for el, n in comp.items()}
    if rule.method == "smact":
        from bench.metrics.composition import check_composition
        from bench.metrics.settings import ValiditySettings

        defaults = ValiditySettings()
        verdict = check_composition(amounts, mode=defaults.comp_valid_mode,
                                    max_combinations=defaults.max_combinations, smact_table=rule.smact_table,
                                    pauling_test=rule.pauling_test, include_alloys=defaults.include_alloys)
        how = f"SMACT rule (comp_valid), table {rule.smact_table}"
        how += ", Pauling test" if rule.pauling_test else ""
        return RuleResult("charge_balance", verdict.valid, verdict.reason, "charge_balanced",
                          verdict.reason, "charge_balanced", how)
    if rule.method == "pymatgen":
        guesses = comp.reduced_composition.oxi_state_guesses()
        if guesses:
            best = {el: round(float(ox), 3) for el, ox in guesses[0].items()}
            text = " ".join(f"{el}{ox:+g}" for el, ox in best.items())
            return RuleResult("charge_balance", True, best, "neutral assignment", text, "neutral assignment",
                              "pymatgen Composition.oxi_state_guesses (first guess)")
        return RuleResult("charge_balance", False, None, "neutral assignment", "none found",
                          "neutral assignment", "pymatgen Composition.oxi_state_guesses found none")
    states = dict(rule.oxidation_states or {})
    missing = sorted(set(amounts) - set(states))
    if missing:
        return RuleResult("charge_balance", False, None, 0.0, f"no state for {_join(missing)}",
                          "net charge 0", f"the rules give no oxidation state for {_join(missing)}")
    charge = sum(n * states[el] for el, n in amounts.items())
    passed = abs(charge) < 1e-6
    return RuleResult("charge_balance", passed, round(charge, 6), 0.0, f"net charge {charge:+g} per cell",
                      "net charge 0", "fixed states " + " ".join(f"{el}{ox:+g}" for el, ox in states.items()))


def _check_min_distance(m: _Measure, rule: MinDistanceRule) -> RuleResult:
    from bench.metrics.structure_checks import check_structure as struct_check

    verdict = struct_check(m.structure, min_distance=rule.value)
    value = verdict.min_distance
    shown = "no pair" if math.isinf(value) else f"{value:.3f} Å"
    measured = None if not math.isfinite(value) else round(value, 4)
    detail = "" if verdict.valid else verdict.reason
    return RuleResult("min_distance", verdict.valid, measured, rule.value, shown, f">= {rule.value:g} Å",
                      detail)


def _check_spacegroup(m: _Measure, rule: SpacegroupRule) -> RuleResult:
    symprec, angle = rule.symprec, rule.angle_tolerance
    tol = f"symprec {symprec:g} Å, angle_tolerance {angle:g}°"
    sga = m.symmetry
    number, symbol = int(sga.get_space_group_number()), sga.get_space_group_symbol()
    passed = number == rule.number
    return RuleResult("spacegroup", passed, {"symbol": symbol, "number": number},
                      {"symbol": rule.symbol, "number": rule.number}, f"{symbol} ({number})",
                      f"{rule.symbol} ({rule.number})", tol)


def _check_wyckoff(m: _Measure, rule: WyckoffRule) -> RuleResult:
    sites = m.wyckoff_sites
    missing, wrong = [], []
    for element, allowed in rule.allowed.items():
        found = sites.get(element, [])
        if not found:
            missing.append(f"no {element} sites")
        wrong += [f"{element} {label}" for label in dict.fromkeys(found) if label not in allowed]
    problems = ([f"not allowed: {_limit(wrong)}"] if wrong else []) + missing
    # per element, how many orbits sit on each Wyckoff site: {"O": {"36f": 2}}
    measured = {el: dict(Counter(sites.get(el, []))) for el in rule.allowed}
    sga = m.symmetry
    detail = f"in {sga.get_space_group_symbol()} ({sga.get_space_group_number()})"
    if problems:
        detail = f"{'; '.join(problems)}; {detail}"
    text = "; ".join(
        f"{el} " + (_join(f"{label} x{n}" if n > 1 else label for label, n in counts.items()) or "-")
        for el, counts in measured.items()
    )
    expected_text = "; ".join(f"{el} {_join(labels)}" for el, labels in rule.allowed.items())
    return RuleResult("wyckoff", not problems, measured, {el: list(v) for el, v in rule.allowed.items()},
                      text, expected_text, detail)


def _check_coordination(m: _Measure, rule: CoordinationRule) -> RuleResult:
    measured: dict[str, dict[str, dict[str, int]]] = {}
    problems: list[str] = []
    parts: list[str] = []
    for cation, anions in rule.expected.items():
        indices = m.sites_of(cation)
        measured[cation] = {}
        if not indices:
            problems.append(f"no {cation} sites")
            continue
        for anion, allowed in anions.items():
            numbers = {i: len(m.ligands(i, anion)) for i in indices}
            histogram = Counter(numbers.values())
            measured[cation][anion] = {str(cn): histogram[cn] for cn in sorted(histogram)}
            parts.append(f"{cation}-{anion} " + _join(f"{cn} x{histogram[cn]}" for cn in sorted(histogram)))
            problems += [f"{cation} site {i}: {cn} {anion}" for i, cn in numbers.items() if cn not in allowed]
    expected = {c: {a: list(n) for a, n in anions.items()} for c, anions in rule.expected.items()}
    expected_text = "; ".join(f"{c}-{a} {'/'.join(map(str, n))}" for c, anions in rule.expected.items()
                              for a, n in anions.items())
    method = m.rules.neighbours.method
    detail = f"neighbours: {method}"
    if problems:
        detail = f"{_limit(problems)}; {detail}"
    return RuleResult("coordination", not problems, measured, expected, "; ".join(parts) or "-",
                      expected_text, detail)


def _sharing_counts(m: _Measure, rule: SharingRule) -> dict[str, int]:
    """Numbers of polyhedron pairs (periodic images counted once) sharing 1 (corner), 2 (edge) or >= 3
    (face) anions."""
    first, second = rule.cations
    sites_a, sites_b = m.sites_of(first), m.sites_of(second)
    ligands = {i: m.ligands(i, rule.anion) for i in {*sites_a, *sites_b}}
    by_anion: dict[int, dict[int, list[tuple[int, int, int]]]] = {}
    for i, items in ligands.items():
        table: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for j, image in items:
            table[j].append(image)
        by_anion[i] = table
    counts = {mode: 0 for mode in _SHARING_MODES}
    same = first == second
    for i in sites_a:
        for k in sites_b:
            if same and k < i:
                continue  # each unordered pair of sites once
            shared: dict[tuple[int, int, int], set[tuple[int, tuple[int, int, int]]]] = defaultdict(set)
            for j, images_i in by_anion[i].items():
                for img_k in by_anion[k].get(j, ()):
                    for img_i in images_i:
                        shift = (img_i[0] - img_k[0], img_i[1] - img_k[1], img_i[2] - img_k[2])
                        shared[shift].add((j, img_i))
            for shift, anions in shared.items():
                if i == k and (shift == (0, 0, 0) or shift < (0, 0, 0)):
                    continue  # a polyhedron with itself, and each (image, -image) pair once
                n = len(anions)
                counts["corner" if n == 1 else "edge" if n == 2 else "face"] += 1
    return counts


def _check_sharing(m: _Measure, rules: tuple[SharingRule, ...]) -> RuleResult:
    measured: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    parts: list[str] = []
    for rule in rules:
        label = f"{rule.label} ({rule.anion})"
        for cation in dict.fromkeys(rule.cations):
            if not m.sites_of(cation):
                problems.append(f"no {cation} sites")
        counts = _sharing_counts(m, rule)
        measured[label] = counts
        seen = [mode for mode in _SHARING_MODES if counts[mode]]
        parts.append(f"{rule.label} " + (_join(f"{mode} {counts[mode]}" for mode in seen) or "none"))
        problems += [f"{rule.label} shares {mode}s ({counts[mode]} pairs)" for mode in seen
                     if mode not in rule.allowed]
        problems += [f"{rule.label} shares no {mode}" for mode in rule.required if not counts[mode]]
    expected = {f"{r.label} ({r.anion})": {"allowed": list(r.allowed), "required": list(r.required)}
                for r in rules}
    expected_text = "; ".join(
        f"{r.label} {'/'.join(r.allowed) or 'none'}"
        + (f" (needs {'/'.join(r.required)})" if r.required else "")
        for r in rules
    )
    detail = f"pairs of polyhedra; neighbours: {m.rules.neighbours.method}"
    problems = list(dict.fromkeys(problems))
    if problems:
        detail = f"{_limit(problems)}; {detail}"
    return RuleResult("polyhedra_sharing", not problems, measured, expected, "; ".join(parts), expected_text,
                      detail)


def _check_match(m: _Measure, rule: MatchRule) -> RuleResult:
    from pymatgen.analysis.structure_matcher import ElementComparator, StructureMatcher

    # elements, not species: a CIF that writes Zr4+ is the same crystal as one that writes Zr
    matcher = StructureMatcher(ltol=rule.ltol, stol=rule.stol, angle_tol=rule.angle_tol,
                               attempt_supercell=rule.attempt_supercell, comparator=ElementComparator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bool(matcher.fit(m.structure, rule.structure))
        rms = matcher.get_rms_dist(m.structure, rule.structure) if fit else None
    measured: dict[str, Any] = {"match": fit, "rms": None, "max_dist": None}
    text = "no match"
    if rms is not None:
        measured.update(rms=round(float(rms[0]), 5), max_dist=round(float(rms[1]), 5))
        text = f"match, rms {float(rms[0]):.4f}"
    passed = fit and (rule.max_rms is None or (rms is not None and float(rms[0]) <= rule.max_rms))
    expected_text = f"match {rule.target}"
    expected_text += f", rms <= {rule.max_rms:g}" if rule.max_rms is not None else ""
    detail = (f"ltol {rule.ltol:g}, stol {rule.stol:g}, angle_tol {rule.angle_tol:g}°, attempt_supercell "
              f"{str(rule.attempt_supercell).lower()}; rms in units of (V/n)^(1/3)")
    expected = {"target": rule.target, "match": True, "max_rms": rule.max_rms}
    return RuleResult("match", passed, measured, expected, text, expected_text, detail)


def _measure_failed(rule: str, err: Exception) -> RuleResult:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RuleResult(rule, False, None, None, "not measured", "-", f"could not measure: {reason}")


def check_structure(structure: Structure, rules: RuleSet, source: str = "<structure>") -> StructureReport:
    """Check one structure against every rule in ``rules``.

    A rule that cannot be measured on this structure (spglib or the neighbour search fails on it) fails
    with the reason in its ``detail``; it never stops the other rules.

    Args:
        structure: the structure, in any cell.
        rules: the rules (:func:`load_rules` or :meth:`RuleSet.from_mapping`).
        source: the name to report it under (e.g. its file).

    Returns:
        One :class:`RuleResult` per stated rule, in :data:`CHECK_ORDER`.
    """
    m = _Measure(structure, rules)
    checks = {
        "composition": lambda: _check_composition(m, rules.composition),
        "charge_balance": lambda: _check_charge(m, rules.charge_balance),
        "min_distance": lambda: _check_min_distance(m, rules.min_distance),
        "spacegroup": lambda: _check_spacegroup(m, rules.spacegroup),
        "wyckoff": lambda: _check_wyckoff(m, rules.wyckoff),
        "coordination": lambda: _check_coordination(m, rules.coordination),
        "polyhedra_sharing": lambda: _check_sharing(m, rules.polyhedra_sharing),
        "match": lambda: _check_match(m, rules.match),
    }
    results = []
    for name in rules.rule_names:
        try:
            results.append(checks[name]())
        except Exception as err:  # one unmeasurable rule fails; the others still run
            results.append(_measure_failed(name, err))
    try:
        formula = structure.composition.reduced_formula
    except Exception:
        formula = "?"
    return StructureReport(source=source, formula=formula, n_sites=len(structure), results=results)


def check_files(paths: Sequence[str | Path], rules: RuleSet) -> list[StructureReport]:
    """Read every file first (so an unreadable one stops the run before any work), then check each.

    Raises:
        StructureReadError: a file cannot be read.
    """
    structures = [(str(p), read_structure(p)) for p in paths]
    return [check_structure(s, rules, source=name) for name, s in structures]


def summarize(reports: Sequence[StructureReport], rules: RuleSet) -> dict[str, Any]:
    """Counts over all structures: how many passed every rule, and per rule how many passed."""
    per_rule = {name: sum(r.result(name).passed for r in reports) for name in rules.rule_names}
    return {
        "n_structures": len(reports),
        "n_passed_all": sum(r.passed for r in reports),
        "per_rule_passed": per_rule,
    }
