"""Write ood.safetensors (the "unlike the training data" reference) into the demo checkpoints.

    python scripts/build_ood.py [--clips-per-class 50] [--seed 2002]

The reference set is the built-in dataset generated with a seed no recipe trains, validates or
tests on (`mmt synth --seed 2002 --split ood`): its clips' embeddings and the 99th percentile of
their leave-one-out 5-NN distance go into each checkpoint (a few hundred KB each).
"""
import argparse
import json
from pathlib import Path

from mmt_core import ood
from mmt_core.data.synthetic import write_dataset

DEMO = ("mmt_tiny", "mat_tiny", "mvit_tiny_video")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--data", default="data/ood_ref", help="where the reference clips are written")
    p.add_argument("--clips-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=2002)
    a = p.parse_args()
    write_dataset(a.data, clips_per_class=a.clips_per_class, seed=a.seed, split="ood",
                  progress=False)
    paths = sorted(Path(a.data, "ood").glob(f"ood_s{a.seed}_*.mp4"))
    out = {}
    for name in DEMO:
        out[name] = ood.build(Path(a.checkpoints) / name, paths,
                              source=f"mmt synth --seed {a.seed} --split ood, {len(paths)} clips")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
