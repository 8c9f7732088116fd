"""The launched app through gradio_client: predict / explain / embed / ablations, bad uploads."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")

from conftest import make_media  # noqa: E402
from wb_helpers import serve_app  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("app"),
                         MMT_APP_REF_CLIPS="2",  # a 12-clip reference set keeps the first launch short
                         MMT_APP_WARMUP="pca",  # UMAP's JIT is covered by test_embeddings
                         MMT_APP_MAX_SECONDS="6", MMT_APP_MAX_MB="1")


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from mmt_core.data.synthetic import make_clip
    import numpy as np

    path = tmp_path_factory.mktemp("clip") / "star_drum.mp4"
    make_clip(path, 4, np.random.default_rng(5))
    return path


def test_predict_explain_embed(client, clip):
    from gradio_client import handle_file

    mmt, audio, video, frames, spec, notes = client.predict(handle_file(str(clip)),
                                                            api_name="/predict")
    for label in (mmt, audio, video):
        conf = label["confidences"]
        assert len(conf) == 5 and label["label"] == conf[0]["label"]
        assert all(0.0 <= c["confidence"] <= 1.0 for c in conf)
        assert sum(c["confidence"] for c in conf) <= 1.0 + 1e-4
    assert len(frames) == 8 and spec is not None and notes == ""

    cam_mmt, cam_video, audio_plot, md = client.predict(handle_file(str(clip)), "star_drum",
                                                        api_name="/explain")
    assert len(cam_mmt) == 8 and len(cam_video) == 8 and audio_plot is not None
    assert "star_drum" in md and "stages 1 + 2 (default)" in md
    fine_mmt, _, _, md = client.predict(handle_file(str(clip)), "star_drum", 0, api_name="/explain")
    assert len(fine_mmt) == 8 and "stage 1 (finer map)" in md
    late_mmt, _, _, md = client.predict(handle_file(str(clip)), "star_drum", -2, api_name="/explain")
    assert len(late_mmt) == 8 and "block before the last" in md
    # the method as a fourth, optional input; the pointing game on the built-in test clips
    rel_mmt, rel_video, _, md = client.predict(handle_file(str(clip)), "star_drum", -2,
                                               "relevance", api_name="/explain")
    assert len(rel_mmt) == 8 and len(rel_video) == 8 and "Attention relevance" in md
    assert "Pointing game" in md and ("centre baseline" in md or "not computed" in md)
    con_mmt, con_video, _, md = client.predict(handle_file(str(clip)), "star_drum", -2,
                                               "audio_contrast", api_name="/explain")
    assert len(con_mmt) == 8 and not con_video and "Audio contrast" in md
    assert "White box" not in md  # an upload without a sidecar: no box

    p1, p2, p3, scores, md = client.predict(handle_file(str(clip)), "pca", "mmt",
                                            api_name="/embed")
    assert all(p is not None for p in (p1, p2, p3))
    rows = scores["data"]
    assert [r[:2] for r in rows] == [["mat_tiny", "audio"], ["mvit_tiny_video", "video"],
                                     ["mmt_tiny", "audio"], ["mmt_tiny", "video"],
                                     ["mmt_tiny", "fused"]]
    assert all(0.0 <= r[3] <= 1.0 for r in rows)
    assert "12 built-in test clips" in md


def test_explain_draws_the_box_on_a_builtin_example(client, tmp_path):
    """An example clip (the same bytes as the app's, uploaded under another name) is found by
    content, and its sounding object's box is drawn."""
    from gradio_client import handle_file

    from mmt_core.data import synthetic

    ex = tmp_path / "upload.mp4"  # the app's example of class 3 (seed 7, split "examples")
    synthetic.make_clip(ex, 3, synthetic._clip_rng(7, "examples", 3, 0))
    cam_mmt, _, _, md = client.predict(handle_file(str(ex)), "box_whistle", -2, "gradcam",
                                       api_name="/explain")
    assert len(cam_mmt) == 8 and "White box: the sounding object." in md


def test_ablations_tab_shows_the_shipped_table_2_rows(client):
    import json

    from wb_helpers import ROOT

    shipped = json.loads((ROOT / "checkpoints" / "ablations.json").read_text())
    table, plot, md = client.predict(api_name="/ablations")
    rows = table["data"]
    assert [r[0] for r in rows] == list(shipped) and len(rows) == 7
    for (name, top1, top1_sd, cam, cam_sd, best, best_acc, best_sd, seeds, steps) in rows:
        r = shipped[name]
        assert top1 == round(100 * r["top1"], 1) and 0 <= top1 <= 100 and top1_sd >= 0
        assert seeds == len(r["seeds"]) >= 3 and steps == r["steps"]
        if name == "avg" or "v" in r["overrides"].get("model_args.modalities", "av"):
            # every row with a video encoder: Grad-CAM and the best explainer, each with an sd
            assert 0 <= cam <= best_acc <= 1 and best in r["explainers"] and best_sd >= 0
    assert plot is not None and "7 rows" in md and "centre" in md


def test_bad_uploads_then_still_serving(client, clip, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(AppError, match="not a readable media file"):
        client.predict(handle_file(str(text)), api_name="/predict")

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:3000])  # a truncated mp4
    with pytest.raises(AppError):
        client.predict(handle_file(str(broken)), api_name="/predict")

    long = make_media(tmp_path / "long.mp4", seconds=8.0)
    with pytest.raises(AppError, match="accepts clips up to 6 s"):
        client.predict(handle_file(str(long)), api_name="/predict")

    big = tmp_path / "big.mp4"
    big.write_bytes(clip.read_bytes() + bytes(1_200_000))
    with pytest.raises(Exception, match="(?i)too large|1 MB|exceed"):
        client.predict(handle_file(str(big)), api_name="/predict")

    with pytest.raises(AppError, match="(?i)CAM layer|choices"):  # Gradio or the handler says so
        client.predict(handle_file(str(clip)), "star_drum", 7, api_name="/explain")

    audio_only = make_media(tmp_path / "tone.m4a", video=False, seconds=2.0)
    with pytest.raises(AppError, match="no video stream"):
        client.predict(handle_file(str(audio_only)), api_name="/predict")

    silent = make_media(tmp_path / "silent.mp4", audio=False, seconds=3.0, size=(96, 72))
    mmt, audio, video, frames, spec, notes = client.predict(handle_file(str(silent)),
                                                            api_name="/predict")
    assert "no audio track" in notes and mmt["confidences"] and not audio

    # ... and the app still answers a good clip afterwards.
    mmt, *_ = client.predict(handle_file(str(clip)), api_name="/predict")
    assert len(mmt["confidences"]) == 5


def test_app_help_and_a_bad_port_answer_before_the_page_is_built():
    import subprocess
    import sys

    from wb_helpers import ROOT

    run = lambda *a: subprocess.run([sys.executable, "app.py", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    out = run("--help")
    assert out.returncode == 0 and "127.0.0.1" in out.stdout and "MMT_CHECKPOINTS" in out.stdout
    bad = run("--port", "99999")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "'99999' is not a port number (1-65535)")
