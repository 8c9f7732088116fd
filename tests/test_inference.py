"""One-clip inference: same tensors as evaluation, top-k output, no-audio clips, bad files."""
from __future__ import annotations

import pytest
import torch

from conftest import make_media
from engine_helpers import tiny_cfg
from mmt_core import checkpoint as ckpt
from mmt_core.data.dataset import AVDataset
from mmt_core.data.manifests import read_manifest
from mmt_core.data.transforms import normalise_video
from mmt_core.engine import build_model
from mmt_core.errors import MediaError
from mmt_core.inference import load_for_inference, predict_file, prepare_clip


@pytest.fixture(scope="module")
def checkpoint_dir(synth_dir, tmp_path_factory):
    """A randomly initialised mmt_tiny checkpoint with the built-in dataset's classes."""
    man = read_manifest(synth_dir / "manifest.csv")
    cfg = tiny_cfg(synth_dir / "manifest.csv")
    torch.manual_seed(0)
    model = build_model(cfg, man.classes)
    out = tmp_path_factory.mktemp("ck") / "mmt_tiny"
    return ckpt.save_checkpoint(out, model, ckpt.make_meta(cfg, model, man.classes))


def test_prepare_clip_matches_the_eval_dataset(synth_dir, checkpoint_dir):
    _, meta = load_for_inference(checkpoint_dir)
    man = read_manifest(synth_dir / "manifest.csv", split="test")
    rec = man.records[0]
    prep = prepare_clip(rec.path, meta, views=2)
    p = meta["preprocessing"]
    assert prep["inputs"]["video"].shape == (2, 3, p["num_frames"], p["image_size"],
                                             p["image_size"])
    assert prep["inputs"]["audio"].shape == (2, 1, p["num_mel_bins"], p["audio_frames"])
    assert prep["fbank"].shape == (p["num_mel_bins"], p["audio_frames"])
    assert prep["has_audio"] and prep["clip"].frames.shape[0] == p["num_frames"]
    ds = AVDataset([rec], man.classes, ckpt.data_config_from_meta(meta), train=False,
                   num_views=2)
    item = ds.load(0)  # uint8 video, normalised on the device by evaluation.model_inputs
    video = normalise_video(item["video"], p["video_mean"], p["video_std"])
    assert torch.equal(video, prep["inputs"]["video"])
    assert torch.allclose(item["audio"], prep["inputs"]["audio"])
    # the paper's protocol (video windows inside one audio window): the same views both ways
    short = {**meta, "preprocessing": {**p, "video_seconds": 1.0}}
    prep = prepare_clip(rec.path, short, views=2)
    item = AVDataset([rec], man.classes, ckpt.data_config_from_meta(short), train=False,
                     num_views=2).load(0)
    video = normalise_video(item["video"], p["video_mean"], p["video_std"])
    assert torch.equal(video, prep["inputs"]["video"]) and not torch.equal(video[0], video[1])
    assert torch.allclose(item["audio"], prep["inputs"]["audio"])
    assert torch.equal(prep["inputs"]["audio"][0], prep["inputs"]["audio"][1])


def test_predict_file_top_k(synth_dir, checkpoint_dir):
    clip = next((synth_dir / "test").glob("*.mp4"))
    res = predict_file(clip, checkpoint_dir, topk=3)
    preds = res["predictions"]["label"]
    assert len(preds) == 3 and res["has_audio"] and "note" not in res
    probs = [p["prob"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert {p["label"] for p in preds} <= set(load_for_inference(checkpoint_dir)[1]["classes"]
                                             ["label"])
    assert res["timing"]["total_s"] > 0
    assert len(predict_file(clip, checkpoint_dir, topk=50)["predictions"]["label"]) == 6


def test_clip_without_audio_is_predicted_with_a_note(tmp_path, checkpoint_dir):
    clip = make_media(tmp_path / "silent.mp4", audio=False, seconds=3.0, size=(64, 48))
    res = predict_file(clip, checkpoint_dir, topk=2)
    assert res["has_audio"] is False and "no audio" in res["note"]
    assert len(res["predictions"]["label"]) == 2


def test_bad_clip_is_a_media_error(tmp_path, checkpoint_dir):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(MediaError):
        predict_file(bad, checkpoint_dir)
    with pytest.raises(MediaError):
        predict_file(tmp_path / "missing.mp4", checkpoint_dir)
