"""The leaderboard: record schema, aggregation over seeds, published rows, Markdown / HTML / terminal."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench.io_utils import atomic_write_json
from bench.leaderboard import (
    aggregate,
    best_per_column,
    bootstrap_ci,
    build,
    load_valid_records,
    pareto_front,
    published_rows,
    quality,
    record_schema,
    render_markdown,
    show,
    validate_record,
    write_board,
)
from bench.leaderboard.aggregate import Row, summarize
from bench.leaderboard.published import published_meta
from bench.leaderboard.stats import MIN_BOOTSTRAP_SEEDS, mean_ci, t_ci
from bench.records import ResultRecord, provenance, write_record
from tests.conftest import REPO_ROOT

OFFICIAL = {
    "train": "train",
    "eval": "test",
    "val": "val",
    "official": True,
    "label": "official",
    "id": "official",
}
FAILED_REASON = "train: NonFiniteLossError: non-finite loss at step 7"
NA_REASON = "needs property labels that this dataset lacks"


def _metrics(valid: float, unique: float, novel: float, wdist: float) -> dict[str, dict[str, Any]]:
    entry = {"version": "1.0", "description": "test metric"}
    return {
        "valid": {"value": valid, "direction": "max", **entry},
        "unique": {"value": unique, "direction": "max", **entry},
        "novel": {"value": novel, "direction": "max", **entry},
        # stored by the metric suite per structure; here equal to the product only to keep the fixtures simple
        "vun_rate": {"value": round(valid * unique * novel, 6), "direction": "max", **entry},
        "wdist_density": {"value": wdist, "direction": "min", **entry},
    }


def _record(
    model: str, family: str, seed: int, metrics: dict[str, Any], train_s: float | None = 100.0, **kw: Any
) -> ResultRecord:
    cost = {
        "train_seconds": train_s,
        "sample_seconds": None if train_s is None else train_s / 10,
        "samples_per_second": 100.0,
        "parameters": 1000,
    }
    return ResultRecord(
        model=model,
        family=family,
        variant=model,
        dataset="perov_5",
        split_protocol="official",
        split=dict(OFFICIAL),
        seed=seed,
        metrics=metrics,
        cost=cost,
        config_hash=f"{model}{seed}".ljust(8, "0"),
        **kw,
    )


def synthetic_records() -> list[ResultRecord]:
    """Hand-picked values: vae 3 seeds, wgan_gp 2, ddpm 1 + 1 failed, realnvp n/a, one reference."""
    return [
        _record("vae", "vae", 0, _metrics(0.8, 0.9, 0.8, 0.5)),
        _record("vae", "vae", 1, _metrics(0.9, 0.9, 0.8, 0.6)),
        _record("vae", "vae", 2, _metrics(1.0, 0.9, 0.8, 0.7)),
        _record("wgan_gp", "gan", 0, _metrics(0.6, 1.0, 1.0, 0.3), train_s=50.0),
        _record("wgan_gp", "gan", 1, _metrics(0.7, 1.0, 1.0, 0.3), train_s=50.0),
        _record("ddpm", "diffusion", 0, _metrics(0.95, 0.9, 0.9, 0.2), train_s=1000.0),
        _record("ddpm", "diffusion", 1, {}, status="failed", reason=FAILED_REASON),
        _record("realnvp", "flow", 0, {}, status="not_applicable", reason=NA_REASON),
        _record("Test", "reference", 0, _metrics(1.0, 1.0, 1.0, 0.01), train_s=None, kind="reference"),
    ]


def write_synthetic_results(root: Path) -> Path:
    """Write the synthetic records as a results directory; return it."""
    for record in synthetic_records():
        write_record(record, root)
    return root


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    return write_synthetic_results(tmp_path / "results")


def _by_name(rows: list[Row]) -> dict[tuple[str, str], Row]:
    return {(r.name, r.status): r for r in rows}


# --------------------------------------------------------------------------------------------------- schema


def test_schema_accepts_a_real_looking_record(tmp_path: Path) -> None:
    record = _record("vae", "vae", 0, _metrics(0.9, 0.95, math.nan, 0.4))
    record.metrics["novel"].update({"n_valid": 0, "reason": "no valid structures", "seconds": 0.1})
    record.counts = {"n_requested": 100, "n_decoded": 98, "samples_file": "samples.csv"}
    record.cost.update(
        {
            "train_peak_memory_mb": 812.5,
            "gpu_peak_memory_mb": None,
            "sample_device": "cpu",
            "stopped_before_max_steps": False,
        }
    )
    record.provenance = provenance()
    record.metric_settings = {"validity": {"min_distance": 0.5}}
    path = write_record(record, tmp_path)  # NaN is written as null
    data = json.loads(path.read_text())
    assert data["metrics"]["novel"]["value"] is None
    assert validate_record(data) == []
    failed = _record("ddpm", "diffusion", 1, {}, status="failed", reason=FAILED_REASON)
    assert validate_record(failed.to_dict()) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.pop("model"), "'model' is a required property"),
        (lambda d: d.update(status="done"), "status: 'done' is not one of"),
        (lambda d: d.update(status="failed", reason=None), "reason: None is not of type 'string'"),
        (lambda d: d.update(status="not_applicable", reason=""), "reason: '' should be non-empty"),
        (
            lambda d: d["metrics"]["valid"].pop("direction"),
            "metrics.valid: 'direction' is a required property",
        ),
        (
            lambda d: d["metrics"]["valid"].update(direction="up"),
            "metrics.valid.direction: 'up' is not one of",
        ),
        (lambda d: d["metrics"]["valid"].update(value="high"), "metrics.valid.value: 'high' is not of type"),
        (lambda d: d.update(schema_version=2), "schema_version: 1 was expected"),
        (lambda d: d.update(metrcs={}), "'metrcs' was unexpected"),
        (lambda d: d["cost"].update(train_seconds=-1.0), "cost.train_seconds: -1.0 is less than the minimum"),
        (lambda d: d.update(metrics={}), "metrics: {} should be non-empty"),
        (lambda d: d.update(kind="published"), "kind: 'published' is not one of"),
        (lambda d: d.update(seed="0"), "seed: '0' is not of type 'integer'"),
    ],
)
def test_schema_rejects_broken_records_with_a_named_problem(change: Any, named: str) -> None:
    data = _record("vae", "vae", 0, _metrics(0.9, 0.9, 0.9, 0.4)).to_dict()
    change(data)
    problems = validate_record(data)
    assert problems, "the broken record validated"
    assert any(named in p for p in problems), problems


def test_schema_covers_every_record_field_and_is_valid_2020_12() -> None:
    from jsonschema import Draft202012Validator

    schema = record_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # a new ResultRecord field must be added to the schema, or every new record would be excluded as invalid
    assert set(schema["properties"]) == set(ResultRecord.__dataclass_fields__)
    assert (
        schema["properties"]["schema_version"]["const"]
        == ResultRecord.__dataclass_fields__["schema_version"].default
    )


def test_repository_copies_match_the_packaged_ones() -> None:
    package = REPO_ROOT / "bench" / "leaderboard"
    pairs = [(package / "record.schema.json", REPO_ROOT / "leaderboard" / "record.schema.json")]
    pairs += [
        (package / "data" / name, REPO_ROOT / "leaderboard" / "published" / name)
        for name in ("cdvae_2022.csv", "cdvae_2022.json")
    ]
    for canonical, copy in pairs:
        assert copy.read_bytes() == canonical.read_bytes(), f"{copy} differs: copy {canonical} over it"


def test_invalid_records_are_excluded_and_reported(
    results: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _record("bad", "vae", 0, _metrics(0.5, 0.5, 0.5, 0.5)).to_dict()
    bad["status"] = "done"
    atomic_write_json(results / "perov_5" / "bad.json", bad)
    (results / "perov_5" / "truncated.json").write_text('{"model": ')
    kept, excluded = load_valid_records(results)
    assert len(kept) == len(synthetic_records())
    assert {e.path for e in excluded} == {"perov_5/bad.json", "perov_5/truncated.json"}
    assert any("status" in p for e in excluded for p in e.problems)
    assert "bad.json" in caplog.text and "truncated.json" in caplog.text
    paths = build(results, tmp_path / "board")
    for path in paths.values():
        text = path.read_text()
        assert "Records left out" in text and "perov_5/bad.json" in text
        assert str(tmp_path) not in text, "the board must not show machine paths"


# ------------------------------------------------------------------------------------------------ aggregation


def test_mean_std_and_bootstrap_ci_over_seeds() -> None:
    rows = _by_name(aggregate(synthetic_records()))
    vae = rows[("vae", "complete")]
    valid = vae.metrics["valid"]
    assert vae.seeds == (0, 1, 2) and valid.n == 3
    assert valid.mean == pytest.approx(0.9) and valid.std == pytest.approx(0.1)
    # 3 seeds: Student-t, 0.9 ± t(0.975, 2) · 0.1 / √3 with t(0.975, 2) = 4.302653 (printed t tables)
    assert valid.ci_method == "t"
    # = (0.652, 1.148), cut at 1: a fraction's interval never reaches past its range
    assert valid.ci == pytest.approx((0.9 - 4.302653 * 0.1 / 3**0.5, 1.0), abs=1e-6)
    again = _by_name(aggregate(synthetic_records()))[("vae", "complete")].metrics["valid"].ci
    assert again == valid.ci, "the CI must be reproducible"
    assert vae.cost["train_seconds"] == pytest.approx(100.0) and vae.cost["parameters"] == 1000
    single = rows[("ddpm", "complete")].metrics["valid"]
    assert single.n == 1 and single.std is None and single.ci is None


def test_vun_rate_is_read_from_the_records_never_multiplied() -> None:
    stored = _metrics(0.9, 0.8, 0.5, 0.1)
    stored["vun_rate"]["value"] = 0.42  # per structure: not valid x unique x novel = 0.36
    (row,) = aggregate([_record("m", "f", 0, stored)])
    assert row.metrics["vun_rate"].mean == 0.42
    without = _metrics(0.9, 0.8, 0.5, 0.1)
    del without["vun_rate"]
    (row,) = aggregate([_record("m", "f", 0, without)])
    assert "vun_rate" not in row.metrics  # an old record without the metric gets no derived value


def test_small_seed_counts_use_a_t_interval_not_the_bootstrap() -> None:
    three = [0.61, 0.74, 0.69]
    # the percentile bootstrap of 3 values is exactly their range: it says nothing about the mean
    assert bootstrap_ci(three) == pytest.approx((min(three), max(three)))
    ci, method = mean_ci(three)
    assert method == "t" and ci == t_ci(three)
    mean, sd = sum(three) / 3, 0.065574385  # sample sd of the three values, by hand
    assert ci == pytest.approx((mean - 4.302653 * sd / 3**0.5, mean + 4.302653 * sd / 3**0.5), abs=1e-6)
    assert ci[0] < min(three) and ci[1] > max(three)  # wider than the range with 3 seeds
    many = [0.5 + 0.01 * i for i in range(MIN_BOOTSTRAP_SEEDS)]
    assert mean_ci(many)[1] == "bootstrap" and mean_ci(many[:-1])[1] == "t"
    assert mean_ci([0.5]) == (None, None)


def test_intervals_are_cut_at_the_metric_s_range_only() -> None:
    from bench.leaderboard.stats import clip_to_range

    assert clip_to_range((0.917, 1.002), "valid") == (0.917, 1.0)
    assert clip_to_range((-0.006, 0.061), "cov_precision") == (0.0, 0.061)
    assert clip_to_range((-0.127, 2.122), "wdist_density") == (0.0, 2.122)  # a distance: no upper end
    assert clip_to_range((0.899, 1.050), "jsd_spacegroup") == (0.899, 1.0)  # base-2 JS distance: at most 1
    assert clip_to_range((-3.0, 5.0), "train_seconds") == (-3.0, 5.0)  # not a listed metric: unchanged
    assert clip_to_range((1.2, 1.5), "valid") == (1.0, 1.0) and clip_to_range(None, "valid") is None


def test_bootstrap_ci_is_deterministic_and_undefined_for_one_value() -> None:
    values = [0.61, 0.74, 0.69, 0.80, 0.72]
    ci = bootstrap_ci(values, seed=7)
    assert ci == bootstrap_ci(values, seed=7)
    assert min(values) <= ci[0] < sum(values) / len(values) < ci[1] <= max(values)
    assert bootstrap_ci([0.5]) is None and bootstrap_ci([]) is None
    assert bootstrap_ci([0.5, math.nan]) is None  # non-finite values do not count as seeds
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    summary = summarize("valid", "max", [0.5, None, math.nan])
    assert summary.n == 1 and summary.mean == 0.5 and summary.ci is None


def test_failed_and_not_applicable_runs_stay_as_rows_with_reason(results: Path) -> None:
    rows = _by_name(aggregate(synthetic_records()))
    failed = rows[("ddpm", "failed")]
    assert failed.reason == f"seed 1: {FAILED_REASON}" and failed.metrics == {}
    assert rows[("realnvp", "not_applicable")].reason == f"seed 0: {NA_REASON}"
    assert rows[("ddpm", "complete")].seeds == (0,)  # the failed seed does not count
    text = render_markdown(synthetic_records())
    assert FAILED_REASON in text and NA_REASON in text and "**not applicable**" in text
    html = (build(results, results.parent / "board")["html"]).read_text()
    assert "non-finite loss at step 7" in html and "status-not_applicable" in html


def test_a_newer_record_of_the_same_seed_supersedes_the_older(tmp_path: Path) -> None:
    old = _record("ddpm", "diffusion", 1, {}, status="failed", reason=FAILED_REASON)
    old.created = "2024-01-01T00:00:00+00:00"
    new = _record("ddpm", "diffusion", 1, _metrics(0.9, 0.9, 0.9, 0.3))
    new.created, new.config_hash = "2024-02-01T00:00:00+00:00", "otherhash"
    rows = aggregate([old, new])
    assert [(r.status, r.seeds) for r in rows] == [("complete", (1,))]
    write_record(old, tmp_path)
    write_record(new, tmp_path)
    text = write_board(tmp_path, tmp_path / "README.md").read_text()
    assert "superseded" in text and "2 records" not in text


def test_published_rows_present_marked_and_directed() -> None:
    rows = published_rows()
    assert len(rows) == 13 and {r.kind for r in rows} == {"published"}
    cdvae = next(r for r in rows if r.model == "CDVAE" and r.dataset == "perov_5")
    assert cdvae.metrics["struct_valid"].mean == 1.0 and cdvae.metrics["wdist_prop"].mean == pytest.approx(
        0.0264
    )
    assert (
        cdvae.metrics["cov_recall"].direction == "max" and cdvae.metrics["wdist_density"].direction == "min"
    )
    carbon = next(r for r in rows if r.model == "CDVAE" and r.dataset == "carbon_24")
    assert "comp_valid" not in carbon.metrics  # blank in the paper: left out, not zero
    meta = published_meta()
    assert "Xie" in meta["citation"] and "10,000" in meta["protocol"]
    text = render_markdown(synthetic_records())
    for dataset in ("perov_5", "carbon_24", "mp_20"):
        assert f"### {dataset}: reported, not re-run" in text
    published_part = text.split("### perov_5: reported, not re-run")[1].split("##")[0]
    assert "**" not in published_part, "published numbers are never marked best"
    assert "Xie et al. 2022" in published_part


def test_published_directions_agree_with_the_metric_suite() -> None:
    """Where a published column has the name of one of our metrics, both say the same about better."""
    metrics = pytest.importorskip(
        "bench.metrics", reason="the metric suite does not import (see its own tests)"
    )
    shared = {name: info for name, info in published_meta()["metrics"].items() if name in metrics.REGISTRY}
    assert shared, "no published column matches a metric of the suite"
    for name, info in shared.items():
        assert metrics.REGISTRY[name].direction == info["direction"], name


# ------------------------------------------------------------------------------------------- best and Pareto


def _row(
    name: str,
    value: float,
    direction: str,
    kind: str = "run",
    protocol: str = "official",
    status: str = "complete",
    spread: float = 0.01,
) -> Row:
    """A row whose metric ``m`` has three seeds: value - spread, value, value + spread."""
    summary = summarize("m", direction, (value - spread, value, value + spread))
    return Row(
        dataset="d",
        protocol_id=protocol,
        protocol=protocol,
        official=True,
        model=name,
        family="f",
        variant=name,
        kind=kind,
        status=status,
        metrics={"m": summary},
    )


def test_best_per_column_respects_direction_kind_and_protocol() -> None:
    values = [0.2, 0.5, 0.3]
    rows = [_row(f"r{i}", v, "max") for i, v in enumerate(values)] + [
        _row("ref", 0.9, "max", kind="reference")
    ]
    assert best_per_column(rows, ["m"]) == {"m": {1}}
    rows = [_row(f"r{i}", v, "min") for i, v in enumerate(values)] + [
        _row("ref", 0.0, "min", kind="reference")
    ]
    assert best_per_column(rows, ["m"]) == {"m": {0}}
    ties = [_row("a", 0.5001, "max"), _row("b", 0.5004, "max"), _row("c", 0.1, "max")]
    assert best_per_column(ties, ["m"]) == {"m": set()}  # equal at display precision: a tie, never bold
    close = [_row("a", 1.0, "max", spread=0.0), _row("b", 0.998, "max", spread=0.0)]
    assert best_per_column(close, ["m"]) == {"m": set()}  # 2 units of the last digit: never bold, even p=0
    noisy = [_row("a", 0.55, "max", spread=0.1), _row("b", 0.5, "max", spread=0.1)]
    assert best_per_column(noisy, ["m"]) == {"m": set()}  # Welch p = 0.58: not separated
    split = [
        _row("a", 0.9, "max"),
        _row("b", 0.1, "max"),
        _row("c", 0.2, "max", protocol="other"),
        _row("d", 0.3, "max", protocol="other"),
    ]
    assert best_per_column(split, ["m"]) == {"m": {0, 3}}
    assert best_per_column([_row("alone", 0.5, "max")], ["m"]) == {"m": set()}
    rows = _by_name(aggregate(synthetic_records()))
    ordered = list(rows.values())
    best = best_per_column(ordered)
    assert best["valid"] == set()  # ddpm leads with one seed: no t-test, no claim
    assert best["wdist_density"] == set()  # not the reference's 0.01 either


def test_best_marking_in_markdown(tmp_path: Path) -> None:
    records = [
        *(_record("ddpm", "diffusion", s,
                   _metrics(1.0, 0.9, 0.9, w)) for s, w in enumerate((0.19, 0.2, 0.21))),
        *(_record("vae", "vae", s, _metrics(0.998, 0.9, 0.9, w)) for s, w in enumerate((0.48, 0.5, 0.52))),
        _record("Test", "reference", 0, _metrics(1.0, 1.0, 1.0, 0.01), train_s=None, kind="reference"),
    ]
    for record in records:
        write_record(record, tmp_path / "results")
    text = write_board(tmp_path / "results", tmp_path / "README.md").read_text()
    ddpm = next(line for line in text.splitlines() if line.startswith("| ddpm |"))
    vae = next(line for line in text.splitlines() if line.startswith("| vae |"))
    assert "**0.200 ± 0.010**" in ddpm  # wdist_density (min): Welch p < 0.001, 300 units apart
    assert "**1.000" not in ddpm and "**" not in vae  # valid 1.000 vs 0.998: never bold; unique: a tie
    test_row = next(line for line in text.splitlines() if "(reference)" in line)
    assert "**" not in test_row


def test_pareto_front_on_known_points() -> None:
    points = [(1, 0.5), (2, 0.4), (3, 0.7), (3, 0.6), (10, 0.7), (20, 0.9), (0.5, 0.1), (3, 0.7)]
    assert pareto_front(points) == [6, 0, 2, 5]
    assert pareto_front([]) == []
    rows = _by_name(aggregate(synthetic_records()))
    runs = [r for r in rows.values() if r.is_rerun]
    front = pareto_front([(r.cost["train_seconds"] + r.cost["sample_seconds"], quality(r)) for r in runs])
    # vae costs more than wgan_gp for less quality
    assert [runs[i].name for i in front] == ["wgan_gp", "ddpm"]


# ------------------------------------------------------------------------------------------------- outputs


def test_html_has_tables_plots_and_loads_nothing_from_the_network(results: Path, tmp_path: Path) -> None:
    paths = build(results, tmp_path / "board")
    assert set(paths) == {"markdown", "html"} and all(p.exists() for p in paths.values())
    html = paths["html"].read_text()
    assert html == (build(results, tmp_path / "again")["html"]).read_text(), "the page must be deterministic"
    assert '<table class="board sortable" id="table-perov_5">' in html
    assert html.count('<tr class="kind-run status-complete"') == 3
    assert '<svg class="plot scatter"' in html and 'class="pareto"' in html
    assert html.count('<svg class="plot bars"') == 5  # valid, unique, novel, vun_rate, wdist_density
    assert 'id="published-mp_20"' in html and "reported, not re-run" in html
    assert 'class="family-filter" value="gan"' in html
    for pattern in (r"<script[^>]+src", r"<link\b", r"<img\b", r"<iframe\b", r"url\(", r"@import"):
        assert not re.search(pattern, html, re.IGNORECASE), pattern
    for match in re.finditer(r"https?://", html):  # only plain links to papers, never a loaded resource
        before = html[max(0, match.start() - 9) : match.start()]
        assert before == '<a href="', html[match.start() - 60 : match.end() + 40]


def test_markdown_board_layout(results: Path) -> None:
    text = write_board(results, results.parent / "README.md").read_text()
    assert text.index("## perov_5") < text.index("## carbon_24") < text.index("## mp_20")
    assert "valid ↑" in text and "wdist_density ↓" in text and "vun_rate ↑" in text
    assert "0.900 ± 0.100<br><sub>[" in text  # mean ± std and the CI
    assert "CI n/a (1 seed)" in text
    assert "| params | train s | samples/s | status |" in text
    assert "*Test* (reference)" in text
    assert "No result records" in render_markdown([])


def test_show_sorts_by_metric_direction(results: Path) -> None:
    console = Console(record=True, width=250)
    (table, published) = show(results, dataset="perov_5", sort="wdist_density", console=console)
    names = [str(c) for c in table.columns[0]._cells]
    assert names[:3] == ["ddpm", "wgan_gp", "vae"]  # lower is better; the reference ranks after the runs
    assert names[3].startswith("Test") and {n.split()[0] for n in names[4:]} == {"ddpm", "realnvp"}
    (table, _) = show(results, dataset="perov_5", sort="valid", console=console)
    assert [str(c) for c in table.columns[0]._cells][:3] == ["ddpm", "vae", "wgan_gp"]
    (table, _) = show(results, dataset="perov_5", sort="train_seconds", console=console)
    assert [str(c) for c in table.columns[0]._cells][:3] == ["wgan_gp", "vae", "ddpm"]
    out = console.export_text()
    assert "sorted by valid ↑" in out and FAILED_REASON in out and "reported, not re-run" in out
    with pytest.raises(ValueError, match=r"unknown sort key 'nope'; valid keys: \[.*'valid'"):
        show(results, sort="nope", console=console)
    with pytest.raises(ValueError, match="datasets on the board"):
        show(results, dataset="no_such_set", console=console)
    narrow = Console(record=True, width=90)
    show(results, dataset="perov_5", metrics=["valid"], console=narrow)
    assert "cov_recall" not in narrow.export_text()


def test_board_never_imports_torch(results: Path, tmp_path: Path) -> None:
    code = (
        "import io, sys; from bench.leaderboard import build, show; from rich.console import Console;"
        f"build({str(results)!r}, {str(tmp_path / 'b')!r});"
        f"show({str(results)!r}, console=Console(file=io.StringIO()));"
        "heavy = ('torch', 'lightning', 'pytorch_lightning', 'hydra', 'pymatgen');"
        "bad = [m for m in heavy if m in sys.modules];"
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_board_builds_from_an_installed_wheel(results: Path, tmp_path: Path) -> None:
    """Schema and published tables are package data: a regular install builds the same board."""
    import zipfile

    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path / "wheel"),
        str(REPO_ROOT),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("matgenbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "bench/leaderboard/record.schema.json",
        "bench/leaderboard/data/cdvae_2022.csv",
        "bench/leaderboard/data/cdvae_2022.json",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import bench.leaderboard as lb, sys;"
        "assert 'site' in lb.__file__, lb.__file__;"
        f"paths = lb.build({str(results)!r}, {str(tmp_path / 'board')!r});"
        "print(paths['markdown'].read_text().count('reported, not re-run'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 3
