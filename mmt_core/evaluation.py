"""Evaluation: accuracy of a model on a dataset (multi-view ensembling, verb/noun/action), and
`mmt eval` on a checkpoint directory. Shared by the training loop (validation) and the CLI."""
from __future__ import annotations

import dataclasses
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, Subset

from . import checkpoint as ckpt
from .data.transforms import normalise_video
from .errors import ConfigError, UserError


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ConfigError(f"train.device must be auto, cpu or cuda, got '{name}'")
    return torch.device("cpu")


def model_inputs(batch: dict, modalities: str, device: torch.device, suffix: str = "",
                 video_norm: tuple | None = None) -> dict:
    """The keyword inputs the model takes: video and/or audio, moved to the device. The loader
    carries uint8 video (4x fewer bytes through shared memory and the host-device copy); it is
    normalised here, after the copy, with video_norm = (mean, std) of the data config."""
    keys = {"av": ("video", "audio"), "a": ("audio",), "v": ("video",)}.get(modalities)
    if keys is None:
        raise ValueError(f"cannot feed a model with modalities '{modalities}' from AV batches")
    out = {k: batch[k + suffix].to(device, non_blocking=True) for k in keys}
    if "video" in out and out["video"].dtype == torch.uint8:
        if video_norm is None:
            raise ValueError("uint8 video needs video_norm=(mean, std) to be normalised")
        out["video"] = normalise_video(out["video"], *video_norm)
    return out


def video_norm_of(dataset) -> tuple | None:
    """(video_mean, video_std) of the data config an AVDataset (or a ShardDataset's AVDataset)
    makes its items with; None for other datasets."""
    cfg = getattr(getattr(dataset, "maker", dataset), "cfg", None)
    return (tuple(cfg.video_mean), tuple(cfg.video_std)) if cfg is not None else None


def flatten_views(inputs: dict) -> tuple[dict, int]:
    """(B, V, ...) multi-view test inputs → (B·V, ...); returns the inputs and V."""
    nd = {"video": 4, "audio": 3}  # dims of one view: (3,T,S,S) / (1,F,N)
    views = 1
    out = {}
    for k, x in inputs.items():
        if x.dim() == nd[k] + 2:  # (B, V, ...)
            views = x.shape[1]
            x = x.flatten(0, 1)  # (B·V, ...)
        out[k] = x
    return out, views


@torch.inference_mode()
def run_eval(model, dataset, classes: dict[str, list[str]], *, batch_size: int,
             device: torch.device, amp: bool = True, num_workers: int = 0,
             progress: bool = False, desc: str = "eval", keep_probs: bool = False,
             on_batch=None) -> dict:
    """Top-1/top-5 (+ verb/noun/action), per-class accuracy, confusion matrix, with the softmax
    averaged over the dataset's views; broken clips are counted, not fatal. keep_probs adds
    "probs" and "labels" ({head: tensor}) for late fusion of several models' outputs.
    on_batch(batch, output, views), after each forward, collects per-clip extras (embeddings;
    batch["index"] names the clips, output has B·V rows)."""
    from tqdm.auto import tqdm

    from .data.dataset import collate_skip_broken
    from .metrics import accuracy_report, ensemble_views

    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    video_norm = video_norm_of(dataset)  # before Subset hides it
    # Under torchrun every rank evaluates every world-th clip; the results are gathered below.
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    if world > 1 and not isinstance(dataset, IterableDataset):  # shards split themselves
        dataset = Subset(dataset, range(rank, len(dataset), world))
    # Its own generator: creating worker seeds must not consume the training RNG.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_broken, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    probs = {h: [] for h in classes}
    labels = {h: [] for h in classes}
    skipped, views, skipped_paths = 0, 1, []
    for batch in tqdm(loader, desc=desc, disable=not progress or rank > 0, leave=False,
                      file=sys.stderr):
        skipped += int(batch.get("skipped", 0)) if batch else 0
        skipped_paths += list(batch.get("skipped_paths", [])) if batch else []
        if not batch or not batch.get("labels"):
            continue
        inputs, views = flatten_views(model_inputs(batch, net.modalities, device,
                                                   video_norm=video_norm))
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=amp and device.type == "cuda"):
            out = net(**inputs)
        if on_batch is not None:
            on_batch(batch, out, views)
        for head in classes:
            logits = out.head_logits[head].float()  # (B·V, C)
            probs[head].append(ensemble_views(logits.reshape(-1, views, logits.shape[-1])).cpu())
            labels[head].append(batch["labels"][head].cpu())
    net.train(was_training)
    probs = {h: torch.cat(p) if p else None for h, p in probs.items()}
    labels = {h: torch.cat(y) if y else None for h, y in labels.items()}
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (probs, labels, skipped, skipped_paths))
        probs = {h: _cat([q[0][h] for q in parts]) for h in classes}
        labels = {h: _cat([q[1][h] for q in parts]) for h in classes}
        skipped = sum(q[2] for q in parts)
        skipped_paths = [x for q in parts for x in q[3]]
    if probs[next(iter(classes))] is None:
        raise UserError(f"no clip could be evaluated ({skipped} broken or unreadable)")
    report = accuracy_report(probs, labels, classes)
    report.update(clips=int(len(labels[next(iter(classes))])), skipped=skipped,
                  skipped_paths=[str(p) for p in skipped_paths], views=views)
    if keep_probs:
        report.update(probs=probs, labels=labels)
    return report


def _cat(parts: list):
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


def _remap_labels(records, from_classes: dict, to_classes: dict):
    """Re-index the labels of a manifest's records to a checkpoint's class order (by name)."""
    index = {h: {name: i for i, name in enumerate(names)} for h, names in to_classes.items()}
    unknown = set()
    out = []
    for r in records:
        labels = {}
        for h, i in r.labels.items():
            name = from_classes[h][i]
            if h not in index or name not in index[h]:
                unknown.add(f"{h}:{name}")
                continue
            labels[h] = index[h][name]
        out.append(dataclasses.replace(r, labels=labels))
    if unknown:
        raise UserError(f"the manifest has classes this checkpoint does not know: "
                        f"{', '.join(sorted(unknown)[:5])}")
    return out


def _decode_view(path, meta: dict, view: int, views: int):
    from .data import media

    pre = meta["preprocessing"]
    return media.decode(path, num_frames=pre["num_frames"], clip_seconds=pre["clip_seconds"],
                        sample_rate=pre["sample_rate"], view=view, num_views=views, audio=False,
                        max_seconds=pre.get("max_clip_seconds", 600.0))


def pointing_explainers(model, explainers=None) -> list[str]:
    """The explainers the pointing game scores for `model` (default: every one with a video map
    for it); a UserError for unknown or inapplicable names."""
    from .explain import EXPLAINERS, applicable

    mods = getattr(model, "modalities", "")
    if "v" not in mods or mods == "image":
        raise UserError(f"the pointing game needs a model with a video encoder; this one has "
                        f"modalities '{mods}'")
    if not explainers:
        return [n for n in EXPLAINERS if applicable(n, mods)]
    names = list(dict.fromkeys(explainers))
    for n in names:
        if n not in EXPLAINERS:
            raise UserError(f"unknown explainer '{n}'; choose from {', '.join(EXPLAINERS)}")
        if not applicable(n, mods):
            raise UserError(f"explainer '{n}' does not apply to a model with modalities '{mods}'")
    return names


def pointing_game(model, meta: dict, records, *, explainers=None, views: int = 1,
                  block=None, progress: bool = True) -> dict:
    """The pointing game of every explainer on clips with box sidecars (mmt_core.metrics):
    per sampled frame, is the video map's peak (for the true class) inside the sounding object's
    box? Scored per frame, since the object jumps at each sound onset. Beside each explainer's
    accuracy and energy (share of the map's positive mass in the box): the centre baseline (the
    frame centre as the "peak") and the random baseline (the mean box-area fraction). Where the
    sidecars have `events`, the audio map's mass within 0.15 s after an onset, beside the share
    of the clip such windows cover. `block`: the block(s) of block-based maps (Grad-CAM; None: the
    explainers' default, `mmt_core.explain.CAM_BLOCKS`).

    Returns {"pointing": {name: {"accuracy", "energy", "centre_baseline", "random_baseline",
    "frames", "clips", "clip_accuracy", ["audio_event_mass", "audio_event_coverage"]}},
    "pointing_best": the name with the highest accuracy, "pointing_seconds": {name: s per clip},
    "pointing_block": the CAM blocks used}.
    """
    import time

    from .data.synthetic import boxes_at, check_one_version, load_sidecar
    from .explain import CAM_BLOCKS, cam_blocks, get_explainer, to_frame_resolution
    from .inference import prepare_clip
    from .metrics import event_share, frame_pointing

    names = pointing_explainers(model, explainers)
    block = cam_blocks(CAM_BLOCKS if block is None else block)
    records = list(records)
    if not records:
        raise UserError("the pointing game got no clips")
    check_one_version([r.path for r in records])
    head = next(iter(meta["classes"]))
    device = next(model.parameters()).device
    keys = ("frames", "hits", "energy", "centre_hits", "box_area")
    tally = {n: {**{k: 0 for k in keys}, "clips": 0, "clip_hits": 0, "audio_mass": 0.0,
                 "audio_cover": 0.0, "audio_clips": 0, "seconds": 0.0} for n in names}
    for i, rec in enumerate(records):
        side = load_sidecar(rec.path)  # a clear error for clips without box sidecars
        prep = prepare_clip(rec.path, meta, views=views)
        inputs = {k: x.to(device) for k, x in prep["inputs"].items()}
        label = rec.labels[head]
        for v in range(views):
            # prepare_clip keeps view 0's decoded clip; other views' frame times need a decode
            clip = prep["clip"] if v == 0 else _decode_view(rec.path, meta, v, views)
            boxes = boxes_at(rec.path, clip.times)
            one = {k: x[v:v + 1] for k, x in inputs.items()}
            for n in names:
                t0 = time.perf_counter()
                try:
                    res = get_explainer(n)(model, one, target=label, head=head, block=block,
                                           meta=meta)
                except ValueError as e:  # e.g. a --cam-block outside the encoder
                    raise UserError(f"{n}: {e}") from None
                tl = tally[n]
                tl["seconds"] += time.perf_counter() - t0
                cam = to_frame_resolution(res["video"], *clip.frames.shape[1:3])
                fp = frame_pointing(cam, boxes)
                for k in keys:
                    tl[k] += fp[k]
                tl["clips"] += 1
                tl["clip_hits"] += int(fp["hits"] * 2 >= fp["frames"])
                if res.get("audio") is not None and side.get("events"):
                    mass, cover = event_share(res["audio"], side["events"], start=clip.start)
                    tl["audio_mass"] += mass
                    tl["audio_cover"] += cover
                    tl["audio_clips"] += 1
        if progress:
            acc = " ".join(f"{n} {tally[n]['hits'] / max(tally[n]['frames'], 1):.3f}" for n in names)
            print(f"\rpointing game: {i + 1}/{len(records)} clips, {acc}", end="", file=sys.stderr,
                  flush=True)
    if progress:
        print(file=sys.stderr)
    out = {}
    for n, tl in tally.items():
        f = max(tl["frames"], 1)
        out[n] = {"accuracy": tl["hits"] / f, "energy": tl["energy"] / f,
                  "centre_baseline": tl["centre_hits"] / f, "random_baseline": tl["box_area"] / f,
                  "frames": tl["frames"], "clips": tl["clips"],
                  "clip_accuracy": tl["clip_hits"] / max(tl["clips"], 1)}
        if tl["audio_clips"]:
            out[n]["audio_event_mass"] = tl["audio_mass"] / tl["audio_clips"]
            out[n]["audio_event_coverage"] = tl["audio_cover"] / tl["audio_clips"]
    best = max(out, key=lambda n: out[n]["accuracy"])
    return {"pointing": out, "pointing_best": best,
            "pointing_seconds": {n: tl["seconds"] / max(tl["clips"], 1) for n, tl in tally.items()},
            "pointing_block": list(block)}


def evaluate_checkpoint(dir, manifest, split: str = "test", views: int | None = None,
                        pointing: bool = False, cam_block=None, batch_size: int = 8,
                        progress: bool = True, explainers=None, shards: str | None = None) -> dict:
    """`mmt eval`: accuracy of a checkpoint on a manifest split (or on WebDataset shards of a
    split: `shards` = DIR or pattern), optionally the pointing game of `explainers` (default:
    every applicable one; see `pointing_game`)."""
    from .data.dataset import AVDataset
    from .data.manifests import read_manifest

    device = resolve_device("auto", 0)
    model, meta = ckpt.load_checkpoint(dir, device)
    if shards:
        if pointing:
            raise UserError("--pointing needs the clips' sidecar boxes: use --manifest")
        return _evaluate_shards(dir, model, meta, shards, split, views, batch_size, device,
                                progress)
    data_cfg = ckpt.data_config_from_meta(meta, manifest=str(manifest))
    man = read_manifest(manifest, split=split or None)
    records = [r for r in man.records if not split or r.split == split]
    if not records:
        raise UserError(f"no clips of split '{split}' in {manifest}")
    records = _remap_labels(records, man.classes, meta["classes"])
    views = views or meta["preprocessing"].get("test_views") or 1
    if views < 1:
        raise UserError(f"--views must be >= 1, got {views}")
    if pointing:  # name errors before the accuracy pass
        explainers = pointing_explainers(model, explainers)
    dataset = AVDataset(records, meta["classes"], data_cfg, train=False, num_views=views,
                        modalities=model.modalities)
    report = run_eval(model, dataset, meta["classes"], batch_size=batch_size, device=device,
                      num_workers=min(2, os.cpu_count() or 1), progress=progress)
    report = {"checkpoint": str(dir), "model": meta["model"], "manifest": str(manifest),
              "split": split, **report}
    if pointing:
        report.update(pointing_game(model, meta, records, explainers=explainers, views=1,
                                    block=cam_block, progress=progress))
    return report


def _evaluate_shards(dir, model, meta, spec, split, views, batch_size, device, progress) -> dict:
    from .data.shards import ShardDataset, read_index, shard_urls

    idx = read_index(spec)
    urls, samples = shard_urls(spec, idx, split)
    views = views or meta["preprocessing"].get("test_views") or 1
    if views < 1:
        raise UserError(f"--views must be >= 1, got {views}")
    dataset = ShardDataset(urls, idx, meta["classes"], ckpt.data_config_from_meta(meta),
                           train=False, num_views=views, modalities=model.modalities)
    report = run_eval(model, dataset, meta["classes"], batch_size=batch_size, device=device,
                      num_workers=min(2, os.cpu_count() or 1, len(urls)), progress=progress)
    return {"checkpoint": str(dir), "model": meta["model"], "shards": spec, "split": split,
            "shard_samples": samples, **report}
