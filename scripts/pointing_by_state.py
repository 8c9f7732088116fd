"""Pointing accuracy per frame, split by what the sounding object does at the frame's time: 'hit'
(within 0.2 s after a sound onset: it jumps, squashes and flashes) or 'rest' (it sits still).

    python scripts/pointing_by_state.py CHECKPOINT MANIFEST SPLIT [--explainer NAME ...]

Built-in clips only (their sidecars hold `events`). Answers whether an explainer finds the
object only while it moves with the sound. Prints one JSON line: {explainer: {state: [accuracy,
frames]}}.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmt_core import checkpoint as ckpt  # noqa: E402
from mmt_core.data.manifests import read_manifest  # noqa: E402
from mmt_core.data.synthetic import load_sidecar, sidecar_boxes_at  # noqa: E402
from mmt_core.evaluation import _remap_labels  # noqa: E402
from mmt_core.explain import get_explainer, to_frame_resolution  # noqa: E402
from mmt_core.inference import prepare_clip  # noqa: E402
from mmt_core.metrics import frame_pointing  # noqa: E402

HIT_SECONDS = 0.2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("manifest")
    p.add_argument("split")
    p.add_argument("--explainer", action="append", default=None, help="default: gradcam, relevance")
    a = p.parse_args()
    names = a.explainer or ["gradcam", "relevance"]
    model, meta = ckpt.load_checkpoint(a.checkpoint, "cpu")
    man = read_manifest(a.manifest, split=a.split)
    records = _remap_labels([r for r in man.records if r.split == a.split], man.classes,
                            meta["classes"])
    head = next(iter(meta["classes"]))
    tally = {n: {"hit": [0, 0], "rest": [0, 0]} for n in names}  # [hits, frames]
    for i, rec in enumerate(records):
        side = load_sidecar(rec.path)
        prep = prepare_clip(rec.path, meta)
        clip = prep["clip"]
        boxes = sidecar_boxes_at(side, clip.times)
        onsets = np.asarray(side.get("events", []), np.float64)
        states = []
        for t in clip.times:
            since = t - onsets[onsets <= t + 1e-9]
            states.append("hit" if len(since) and since.min() < HIT_SECONDS else "rest")
        for n in names:
            res = get_explainer(n)(model, prep["inputs"], target=rec.labels[head], head=head,
                                   meta=meta)
            cam = to_frame_resolution(res["video"], *clip.frames.shape[1:3])
            for frame, box, state in zip(cam, boxes, states):
                fp = frame_pointing(frame[None], [box])
                tally[n][state][0] += fp["hits"]
                tally[n][state][1] += fp["frames"]
        print(f"\r{i + 1}/{len(records)} clips", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(json.dumps({n: {s: [h / max(f, 1), f] for s, (h, f) in v.items()}
                      for n, v in tally.items()}))


if __name__ == "__main__":
    main()
