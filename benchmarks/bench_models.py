"""Benchmark models and print one JSON document on stdout (the table goes to stderr).

    python benchmarks/bench_models.py --models mat_b,ast_b                  # CPU, batch-1 inference
    python benchmarks/bench_models.py --models mat_b,ast_b --repeat-process # per-model CPU memory
    python benchmarks/bench_models.py --models mat_b,ast_b --interleave     # fair ratio, busy CPU
    python benchmarks/bench_models.py --gpu                                 # the issue-6 table, <= 8 min

`--gpu` runs train (AdamW, bf16 autocast) and then inference for the video baseline and every
paper model on CUDA, with a time budget per model and a deadline for the whole run: a model that
does not start before the deadline is listed as skipped, so one call always finishes.
See mmt_core/bench.py for the method (median step time, meta-device FLOP count, measured peak).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: with the default (active, spinning) wait policy, 2 threads on 2 cores
# that other processes also use ran a tiny model 15-50x slower here; passive waiting does not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from mmt_core.bench import TV_MVIT, interleaved_infer, matmul_peak_tflops, run_benchmark  # noqa: E402

GPU_MODELS = [TV_MVIT, "mvit_v2_s_video", "ast_b", "mat_b", "mbt_b", "mmt_b"]
GPU_DEADLINE_S = 420.0  # leave a minute of the 8 for start-up and the last model's tail
GPU_MODEL_BUDGET_S = {"train": 25.0, "infer": 10.0}  # timed-loop cap per model


def gpu_preset(models: list[str], device: str = "cuda", size: str = "full") -> dict:
    t0 = time.perf_counter()
    peak = matmul_peak_tflops(device)  # once, so every row divides by the same peak
    out = {"preset": "gpu", "runs": []}
    for mode in ("train", "infer"):
        run = {"mode": mode, "results": []}
        for name in models:
            if time.perf_counter() - t0 > GPU_DEADLINE_S:
                rep = {"results": [{"model": name, "error": "skipped: preset deadline reached"}]}
            else:
                try:
                    rep = run_benchmark([name], device=device, mode=mode, steps=20, size=size,
                                        time_budget_s=GPU_MODEL_BUDGET_S[mode], peak_tflops=peak)
                except Exception as e:  # one broken model must not lose the others' numbers
                    rep = {"results": [{"model": name, "error": f"{type(e).__name__}: {e}"}]}
            for k, v in rep.items():  # device, torch, date, peak of the first model that ran
                if k != "results":
                    run.setdefault(k, v)
            run["results"] += rep["results"]
        out["runs"].append(run)
    out["wall_s"] = time.perf_counter() - t0
    return out


def per_process(args) -> dict:
    """One fresh interpreter per model, so the CPU RSS high-water mark is that model's alone."""
    results, head = [], None
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--models", name, "--device", args.device, "--mode",
               args.mode, "--size", args.size, "--threads", str(args.threads)]
        for flag in ("batch_size", "steps", "warmup"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        rep = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        head = head or {k: v for k, v in rep.items() if k != "results"}
        results += rep["results"]
        r = rep["results"][0]
        print(f"{name}: {r.get('samples_per_s', 0):.3f} samples/s, "
              f"{r.get('step_s_median', 0):.3f} s/step, {r.get('peak_mem_mb', 0):.0f} MB",
              file=sys.stderr)
    return {**head, "results": results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mat_b,ast_b")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mode", default="infer", choices=["infer", "train"])
    p.add_argument("--size", default="full", choices=["full", "smoke"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (this machine: 2)")
    p.add_argument("--repeat-process", action="store_true", help="one process per model (CPU memory)")
    p.add_argument("--interleave", action="store_true",
                   help="CPU inference of the models in rotation: a fair ratio on a busy machine")
    p.add_argument("--gpu", action="store_true", help="the issue-6 CUDA table, bounded to ~8 min")
    args = p.parse_args()
    if args.gpu:
        rep = gpu_preset(args.models.split(",") if args.models != "mat_b,ast_b" else GPU_MODELS)
    elif args.interleave:
        rep = interleaved_infer(args.models.split(","), batch_size=args.batch_size or 1,
                                steps=args.steps or 5, warmup=1 if args.warmup is None else args.warmup,
                                size=args.size, threads=args.threads)
    elif args.repeat_process:
        rep = per_process(args)
    else:
        rep = run_benchmark(args.models.split(","), device=args.device, mode=args.mode,
                            batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                            size=args.size, threads=args.threads)
    print(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
