"""Headless chromium uploads a clip to the launched app, waits for the predictions, the maps of
every explain method and the embedding plots, and saves screenshots to artifacts/."""
from __future__ import annotations

import pytest

from wb_helpers import VIEWPORT, artifact, browser_marks, launch_chromium, serve_app

pytestmark = browser_marks()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("browser"), MMT_APP_REF_CLIPS="3",
                         MMT_APP_WARMUP="umap")


def test_upload_shows_predictions_cams_and_embeddings(app, tmp_path):
    import numpy as np
    from playwright.sync_api import expect, sync_playwright

    from mmt_core.data.synthetic import make_clip

    clip = tmp_path / "box_whistle.mp4"
    make_clip(clip, 3, np.random.default_rng(11))
    shot = artifact("workbench.png")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(app.url)
            page.locator("#clip input[type=file]").set_input_files(str(clip))
            # Predict tab: three top-5 label lists with the built-in class names.
            for role in ("mmt", "audio", "video"):
                expect(page.locator(f"#pred-{role}")).to_contain_text("_", timeout=180_000)
            expect(page.locator("#frames img").first).to_be_visible(timeout=60_000)
            expect(page.locator("#spectrogram .js-plotly-plot").first).to_be_attached(timeout=60_000)
            page.screenshot(path=str(shot.with_name("workbench_predict.png")), full_page=True)
            # Explain tab: CAM galleries filled by the chained explain call.
            page.get_by_role("tab", name="Explain").click()
            expect(page.locator("#cam-mmt img").first).to_be_visible(timeout=180_000)
            expect(page.locator("#cam-video img").first).to_be_visible(timeout=60_000)
            expect(page.locator("#cam-audio .js-plotly-plot").first).to_be_attached(timeout=60_000)
            page.screenshot(path=str(shot.with_name("workbench_explain.png")), full_page=True)
            # Each explain method: picking it re-explains the clip (its maps and its pointing
            # scores replace the previous method's).
            for title in ("Attention relevance", "Occlusion", "Audio contrast", "Grad-CAM"):
                page.locator("#method").get_by_text(title, exact=True).click()
                expect(page.locator("#method-info")).to_contain_text(title, timeout=30_000)
                expect(page.locator("#explain-md")).to_contain_text(f"{title}", timeout=240_000)
                expect(page.locator("#explain-md")).to_contain_text("Pointing game",
                                                                    timeout=60_000)
                expect(page.locator("#cam-mmt img").first).to_be_visible(timeout=60_000)
                if title != "Audio contrast":  # the video-only model has no sound to contrast
                    expect(page.locator("#cam-video img").first).to_be_visible(timeout=60_000)
                slug = title.split()[-1].lower().replace("-", "")
                page.screenshot(path=str(shot.with_name(f"workbench_explain_{slug}.png")),
                                full_page=True)
            # Embeddings tab: three plotly scatters with the uploaded clip's star.
            page.get_by_role("tab", name="Embeddings").click()
            for i in range(3):
                expect(page.locator(f"#emb-{i} .js-plotly-plot")).to_be_attached(timeout=240_000)
            expect(page.locator("#emb-2")).to_contain_text("box_whistle.mp4", timeout=60_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 20_000
