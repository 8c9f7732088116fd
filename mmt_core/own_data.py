"""Data people bring: one call from a folder of class folders (or any supported manifest) to a
trained model, and `compare`: audio-only vs video-only vs their late fusion vs the MMT.

    mmt train --data my_clips/ --model mmt_tiny --out runs/mine
    mmt compare --data my_clips/manifest.csv --out runs/mine_compare

`prepare_own_data` does what a recipe cannot know in advance: it checks the data (one clear line
per problem, before any training), carves a validation split when there is none, picks the clip
window from the clips' durations, computes the fbank statistics of the training split (cached) and
decodes every clip once into a cache under the run directory.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from .atomic import write_json
from .config import DataConfig, ExperimentConfig, load_config
from .errors import ConfigError, MediaError, UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# --model -> the own-data recipe in configs/ (tiny models: what a 2-core CPU trains in minutes).
RECIPES = {"mat_tiny": "own_data_tiny.yaml", "mvit_tiny_video": "own_data_tiny.yaml",
           "mmt_tiny": "own_data_mmt_tiny.yaml"}
# An audio+video model -> (its audio-only, its video-only model): what train.init=auto trains first.
UNIMODAL = {"mmt_tiny": ("mat_tiny", "mvit_tiny_video")}
MIN_SECONDS = 1.0  # shorter clips are refused: too short for a window of frames and fbank


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def own_config(model: str, overrides=(), epochs: int | None = None) -> ExperimentConfig:
    """The own-data recipe of `model` with `overrides` (key=value) and `epochs` applied."""
    if model not in RECIPES:
        raise ConfigError(f"no own-data recipe for model '{model}' (choose from "
                          f"{', '.join(sorted(RECIPES))}; other models: mmt train --config)")
    sets = [f"model={model}", *overrides]
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {epochs}")
        sets.append(f"train.epochs={epochs}")
    return load_config(CONFIGS / RECIPES[model], sets)


def model_modalities(cfg: ExperimentConfig) -> str:
    """"a", "v" or "av" of cfg's model (built on the meta device: no memory, no compute)."""
    import torch

    from .registry import create_model

    with torch.device("meta"):
        return create_model(cfg.model, **{k: v for k, v in cfg.model_args.items()
                                          if k == "modalities"}).modalities


# ---------------------------------------------------------------- checks

def check_records(records, classes: list[str], train_split: str, durations: dict[str, float],
                  where: str) -> None:
    """Raise a one-line UserError for data no training can work with."""
    if len(classes) < 2:
        raise UserError(f"{where}: the labels have only one class ('{classes[0]}'); a classifier "
                        "needs at least 2")
    counts = Counter(r.labels["label"] for r in records if r.split == train_split)
    few = [(classes[i], counts.get(i, 0)) for i in range(len(classes)) if counts.get(i, 0) < 2]
    if few:
        names = ", ".join(f"'{c}' ({n})" for c, n in few[:5])
        raise UserError(f"{where}: {len(few)} class(es) have fewer than 2 '{train_split}' clips: "
                        f"{names}; every class needs at least 2")
    short = [(r.path, durations[r.path]) for r in records if durations[r.path] < MIN_SECONDS]
    if short:
        raise UserError(f"{where}: {len(short)} clip(s) are shorter than {MIN_SECONDS:g} s "
                        f"(first: {short[0][0]}, {short[0][1]:.2f} s)")


def _durations(records) -> dict[str, float]:
    """Seconds of each record (its segment, or the whole file) from container metadata."""
    from .data.media import probe

    out = {}
    for r in records:
        if r.path not in out:
            try:
                d = probe(r.path).duration
            except MediaError as e:
                raise UserError(f"cannot read clip {r.path}: {e}") from None
            end = min(d, r.end) if r.end is not None else d
            out[r.path] = end - (r.start or 0.0)
    return out


def _missing(records, where: str) -> None:
    missing = [r.path for r in records if not os.path.isfile(r.path)]
    if missing:
        raise UserError(f"{where}: {len(missing)} of {len(records)} clips do not exist "
                        f"(first: {missing[0]})")


# ---------------------------------------------------------------- preparation

def clip_window(durations: list[float], cap: float) -> tuple[float, int]:
    """(clip_seconds, audio_frames): the median training duration (to 0.1 s), at most `cap`;
    fbank frames of that window rounded down to a multiple of 16 (no padding with silence)."""
    from .data.cache import _fbank_frames

    seconds = min(cap, math.floor(statistics.median(durations) * 10 + 1e-6) / 10)
    seconds = max(seconds, MIN_SECONDS)
    return seconds, max(16, _fbank_frames(round(seconds * 16000), 16000) // 16 * 16)


def _stats_given(d: DataConfig) -> bool:
    default = DataConfig()
    return (d.audio_mean, d.audio_std) != (default.audio_mean, default.audio_std)


def _ensure_cache(data_cfg: DataConfig, records, splits, progress: bool) -> None:
    """Decode each split once into data_cfg.cache_dir, unless a cache of the same clips and
    geometry is already there."""
    from .data.cache import build_cache, cache_geometry, cache_key

    fps, side = cache_geometry(data_cfg)
    for split in splits:
        keys = {cache_key(r) for r in records if r.split == split}
        f = Path(data_cfg.cache_dir) / f"{split}_index.json"
        if f.is_file():
            try:
                idx = json.loads(f.read_text())
                same = (idx["fps"], idx["side"], idx["num_mel_bins"]) == \
                    (fps, side, data_cfg.num_mel_bins)
                have = {c["key"] for c in idx["clips"]}
                if same and have <= keys and len(have) + len(idx["skipped"]) == len(keys):
                    continue
            except (OSError, ValueError, KeyError):
                pass
        _say(progress, f"decoding the {len(keys)} '{split}' clips once into {data_cfg.cache_dir}")
        build_cache(data_cfg, data_cfg.cache_dir, split=split, progress=progress)


def prepare_own_data(data, cfg: ExperimentConfig, run_dir, progress: bool = True):
    """Check `data` (a manifest of any supported format, or a folder of class folders) and fill
    in what depends on it. Returns (cfg, info); cfg.data then points at RUN_DIR/manifest.csv (plain,
    absolute paths) with splits train / val[ / test] and the statistics, window and cache dir."""
    from .data.features import cached_dataset_stats
    from .data.manifests import read_manifest
    from .data.splits import carve_split, check_groups, write_plain_manifest

    p = Path(data).expanduser()
    if p.is_dir() and not any(p.iterdir()):
        raise UserError(f"{p} is an empty folder: put one folder of clips per class in it")
    man = read_manifest(p, format=cfg.data.format, root=cfg.data.root)
    if list(man.classes) != ["label"]:
        raise UserError(f"{p}: --data takes one label per clip; this manifest has heads "
                        f"{', '.join(man.classes)} (use mmt train --config)")
    d = dataclasses.replace(cfg.data)
    tr = d.train_split
    # No split column / no split folders: every clip is a training clip.
    records = [dataclasses.replace(r, split=r.split or tr) for r in man.records]
    if not records:
        raise UserError(f"{p}: no clips")
    _missing(records, str(p))
    durations = _durations(records)
    check_records(records, man.classes["label"], tr, durations, str(p))
    check_groups([r for r in records if r.split == tr], str(p))

    run = Path(run_dir)
    notes = []
    val = d.val_split or "val"
    if not any(r.split == val for r in records):
        train_only = [r for r in records if r.split == tr]
        source_notes: list[str] = []
        carved = carve_split(train_only, d.val_fraction, cfg.train.seed, name=val,
                             notes=source_notes)
        rest = [r for r in records if r.split != tr]
        records = carved + rest
        n_val = sum(r.split == val for r in carved)
        notes.append(f"no '{val}' split: carved {n_val} of {len(train_only)} training clips "
                     f"(~{d.val_fraction:.0%} per class, whole sources: a recording never "
                     f"straddles train and val; seed {cfg.train.seed}) into "
                     f"{run / 'manifest.csv'}; `best` and the few-clip pool are chosen on them")
        notes += source_notes
    else:
        have = Counter(r.labels["label"] for r in records if r.split == val)
        empty = [c for i, c in enumerate(man.classes["label"]) if not have.get(i)]
        if empty:
            raise UserError(f"{p}: {len(empty)} class(es) have no clips in the '{val}' split "
                            f"(first: '{empty[0]}'); give each class validation clips, or drop "
                            f"the '{val}' split to have one carved by source")
    manifest = write_plain_manifest(run / "manifest.csv", records, man.classes)
    d.manifest, d.format, d.root, d.val_split = str(manifest.resolve()), "plain", "", val

    train_secs = [durations[r.path] for r in records if r.split == tr]
    d.clip_seconds, d.audio_frames = clip_window(train_secs, cfg.data.clip_seconds)
    notes.append(f"clip window {d.clip_seconds:g} s ({d.audio_frames} fbank frames, "
                 f"{d.num_frames} frames at {d.image_size}²): median training clip "
                 f"{statistics.median(train_secs):.2f} s, recipe cap {cfg.data.clip_seconds:g} s")

    if _stats_given(d):
        stats = {"mean": d.audio_mean, "std": d.audio_std, "given": True}
        notes.append(f"fbank statistics given: mean {d.audio_mean:.4f}, std {d.audio_std:.4f}")
    else:
        stats = cached_dataset_stats(d.manifest, split=tr, progress=progress,
                                     sample_rate=d.sample_rate, num_mel_bins=d.num_mel_bins)
        d.audio_mean, d.audio_std = round(stats["mean"], 4), round(stats["std"], 4)
        notes.append(f"fbank statistics of the {stats['clips']} '{tr}' clips: mean "
                     f"{d.audio_mean:.4f}, std {d.audio_std:.4f}"
                     + (" (cached)" if stats.get("cached") else ""))

    if not d.cache_dir:
        d.cache_dir = str((run / "cache").resolve())
    splits = sorted({r.split for r in records})
    for line in notes:
        _say(progress, line)
    _ensure_cache(d, records, splits, progress)
    cfg = dataclasses.replace(cfg, data=d)
    counts = Counter(r.split for r in records)
    info = {"data": str(p), "manifest": d.manifest, "classes": man.classes["label"],
            "clips": dict(sorted(counts.items())), "val_carved": bool(notes and "carved" in notes[0]),
            "clip_seconds": d.clip_seconds, "audio_frames": d.audio_frames,
            "audio_mean": d.audio_mean, "audio_std": d.audio_std,
            "stats_cached": bool(stats.get("cached")), "stats_given": bool(stats.get("given")),
            "cache_dir": d.cache_dir, "notes": notes}
    return cfg, info


# ---------------------------------------------------------------- training

def _init_paths(init, modalities: str) -> list[str]:
    """`init` ({"audio": dir, "video": dir} or "dir[,dir]") -> the checkpoint dirs that match a
    model of `modalities` (a checkpoint's own modalities decide where it goes)."""
    from . import checkpoint as ckpt

    if not init:
        return []
    items = list(init.values()) if isinstance(init, dict) else \
        [s.strip() for s in str(init).split(",") if s.strip()]
    out = []
    for path in items:
        m = ckpt.read_meta(path).get("modalities", "")
        if m and set(m) <= set(modalities):
            out.append(str(path))
    return out


def _with_data(cfg: ExperimentConfig, data: DataConfig) -> ExperimentConfig:
    return dataclasses.replace(cfg, data=dataclasses.replace(data))


def step_budget(cfg: ExperimentConfig) -> ExperimentConfig:
    """cfg with its epochs raised so that training takes at least train.min_steps optimizer
    steps: six clips per class give two or three steps an epoch, too few to learn anything."""
    if cfg.train.min_steps <= 0:
        return cfg
    from .data.manifests import read_manifest

    n = sum(r.split == cfg.data.train_split
            for r in read_manifest(cfg.data.manifest, format="plain").records)
    per_epoch = max(1, n // cfg.train.batch_size)  # the loader drops the last partial batch
    epochs = max(cfg.train.epochs, math.ceil(cfg.train.min_steps / per_epoch))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


def collect_pool_inputs(model, dataset, batch_size: int = 16) -> dict:
    """{"logp": (n, C) network log-probs, "y": (n,), sense: (n, D) descriptors} of a dataset
    (1 view, eval mode, no gradients; broken clips are skipped): what fewshot.fit_pool takes."""
    import torch
    from torch.utils.data import DataLoader

    from .data.dataset import collate_skip_broken
    from .evaluation import model_inputs, video_norm_of
    from .fewshot import descriptors

    norm = video_norm_of(dataset)
    was = model.training
    model.eval()
    rows: dict[str, list] = {}
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skip_broken):
            if not batch or not batch.get("labels"):
                continue
            inputs = model_inputs(batch, model.modalities, torch.device("cpu"), video_norm=norm)
            out = model(**inputs)
            rows.setdefault("logp", []).append(out.head_logits["label"].float().log_softmax(-1))
            rows.setdefault("y", []).append(batch["labels"]["label"])
            for s, x in descriptors(inputs, norm).items():
                rows.setdefault(s, []).append(x)
    model.train(was)
    return {k: torch.cat(v) for k, v in rows.items()}


def fit_run_pool(cfg: ExperimentConfig, checkpoint, progress: bool = True) -> dict:
    """Fit mmt_core.fewshot's pool for `checkpoint` on the run's train and val clips (the
    cache, 1 view) and save it beside the weights; returns its report and weights."""
    from . import checkpoint as ckpt
    from . import fewshot
    from .data.dataset import AVDataset
    from .data.manifests import read_manifest

    model, meta = ckpt.load_checkpoint(checkpoint, "cpu", pool=False)  # fit on the network alone
    records = read_manifest(cfg.data.manifest, format="plain").records

    def part(split):
        recs = [r for r in records if r.split == split]
        if not split or not recs:
            return {}
        return collect_pool_inputs(model, AVDataset(recs, meta["classes"], cfg.data, train=False,
                                                num_views=1, modalities=model.modalities))

    pool = fewshot.fit_pool(model.modalities, part(cfg.data.train_split),
                            part(cfg.data.val_split), len(meta["classes"]["label"]),
                            (cfg.data.video_mean, cfg.data.video_std))
    fewshot.save_pool(checkpoint, pool)
    _say(progress, "few-clip pool of {}: weights {}".format(
        Path(checkpoint).parent.name, ", ".join(f"{k} {v:.2f}" for k, v in pool.weights.items())))
    return {**pool.report, "weights": pool.weights}


def _run(cfg, out, name, *, progress, on_record, stop):
    from .engine import train

    hook = None
    if on_record is not None:
        def hook(record):
            on_record({**record, "run": name})
    cfg = step_budget(cfg)
    res = train(cfg, out, progress=progress, on_record=hook, stop=stop)
    if cfg.train.fewshot_pool and not res.get("stopped") and _best(res):
        res["fewshot"] = fit_run_pool(cfg, _best(res), progress)
    return res


def _best(result: dict) -> str:
    return result["best"] or result["last"]


def _unimodal(cfg_av: ExperimentConfig, out: Path, *, epochs, overrides, progress, on_record,
              stop, init) -> dict:
    """Train the audio-only and video-only models of cfg_av's MMT into out/audio, out/video."""
    if cfg_av.model not in UNIMODAL:
        raise ConfigError(f"train.init=auto: no unimodal models known for '{cfg_av.model}'")
    results = {}
    for name, model in zip(("audio", "video"), UNIMODAL[cfg_av.model]):
        cfg = _with_data(own_config(model, overrides, epochs), cfg_av.data)
        paths = _init_paths(init, model_modalities(cfg))
        if paths:
            cfg.train.init = ",".join(paths)
        elif cfg.train.init == "auto":
            cfg.train.init = ""
        _say(progress, f"training {name}-only ({model}) into {out / name}")
        results[name] = _run(cfg, out / name, name, progress=progress, on_record=on_record,
                             stop=stop)
        if results[name].get("stopped"):
            break
    return results


def train_own(data, model: str, out, *, epochs: int | None = None, overrides=(),
              progress: bool = True, on_record=None, stop=None, init=None) -> dict:
    """`mmt train --data`: prepare the data, then train `model` with its own-data recipe.

    An audio+video model with train.init=auto first trains its audio-only and video-only models
    (RUN/audio, RUN/video) and starts from them. `init` ({"audio": dir, "video": dir} or
    comma-separated dirs) starts the unimodal models (or the model itself) from checkpoints."""
    cfg = own_config(model, overrides, epochs)
    out = Path(out)
    cfg, info = prepare_own_data(data, cfg, out, progress)
    modalities = model_modalities(cfg)
    sub = {}
    if cfg.train.init == "auto" and modalities == "av":
        sub = _unimodal(cfg, out, epochs=epochs, overrides=overrides, progress=progress,
                        on_record=on_record, stop=stop, init=init)
        if any(r.get("stopped") for r in sub.values()):
            return {**info, "stopped": True, "unimodal": sub}
        cfg.train.init = f"{_best(sub['video'])},{_best(sub['audio'])}"
    elif init:
        cfg.train.init = ",".join(_init_paths(init, modalities))
    elif cfg.train.init in ("auto", "none"):
        cfg.train.init = ""
    res = _run(cfg, out, "mmt" if modalities == "av" else model, progress=progress,
               on_record=on_record, stop=stop)
    return {**res, **info, **({"unimodal": {k: v["run_dir"] for k, v in sub.items()}}
                              if sub else {})}


# ---------------------------------------------------------------- compare

def _test_probs(checkpoint: str, data: DataConfig, records, classes, progress: bool):
    """run_eval's report (with "probs" and "labels") of a checkpoint on records, fed through
    `data` (the shared cache)."""
    from . import checkpoint as ckpt
    from .data.dataset import AVDataset
    from .evaluation import resolve_device, run_eval

    device = resolve_device("auto", 0)
    model, meta = ckpt.load_checkpoint(checkpoint, device)
    ds = AVDataset(records, {"label": classes}, data, train=False, num_views=data.test_views,
                   modalities=model.modalities)
    return run_eval(model, ds, {"label": classes}, batch_size=16, device=device, num_workers=0,
                    progress=progress, desc="test", keep_probs=True)


def _row(name: str, report: dict) -> dict:
    return {"model": name, "top1": report["top1"], "top5": report["top5"],
            "per_class": {c["class"]: c["accuracy"] for c in report["per_class"]},
            "clips": report["num_samples"]}


def compare_rows(checkpoints: dict, data: DataConfig, test, classes, progress: bool = True
                 ) -> list[dict]:
    """The compare table's rows: each checkpoint ({"audio", "video", "mmt"}: dirs) on the test
    records, and the Avg and Product late fusions of the audio-only and video-only ones."""
    import torch

    from .metrics import accuracy_report

    reports = {k: _test_probs(checkpoints[k], data, test, classes, progress)
               for k in ("audio", "video", "mmt")}
    if not torch.equal(reports["audio"]["labels"]["label"], reports["video"]["labels"]["label"]):
        raise UserError("the audio-only and video-only models were scored on different clips "
                        "(a clip failed to load in one of them): no Avg row")
    pa, pv = reports["audio"]["probs"]["label"], reports["video"]["probs"]["label"]
    reports["avg"] = accuracy_report({"label": (pa + pv) / 2}, reports["audio"]["labels"],
                                     {"label": classes})
    # Product of the two softmaxes (= softmax of the logit sum): where the MMT's fused head starts.
    prod = pa * pv
    reports["product"] = accuracy_report({"label": prod / prod.sum(-1, keepdim=True)},
                                         reports["audio"]["labels"], {"label": classes})
    names = {"audio": "audio-only", "video": "video-only", "avg": "Avg (late fusion)",
             "product": "Product (late fusion)", "mmt": "MMT"}
    return [_row(names[k], reports[k]) for k in ("audio", "video", "avg", "product", "mmt")]


def compare(data, out, *, epochs: int | None = None, overrides=(), progress: bool = True,
            on_record=None, stop=None, init=None) -> dict:
    """Train audio-only, video-only and the MMT on `data` with the own-data recipes, evaluate
    them and "Avg" (mean of the audio-only and video-only softmaxes) on the test split.

    The MMT starts from the two unimodal runs (train.init=auto, the recipe's default; --set
    train.init=none trains it from scratch). Writes OUT/compare.json."""
    from .data.manifests import read_manifest

    t0 = time.time()
    out = Path(out)
    cfg = own_config("mmt_tiny", overrides, epochs)
    cfg, info = prepare_own_data(data, cfg, out, progress)
    man = read_manifest(cfg.data.manifest, format="plain")
    test = [r for r in man.records if r.split == "test"]
    if not test:
        raise UserError(f"{data}: compare scores the models on a 'test' split and there is none "
                        "(a split column, or ROOT/train/CLASS and ROOT/test/CLASS folders)")
    classes = man.classes["label"]
    sub = _unimodal(cfg, out, epochs=epochs, overrides=overrides, progress=progress,
                    on_record=on_record, stop=stop, init=init)
    result = {"rows": [], "checkpoints": {k: _best(v) for k, v in sub.items()}, **info}
    if any(r.get("stopped") for r in sub.values()):
        return {**result, "stopped": True, "seconds": round(time.time() - t0, 1)}
    if cfg.train.init in ("auto", ""):
        cfg.train.init = f"{_best(sub['video'])},{_best(sub['audio'])}"
    elif cfg.train.init == "none":
        cfg.train.init = ""
    _say(progress, f"training the MMT ({cfg.model}) into {out / 'mmt'}"
         + (" from the two unimodal models" if cfg.train.init else " from scratch"))
    res = _run(cfg, out / "mmt", "mmt", progress=progress, on_record=on_record, stop=stop)
    result["checkpoints"]["mmt"] = _best(res)
    if res.get("stopped"):
        return {**result, "stopped": True, "seconds": round(time.time() - t0, 1)}
    result["rows"] = compare_rows(result["checkpoints"], cfg.data, test, classes, progress)
    result["seconds"] = round(time.time() - t0, 1)
    write_json(out / "compare.json", result, indent=2, default=str)
    return result


def format_table(result: dict) -> str:
    """The compare rows as a small text table (top-1, top-5)."""
    lines = [f"{'model':<22} {'top-1':>7} {'top-5':>7}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:<22} {100 * r['top1']:>6.1f}% {100 * r['top5']:>6.1f}%")
    return "\n".join(lines)
