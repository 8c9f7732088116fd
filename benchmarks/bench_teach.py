"""How long the Teach tab takes: 5 classes x 6 clips of 3-5 s, train with the default settings.

    python benchmarks/bench_teach.py [--classes 5] [--clips 6] [--threads 2] [--epochs N]

Writes the clips with the built-in generator (5 of its classes; clip lengths cycle through 3, 3.5,
4, 4.5 and 5 s) into a temp dir, then runs exactly what the Teach tab runs (workbench.teach.TeachJob:
own_data.train_own → engine.train for the audio-only and video-only models from the shipped
encoders, then the MMT from those; each clip decoded once into the run's cache; the OOD reference
of each taught model). Prints one JSON object: wall seconds, validation top-1 of the three models,
the machine's load before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clips(root: Path, classes: int, clips: int) -> dict[str, int]:
    from mmt_core.data import synthetic

    lengths = (3.0, 3.5, 4.0, 4.5, 5.0)
    default = synthetic.SECONDS
    try:
        for label in range(classes):
            name = synthetic.CLASSES[label].name
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(clips):
                synthetic.SECONDS = lengths[(label + i) % len(lengths)]  # the generator's length
                synthetic.make_clip(root / name / f"{name}_{i}.mp4", label,
                                    np.random.default_rng([4242, label, i]))
    finally:
        synthetic.SECONDS = default
    return {c.name: len(list(c.glob("*.mp4"))) for c in sorted(root.iterdir()) if c.is_dir()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--clips", type=int, default=6, help="clips per class")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the app uses 1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="per model (default: the Teach tab's, workbench.teach.EPOCHS)")
    p.add_argument("--checkpoints", default="checkpoints")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    import resource

    from workbench.teach import TeachJob, teach_epochs

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_teach_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        counts = make_clips(tmp / "clips", a.classes, a.clips)
        t_make = time.perf_counter() - t0
        t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        job = TeachJob.start(tmp / "clips", tmp / "job", Path(a.checkpoints),
                             epochs=a.epochs or teach_epochs())
        job.thread.join()
        seconds = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        snap = job.snapshot()
    if snap["status"] != "done":
        raise SystemExit(f"training {snap['status']}: {snap['error']}")
    r = snap["result"]
    print(json.dumps({
        "teach_seconds": round(seconds, 1), "target_seconds": 120,
        # CPU seconds of this process: on a shared machine, cpu / threads is what the run
        # would take on idle cores (the wall clock above includes waiting for other jobs)
        "teach_cpu_seconds": round(cpu, 1),
        "idle_estimate_seconds": round(cpu / a.threads, 1),
        "classes": len(counts), "clips": sum(counts.values()), "clip_seconds": "3-5",
        "epochs": snap["plan"], "val_clips": r.get("val_clips"),
        "val_top1": {"mmt": r.get("val_top1"), "audio": r.get("audio_val_top1"),
                     "video": r.get("video_val_top1")},
        "train_top1_mmt": r.get("train_top1"), "make_clips_seconds": round(t_make, 1),
        "torch_threads": a.threads, "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
