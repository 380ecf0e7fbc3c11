"""The HTML board in a real browser: headless Chromium opens ``index.html`` from the file system.

Needs Chromium, its chromedriver and the ``selenium`` package (``pip install -e ".[browser]"``; on
Debian/Ubuntu ``apt-get install chromium chromium-driver``). Skipped, with the reason, when one is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.leaderboard import build
from tests.test_leaderboard import write_synthetic_results

BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="no headless browser: install Chromium and chromedriver (Debian: apt-get install chromium "
    "chromium-driver) to run the HTML board in a browser",
)


@contextmanager
def _browser(root: Path, size: str) -> Iterator[Any]:
    """A headless Chromium with a window of ``size`` (``"width,height"``) and its profile under ``root``."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[browser]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={root / 'profile'}",
        f"--window-size={size}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium showing the board of the synthetic records."""
    root = tmp_path_factory.mktemp("board")
    html = build(write_synthetic_results(root / "results"), root / "board")["html"]
    with _browser(root, "1500,1200") as driver:
        driver.get(html.as_uri())
        yield driver


def _models(driver: Any, table: str) -> list[str]:
    cells = driver.find_elements("css selector", f"#{table} tbody tr td[data-col='model']")
    return [c.get_attribute("data-v") for c in cells]


def test_page_renders_tables_and_plots_without_errors(page: Any) -> None:
    rows = page.find_elements("css selector", "#table-perov_5 tbody tr")
    assert len(rows) == 6  # vae, wgan_gp, ddpm, ddpm failed, realnvp n/a, Test reference
    assert all(r.is_displayed() and r.size["height"] > 10 for r in rows)
    scatter = page.find_element("css selector", "#ds-perov_5 svg.scatter")
    assert scatter.is_displayed() and scatter.size["width"] > 300 and scatter.size["height"] > 200
    assert len(scatter.find_elements("css selector", "g.point circle")) == 3
    pareto = page.execute_script("return document.querySelector('#ds-perov_5 path.pareto').getBBox().width")
    assert pareto > 10
    bars = page.find_elements("css selector", "#details-perov_5 svg.bars")
    assert len(bars) == 5 and all(b.is_displayed() for b in bars)
    assert page.find_element("css selector", "#published-perov_5").is_displayed()
    loaded = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded == [], f"the page loaded resources: {loaded}"
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_clicking_a_header_sorts_the_rows(page: Any) -> None:
    before = _models(page, "table-perov_5")
    header = page.find_element("css selector", "#table-perov_5 th[data-col='wdist_density']")
    header.click()  # first click: best first, and wdist_density is lower-is-better
    assert header.get_attribute("aria-sort") == "ascending"
    after = _models(page, "table-perov_5")
    assert after != before
    assert after[:4] == ["Test", "ddpm", "wgan_gp", "vae"]  # 0.01, 0.2, 0.3, 0.6; no value: last
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert _models(page, "table-perov_5")[:4] == ["vae", "wgan_gp", "ddpm", "Test"]
    name = page.find_element("css selector", "#table-perov_5 th[data-col='model']")
    name.click()
    assert _models(page, "table-perov_5") == sorted(before, key=str.lower)


def test_family_filter_hides_rows_and_points(page: Any) -> None:
    box = page.find_element("css selector", "input.family-filter[value='gan']")
    gan_row = page.find_element("css selector", "#table-perov_5 tr[data-family='gan']")
    gan_point = page.find_element("css selector", "#ds-perov_5 svg.scatter g.point[data-family='gan']")
    assert gan_row.is_displayed() and gan_point.is_displayed()
    box.click()
    assert not gan_row.is_displayed() and not gan_point.is_displayed()
    box.click()
    assert gan_row.is_displayed()


def test_screenshot_can_be_taken(page: Any, tmp_path: Path) -> None:
    shot = tmp_path / "board.png"
    assert page.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


# ------------------------------------------------------------- what a reader sees on the real board, 1366x768

RESULTS = Path(__file__).resolve().parents[1] / "leaderboard" / "results"


@pytest.fixture(scope="module")
def board_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium at a 1366x768 laptop window showing the board of the committed records (the
    synthetic ones when the checkout has none)."""
    root = tmp_path_factory.mktemp("real_board")
    results = RESULTS if any(RESULTS.rglob("*.json")) else write_synthetic_results(root / "results")
    html = build(results, root / "board")["html"]
    with _browser(root, "1366,768") as driver:
        driver.get(html.as_uri())
        yield driver


def _rects(driver: Any, elements: list[Any]) -> list[dict[str, float]]:
    return driver.execute_script(
        "return arguments[0].map(function (e) { var r = e.getBoundingClientRect();"
        " return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; });",
        elements,
    )


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["left"] < b["right"] and b["left"] < a["right"]
            and a["top"] < b["bottom"] and b["top"] < a["bottom"])


def _inside(inner: dict[str, float], outer: dict[str, float], slack: float = 0.5) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


def _each_protocol(driver: Any, section: Any) -> Iterator[Any]:
    """Show each protocol tab of a dataset's first screen in turn; yield the panel on display (none for a
    dataset with published rows only)."""
    if not section.find_elements("css selector", ".glance-panel"):
        return
    tabs = section.find_elements("css selector", ".tabs .tab")
    for tab in tabs or [None]:
        if tab is not None:
            tab.click()
        (panel,) = [p for p in section.find_elements("css selector", ".glance-panel") if p.is_displayed()]
        yield panel
    if tabs:
        tabs[0].click()


def test_the_headline_table_opens_the_page(board_page: Any) -> None:
    height = board_page.execute_script("return window.innerHeight")
    first = board_page.find_element("css selector", "section.glance")
    table = first.find_element("css selector", "table.glance")
    assert table.is_displayed()
    top = board_page.execute_script("return arguments[0].getBoundingClientRect().top", table)
    first_row = table.find_element("css selector", "tbody tr")
    bottom = board_page.execute_script("return arguments[0].getBoundingClientRect().bottom", first_row)
    assert 0 <= top < min(768, height) and bottom < min(768, height), (top, bottom, height)
    # the details come after every dataset's first screen
    glances = board_page.find_elements("css selector", "section.glance")
    details = board_page.find_elements("css selector", "section.details")
    assert glances and details and len(glances) == len(details)
    y = board_page.execute_script("return arguments[0].getBoundingClientRect().top", details[0])
    assert y > board_page.execute_script("return arguments[0].getBoundingClientRect().bottom", glances[-1])


def test_headline_rows_have_visible_distinct_labels_and_references(board_page: Any) -> None:
    width = board_page.execute_script("return document.documentElement.clientWidth")
    for section in board_page.find_elements("css selector", "section.glance"):
        for panel in _each_protocol(board_page, section):
            cells = panel.find_elements("css selector", "table.glance tbody td.label")
            labels = [c.text.strip() for c in cells]
            assert labels and all(labels), labels
            assert len(set(labels)) == len(labels), labels
            for cell, rect in zip(cells, _rects(board_page, cells), strict=True):
                clipped = board_page.execute_script(
                    "var e = arguments[0];"
                    " return e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight;",
                    cell,
                )
                assert not clipped, cell.text
                assert rect["right"] - rect["left"] > 10 and rect["bottom"] - rect["top"] > 10, cell.text
                assert 0 <= rect["left"] and rect["right"] <= width, (cell.text, rect, width)
            kinds = {c.get_attribute("class") for c in panel.find_elements("css selector", "tbody tr")}
            assert any("glance-ref" in k for k in kinds), "the Test / Random references are missing"
            refs = [c.text for c in panel.find_elements("css selector", "tr.glance-ref td.label")]
            assert all("reference" in r for r in refs), refs
            published = panel.find_elements("css selector", "tr.glance-published td.label")
            assert all("reported, not re-run" in p.text for p in published)


def test_every_plot_point_is_labelled_without_overlap_or_cut(board_page: Any) -> None:
    plots = 0
    for section in board_page.find_elements("css selector", "section.glance"):
        for panel in _each_protocol(board_page, section):
            for svg in panel.find_elements("css selector", "svg.scatter"):
                plots += 1
                points = svg.find_elements("css selector", "g.point")
                labels = [p.find_element("css selector", "text.point-label") for p in points]
                texts = [t.text for t in labels]
                assert all(texts) and len(set(texts)) == len(texts), texts
                boxes = _rects(board_page, labels)
                frame = _rects(board_page, [svg.find_element("css selector", "rect")])[0]
                for i, (text, box) in enumerate(zip(texts, boxes, strict=True)):
                    assert _inside(box, frame), f"label {text!r} sticks out of the plot: {box} {frame}"
                    for other, box2 in zip(texts[i + 1:], boxes[i + 1:], strict=True):
                        assert not _overlap(box, box2), f"labels {text!r} and {other!r} overlap"
    assert plots


def test_bar_plot_labels_are_whole_and_apart(board_page: Any) -> None:
    svgs = board_page.find_elements("css selector", "section.details svg.bars")
    assert svgs
    for svg in svgs[:12]:  # the first protocol's plots; every plot is built by the same code
        frame = _rects(board_page, [svg])[0]
        bar_labels = svg.find_elements("css selector", "text.bar-label")
        for label, box in zip(bar_labels, _rects(board_page, bar_labels), strict=True):
            assert _inside(box, frame), f"bar label {label.text!r} is cut off"
        refs = svg.find_elements("css selector", "text.ref-label")
        boxes = _rects(board_page, refs)
        for i, box in enumerate(boxes):
            assert _inside(box, frame), refs[i].text
            assert not any(_overlap(box, other) for other in boxes[i + 1:]), refs[i].text


# ----------------------------------------------------------------------------------------- quality versus NFE

NFE_METRICS = ["valid", "cov_recall", "cov_precision", "vun_rate", "samples_per_second"]


@pytest.fixture(scope="module")
def nfe_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium at 1366x768 showing a board with one DDPM sampled by DDIM at three NFE."""
    from tests.test_leaderboard_nfe import write_nfe_results

    root = tmp_path_factory.mktemp("nfe_board")
    html = build(write_nfe_results(root / "results"), root / "board")["html"]
    with _browser(root, "1366,768") as driver:
        driver.get(html.as_uri())
        yield driver


def _check_nfe_labels(driver: Any, figure: Any) -> list[list[str]]:
    """Every panel of ``figure`` is on screen and labels each curve once, whole, inside the plot and apart
    from the other labels; returns the labels of each panel."""
    driver.execute_script("arguments[0].scrollIntoView()", figure)
    assert figure.is_displayed()
    out = []
    for panel in figure.find_elements("css selector", "svg.nfe-panel"):
        frame = _rects(driver, [panel.find_element("css selector", "rect")])[0]
        assert frame["right"] - frame["left"] > 150 and frame["bottom"] - frame["top"] > 100, frame
        labels = panel.find_elements("css selector", "text.curve-label")
        texts = [t.text for t in labels]
        assert all(texts) and len(set(texts)) == len(texts), texts
        boxes = _rects(driver, labels)
        for i, (text, box) in enumerate(zip(texts, boxes, strict=True)):
            assert _inside(box, frame), f"label {text!r} sticks out of the panel: {box} {frame}"
            for other, box2 in zip(texts[i + 1:], boxes[i + 1:], strict=True):
                assert not _overlap(box, box2), f"labels {text!r} and {other!r} overlap"
        out.append(texts)
    return out


def test_quality_versus_nfe_figure_shows_every_curve_labelled(nfe_page: Any) -> None:
    link = nfe_page.find_element("css selector", "#ds-perov_5 a[href='#nfe-perov_5-0']")
    assert link.is_displayed()
    figure = nfe_page.find_element("css selector", "figure.nfe#nfe-perov_5-0")
    panels = figure.find_elements("css selector", "svg.nfe-panel")
    assert [p.get_attribute("data-metric") for p in panels] == NFE_METRICS
    expected = {"ddpm-eps-cosine · ancestral", "ddpm-eps-cosine · ddim", "ddpm-eps-cosine · ddim-eta0.5",
                "ddpm-eps-cosine+scheduler=cosine · ancestral", "ddpm-eps-cosine+scheduler=cosine · ddim",
                "vae-gaussian"}
    for texts in _check_nfe_labels(nfe_page, figure):
        assert set(texts) == expected
    # the DDIM rows are one drawn line through three points; the single-NFE groups are points
    lines = figure.find_elements("css selector", "svg.nfe-panel[data-metric='valid'] path.nfe-line")
    assert len(lines) == 1
    assert nfe_page.execute_script("return arguments[0].getBBox().width", lines[0]) > 50
    assert "NFE" in figure.find_element("css selector", "figcaption").text
    box = nfe_page.find_element("css selector", "input.family-filter[value='vae']")
    vae = figure.find_element("css selector", "svg.nfe-panel g.nfe-curve[data-family='vae']")
    assert vae.is_displayed()
    box.click()
    assert not vae.is_displayed()
    box.click()
    errors = [e for e in nfe_page.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_nfe_labels_on_the_real_board_are_whole_and_apart(board_page: Any) -> None:
    figures = board_page.find_elements("css selector", "figure.nfe")
    if not figures:
        pytest.skip("no protocol of the committed records samples one model at two NFE")
    for figure in figures:
        labels = _check_nfe_labels(board_page, figure)
        assert len(labels) == len(NFE_METRICS) and all(labels)


# ------------------------------------------------------------------------------------------ usability funnel


@pytest.fixture(scope="module")
def funnel_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium at 1366x768 showing the synthetic board with funnels: vae (three seeds), wgan_gp
    (one of two seeds, plausible n/a), the Test reference, and ddpm, whose records predate the funnel."""
    from tests.test_funnel import write_funnel_results

    root = tmp_path_factory.mktemp("funnel_board")
    html = build(write_funnel_results(root / "results"), root / "board")["html"]
    with _browser(root, "1366,768") as driver:
        driver.get(html.as_uri())
        yield driver


def _check_funnel_labels(driver: Any, svg: Any) -> None:
    """Every label of a funnel plot is whole, inside the plot and apart from the others."""
    frame = _rects(driver, [svg])[0]
    labels = svg.find_elements("css selector", "text.funnel-label, text.funnel-end, g.legend text")
    boxes = _rects(driver, labels)
    for i, (label, box) in enumerate(zip(labels, boxes, strict=True)):
        assert label.text and _inside(box, frame), f"label {label.text!r} is cut off: {box} {frame}"
        for other, box2 in zip(labels[i + 1:], boxes[i + 1:], strict=True):
            assert not _overlap(box, box2), f"labels {label.text!r} and {other.text!r} overlap"


def test_the_funnel_draws_nested_bars_per_model(funnel_page: Any) -> None:
    figure = funnel_page.find_element("css selector", "figure.funnel#funnel-perov_5-0")
    funnel_page.execute_script("arguments[0].scrollIntoView()", figure)
    svg = figure.find_element("css selector", "svg.funnel")
    assert svg.is_displayed() and svg.size["width"] > 300 and svg.size["height"] > 100
    rows = {r.find_element("css selector", "text.funnel-label").text: r
            for r in svg.find_elements("css selector", "g.funnel-row")}
    assert set(rows) == {"vae", "wgan_gp", "ddpm", "Test (ref)"}
    for name, row in rows.items():
        bars = row.find_elements("css selector", "rect.funnel-stage")
        widths = [box["right"] - box["left"] for box in _rects(funnel_page, bars)]
        assert widths == sorted(widths, reverse=True), (name, widths)  # each stage inside the one before
    vae = _rects(funnel_page, rows["vae"].find_elements("css selector", "rect.funnel-stage"))
    assert [r["left"] for r in vae] == [vae[0]["left"]] * 6
    shares = [(r["right"] - r["left"]) / (vae[0]["right"] - vae[0]["left"]) for r in vae]
    assert shares == pytest.approx([1.0, 0.92, 0.62, 0.52, 0.42, 0.32], abs=0.01)
    assert "32 plausible, 32.0%" in rows["vae"].text
    # wgan_gp: five stages drawn, plausible n/a; ddpm: no funnel, a dashed outline and the reason
    assert len(rows["wgan_gp"].find_elements("css selector", "rect.funnel-stage")) == 5
    assert "plausible n/a" in rows["wgan_gp"].text
    assert rows["ddpm"].find_elements("css selector", "rect.funnel-none")
    assert not rows["ddpm"].find_elements("css selector", "rect.funnel-stage") and "n/a" in rows["ddpm"].text
    _check_funnel_labels(funnel_page, svg)
    cells = figure.find_elements("css selector", "table.funnel tbody tr")
    assert len(cells) == 4 and all(c.is_displayed() for c in cells)
    ddpm = figure.find_element("css selector",
                               "table.funnel tr[data-family='diffusion'] td[data-col='plausible']")
    assert ddpm.text == "n/a"
    errors = [e for e in funnel_page.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_the_family_filter_hides_funnel_rows(funnel_page: Any) -> None:
    box = funnel_page.find_element("css selector", "input.family-filter[value='gan']")
    row = funnel_page.find_element("css selector", "svg.funnel g.funnel-row[data-family='gan']")
    line = funnel_page.find_element("css selector", "table.funnel tr[data-family='gan']")
    funnel_page.execute_script("arguments[0].scrollIntoView()", row)
    assert row.is_displayed() and line.is_displayed()
    box.click()
    assert not row.is_displayed() and not line.is_displayed()
    box.click()
    assert row.is_displayed()


def test_funnel_labels_on_the_real_board_are_whole_and_apart(board_page: Any) -> None:
    figures = board_page.find_elements("css selector", "figure.funnel")
    if not figures:
        pytest.skip("no committed record carries the funnel")
    for figure in figures:
        board_page.execute_script("arguments[0].scrollIntoView()", figure)
        svg = figure.find_element("css selector", "svg.funnel")
        assert svg.is_displayed() and svg.find_elements("css selector", "rect.funnel-stage")
        _check_funnel_labels(board_page, svg)
