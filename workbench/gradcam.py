"""Drawing explanations: maps over frames (jet overlay) and the sounding object's box.

The maps themselves come from `mmt_core.explain` (Grad-CAM, relevance, occlusion, audio
contrast); `video_cam`, `audio_cam` and `to_frame_resolution` are kept here as thin Grad-CAM
shortcuts for notebooks and older callers.

    cam = video_cam(model, prep["inputs"], target=3)         # (T, H, W) in [0, 1]
    shown = overlay_frames(prep["clip"].frames, cam)        # uint8 (T, H, W, 3)
"""
from __future__ import annotations

import numpy as np
from torch import nn

from mmt_core.explain import CAM_BLOCKS, to_frame_resolution  # noqa: F401  (re-export)
from mmt_core.explain._common import model_inputs
from mmt_core.explain.gradcam import cam as _cam


def video_cam(model: nn.Module, inputs: dict, target: int | None = None, head: str | None = None,
              *, frame_size: tuple[int, int] | None = None, block=CAM_BLOCKS) -> np.ndarray:
    """Grad-CAM of the video encoder for class `target` (None: the predicted class): (T, H, W)
    at `frame_size=(H, W)` when given, else at the model's S×S crop."""
    cam = _cam(model, _checked(model, inputs, "v"), "v", target, head, block)  # (T, S, S)
    return to_frame_resolution(cam, *frame_size) if frame_size is not None else cam


def audio_cam(model: nn.Module, inputs: dict, target: int | None = None,
              head: str | None = None, *, block=CAM_BLOCKS) -> np.ndarray:
    """Grad-CAM of the audio encoder on the fbank: (F mel bins, N frames) float32 in [0, 1]."""
    return _cam(model, _checked(model, inputs, "a"), "a", target, head, block)


def _checked(model, inputs: dict, modality: str) -> dict:
    mods = getattr(model, "modalities", "")
    if modality not in mods or mods == "image":
        name = {"v": "video", "a": "audio"}[modality]
        raise ValueError(f"model with modalities '{mods}' has no {name} encoder to explain")
    return model_inputs(model, inputs)


def overlay_frames(frames: np.ndarray, cam: np.ndarray, *, image_weight: float = 0.55) -> np.ndarray:
    """Jet-coloured map blended over the frames: uint8 (T,H,W,3) + (T,H,W) → uint8 (T,H,W,3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T,H,W,3), got {frames.shape}")
    if cam.shape != frames.shape[:3]:
        if cam.shape[0] != frames.shape[0]:
            raise ValueError("cam and frames have different numbers of frames")
        cam = to_frame_resolution(cam, *frames.shape[1:3])
    rgb = frames.astype(np.float32) / 255.0
    return np.stack([show_cam_on_image(rgb[i], cam[i], use_rgb=True, image_weight=image_weight)
                     for i in range(len(frames))])


def draw_boxes(frames: np.ndarray, boxes, *, colour=(255, 255, 255), width: int = 2) -> np.ndarray:
    """Frames (T,H,W,3) uint8 with each frame's box (T, 4) [x0, y0, x1, y1] outlined (a copy)."""
    out = frames.copy()
    H, W = out.shape[1:3]
    for f, box in zip(out, boxes):
        if box is None or any(b != b for b in map(float, box)):
            continue
        x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
        x1, y1 = min(W - 1, int(round(box[2]))), min(H - 1, int(round(box[3])))
        if x1 < x0 or y1 < y0:
            continue
        f[y0:min(y0 + width, y1 + 1), x0:x1 + 1] = colour
        f[max(y1 - width + 1, y0):y1 + 1, x0:x1 + 1] = colour
        f[y0:y1 + 1, x0:min(x0 + width, x1 + 1)] = colour
        f[y0:y1 + 1, max(x1 - width + 1, x0):x1 + 1] = colour
    return out
