"""The HTML board's first screen and its charts, on coordinates: label placement keeps every label whole,
apart and inside its plot; the primary protocol and the headline table are what a reader should see first."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from bench.leaderboard import build
from bench.leaderboard.aggregate import MetricSummary, Row
from bench.leaderboard.headline import protocol_order
from bench.leaderboard.placement import (
    Box,
    leader,
    needed_height,
    place_line_labels,
    place_point_labels,
    stack_labels,
    text_height,
    text_width,
)
from bench.leaderboard.svg import Bar, Point, bars_svg, log_ticks, nice_ticks, scatter_svg
from bench.records import ResultRecord, write_record

BOUNDS = Box(50, 30, 650, 330)


def _no_overlaps(boxes: list[Box]) -> None:
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"labels {i} and {j} overlap: {a} {b}"


def test_a_lone_label_sits_beside_its_point() -> None:
    (placed,) = place_point_labels([(200.0, 100.0)], [80.0], BOUNDS, gap=8)
    assert placed.anchor == "start" and not placed.nudged
    assert placed.box.x0 == 208.0 and placed.box.x1 == 288.0
    assert (placed.box.y0 + placed.box.y1) / 2 == pytest.approx(100.0)
    assert placed.box.y1 - placed.box.y0 == pytest.approx(text_height(11))


def test_a_label_near_the_right_edge_goes_left() -> None:
    (placed,) = place_point_labels([(620.0, 100.0)], [120.0], BOUNDS, gap=8)
    assert placed.anchor == "end" and placed.box.x1 == 612.0 and placed.box.inside(BOUNDS)


def test_labels_of_a_tight_cluster_are_apart_inside_and_tied_by_leaders() -> None:
    # eight models at nearly the same cost and quality, long labels: the committed board's worst case
    points = [(400.0 + (i % 2), 120.0 + 3 * i) for i in range(8)]
    widths = [text_width(f"model-{i}-with-a-long+sampler-name", 11) for i in range(8)]
    bounds = Box(BOUNDS.x0, BOUNDS.y0, BOUNDS.x1, BOUNDS.y0 + needed_height(8))
    placed = place_point_labels(points, widths, bounds)
    _no_overlaps([p.box for p in placed])
    assert all(p.box.inside(bounds) for p in placed)
    markers = [Box(x - 5.5, y - 5.5, x + 5.5, y + 5.5) for x, y in points]
    for i, p in enumerate(placed):
        assert p.box.x1 - p.box.x0 == pytest.approx(widths[i])  # never cut short
        assert not any(p.box.overlaps(m) for k, m in enumerate(markers) if k != i)
        if p.nudged:  # a moved label has a leader from its own marker to its near side
            x1, y1, x2, y2 = leader(points[i], p)
            assert abs(x1 - points[i][0]) <= 5.5 + 1e-9 and abs(y1 - points[i][1]) <= 5.5 + 1e-9
            assert x2 == pytest.approx(p.box.x0 - 1 if p.anchor == "start" else p.box.x1 + 1)
    assert sum(p.nudged for p in placed) >= 6  # at most one per side can stay at its point's height


def test_labels_never_overlap_even_when_everything_is_in_one_spot() -> None:
    points = [(300.0, 200.0)] * 12
    bounds = Box(0, 0, 600, needed_height(12))
    placed = place_point_labels(points, [150.0] * 12, bounds)
    _no_overlaps([p.box for p in placed])
    assert all(p.box.inside(bounds) for p in placed)


def test_reference_labels_stack_in_rows_when_close() -> None:
    # Test and Copy nearly equal (the usual case), Random far away
    out = stack_labels([400.0, 402.0, 100.0], [30.0, 32.0, 46.0], 0.0, 500.0)
    (x_test, row_test), (x_copy, row_copy), (x_random, row_random) = out
    assert row_random == 0 and {row_test, row_copy} == {0, 1}
    assert x_random == pytest.approx(100 - 23)
    edge = stack_labels([495.0], [40.0], 0.0, 500.0)  # pushed inside instead of cut at the edge
    assert edge == [(460.0, 0)]


def test_text_width_grows_with_the_text_and_bold() -> None:
    assert text_width("diffcsp-wrapped-mpnn+predictorcorrector-100", 11) > text_width("vae-gaussian", 11) > 0
    assert text_width("vae", 11, bold=True) > text_width("vae", 11)
    # DejaVu Sans, the widest usual fallback font: "m" is about one em, "i" about a quarter
    assert text_width("m" * 10, 10) == pytest.approx(99.0, abs=2)
    assert text_width("i" * 10, 10) == pytest.approx(29.0, abs=2)


def test_ticks_are_round_numbers() -> None:
    assert nice_ticks(0.0, 0.7484) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert nice_ticks(-0.13, 2.1) == [-1.0, 0.0, 1.0, 2.0, 3.0]
    assert log_ticks(2.5, 3.1) == [400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0]
    assert log_ticks(0, 6) == [10.0**k for k in range(7)]


def _attrs(tag: str) -> dict[str, str]:
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def test_scatter_labels_every_point_inside_its_plot() -> None:
    names = ["flowmm-torus-mpnn+euler-50-anti_annealing.frac_coords10", "diffcsp-wrapped-mpnn",
             "diffcsp-wrapped-mpnn+predictorcorrector-100", "flowmm-torus-mpnn", "vae-gaussian",
             "ddpm-eps-cosine"]
    xy = [(760, 0.847), (1070, 0.816), (760, 0.823), (760, 0.772), (350, 0.814), (372, 0.562)]
    points = [Point(n, "flow", x, y) for n, (x, y) in zip(names, xy, strict=True)]
    svg = scatter_svg(points, {"flow": "#c7a"}, title="t", x_label="x", y_label="y")
    width = float(_attrs(re.search(r"<svg [^>]*>", svg).group(0))["width"])
    frame_tag = re.search(r'<rect x="\d+" y="\d+" width="\d+" height="\d+" fill="none"[^>]*>', svg)
    frame = _attrs(frame_tag.group(0))
    x0, w = float(frame["x"]), float(frame["width"])
    labels = re.findall(r'<text class="point-label"[^>]*>([^<]*)</text>', svg)
    assert labels == names  # every point, whole
    for tag, name in zip(re.findall(r'<text class="point-label"[^>]*>', svg), names, strict=True):
        a = _attrs(tag)
        x = float(a["x"])
        bold = a.get("font-weight") == "600"
        left, right = (x, x + text_width(name, 11, bold=bold)) if a["text-anchor"] == "start" else (
            x - text_width(name, 11, bold=bold), x)
        assert x0 <= left and right <= x0 + w <= width, name


def test_bar_plot_keeps_long_labels_whole() -> None:
    long = "flowmm-torus-mpnn+euler-50-anti_annealing.frac_coords10"
    svg = bars_svg("valid", "max", [Bar(long, "flow", 0.9, 0.85, 1.02), Bar("vae", "vae", 0.5)], {},
                   refs=[("Test", 0.986), ("Copy", 0.987), ("Random", 0.3)])
    assert f">{long}</text>" in svg and "…" not in svg
    width = float(_attrs(re.search(r"<svg [^>]*>", svg).group(0))["width"])
    label_x = float(_attrs(re.search(r'<text class="bar-label"[^>]*>', svg).group(0))["x"])
    assert label_x - text_width(long, 11) >= 0 and width > label_x
    rows = [float(_attrs(t)["y"]) for t in re.findall(r'<text class="ref-label"[^>]*>', svg)]
    assert len(set(rows)) == 2  # Test and Copy one above the other, Random beside them
    assert re.findall(r">(\d[\d.]*)</text>", svg)[:5] == ["0", "0.25", "0.5", "0.75", "1"]  # a rate: 0..1


def _row(protocol: str, model: str, *, steps: float | None = None, official: bool = False,
         kind: str = "run", seeds: tuple[int, ...] = (0,)) -> Row:
    row = Row("perov_5", protocol, protocol, official, model, "f", model, kind, seeds=seeds)
    row.metrics["valid"] = MetricSummary("valid", "max", (0.9,), 0.9, None, None)
    if steps is not None:
        row.cost["train_steps"] = steps
    return row


def test_the_primary_protocol_is_official_then_the_longest_budget() -> None:
    rows = [_row("short", "a", steps=2000), _row("short", "b", steps=2000), _row("long", "a", steps=12000),
            _row("refs_only", "Test", kind="reference")]
    assert protocol_order(rows) == ["long", "short", "refs_only"]
    assert protocol_order([*rows, _row("official", "a", steps=100, official=True)])[0] == "official"
    # a longer budget with one 2-seed row does not open the page over a 3-seed comparison of models
    compared = [_row("12k", m, steps=12000, seeds=(0, 1, 2)) for m in ("a", "b")]
    assert protocol_order([*compared, _row("30k", "a", steps=30000, seeds=(0, 1))]) == ["12k", "30k"]
    longer = [_row("30k", m, steps=30000, seeds=(0, 1, 2)) for m in "ab"]
    assert protocol_order([*compared, *longer])[0] == "30k"


def _record(model: str, protocol: str, seed: int, vun: float, *, kind: str = "run", steps: int = 2000,
            variant: str | None = None) -> ResultRecord:
    split = {"train": "val", "eval": "test", "official": False, "label": protocol,
             "id": f"{protocol}__train-val_eval-test_n1000", "protocol": protocol, "num_samples": 1000}
    metrics = {
        "valid": {"value": min(1.0, vun + 0.1), "direction": "max", "version": "1"},
        "vun_rate": {"value": vun, "direction": "max", "version": "1"},
        "cov_recall": {"value": vun / 2, "direction": "max", "version": "1"},
    }
    return ResultRecord(
        model=model, family="reference" if kind == "reference" else "vae", variant=variant or model,
        dataset="perov_5", split_protocol=protocol, split=split, seed=seed, metrics=metrics, kind=kind,
        cost={} if kind == "reference" else {"train_seconds": 100.0 + seed, "sample_seconds": 5.0,
                                             "train_steps": steps},
        config_hash=f"{model}{protocol}{seed}"[:16],
    )


def test_the_page_opens_with_the_headline_of_the_primary_protocol(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for seed in range(3):
        write_record(_record("vae", "p_short", seed, 0.5 + seed / 100, variant="vae-gaussian"), results)
        write_record(_record("vae", "p_long", seed, 0.7 + seed / 100, steps=12000, variant="vae-gaussian"),
                     results)
        write_record(_record("ddpm", "p_long", seed, 0.6, steps=12000, variant="ddpm-eps"), results)
    for protocol in ("p_short", "p_long"):
        for model, value in (("Test", 0.99), ("Random", 0.3), ("Copy", 0.0)):
            write_record(_record(model, protocol, 0, value, kind="reference"), results)
    html = build(results, tmp_path / "board")["html"].read_text()
    first = html.index('<section class="dataset glance" id="ds-perov_5">')
    assert first < html.index('id="details-perov_5"')
    panels = re.findall(r'<div class="glance-panel"[^>]*>', html)
    assert len(panels) == 2 and "p_long__" in panels[0]
    assert " hidden" not in panels[0] and " hidden" in panels[1]
    assert html.index('aria-selected="true">p_long n1000 · 12,000 steps') < html.index(">p_short n1000")
    start = html.index('id="glance-perov_5-0"')
    table = html[start:html.index("</table>", start)]
    labels = re.findall(r'<td class="label text"[^>]*><span class="name">(.*?)</span>', table)
    labels = [re.sub(r"<[^>]+>", "", label) for label in labels]
    assert labels == ["ddpm-eps", "vae-gaussian", "Test", "Random", "CDVAE"]  # runs, then the references
    assert "Copy" not in labels
    assert table.count('class="badge reference">reference') == 2
    assert 'class="badge published">reported, not re-run' in table
    headers = re.findall(r"<th[^>]*>([^<]+?) [↑↓]</th>", table.replace("<wbr>", ""))
    assert headers == ["valid", "vun_rate", "cov_recall"]  # the headline metrics present, in order
    assert html.count('<text class="point-label"') == 2 + 1  # both panels' plots, every point labelled
    # the references are lines in the plot too: Test and Random of each protocol
    assert re.findall(r'<text class="ref-label"[^>]*>(\w+) ', html[:html.index('id="details-perov_5"')]) == [
        "Test", "Random", "Test", "Random"]


def test_reference_line_labels_keep_off_each_other_and_the_points() -> None:
    marker = Box(590, 95, 601, 106)  # a point at the right edge, where the labels are aligned
    boxes = place_line_labels([100.0, 103.0], [60.0, 45.0], 640.0, BOUNDS, avoid=[marker])
    _no_overlaps([*boxes, marker])
    assert all(b.inside(BOUNDS) and b.x1 == 640.0 for b in boxes)
    # point labels then keep off the reference labels
    placed = place_point_labels([(560.0, 100.0)], [70.0], BOUNDS, taken=boxes)
    _no_overlaps([*boxes, placed[0].box])
