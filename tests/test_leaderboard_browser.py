"""The HTML board in a real browser: headless Chromium opens ``index.html`` from the file system.

Needs Chromium, its chromedriver and the ``selenium`` package (``pip install -e ".[browser]"``; on
Debian/Ubuntu ``apt-get install chromium chromium-driver``). Skipped, with the reason, when one is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium showing the board of the synthetic records."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[browser]'"
    )
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("board")
    html = build(write_synthetic_results(root / "results"), root / "board")["html"]
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
        "--window-size=1500,1200",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        driver.get(html.as_uri())
        yield driver
    finally:
        driver.quit()


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
    bars = page.find_elements("css selector", "#ds-perov_5 svg.bars")
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
