"""What does a model's answer rest on? Built-in clips re-rendered without one object.

    python scripts/counterfactual.py CHECKPOINT [--seed 500 --split val --clips-per-class 10]

For each clip of the built-in dataset (`mmt synth`'s clips, regenerated from the seed) the model
answers three versions: the clip as it is, the same clip without the sounding object, and without
the silent distractor (`synthetic.make_clip(hide=...)`: every other pixel and the audio are the
same). Per class it prints the mean probability of the true class in each version and how often
hiding the sounding object changes the top-1 answer (of the clips answered right). A model that
reads the look off the sounding object alone is left with the sound's two classes when it is
hidden: p(true) near 0.5 for both classes of a sound. A per-sound default instead keeps one class
high and drops the other ("a whistle, and no box hits: the star"): then the star is hardly
evidence, and no faithful explainer can point at it. A diagnostic for the pointing game
(docs/explain.md); the clips go to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VERSIONS = ("full", "no_sounder", "no_distractor")


def relation(side: dict) -> str:
    """The distractor's look against the sounding object's: "same", "rival" (the look of the
    other class with this sound, the one that must be told apart) or "neutral"."""
    from mmt_core.data.synthetic import CLASSES

    if side["distractor"] == side["look"]:
        return "same"
    rival = [c.look for c in CLASSES if c.sound == side["sound"] and c.look != side["look"]]
    return "rival" if side["distractor"] in rival else "neutral"


def run(checkpoint: str, seed: int, split: str, per_class: int, progress: bool = True) -> dict:
    from mmt_core.data import synthetic as S
    from mmt_core.inference import load_for_inference, predict_probs, prepare_clip

    model, meta = load_for_inference(checkpoint)
    if meta.get("classes", {}).get("label") != [c.name for c in S.CLASSES]:
        raise SystemExit(f"{checkpoint} is not a model of the built-in classes")
    version = meta.get("data", {}).get("generator_version", 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, cls in enumerate(S.CLASSES):
            for i in range(per_class):
                row = {"class": cls.name, "label": label, "index": i}
                for v, hide in zip(VERSIONS, (None, "sounder", "distractor")):
                    path = Path(tmp) / f"{v}.mp4"
                    side = S.make_clip(path, label, S._clip_rng(seed, split, label, i), version,
                                       hide=hide)
                    probs = predict_probs(model, prepare_clip(path, meta)["inputs"])["label"]
                    row[v] = {"p_true": float(probs[label]), "top": int(probs.argmax())}
                row["relation"] = relation(side)
                rows.append(row)
                if progress:
                    print(f"\r{len(rows)}/{len(S.CLASSES) * per_class} clips", end="",
                          file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return summarise(rows, [c.name for c in S.CLASSES])


def summarise(rows: list[dict], classes: list[str]) -> dict:
    out = {}
    for name in classes + ["all"]:
        sel = [r for r in rows if name in ("all", r["class"])]
        right = [r for r in sel if r["full"]["top"] == r["label"]]
        changed = [r["no_sounder"]["top"] != r["full"]["top"] for r in right]
        out[name] = {**{f"p_true_{v}": float(np.mean([r[v]["p_true"] for r in sel]))
                        for v in VERSIONS},
                     "changed_without_sounder": float(np.mean(changed)) if changed else None,
                     "clips": len(sel), "right": len(right)}
    return {"classes": out, "clips": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--seed", type=int, default=500, help="default 500, the built-in val split")
    p.add_argument("--split", default="val")
    p.add_argument("--clips-per-class", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print the result (every clip) as JSON")
    a = p.parse_args()
    res = run(a.checkpoint, a.seed, a.split, a.clips_per_class, progress=not a.json)
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{'class':14s} {'p(true): full':>14s} {'no sounder':>11s} {'no distractor':>14s} "
          f"{'answer changes without the sounder':>35s}")
    for name, c in res["classes"].items():
        changed = c["changed_without_sounder"]
        changed = "–" if changed is None else f"{changed:.0%} of {c['right']} right"
        print(f"{name:14s} {c['p_true_full']:14.2f} {c['p_true_no_sounder']:11.2f} "
              f"{c['p_true_no_distractor']:14.2f} {changed:>35s}")


if __name__ == "__main__":
    main()
