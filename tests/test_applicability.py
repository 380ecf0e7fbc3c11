"""Metrics that do not apply to the reference data are "n/a" with the reason: never a 0.000 tie nor a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pymatgen.core import Lattice, Structure
from rich.console import Console

from bench.applicability import COMPOSITION_METRICS, not_applicable_reason, record_not_applicable
from bench.leaderboard import board_from_records, render_board_markdown, render_html, validate_record
from bench.leaderboard.summary import findings
from bench.leaderboard.terminal import board_tables
from bench.metrics import ReferenceSet, run_metrics
from bench.records import ResultRecord, write_record

OFFLINE = {"train": "val", "eval": "test", "official": False, "label": "offline", "id": "offline"}


def _entries(wdist_density: float) -> dict[str, dict[str, Any]]:
    # what the committed Carbon-24 records hold: composition metrics stored as 0.0, no status
    return {
        "valid": {"value": 0.7, "direction": "max", "version": "1.1"},
        "wdist_density": {"value": wdist_density, "direction": "min", "version": "1.0"},
        "wdist_num_elems": {"value": 0.0, "direction": "min", "version": "1.0"},
        "jsd_elements": {"value": 0.0, "direction": "min", "version": "1.0"},
        "comp_div": {"value": 0.0, "direction": "max", "version": "1.0"},
    }


def _records(dataset: str) -> list[ResultRecord]:
    out = []
    for model, base in (("vae", 0.2), ("ddpm", 0.5)):
        for seed in range(3):
            out.append(ResultRecord(
                model=model, family=model, variant=model, dataset=dataset, split_protocol="offline",
                split=dict(OFFLINE), seed=seed, metrics=_entries(base + 0.01 * seed),
                config_hash=f"{model}{seed}".ljust(8, "0"),
            ))
    return out


def test_the_rule_on_known_element_sets() -> None:
    assert COMPOSITION_METRICS >= {
        "wdist_num_elems", "jsd_elements", "amcd_recall", "amcd_precision", "comp_div"
    }
    assert "cov_recall" not in COMPOSITION_METRICS  # reduces to its structure side, still meaningful
    assert not_applicable_reason("wdist_num_elems", ["C"]) == (
        "composition metric; the reference data have one element (C)"
    )
    assert not_applicable_reason("wdist_num_elems", ["C", "C"]) is not None  # distinct elements count
    assert not_applicable_reason("wdist_num_elems", ["C", "N"]) is None
    assert not_applicable_reason("wdist_density", ["C"]) is None  # not a composition metric
    assert not_applicable_reason("jsd_elements", None) is None  # unknown elements: applies
    # stored records: the entry's status wins, then its element count, then the dataset registry
    stored = {"value": None, "direction": "min", "status": "not_applicable", "reason": "because"}
    assert record_not_applicable("wdist_num_elems", stored, "perov_5") == "because"
    assert record_not_applicable("wdist_num_elems", {"value": 0.0}, "carbon_24") is not None
    assert record_not_applicable("wdist_num_elems", {"value": 0.0}, "perov_5") is None
    counted = {"value": 0.0, "n_reference_elements": 3}
    assert record_not_applicable("wdist_num_elems", counted, "carbon_24") is None
    assert record_not_applicable("wdist_density", {"value": 0.0}, "carbon_24") is None


def test_old_single_element_records_are_na_not_a_tie() -> None:
    board = board_from_records(_records("carbon_24"), published=False)
    rows = board.own_rows("carbon_24")
    for row in rows:
        for name in ("wdist_num_elems", "jsd_elements", "comp_div"):
            summary = row.metrics[name]
            assert summary.mean is None and summary.values == ()
            assert "one element (C)" in (summary.not_applicable or "")
        density = row.metrics["wdist_density"]
        assert density.mean is not None and not density.not_applicable
    found = {f.metric: f for f in findings(rows)}
    assert "wdist_num_elems" not in found and "wdist_density" in found
    text = render_board_markdown(board)
    assert "tied at 0.000" not in text
    assert "n/a<br><sub>composition metric; the reference data have one element (C)</sub>" in text
    assert "**wdist_num_elems**: n/a (composition metric; the reference data have one element (C))" in text
    html = render_html(board)
    assert 'class="na"' in html and "Not plotted, n/a" in html
    assert "<title>wdist_num_elems" not in html and ">wdist_num_elems ↓</text>" not in html  # no flat panel
    console = Console(record=True, width=200)
    for table in board_tables(board, "carbon_24"):
        console.print(table)
    out = console.export_text()
    assert " n/a " in out and "composition metric; the reference data have one element (C)" in out


def test_the_same_values_on_a_multi_element_dataset_are_numbers() -> None:
    board = board_from_records(_records("perov_5"), published=False)
    row = board.own_rows("perov_5")[0]
    summary = row.metrics["wdist_num_elems"]
    assert summary.mean == 0.0 and summary.not_applicable is None
    assert "wdist_num_elems" in {f.metric for f in findings(board.own_rows("perov_5"))}


def _carbon(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["C", "C"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_the_metric_suite_stores_not_applicable_from_the_reference(tmp_path: Path) -> None:
    names = ["struct_valid", "wdist_density", "wdist_num_elems", "jsd_elements"]
    carbon = ReferenceSet("carbon", [_carbon(2.5), _carbon(2.6)], [_carbon(2.55), _carbon(2.7)])
    report = run_metrics([_carbon(2.5), _carbon(2.8)], carbon, cfg={"names": names}, progress=False)
    entry = report.metrics["wdist_num_elems"]
    assert entry["status"] == "not_applicable" and entry["n_reference_elements"] == 1
    assert entry["reason"] == "composition metric; the reference data have one element (C)"
    assert report.metrics["jsd_elements"]["status"] == "not_applicable"
    assert "status" not in report.metrics["wdist_density"]
    record = ResultRecord(
        model="m", family="f", variant="m", dataset="my_carbon", split_protocol="offline",
        split=dict(OFFLINE), seed=0, metrics=report.metrics, config_hash="abcdef12",
    )
    data = json.loads(write_record(record, tmp_path).read_text())
    assert data["metrics"]["wdist_num_elems"]["value"] is None and validate_record(data) == []
    # a dataset the registry does not know: the stored status alone decides on the board
    summary = board_from_records([record], published=False).own_rows("my_carbon")[0].metrics["jsd_elements"]
    assert summary.not_applicable == entry["reason"]

    cn = Structure(Lattice.cubic(3.0), ["C", "N"], [[0] * 3, [0.5] * 3])
    mixed = ReferenceSet("cn", [_carbon(2.5)], [cn])
    report = run_metrics([_carbon(2.5)], mixed, cfg={"names": names}, progress=False)
    entry = report.metrics["wdist_num_elems"]
    assert "status" not in entry and entry["n_reference_elements"] == 2 and entry["value"] == 1.0
