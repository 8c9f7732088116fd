"""Headless chromium on the Dataset tab: evaluate the demo set on its data, click a confusion
cell on the heatmap, click a clip's thumbnail, play it, see it in Predict (player) and Explain
and its similar clips; click a point of the Embeddings map; screenshot to artifacts/."""
from __future__ import annotations

import pytest

from wb_helpers import VIEWPORT, artifact, browser_marks, launch_chromium, serve_app

pytestmark = browser_marks()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("browser_dataset"), MMT_APP_REF_CLIPS="3",
                         MMT_APP_WARMUP="pca")


def test_confusion_cell_to_clip_to_explain_and_similar_clips(app):
    from playwright.sync_api import expect, sync_playwright

    shot = artifact("workbench_dataset.png")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.url)
            page.get_by_role("tab", name="Dataset").click()
            page.locator("#dataset-run").click()
            expect(page.locator("#dataset-md")).to_contain_text("18 clips", timeout=300_000)
            expect(page.locator("#dataset-confusion .js-plotly-plot")).to_be_attached(
                timeout=60_000)
            expect(page.locator("#dataset-per-class")).to_contain_text("ball_bell")
            # Click the heatmap's top-left cell (label = predicted = the first class; 6 x 6).
            wait_hooked(page, "#dataset-confusion")
            drag = page.locator("#dataset-confusion .nsewdrag").first
            drag.scroll_into_view_if_needed()
            box = drag.bounding_box()
            hover_click(page, box["x"] + box["width"] / 12, box["y"] + box["height"] / 12)
            first = page.locator('#dataset-cell [data-testid="cell-0-0"]')
            expect(first).to_contain_text(".mp4", timeout=60_000)
            expect(page.locator("#dataset-true input").first).to_have_value("ball_bell")
            # Its clips as thumbnails: a click plays the clip and opens it everywhere.
            thumb = page.locator("#dataset-cell-gallery img").first
            expect(thumb).to_be_visible(timeout=60_000)
            thumb.click()
            expect(page.locator("#dataset-path textarea, #dataset-path input").first) \
                .to_have_value(lambda_mp4(), timeout=30_000)
            expect(page.locator("#dataset-player video")).to_be_attached(timeout=120_000)
            near = page.locator('#dataset-neighbours [data-testid="cell-0-0"]')
            expect(near).to_contain_text(".mp4", timeout=180_000)
            expect(page.locator("#dataset-neighbours-gallery img").first).to_be_visible(
                timeout=60_000)
            page.locator("#dataset-kind").get_by_text("sounds nearest this picture",
                                                     exact=False).click()
            expect(near).to_contain_text(".mp4", timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
            # The clip went into Predict (its HTML5 player too) and Explain.
            page.get_by_role("tab", name="Predict").click()
            expect(page.locator("#pred-mmt")).to_contain_text("ball_bell", timeout=120_000)
            expect(page.locator("#pred-player video")).to_be_attached(timeout=60_000)
            page.get_by_role("tab", name="Explain").click()
            expect(page.locator("#cam-mmt img").first).to_be_visible(timeout=180_000)
            # The Embeddings map: draw it, click a reference point, its clip becomes the clip.
            page.get_by_role("tab", name="Embeddings").click()
            page.get_by_text("PCA", exact=True).click()
            pt = page.locator("#emb-2 .scatterlayer .trace").first.locator(".point").first
            expect(pt).to_be_attached(timeout=180_000)
            wait_hooked(page, "#emb-2")
            pt.scroll_into_view_if_needed()
            b = pt.bounding_box()
            hover_click(page, b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
            expect(page.locator("#clip")).to_contain_text("test_s1001_", timeout=120_000)
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 20_000


def lambda_mp4():
    import re

    return re.compile(r".+\.mp4$")


def hover_click(page, x: float, y: float) -> None:
    """Plotly reports a click on the point it hovers: hover first, then click."""
    page.mouse.move(x - 5, y - 5)
    page.mouse.move(x, y)
    page.wait_for_timeout(500)
    page.mouse.click(x, y)


def wait_hooked(page, plot: str) -> None:
    """Until the page's click relay (ui.PLOT_CLICK_JS) listens on the plot, drawn and settled."""
    page.wait_for_timeout(1500)  # Gradio may draw a new figure twice
    page.wait_for_function(
        f"""() => {{ const el = document.querySelector('{plot} .js-plotly-plot');
                   return !!el && !!(el._ev || el)._mmtHooked; }}""", timeout=30_000)
