"""Evaluate a run's best checkpoint on the built-in test split and ship it under checkpoints/.

    python scripts/export_demo.py runs/mmt_demo mmt_tiny --pointing

The test split (`mmt synth --seed 1001 --split test`) was never used in training; its metrics
(top-1/5, per-class accuracy, confusion matrix, and with --pointing the pointing game of
Grad-CAM and attention relevance)
go into the shipped config.json under metrics.test. Weights + config only, no optimizer state.
"""
import argparse
import json

from mmt_core.checkpoint import export_checkpoint
from mmt_core.engine import evaluate_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory (its best/ is exported)")
    p.add_argument("name", help="checkpoints/NAME to write")
    p.add_argument("--manifest", default="data/synth/manifest.csv")
    p.add_argument("--pointing", action="store_true")
    p.add_argument("--explainer", action="append", default=None,
                   help="explainers of the pointing game (default: gradcam and relevance; "
                        "occlusion on all 120 clips takes ~20 min, scripts/precompute_pointing.py "
                        "scores it on 30)")
    a = p.parse_args()
    src = f"{a.run}/best"
    rep = evaluate_checkpoint(src, a.manifest, split="test", views=1, pointing=a.pointing,
                              explainers=a.explainer or ["gradcam", "relevance"],
                              batch_size=16, progress=False)
    keep = {k: v for k, v in rep.items()
            if k not in ("confusion", "per_class", "skipped_paths", "classes", "checkpoint")}
    test = {"split": "test (mmt synth --seed 1001, never trained on)", **keep,
            "per_class": {c["class"]: c["accuracy"] for c in rep["per_class"]},
            "confusion": rep["confusion"]}
    export_checkpoint(src, f"checkpoints/{a.name}", metrics={"test": test})
    print(json.dumps({k: v for k, v in keep.items() if k != "heads"}, default=str))


if __name__ == "__main__":
    main()
