"""The `mmt` command (also `python -m mmt_core`).

Each sub-command is a thin shell over one core function; `--json` prints that function's dict on
stdout. A user error (UserError: bad path, bad media, bad flag) prints one line on stderr and
exits 2, with no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError


def _print_result(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        if isinstance(value, (dict, list)) and len(json.dumps(value, default=str)) > 200:
            continue  # long tables only in --json
        print(f"{key}: {value}")


def cmd_info(a) -> dict:
    from .registry import model_info

    return model_info(a.model, frames=a.frames, size=a.size, audio_frames=a.audio_frames,
                      mel_bins=a.mel_bins, num_classes=a.num_classes)


def cmd_models(a) -> dict:
    from .registry import list_models

    return {"models": list_models()}


def cmd_synth(a) -> dict:
    from .data.synthetic import write_dataset

    return write_dataset(a.out, clips_per_class=a.clips_per_class, seed=a.seed, split=a.split,
                         progress=not a.json, version=a.version, hide=a.hide,
                         clutter=a.clutter)


def cmd_stats(a) -> dict:
    from .data.features import dataset_stats

    return dataset_stats(a.manifest, split=a.split, limit=a.limit, format=a.format,
                         num_mel_bins=a.mel_bins, progress=not a.json)


def cmd_cache(a) -> dict:
    from .config import load_config

    cfg = load_config(a.config, a.set)
    from .data.cache import build_cache

    return build_cache(cfg.data, out_dir=a.out, split=a.split, progress=not a.json)


def cmd_shard(a) -> dict:
    cfg = None
    if a.decoded:
        if not a.config:
            raise UserError("--decoded needs --config RECIPE (the sizes to decode to)")
        from .config import load_config

        cfg = load_config(a.config, a.set).data
    elif a.config or a.set:
        raise UserError("--config/--set only apply with --decoded")
    from .data.shards import write_shards

    return write_shards(a.manifest, a.out, split=a.split, shard_size=a.shard_size,
                        shard_mb=a.shard_mb, decoded_cfg=cfg, format=a.format, seed=a.seed,
                        progress=not a.json)


def cmd_train(a) -> dict:
    if a.data is not None:
        if a.model is None:
            raise UserError("--data needs --model (mat_tiny, mvit_tiny_video or mmt_tiny)")
        if a.resume:
            raise UserError("--resume works with --config; a --data run starts afresh")
        from .own_data import train_own

        return train_own(a.data, a.model, a.out, epochs=a.epochs, overrides=a.set,
                         progress=not a.json)
    if a.model is not None or a.epochs is not None:
        raise UserError("--model and --epochs go with --data; with --config use --set")
    from .config import load_config

    cfg = load_config(a.config, a.set)  # config errors before the heavy imports
    from .engine import train

    return train(cfg, a.out, resume=a.resume, progress=not a.json)


def cmd_compare(a) -> dict:
    from .own_data import compare, format_table

    result = compare(a.data, a.out, epochs=a.epochs, overrides=a.set, progress=not a.json)
    if not a.json:
        print(format_table(result))
        return None
    return result


def cmd_ablate(a) -> dict:
    from .ablations import ABLATION_ROWS, run_ablations, summarize_ablations
    from .config import load_config

    for row in a.row or []:
        if row not in ABLATION_ROWS:
            raise UserError(f"unknown ablation row '{row}'; rows: {', '.join(ABLATION_ROWS)}")
    if a.summarize:
        res = summarize_ablations(a.out)
        if not res:
            raise UserError(f"no seed*/ablations.json under {a.out}")
        return res
    cfg = load_config(a.config, a.set)
    return run_ablations(cfg, a.out, rows=a.row, seeds=a.seed or [0], eval_split=a.split,
                         pointing=not a.no_pointing, explainers=a.explainer,
                         pointing_per_class=a.pointing_per_class or None, progress=not a.json)


def cmd_eval(a) -> dict:
    from .engine import evaluate_checkpoint
    from .explain import cam_blocks

    if bool(a.manifest) == bool(a.shards):
        raise UserError("give --manifest or --shards (one of them)")
    try:
        blocks = cam_blocks(a.cam_block)
    except ValueError as e:
        raise UserError(f"--cam-block: {e}") from None
    return evaluate_checkpoint(a.checkpoint, manifest=a.manifest, split=a.split, views=a.views,
                               pointing=a.pointing, cam_block=blocks,
                               batch_size=a.batch_size, progress=not a.json, shards=a.shards,
                               explainers=a.explainer)


def cmd_predict(a) -> dict:
    from .inference import predict_file, predict_windows

    if a.windows:
        return predict_windows(a.clip, a.checkpoint, stride=a.stride, topk=a.topk)
    if a.stride is not None:
        raise UserError("--stride needs --windows")
    return predict_file(a.clip, a.checkpoint, topk=a.topk)


def cmd_ood(a) -> dict:
    """`mmt ood build`: fit a checkpoint's "unlike the training data" reference on a manifest
    split (its training clips, usually) and write CHECKPOINT/ood.safetensors."""
    from pathlib import Path

    from . import ood
    from .checkpoint import load_checkpoint
    from .data.manifests import read_manifest

    ck = Path(a.checkpoint)
    if not (ck / "config.json").is_file() or not (ck / "model.safetensors").is_file():
        raise UserError(f"{ck} is not a checkpoint (needs config.json and model.safetensors)")
    man = read_manifest(a.manifest, format=a.format, split=a.split)
    paths = [r.path for r in man.records]
    if len(paths) < 2:
        raise UserError(f"split '{a.split}' of {a.manifest} has {len(paths)} clips; the "
                        f"reference needs at least 2 (splits: {', '.join(man.splits)})")
    try:
        model, meta = load_checkpoint(ck, "cpu")
        summary = ood.build(ck, paths, model=model, meta=meta,
                            source=f"{Path(a.manifest).name} split {a.split}, {len(paths)} clips")
    except ValueError as e:
        raise UserError(str(e)) from None
    return {"path": str(ck / ood.OOD_FILE), **summary}


def cmd_bench(a) -> dict:
    from .bench import run_benchmark

    return run_benchmark([m for m in a.models.split(",") if m], device=a.device, mode=a.mode,
                         batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
                         size=a.size, print_table=not a.json)


# ---- mmt audit (dataset analysis: mmt_core/analysis.py) ----

def cmd_audit(a) -> dict | None:
    """The split's clips ranked by how suspicious their label is (docs/workbench.md, "Dataset
    analysis"): {"clips": [{"path", "label", "score", "reason", "probs"}, ...]}."""
    from .analysis import AnalysisConfig, evaluate_set, suspicious
    from .model_set import open_model_set

    ms = open_model_set(a.models)
    data = a.data or ms.manifest
    if data is None:
        raise UserError(f"give --data: {a.models} records no manifest that exists here"
                        + (f" ({ms.recorded_manifest})" if ms.recorded_manifest else ""))
    if a.top is not None and a.top < 1:
        raise UserError(f"--top must be >= 1, got {a.top}")
    if a.max_clips < 1:
        raise UserError(f"--max-clips must be >= 1, got {a.max_clips}")
    cfg = AnalysisConfig(max_clips=a.max_clips, cache_dir=a.cache_dir, progress=not a.json)
    ev = evaluate_set(ms, data, a.split, cfg)
    clips = [{k: r[k] for k in ("path", "label", "score", "reason", "probs")}
             for r in suspicious(ev, a.top)]
    if a.json:
        return {"clips": clips}
    for k, c in enumerate(clips, 1):
        print(f"{k:>4} {c['score']:7.2f}  {c['path']}\n       {c['reason']}")
    return None


def _add_audit(add) -> None:
    sp = add("audit", cmd_audit, "rank a split's clips by how likely their label is wrong or "
             "their sound and picture disagree (fused, audio-only, video-only models)")
    sp.add_argument("--models", required=True,
                    help="a model set: a compare run, a taught folder, checkpoints/, or one "
                         "checkpoint")
    sp.add_argument("--data", default=None,
                    help="manifest or folder (default: the one the fused model was trained on)")
    sp.add_argument("--split", default="test")
    sp.add_argument("--top", type=int, default=None, help="only the K most suspicious clips")
    sp.add_argument("--max-clips", type=int, default=2000,
                    help="a bigger split is sampled to this many clips, per class")
    sp.add_argument("--cache-dir", default=".cache/analysis",
                    help="where the models' outputs on the split are cached")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmt", description="Multiscale Multimodal Transformer workbench")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("info", cmd_info, "parameters and GMACs (multiply-adds) of a registered model")
    sp.add_argument("--model", required=True)
    sp.add_argument("--frames", type=int, default=None, help="video frames T (default: the model's)")
    sp.add_argument("--size", type=int, default=None, help="video frame side (default: the model's)")
    sp.add_argument("--audio-frames", type=int, default=None, help="fbank frames (default: the model's)")
    sp.add_argument("--mel-bins", type=int, default=None, help="mel bins (default: the model's)")
    sp.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's)")

    add("models", cmd_models, "list the registered model names")

    sp = add("synth", cmd_synth, "write the built-in 'sounding objects' dataset (mp4 + manifest.csv)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--clips-per-class", type=int, default=20)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--split", default="train")
    sp.add_argument("--version", type=int, default=None,
                    help="generator version: 2 (the shipped checkpoints' data; the distractor's "
                         "look is drawn from all three) or 1 (the first generator: the distractor "
                         "has another look, which leaks the class); default: the folder's "
                         "version, else 2")
    sp.add_argument("--hide", choices=["sounder", "distractor"], default=None,
                    help="leave this object out of every clip (counterfactual clips, labelled "
                         "with their class; names carry 'no<object>')")
    sp.add_argument("--clutter", action="store_true",
                    help="paint 3-8 static shapes of random looks and colours on every clip's "
                         "background (a training augmentation; names carry 'clutter')")

    sp = add("stats", cmd_stats, "fbank normalisation mean/std of a dataset")
    sp.add_argument("--manifest", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--format", default="auto")
    sp.add_argument("--limit", type=int, default=0, help="use at most N clips (0 = all)")
    sp.add_argument("--mel-bins", type=int, default=128, help="fbank mel bins (data.num_mel_bins)")

    sp = add("cache", cmd_cache, "decode a split once into memory-mappable frame + fbank shards")
    sp.add_argument("--config", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    sp = add("shard", cmd_shard, "write a manifest split as WebDataset tar shards + index.json")
    sp.add_argument("--manifest", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--out", required=True, help="directory of the shards and index.json")
    sp.add_argument("--shard-size", type=int, default=0, help="samples per shard")
    sp.add_argument("--shard-mb", type=float, default=0.0,
                    help="MB per shard (default 1000 when --shard-size is not given)")
    sp.add_argument("--decoded", action="store_true",
                    help="store decoded frames (JPEG) + fbank (.npy) at the recipe's sizes")
    sp.add_argument("--config", default=None, help="recipe whose data sizes --decoded uses")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--format", default="auto")
    sp.add_argument("--seed", type=int, default=0, help="seed of the (random) order of the clips")

    sp = add("train", cmd_train, "train a model from a YAML recipe, or on your own clips (--data)")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a YAML recipe (configs/)")
    src.add_argument("--data", help="your clips: a folder of class folders or a manifest; uses "
                                    "the own-data recipe of --model")
    sp.add_argument("--model", default=None, help="with --data: mat_tiny, mvit_tiny_video, mmt_tiny")
    sp.add_argument("--epochs", type=int, default=None, help="with --data: training epochs")
    sp.add_argument("--out", required=True, help="run directory")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config key, e.g. --set train.max_steps=8 --set seed=1")
    sp.add_argument("--resume", action="store_true", help="continue exactly from RUN_DIR/last")

    sp = add("compare", cmd_compare, "train audio-only, video-only and MMT on your clips and "
             "compare them (and their late fusion) on the test split")
    sp.add_argument("--data", required=True, help="a folder or manifest with a test split")
    sp.add_argument("--out", required=True, help="run directory (audio/, video/, mmt/, compare.json)")
    sp.add_argument("--epochs", type=int, default=None, help="training epochs of each model")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the own-data recipes (all three models)")

    sp = add("ablate", cmd_ablate, "the paper's Table 2 rows: train each row per seed, score "
             "top-1 and the pointing game, summarise mean ± sd over seeds")
    sp.add_argument("--config", default="configs/ablations/base.yaml", help="the rows' base recipe")
    sp.add_argument("--out", required=True, help="sweep directory (seed*/ROW/, ablations.json)")
    sp.add_argument("--seed", type=int, action="append", default=None,
                    help="training seed (repeatable; default 0)")
    sp.add_argument("--row", action="append", default=None, help="only this row (repeatable)")
    sp.add_argument("--split", default="test", help="the split each row is scored on")
    sp.add_argument("--explainer", action="append", default=None, metavar="NAME",
                    help="explainers of the pointing game (repeatable; default: every one that "
                         "applies to the row)")
    sp.add_argument("--pointing-per-class", type=int, default=5,
                    help="clips per class of the pointing game (0 = every clip of the split)")
    sp.add_argument("--no-pointing", action="store_true", help="top-1 only")
    sp.add_argument("--summarize", action="store_true",
                    help="only rewrite OUT/ablations.json from the seed folders")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    sp = add("eval", cmd_eval, "evaluate a checkpoint on a manifest")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--manifest", default=None)
    sp.add_argument("--shards", default=None,
                    help="evaluate on WebDataset shards (DIR or pattern) instead of a manifest")
    sp.add_argument("--split", default="test")
    sp.add_argument("--views", type=int, default=None, help="temporal views per clip (paper: 5)")
    sp.add_argument("--pointing", action="store_true",
                    help="pointing game of the explainers, with centre and random baselines "
                         "(clips with box sidecars: the built-in data, the instruments set)")
    sp.add_argument("--explainer", action="append", default=None, metavar="NAME",
                    help="explainer to score (repeatable; default: every one that applies: "
                         "gradcam, relevance, occlusion, audio_contrast)")
    sp.add_argument("--cam-block", default="0,1",
                    help="encoder block(s) of the block-based maps (Grad-CAM, and audio_contrast "
                         "on it): an index or a comma list, maps averaged (default 0,1: stage 1 "
                         "and the first block of stage 2; -2: the block before the last)")
    sp.add_argument("--batch-size", type=int, default=8)

    sp = add("predict", cmd_predict, "predict the classes of one clip")
    sp.add_argument("clip")
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--topk", type=int, default=5)
    sp.add_argument("--windows", action="store_true",
                    help="a clip longer than the model's window: top-k of every sliding window")
    sp.add_argument("--stride", type=float, default=None,
                    help="seconds between window starts with --windows (default: half a window)")

    sp = add("ood", cmd_ood, "the 'unlike the training data' check of a checkpoint: `ood build` "
             "fits its reference on a manifest split")
    sp.add_argument("action", choices=["build"])
    sp.add_argument("--checkpoint", required=True)
    sp.add_argument("--manifest", required=True, help="a manifest or a folder of class folders")
    sp.add_argument("--split", default="train", help="the reference clips (default train)")
    sp.add_argument("--format", default="auto")

    sp = add("bench", cmd_bench, "throughput, GFLOPs, MFU and memory of models on one device")
    sp.add_argument("--models", default="mat_b,ast_b")
    sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sp.add_argument("--mode", default="infer", choices=["infer", "train"])
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--steps", type=int, default=None)
    sp.add_argument("--warmup", type=int, default=None)
    sp.add_argument("--size", default="full", choices=["full", "smoke"],
                    help="smoke: tiny inputs and variants, for CI")
    _add_audit(add)
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make a CPU shared with DataLoader workers (or other
    # jobs) crawl, 15-50x on 2 cores; sleeping waiters cost little when the CPU is ours alone.
    # Must be set before torch is imported, which the sub-commands do lazily.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        result = args.fn(args)
    except UserError as e:
        print(f"mmt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmt {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is not None:
        _print_result(result, args.json)
    return 0
