"""Shared fixtures: media files written by PyAV with content that encodes time, and a tiny
built-in dataset (written once per test session)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest


def frame_level(i: int) -> int:
    """Grey level of frame i in `make_media` clips: decoding a frame tells which one it was."""
    return 16 + (i * 6) % 224


def make_media(path, *, fmt=None, vcodec="libx264", acodec="aac", fps=25, rate=44100,
               channels=1, seconds=2.0, size=(64, 48), audio=True, video=True, pix_fmt="yuv420p",
               options=None):
    """Write a clip: frame i is uniform grey frame_level(i); audio is a 440 Hz tone whose
    amplitude rises linearly from 0 to 0.8 over the clip (so the level tells the time).
    `options`: the muxer's (e.g. {"live": "1"}: a webm without duration, like MediaRecorder's)."""
    path = Path(path)
    fps = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        vs = as_ = None
        if video:
            vs = c.add_stream(vcodec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], pix_fmt
        if audio:
            as_ = c.add_stream(acodec, rate=rate, layout="mono" if channels == 1 else "stereo")
        n_frames = int(round(seconds * fps))
        total = int(seconds * rate)
        t = np.arange(total) / rate
        wav = (0.8 * t / seconds * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        per = as_.codec_context.frame_size if as_ is not None and as_.codec_context.frame_size else 1024
        apos = 0
        for i in range(max(n_frames, 1) if video else 0):
            img = np.full((size[1], size[0], 3), frame_level(i), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i  # explicit: some muxers (avi) otherwise shift timestamps by one
            for p in vs.encode(frame):
                c.mux(p)
            upto = min(total, int((i + 1) * rate / fps))
            while as_ is not None and apos + per <= upto:
                apos = _push_audio(c, as_, wav, apos, per, channels, rate)
        while as_ is not None and apos < total:
            apos = _push_audio(c, as_, wav, apos, per, channels, rate)
        for s in (vs, as_):
            if s is not None:
                for p in s.encode(None):
                    c.mux(p)
    return path


def _push_audio(c, stream, wav, pos, per, channels, rate):
    chunk = wav[pos:pos + per]
    if len(chunk) < per:
        chunk = np.pad(chunk, (0, per - len(chunk)))
    fmt = stream.codec_context.format.name
    layout = "mono" if channels == 1 else "stereo"
    data = np.repeat(chunk[None, :], channels, 0)  # (C, n) planar
    if fmt in ("s16", "s16p"):
        data = (data * 32767).astype(np.int16)
    elif fmt in ("s32", "s32p"):
        data = (data * 2147483647).astype(np.int32)
    if not stream.codec_context.format.is_planar:
        data = data.T.reshape(1, -1)  # packed: (1, n * C)
    f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    f.sample_rate, f.pts = rate, pos
    for p in stream.encode(f):
        c.mux(p)
    return pos + per


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A tiny built-in dataset: 2 train + 1 test clip per class (18 clips)."""
    from mmt_core.data.synthetic import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, clips_per_class=2, seed=0, split="train", progress=False)
    write_dataset(out, clips_per_class=1, seed=1, split="test", progress=False)
    return out


# Randomly initialised demo checkpoints (mmt_tiny, mvit_tiny_video, mat_tiny) and one built-in
# test clip prepared for each: shared by the explainer and Grad-CAM tests.
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from wb_helpers import make_checkpoint

    out = tmp_path_factory.mktemp("ckpt")
    return {n: make_checkpoint(out, n) for n in ("mmt_tiny", "mvit_tiny_video", "mat_tiny")}


@pytest.fixture(scope="module")
def loaded(ckpts):
    from mmt_core.checkpoint import load_checkpoint

    return {n: load_checkpoint(d) for n, d in ckpts.items()}


@pytest.fixture(scope="module")
def prepared(loaded, synth_dir):
    from mmt_core.inference import prepare_clip

    clip = sorted((synth_dir / "test").glob("*.mp4"))[0]
    return {n: prepare_clip(clip, meta) for n, (_, meta) in loaded.items()}
