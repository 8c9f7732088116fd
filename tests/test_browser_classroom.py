"""Two students in two browser contexts on one app: A teaches two classes; B, meanwhile, presses
Stop (nothing of B's is training: A's run goes on) and predicts with the demo models; A ends with
the taught set, B still with the demo classes only."""
from __future__ import annotations

import pytest

from test_app_teach import TAUGHT, teach_clips
from wb_helpers import VIEWPORT, browser_marks, launch_chromium, serve_app

pytestmark = browser_marks()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("browser_classroom"), MMT_APP_REF_CLIPS="2",
                         MMT_APP_WARMUP="none", MMT_TEACH_EPOCHS="1", MMT_APP_MAX_SECONDS="12")


def test_one_student_teaches_the_other_sees_the_demo_and_cannot_stop_it(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    pairs = teach_clips(tmp_path / "clips")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            a = browser.new_context(viewport=VIEWPORT).new_page()
            b = browser.new_context(viewport=VIEWPORT).new_page()
            a.goto(app.url)
            b.goto(app.url)
            a.get_by_role("tab", name="Teach").click()
            for name in TAUGHT:
                a.locator("#teach-class").get_by_role("textbox").fill(name)
                a.locator("#teach-files input[type=file]").set_input_files(
                    [str(path) for path, n in pairs if n == name])
                expect(a.locator("#teach-table")).to_contain_text(name, timeout=60_000)
            a.locator("#teach-train").click()
            expect(a.locator("#teach-progress")).to_contain_text("running", timeout=120_000)
            # B's Stop: nothing of B's is training, and A's run is untouched
            b.get_by_role("tab", name="Teach").click()
            b.locator("#teach-stop").click()
            expect(b.locator("#teach-msg")).to_contain_text("Nothing of yours", timeout=60_000)
            expect(b.locator("#teach-table")).not_to_contain_text(list(TAUGHT)[0])
            expect(a.locator("#teach-result")).to_contain_text("Done", timeout=600_000)
            expect(a.locator("#models-md")).to_contain_text("taught", timeout=60_000)
            # B predicts with the demo models: no taught class anywhere on B's page
            b.get_by_role("tab", name="Predict").click()
            b.locator("#clip input[type=file]").set_input_files(str(pairs[0][0]))
            expect(b.locator("#pred-mmt")).to_contain_text("_", timeout=180_000)
            for name in TAUGHT:
                expect(b.locator("#pred-mmt")).not_to_contain_text(name)
            expect(b.locator("#models-md")).to_contain_text("demo")
            # A predicts the same clip with its taught classes
            a.get_by_role("tab", name="Predict").click()
            a.locator("#clip input[type=file]").set_input_files(str(pairs[0][0]))
            for name in TAUGHT:
                expect(a.locator("#pred-mmt")).to_contain_text(name, timeout=180_000)
        finally:
            browser.close()
