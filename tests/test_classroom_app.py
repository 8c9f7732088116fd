"""A small class on the launched app (benchmarks/bench_classroom.py's run_classroom): four
gradio_client students run predict → explain → embed while two of them teach through /teach;
no errors, every answer from one set, no taught class in another student's answers, a switch
in one session changes no other, and nothing of any session is left once the clients close."""
from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("gradio_client")

from wb_helpers import ROOT, serve_app  # noqa: E402

pytestmark = pytest.mark.slow


def bench():
    spec = importlib.util.spec_from_file_location("bench_classroom",
                                                  ROOT / "benchmarks" / "bench_classroom.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classroom")
    for server in serve_app(tmp, MMT_APP_REF_CLIPS="2", MMT_APP_WARMUP="pca",
                            MMT_TEACH_EPOCHS="1", MMT_APP_MAX_SECONDS="12",
                            GRADIO_HEARTBEAT_INTERVAL="2"):  # a closed client is seen in 2 s
        server.cache_dir = tmp / "cache"
        yield server


def test_a_class_of_four_with_two_teachers(app, tmp_path):
    b = bench()
    res = b.run_classroom(app.url, tmp_path, students=4, rounds=2, teachers=2, method="pca")
    assert res["errors"] == [] and res["refusals"] == [], res
    assert res["isolation_violations"] == [], res
    assert sorted(res["taught"]) == [0, 1]  # both taught, each its own two classes
    assert res["taught"][0] == ["s0_bell", "s0_whistle"]
    assert not set(res["taught"][0]) & set(res["demo_classes"])
    assert res["latency_s"]["/predict"]["n"] == 4 * 2 + 2  # + each teacher's switch back
    assert res["queue"]["train_running_max"] <= 1  # one training slot on this machine
    assert b.wait_no_session_files(app.cache_dir, timeout=60) == []
