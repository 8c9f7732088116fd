"""A small class on the launched app (benchmarks/bench_classroom.py's run_classroom): four
gradio_client students run predict → explain → embed while two of them teach through /teach;
no errors, every answer from one set, no taught class in another student's answers, a switch
in one session changes no other, and nothing of any session is left once the clients close."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")

from wb_helpers import load_script, serve_app  # noqa: E402

pytestmark = pytest.mark.slow


def bench():
    return load_script("benchmarks/bench_classroom.py")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classroom")
    yield from serve_app(tmp, MMT_APP_REF_CLIPS="2", MMT_APP_WARMUP="pca",
                         MMT_TEACH_EPOCHS="1", MMT_APP_MAX_SECONDS="12",
                         GRADIO_HEARTBEAT_INTERVAL="2")  # a closed client is seen in 2 s


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


def test_the_file_route_serves_no_teach_file_and_redirects_nowhere(app):
    """gradio's /gradio_api/file= neither redirects to another site (the open redirect of
    gradio 6.15-6.17, docs/security.md) nor serves the teach folders (blocked_paths)."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    secret = app.cache_dir / "teach" / "sessions" / "someone" / "knock" / "a.mp4"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(b"not for other students")
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(f"{app.url}gradio_api/file={secret}", timeout=10)
    assert e.value.code in (403, 404)
    try:  # 6.31 fetches public URLs itself (no network here: an error), never redirects
        code = opener.open(f"{app.url}gradio_api/file=https://example.com/x", timeout=30).status
    except urllib.error.HTTPError as err:
        code = err.code
    except OSError:
        code = None
    assert code is None or not 300 <= code < 400, code
