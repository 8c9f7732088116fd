"""benchmarks/gpu_check.py in its CPU tiny mode, as a user runs it (a subprocess printing JSON)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_gpu_check_prints_sane_json():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    assert rep["tiny"] and rep["device_type"] == "cpu" and rep["clips_per_step"] == 2
    assert rep["forward_batch"] == 4 and rep["steps"] == 2 and rep["peak_tflops"] == 989.0
    assert any("compile: skipped" in n for n in rep["notes"]) and rep["compile_backend"] is None
    assert set(rep["models"]) == {"mmt_b", "mat_b"}
    assert {m["built"] for m in rep["models"].values()} == {"mmt_tiny", "mat_tiny"}
    backends = set(SDPBackend.__members__)
    for name, m in rep["models"].items():
        assert m["params_m"] > 0 and m["gflops_per_sample"] > 0
        sdpa = m["sdpa"]
        assert sdpa["calls"] > 0 and sum(sdpa["counts"].values()) == sdpa["calls"]
        assert set(sdpa["counts"]) <= backends - {"ERROR"}
        assert sum(d["n"] for d in sdpa["distinct"]) == sdpa["calls"]
        masked = [d for d in sdpa["distinct"] if d["mask"] is not None]
        assert masked, name  # the grid queries carry the rel-pos bias
        for d in masked:  # padded to 8 columns: every stride but the last a multiple of 8
            assert d["mask"]["stride"][-1] == 1 and all(s % 8 == 0 for s in d["mask"]["stride"][:-1]), d
            assert d["mask"]["shape"][-1] == d["k"]["shape"][-2]
            assert d["mask"]["dtype"] == d["q"]["dtype"] == "float32"  # no autocast on the CPU
    runs = rep["runs"]
    assert [(r["model"], r["grad_checkpoint"], r["compile"]) for r in runs] == [
        ("mmt_b", False, False), ("mmt_b", True, False), ("mat_b", False, False), ("mat_b", True, False)]
    for r in runs:
        assert "error" not in r, r
        assert len(r["step_s"]) == 2 and all(t > 0 for t in r["step_s"])
        assert r["samples_per_s"] == 2 / r["step_s_median"]
        assert 0 < r["mfu"] < 1 and r["tflops"] > 0 and r["peak_mem_gb"] > 0
        gflops = rep["models"][r["model"]]["gflops_per_sample"]
        assert abs(r["tflops"] - 3 * gflops * 4 / r["step_s_median"] / 1e3) < 1e-9
    assert rep["wall_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_gpu_check_without_cuda_is_a_one_line_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--models", "mat_b"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no CUDA device")
    assert proc.stdout == ""
