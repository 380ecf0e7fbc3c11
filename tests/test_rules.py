"""Rule checks (``bench.rules``, ``matgenbench check``): the NZP reference passes every rule; deliberately
broken structures fail exactly the rules they break; rock salt gives its textbook answers; the command's
exit codes and one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from bench.rules import (
    CHECK_ORDER,
    RuleSet,
    RulesFileError,
    StructureReadError,
    check_structure,
    load_rules,
    read_structure,
)
from tests.conftest import REPO_ROOT

NZP_DIR = REPO_ROOT / "examples" / "nzp"
NZP_RULES = NZP_DIR / "rules.yaml"
NZP_CIF = NZP_DIR / "nzp_reference.cif"


@pytest.fixture(scope="module")
def nzp_rules() -> RuleSet:
    return load_rules(NZP_RULES)


@pytest.fixture(scope="module")
def nzp() -> Structure:
    return read_structure(NZP_CIF)


def _indices(structure: Structure, element: str) -> list[int]:
    return [i for i, site in enumerate(structure) if site.specie.symbol == element]


def rock_salt(a: float = 5.64) -> Structure:
    """NaCl in its conventional cubic cell (8 atoms), Na at the origin."""
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    cl = [[(x + 0.5) % 1, (y + 0.5) % 1, (z + 0.5) % 1] for x, y, z in fcc]
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, fcc + cl)


def rock_salt_rules(tmp_path: Path | None = None, **changes: Any) -> RuleSet:
    """Rock salt's textbook rules; ``match`` against a written NaCl CIF when ``tmp_path`` is given."""
    data: dict[str, Any] = {
        "composition": "NaCl",
        "charge_balance": {"method": "smact"},
        "min_distance": 0.5,
        "spacegroup": "Fm-3m",
        "wyckoff": {"Na": ["4a"], "Cl": ["4b"]},
        "coordination": {"Na": {"Cl": 6}, "Cl": {"Na": 6}},
        "polyhedra_sharing": [{"between": ["Na", "Na"], "anion": "Cl", "allowed": ["corner", "edge"],
                               "required": ["corner", "edge"]}],
    }
    if tmp_path is not None:
        rock_salt().to(filename=str(tmp_path / "nacl.cif"))
        data["match"] = {"target": "nacl.cif"}
    data.update(changes)
    return RuleSet.from_mapping(data, source="rock_salt_rules", base_dir=tmp_path)


# ----------------------------------------------------------------------------------- the NZP reference


def _load_build_script() -> Any:
    spec = importlib.util.spec_from_file_location("nzp_build_reference", NZP_DIR / "build_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_cif_is_what_the_script_builds(nzp: Structure) -> None:
    """The shipped CIF is the script's structure, its O2 z satisfies the stated construction (Zr-O1 = Zr-O2)
    and its header names the sources."""
    script = _load_build_script()
    text = NZP_CIF.read_text()
    o2 = next(line.split() for line in text.splitlines() if line.startswith("O2 O 36f"))
    o2_z = float(o2[5])
    built = script.build(o2_z)
    assert len(nzp) == len(built) == 108 and nzp.matches(built)
    assert abs(script.zr_bond_mismatch(o2_z)) < 2e-3  # Å; the CIF rounds z to 4 decimals
    bonds = script.bonds(built, "Zr")
    assert len(bonds["O1"]) == len(bonds["O2"]) == 3
    assert "Lucazeau" in text and "COD 1008846" in text and "CONSTRUCTED" in text


def test_nzp_reference_passes_every_rule(nzp: Structure, nzp_rules: RuleSet) -> None:
    report = check_structure(nzp, nzp_rules, source="reference")
    assert [r.rule for r in report.results] == list(CHECK_ORDER)
    assert report.passed, [(r.rule, r.measured_text, r.detail) for r in report.results if not r.passed]
    assert report.result("spacegroup").measured == {"symbol": "R-3c", "number": 167}
    assert report.result("wyckoff").measured == {"Na": {"6b": 1}, "Zr": {"12c": 1}, "P": {"18e": 1},
                                                 "O": {"36f": 2}}
    assert report.result("coordination").measured == {"Zr": {"O": {"6": 12}}, "P": {"O": {"4": 18}}}
    sharing = report.result("polyhedra_sharing").measured
    # every one of the 72 O atoms bridges exactly one ZrO6 and one PO4: 72 corner-sharing Zr-P pairs
    assert sharing["Zr-P (O)"] == {"corner": len(_indices(nzp, "O")), "edge": 0, "face": 0} == \
        {"corner": 72, "edge": 0, "face": 0}
    assert sharing["Zr-Zr (O)"] == sharing["P-P (O)"] == {"corner": 0, "edge": 0, "face": 0}
    assert report.result("match").measured["match"] is True
    assert report.result("match").measured["rms"] == pytest.approx(0.0, abs=1e-6)
    assert report.result("min_distance").measured == pytest.approx(1.5648, abs=1e-3)  # the P-O2 bond


def test_primitive_cell_reports_conventional_multiplicities(nzp: Structure, nzp_rules: RuleSet) -> None:
    """The 36-atom rhombohedral cell, written with oxidation states (Zr4+, O2-...) as many CIFs are: the same
    Wyckoff sites (conventional multiplicities), a third of the pairs, and still a match."""
    primitive = nzp.get_primitive_structure()
    primitive.add_oxidation_state_by_element({"Na": 1, "Zr": 4, "P": 5, "O": -2})
    assert len(primitive) == 36
    report = check_structure(primitive, nzp_rules)
    assert report.passed
    assert report.result("wyckoff").measured["Zr"] == {"12c": 1}
    assert report.result("polyhedra_sharing").measured["Zr-P (O)"]["corner"] == 24


def _same_sites(a: Structure, b: Structure) -> bool:
    """Same lattice, and the same element at the same fractional position site by site (up to wrapping)."""
    if len(a) != len(b) or not np.allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-6):
        return False
    delta = a.frac_coords - b.frac_coords
    return [s.specie.symbol for s in a] == [s.specie.symbol for s in b] and \
        bool(np.abs(delta - np.round(delta)).max() < 1e-6)


def _zr_off_12c(s: Structure) -> Structure:
    # 0.2 Å off the threefold axis: twice symprec (0.1 Å), well within the matcher's stol
    s.translate_sites(_indices(s, "Zr")[:1], [0.2, 0.0, 0.0], frac_coords=False)
    return s


def _o_removed(s: Structure) -> Structure:
    s.remove_sites(_indices(s, "O")[:1])
    return s


def _c_strained(s: Structure) -> Structure:
    # c x 1.35 at fixed fractional coordinates: R-3c, sites, bonds and sharing survive; after the matcher
    # scales both to one volume, c is 1.22 x and a 0.90 x the reference's, beyond ltol 0.2
    s.lattice = Lattice.hexagonal(s.lattice.a, s.lattice.c * 1.35)
    return s


def _na_on_6a(s: Structure) -> Structure:
    # every Na from 6b (0, 0, 0) to 6a (0, 0, 1/4): still R-3c, but Na is on a site the rules do not allow
    s.translate_sites(_indices(s, "Na"), [0.0, 0.0, 0.25])
    return s


BROKEN = {
    # one Zr moved: the symmetry drops to P1, so every orbit is 1a; all else holds and it still matches
    "zr_off_12c": (_zr_off_12c, {"spacegroup", "wyckoff"}),
    # one O of 72 gone: Na6Zr12P18O71 (no neutral assignment: 6 Na + 12 Zr + 18 P charges are a multiple
    # of 6, 142 is not), one ZrO5 and one PO3; a 36f orbit missing one atom leaves P1; no match (another
    # formula)
    "o_removed": (_o_removed, {"composition", "charge_balance", "spacegroup", "wyckoff", "coordination",
                               "match"}),
    "c_strained": (_c_strained, {"match"}),
    "na_on_6a": (_na_on_6a, {"wyckoff", "match"}),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_nzp_fails_exactly_the_rules_it_breaks(case: str, nzp: Structure, nzp_rules: RuleSet) -> None:
    make, expected = BROKEN[case]
    report = check_structure(make(nzp.copy()), nzp_rules, source=case)
    shipped = NZP_DIR / "broken" / f"{case}.cif"  # the copies examples/nzp ships to try the command on
    if shipped.is_file():
        assert _same_sites(read_structure(shipped), make(nzp.copy()))
    assert set(report.failed) == expected, [(r.rule, r.measured_text, r.detail) for r in report.results]
    if case == "zr_off_12c":
        assert report.result("spacegroup").measured["number"] == 1
        assert report.result("wyckoff").measured["Zr"] == {"1a": 12}
    if case == "o_removed":
        assert report.result("composition").measured == "Na6Zr12P18O71"
        assert report.result("charge_balance").measured == "not_charge_balanced"
        assert report.result("coordination").measured == {"Zr": {"O": {"5": 1, "6": 11}},
                                                          "P": {"O": {"3": 1, "4": 17}}}
    if case == "na_on_6a":
        assert report.result("spacegroup").measured["number"] == 167
        assert report.result("wyckoff").measured["Na"] == {"6a": 1}


def test_unmeasurable_and_absent_fail_without_stopping_the_rest(nzp_rules: RuleSet) -> None:
    """Two Na atoms on one spot: spglib finds no symmetry, and Zr, P and O are absent; every rule still
    reports (as failed), none raises."""
    s = Structure(Lattice.cubic(4.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0, 0, 0], [0.5, 0.5, 0.5]])
    report = check_structure(s, nzp_rules)
    assert report.failed == list(CHECK_ORDER)
    assert report.result("spacegroup").detail.startswith("could not measure")
    assert report.result("min_distance").measured == 0.0
    assert "no Zr sites" in report.result("coordination").detail


def test_fixed_oxidation_states_give_the_net_charge(nzp: Structure) -> None:
    states = {"Na": 1, "Zr": 4, "P": 5, "O": -2}
    rules = RuleSet.from_mapping({"charge_balance": {"method": "fixed", "oxidation_states": states}})
    assert check_structure(nzp, rules).result("charge_balance").measured == 0.0
    missing_o = check_structure(_o_removed(nzp.copy()), rules).result("charge_balance")
    assert not missing_o.passed and missing_o.measured == 2.0  # one O2- fewer: +2 per cell
    no_zr_state = RuleSet.from_mapping({"charge_balance": {"method": "fixed", "oxidation_states": {"Na": 1}}})
    assert not check_structure(nzp, no_zr_state).result("charge_balance").passed


# --------------------------------------------------------------------------------------------- rock salt


def test_rock_salt_textbook_answers(tmp_path: Path) -> None:
    """Fm-3m (225), Na 4a, Cl 4b, both six-coordinated; each NaCl6 octahedron shares edges with 12 others and
    corners with 6 (the next Na along each axis), faces with none: per Na, 6 edge and 3 corner pairs."""
    rules = rock_salt_rules(tmp_path)
    for structure, n_na in ((rock_salt(), 4), (rock_salt().get_primitive_structure(), 1),
                            (rock_salt() * (2, 1, 1), 8)):
        report = check_structure(structure, rules)
        assert report.passed, [(r.rule, r.measured_text, r.detail) for r in report.results if not r.passed]
        assert report.result("spacegroup").measured == {"symbol": "Fm-3m", "number": 225}
        assert report.result("wyckoff").measured == {"Na": {"4a": 1}, "Cl": {"4b": 1}}
        assert report.result("coordination").measured == {"Na": {"Cl": {"6": n_na}},
                                                          "Cl": {"Na": {"6": n_na}}}
        assert report.result("polyhedra_sharing").measured == {
            "Na-Na (Cl)": {"corner": 3 * n_na, "edge": 6 * n_na, "face": 0}}
        assert report.result("min_distance").measured == pytest.approx(2.82)


def test_distance_cutoff_neighbours_agree_with_crystalnn_on_rock_salt() -> None:
    """Na-Cl is 2.82 Å and Na-Na 3.99 Å: a 3.0 Å cutoff finds the same octahedra as CrystalNN."""
    rules = rock_salt_rules(neighbours={"method": "cutoff", "cutoff": {"Na-Cl": 3.0, "Cl-Na": 3.0}})
    report = check_structure(rock_salt(), rules)
    assert report.passed
    assert report.result("polyhedra_sharing").measured["Na-Na (Cl)"] == {"corner": 12, "edge": 24, "face": 0}
    too_short = rock_salt_rules(neighbours={"method": "cutoff", "cutoff": 2.5})
    assert set(check_structure(rock_salt(), too_short).failed) == {"coordination", "polyhedra_sharing"}


def test_edge_sharing_fails_a_corners_only_rule() -> None:
    corners_only = [{"between": ["Na", "Na"], "anion": "Cl", "allowed": ["corner"]}]
    rules = rock_salt_rules(polyhedra_sharing=corners_only)
    report = check_structure(rock_salt(), rules)
    assert report.failed == ["polyhedra_sharing"]
    assert "Na-Na shares edges (24 pairs)" in report.result("polyhedra_sharing").detail


def test_atoms_0_3_angstrom_apart_fail_only_min_distance() -> None:
    """Rock salt shrunk to a = 0.6 Å: every Na-Cl pair is 0.3 Å apart, while the space group, sites,
    octahedra and formula are unchanged. (``match`` is left out: pymatgen's primitive-cell reduction uses
    an absolute 0.25 Å tolerance, so it does not reduce a 0.6 Å cell.)"""
    report = check_structure(rock_salt(0.6), rock_salt_rules())
    assert report.failed == ["min_distance"]
    assert report.result("min_distance").measured == pytest.approx(0.3)


def test_pymatgen_charge_guesser_on_rock_salt() -> None:
    rules = RuleSet.from_mapping({"charge_balance": {"method": "pymatgen"}})
    result = check_structure(rock_salt(), rules).result("charge_balance")
    assert result.passed and result.measured == {"Na": 1.0, "Cl": -1.0}


# ------------------------------------------------------------------------------------------ rules files


def test_spacegroup_spellings() -> None:
    for given, number in (("R-3c", 167), (167, 167), ("R -3 c", 167), ("R-3c:H", 167), ("P21/c", 14),
                          ({"symbol": "Fm-3m", "symprec": 0.01}, 225)):
        rules = RuleSet.from_mapping({"spacegroup": given})
        assert rules.spacegroup.number == number


@pytest.mark.parametrize(("text", "fragment"), [
    ("spacegrup: R-3c\n", "did you mean 'spacegroup'"),
    ("spacegroup: R-9x\n", "not a space group symbol"),
    ("spacegroup: 231\n", "not in 1..230"),
    ("wyckoff: {Zr: [c12]}\n", "not a Wyckoff site"),
    ("coordination: {Zz: {O: 6}}\n", "not an element symbol"),
    ("coordination: {Zr: {O: six}}\n", "whole number"),
    ("polyhedra_sharing: [{between: [Zr, P], anion: O, allowed: [corner], required: [edge]}]\n",
     "required ['edge'] not within allowed"),
    ("polyhedra_sharing: [{between: [Zr, P]}]\n", "names no anion"),
    ("coordination: {Zr: {O: 6}}\nneighbours: {method: cutoff, cutoff: {P-O: 1.9}}\n",
     "no distance for Zr-O"),
    ("match: {target: missing.cif}\n", "match target"),
    ("charge_balance: {method: magic}\n", "use smact, pymatgen or fixed"),
    ("min_distance: -1\n", "must be a number >= 0"),
    ("composition: Xx2\n", "not a chemical formula"),
    ("spacegroup: [R-3c\n", "not valid YAML"),
    ("", "must hold a mapping"),
    ("name: only a name\n", "states no rule"),
])
def test_bad_rules_files_are_refused_in_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesFileError) as info:
        load_rules(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_unreadable_structure_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 5\nthis is not a CIF\n")
    with pytest.raises(StructureReadError, match="bad.cif: cannot read a structure"):
        read_structure(bad)
    with pytest.raises(StructureReadError, match="no such file"):
        read_structure(tmp_path / "absent.cif")


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    rock_salt().to(filename=str(tmp_path / "nacl.cif"))
    rules = tmp_path / "nacl.yaml"
    rules.write_text("spacegroup: {symbol: Fm-3m, symprec: 0.01}\nwyckoff: {Na: [4a], Cl: [4b]}\n"
                     "coordination: {Na: {Cl: 6}}\nmatch: {target: nacl.cif}\n")
    assert main(["check", str(tmp_path / "nacl.cif"), "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "PASS (4 of 4 rules pass)" in out and "summary: 1/1 structures pass every rule" in out
    assert "symprec 0.01 Å, angle_tolerance 5°" in out

    broken = NZP_DIR / "broken" / "zr_off_12c.cif"
    report = tmp_path / "report.json"
    assert main(["check", str(NZP_CIF), str(broken), "--rules", str(NZP_RULES), "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "PASS (8 of 8 rules pass)" in out and "FAIL (6 of 8 rules pass)" in out
    assert "summary: 1/2 structures pass every rule" in out
    data = json.loads(report.read_text())
    assert [s["passed"] for s in data["structures"]] == [True, False]
    assert data["structures"][1]["failed"] == ["spacegroup", "wyckoff"]
    assert data["summary"] == {"n_structures": 2, "n_passed_all": 1, "per_rule_passed": {
        "composition": 2, "charge_balance": 2, "min_distance": 2, "spacegroup": 1, "wyckoff": 1,
        "coordination": 2, "polyhedra_sharing": 2, "match": 2}}
    assert data["rules"]["spacegroup"] == {"symbol": "R-3c", "number": 167, "symprec": 0.1,
                                           "angle_tolerance": 5.0}
    assert data["rules"]["match"]["ltol"] == 0.2 and data["versions"]["pymatgen"]


def test_cli_unusable_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    bad = tmp_path / "garbage.cif"
    bad.write_text("not a cif at all\n")
    assert main(["check", str(NZP_CIF), str(bad), "--rules", str(NZP_RULES)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "give a valid CIF" in lines[0]

    rules = tmp_path / "rules.yaml"
    rules.write_text("spacegroup: R-3c\nwyckof: {Zr: [12c]}\n")
    assert main(["check", str(NZP_CIF), "--rules", str(rules)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(rules) in lines[0] and "did you mean 'wyckoff'" in lines[0]

    assert main(["check", str(NZP_CIF), "--rules", str(tmp_path / "none.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot read the rules file" in lines[0]
