"""Write ood.safetensors (the "unlike the training data" reference) into the demo checkpoints.

    python scripts/build_ood.py [--clips-per-class 50] [--seed 2002] [--data data/ood_ref]

The reference set is the built-in dataset generated with a seed no recipe trains, validates or
tests on (`mmt synth --seed 2002 --split ood`, 300 clips); the MMT's also holds 150 cluttered
clips of that seed (`--clutter`: its last training epoch was on cluttered clips, so they are its
training data too). Each checkpoint gets mmt_core.ood's default detector fitted on them
(Mahalanobis on the input statistics, per sense; docs/ood.md), a few KB.
"""
import argparse
import json
from pathlib import Path

from mmt_core import ood
from mmt_core.data.synthetic import write_dataset

DEMO = ("mmt_tiny", "mat_tiny", "mvit_tiny_video")
WITH_CLUTTER = ("mmt_tiny",)  # trained on `mmt synth --clutter` clips as well


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--data", default="data/ood_ref", help="where the reference clips are written")
    p.add_argument("--clips-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=2002)
    a = p.parse_args()
    plain, clutter = Path(a.data, "plain"), Path(a.data, "clutter")
    write_dataset(plain, clips_per_class=a.clips_per_class, seed=a.seed, split="ood",
                  progress=False)
    write_dataset(clutter, clips_per_class=a.clips_per_class // 2, seed=a.seed, split="ood",
                  progress=False, clutter=True)
    paths = {"plain": sorted(Path(plain, "ood").glob(f"ood_s{a.seed}_*.mp4")),
             "clutter": sorted(Path(clutter, "ood").glob(f"ood_s{a.seed}_clutter_*.mp4"))}
    out = {}
    for name in DEMO:
        clips, what = paths["plain"], f"mmt synth --seed {a.seed} --split ood"
        if name in WITH_CLUTTER:
            clips = clips + paths["clutter"]
            what += f" (+ {len(paths['clutter'])} with --clutter)"
        out[name] = ood.build(Path(a.checkpoints) / name, clips,
                              source=f"{what}, {len(clips)} clips")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
