"""Headless chromium teaches two classes through the page (upload), waits for training, then sees
the taught class names in Predict; a long clip gets a timeline whose click jumps to a window; a
foreign clip carries the "unlike the training data" note; a webcam + microphone recording (the
browser's fake devices playing a built-in clip) becomes a clip of a class. Screenshots go to
artifacts/."""
from __future__ import annotations

import pytest

from conftest import make_media
from test_app_teach import TAUGHT, teach_clips
from test_ood import noise_clip
from wb_helpers import (VIEWPORT, artifact, browser_marks, launch_chromium, load_script,
                        serve_app)

pytestmark = browser_marks()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser_teach")
    yield from serve_app(tmp, MMT_APP_REF_CLIPS="2", MMT_APP_WARMUP="none",
                         MMT_TEACH_EPOCHS="1", MMT_APP_MAX_SECONDS="12")


def test_teach_two_classes_then_predict_timeline_and_ood(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    pairs = teach_clips(tmp_path / "clips")
    long = make_media(tmp_path / "long_clip.mp4", seconds=10.0, size=(96, 72))
    noise = noise_clip(tmp_path / "noise.mp4")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
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
            page.screenshot(path=str(artifact("workbench_timeline.png")), full_page=True)
            # A foreign clip: the note beside the prediction (a fresh page: an empty upload box).
            page.goto(app.url)
            page.locator("#clip input[type=file]").set_input_files(str(noise))
            expect(page.locator("#status")).to_contain_text("Unlike the training data",
                                                            timeout=180_000)
            page.screenshot(path=str(artifact("workbench_ood.png")), full_page=True)
            # Teach tab: two classes, uploaded several files at a time, then Train (a fresh
            # page: an empty upload box for the prediction after, in this same session).
            page.goto(app.url)
            page.get_by_role("tab", name="Teach").click()
            for name in TAUGHT:
                page.locator("#teach-class").get_by_role("textbox").fill(name)
                files = [str(path) for path, n in pairs if n == name]
                page.locator("#teach-files input[type=file]").set_input_files(files)
                expect(page.locator("#teach-table")).to_contain_text(name, timeout=60_000)
            page.locator("#teach-train").click()
            expect(page.locator("#teach-result")).to_contain_text("Done", timeout=600_000)
            expect(page.locator("#teach-plot .js-plotly-plot")).to_be_attached(timeout=60_000)
            page.screenshot(path=str(artifact("workbench_teach.png")), full_page=True)
            # Predict now answers with the taught classes (this session's: a reload would be
            # a new session, with the demo models).
            page.get_by_role("tab", name="Predict").click()
            page.locator("#clip input[type=file]").set_input_files(str(pairs[0][0]))
            for role in ("mmt", "audio", "video"):
                for name in TAUGHT:
                    expect(page.locator(f"#pred-{role}")).to_contain_text(name, timeout=180_000)
            expect(page.locator("#models-md")).to_contain_text("taught", timeout=60_000)
            page.screenshot(path=str(artifact("workbench_taught_predict.png")), full_page=True)
        finally:
            print("\n".join(console[-30:]))
            browser.close()
    assert artifact("workbench_teach.png").stat().st_size > 20_000


def test_a_webcam_recording_becomes_a_clip_of_the_class(app, tmp_path):
    """benchmarks/bench_teach_webcam.py's `record`: chromium's fake camera and microphone play
    a built-in clip; the Teach tab records it and adds it to a class."""
    import av
    import numpy as np
    from playwright.sync_api import sync_playwright

    from mmt_core.data import media

    bench = load_script("benchmarks/bench_teach_webcam.py")
    source = teach_clips(tmp_path, per_class=1)[0][0]
    with sync_playwright() as p:
        kept = bench.record(p, app.url, source, "webcam_knock", app.cache_dir,
                            tmp_path / "recording.webm", tmp_path / "devices", seconds=4.0,
                            screenshot=artifact("workbench_webcam.png"))
    with av.open(str(kept)) as c:  # MediaRecorder's webm: no duration in the header
        assert c.duration is None and {s.type for s in c.streams} == {"video", "audio"}
    clip = media.decode(kept, num_frames=8, clip_seconds=3.2)
    assert 3.0 < clip.duration < 8.0 and clip.has_audio
    assert np.abs(clip.audio).max() > 0.05  # the microphone's sound, not silence
    # the camera's picture: the built-in clip's frames (same size, close colours)
    with av.open(str(source)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    assert clip.frames.shape[1:] == first.shape
    assert np.abs(clip.frames.astype(np.float32).mean((0, 1, 2)) - first.mean((0, 1))).max() < 20
