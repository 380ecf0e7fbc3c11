"""The usability funnel (requested → decoded → valid → unique → novel → plausible) on hand-made sets whose
every item's fate is known, its record, its re-derivation from a stored per-sample table, and the board."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

from bench.io_utils import atomic_write_json
from bench.leaderboard import board_from_records, render_board_markdown, render_html
from bench.leaderboard.funnel import summarize_funnel
from bench.leaderboard.schema import validate_record
from bench.leaderboard.terminal import funnel_tables
from bench.metrics import ReferenceSet, run_metrics
from bench.metrics.composition_track import (
    CompositionMetricSettings,
    CompositionReference,
    evaluate_compositions,
)
from bench.metrics.funnel import STAGES, PlausibleScreen, funnel_from_table, stage_flags
from bench.metrics.settings import PropertyModelSettings
from bench.records import ResultRecord, write_record
from bench.rescore import main as rescore_main
from bench.rescore import rescore_funnel_record
from tests.test_leaderboard import _metrics, _record
from tests.test_metrics_property import COORDS, mean_z, perovskites

# ------------------------------------------------------------------------------------------ crystal track


def _perovskite(a_site: str, b_site: str, a: float = 4.0) -> Structure:
    return Structure(Lattice.cubic(a), [a_site, b_site, "O", "O", "O"], COORDS)


@pytest.fixture(scope="module")
def reference() -> ReferenceSet:
    """240 charge-balanced perovskites; their property is the mean atomic number (10 to 35.6)."""
    train, test = perovskites(240, seed=0), perovskites(30, seed=1)
    return ReferenceSet("synthetic", train=train, test=test, train_checksum="funnel-train",
                        test_checksum="funnel-test",
                        properties={"train": {"mean_z": mean_z(train)}, "test": {"mean_z": mean_z(test)}})


def generated(reference: ReferenceSet) -> list[Structure | None]:
    """Eight items, each dropped at a known stage.

    0: a decode failure (None): requested only.
    1: two atoms 0.3 Å apart: decoded, not valid.
    2: a 0.027 Å^3 cell: decoded (a structure came out), not valid (not constructed).
    3: AgNbO3 (no training structure has Ag): plausible (mean Z 22.4).
    4: AgNbO3 again, another lattice constant: valid, a duplicate of 3.
    5: a training structure: unique, not novel.
    6: LiNO3 (Li+ N5+): novel, mean Z 6.8, under every training value: not plausible.
    7: SrCeO3: plausible (mean Z 24).
    """
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.075, 0, 0]])
    tiny = Structure(Lattice.cubic(0.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return [None, close, tiny, _perovskite("Ag", "Nb"), _perovskite("Ag", "Nb", 4.1),
            reference.train[5].copy(), _perovskite("Li", "N"), _perovskite("Sr", "Ce")]


# ridge: a linear model that extrapolates (a tree ensemble would clamp LiNO3 to the training range)
CFG = {
    "names": ["valid", "unique", "novel", "vun_rate", "wdist_prop"],
    "property": "mean_z",
    "property_model": {"model": "ridge", "crystalnn": False},
    "validity": {"require_fingerprint": False},
}
EXPECTED = [8, 7, 5, 4, 3, 2]  # requested, decoded, valid, unique, novel, plausible
LAST_STAGE = ["requested", "decoded", "decoded", "plausible", "valid", "unique", "novel", "plausible"]


def _counts(funnel: dict) -> list[int | None]:
    return [stage["n"] for stage in funnel["stages"]]


@pytest.mark.parametrize("max_samples", [1000, 2])
def test_each_item_stops_at_its_known_stage(reference: ReferenceSet, max_samples: int) -> None:
    """With a draw of 2 valid items for the distribution metrics, the other novel items are predicted for the
    screen by the same model: the same funnel."""
    cfg = {**CFG, "distribution": {"max_samples": max_samples}}
    report = run_metrics(generated(reference), reference, cfg, progress=False)
    funnel = report.funnel
    assert [s["name"] for s in funnel["stages"]] == list(STAGES)
    assert _counts(funnel) == EXPECTED
    assert [s["fraction"] for s in funnel["stages"]] == [n / 8 for n in EXPECTED]
    assert report.per_sample["funnel_stage"].tolist() == LAST_STAGE
    # the funnel's unique and novel are cumulative; the record's counts count among all valid items
    assert (report.counts["n_unique"], report.counts["n_novel"]) == (4, 4)
    assert report.metrics["vun_rate"]["n_vun"] == funnel["stages"][4]["n"]
    screened = report.per_sample["funnel_predicted"]
    assert screened[[3, 6, 7]].notna().all() and screened.drop([3, 6, 7]).isna().all()
    assert screened[6] < funnel["plausible"]["low"] < screened[3]  # LiNO3 is screened out by its prediction
    rule = funnel["plausible"]
    train_z = mean_z(reference.train)
    assert rule["property"] == "mean_z" and rule["n_train_values"] == 240
    assert rule["low"] == pytest.approx(np.quantile(train_z, 0.005))
    assert rule["high"] == pytest.approx(np.quantile(train_z, 0.995)) and rule["high"] <= train_z.max()
    assert "Ridge" in rule["predictor"] and "0.5th to 99.5th percentile" in rule["rule"]


def test_stages_are_nested(reference: ReferenceSet) -> None:
    report = run_metrics(generated(reference), reference, CFG, progress=False)
    stage = report.per_sample["funnel_stage"].map(STAGES.index).to_numpy()
    for k, name in enumerate(STAGES):  # an item reaches stage k exactly when its last stage is k or later
        assert report.funnel["stages"][k]["n"] == int((stage >= k).sum()), name
    counts = _counts(report.funnel)
    assert counts == sorted(counts, reverse=True)


def test_without_a_property_model_plausible_is_na_never_zero(reference: ReferenceSet) -> None:
    for cfg, says in (({**CFG, "names": ["valid", "unique", "novel"]}, "wdist_prop"),
                      ({key: v for key, v in CFG.items() if key != "property"}, "no property")):
        funnel = run_metrics(generated(reference), reference, cfg, progress=False).funnel
        assert _counts(funnel) == [*EXPECTED[:5], None]
        plausible = funnel["stages"][5]
        assert plausible["fraction"] is None and says in plausible["reason"]
        assert funnel["plausible"]["rule"] is None and says in funnel["plausible"]["reason"]


def test_a_missing_flag_column_makes_its_stage_and_the_later_ones_na(reference: ReferenceSet) -> None:
    funnel = run_metrics(generated(reference), reference, {**CFG, "names": ["valid", "wdist_prop"]},
                         progress=False).funnel
    assert _counts(funnel) == [8, 7, 5, None, None, None]
    assert "unique was not computed" in funnel["stages"][3]["reason"]


# a per-sample table as the evaluate stage writes it (empty cells: undefined for an invalid structure)
TABLE = """index,construct_reason,valid,unique,novel,predicted_x
0,none,False,,,
1,ok,False,,,
2,ok,True,True,True,0.5
3,ok,True,False,True,0.5
4,ok,True,True,False,0.2
5,ok,True,True,True,3.0
6,ok,True,True,True,1.0
"""
SCREEN = PlausibleScreen("x", 0.0, 1.0, 100, "a stated predictor")


def test_a_stored_table_gives_the_funnel_by_hand() -> None:
    frame = pd.read_csv(io.StringIO(TABLE), dtype=str, keep_default_na=False)
    funnel, last = funnel_from_table(frame, "crystal", screen=SCREEN, source="t.samples.csv")
    # by hand: decoded 1-6; valid 2-6; unique 2,4,5,6; novel 2,5,6; plausible (0 <= x <= 1) 2 and 6
    assert _counts(funnel) == [7, 6, 5, 4, 3, 2]
    assert last == ["requested", "decoded", "plausible", "valid", "unique", "novel", "plausible"]
    assert funnel["source"] == "t.samples.csv" and funnel["plausible"]["low"] == 0.0
    assert validate_record(_record_with(funnel).to_dict()) == []


def test_flags_that_do_not_belong_together_are_refused() -> None:
    decoded = np.array([True, False, True])
    with pytest.raises(ValueError, match="item 1 is valid but not decoded"):
        stage_flags(decoded, np.array([True, True, False]), None, None, None)
    with pytest.raises(ValueError, match="item 2 is unique but not valid"):
        stage_flags(decoded, np.array([True, False, False]), np.array([True, False, True]), None, None)
    frame = pd.read_csv(io.StringIO(TABLE), dtype=str, keep_default_na=False)
    frame.loc[5, "predicted_x"] = ""  # a novel item without a prediction cannot be screened
    with pytest.raises(ValueError, match="1 novel item"):
        funnel_from_table(frame, "crystal", screen=SCREEN)


# -------------------------------------------------------------------------------------- composition track

ALKALI, HALOGEN = ("Li", "Na", "K", "Rb", "Cs"), ("F", "Cl", "Br", "I")
EARTH, CHALCOGEN = ("Be", "Mg", "Ca", "Sr", "Ba"), ("O", "S", "Se", "Te")


def _mean_z(formula: str) -> float:
    comp = Composition(formula)
    return sum(el.Z * n for el, n in comp.items()) / comp.num_atoms


@pytest.fixture(scope="module")
def composition_reference() -> CompositionReference:
    """40 binary salts, their target the mean atomic number (6 to 54)."""
    train = [f"{a}{x}" for a in ALKALI for x in HALOGEN] + [f"{a}{x}" for a in EARTH for x in CHALCOGEN]
    test = ["LiCl", "KF", "CaS", "SrO"]
    return CompositionReference("toy", train=train, test=test,
                                train_targets=np.array([_mean_z(f) for f in train]),
                                test_targets=np.array([_mean_z(f) for f in test]))


def test_composition_funnel_of_known_formulas(composition_reference: CompositionReference) -> None:
    """0 failed; 1 unreadable; 2 and 7 not charge balanced; 3 AgCl, novel, mean Z 32; 4 its duplicate; 5 a
    training formula; 6 PbI2, novel, mean Z 62.7, above every training value; 8 HgO, novel, mean Z 44; 9 LiH,
    novel, mean Z 2, below every training value. A ridge regression on Magpie features (which hold the mean
    atomic number) predicts each within a few units, far from the bounds 6 and 54."""
    items = [None, "not a formula", "NaCl2", "AgCl", "AgCl", "NaCl", "PbI2", "K2Te3", "HgO", "LiH"]
    settings = CompositionMetricSettings(property_model=PropertyModelSettings(model="ridge", crystalnn=False))
    report = evaluate_compositions(items, composition_reference, settings, use_cache=False)
    funnel = report.funnel
    assert funnel["track"] == "composition"
    assert _counts(funnel) == [10, 9, 6, 5, 4, 2]
    assert report.metrics["comp_vun_rate"]["n_vun"] == 4
    assert report.per_sample["funnel_stage"].tolist() == [
        "requested", "decoded", "decoded", "plausible", "valid", "unique", "novel", "decoded", "plausible",
        "novel"]
    assert (funnel["plausible"]["low"], funnel["plausible"]["high"]) == (6.0, 54.0)  # LiF/BeO, CsI/BaTe
    assert "Magpie" in funnel["plausible"]["predictor"]
    # a table written and read back gives the same funnel
    table = pd.read_csv(io.StringIO(report.per_sample.to_csv(index=False)), dtype=str, keep_default_na=False)
    screen = PlausibleScreen.from_training("target", composition_reference.train_targets,
                                           funnel["plausible"]["predictor"])
    assert _counts(funnel_from_table(table, "composition", screen=screen)[0]) == _counts(funnel)


def test_fractional_formulas_make_valid_and_later_stages_na() -> None:
    reference = CompositionReference("alloys", train=["Fe0.7Ni0.3", "Fe0.5Ni0.5"], test=["Fe0.6Ni0.4"],
                                     integer_formulas=False)
    funnel = evaluate_compositions(["Fe0.8Ni0.2", None], reference, use_cache=False,
                                   names=["comp_smact_valid", "comp_unique", "comp_novel"]).funnel
    assert _counts(funnel) == [2, 1, None, None, None, None]
    assert funnel["stages"][2]["reason"].startswith("not applicable")


# ------------------------------------------------------------------------------------- end to end, rescore


def _tiny_reference(tmp: Path, *extra: str) -> Path:
    """A Random reference record on the built-in tiny dataset, scored with the property model."""
    from bench.config import compose
    from bench.references import score_reference
    from tests.conftest import tiny_run

    overrides = ["reference=random", "metrics.names=[valid,unique,novel,vun_rate,wdist_prop]",
                 "metrics.property_model.crystalnn=false", *tiny_run(tmp, "seed=1", samples=40), *extra]
    _, path = score_reference(compose(overrides))
    assert path is not None
    return path


def test_evaluate_writes_the_funnel_and_a_table_gives_it_back(tmp_path: Path) -> None:
    path = _tiny_reference(tmp_path)
    data = json.loads(path.read_text())
    assert validate_record(data) == []
    funnel = data["funnel"]
    counts = _counts(funnel)
    assert counts[0] == 40 and counts == sorted(counts, reverse=True) and counts[5] is not None
    assert counts[1] == data["counts"]["n_decoded"] and counts[2] == data["counts"]["n_valid"]
    assert counts[4] == data["metrics"]["vun_rate"]["n_vun"]
    assert funnel["plausible"]["property"] == "density" and funnel["source"] == "evaluate"
    # the record without its funnel, as one written before it: the table gives the same funnel back
    del data["funnel"]
    atomic_write_json(path, data)
    outcome = rescore_funnel_record(path)
    again = json.loads(path.read_text())
    assert outcome.before is None and list(outcome.after) == counts
    assert again["funnel"]["stages"] == funnel["stages"]
    assert again["funnel"]["plausible"] == funnel["plausible"]
    assert again["funnel"]["source"] == path.with_suffix(".samples.csv").name
    assert {k: v for k, v in again.items() if k != "funnel"} == data  # nothing else changes
    assert validate_record(again) == []


def test_rescore_leaves_records_it_cannot_derive_alone(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    path = _tiny_reference(tmp_path)
    data = json.loads(path.read_text())
    data["counts"]["n_valid"] += 1  # a table that disagrees with its record
    del data["funnel"]
    atomic_write_json(path, data)
    before = path.read_text()
    assert rescore_main(["--funnel-from-tables", str(path)]) == 1
    assert "left alone: the table gives" in capsys.readouterr().out and path.read_text() == before
    path.with_suffix(".samples.csv").unlink()
    assert rescore_funnel_record(path).note == "no per-structure table"


# ---------------------------------------------------------------------------------------------------- board

RULE = "predicted heat_ref within [0.1, 3.2], the 0.5th to 99.5th percentile of its 3787 training values"


def _funnel(counts: list[int | None], rule: str | None = RULE) -> dict:
    stages = [{"name": name, "n": n, "fraction": None if n is None else n / counts[0], "rule": name}
              for name, n in zip(STAGES, counts, strict=True)]
    for stage in stages:
        if stage["n"] is None:
            stage["reason"] = "no property model for this dataset"
    plausible = {"rule": rule} if rule else {"rule": None, "reason": "no property model for this dataset"}
    return {"version": "1.0", "track": "crystal", "stages": stages, "plausible": plausible,
            "source": "evaluate"}


def funnel_records() -> list[ResultRecord]:
    """The synthetic board's records with funnels: vae's three seeds (means 100, 92, 62, 52, 42, 32), wgan_gp
    one of its two seeds (plausible n/a), the Test reference; ddpm's records predate the funnel."""
    from tests.test_leaderboard import synthetic_records

    out = []
    for record in synthetic_records():
        if record.model == "vae":
            d = 2 * record.seed
            record.funnel = _funnel([100, 90 + d, 60 + d, 50 + d, 40 + d, 30 + d])
        elif record.model == "wgan_gp" and record.seed == 0:
            record.funnel = _funnel([100, 100, 60, 60, 58, None], rule=None)
        elif record.model == "Test":
            record.funnel = _funnel([100, 100, 100, 99, 97, 96])
        out.append(record)
    return out


def write_funnel_results(root: Path) -> Path:
    """Write :func:`funnel_records` as a results directory; return it."""
    for record in funnel_records():
        write_record(record, root)
    return root


def test_board_pools_the_funnel_over_seeds() -> None:
    rows = {r.name: r for r in board_from_records(funnel_records(), published=False).rows
            if r.status == "complete"}
    vae = rows["vae"].funnel
    assert [s.mean for s in vae.stages] == [100, 92, 62, 52, 42, 32]
    assert vae.stage("plausible").fraction == pytest.approx(0.32) and vae.n_seeds == 3 and vae.complete
    wgan = rows["wgan_gp"].funnel
    assert (wgan.n_seeds, wgan.n_records, wgan.complete) == (1, 2, False)
    assert wgan.stage("plausible").mean is None and "no property model" in wgan.stage("plausible").reason
    assert rows["ddpm"].funnel is None
    assert summarize_funnel([]) is None


def test_markdown_and_terminal_show_counts_and_na() -> None:
    board = board_from_records(funnel_records(), published=False)
    text = render_board_markdown(board)
    assert "### perov_5: usability funnel" in text
    assert ("| vae | 3 | 100 (100.0%) | 92 (92.0%) | 62 (62.0%) | 52 (52.0%) | 42 (42.0%) | 32 (32.0%) |"
            in text)
    assert ("| wgan_gp | 1 of 2 | 100 (100.0%) | 100 (100.0%) | 60 (60.0%) | 60 (60.0%) | 58 (58.0%) | n/a |"
            in text)
    assert "| ddpm | 1 | n/a | n/a | n/a | n/a | n/a | n/a |" in text
    assert f"- *plausible*: {RULE}." in text and "- *plausible* n/a: no property model" in text
    from rich.console import Console

    console = Console(width=120, record=True)
    (table,) = funnel_tables(board, "perov_5")
    console.print(table)
    out = console.export_text()
    assert "usability funnel" in out and "plausible" in out and "n/a" in out and "32.0%" in out
    with pytest.raises(ValueError, match="no rows for protocol"):
        funnel_tables(board, protocol="nonsense")


def test_a_board_of_records_without_funnel_says_na() -> None:
    from tests.test_leaderboard import synthetic_records

    board = board_from_records(synthetic_records(), published=False)
    assert "_No record of perov_5 carries the funnel yet" in render_board_markdown(board)
    html = render_html(board)
    assert 'class="note funnel-none"' in html and "svg class=\"plot funnel\"" not in html


def test_html_draws_a_funnel_line_per_row() -> None:
    html = render_html(board_from_records(funnel_records(), published=False))
    assert html.count('<svg class="plot funnel"') == 1 and 'id="funnel-table-perov_5-0"' in html
    assert html.count('<g class="funnel-row"') == 4  # vae, wgan_gp, ddpm, Test (the failed runs have none)
    assert html.count('class="funnel-none"') == 1  # ddpm: a dashed outline, no bars
    # vae: six nested bars, the last one 32% of the 300-pixel axis
    assert 'data-stage="plausible" data-n="32.0"' in html and 'width="96.0"' in html
    assert html.count('data-stage="plausible"') == 2  # wgan_gp's plausible stage is n/a: not drawn


def _record_with(funnel: dict | None, **kw: object) -> ResultRecord:
    record = _record("vae", "vae", 0, _metrics(0.5, 0.8, 0.6, 0.4))
    record.funnel = funnel
    for key, value in kw.items():
        setattr(record, key, value)
    return record
