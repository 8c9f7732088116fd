"""Long clips on a timeline: sliding windows, their one-pass decode, `mmt predict --windows`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import frame_level, make_media
from mmt_core.cli import main
from mmt_core.data import media
from mmt_core.inference import sliding_windows
from wb_helpers import demo_checkpoints


def test_sliding_windows_cover_the_clip():
    starts = sliding_windows(10.0, 3.2)  # stride: half a window
    assert starts == pytest.approx([0.0, 1.6, 3.2, 4.8, 6.4, 6.8])  # the last one ends at 10 s
    assert sliding_windows(10.0, 3.2, stride=3.4) == pytest.approx([0.0, 3.4, 6.8])
    assert sliding_windows(6.4, 3.2, stride=1.6) == pytest.approx([0.0, 1.6, 3.2])
    assert sliding_windows(2.0, 3.2) == [0.0]  # shorter than a window: one window
    assert sliding_windows(3.2, 3.2) == [0.0]
    from mmt_core.errors import UserError

    with pytest.raises(UserError, match="stride"):
        sliding_windows(10.0, 3.2, stride=0)
    with pytest.raises(UserError, match="windows"):
        sliding_windows(600.0, 3.2, stride=0.001)


def test_decode_windows_equals_one_decode_per_window(tmp_path):
    path = make_media(tmp_path / "long.mp4", seconds=7.0, size=(64, 48))
    starts = sliding_windows(7.0, 2.0)
    clips = media.decode_windows(path, starts, num_frames=4, clip_seconds=2.0)
    assert len(clips) == len(starts) == 6  # 0, 1, ..., 5: the last ends at 7 s
    for start, clip in zip(starts, clips):
        one = media.decode(path, num_frames=4, clip_seconds=2.0, start=start)
        assert clip.start == pytest.approx(start)
        np.testing.assert_allclose(clip.times, one.times)
        # frame i of make_media clips is grey level frame_level(i): the right frames were kept
        want = [frame_level(int(t * 25)) for t in one.times]
        assert np.abs(clip.frames[..., 0].mean((1, 2)) - want).max() < 4
        assert np.array_equal(clip.frames, one.frames)
        assert clip.audio.shape == one.audio.shape
        # the same samples, up to the AAC decoder's state after a seek
        assert np.abs(clip.audio - one.audio).max() < 0.05


@pytest.mark.slow
def test_predict_windows_cli_json(tmp_path, capsys):
    ck = demo_checkpoints(tmp_path / "ck") / "mmt_tiny"
    clip = make_media(tmp_path / "long.mp4", seconds=10.0, size=(96, 72))
    assert main(["predict", str(clip), "--checkpoint", str(ck), "--windows", "--topk", "2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    win = res["windows"]
    assert res["window_seconds"] == 3.2 and res["stride_seconds"] == 1.6
    assert [w["start"] for w in win] == pytest.approx([0.0, 1.6, 3.2, 4.8, 6.4, 6.8], abs=0.01)
    assert all(w["end"] == pytest.approx(w["start"] + 3.2, abs=0.01) for w in win)
    assert win[-1]["end"] == pytest.approx(res["duration"], abs=0.05)
    for w in win:
        assert len(w["top"]) == 2 and w["top"][0]["prob"] >= w["top"][1]["prob"]
    # each window is checked against the checkpoint's OOD reference; without one, said once
    import shutil

    from mmt_core import ood

    for name in ("bare", "ref"):
        (tmp_path / name).mkdir()
        for f in ("model.safetensors", "config.json"):
            shutil.copyfile(ck / f, tmp_path / name / f)
    ood.build(tmp_path / "ref", [make_media(tmp_path / f"r{i}.mp4", seconds=2.0 + 0.5 * i,
                                            size=(96, 72)) for i in range(6)], k=2)
    assert main(["predict", str(clip), "--checkpoint", str(tmp_path / "ref"), "--windows",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert all({"score", "threshold", "flagged"} <= set(w["ood"]) for w in res["windows"])
    assert res["ood_flagged_windows"] == sum(w["ood"]["flagged"] for w in res["windows"])
    assert main(["predict", str(clip), "--checkpoint", str(tmp_path / "bare"), "--windows",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert all(w["ood"] is None for w in res["windows"]) and "ood.safetensors" in res["ood_note"]
    short = make_media(tmp_path / "short.mp4", seconds=2.0, size=(96, 72))
    assert main(["predict", str(short), "--checkpoint", str(ck), "--windows", "--stride", "1",
                 "--json"]) == 0
    win = json.loads(capsys.readouterr().out)["windows"]
    assert len(win) == 1 and win[0]["start"] == 0.0 and win[0]["end"] == pytest.approx(2.0, abs=0.05)
    assert main(["predict", str(short), "--checkpoint", str(ck), "--stride", "1"]) == 2
    assert "--stride needs --windows" in capsys.readouterr().err
