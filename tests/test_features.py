"""fbank front end (the peers' exact kaldi call), normalisation and dataset statistics."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torchaudio

from conftest import make_media
from mmt_core.data import features
from mmt_core.errors import UserError


def _tone(freq, seconds=1.0, sr=16000):
    t = torch.arange(int(seconds * sr)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_fbank_matches_reference_call():
    w = _tone(440) + 0.01 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    ref = torchaudio.compliance.kaldi.fbank(
        (w - w.mean()).unsqueeze(0), htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    fb = features.fbank(w, 16000, 128, target_frames=None)
    assert fb.shape == (128, ref.shape[0]) == (128, 98)
    torch.testing.assert_close(fb, ref.t())


def test_fbank_pad_and_cut():
    w = _tone(440, 0.5)
    padded = features.fbank(w, 16000, 64, target_frames=100)
    assert padded.shape == (64, 100)
    assert torch.all(padded[:, 48:] == 0) and torch.all(padded[:, :48] != 0)  # AST pads with zeros
    cut = features.fbank(_tone(440, 3.0), 16000, 64, target_frames=100)
    assert cut.shape == (64, 100)
    tiny = features.fbank(torch.zeros(10), 16000, 128, target_frames=4)  # shorter than a window
    assert tiny.shape == (128, 4)
    with pytest.raises(ValueError):
        features.fbank(torch.zeros(2, 100), 16000)


def test_fbank_pitch_moves_the_peak():
    low = features.fbank(_tone(500), 16000, 128, None).mean(1).argmax()
    high = features.fbank(_tone(4000), 16000, 128, None).mean(1).argmax()
    assert high > low + 30


def test_normalize():
    x = torch.tensor([1.0, 3.0, 5.0])
    torch.testing.assert_close(features.normalize(x, 3.0, 2.0), torch.tensor([-0.5, 0.0, 0.5]))
    with pytest.raises(ValueError):
        features.normalize(x, 0.0, 0.0)


def test_dataset_stats_counts_broken(tmp_path):
    make_media(tmp_path / "a.mp4", seconds=1.0)
    make_media(tmp_path / "b.mkv", fmt="matroska", seconds=1.5, rate=22050)
    (tmp_path / "broken.mp4").write_text("garbage")
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([["a.mp4", "x", "train"], ["b.mkv", "y", "train"], ["broken.mp4", "x", "train"],
                     ["missing.mp4", "y", "train"], ["a.mp4", "x", "test"]])
    r = features.dataset_stats(str(tmp_path / "m.csv"), split="train", progress=False)
    assert r["clips"] == 2 and r["skipped"] == 2
    # the same numbers computed directly from the two decodable clips
    from mmt_core.data.media import decode, probe
    vals = []
    for name in ("a.mp4", "b.mkv"):
        p = tmp_path / name
        clip = decode(p, num_frames=1, clip_seconds=probe(p).duration, video=False, start=0.0)
        vals.append(features.fbank(clip.audio, 16000, 128, None).flatten())
    allv = torch.cat(vals).double()
    assert r["mean"] == pytest.approx(float(allv.mean()), rel=1e-6)
    assert r["std"] == pytest.approx(float(allv.std(unbiased=False)), rel=1e-5)
    assert features.dataset_stats(str(tmp_path / "m.csv"), split="train", limit=1, progress=False)["clips"] == 1
    with pytest.raises(UserError, match="no clips"):
        features.dataset_stats(str(tmp_path / "m.csv"), split="nope", progress=False)
