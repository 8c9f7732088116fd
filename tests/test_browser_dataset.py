"""Headless chromium on the Dataset tab: evaluate the demo set on its data, open a confusion
cell, click a clip, play it, see it in Explain and its similar clips; screenshot to artifacts/."""
from __future__ import annotations

from pathlib import Path

import pytest

from wb_helpers import ROOT, serve_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("browser_dataset"), MMT_APP_REF_CLIPS="3",
                         MMT_APP_WARMUP="pca")


def test_confusion_cell_to_clip_to_explain_and_similar_clips(app):
    from playwright.sync_api import expect, sync_playwright

    shot = ROOT / "artifacts" / "workbench_dataset.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url)
            page.get_by_role("tab", name="Dataset").click()
            page.locator("#dataset-run").click()
            expect(page.locator("#dataset-md")).to_contain_text("18 clips", timeout=300_000)
            expect(page.locator("#dataset-confusion .js-plotly-plot")).to_be_attached(
                timeout=60_000)
            expect(page.locator("#dataset-per-class")).to_contain_text("ball_bell")
            # The diagonal cell of the first class (label = predicted = its default choices).
            page.locator("#dataset-cell-btn").click()
            # The grid's first cell (Gradio also draws a hidden <table> copy that measures cells).
            first = page.locator('#dataset-cell [data-testid="cell-0-0"]')
            expect(first).to_contain_text(".mp4", timeout=60_000)
            first.click()
            expect(page.locator("#dataset-path textarea, #dataset-path input").first) \
                .to_have_value(lambda_mp4(), timeout=30_000)
            page.locator("#dataset-open").click()
            expect(page.locator("#dataset-player video")).to_be_attached(timeout=120_000)
            near = page.locator('#dataset-neighbours [data-testid="cell-0-0"]')
            expect(near).to_contain_text(".mp4", timeout=180_000)
            page.locator("#dataset-kind").get_by_text("sounds nearest this picture",
                                                     exact=False).click()
            expect(near).to_contain_text(".mp4", timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
            # The clip went into Predict and Explain.
            page.get_by_role("tab", name="Predict").click()
            expect(page.locator("#pred-mmt")).to_contain_text("ball_bell", timeout=120_000)
            page.get_by_role("tab", name="Explain").click()
            expect(page.locator("#cam-mmt img").first).to_be_visible(timeout=180_000)
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 20_000


def lambda_mp4():
    import re

    return re.compile(r".+\.mp4$")
