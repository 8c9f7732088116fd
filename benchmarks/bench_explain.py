"""Seconds per explainer for one built-in clip on the shipped demo checkpoints (CPU).

    python benchmarks/bench_explain.py [--checkpoint checkpoints/mmt_tiny ...] [--runs 3]
                                       [--threads 1]

Writes one built-in clip (class 3, seed 7: the app's example) to a temp dir, prepares it with
each checkpoint's preprocessing, runs every applicable explainer once to warm up and then
`--runs` times, and prints a table (median and min wall seconds, and the median CPU seconds of
this process, which a busy shared machine inflates less) and one JSON line. The target is
<= 10 s per explainer per clip on the project's 2-core CPU; the load average is printed beside,
since the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", default=None,
                   help="checkpoint dir(s) (default: the three shipped ones)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the app uses 1-2)")
    a = p.parse_args()
    import torch

    from mmt_core.checkpoint import load_checkpoint
    from mmt_core.data import synthetic
    from mmt_core.explain import get_explainer, list_explainers
    from mmt_core.inference import prepare_clip

    torch.set_num_threads(a.threads)
    dirs = a.checkpoint or [str(ROOT / "checkpoints" / n)
                            for n in ("mmt_tiny", "mvit_tiny_video", "mat_tiny")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_explain_"))
    clip = tmp / "box_whistle.mp4"
    synthetic.make_clip(clip, 3, synthetic._clip_rng(7, "examples", 3, 0))
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads {a.threads}")
    print(f"{'checkpoint':18s} {'explainer':15s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s}")
    for d in dirs:
        model, meta = load_checkpoint(d, "cpu")
        model.eval()
        inputs = prepare_clip(clip, meta)["inputs"]
        for name in list_explainers(model.modalities):
            fn = get_explainer(name)
            fn(model, inputs, target=3, meta=meta)  # warm-up (imports, first-call allocations)
            times, cpu = [], []
            for _ in range(a.runs):
                t0, c0 = time.perf_counter(), time.process_time()
                fn(model, inputs, target=3, meta=meta)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            row = {"checkpoint": Path(d).name, "explainer": name,
                   "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                   "cpu_s": round(statistics.median(cpu), 3)}
            rows.append(row)
            print(f"{row['checkpoint']:18s} {name:15s} {row['median_s']:9.2f} {row['min_s']:7.2f} "
                  f"{row['cpu_s']:7.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(json.dumps({"runs": a.runs, "threads": a.threads, "results": rows}))


if __name__ == "__main__":
    main()
