"""How long the Teach tab takes: 5 classes x 6 clips of 3-5 s, train with the default settings.

    python benchmarks/bench_teach.py [--classes 5] [--clips 6] [--threads 2] [--epochs N]
    python benchmarks/bench_teach.py --real SET/manifest.csv [--others OTHER/manifest.csv] [--keep DIR]

Writes the clips with the built-in generator (5 of its classes; clip lengths cycle through 3, 3.5,
4, 4.5 and 5 s) into a temp dir, then runs exactly what the Teach tab runs (workbench.teach.TeachJob:
own_data.train_own → engine.train for the audio-only and video-only models from the shipped
encoders, then the MMT from those; each clip decoded once into the run's cache; the OOD reference
of each taught model). Prints one JSON object: wall seconds, validation top-1 of the three models,
the machine's load before and after.

--real: teach the 'train' clips of a manifest with train and test splits (e.g. a small set of
../shared/datasets/instruments.py, --classes 4) instead, then score the held-out 'test' clips with
each taught model as the app does (top-1, and how many are flagged "unlike the training data"),
and, with --others, how many clips of other classes (and one of white noise) are still flagged.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clips(root: Path, classes: int, clips: int) -> dict[str, int]:
    from mmt_core.data import synthetic

    lengths = (3.0, 3.5, 4.0, 4.5, 5.0)
    default = synthetic.SECONDS
    try:
        for label in range(classes):
            name = synthetic.CLASSES[label].name
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(clips):
                synthetic.SECONDS = lengths[(label + i) % len(lengths)]  # the generator's length
                synthetic.make_clip(root / name / f"{name}_{i}.mp4", label,
                                    np.random.default_rng([4242, label, i]))
    finally:
        synthetic.SECONDS = default
    return {c.name: len(list(c.glob("*.mp4"))) for c in sorted(root.iterdir()) if c.is_dir()}


def real_clips(manifest: Path, root: Path) -> dict[str, int]:
    """Class folders of links to the manifest's 'train' clips (what a teacher would upload)."""
    from mmt_core.data.manifests import read_manifest

    man = read_manifest(manifest)
    names = man.classes["label"]
    for r in man.records:
        if r.split == "train":
            d = root / names[r.labels["label"]]
            d.mkdir(parents=True, exist_ok=True)
            (d / Path(r.path).name).symlink_to(Path(r.path).resolve())
    return {c.name: len(list(c.iterdir())) for c in sorted(root.iterdir())}


def teach(clips: Path, out: Path, checkpoints: Path, epochs: int) -> tuple[dict, float, float]:
    """Train class folders `clips` exactly as the Teach tab does (workbench.teach.TeachJob; the
    taught set lands in out/taught): (its final snapshot, wall seconds, this process's CPU
    seconds). Exits with the error if training did not finish."""
    import resource

    from workbench.teach import TeachJob

    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    job = TeachJob.start(clips, out, checkpoints, epochs=epochs)
    job.thread.join()
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    snap = job.snapshot()
    if snap["status"] != "done":
        raise SystemExit(f"training {snap['status']}: {snap['error']}")
    return snap, seconds, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def score_held_out(taught: Path, manifest: Path, others: Path | None, tmp: Path,
                   foreign: bool = True) -> dict:
    """Each taught model on the manifest's 'test' clips, as `mmt predict` scores one clip:
    top-1, and the share flagged "unlike the training data"; with `foreign`, the same flag on
    a noise clip and on the other classes of `others`."""
    import subprocess

    from mmt_core.data.manifests import read_manifest
    from mmt_core.inference import predict_file
    from workbench.inference import DEMO_MODELS

    man = read_manifest(manifest)
    test = [r for r in man.records if r.split == "test"]
    names = man.classes["label"]
    clips = []  # foreign: a test pattern with white noise, then the other classes' clips
    if foreign:
        clips.append(tmp / "noise.mp4")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=s=160x160:d=3", "-f", "lavfi", "-i", "anoisesrc=d=3",
                        "-shortest", str(clips[0])], check=True)
        other = read_manifest(others) if others else None
        clips += ([r.path for r in other.records
                   if other.classes["label"][r.labels["label"]] not in names] if other else [])
    out = {"held_out_clips": len(test)}
    if foreign:
        out["other_class_clips"] = len(clips) - 1
    for role, name in DEMO_MODELS.items():
        hits = flagged = 0
        for r in test:
            res = predict_file(r.path, taught / name, topk=1)
            hits += res["predictions"]["label"][0]["label"] == names[r.labels["label"]]
            flagged += bool(res["ood"] and res["ood"]["flagged"])
        f_flag = [bool((res := predict_file(p, taught / name, topk=1))["ood"]
                       and res["ood"]["flagged"]) for p in clips]
        out[f"held_out_top1_{role}"] = round(hits / len(test), 4)
        out[f"held_out_flagged_{role}"] = round(flagged / len(test), 4)
        if f_flag:
            out[f"noise_flagged_{role}"] = f_flag[0]  # the test pattern with white noise
        if len(clips) > 1:  # clips of the other classes
            out[f"other_classes_flagged_{role}"] = round(sum(f_flag[1:]) / (len(clips) - 1), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--clips", type=int, default=6, help="clips per class")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the app uses 1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="per model (default: the Teach tab's, workbench.teach.EPOCHS)")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--real", default="", help="a manifest with train/test splits to teach")
    p.add_argument("--others", default="", help="a manifest of clips of other classes")
    p.add_argument("--keep", default="", help="copy the taught set to this folder (to open it "
                   "with `python app.py --models DIR` or inspect its pool)")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from workbench.teach import teach_epochs

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_teach_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        counts = (real_clips(Path(a.real), tmp / "clips") if a.real
                  else make_clips(tmp / "clips", a.classes, a.clips))
        t_make = time.perf_counter() - t0
        snap, seconds, cpu = teach(tmp / "clips", tmp / "job", Path(a.checkpoints),
                                   a.epochs or teach_epochs())
        if a.keep:
            import shutil

            shutil.copytree(tmp / "job" / "taught", a.keep, dirs_exist_ok=True)
        held = score_held_out(tmp / "job" / "taught", Path(a.real), Path(a.others) if a.others
                              else None, tmp) if a.real else {}
    r = snap["result"]
    print(json.dumps({**held,
        "teach_seconds": round(seconds, 1), "target_seconds": 120,
        # CPU seconds of this process: on a shared machine, cpu / threads is what the run
        # would take on idle cores (the wall clock above includes waiting for other jobs)
        "teach_cpu_seconds": round(cpu, 1),
        "idle_estimate_seconds": round(cpu / a.threads, 1),
        "classes": len(counts), "clips": sum(counts.values()), "clip_seconds": "3-5",
        "epochs": snap["plan"], "val_clips": r.get("val_clips"),
        "val_top1": {"mmt": r.get("val_top1"), "audio": r.get("audio_val_top1"),
                     "video": r.get("video_val_top1")},
        "train_top1_mmt": r.get("train_top1"), "make_clips_seconds": round(t_make, 1),
        "torch_threads": a.threads, "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
