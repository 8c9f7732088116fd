"""Throughput, FLOPs, MFU and peak memory of registered models on one device (`mmt bench`).

Method, so numbers from different machines can be compared:
- Inputs are the paper's (fbank 1x128x1024, video 16x224^2) for `size="full"`; `size="smoke"`
  swaps in the tiny variants at their small default inputs (CI).
- A step is one forward (infer: `torch.inference_mode`) or forward + CE backward + AdamW step
  (train). bf16 autocast on CUDA, float32 on CPU. After `warmup` untimed steps, each of `steps`
  steps is timed alone (CUDA synchronised) and samples/s = batch / median step time.
- GFLOPs/sample = 2 x multiply-adds of one forward, counted by torch's FlopCounterMode on the
  meta device (no compute; fused attention counted). A training step is counted as 3 forwards
  (backward ~ 2x forward), the usual MFU convention.
- MFU = achieved FLOP/s / a matmul peak measured in the same run (bf16 8192^2 on CUDA, fp32
  2048^2 on CPU), so it says how much of what this device really delivers the model uses.
- Peak memory: torch.cuda.max_memory_allocated per model; on CPU the process's RSS high-water
  mark (getrusage), which only grows, so run one model per process for per-model CPU memory.
- On a CPU shared with other processes, set OMP_WAIT_POLICY=PASSIVE before torch starts
  (benchmarks/bench_models.py does): spinning OpenMP threads made steps 15-50x slower here.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

TV_MVIT = "tv_mvit_v2_s"  # torchvision's own MViTv2-S, the reference for the video encoder
FULL_INPUTS = dict(num_frames=16, image_size=224, mel_bins=128, audio_frames=1024)
SMOKE_NAMES = {"mat_s": "mat_tiny", "mat_b": "mat_tiny", "ast_b": "ast_tiny", "mbt_b": "mbt_tiny",
               "mmt_s": "mmt_tiny", "mmt_b": "mmt_tiny", "mvit_v2_s_video": "mvit_tiny_video",
               "mvit_v2_b_video": "mvit_tiny_video"}


def _create(name: str, **kw) -> nn.Module:
    try:
        from .registry import create_model
    except ImportError:  # registry not written yet: the baselines still benchmark
        from .models.baselines import BASELINES

        if name not in BASELINES:
            raise UserError(f"unknown model '{name}' (no registry; baselines: {sorted(BASELINES)})")
        return BASELINES[name](**kw)
    return create_model(name, **kw)


def _tv_mvit(size: str) -> tuple[nn.Module, dict]:
    from torchvision.models.video import mvit

    if size == "full":
        return mvit.mvit_v2_s(), {"video": (3, 16, 224, 224)}
    # Smoke: the same class with two small blocks on a 4x32^2 clip.
    blocks = [mvit.MSBlockConfig(num_heads=1, input_channels=c_in, output_channels=c_out,
                                 kernel_q=[3, 3, 3], kernel_kv=[3, 3, 3], stride_q=s_q,
                                 stride_kv=s_kv)
              for c_in, c_out, s_q, s_kv in ((16, 32, [1, 1, 1], [1, 2, 2]), (32, 32, [1, 2, 2], [1, 1, 1]))]
    model = mvit.MViT(spatial_size=(32, 32), temporal_size=4, block_setting=blocks, residual_pool=True,
                      residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True,
                      num_classes=10)
    return model, {"video": (3, 4, 32, 32)}


def build(name: str, size: str = "full") -> tuple[nn.Module, dict, str]:
    """(model, input shapes without batch, name actually built) for one benchmark entry."""
    if size not in ("full", "smoke"):
        raise ValueError(f"size must be 'full' or 'smoke', got {size!r}")
    if name == TV_MVIT:
        return (*_tv_mvit(size), TV_MVIT)
    if size == "smoke":
        built = SMOKE_NAMES.get(name, name)
        model = _create(built)
    else:
        built = name
        model = _create(name, **FULL_INPUTS)
    return model, dict(model.input_spec), built


def _forward(model: nn.Module, inputs: dict):
    if isinstance(model, nn.Module) and not hasattr(model, "input_spec"):  # torchvision: positional
        return model(inputs["video"])
    return model(**inputs)


def _logits(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out.head_logits.values())


def forward_gflops(model_fn, spec: dict) -> float:
    """2 x multiply-adds of one forward at batch 1, counted on the meta device (no compute).

    A model that cannot run on meta is counted on the CPU with the math attention kernel: the
    counter does not see the CPU's fused attention kernel and would miss the QK^T and AV bmms.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # Frozen parameters instead of no_grad: under no_grad, a view of a parameter (an expanded
    # token) requires grad without a grad_fn and the counter's module tracker asserts (torch 2.14).
    counter = FlopCounterMode(display=False)
    try:
        with torch.device("meta"):
            model = model_fn().requires_grad_(False)
            inputs = {k: torch.empty(1, *s) for k, s in spec.items()}
        with counter:
            _forward(model, inputs)
    except (NotImplementedError, RuntimeError):
        model = model_fn().eval().requires_grad_(False)
        inputs = {k: torch.randn(1, *s) for k, s in spec.items()}
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            _forward(model, inputs)
    return counter.get_total_flops() / 1e9


def matmul_peak_tflops(device: str, seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matmul: bf16 8192^2 on CUDA, fp32 2048^2 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, t_end = float("inf"), time.perf_counter() + seconds
    for i in range(1000):
        _sync(device)
        t0 = time.perf_counter()
        reps = 10 if device == "cuda" else 1
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
        if i >= 2 and time.perf_counter() > t_end:
            break
    return 2 * n ** 3 / best / 1e12


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def bench_model(name: str, *, device: str, mode: str, batch_size: int, steps: int, warmup: int,
                size: str, peak_tflops: float, time_budget_s: float | None = None) -> dict:
    """Measure one model; see the module docstring for the method."""
    model, spec, built = build(name, size)
    gflops = forward_gflops(lambda: build(name, size)[0], spec)
    params = sum(p.numel() for p in model.parameters())
    model = model.to(device).train(mode == "train")
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {k: torch.randn(batch_size, *s, generator=gen).to(device) for k, s in spec.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
           else torch.autocast("cpu", enabled=False))  # float32 on CPU

    def step():
        if opt is None:
            with torch.inference_mode(), amp:
                return _forward(model, inputs)
        with amp:
            logits = _logits(_forward(model, inputs))
            loss = sum(F.cross_entropy(lg.float(), torch.zeros(batch_size, dtype=torch.long, device=device))
                       for lg in logits)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    _sync(device)
    times, t_start = [], time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
            break
    med = statistics.median(times)
    sps = batch_size / med
    achieved = gflops * (3 if mode == "train" else 1) * sps / 1e3  # TFLOP/s
    if device == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    del model, opt, inputs
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"model": name, "built": built, "batch_size": batch_size,
            "inputs": {k: list(s) for k, s in spec.items()}, "params_m": params / 1e6,
            "gflops_per_sample": gflops, "samples_per_s": sps, "step_s_median": med,
            "step_s": times, "tflops": achieved, "mfu": achieved / peak_tflops,
            "peak_mem_mb": mem, "mem_kind": "cuda_max_allocated" if device == "cuda" else "rss_high_water"}


def _defaults(device: str, mode: str, spec_has_video: bool) -> tuple[int, int, int]:
    """(batch, steps, warmup) per device: batch 1 inference on CPU, a GPU-filling batch on CUDA."""
    if device == "cuda":
        return (16 if spec_has_video else 32), 10, 3
    return (1 if mode == "infer" else 2), 5, 1


def run_benchmark(models: list[str], device: str = "cpu", mode: str = "infer",
                  batch_size: int | None = None, steps: int | None = None,
                  warmup: int | None = None, size: str = "full", print_table: bool = True,
                  threads: int | None = None, time_budget_s: float | None = None,
                  peak_tflops: float | None = None) -> dict:
    """Benchmark each model in turn; returns JSON-ready results (and prints a table to stderr).

    `time_budget_s` caps each model's timed loop; `peak_tflops` reuses a peak measured earlier.
    """
    if mode not in ("infer", "train"):
        raise UserError(f"mode must be 'infer' or 'train', got '{mode}'")
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be 'cpu' or 'cuda', got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if not models:
        raise UserError("no models to benchmark")
    if threads:
        torch.set_num_threads(threads)
    peak = peak_tflops or matmul_peak_tflops(device)
    report = {"device": _device_name(device), "device_type": device, "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "threads": torch.get_num_threads(), "mode": mode, "size": size,
              "load_avg_1min": os.getloadavg()[0],  # other work on the machine skews CPU timings
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
              "peak_tflops": peak, "peak_kind": "bf16 matmul" if device == "cuda" else "fp32 matmul",
              "results": []}
    for name in models:
        has_video = name == TV_MVIT or any(t in name for t in ("mmt", "mbt", "video"))
        b, s, w = _defaults(device, mode, has_video)
        try:
            r = bench_model(name, device=device, mode=mode, batch_size=batch_size or b,
                            steps=steps or s, warmup=w if warmup is None else warmup, size=size,
                            peak_tflops=peak, time_budget_s=time_budget_s)
        except torch.cuda.OutOfMemoryError as e:  # record it and go on with the other models
            torch.cuda.empty_cache()
            r = {"model": name, "error": f"out of memory: {str(e).splitlines()[0]}"}
        report["results"].append(r)
        if print_table:
            _print_row(r, first=len(report["results"]) == 1, report=report)
    return report


def interleaved_infer(models: list[str], *, batch_size: int = 1, steps: int = 5, warmup: int = 1,
                      size: str = "full", threads: int | None = None) -> dict:
    """CPU inference of several models in rotation (A, B, A, B, ...), so that load from other
    processes on a shared machine falls on all of them alike; medians and speed-ups vs the last
    model. This is the fair way to state a ratio such as MAT-B vs AST-B on a busy machine."""
    if threads:
        torch.set_num_threads(threads)
    built = {m: build(m, size) for m in models}
    gen = torch.Generator().manual_seed(0)
    inputs = {m: {k: torch.randn(batch_size, *s, generator=gen) for k, s in spec.items()}
              for m, (_, spec, _) in built.items()}
    times = {m: [] for m in models}
    cpu = {m: [] for m in models}  # process CPU seconds (all threads): less sensitive to load
    with torch.inference_mode():
        for i in range(warmup + steps):
            for m, (model, _, _) in built.items():
                model.eval()
                t0, c0 = time.perf_counter(), time.process_time()
                _forward(model, inputs[m])
                if i >= warmup:
                    times[m].append(time.perf_counter() - t0)
                    cpu[m].append(time.process_time() - c0)
    med = {m: statistics.median(t) for m, t in times.items()}
    cpu_med = {m: statistics.median(t) for m, t in cpu.items()}
    ref = models[-1]
    return {"device": _device_name("cpu"), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "batch_size": batch_size,
            "step_s": times, "step_s_median": med, "cpu_s_median": cpu_med,
            f"speedup_vs_{ref}": {m: med[ref] / med[m] for m in models},
            f"cpu_speedup_vs_{ref}": {m: cpu_med[ref] / cpu_med[m] for m in models}}


def _print_row(r: dict, *, first: bool, report: dict) -> None:
    if first:
        print(f"# {report['device']} | torch {report['torch']} | {report['mode']} | "
              f"matmul peak {report['peak_tflops']:.2f} TFLOP/s ({report['peak_kind']})", file=sys.stderr)
        print(f"{'model':<18}{'batch':>6}{'samples/s':>11}{'GFLOPs':>9}{'TFLOP/s':>9}{'MFU%':>7}"
              f"{'mem MB':>9}{'params M':>9}", file=sys.stderr)
    if "error" in r:
        print(f"{r['model']:<18} {r['error']}", file=sys.stderr)
        return
    print(f"{r['model']:<18}{r['batch_size']:>6}{r['samples_per_s']:>11.2f}{r['gflops_per_sample']:>9.1f}"
          f"{r['tflops']:>9.3f}{100 * r['mfu']:>7.1f}{r['peak_mem_mb']:>9.0f}{r['params_m']:>9.1f}",
          file=sys.stderr)
