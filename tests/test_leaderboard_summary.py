"""Findings computed from the board: leaders, whether a lead holds by Welch's t-test, costs; analysis.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import t as student_t

from bench.leaderboard import build
from bench.leaderboard.aggregate import aggregate
from bench.leaderboard.html import markdown_block
from bench.leaderboard.stats import compare, welch_p
from bench.leaderboard.summary import cost_lines, findings, summary_markdown
from bench.records import ResultRecord, write_record


def _record(model: str, seed: int, valid: float, wdist: float, kind: str = "run") -> ResultRecord:
    return ResultRecord(
        model=model, family=model, variant=model, dataset="perov_5", split_protocol="train=val,eval=test",
        split={"id": "train-val_eval-test_n100", "train": "val", "official": False, "num_samples": 100},
        seed=seed, kind=kind, config_hash=f"{model}{seed}",
        data_checksums={"val": {"sha256": "a" * 64}},
        metrics={"valid": {"value": valid, "direction": "max", "description": "valid"},
                 "wdist_density": {"value": wdist, "direction": "min", "description": "W1"}},
        cost={"train_seconds": 10.0 * (1 + seed), "train_steps": 2000, "samples_per_second": 500.0,
              "parameters": 1000},
    )


def _rows():
    records = [
        *(_record("ddpm", s, v, w) for s, v, w in ((0, 0.90, 0.30), (1, 0.91, 0.10), (2, 0.92, 0.50))),
        *(_record("vae", s, v, w) for s, v, w in ((0, 0.50, 0.31), (1, 0.52, 0.12), (2, 0.51, 0.49))),
        _record("test", 0, 0.99, 0.0, kind="reference"),  # references never compete
    ]
    return records, aggregate(records)


def test_leaders_and_separation() -> None:
    _, rows = _rows()
    by_metric = {f.metric: f for f in findings(rows)}
    valid = by_metric["valid"]
    assert (valid.leader, valid.runner_up) == ("ddpm", "vae")  # the test reference (0.99) does not compete
    assert valid.holds and valid.comparison.p < 0.001
    assert "p < 0.001: ddpm leads" in valid.sentence()
    wdist = by_metric["wdist_density"]
    assert wdist.direction == "min" and wdist.leader == "ddpm"  # 0.300 vs 0.307
    assert wdist.comparison.verdict == "not_separated" and not wdist.holds
    assert "p = 0.97: not separated, no leader" in wdist.sentence() and "3 seeds" in wdist.sentence()


def test_welch_p_against_the_formula() -> None:
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.5]
    # Welch by hand: t = (mean_b - mean_a) / sqrt(s_a²/3 + s_b²/3), Welch–Satterthwaite df, two-sided p
    va, vb = 1.0, 19 / 12  # sample variances, by hand
    se2 = va / 3 + vb / 3
    t = (sum(b) / 3 - sum(a) / 3) / se2**0.5
    df = se2**2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    assert welch_p(a, b) == pytest.approx(2 * student_t.sf(t, df), rel=1e-6)
    assert welch_p([1.0], b) is None  # one seed: no test
    assert welch_p([1.0, 1.0], [1.0, 1.0]) is None and welch_p([1.0, 1.0], [0.5, 0.5]) == 0.0
    # a lead by interval overlap is not a lead: [0.4, 0.5, 0.6] vs [0.1, 0.45, 0.8] have overlapping ranges
    # and p = 0.83: no leader
    assert compare([0.4, 0.5, 0.6], [0.1, 0.45, 0.8]).verdict == "not_separated"
    assert compare([1.0, 1.0, 1.0], [0.998, 0.998, 0.998]).verdict == "too_close"
    assert compare([0.5, 0.5], [0.5004, 0.4999]).verdict == "tied"


def test_one_seed_makes_no_claim_and_one_row_makes_no_finding() -> None:
    rows = aggregate([_record("ddpm", 0, 0.9, 0.3), _record("vae", 0, 0.5, 0.3)])
    [valid] = [f for f in findings(rows) if f.metric == "valid"]
    assert valid.comparison.verdict == "undefined" and "no t-test (one seed): no claim" in valid.sentence()
    assert findings(aggregate([_record("ddpm", 0, 0.9, 0.3)])) == []


def test_equal_leaders_are_a_tie_not_a_lead() -> None:
    records = [_record(m, s, 0.9, 0.0) for m in ("ddpm", "vae", "gan") for s in range(3)]
    records += [_record("flow", s, 0.5, 0.2) for s in range(3)]
    by_metric = {f.metric: f for f in findings(aggregate(records))}
    tie = by_metric["wdist_density"]
    assert set(tie.tied) == {"ddpm", "vae", "gan"} and "flow" not in tie.tied
    assert "tied at 0.000: no leader" in tie.sentence() and "leads" not in tie.sentence()
    valid = by_metric["valid"]
    assert len(valid.tied) == 3 and "no leader" in valid.sentence()


def test_cost_lines_and_markdown() -> None:
    _, rows = _rows()
    lines = cost_lines(rows)
    assert lines[0].startswith("ddpm: trains in 20 s (2,000 steps), samples 500 crystals/s")
    text = "\n".join(summary_markdown(rows, "perov_5"))
    assert "**valid** ↑" in text and "Cost" in text


def test_build_places_the_analysis_and_findings(tmp_path: Path) -> None:
    records, _ = _rows()
    for record in records:
        write_record(record, tmp_path / "results")
    (tmp_path / "board").mkdir()
    analysis = "DDPM leads on **validity**; see `valid`.\n\n- one point\n"
    (tmp_path / "board" / "analysis.md").write_text(analysis)
    paths = build(tmp_path / "results", tmp_path / "board")
    md = paths["markdown"].read_text()
    assert md.index("## Analysis") < md.index("## perov_5") < md.index("### perov_5: findings")
    assert "DDPM leads on **validity**" in md
    html = paths["html"].read_text()
    assert "<b>validity</b>" in html and "<code>valid</code>" in html and '<div class="findings">' in html


def test_markdown_block_subset() -> None:
    html = markdown_block("### Head\n\npara one\nstill one\n\n- a **b**\n  continued\n- [x](https://e.org)\n\nend")
    assert html == ('<h4>Head</h4><p>para one still one</p><ul><li>a <b>b</b> continued</li>'
                    '<li><a href="https://e.org">x</a></li></ul><p>end</p>')


def test_markdown_block_nested_bullets() -> None:
    html = markdown_block("- top\n  - inner one\n    wrapped\n  - inner two\n- next\n\nafter")
    assert html == ("<ul><li>top<ul><li>inner one wrapped</li><li>inner two</li></ul></li><li>next</li></ul>"
                    "<p>after</p>")
