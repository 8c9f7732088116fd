import json

import pytest
import torch
from torch import nn

from mmt_core.bench import TV_MVIT, forward_gflops, run_benchmark
from mmt_core.errors import UserError
from mmt_core.models.baselines import ast_b

NUMBERS = ("params_m", "gflops_per_sample", "samples_per_s", "step_s_median", "tflops", "mfu",
           "peak_mem_mb")


@pytest.mark.parametrize("mode,models", [
    ("infer", ["ast_b", "mat_b", "mbt_b", "mmt_b", "mvit_v2_s_video", TV_MVIT]),
    ("train", ["ast_b", "mmt_b", TV_MVIT]),
])
def test_smoke_benchmark_reports_positive_numbers(mode, models):
    rep = run_benchmark(models, device="cpu", mode=mode, steps=2, warmup=0, size="smoke",
                        print_table=False)
    json.dumps(rep)
    assert rep["torch"] == torch.__version__ and rep["device"] and rep["date"]
    assert rep["peak_tflops"] > 0
    assert [r["model"] for r in rep["results"]] == models
    for r in rep["results"]:
        assert "error" not in r, r
        for key in NUMBERS:
            assert isinstance(r[key], float) and r[key] > 0, (r["model"], key, r[key])
        assert len(r["step_s"]) == 2
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / r["step_s_median"])
    assert rep["results"][0]["built"] == "ast_tiny"


def test_flop_count_is_two_per_multiply_add():
    class Tiny(nn.Module):
        input_spec = {"audio": (5,)}

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3, bias=False)

        def forward(self, *, audio):
            return self.fc(audio)

    assert forward_gflops(Tiny, Tiny.input_spec) * 1e9 == pytest.approx(2 * 5 * 3)


def test_ast_b_gflops_include_attention():
    # 2 x 130.4 G multiply-adds: linear layers alone would be 2 x 103 G.
    g = forward_gflops(ast_b, {"audio": (1, 128, 1024)})
    assert 255 < g < 265


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        run_benchmark([], size="smoke", print_table=False)
    with pytest.raises(UserError):
        run_benchmark(["ast_b"], mode="fly", size="smoke", print_table=False)
