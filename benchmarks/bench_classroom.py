"""A class on one server: K students (separate gradio_client sessions) each run predict →
explain → embed N times on their own clips while some of them teach; prints one JSON object.

    python benchmarks/bench_classroom.py [--students 12] [--rounds 3] [--teachers 3]

Launches `python app.py` on a free port (demo checkpoints, a fresh cache dir unless
--cache-dir, MMT_TEACH_EPOCHS=--epochs), times the first /predict sent the moment the page
answers (the embedding warm-up still running), then starts the students at once. Teachers
first teach two classes of their own through /teach (waiting in the training queue), then do
their rounds with the taught set, then switch back to the demo set and predict once more.
Reports p50/p95/max latency per endpoint (and /predict while a run trains), errors, refusals
("Queue is full"), the training queue and gradio queue depth over time, and the isolation
checks: every answer's classes come from one set; a student's taught classes never appear in
another's answers; a switch in one session never changes another's; no session files are left
once the clients have closed. `run_classroom` is what tests/test_classroom_app.py runs, smaller.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path



def student_clips(out: Path, student: int, count: int = 2) -> list[Path]:
    """Built-in generator clips (distinct per student: every upload is new to the app)."""
    import numpy as np

    from mmt_core.data.synthetic import make_clip

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = out / f"student{student}_{i}.mp4"
        if not p.is_file():
            make_clip(p, (student + i) % 6, np.random.default_rng([991, student, i]))
        paths.append(p)
    return paths


def teach_set(out: Path, student: int, per_class: int = 3) -> list[tuple[Path, str]]:
    """(clip, class name) pairs: two classes named after the student (s3_bell, s3_whistle),
    taught from built-in classes 0 and 3."""
    import numpy as np

    from mmt_core.data.synthetic import make_clip

    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name, label in ((f"s{student}_bell", 0), (f"s{student}_whistle", 3)):
        for i in range(per_class):
            p = out / f"{name}_{i}.mp4"
            if not p.is_file():
                make_clip(p, label, np.random.default_rng([77, student, label, i]))
            pairs.append((p, name))
    return pairs


def answer_classes(labels) -> set[str]:
    """The class names in a /predict answer's three Labels (None: a skipped model)."""
    return {c["label"] for lab in labels if lab for c in lab["confidences"]}


class Monitor(threading.Thread):
    """Samples the training queue (/classroom) and gradio's queue size twice a second."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        from gradio_client import Client

        self.url, self.samples, self.stop = url, [], threading.Event()
        self.client = Client(url, verbose=False)

    def run(self):
        while not self.stop.is_set():
            try:
                train = self.client.predict(api_name="/classroom")["train"]
                with urllib.request.urlopen(self.url + "gradio_api/queue/status", timeout=5) as r:
                    queue = json.loads(r.read())["queue_size"]
                self.samples.append((time.time(), train["running"], train["waiting"], queue))
            except Exception:  # noqa: BLE001 - a sample lost under load is no result
                pass
            self.stop.wait(0.5)

    def training_at(self, t0: float, t1: float) -> bool:
        return any(r > 0 for t, r, _, _ in self.samples if t0 - 0.5 <= t <= t1 + 0.5)


def run_classroom(url: str, work: Path, *, students: int, rounds: int, teachers: int,
                  method: str = "umap") -> dict:
    """Run the class against the app at `url`; returns the measurements and checks."""
    from gradio_client import Client, handle_file

    mon = Monitor(url)
    mon.start()
    lock = threading.Lock()
    calls: list[dict] = []  # {"endpoint", "seconds", "start", "student"}
    errors: list[str] = []
    refusals: list[str] = []
    violations: list[str] = []
    taught: dict[int, set] = {}  # student -> its taught class names (once taught)
    demo: set = set()

    def timed(student, client, endpoint, *args):
        t0 = time.time()
        try:
            out = client.predict(*args, api_name=endpoint)
        except Exception as e:  # noqa: BLE001 - counted, the student goes on
            msg = f"student {student} {endpoint}: {type(e).__name__}: {e}"
            with lock:
                (refusals if "queue is full" in str(e).lower() else errors).append(msg)
            return None
        with lock:
            calls.append({"endpoint": endpoint, "seconds": time.time() - t0, "start": t0,
                          "student": student})
        return out

    def check(student, labels, expect: str):
        """expect "demo" or "taught": the answer's classes all come from that one set."""
        got = answer_classes(labels)
        others = set().union(*(c for s, c in taught.items() if s != student))
        if got & others:
            violations.append(f"student {student} got another student's classes {got & others}")
        want = taught.get(student, set()) if expect == "taught" else demo
        if want and not got <= want:
            violations.append(f"student {student} expected its {expect} set, got {sorted(got)}")

    def student_run(i: int):
        client = Client(url, verbose=False)
        try:
            if i < teachers:
                pairs = teach_set(work / f"teach{i}", i)
                out = timed(i, client, "/teach", [handle_file(str(p)) for p, _ in pairs],
                            [n for _, n in pairs])
                if out is not None:
                    with lock:
                        taught[i] = set(out["classes"])
            expect = "taught" if i in taught else "demo"
            clips = student_clips(work / f"clips{i}", i)
            for r in range(rounds):
                clip = handle_file(str(clips[r % len(clips)]))
                labels = timed(i, client, "/predict", clip)
                if labels is not None:
                    check(i, labels[:3], expect)
                timed(i, client, "/explain", clip, "(top prediction)")
                timed(i, client, "/embed", clip, method, "mmt")
            if i in taught:  # a switch back to the demo set: this session only
                timed(i, client, "/models", "demo")
                labels = timed(i, client, "/predict", handle_file(str(clips[0])))
                if labels is not None:
                    check(i, labels[:3], "demo")
        finally:
            client.close()  # the page's unload: the session's files go

    # the demo classes, as one more student sees them
    first = Client(url, verbose=False)
    demo |= answer_classes(first.predict(handle_file(str(student_clips(work / "probe", 99)[0])),
                                         api_name="/predict")[:3])
    first.close()
    t0 = time.time()
    threads = [threading.Thread(target=student_run, args=(i,)) for i in range(students)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    mon.stop.set()
    mon.join(5)

    def stats(xs):
        xs = sorted(xs)
        if not xs:
            return None
        return {"n": len(xs), "p50": round(statistics.median(xs), 2),
                "p95": round(xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))], 2),
                "max": round(xs[-1], 2)}

    latency = {e: stats([c["seconds"] for c in calls if c["endpoint"] == e])
               for e in ("/predict", "/explain", "/embed", "/teach")}
    latency["/predict while training"] = stats(
        [c["seconds"] for c in calls if c["endpoint"] == "/predict"
         and mon.training_at(c["start"], c["start"] + c["seconds"])])
    samples = mon.samples
    return {"students": students, "rounds": rounds, "teachers": teachers, "wall_s": round(wall, 1),
            "latency_s": latency, "errors": errors, "refusals": refusals,
            "isolation_violations": violations, "taught": {k: sorted(v) for k, v in taught.items()},
            "demo_classes": sorted(demo),
            "queue": {"train_waiting_max": max((w for _, _, w, _ in samples), default=0),
                      "train_running_max": max((r for _, r, _, _ in samples), default=0),
                      "gradio_queue_max": max((q for *_, q in samples), default=0),
                      "samples": len(samples)}}


def session_files(cache_dir: Path) -> list[str]:
    """What is left of any session: clips, taught sets, runs (the shared cache is not)."""
    teach = cache_dir / "teach"
    return sorted(str(p.relative_to(teach)) for d in ("sessions", "taught", "jobs")
                  for p in (teach / d).glob("*") if (teach / d).is_dir())


def wait_no_session_files(cache_dir: Path, timeout: float = 60.0) -> list[str]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        left = session_files(cache_dir)
        if not left:
            return []
        time.sleep(1.0)
    return session_files(cache_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--teachers", type=int, default=3)
    ap.add_argument("--epochs", default="1", help="MMT_TEACH_EPOCHS of each taught run")
    ap.add_argument("--method", default="umap", choices=["umap", "tsne", "pca"])
    ap.add_argument("--cache-dir", default=None,
                    help="MMT_CACHE_DIR (default: a fresh temp dir; its first start builds the "
                         "example and reference clips)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_classroom_"))
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    from app_server import AppServer

    t_start = time.time()
    server = AppServer({"MMT_CACHE_DIR": str(cache), "MMT_TEACH_EPOCHS": args.epochs,
                        "GRADIO_HEARTBEAT_INTERVAL": "2"}, work / "app.log")
    url = server.url
    try:
        server.wait(timeout=900)
        page_s = time.time() - t_start
        from gradio_client import Client, handle_file

        clip = student_clips(work / "first", 98)[0]
        c = Client(url, verbose=False)
        t0 = time.time()
        c.predict(handle_file(str(clip)), api_name="/predict")
        first_predict = time.time() - t0
        c.close()
        res = run_classroom(url, work, students=args.students, rounds=args.rounds,
                            teachers=args.teachers, method=args.method)
        res["session_files_left"] = wait_no_session_files(cache)
        res["first_predict_s"] = round(first_predict, 2)
        res["page_up_s"] = round(page_s, 1)
        res["warmup_log"] = [ln for ln in (work / "app.log").read_text().splitlines()
                             if "workbench ready" in ln]
    finally:
        server.stop()
    import torch

    res["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "torch": torch.__version__, "load_avg": os.getloadavg()}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
