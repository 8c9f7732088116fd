"""The workbench's Grad-CAM shortcuts and drawing on real (randomly initialised) demo
models and built-in clips (the explainers and the pointing game: test_explain.py)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytorch_grad_cam")

from wb_helpers import one_torch_thread  # noqa: E402

from workbench import gradcam  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield




def test_video_cam_shape_range_at_frame_resolution(loaded, prepared):
    model, meta = loaded["mmt_tiny"]
    prep = prepared["mmt_tiny"]
    frames = prep["clip"].frames
    cam = gradcam.video_cam(model, prep["inputs"], target=0, frame_size=frames.shape[1:3])
    assert cam.shape == frames.shape[:3]  # (T, H, W) of the decoded frames
    assert cam.dtype == np.float32 and cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() > 0.5 and cam.std() > 0  # a normalised, non-constant map
    crop = gradcam.video_cam(model, prep["inputs"], target=0)
    size = meta["preprocessing"]["image_size"]
    assert crop.shape == (meta["preprocessing"]["num_frames"], size, size)


def test_audio_cam_shape_range(loaded, prepared):
    model, meta = loaded["mmt_tiny"]
    cam = gradcam.audio_cam(model, prepared["mmt_tiny"]["inputs"], target=1)
    pre = meta["preprocessing"]
    assert cam.shape == (pre["num_mel_bins"], pre["audio_frames"])
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.std() > 0


def test_cam_changes_with_target_class(loaded, prepared):
    model, _ = loaded["mmt_tiny"]
    inputs = prepared["mmt_tiny"]["inputs"]
    a = gradcam.video_cam(model, inputs, target=0)
    b = gradcam.video_cam(model, inputs, target=3)
    assert np.abs(a - b).max() > 1e-3
    assert np.allclose(a, gradcam.video_cam(model, inputs, target=0), atol=1e-5)  # deterministic
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_unimodal_models_and_errors(loaded, prepared):
    video, _ = loaded["mvit_tiny_video"]
    cam = gradcam.video_cam(video, prepared["mvit_tiny_video"]["inputs"])  # predicted class
    assert cam.ndim == 3 and 0.0 <= cam.min() and cam.max() <= 1.0
    audio, _ = loaded["mat_tiny"]
    assert gradcam.audio_cam(audio, prepared["mat_tiny"]["inputs"]).ndim == 2
    with pytest.raises(ValueError, match="no video encoder"):
        gradcam.video_cam(audio, prepared["mat_tiny"]["inputs"])


def test_overlay_frames(loaded, prepared):
    model, _ = loaded["mmt_tiny"]
    prep = prepared["mmt_tiny"]
    frames = prep["clip"].frames
    cam = gradcam.video_cam(model, prep["inputs"], frame_size=frames.shape[1:3])
    out = gradcam.overlay_frames(frames, cam)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frames.astype(int)).mean() > 5  # the heat map is visible
    with pytest.raises(ValueError):
        gradcam.overlay_frames(frames[..., 0], cam)


def test_draw_boxes(prepared):
    frames = prepared["mmt_tiny"]["clip"].frames
    boxes = np.tile(np.array([[10.0, 20.0, 40.0, 50.0]], np.float32), (len(frames), 1))
    boxes[1] = np.nan  # a frame without a box stays as it is
    out = gradcam.draw_boxes(frames, boxes, colour=(255, 255, 255))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert (out[0, 20, 10:41] == 255).all() and (out[0, 20:51, 40] == 255).all()
    assert (out[0, 30:40, 20:30] == frames[0, 30:40, 20:30]).all()  # inside: untouched
    assert (out[1] == frames[1]).all()
