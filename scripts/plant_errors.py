"""Plant label errors in a copy of a dataset, then see where `mmt audit` ranks them.

    python scripts/plant_errors.py plant DATA_DIR OUT_DIR [--split test] [--flips 5] [--swaps 5] [--seed 0]
    mmt audit --models RUN --data OUT_DIR/manifest.csv --split test --json > audit.json
    python scripts/plant_errors.py rank OUT_DIR audit.json

`plant` copies DATA_DIR (a plain manifest.csv: path,label,split, paths relative to it) to OUT_DIR
and, among the clips of `--split`, gives `--flips` clips another class's label and replaces the
audio track of `--swaps` others by the sound of a clip of another class (ffmpeg stream copy: the
picture still shows the labelled class). OUT_DIR/planted.json lists them. `rank` prints where
each planted clip landed in the audit's ranking (JSON).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path


def plant(src: Path, dst: Path, split: str, flips: int, swaps: int, seed: int) -> dict:
    if dst.exists():
        sys.exit(f"error: {dst} exists; give a new folder")
    shutil.copytree(src, dst)
    with open(dst / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pool = [r for r in rows if r.get("split") == split]
    classes = sorted({r["label"] for r in rows})
    if len(pool) < flips + swaps or len(classes) < 2:
        sys.exit(f"error: the '{split}' split has {len(pool)} clips; {flips + swaps} are needed")
    rng = random.Random(seed)
    picked = rng.sample(pool, flips + swaps)
    planted = {}
    for r in picked[:flips]:
        new = rng.choice([c for c in classes if c != r["label"]])
        planted[r["path"]] = {"kind": "flip", "label": new, "true": r["label"]}
        r["label"] = new
    for r in picked[flips:]:
        donor = rng.choice([o for o in pool if o["label"] != r["label"] and o not in picked])
        clip = dst / r["path"]
        tmp = clip.with_name(f".swap-{clip.name}")
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-i",
                        str(src / donor["path"]), "-map", "0:v", "-map", "1:a", "-c", "copy",
                        "-shortest", str(tmp)], check=True)
        tmp.replace(clip)
        planted[r["path"]] = {"kind": "swap", "label": r["label"], "sound_of": donor["label"]}
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (dst / "planted.json").write_text(json.dumps(planted, indent=1))
    return planted


def rank(dst: Path, audit: Path) -> dict:
    planted = json.loads((dst / "planted.json").read_text())
    clips = json.loads(audit.read_text())["clips"]
    where = {Path(c["path"]).resolve(): i + 1 for i, c in enumerate(clips)}
    ranks = {p: where.get((dst / p).resolve()) for p in planted}
    found = sorted(r for r in ranks.values() if r is not None)
    k = len(planted)
    return {"planted": k, "clips_ranked": len(clips), "ranks": found,
            "in_top_k": sum(r <= k for r in found), "in_top_1.5k": sum(r <= 1.5 * k for r in found),
            "per_clip": {p: {**planted[p], "rank": ranks[p]} for p in planted}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plant")
    a.add_argument("src", type=Path)
    a.add_argument("dst", type=Path)
    a.add_argument("--split", default="test")
    a.add_argument("--flips", type=int, default=5)
    a.add_argument("--swaps", type=int, default=5)
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("rank")
    b.add_argument("dst", type=Path)
    b.add_argument("audit", type=Path)
    args = p.parse_args()
    if args.cmd == "plant":
        out = plant(args.src, args.dst, args.split, args.flips, args.swaps, args.seed)
    else:
        out = rank(args.dst, args.audit)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
