"""media.probe / media.decode on every container the product promises, and every error path."""
from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest

from conftest import frame_level, make_media
from mmt_core.data import media
from mmt_core.errors import MediaError

FORMATS = [  # name, muxer, video codec, audio codec, fps, sample rate, channels
    ("h264_aac.mp4", "mp4", "libx264", "aac", 25, 44100, 2),
    ("vp9_opus.webm", "webm", "libvpx-vp9", "libopus", 30, 48000, 2),
    ("h264_mp3.mkv", "matroska", "libx264", "libmp3lame", 24, 22050, 1),
    ("h264_aac.mov", "mov", "libx264", "aac", 30000 / 1001, 32000, 2),
    ("mpeg4_mp3.avi", "avi", "mpeg4", "libmp3lame", 15, 44100, 2),
]


@pytest.mark.parametrize("name,fmt,vcodec,acodec,fps,rate,channels", FORMATS)
def test_decode_each_format(tmp_path, name, fmt, vcodec, acodec, fps, rate, channels):
    p = make_media(tmp_path / name, fmt=fmt, vcodec=vcodec, acodec=acodec, fps=fps, rate=rate,
                   channels=channels, seconds=2.0, size=(64, 48))
    info = media.probe(p)
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == (64, 48)
    assert info.sample_rate == rate and info.channels == channels
    assert info.fps == pytest.approx(fps, rel=1e-3)
    assert 1.9 < info.duration < 2.3

    clip = media.decode(p, num_frames=4, clip_seconds=1.0, start=0.5)
    assert clip.frames.shape == (4, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (16000,) and clip.audio.dtype == np.float32
    assert clip.sample_rate == 16000 and clip.has_audio
    np.testing.assert_allclose(clip.times, [0.625, 0.875, 1.125, 1.375])
    # each sampled frame is the one on screen at its time; one frame of slack because PyAV's
    # AVI muxer writes the first packet with a doubled duration (ffprobe shows pts 0, 2, 3, ...)
    got = clip.frames[:, 24, 32].mean(-1)
    for g, t in zip(got, clip.times):
        k = int(t * fps + 1e-6)
        assert min(abs(g - frame_level(k)), abs(g - frame_level(k - 1))) <= 4, (got, clip.times)
    # the tone's amplitude ramps 0 -> 0.8 over 2 s: the window [0.5, 1.5] holds 0.2 .. 0.6
    head, tail = np.abs(clip.audio[:800]).max(), np.abs(clip.audio[-800:]).max()
    assert 0.15 < head < 0.3 and 0.5 < tail < 0.7, (head, tail)


def test_webm_without_duration_decodes_like_its_indexed_twin(tmp_path):
    # A browser's MediaRecorder (the app's webcam recordings) writes webm with no duration and no
    # seek index; FFmpeg's webm muxer does the same with live=1.
    kw = dict(fmt="webm", vcodec="libvpx-vp9", acodec="libopus", fps=30, rate=48000, channels=1,
              seconds=2.0, size=(64, 48))
    live = make_media(tmp_path / "recording.webm", options={"live": "1"}, **kw)
    indexed = make_media(tmp_path / "indexed.webm", **kw)
    with av.open(str(live)) as c:
        assert c.duration is None and all(s.duration is None for s in c.streams)
    info, ref = media.probe(live), media.probe(indexed)
    assert info.duration == pytest.approx(ref.duration, abs=0.05) and 1.9 < info.duration < 2.1
    for start in (0.0, 0.7):  # (the centre window moves with the ~7 ms the durations differ by)
        got = media.decode(live, num_frames=4, clip_seconds=1.0, start=start)
        want = media.decode(indexed, num_frames=4, clip_seconds=1.0, start=start)
        np.testing.assert_allclose(got.times, want.times)
        assert np.array_equal(got.frames, want.frames)
        np.testing.assert_allclose(got.audio, want.audio, atol=1e-3)


def test_windows_views_and_random(tmp_path):
    p = make_media(tmp_path / "c.mp4", seconds=4.0, fps=25)
    centre = media.decode(p, num_frames=2, clip_seconds=2.0)
    assert centre.start == pytest.approx(1.0, abs=0.05)  # one view = the centre window
    views = [media.decode(p, num_frames=2, clip_seconds=1.0, view=i, num_views=3).start for i in range(3)]
    assert views == pytest.approx([0.0, 1.5, 3.0], abs=0.05)  # ends included, evenly spaced
    a = media.decode(p, num_frames=2, clip_seconds=1.0, rng=np.random.default_rng(5))
    b = media.decode(p, num_frames=2, clip_seconds=1.0, rng=np.random.default_rng(5))
    c = media.decode(p, num_frames=2, clip_seconds=1.0, rng=np.random.default_rng(6))
    assert a.start == b.start and np.array_equal(a.frames, b.frames) and a.start != c.start
    assert 0.0 <= a.start <= 3.0


def test_segment_and_padding(tmp_path):
    p = make_media(tmp_path / "s.mkv", fmt="matroska", seconds=3.0, fps=25, rate=16000)
    seg = media.decode(p, num_frames=4, clip_seconds=2.0, start=1.0, end=1.4)  # EPIC-style segment
    assert np.all((seg.times >= 1.0) & (seg.times <= 1.4))
    assert np.abs(seg.audio[: int(0.35 * 16000)]).max() > 0.1
    assert np.abs(seg.audio[int(0.45 * 16000):]).max() == 0.0  # zero past the segment end
    tail = media.decode(p, num_frames=2, clip_seconds=2.0, start=2.5)  # runs past the file end
    assert tail.audio.shape == (32000,) and np.abs(tail.audio[int(0.6 * 16000):]).max() == 0.0
    assert np.all(tail.times <= 3.0)


def test_downscale_and_no_audio(tmp_path):
    p = make_media(tmp_path / "silent.mp4", size=(160, 96), audio=False)
    info = media.probe(p)
    assert not info.has_audio and info.sample_rate == 0
    clip = media.decode(p, num_frames=3, clip_seconds=1.0, max_side=80)
    assert clip.frames.shape == (3, 48, 80, 3)
    assert media.decode(p, num_frames=1, clip_seconds=1.0, short_side=48).frames.shape == (1, 48, 80, 3)
    assert media.decode(p, num_frames=1, clip_seconds=1.0, short_side=200).frames.shape == (1, 96, 160, 3)
    assert not clip.has_audio and clip.audio.shape == (16000,) and not clip.audio.any()


def test_audio_only_file(tmp_path):
    p = make_media(tmp_path / "a.m4a", fmt="mp4", video=False)
    with pytest.raises(MediaError, match="no video stream"):
        media.decode(p, num_frames=2, clip_seconds=1.0)
    clip = media.decode(p, num_frames=2, clip_seconds=1.0, video=False)  # audio-only models
    assert clip.has_audio and np.abs(clip.audio).max() > 0.1 and clip.frames.shape[0] == 0


def test_bad_files(tmp_path, monkeypatch):
    with pytest.raises(MediaError, match="not found"):
        media.decode(tmp_path / "missing.mp4", num_frames=2, clip_seconds=1.0)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        media.probe(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaError, match="not a readable media file"):
        media.decode(text, num_frames=2, clip_seconds=1.0)
    good = make_media(tmp_path / "good.mp4", seconds=2.0)
    cut = tmp_path / "cut.mp4"  # moov atom at the end: half a file has no index
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MediaError):
        media.decode(cut, num_frames=2, clip_seconds=1.0)
    header_only = tmp_path / "header_only.mkv"  # streams declared, zero frames: zero duration
    c = av.open(str(header_only), "w")
    vs = c.add_stream("libx264", rate=25)
    vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    with pytest.raises(MediaError, match="header_only.mkv"):
        media.decode(header_only, num_frames=2, clip_seconds=1.0)
    with pytest.raises(MediaError, match="too long"):
        media.decode(good, num_frames=2, clip_seconds=1.0, max_seconds=1.0)
    # a short segment of a file longer than the cap is fine (EPIC videos are long)
    assert media.decode(good, num_frames=2, clip_seconds=0.5, start=0.5, end=1.0, max_seconds=1.0).frames.shape[0] == 2
    with pytest.raises(MediaError, match="num_frames"):
        media.decode(good, num_frames=0, clip_seconds=1.0)
    with pytest.raises(MediaError, match="empty window"):
        media.decode(good, num_frames=2, clip_seconds=1.0, start=5.0, end=6.0)
    with pytest.raises(MediaError, match="longer than"):
        media.decode(good, num_frames=2, clip_seconds=1.0, time_limit=0.0)
    monkeypatch.setattr(media, "MAX_PIXELS", 32 * 32)
    with pytest.raises(MediaError, match="frame size"):
        media.decode(good, num_frames=2, clip_seconds=1.0)


def test_truncated_faststart_is_an_error(tmp_path):
    """A faststart mp4 cut short still opens, but a window past where frames stop is refused."""
    src = make_media(tmp_path / "src.mp4", seconds=3.0)
    fast = tmp_path / "fast.mp4"
    with av.open(str(src)) as i, av.open(str(fast), "w", format="mp4",
                                          options={"movflags": "+faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for pkt in i.demux():
            if pkt.dts is not None:
                pkt.stream = streams[pkt.stream.index]
                o.mux(pkt)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(MediaError, match="truncated file"):
        media.decode(cut, num_frames=4, clip_seconds=3.0)
    head = media.decode(cut, num_frames=2, clip_seconds=0.5, start=0.0)  # the intact head decodes
    assert head.frames.shape == (2, 48, 64, 3)


def test_cli_errors_are_one_line(tmp_path):
    for args in (["synth", "--out", str(tmp_path / "x"), "--clips-per-class", "0"],
                 ["synth", "--out", str(tmp_path / "y"), "--seed", "-3"],
                 ["stats", "--manifest", str(tmp_path / "missing.csv")]):
        r = subprocess.run([sys.executable, "-m", "mmt_core", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mmt {args[0]}: error:"), r.stderr
        assert "Traceback" not in r.stderr


def _shown(times, fps):
    """Index of the frame on screen at each time (the last one starting at or before it)."""
    return np.floor(np.asarray(times) * fps + 1e-6).astype(int)


def test_paper_test_views_differ_and_share_the_audio(tmp_path):
    # 10 s at 10 fps: 100 frames, each with its own grey level (frame_level is unique below 112)
    p = make_media(tmp_path / "ten.mp4", seconds=10.0, fps=10, rate=16000)
    views = media.decode_views(p, num_frames=4, clip_seconds=10.0, video_seconds=2.0, num_views=5)
    assert len(views) == 5
    # evenly spaced 2-s video windows over the 10-s audio window, both ends included
    w0 = views[0].start  # the centred 10-s audio window of a ~10.05-s file (AAC padding)
    assert w0 == pytest.approx(0.0, abs=0.05)
    starts = [v.times[0] - 0.25 - w0 for v in views]  # 4 frames over 2 s: centres at +0.25, ...
    assert starts == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0], abs=1e-6)
    for v in views:
        np.testing.assert_allclose(np.diff(v.times), 0.5)
        levels = [frame_level(i) for i in _shown(v.times, 10)]  # the frames really shown then
        np.testing.assert_allclose(v.frames.reshape(4, -1).mean(1), levels, atol=3)
    shown = [tuple(_shown(v.times, 10)) for v in views]
    assert len(set(shown)) == 5  # five different frame windows
    whole = media.decode(p, num_frames=4, clip_seconds=10.0)  # the audio: the whole 10-s clip
    for v in views:
        assert v.start == whole.start and np.array_equal(v.audio, whole.audio)
    assert np.abs(whole.audio[-16000:]).max() > 0.5  # the clip's loud end is in it


def test_training_views_are_random_windows_inside_the_audio_window(tmp_path):
    p = make_media(tmp_path / "long.mp4", seconds=6.0, fps=10, rate=16000)
    kw = dict(num_frames=4, clip_seconds=4.0, video_seconds=1.0, num_views=2)
    a = media.decode_views(p, rng=np.random.default_rng(3), **kw)
    b = media.decode_views(p, rng=np.random.default_rng(3), **kw)
    assert [x.times.tolist() for x in a] == [x.times.tolist() for x in b]  # seeded
    w0 = a[0].start
    assert 0.0 <= w0 <= 2.0 and a[1].start == w0 and a[0].audio is a[1].audio
    for v in a:  # each video window lies inside the audio window and lasts 1 s
        assert w0 <= v.times[0] - 0.125 and v.times[-1] + 0.125 <= w0 + 4.0 + 1e-6
        levels = [frame_level(i) for i in _shown(v.times, 10)]
        np.testing.assert_allclose(v.frames.reshape(4, -1).mean(1), levels, atol=3)
    assert a[0].times[0] != a[1].times[0]  # two different windows for the two IMC views
    # video_seconds = 0: the views are the audio window itself, decoded once (the same array)
    same = media.decode_views(p, num_frames=4, clip_seconds=4.0, video_seconds=0.0, num_views=2)
    centre = media.decode(p, num_frames=4, clip_seconds=4.0)
    assert same[0].frames is same[1].frames and np.array_equal(same[0].frames, centre.frames)
    np.testing.assert_allclose(same[1].times, centre.times)
