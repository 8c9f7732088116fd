"""Upload → every result of the workbench (predict, explain, embed), timed through the HTTP API.

    python benchmarks/bench_app.py [--runs 3] [--seconds 10] [--method umap]

Launches `python app.py` on a free port (demo checkpoints, the default cache dir), waits until
its warm-up is done, then for each run uploads a fresh 10 s 640x360 clip with sound (a new file
each run, so nothing is served from the per-clip cache) and calls /predict, /explain and /embed
in turn, as the page does after an upload. Prints one JSON object (seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np



def make_clip(path: Path, seconds: float, seed: int, size=(640, 360), fps=25, rate=44100) -> Path:
    """A moving disc that flashes with a tone burst every 0.8 s, plus noise (H.264 + AAC)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    bg = rng.uniform(60, 160, 3).astype(np.float32)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = c.add_stream("aac", rate=rate, layout="mono")
        t_audio = np.arange(int(seconds * rate)) / rate
        wav = 0.01 * rng.standard_normal(len(t_audio))
        onsets = np.arange(0.3, seconds, 0.8)
        for t0 in onsets:
            m = (t_audio >= t0) & (t_audio < t0 + 0.3)
            wav[m] += 0.4 * np.sin(2 * np.pi * 660 * t_audio[m]) * np.exp(-(t_audio[m] - t0) / 0.1)
        wav = wav.astype(np.float32)
        pos = 0
        for i in range(int(seconds * fps)):
            t = i / fps
            cx, cy = w / 2 + w / 3 * np.sin(0.7 * t + seed), h / 2 + h / 4 * np.cos(0.5 * t)
            flash = np.exp(-np.min(np.abs(t - onsets)) / 0.1)
            img = np.empty((h, w, 3), np.float32)
            img[:] = bg
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < 40 ** 2] = (200 + 55 * flash, 40, 40)
            img += rng.normal(0, 3, (1, 1, 3)).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for p in vs.encode(frame):
                c.mux(p)
            while pos + 1024 <= min(len(wav), int((i + 1) * rate / fps)):
                af = av.AudioFrame.from_ndarray(wav[None, pos:pos + 1024], format="fltp",
                                                layout="mono")
                af.sample_rate, af.pts = rate, pos
                for p in aus.encode(af):
                    c.mux(p)
                pos += 1024
        for s in (vs, aus):
            for p in s.encode(None):
                c.mux(p)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--method", default="umap", choices=["umap", "tsne", "pca"])
    ap.add_argument("--threads", type=int, default=None, help="MMT_APP_THREADS (default: the app's)")
    ap.add_argument("--checkpoints", default=None, help="MMT_CHECKPOINTS (default: checkpoints/)")
    ap.add_argument("--cache-dir", default=None, help="MMT_CACHE_DIR (default: the app's)")
    ap.add_argument("--no-download", action="store_true",
                    help="leave the result images on the server (a browser fetches them in parallel)")
    args = ap.parse_args()

    from app_server import AppServer
    from gradio_client import Client, handle_file

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    clips = [make_clip(tmp / f"clip{i}.mp4", args.seconds, seed=i) for i in range(args.runs + 1)]
    env = {"MMT_APP_WARMUP": args.method}
    for key, value in (("MMT_APP_THREADS", args.threads), ("MMT_CHECKPOINTS", args.checkpoints),
                       ("MMT_CACHE_DIR", args.cache_dir)):
        if value is not None:
            env[key] = str(value)
    t_launch = time.perf_counter()
    server = AppServer(env, tmp / "app.log")
    try:
        server.wait(timeout=900)
        client = Client(server.url, verbose=False, download_files=not args.no_download)
        page_up = time.perf_counter() - t_launch
        while "workbench ready" not in server.output():
            if server.proc.poll() is not None or time.perf_counter() - t_launch > 900:
                raise SystemExit(f"warm-up failed: {server.output()[-2000:]}")
            time.sleep(0.5)
        ready = time.perf_counter() - t_launch

        def once(clip: Path) -> dict:
            f = handle_file(str(clip))
            t0 = time.perf_counter()
            client.predict(f, api_name="/predict")
            t1 = time.perf_counter()
            client.predict(f, "(top prediction)", api_name="/explain")
            t2 = time.perf_counter()
            client.predict(f, args.method, "mmt", api_name="/embed")
            t3 = time.perf_counter()
            return {"predict_s": t1 - t0, "explain_s": t2 - t1, "embed_s": t3 - t2,
                    "total_s": t3 - t0}

        first = once(clips[0])  # after warm-up, but the first request of this process
        runs = [once(c) for c in clips[1:]]
    finally:
        server.stop()
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    print(json.dumps({
        "clip": f"{args.seconds:g} s, 640x360, 25 fps, AAC", "projection": args.method,
        "threads": env.get("MMT_APP_THREADS", "app default"),
        "images_downloaded": not args.no_download,
        "runs": args.runs, "median": med, "max_total_s": round(max(r["total_s"] for r in runs), 3),
        "first_request": {k: round(v, 3) for k, v in first.items()},
        "page_up_s": round(page_up, 2), "warm_ready_s": round(ready, 2),
        "budget_s": 5.0, "within_budget": max(r["total_s"] for r in runs) <= 5.0,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
