"""smact 2.2.1 parity of compositional validity (``validity.smact_table = smact221``, the default).

The expected values were read from smact 2.2.1's PyPI source distribution (SMACT-2.2.1.tar.gz):
``smact/data/oxidation_states.txt``, the ``el_neg`` column of ``smact/data/element_data.txt`` and
``smact.metals`` in ``smact/__init__.py``. The verdicts were checked against CDVAE's ``smact_validity`` run on
that source.
"""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from bench.metrics import MetricSettings, ReferenceSet, check_composition, run_metrics
from bench.metrics.composition import smact221_table
from bench.metrics.settings import SMACT_TABLES, ValiditySettings

# -------------------------------------------------------------------------------------------------- the table


def test_table_loads_with_provenance():
    table = smact221_table()
    source = table["_source"]
    assert source["version"] == "2.2.1" and source["url"] == "https://github.com/WMD-group/SMACT"
    assert source["license"].startswith("MIT")
    assert "smact/data/oxidation_states.txt" in source["file_sha256"]
    assert len(table["oxidation_states"]) == 108  # H .. Hs, as in oxidation_states.txt
    assert len(table["pauling_electronegativity"]) == 103  # H .. Lr, as in element_data.txt
    assert len(table["metals"]) == len(set(table["metals"])) == 79
    assert all(isinstance(s, int) for states in table["oxidation_states"].values() for s in states)


@pytest.mark.parametrize(
    "symbol, states",
    [
        ("Fe", [-2, -1, 1, 2, 3, 4, 5, 6]),
        ("O", [-2, -1, 1, 2]),
        ("Ir", [-2, -1, 1, 2, 3, 4, 5, 6, 7, 8]),  # -3 since SMACT PR #33 (2020)
        ("Pu", [2, 3, 4, 5, 6, 7, 8]),
        ("Ca", [1, 2]),
        ("Sn", [-4, 2, 4]),
        ("He", []),
    ],
)
def test_oxidation_states_spot_checks(symbol, states):
    assert smact221_table()["oxidation_states"][symbol] == states


@pytest.mark.parametrize(
    "symbol, eneg",
    [
        ("Fe", 1.83),
        ("O", 3.44),
        ("Ir", 2.2),
        ("Pu", 1.3),
        ("Zr", 0.33),
        ("Kr", 3.0),
        ("Pm", None),
        ("Lr", None),
    ],
)
def test_electronegativity_spot_checks(symbol, eneg):
    # Zr's 0.33 is a typo in smact 2.2.1's element_data.txt (1.33 since SMACT PR #181, 2023), kept for parity.
    assert smact221_table()["pauling_electronegativity"][symbol] == eneg


def test_metals_spot_checks():
    metals = set(smact221_table()["metals"])
    assert {"Li", "Fe", "Ir", "Sb", "Ge", "Pu", "No"} <= metals
    assert not {"Pm", "Lr", "B", "Si", "H", "As", "Te"} & metals  # Pm is missing from smact 2.2.1's list


def test_installed_smact14_differs_only_where_documented():
    """The composition.py docstring lists Ir and Zr as the only differences from the installed 2014 table."""
    smact = pytest.importorskip("smact")
    if not hasattr(smact.Element("Fe"), "oxidation_states_smact14"):
        pytest.skip("smact < 3 has no oxidation_states_smact14")
    table = smact221_table()
    ox_diff, eneg_diff = {}, {}
    for symbol, eneg in table["pauling_electronegativity"].items():
        element = smact.Element(symbol)
        if (element.oxidation_states_smact14 or []) != table["oxidation_states"][symbol]:
            ox_diff[symbol] = element.oxidation_states_smact14
        if element.pauling_eneg != eneg:
            eneg_diff[symbol] = element.pauling_eneg
    assert ox_diff == {"Ir": [-3, -1, 1, 2, 3, 4, 5, 6, 7, 8]}
    assert eneg_diff == {"Zr": 1.33}
    assert sorted(smact.metals) == sorted(table["metals"])


# ------------------------------------------------------------------------------------------------ verdicts


IR_B3 = {"smact221": (False, "not_charge_balanced"), "smact14": (True, "charge_balanced")}
IR_B2 = {"smact221": (True, "charge_balanced"), "smact14": (False, "not_charge_balanced")}
ZR_CS2_H2 = {
    "smact221": (True, "charge_balanced"),
    "smact14": (False, "pauling_failed"),
    "icsd24": (False, "not_charge_balanced"),
}
CA_F = {"smact221": (True, "charge_balanced"), "icsd24": (False, "not_charge_balanced")}


@pytest.mark.parametrize(
    "amounts, expected",
    [
        ({"B": 3, "Ir": 1}, IR_B3),  # B+1 x3, Ir-3: Ir has no -3 in smact 2.2.1
        ({"B": 2, "Ir": 1}, IR_B2),  # B+1 x2, Ir-2: Ir has no -2 in the installed 2014 table
        # the only neutral assignment is H-1 x2, Zr+4, Cs-1 x2; the Cs anion (0.79) must be more
        # electronegative than the Zr cation: 0.33 in smact 2.2.1, 1.33 in the installed table
        ({"H": 2, "Zr": 1, "Cs": 2}, ZR_CS2_H2),
        ({"Ca": 1, "F": 1}, CA_F),  # Ca has +1 in SMACT's 2014 table, only +2 in the ICSD-2024 one
    ],
)
def test_verdicts_differ_by_table(amounts, expected):
    for table, verdict in expected.items():
        check = check_composition(amounts, smact_table=table)
        assert (check.valid, check.reason) == verdict, table


def test_default_table_is_smact221():
    assert check_composition({"H": 2, "Zr": 1, "Cs": 2}).valid  # valid under smact221 only
    assert not check_composition({"B": 3, "Ir": 1}).valid  # valid under smact14 only


@pytest.mark.parametrize(
    "amounts, valid, reason",
    [
        # Pm has no electronegativity; Cl-Pm is the first cation-anion pair with it: smact 2.2.1 raised
        # TypeError on the comparison and CDVAE accepted the combination
        ({"Pm": 1, "Cl": 3}, True, "charge_balanced"),
        ({"O": 1, "Na": 1, "Pm": 1}, True, "charge_balanced"),  # pairs O-Na, O-Pm (TypeError), Na-Pm
        # Na+ and Pm3+ are a like-sign pair with a missing value, met before Cl-Pm: smact 2.2.1's
        # eneg_states_test returned False there (no TypeError), so no combination passes
        ({"Na": 1, "Cl": 4, "Pm": 1}, False, "pauling_failed"),
    ],
)
def test_missing_electronegativity_follows_smact_2_2_1(amounts, valid, reason):
    check = check_composition(amounts, smact_table="smact221")
    assert (check.valid, check.reason) == (valid, reason)


def test_element_without_data_is_unknown():
    # Rf has oxidation states in smact 2.2.1 but no element data (its Element() raised NameError)
    assert smact221_table()["oxidation_states"]["Rf"] == [4]
    check = check_composition({"Rf": 1, "O": 2}, smact_table="smact221")
    assert not check.valid and check.reason.startswith("unknown_element")


# ------------------------------------------------------------------------------------------------ settings


def test_settings_accept_three_tables():
    assert SMACT_TABLES == ("smact221", "smact14", "icsd24")
    assert ValiditySettings().smact_table == "smact221" == MetricSettings().validity.smact_table
    for table in SMACT_TABLES:
        assert MetricSettings.from_mapping({"validity": {"smact_table": table}}).validity.smact_table == table
    with pytest.raises(ValueError, match="smact_table"):
        ValiditySettings(smact_table="smact22")


def _structure(species: list[str], a: float = 6.0) -> Structure:
    coords = [[i / len(species), (i * 0.37) % 1, (i * 0.61) % 1] for i in range(len(species))]
    return Structure(Lattice.cubic(a), species, coords)


@pytest.mark.parametrize("table, valid", [("smact221", 1.0), ("smact14", 0.0), (None, 1.0)])
def test_record_settings_name_the_table(table, valid):
    zr_cs_h = _structure(["H", "H", "Zr", "Cs", "Cs"])
    ref = ReferenceSet("toy", train=[zr_cs_h], test=[zr_cs_h])
    cfg = {"names": ["comp_valid"]}
    if table is not None:
        cfg["validity"] = {"smact_table": table}
    report = run_metrics([zr_cs_h], ref, cfg=cfg, progress=False)
    assert report.settings["validity"]["smact_table"] == (table or "smact221")
    assert report.values()["comp_valid"] == valid
