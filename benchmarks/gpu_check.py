"""The check to run on the first GPU (issue 35): training throughput, peak memory, MFU and the
SDPA backends of `mmt_b` and `mat_b` at the paper's sizes. Prints one JSON document on stdout.

    python benchmarks/gpu_check.py                # one H100: eager and compiled, checkpointing off/on
    python benchmarks/gpu_check.py --no-compile   # eager only, a few minutes less
    python benchmarks/gpu_check.py --tiny         # CPU smoke (the test): mmt_tiny, mat_tiny, seconds

A step is the engine's (engine.train): B clips per GPU (paper: 8), their two IMC views
concatenated into ONE forward of 2B, bf16 autocast on CUDA (float32 on CPU), loss = CE + AVC +
IMC (`losses.compute_losses`, the LossConfig defaults, epoch 1), backward, grad-norm clip 1.0,
fused AdamW. Models as the recipes build them (configs/vggsound_*.yaml: drop_path 0.3). Inputs
are random tensors already on the device: the loader has its own benchmark (bench_loader.py).

Runs: for each model, grad checkpointing off and on (`set_grad_checkpointing`), eager first, then
with torch.compile (inductor) of the forward + loss, unless --no-compile. Compiling MViT-B / MAT-B
can take minutes (/work/shared/REFERENCES.md: MAT-B did not compile in 6 min once), so each
compiled run is a child process killed at --deadline-s; a run that would start after the deadline
is listed as skipped. One call therefore ends within about the deadline plus start-up.

Numbers, per run:
- samples_per_s: clips per second = B / median step time (each clip is two forward samples);
- mfu: 3 x forward FLOPs per sample (`bench.forward_gflops`: FlopCounterMode on the meta device,
  attention included) x 2B / median step time / --peak-tflops (989: H100 SXM bf16 dense).
  Model FLOPs: checkpointing's recomputation does not count;
- peak_mem_gb: torch.cuda.max_memory_allocated over the run (CPU: the process's RSS high-water
  mark, which only grows);
- compile_s: the first step of a compiled run (compilation included).
Per model, `sdpa`: every F.scaled_dot_product_attention call of one eager training forward, as
the kernel sees it (after autocast's casts): the backend the dispatcher picks
(`torch._fused_sdp_choice`), on CUDA whether flash / efficient / cuDNN attention could take it
(`torch.backends.cuda.can_use_*`, with their reasons when not), counted per backend, and the
distinct call signatures (shapes, strides, dtypes).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see benchmarks/bench_models.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from mmt_core.bench import FULL_INPUTS, SMOKE_NAMES, _device_name, forward_gflops  # noqa: E402
from mmt_core.config import LossConfig  # noqa: E402
from mmt_core.engine import split_output  # noqa: E402
from mmt_core.losses import compute_losses  # noqa: E402
from mmt_core.registry import create_model  # noqa: E402

MODELS = ("mmt_b", "mat_b")
MODEL_ARGS = dict(drop_path=0.3)  # configs/vggsound_mmt_b.yaml, vggsound_mat_b.yaml
H100_BF16_DENSE_TFLOPS = 989.0


def _build(name: str, tiny: bool):
    """(model, name built): the paper's input sizes, or the tiny variant at its own defaults."""
    if tiny:
        built = SMOKE_NAMES.get(name, name)
        return create_model(built, **MODEL_ARGS), built
    return create_model(name, **FULL_INPUTS, **MODEL_ARGS), name


def _batch(model, clips: int, device: str, seed: int = 0) -> tuple[dict, dict]:
    """Random inputs of two views concatenated along the batch (2B, ...) and labels (B,)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {k: torch.randn(2 * clips, *s, generator=g).to(device) for k, s in model.input_spec.items()}
    labels = {h: torch.randint(0, m.out_features, (clips,), generator=g).to(device)
              for h, m in model.heads.items()}
    return inputs, labels


def _autocast(device: str):
    # The engine's precision: bf16 autocast on CUDA, float32 on the CPU.
    return torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")


def _tensor_info(t) -> dict | None:
    if t is None:
        return None
    return {"shape": list(t.shape), "stride": list(t.stride()), "dtype": str(t.dtype).replace("torch.", ""),
            "requires_grad": t.requires_grad}


class SDPARecorder(TorchFunctionMode):
    """Sees each F.scaled_dot_product_attention call, casts its tensors as autocast would for the
    kernel, and asks the dispatcher which backend it picks; the call itself then runs normally."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls.append(probe_sdpa(*args, **kwargs))
        return func(*args, **kwargs)


def probe_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False) -> dict:
    dev = q.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):  # autocast casts every float input
        dt = torch.get_autocast_dtype(dev)
        q, k, v, attn_mask = (t.to(dt) if t is not None and t.is_floating_point()
                              and t.dtype != torch.float64 else t for t in (q, k, v, attn_mask))
    choice = torch._fused_sdp_choice(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                     enable_gqa=enable_gqa)
    call = {"backend": SDPBackend(choice).name, "q": _tensor_info(q), "k": _tensor_info(k),
            "v": _tensor_info(v), "mask": _tensor_info(attn_mask)}
    if dev == "cuda":
        params = torch.backends.cuda.SDPAParams(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa)
        checks = {"flash": torch.backends.cuda.can_use_flash_attention,
                  "efficient": torch.backends.cuda.can_use_efficient_attention,
                  "cudnn": torch.backends.cuda.can_use_cudnn_attention}
        call["can_use"], call["why_not"] = {}, {}
        for name, check in checks.items():
            with warnings.catch_warnings(record=True) as caught:  # debug=True warns the reasons
                warnings.simplefilter("always")
                call["can_use"][name] = bool(check(params, True))
            if not call["can_use"][name]:
                call["why_not"][name] = [str(w.message).splitlines()[0] for w in caught]
    return call


def sdpa_report(model, inputs: dict, device: str) -> dict:
    """The SDPA calls of one eager training forward (autograd on, as in training)."""
    rec = SDPARecorder()
    with _autocast(device), rec:
        model(**inputs)
    counts: dict[str, int] = {}
    distinct: dict[str, dict] = {}
    for c in rec.calls:
        counts[c["backend"]] = counts.get(c["backend"], 0) + 1
        key = json.dumps({k: c[k] for k in ("q", "k", "v", "mask")}, sort_keys=True)
        distinct.setdefault(key, {**c, "n": 0})["n"] += 1
    return {"calls": len(rec.calls), "counts": counts, "distinct": list(distinct.values())}


def _peak_mem_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def train_run(name: str, *, tiny: bool, device: str, clips: int, warmup: int, steps: int,
              grad_checkpoint: bool, compile_: bool, gflops: float, peak_tflops: float,
              time_budget_s: float, compile_backend: str = "inductor") -> dict:
    """Warm-up + timed training steps of one configuration; see the module docstring."""
    torch.manual_seed(0)
    model, _ = _build(name, tiny)
    model = model.to(device).train()
    model.set_grad_checkpointing(grad_checkpoint)
    inputs, labels = _batch(model, clips, device)
    loss_cfg = LossConfig()  # CE + AVC + IMC, the paper's loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=device == "cuda")

    def loss_of(inputs, labels):
        out, out2 = split_output(model(**inputs), clips)
        return compute_losses(out, labels, cfg=loss_cfg, epoch=1, out2=out2)["total"]

    forward = torch.compile(loss_of, backend=compile_backend) if compile_ else loss_of

    def step():
        with _autocast(device):
            loss = forward(inputs, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = {"model": name, "compile": compile_, "grad_checkpoint": grad_checkpoint}
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        sync()
        dt = time.perf_counter() - t0
        if i == 0 and compile_:
            run["compile_s"] = dt
        if i >= warmup:
            times.append(dt)
            if sum(times) > time_budget_s:
                break
    med = statistics.median(times)
    tflops = 3 * gflops * 2 * clips / med / 1e3  # 2B forward samples per step
    run.update(samples_per_s=clips / med, step_s_median=med, step_s=times, tflops=tflops,
               mfu=tflops / peak_tflops, peak_mem_gb=_peak_mem_gb(device))
    return run


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke: mmt_tiny / mat_tiny at their defaults, batch 2, 2 steps, no compile")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=None, help="clips per GPU (default 8; --tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; --tiny 0)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; --tiny 2)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default cuda; --tiny cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; with --tiny, compiled runs happen "
                        "only when this is given, e.g. aot_eager to check tracing on the CPU)")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                   help="the device's peak for MFU (989: H100 SXM bf16 dense)")
    p.add_argument("--deadline-s", type=float, default=450.0,
                   help="no run starts after this many seconds and compiled runs are killed at it")
    p.add_argument("--run-budget-s", type=float, default=60.0, help="cap on one run's timed steps")
    # Internal: one compiled run in a child process ("MODEL,CKPT"), its FLOPs given by the parent.
    p.add_argument("--child-run", default=None, help=argparse.SUPPRESS)
    p.add_argument("--gflops", type=float, default=None, help=argparse.SUPPRESS)
    return p


def _child(a, name: str, ckpt: bool, gflops: float, timeout: float) -> dict:
    """One compiled run in a fresh process, killed after `timeout` seconds."""
    cmd = [sys.executable, __file__, "--child-run", f"{name},{int(ckpt)}", "--gflops", str(gflops),
           "--peak-tflops", str(a.peak_tflops), "--run-budget-s", str(a.run_budget_s)]
    for flag in ("batch", "warmup", "steps", "device", "compile_backend"):
        if getattr(a, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
    cmd += ["--tiny"] if a.tiny else []
    run = {"model": name, "compile": True, "grad_checkpoint": ckpt}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**run, "error": f"timeout: not done {timeout:.0f} s after its start (compilation included)"}
    if proc.returncode != 0:
        return {**run, "error": f"child exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}"}
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    t_start = time.perf_counter()
    device = a.device or ("cpu" if a.tiny else "cuda")
    clips = a.batch or (2 if a.tiny else 8)
    warmup = a.warmup if a.warmup is not None else (0 if a.tiny else 3)
    steps = a.steps or (2 if a.tiny else 10)
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --tiny for the CPU smoke run)", file=sys.stderr)
        return 2
    if clips < 1 or steps < 1 or warmup < 0:
        print("error: --batch and --steps must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    backend = a.compile_backend or "inductor"
    if a.child_run:
        name, ckpt = a.child_run.split(",")
        r = train_run(name, tiny=a.tiny, device=device, clips=clips, warmup=warmup, steps=steps,
                      grad_checkpoint=ckpt == "1", compile_=True, gflops=a.gflops,
                      peak_tflops=a.peak_tflops, time_budget_s=a.run_budget_s, compile_backend=backend)
        print(json.dumps(r))
        return 0
    notes = []
    compiled = not a.no_compile and not (a.tiny and a.compile_backend is None)
    if a.no_compile:
        notes.append("compile: skipped (--no-compile)")
    elif not compiled:
        notes.append("compile: skipped (--tiny: inductor on the CPU would take minutes)")
    else:
        notes.append("compiled runs: each in a child process killed at the deadline; compile_s is "
                     "its first step, compilation included; the SDPA report is of the eager model "
                     "(inductor may pick other kernels)")
    report = {"tool": "gpu_check", "device": _device_name(device), "device_type": device,
              "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "tiny": a.tiny, "clips_per_step": clips, "forward_batch": 2 * clips,
              "warmup": warmup, "steps": steps, "peak_tflops": a.peak_tflops,
              "precision": "bf16 autocast" if device == "cuda" else "float32",
              "loss": "ce + avc + imc (compute_losses, LossConfig defaults, epoch 1)",
              "compile_backend": backend if compiled else None,
              "model_args": MODEL_ARGS, "models": {}, "runs": [], "notes": notes}
    names = [n for n in a.models.split(",") if n]
    for name in names:
        model, built = _build(name, a.tiny)
        info = {"built": built, "inputs": {k: list(s) for k, s in model.input_spec.items()},
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "gflops_per_sample": forward_gflops(lambda: _build(name, a.tiny)[0], model.input_spec)}
        try:
            model = model.to(device).train()
            info["sdpa"] = sdpa_report(model, _batch(model, clips, device)[0], device)
        except torch.cuda.OutOfMemoryError as e:
            info["sdpa"] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
        report["models"][name] = info
        del model
        _free(device)
    # Eager runs first (the numbers that matter most), then compiled ones without checkpointing
    # before those with it.
    plan = [(n, c, False) for n in names for c in (False, True)]
    plan += [(n, c, True) for c in (False, True) for n in names] if compiled else []
    for name, ckpt, compile_ in plan:
        gflops = report["models"][name]["gflops_per_sample"]
        elapsed = time.perf_counter() - t_start
        left = a.deadline_s - elapsed
        if left <= 0:
            r = {"model": name, "compile": compile_, "grad_checkpoint": ckpt,
                 "error": f"skipped: {elapsed:.0f} s elapsed, deadline {a.deadline_s:.0f} s"}
        elif compile_:
            r = _child(a, name, ckpt, gflops, timeout=left)
        else:
            try:
                r = train_run(name, tiny=a.tiny, device=device, clips=clips, warmup=warmup,
                              steps=steps, grad_checkpoint=ckpt, compile_=False, gflops=gflops,
                              peak_tflops=a.peak_tflops, time_budget_s=a.run_budget_s)
            except torch.cuda.OutOfMemoryError as e:
                r = {"model": name, "compile": False, "grad_checkpoint": ckpt,
                     "error": f"out of memory: {str(e).splitlines()[0]}"}
            except Exception as e:  # one failing configuration must not lose the others
                r = {"model": name, "compile": False, "grad_checkpoint": ckpt,
                     "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
            _free(device)
        report["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "step_s"}), file=sys.stderr)
    report["wall_s"] = time.perf_counter() - t_start
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
