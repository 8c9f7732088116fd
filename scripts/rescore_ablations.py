"""Re-score the pointing game of a finished Table 2 sweep, e.g. after the default CAM layers change.

    python scripts/rescore_ablations.py runs/ablations [--seed 0 ...] [--row avc ...] [--explainer gradcam ...]
    mmt ablate --out runs/ablations --summarize     # then: the summary over every seed

For every OUT/seed{S}/ROW/last with a video encoder it reruns the pointing game of the named
explainers (default: gradcam) on the clips `mmt ablate` scores (the first 5 per class of the
test split), with today's default layers (`mmt_core.explain.CAM_BLOCKS`), and replaces those
scores in OUT/seed{S}/ablations.json. No training; top-1 and the other explainers stay.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmt_core.ablations import _pointing, row_config  # noqa: E402
from mmt_core.atomic import write_json  # noqa: E402
from mmt_core.config import load_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the sweep's --out folder")
    p.add_argument("--seed", type=int, action="append", default=None, help="default: every seed")
    p.add_argument("--row", action="append", default=None, help="default: every row")
    p.add_argument("--explainer", action="append", default=None)
    p.add_argument("--config", default="configs/ablations/base.yaml")
    a = p.parse_args()
    base = load_config(a.config)
    seeds = a.seed if a.seed is not None else sorted(
        int(f.parent.name[4:]) for f in Path(a.out).glob("seed*/ablations.json"))
    for seed in seeds:
        path = Path(a.out, f"seed{seed}", "ablations.json")
        results = json.loads(path.read_text())
        for row, res in list(results.items()):
            if a.row and row not in a.row:
                continue
            cfg = row_config(base, row)
            if not res.get("pointing_scores") or "v" not in cfg.model_args.get("modalities", "av"):
                continue
            game = _pointing(path.parent / row / "last", cfg.data.manifest, res["split"],
                             a.explainer or ["gradcam"], 5, progress=False)
            if not game:
                continue
            new = game["pointing"]
            # re-read before writing: another process may be rescoring other rows of this seed
            results = json.loads(path.read_text())
            results[row]["pointing_scores"].update(new)
            results[row]["pointing_block"] = game["pointing_block"]
            write_json(path, results, indent=2)
            print(f"seed {seed} {row:14s} " + " ".join(
                f"{n} {s['accuracy']:.3f}" for n, s in new.items()), flush=True)


if __name__ == "__main__":
    main()
