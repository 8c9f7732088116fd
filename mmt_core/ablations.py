"""The paper's Table 2 ablation rows as config overrides, and a runner that trains + evaluates each.

    from mmt_core.ablations import run_ablations
    from mmt_core.config import load_config
    run_ablations(load_config("configs/ablations/base.yaml"), "runs/ablations", seeds=[0, 1, 2])

or from the shell, one process per seed if you like (they share the summary):
    mmt ablate --config configs/ablations/base.yaml --out runs/ablations --seed 0 --seed 1 --seed 2

The same rows exist as YAML files in configs/ablations/ (one per row, `base: base.yaml`), for
`mmt train --config configs/ablations/avc_imc.yaml`; a test keeps the two in agreement.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .atomic import write_json
from .config import ExperimentConfig, apply_override, config_from_dict

_NO_CONTRAST = {"loss.avc": False, "loss.imc": False, "loss.al": False, "loss.imal": False}

# Row name → dotted overrides on the base config (an MMT with AVBottleneck fusion).
ABLATION_ROWS: dict[str, dict] = {
    # MViTv2 on frames alone (the same MMT code with only the video encoder).
    "video_only": {**_NO_CONTRAST, "model_args.modalities": "v"},
    # Audio-only and video-only heads, predictions averaged (late fusion), CE only.
    "avg": {**_NO_CONTRAST, "model_args.modalities": "av", "model_args.fusion": "avg"},
    # AVBottleneck fusion (K blocks, L tokens), CE only.
    "avbottleneck": {**_NO_CONTRAST, "model_args.modalities": "av",
                     "model_args.fusion": "bottleneck"},
    # + instance-level audio-video alignment (ALBEF ITC).
    "al": {**_NO_CONTRAST, "model_args.modalities": "av", "model_args.fusion": "bottleneck",
           "loss.al": True},
    # + supervised audio-video contrastive (eq. 3).
    "avc": {**_NO_CONTRAST, "model_args.modalities": "av", "model_args.fusion": "bottleneck",
            "loss.avc": True},
    # + AVC + instance-level intra-modal alignment.
    "avc_imal": {**_NO_CONTRAST, "model_args.modalities": "av", "model_args.fusion": "bottleneck",
                 "loss.avc": True, "loss.imal": True},
    # + AVC + supervised intra-modal contrastive (eq. 4): the full MMT.
    "avc_imc": {**_NO_CONTRAST, "model_args.modalities": "av", "model_args.fusion": "bottleneck",
                "loss.avc": True, "loss.imc": True},
}


def _row_order(row: str) -> int:
    return list(ABLATION_ROWS).index(row) if row in ABLATION_ROWS else len(ABLATION_ROWS)


def row_config(base_cfg: ExperimentConfig, row: str) -> ExperimentConfig:
    """The base config with one row's overrides applied."""
    if row not in ABLATION_ROWS:
        raise ValueError(f"unknown ablation row '{row}'; rows: {', '.join(ABLATION_ROWS)}")
    values = base_cfg.to_dict()
    for key, value in ABLATION_ROWS[row].items():
        apply_override(values, f"{key}={json.dumps(value)}")  # JSON is valid YAML
    return config_from_dict(values)


def run_ablations(base_cfg: ExperimentConfig, out_dir, rows: list[str] | None = None,
                  eval_split: str = "test", pointing: bool = True, progress: bool = True,
                  seeds=(0,), explainers=None,
                  pointing_per_class: int | None = 5) -> dict:
    """Train each row once per seed (`train.seed`) into out_dir/seed{S}/ROW, evaluate its last
    checkpoint on `eval_split` (top-1 on every clip; for rows with a video encoder and when
    `pointing`, the pointing game of `explainers` (None: every one that applies to the row) on the
    first `pointing_per_class` clips of each class, None = all), write
    out_dir/seed{S}/ablations.json after each row and the summary over every seed folder
    (`summarize_ablations`) to out_dir/ablations.json. An interrupted sweep
    keeps what it finished; seeds may run as separate processes on one out_dir. Returns the
    summary: {row: {top1, top1_sd, explainers, pointing_best, ...}}."""
    from .engine import train
    from .evaluation import evaluate_checkpoint

    out = Path(out_dir)
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        results_path = seed_dir / "ablations.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        for row in rows or list(ABLATION_ROWS):
            cfg = row_config(base_cfg, row)
            cfg.train.seed = int(seed)
            run = train(cfg, seed_dir / row, progress=progress)
            # The last checkpoint, not the best: no row is chosen by its score on the eval split.
            report = evaluate_checkpoint(run["last"], cfg.data.manifest, split=eval_split,
                                         views=cfg.data.test_views,
                                         batch_size=cfg.train.batch_size, progress=progress)
            game = {}
            if pointing and "v" in cfg.model_args.get("modalities", "av"):
                game = _pointing(run["last"], cfg.data.manifest, eval_split, explainers,
                                 pointing_per_class, progress)
            results[row] = {"seed": int(seed), "top1": report.get("top1"),
                            "top5": report.get("top5"), "pointing_scores": game.get("pointing", {}),
                            "pointing_block": game.get("pointing_block"),
                            "split": eval_split, "clips": report.get("clips"),
                            "skipped": report.get("skipped"), "steps": run["step"],
                            "epochs": run["epoch"], "train_seconds": run["seconds"],
                            "overrides": ABLATION_ROWS[row], "model": cfg.model,
                            "init": cfg.train.init}
            results = {k: results[k] for k in sorted(results, key=_row_order)}  # Table 2's order
            write_json(results_path, results, indent=2)
            summarize_ablations(out)
    return summarize_ablations(out) if seeds else {}


def _pointing(checkpoint, manifest, split, explainers, per_class, progress) -> dict:
    """`pointing_game`'s result ({"pointing": {explainer: scores}, "pointing_block", ...}) for one
    checkpoint on the first `per_class` clips per class."""
    from . import checkpoint as ckpt
    from .data.manifests import read_manifest
    from .evaluation import _remap_labels, pointing_game
    from .explain import EXPLAINERS, applicable

    model, meta = ckpt.load_checkpoint(checkpoint, "cpu")
    # A sweep asks every row for the same explainers; a row scores those that apply to it
    # (audio contrast needs the audio encoder the video-only row lacks). Unknown names stay, for
    # pointing_game's error.
    if explainers:
        explainers = [n for n in explainers
                      if n not in EXPLAINERS or applicable(n, model.modalities)]
        if not explainers:
            return {}
    man = read_manifest(manifest, split=split)
    records = _remap_labels([r for r in man.records if r.split == split], man.classes,
                            meta["classes"])
    if per_class:
        head = next(iter(meta["classes"]))
        seen = Counter()
        keep = []
        for r in records:  # manifest order: the first clips of each class
            seen[r.labels[head]] += 1
            if seen[r.labels[head]] <= per_class:
                keep.append(r)
        records = keep
    return pointing_game(model, meta, records, explainers=explainers, progress=progress)


def _mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the non-None values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return mean, sd


def summarize_ablations(out_dir) -> dict:
    """Merge out_dir/seed*/ablations.json into out_dir/ablations.json: per row the mean and the
    sample sd over seeds of top-1 and of each explainer's pointing accuracy ("explainers"; Grad-CAM,
    the paper's method, is "gradcam"), "pointing_best" = the explainer with the highest mean
    accuracy."""
    out = Path(out_dir)
    per_seed = {}
    for f in sorted(out.glob("seed*/ablations.json")):
        for row, r in json.loads(f.read_text()).items():
            per_seed.setdefault(row, []).append(r)
    summary = {}
    for row in sorted(per_seed, key=_row_order):
        runs = sorted(per_seed[row], key=lambda r: r["seed"])
        top1, top1_sd = _mean_sd([r["top1"] for r in runs])
        top5, _ = _mean_sd([r["top5"] for r in runs])
        names = sorted({n for r in runs for n in (r.get("pointing_scores") or {})})
        explainers = {}
        for n in names:
            got = [r["pointing_scores"][n] for r in runs if n in (r.get("pointing_scores") or {})]
            acc, acc_sd = _mean_sd([g["accuracy"] for g in got])
            energy, _ = _mean_sd([g.get("energy") for g in got])
            explainers[n] = {"accuracy": acc, "accuracy_sd": acc_sd, "energy": energy,
                             "frames": got[0].get("frames"), "clips": got[0].get("clips"),
                             "centre_baseline": got[0].get("centre_baseline"),
                             "random_baseline": got[0].get("random_baseline")}
        best = max(explainers, key=lambda n: explainers[n]["accuracy"]) if explainers else None
        summary[row] = {
            "top1": top1, "top1_sd": top1_sd, "top5": top5,
            "pointing_best": ({"explainer": best, "accuracy": explainers[best]["accuracy"],
                               "accuracy_sd": explainers[best]["accuracy_sd"]} if best else None),
            "explainers": explainers,
            "pointing_block": runs[0].get("pointing_block"),  # Grad-CAM's layers (None: unknown)
            "seeds": [r["seed"] for r in runs],  # each seed's own scores: OUT/seed{S}/ablations.json
            "split": runs[0]["split"], "clips": runs[0]["clips"], "skipped": runs[0]["skipped"],
            "steps": runs[0]["steps"], "epochs": runs[0]["epochs"],
            "train_seconds": _mean_sd([r["train_seconds"] for r in runs])[0],
            "overrides": runs[0]["overrides"], "model": runs[0]["model"], "init": runs[0]["init"]}
    if summary:
        write_json(out / "ablations.json", summary, indent=2)
    return summary
