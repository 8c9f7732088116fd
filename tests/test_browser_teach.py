"""Headless chromium teaches two classes through the page (upload), waits for training, then sees
the taught class names in Predict; a long clip gets a timeline whose click jumps to a window; a
foreign clip carries the "unlike the training data" note. Screenshots go to artifacts/."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_media
from test_app_teach import TAUGHT, teach_clips
from test_ood import noise_clip
from wb_helpers import ROOT, serve_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("browser_teach"), MMT_APP_REF_CLIPS="2",
                         MMT_APP_WARMUP="none", MMT_TEACH_EPOCHS="1", MMT_APP_MAX_SECONDS="12")


def test_teach_two_classes_then_predict_timeline_and_ood(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    pairs = teach_clips(tmp_path / "clips")
    long = make_media(tmp_path / "long_clip.mp4", seconds=10.0, size=(96, 72))
    noise = noise_clip(tmp_path / "noise.mp4")
    art = ROOT / "artifacts"
    art.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console = []  # shown when the test fails
            page.on("console", lambda m: console.append(m.text))
            page.goto(app.url)
            # Demo models first: a long clip's timeline, a click on it jumps to a later window.
            page.locator("#clip input[type=file]").set_input_files(str(long))
            expect(page.locator("#pred-mmt")).to_contain_text("_", timeout=180_000)
            plot = page.locator("#timeline .js-plotly-plot")
            expect(plot).to_be_attached(timeout=180_000)
            expect(page.locator("#timeline-md")).to_contain_text("6 windows", timeout=60_000)
            page.wait_for_timeout(1500)  # the click relay attaches after the plot is drawn
            drag = page.locator("#timeline .nsewdrag").first  # the MMT row's plot area
            drag.scroll_into_view_if_needed()
            box = drag.bounding_box()
            page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + 0.5 * box["height"])
            number = page.locator("#window-start input[type=number]")
            expect(number).not_to_have_value("0", timeout=120_000)
            assert float(number.input_value()) >= 4.0  # a window in the clip's second half
            page.screenshot(path=str(art / "workbench_timeline.png"), full_page=True)
            # A foreign clip: the note beside the prediction (a fresh page: an empty upload box).
            page.goto(app.url)
            page.locator("#clip input[type=file]").set_input_files(str(noise))
            expect(page.locator("#status")).to_contain_text("Unlike the training data",
                                                            timeout=180_000)
            page.screenshot(path=str(art / "workbench_ood.png"), full_page=True)
            # Teach tab: two classes, uploaded several files at a time, then Train.
            page.get_by_role("tab", name="Teach").click()
            for name in TAUGHT:
                page.locator("#teach-class").get_by_role("textbox").fill(name)
                files = [str(path) for path, n in pairs if n == name]
                page.locator("#teach-files input[type=file]").set_input_files(files)
                expect(page.locator("#teach-table")).to_contain_text(name, timeout=60_000)
            page.locator("#teach-train").click()
            expect(page.locator("#teach-result")).to_contain_text("Done", timeout=600_000)
            expect(page.locator("#teach-plot .js-plotly-plot")).to_be_attached(timeout=60_000)
            page.screenshot(path=str(art / "workbench_teach.png"), full_page=True)
            # Predict now answers with the taught classes.
            page.goto(app.url)
            page.locator("#clip input[type=file]").set_input_files(str(pairs[0][0]))
            for role in ("mmt", "audio", "video"):
                for name in TAUGHT:
                    expect(page.locator(f"#pred-{role}")).to_contain_text(name, timeout=180_000)
            expect(page.locator("#models-md")).to_contain_text("taught", timeout=60_000)
            page.screenshot(path=str(art / "workbench_taught_predict.png"), full_page=True)
        finally:
            print("\n".join(console[-30:]))
            browser.close()
    assert (art / "workbench_teach.png").stat().st_size > 20_000
