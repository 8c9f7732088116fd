"""Grad-CAM for the video and audio encoders, with pytorch-grad-cam doing the CAM itself.

pytorch-grad-cam wants a model with ONE input tensor, so each modality gets a small wrapper
(`VideoOnly`, `AudioOnly`) that holds the other input fixed. The target layer and the
token → grid reshape come from `model.cam_target(modality, block)` (default: the block before the
last, pytorch-grad-cam's choice for Transformers; `block=0` gives the finer stage-1 map):
video tokens become (B, C, T, H, W), audio tokens (B, C, F, N). pytorch-grad-cam handles 5-D
activations natively (GradCAM averages the gradients over T, H, W and `scale_cam_image` zooms
the (T', H', W') map back to the input's (T, S, S)), so nothing is folded or re-implemented.

    cam = video_cam(model, prep["inputs"], target=3)         # (T, H, W) in [0, 1]
    shown = overlay_frames(prep["clip"].frames, cam)        # uint8 (T, H, W, 3)
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


class _SingleInput(nn.Module):
    """forward(x) → one head's logits of `model`, the other modality's input held fixed."""

    def __init__(self, model: nn.Module, *, name: str, fixed: dict, head: str | None):
        super().__init__()
        self.model, self.name, self.fixed, self.head = model, name, fixed, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fixed input has batch 1; repeat it to x's batch (pytorch-grad-cam may batch).
        other = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in self.fixed.items()}
        out = self.model(**{self.name: x}, **other)
        return out.head_logits[self.head] if self.head else out.logits


def VideoOnly(model: nn.Module, audio: torch.Tensor | None = None, head: str | None = None):
    """The model as a function of the video alone; `audio` (1,1,F,N) is held fixed (av models)."""
    return _SingleInput(model, name="video", fixed={} if audio is None else {"audio": audio},
                        head=head)


def AudioOnly(model: nn.Module, video: torch.Tensor | None = None, head: str | None = None):
    """The model as a function of the audio alone; `video` (1,3,T,S,S) is held fixed (av models)."""
    return _SingleInput(model, name="audio", fixed={} if video is None else {"video": video},
                        head=head)


def _first_view(x: torch.Tensor, dims: int) -> torch.Tensor:
    """(V, ...) or unbatched (...) → (1, ...): CAMs are drawn for the first view."""
    if x.dim() == dims - 1:
        x = x.unsqueeze(0)
    if x.dim() != dims:
        raise ValueError(f"expected a {dims}-D batch, got shape {tuple(x.shape)}")
    return x[:1]


def _cam(model: nn.Module, inputs: dict, modality: str, target: int | None,
         head: str | None, block: int = -2) -> np.ndarray:
    mods = getattr(model, "modalities", "")
    name = {"v": "video", "a": "audio"}[modality]
    if modality not in mods:
        raise ValueError(f"model with modalities '{mods}' has no {name} encoder to explain")
    if name not in inputs:
        raise ValueError(f"inputs lack '{name}'")
    x = _first_view(inputs[name], 5 if name == "video" else 4)
    other = "audio" if name == "video" else "video"
    fixed = {}
    if other[0] in mods:
        if other not in inputs:
            raise ValueError(f"an '{mods}' model needs inputs['{other}'] to hold it fixed")
        fixed[other] = _first_view(inputs[other], 4 if other == "audio" else 5).detach()
    wrapper = _SingleInput(model, name=name, fixed=fixed, head=head)
    layer, reshape = model.cam_target(name, block)  # "video" | "audio"
    was_training = model.training
    targets = None if target is None else [ClassifierOutputTarget(int(target))]
    # Only the target layer's parameters require grad while the CAM runs: its output still
    # carries a gradient (all Grad-CAM needs), but autograd neither records the layers before
    # it nor back-propagates into them, which halves the cost. The CAM values are unchanged.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in layer.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), GradCAM(model=wrapper, target_layers=[layer],
                                          reshape_transform=reshape) as cam:
            grayscale = cam(input_tensor=x, targets=targets)  # (1, T, S, S) or (1, F, N)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.clip(grayscale[0], 0.0, 1.0).astype(np.float32)


def to_frame_resolution(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, S, S) CAM on the centre crop → (T, height, width) on the decoded frames.

    The eval transform resizes the short side to S and centre-crops S×S, so the CAM covers the
    central min(H, W) square; outside it (wide frames) the map is 0.
    """
    t, s, _ = cam.shape
    side = min(height, width)
    x = torch.from_numpy(cam)[None]  # (1, T, S, S)
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear",
                                        align_corners=False)[0]  # (T, side, side)
    out = np.zeros((t, height, width), np.float32)
    y0, x0 = (height - side) // 2, (width - side) // 2
    out[:, y0:y0 + side, x0:x0 + side] = x.clamp(0, 1).numpy()
    return out


def video_cam(model: nn.Module, inputs: dict, target: int | None = None, head: str | None = None,
              *, frame_size: tuple[int, int] | None = None, block: int = -2) -> np.ndarray:
    """Grad-CAM of the video encoder for class `target` (None: the predicted class).

    `inputs` holds the model inputs ((V,3,T,S,S) video and, for av models, (V,1,F,N) audio; the
    first view is explained). Returns (T, H, W) float32 in [0, 1]: at the decoded frames'
    resolution `frame_size=(H, W)` when given, else at the model's S×S crop.
    """
    cam = _cam(model, inputs, "v", target, head, block)  # (T, S, S)
    if frame_size is not None:
        cam = to_frame_resolution(cam, *frame_size)
    return cam


def audio_cam(model: nn.Module, inputs: dict, target: int | None = None,
              head: str | None = None, *, block: int = -2) -> np.ndarray:
    """Grad-CAM of the audio encoder on the fbank: (F mel bins, N frames) float32 in [0, 1]."""
    return _cam(model, inputs, "a", target, head, block)


def overlay_frames(frames: np.ndarray, cam: np.ndarray, *, image_weight: float = 0.55) -> np.ndarray:
    """Jet-coloured CAM blended over the frames: uint8 (T,H,W,3) + (T,H,W) → uint8 (T,H,W,3)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T,H,W,3), got {frames.shape}")
    if cam.shape != frames.shape[:3]:
        cam = to_frame_resolution(cam, *frames.shape[1:3]) if cam.shape[0] == frames.shape[0] \
            else None
        if cam is None:
            raise ValueError("cam and frames have different numbers of frames")
    rgb = frames.astype(np.float32) / 255.0
    return np.stack([show_cam_on_image(rgb[i], cam[i], use_rgb=True, image_weight=image_weight)
                     for i in range(len(frames))])


def _decode_view(path, meta: dict, view: int, views: int):
    from mmt_core.data import media

    pre = meta["preprocessing"]
    return media.decode(path, num_frames=pre["num_frames"], clip_seconds=pre["clip_seconds"],
                        sample_rate=pre["sample_rate"], view=view, num_views=views, audio=False,
                        max_seconds=pre.get("max_clip_seconds", 600.0))


def pointing_game(model: nn.Module, meta: dict, records, *, views: int = 1, block: int = -2,
                  progress: bool = True) -> dict:
    """Grad-CAM pointing game on built-in clips: per sampled frame, is the video CAM's peak (for
    the true class) inside the sounding object's box? Frames are scored one by one, because the
    object jumps at each sound onset (a time-averaged map would blur that). A clip also counts
    as a hit when at least half of its frames hit. `block`: the video block whose CAM is scored.

    Returns {"pointing": hits / frames, "clips": n, "hits": frames hit, "frames": frames scored
    (clips × views × T), "clip_hits": clips hit, "clip_pointing": clip_hits / clips}.
    """
    from mmt_core.data.synthetic import boxes_at
    from mmt_core.inference import prepare_clip
    from mmt_core.metrics import pointing_game as frame_pointing

    if "v" not in getattr(model, "modalities", ""):
        raise ValueError("the pointing game needs a model with a video encoder")
    head = next(iter(meta["classes"]))
    device = next(model.parameters()).device
    frames = frame_hits = clips = clip_hits = 0
    records = list(records)
    for i, rec in enumerate(records):
        prep = prepare_clip(rec.path, meta, views=views)
        inputs = {k: x.to(device) for k, x in prep["inputs"].items()}
        label = rec.labels[head]
        clip_frames = clip_frame_hits = 0
        for v in range(views):
            # prepare_clip keeps view 0's decoded clip; other views' frame times need a decode
            clip = prep["clip"] if v == 0 else _decode_view(rec.path, meta, v, views)
            cam = video_cam(model, {k: x[v:v + 1] for k, x in inputs.items()}, target=label,
                            head=head, frame_size=clip.frames.shape[1:3], block=block)
            # mmt_core.metrics.pointing_game: fraction of frames whose CAM peak is in the box
            clip_frame_hits += round(frame_pointing(cam, boxes_at(rec.path, clip.times)) * len(cam))
            clip_frames += len(cam)
        frames += clip_frames
        frame_hits += clip_frame_hits
        clip_hits += int(clip_frame_hits * 2 >= clip_frames)
        clips += 1
        if progress:
            print(f"\rpointing game: {i + 1}/{len(records)} clips, "
                  f"{frame_hits / max(frames, 1):.3f}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return {"pointing": frame_hits / max(frames, 1), "clips": clips, "hits": frame_hits,
            "frames": frames, "clip_hits": clip_hits, "clip_pointing": clip_hits / max(clips, 1)}
