"""The pointing game under CAM variants: which explanation of a video model lands on the sounding
object? A diagnostic for the pointing-game target (checkpoints/README.md), not part of the app.

    python scripts/pointing_variants.py checkpoints/mmt_tiny --layer -2 --layer 0 --layer stem

For every built-in test clip and every layer it scores, frame by frame, whether the CAM's peak is
inside the sounding object's box, for: pytorch-grad-cam's GradCAM, HiResCAM,
GradCAMElementWise, GradCAMPlusPlus, LayerCAM and XGradCAM on the true class's logit; GradCAM
on the class-contrastive target logit - mean(logits); GradCAM with Zhang et al.'s tolerance (15 px at 224 px, 9 px at the clips'
128 px, and 15 px); and GradCAM's single peak over the whole (T, H, W) volume. It also sorts the
GradCAM misses: peak within 12 px of the frame edge, or elsewhere. Prints one JSON line per layer.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from pytorch_grad_cam import (GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM,  # noqa: E402
                             LayerCAM, XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from mmt_core.checkpoint import load_checkpoint  # noqa: E402
from mmt_core.data.manifests import read_manifest  # noqa: E402
from mmt_core.data.synthetic import boxes_at  # noqa: E402
from mmt_core.inference import prepare_clip  # noqa: E402
from mmt_core.metrics import pointing_game  # noqa: E402
from mmt_core.explain._common import SingleInput as _SingleInput, to_frame_resolution  # noqa: E402


class Contrastive:
    """logit_c - mean(logits): evidence shared by all classes cancels."""

    def __init__(self, c: int):
        self.c = c

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        out = out if out.dim() == 1 else out[0]
        return out[self.c] - out.mean()


def cam(model, inputs, layer, reshape, method, target, head, size):
    fixed = {k: v[:1] for k, v in inputs.items() if k != "video"}
    wrapper = _SingleInput(model, name="video", fixed=fixed, head=head)
    with torch.enable_grad(), method(model=wrapper, target_layers=[layer], reshape_transform=reshape) as c:
        m = c(input_tensor=inputs["video"][:1], targets=[target])[0]  # (T, S, S)
    model.zero_grad(set_to_none=True)
    return to_frame_resolution(np.clip(m, 0, 1).astype(np.float32), *size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--manifest", default="data/synth/manifest.csv")
    p.add_argument("--layer", action="append", help="video block index, or 'stem' (patch embed)")
    p.add_argument("--limit", type=int, default=0, help="score only the first N test clips")
    a = p.parse_args()
    model, meta = load_checkpoint(a.checkpoint, "cpu")
    head = next(iter(meta["classes"]))
    records = read_manifest(a.manifest, split="test").records[:a.limit or None]
    layers = {}
    for name in a.layer or ["-2"]:  # patch embed: its conv output is already (B, C, T, H, W)
        layers[name] = (model.video.patch_embed, None) if name == "stem" else model.cam_target("video", int(name))
    scores = {name: {} for name in layers}  # layer -> variant -> per-clip scores
    for rec in records:  # each clip decoded once, for every layer
        prep = prepare_clip(rec.path, meta, views=1)
        h, w = size = prep["clip"].frames.shape[1:3]
        boxes = boxes_at(rec.path, prep["clip"].times)  # (T, 4) x0, y0, x1, y1
        label = rec.labels[head]
        for name, (layer, reshape) in layers.items():
            add = lambda key, value: scores[name].setdefault(key, []).append(value)  # noqa: E731
            maps = {key: cam(model, prep["inputs"], layer, reshape, method, target, head, size)
                    for key, method, target in (
                        ("gradcam", GradCAM, ClassifierOutputTarget(label)),
                        ("hirescam", HiResCAM, ClassifierOutputTarget(label)),
                        ("elementwise", GradCAMElementWise, ClassifierOutputTarget(label)),
                        ("gradcam++", GradCAMPlusPlus, ClassifierOutputTarget(label)),
                        ("layercam", LayerCAM, ClassifierOutputTarget(label)),
                        ("xgradcam", XGradCAM, ClassifierOutputTarget(label)),
                        ("gradcam_contrastive", GradCAM, Contrastive(label)))}
            for key, m in maps.items():
                add(key, pointing_game(m, boxes))
            g = maps["gradcam"]
            for tol in (9, 15):
                add(f"gradcam_tolerance_{tol}px", pointing_game(g, boxes, tolerance=tol))
            t = int(g.argmax()) // (h * w)  # the frame of the whole map's peak
            add("gradcam_volume_peak", pointing_game(g[t], boxes[t]))
            ys, xs = np.divmod(g.reshape(len(g), -1).argmax(1), w)  # each frame's peak
            inside = (boxes[:, 0] <= xs) & (xs <= boxes[:, 2]) & (boxes[:, 1] <= ys) & (ys <= boxes[:, 3])
            at_edge = np.minimum.reduce([xs, ys, w - 1 - xs, h - 1 - ys]) <= 12
            add("gradcam_miss_at_edge", float(np.mean(~inside & at_edge)))
            add("gradcam_miss_elsewhere", float(np.mean(~inside & ~at_edge)))
    for name, per_variant in scores.items():
        print(json.dumps({"checkpoint": a.checkpoint, "layer": name, "clips": len(records),
                          **{k: round(float(np.mean(v)), 3) for k, v in per_variant.items()}}))

if __name__ == "__main__":
    main()
