"""Teach from webcam recordings: each training clip of a real set played into chromium's fake
camera and microphone, recorded on the Teach tab, then taught and scored like bench_teach --real.

    python benchmarks/bench_teach_webcam.py --real SET/manifest.csv [--others OTHER/manifest.csv]

A student's clips reach the Teach tab through the browser: MediaRecorder's webm (VP8 + Opus)
after chromium's capture path, with its microphone processing (echo cancellation, noise
suppression, automatic gain). Launches `python app.py` on a free port; for each 'train' clip of
the manifest, a fresh headless chromium whose fake devices play that clip (.y4m + .wav) opens the
Teach tab, records for the clip's length and adds the recording to its class; the recording the
app stored is copied before the page closes (a closed page's session is deleted). The 'test'
clips are recorded the same way. The train recordings are then taught and the held-out clips
scored exactly as bench_teach.py --real does (workbench.teach.TeachJob,
mmt_core.inference.predict_file): the set's own test files (held_out_*) and their webcam
recordings (webcam_held_out_*). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, as in the browser tests


def fake_devices(clip: Path, out: Path) -> tuple[Path, Path]:
    """A clip as chromium's fake camera (.y4m, 25 fps) and microphone (.wav) files, for
    --use-file-for-fake-video-capture / --use-file-for-fake-audio-capture."""
    import av
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    cam, mic = out / "camera.y4m", out / "microphone.wav"
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(clip)) as c:
        rate = c.streams.audio[0].rate
        wav = np.concatenate([f.to_ndarray()[:1].reshape(-1) for f in c.decode(audio=0)])
    with av.open(str(cam), "w", format="yuv4mpegpipe") as c:
        s = c.add_stream("rawvideo", rate=25)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with av.open(str(mic), "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    return cam, mic


def record(playwright, url: str, clip: Path, label: str, cache: Path, out: Path, tmp: Path,
           seconds: float | None = None, screenshot: Path | None = None) -> Path:
    """Record `clip` (for `seconds`, default its length) through the Teach tab's webcam as a
    clip of `label` in a fresh browser; the recording the app stored (under the app's `cache`),
    copied to `out` before the page closes (a closed page's session is deleted)."""
    from playwright.sync_api import expect

    from mmt_core.data import media

    cam, mic = fake_devices(clip, tmp)
    seconds = seconds or media.probe(clip).duration or 4.0
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={cam}",
              f"--use-file-for-fake-audio-capture={mic}"])
    try:
        page = browser.new_context(permissions=["camera", "microphone"]).new_page()
        page.goto(url)
        page.get_by_role("tab", name="Teach").click()
        page.locator("#teach-class").get_by_role("textbox").fill(label)
        page.get_by_text("…or record with the webcam and microphone").click()
        webcam = page.locator("#teach-webcam")
        webcam.get_by_text("Click to Access Webcam").click()
        button = webcam.locator("button.capture-button")  # Record, then Stop
        button.click()
        expect(button).to_contain_text("Stop", timeout=30_000)
        page.wait_for_timeout(int(seconds * 1000))
        button.click()
        expect(webcam.locator("video[data-testid$='-player']")).to_have_attribute(
            "src", re.compile(r"\.webm$"), timeout=60_000)
        page.get_by_role("button", name="Add the recording to this class").click()
        expect(page.locator("#teach-table")).to_contain_text(label, timeout=60_000)
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=True)
        stored = sorted((cache / "teach" / "sessions").glob(f"*/{label}/*.webm"),
                        key=lambda p: p.stat().st_mtime)
        if not stored:
            raise RuntimeError(f"no stored recording of {clip}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(stored[-1].read_bytes())  # before the page closes its session
    finally:
        browser.close()
    return out


def webcam_clips(manifest: Path, root: Path, work: Path) -> Path:
    """Webcam recordings of every clip of the manifest, in root/SPLIT/CLASS/, and their
    manifest (path,label,split), which is returned."""
    from app_server import AppServer
    from playwright.sync_api import sync_playwright

    from mmt_core.data.manifests import read_manifest

    man = read_manifest(manifest)
    names = man.classes["label"]
    cache = work / "cache"
    server = AppServer({"MMT_CACHE_DIR": str(cache), "MMT_APP_WARMUP": "none"}, work / "app.log")
    try:
        server.wait()
        rows = []
        with sync_playwright() as p:
            for i, r in enumerate(man.records):
                label = names[r.labels["label"]]
                out = root / r.split / label / f"{Path(r.path).stem}.webm"
                record(p, server.url, Path(r.path), label, cache, out, work / "devices")
                rows.append(f"{out},{label},{r.split}")
                print(f"recorded {i + 1}/{len(man.records)}: {r.split}/{Path(r.path).name}",
                      file=sys.stderr)
    finally:
        server.stop()
    (root / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return root / "manifest.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="a manifest with train/test splits")
    p.add_argument("--others", default="", help="a manifest of clips of other classes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the app uses 1)")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--keep", default="", help="copy the recordings and the taught set here")
    a = p.parse_args()
    import torch

    from bench_teach import score_held_out, teach
    from workbench.teach import teach_epochs

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench_teach_webcam_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        recorded = webcam_clips(Path(a.real), tmp / "rec", tmp)
        t_record = time.perf_counter() - t0
        counts = {c.name: len(list(c.iterdir())) for c in (tmp / "rec" / "train").iterdir()}
        snap, seconds, _ = teach(tmp / "rec" / "train", tmp / "job", Path(a.checkpoints),
                                 teach_epochs())
        if a.keep:
            import shutil

            shutil.copytree(tmp / "rec", Path(a.keep) / "recordings", dirs_exist_ok=True)
            shutil.copytree(tmp / "job" / "taught", Path(a.keep) / "taught", dirs_exist_ok=True)
        # held out twice: the set's own files, and their webcam recordings (as a student
        # would test the taught model: through the same camera and microphone)
        held = score_held_out(tmp / "job" / "taught", Path(a.real),
                              Path(a.others) if a.others else None, tmp)
        cam = score_held_out(tmp / "job" / "taught", recorded, None, tmp, foreign=False)
    cam = {f"webcam_{k}": v for k, v in cam.items()}
    print(json.dumps({**held, **cam, "path": "webcam (chromium fake devices, MediaRecorder webm)",
                      "classes": len(counts), "clips": sum(counts.values()),
                      "record_seconds": round(t_record, 1), "teach_seconds": round(seconds, 1),
                      "val_top1": snap["result"].get("val_top1"), "torch_threads": a.threads},
                     indent=2))


if __name__ == "__main__":
    main()
