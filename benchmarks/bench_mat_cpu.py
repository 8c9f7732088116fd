"""MAT-B vs AST-B batch-1 CPU inference, in one process, printed as one JSON document.

    python benchmarks/bench_mat_cpu.py                       # 1 thread, CPU time, 3 repeats
    python benchmarks/bench_mat_cpu.py --threads 2 --repeats 3
    python benchmarks/bench_mat_cpu.py --models mat_b         # MAT-B alone (quick iteration)

The machine is shared, so the main number is process CPU time (`time.process_time`), which load
from other processes barely changes; wall-clock is reported too. Models run in rotation
(A, B, A, B, ...) after one warm-up forward each, under inference_mode; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (shared cores)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402

from mmt_core.registry import create_model  # noqa: E402

INPUTS = dict(mel_bins=128, audio_frames=1024)  # (1, 1, 128, 1024) log-mel, as in the paper


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mat_b,ast_b", help="comma list; ratios are vs the last")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    models = {n: create_model(n, **INPUTS).eval() for n in names}
    x = torch.randn(1, 1, INPUTS["mel_bins"], INPUTS["audio_frames"], generator=torch.Generator().manual_seed(0))
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        for i in range(1 + args.repeats):
            for n, m in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                m(audio=x)
                if i:  # the first round is the warm-up
                    cpu[n].append(time.process_time() - c0)
                    wall[n].append(time.perf_counter() - t0)
    load.append(os.getloadavg()[0])
    cpu_med = {n: statistics.median(v) for n, v in cpu.items()}
    wall_med = {n: statistics.median(v) for n, v in wall.items()}
    ref = names[-1]
    print(json.dumps({
        "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
        "load_avg_1min_start_end": load, "cpu_s": cpu, "wall_s": wall,
        "cpu_s_median": cpu_med, "wall_s_median": wall_med,
        f"cpu_speedup_vs_{ref}": {n: cpu_med[ref] / cpu_med[n] for n in names},
        f"wall_speedup_vs_{ref}": {n: wall_med[ref] / wall_med[n] for n in names},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
