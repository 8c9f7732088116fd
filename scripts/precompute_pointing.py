"""Precompute the Explain tab's pointing scores for the shipped checkpoints.

    python scripts/precompute_pointing.py [--checkpoints checkpoints] [--method NAME ...]

For MMT and the video-only model and every explainer that applies, the pointing game on the
app's pointing clips (the first 5 clips per class of the built-in test split, seed 1001) is
written to CHECKPOINTS/pointing.json, keyed by the weights' hash, method and block, so the app
shows the scores at once (occlusion takes ~10-30 s per clip on a 2-core CPU); the entries of a
model's earlier weights are dropped. Prints the scores and the seconds per clip.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmt_core.atomic import write_text  # noqa: E402
from mmt_core.explain import EXPLAINERS, applicable, block_key  # noqa: E402
from workbench.service import Workbench, drop_earlier_weights  # noqa: E402
from workbench.ui import CAM_LAYERS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default=None, help="default: MMT_CHECKPOINTS or checkpoints/")
    p.add_argument("--role", action="append", default=None, choices=["mmt", "video"],
                   help="demo model(s) (default: both)")
    p.add_argument("--method", action="append", default=None, choices=list(EXPLAINERS))
    p.add_argument("--block", action="append", default=None,
                   help="CAM block(s), e.g. 0,1 (repeatable; default: the app's three layers)")
    a = p.parse_args()
    wb = Workbench(checkpoints=a.checkpoints)
    out = wb.checkpoints / "pointing.json"
    table = json.loads(out.read_text()) if out.is_file() else {}
    for role in a.role or ["mmt", "video"]:
        mods = wb.models[role].modalities
        weights = wb.pointing_key(role, "gradcam").split("/", 1)[0]
        table = drop_earlier_weights(table, wb.models[role].name, weights)
        for method in a.method or list(EXPLAINERS):
            if not applicable(method, mods):
                continue
            # only block-based maps depend on the layer: the others are scored once ("any")
            blocks = a.block or list(CAM_LAYERS.values())
            keys = {block_key(method, b): b for b in blocks}
            for key, block in keys.items():
                t0 = time.perf_counter()
                res = wb.compute_pointing(role, method, block)
                table[wb.pointing_key(role, method, block)] = {"model": wb.models[role].name, **res}
                print(f"{wb.models[role].name:16s} {method:15s} block {key:4s}: accuracy "
                      f"{res['accuracy']:.3f} energy {res['energy']:.3f} centre "
                      f"{res['centre_baseline']:.3f} random {res['random_baseline']:.3f} "
                      f"({res['clips']} clips, {res['seconds_per_clip']:.1f} s/clip, "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
                write_text(out, json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
