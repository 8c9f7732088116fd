"""The paper's Table 2 ablation rows as config overrides, and a runner that trains + evaluates each.

    from mmt_core.ablations import run_ablations
    from mmt_core.config import load_config
    run_ablations(load_config("configs/ablations/base.yaml"), "runs/ablations")

The same rows exist as YAML files in configs/ablations/ (one per row, `base: base.yaml`), for
`mmt train --config configs/ablations/avc_imc.yaml`; a test keeps the two in agreement.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

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
                  eval_split: str = "test", pointing: bool = True, progress: bool = True) -> dict:
    """Train each row into out_dir/ROW, evaluate its last checkpoint on `eval_split` (and, for rows
    with a video encoder, the Grad-CAM pointing game with its baselines when `pointing`); write out_dir/ablations.json
    after each row (so an interrupted sweep keeps what it finished). Returns {row: {top1, ...}}."""
    from .engine import train
    from .evaluation import evaluate_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "ablations.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for row in rows or list(ABLATION_ROWS):
        cfg = row_config(base_cfg, row)
        run = train(cfg, out / row, progress=progress)
        # The last checkpoint, not the best: no row is chosen by its score on the eval split.
        report = evaluate_checkpoint(run["last"], cfg.data.manifest, split=eval_split,
                                     views=cfg.data.test_views, batch_size=cfg.train.batch_size,
                                     pointing=pointing and "v" in cfg.model_args.get("modalities", "av"),
                                     explainers=["gradcam"], progress=progress)
        # "pointing": Grad-CAM's frame accuracy (the Ablations tab's column), with baselines
        scores = report.get("pointing", {}).get("gradcam")
        results[row] = {"top1": report.get("top1"), "top5": report.get("top5"),
                        "pointing": scores["accuracy"] if scores else None,
                        "pointing_scores": scores, "split": eval_split,
                        "clips": report.get("clips"), "skipped": report.get("skipped"),
                        "steps": run["step"], "epochs": run["epoch"],
                        "train_seconds": run["seconds"], "overrides": ABLATION_ROWS[row],
                        "model": cfg.model, "init": cfg.train.init}
        results = {k: results[k] for k in sorted(results, key=_row_order)}  # Table 2's order
        tmp = results_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, results_path)
    return results
