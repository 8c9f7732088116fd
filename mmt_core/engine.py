"""Training and evaluation loops: one plain loop from a laptop CPU to `torchrun` on many GPUs.

    mmt train --config configs/synthetic_mmt_tiny.yaml --out runs/mmt_tiny
    torchrun --nproc_per_node 8 -m mmt_core train --config configs/vggsound_mmt_b.yaml --out runs/vgg

What happens per step: the batch (two augmented views when IMC/IM-AL is on) goes through the model
in ONE forward (views concatenated along the batch), the output is split back into the two
views, `losses.compute_losses` gives eq. 7, AdamW steps, the per-step warm-up + cosine schedule
moves on. CUDA gets bf16 autocast and fused AdamW; the CPU runs float32. Resume is exact: the
data order is a pure function of (seed, epoch), augmentations of (seed, epoch, clip index), and
the model's own randomness (dropout, drop-path) comes from the saved torch RNG state.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from . import checkpoint as ckpt
from . import distributed
from .config import ExperimentConfig
from .errors import ConfigError, UserError
from .evaluation import evaluate_checkpoint, model_inputs, resolve_device, run_eval  # noqa: F401
from .models.output import ModelOutput


# ---------------------------------------------------------------- small pure helpers

def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warm-up, then cosine
    down to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def split_output(out: ModelOutput, n: int) -> tuple[ModelOutput, ModelOutput]:
    """Split a ModelOutput of a batch [view1; view2] (2n rows) into the two views' outputs."""
    def cut(x, part):
        if isinstance(x, torch.Tensor):
            return x[:n] if part == 0 else x[n:]
        if isinstance(x, dict):
            return {k: cut(v, part) for k, v in x.items()}
        return x
    fields = [f.name for f in dataclasses.fields(out)]
    return tuple(ModelOutput(**{f: cut(getattr(out, f), part) for f in fields}) for part in (0, 1))


def headline_top1(report: dict) -> float:
    """The number `best` is chosen by: top-1 of the single head, or action top-1 (verb+noun)."""
    for key in ("action_top1", "top1"):
        if isinstance(report.get(key), (int, float)):
            return float(report[key])
    if isinstance(report.get("action"), dict):
        return float(report["action"]["top1"])
    raise KeyError("report has no top1")


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also used with one process) that can skip the first `skip` indices of
    its epoch, so a run resumed mid-epoch sees exactly the clips it had not seen yet. It yields
    (epoch, index) keys: persistent workers keep their own copy of the dataset, so the epoch of
    the augmentation RNG travels with each index (AVDataset.__getitem__)."""

    skip = 0

    def __iter__(self):
        return iter([(self.epoch, i) for i in list(super().__iter__())[self.skip:]])

    def __len__(self):
        return super().__len__() - self.skip


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # base seed from the loader's generator + worker id
    np.random.seed(seed)
    random.seed(seed)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _with_views(val_set, views: int):
    """A shallow copy of the validation set (files, or shards: their AVDataset `maker` makes
    the items) with `views` test views per clip."""
    out = copy.copy(val_set)
    if hasattr(out, "maker"):
        out.maker = copy.copy(out.maker)
        out.maker.num_views = views
    else:
        out.num_views = views
    return out


def _loaders_kwargs(cfg: ExperimentConfig, device: torch.device) -> dict:
    from .data.dataset import collate_skip_broken

    return dict(num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                collate_fn=collate_skip_broken, worker_init_fn=_seed_worker)


# ---------------------------------------------------------------- training

def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, position embeddings and prefix tokens (MViT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or "pos" in name or "token" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def may_leave_parameters_unused(model: torch.nn.Module, loss, two_views: bool) -> bool:
    """Whether a training step can leave some parameters without a gradient, so that DDP must
    search the graph for them every step (find_unused_parameters): g_A / g_V when no
    contrastive term uses them, the unimodal heads of `aux_heads` without their CE."""
    mods = getattr(model, "modalities", "av")
    cross = (loss.avc or loss.al) and mods == "av"  # uses g_A and g_V
    intra = (loss.imc or loss.imal) and two_views  # uses the projection of every modality present
    if not (cross or intra):
        return True
    return bool(getattr(model, "aux_heads", False)) and loss.aux_ce <= 0


def build_model(cfg: ExperimentConfig, classes: dict[str, list[str]]) -> torch.nn.Module:
    from .registry import create_model

    d = cfg.data
    try:
        return create_model(cfg.model, num_classes=ckpt.num_classes_of(classes),
                            num_frames=d.num_frames, image_size=d.image_size,
                            mel_bins=d.num_mel_bins, audio_frames=d.audio_frames,
                            **cfg.model_args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model '{cfg.model}': {e}") from None


HEAD_PREFIXES = ("heads.", "video_heads.", "audio_heads.")  # classifier tensors of an MMT


def _init_weights(model, cfg: ExperimentConfig, classes: dict[str, list[str]]) -> None:
    if not cfg.train.init:
        return
    if cfg.train.init_source:
        from .models.convert import load_foreign_weights

        load_foreign_weights(model, cfg.train.init, cfg.train.init_source)
        return
    # Own checkpoints, comma-separated and applied in order: e.g. a video-only and an audio-only
    # model initialise the two encoders of an MMT (their `video.*` / `audio.*` names match).
    # Classifier heads are copied only from a checkpoint with the same class names: a head of
    # another dataset with the same number of classes would otherwise leak in.
    own = model.state_dict()
    loaded, unimodal_heads = 0, {}
    for path in (p.strip() for p in cfg.train.init.split(",") if p.strip()):
        src, meta = ckpt.load_checkpoint(path, pool=False)  # weights only
        same_classes = meta["classes"] == classes
        src_state = _fit_rel_pos(src.state_dict(), own)
        state = {k: v for k, v in src_state.items()
                 if k in own and own[k].shape == v.shape
                 and (same_classes or not k.startswith(HEAD_PREFIXES))}
        model.load_state_dict(state, strict=False)
        loaded += len(state)
        if same_classes and src.modalities in ("a", "v"):
            unimodal_heads[src.modalities] = {k: v for k, v in src_state.items()
                                              if k.startswith("heads.")}
    if not loaded:
        raise ConfigError(f"train.init={cfg.train.init!r}: no tensor matches '{cfg.model}'")
    if cfg.train.init_fused_head and getattr(model, "fusion", "") == "bottleneck" \
            and set(unimodal_heads) == {"a", "v"}:
        init_fused_head(model, unimodal_heads["v"], unimodal_heads["a"])


def _fit_rel_pos(src: dict, own: dict) -> dict:
    """Relative-position tables of a checkpoint trained on another input size, resampled to this
    model's lengths (the same linear interpolation the attention applies at run time)."""
    out = dict(src)
    for k, v in src.items():
        if "rel_pos_" in k and k in own and v.dim() == 2 and own[k].shape[1] == v.shape[1] \
                and own[k].shape[0] != v.shape[0]:
            out[k] = torch.nn.functional.interpolate(v.t()[None], size=own[k].shape[0],
                                                     mode="linear")[0].t()  # (len', d)
    return out


@torch.no_grad()
def init_fused_head(model, video_head: dict, audio_head: dict) -> None:
    """Start the fused classifier on [E_CLS^V, E_CLS^A] at the sum of the two unimodal heads'
    logits: W = [W_V, W_A] side by side, b = b_V + b_A. Softmax of a logit sum is the normalised
    product of the unimodal probabilities (late fusion), so fine-tuning starts there."""
    for h, lin in model.heads.items():
        wv, wa = video_head[f"heads.{h}.weight"], audio_head[f"heads.{h}.weight"]  # (C, Dv), (C, Da)
        lin.weight.copy_(torch.cat([wv, wa], dim=1))  # (C, Dv + Da), fused_embed is [v, a]
        lin.bias.copy_(video_head[f"heads.{h}.bias"] + audio_head[f"heads.{h}.bias"])
        if getattr(model, "aux_heads", False):  # the unimodal heads start as the models' own
            for heads, src in ((model.video_heads, video_head), (model.audio_heads, audio_head)):
                heads[h].weight.copy_(src[f"heads.{h}.weight"])
                heads[h].bias.copy_(src[f"heads.{h}.bias"])


def _prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` step checkpoints plus whatever `last`/`best` point at."""
    pinned = {os.readlink(run_dir / n) for n in ("last", "best") if (run_dir / n).is_symlink()}
    steps = sorted(p for p in run_dir.glob("step-*") if p.is_dir())
    for p in steps[:-max(1, keep)]:
        if p.name not in pinned:
            shutil.rmtree(p, ignore_errors=True)


def _forward_losses(model, net, batch: dict, labels: dict, cfg: ExperimentConfig, epoch: int,
                    device: torch.device, amp: dict, two_views: bool, gather):
    """One forward of the batch (both IMC views in ONE forward, split afterwards) and eq. 7's
    terms, the contrastive ones over the global batch through `gather`."""
    from .losses import compute_losses

    norm = (cfg.data.video_mean, cfg.data.video_std)  # uint8 frames: normalised on the device
    inputs = model_inputs(batch, net.modalities, device, video_norm=norm)
    if two_views:
        second = model_inputs(batch, net.modalities, device, suffix="2", video_norm=norm)
        inputs = {k: torch.cat([inputs[k], second[k]]) for k in inputs}
    n = len(batch["index"])
    with torch.autocast(**amp):
        out = model(**inputs)
        out, out2 = split_output(out, n) if two_views else (out, None)
        losses = compute_losses(out, labels, cfg=cfg.loss, epoch=epoch, out2=out2, gather=gather)
    return out, losses


# ---------------------------------------------------------------- one run, in pieces
# build_run -> (train_epoch -> finish_epoch)* -> close_logs; train() is that loop. A notebook can
# call the same pieces: build_run, then train_step / train_epoch / validate / save_checkpoint.

@dataclasses.dataclass
class TrainData:
    """What the loop reads batches from: clip files (AVDataset + ResumableSampler) or shards."""
    train_set: object  # AVDataset of files, or the shards' stream (has set_epoch)
    val_set: object | None  # None: the recipe has no validation split
    sampler: object  # set_epoch(epoch), and .skip: clips of the epoch already seen
    loader: DataLoader
    loader_gen: torch.Generator  # seeds the loader's workers; re-seeded every epoch
    steps_per_epoch: int  # optimiser steps per epoch, the same on every rank
    info: dict  # clip counts (and the built-in data's generator version) for the checkpoints


@dataclasses.dataclass
class Run:
    """One training run as `build_run` made it. The step, epoch and save functions read it and
    move its counters (step, epoch, pos, best) on; the counters are what a checkpoint resumes."""
    cfg: ExperimentConfig
    run_dir: Path
    rank: int
    world: int  # number of processes
    device: torch.device
    cpu_group: object  # process group the per-step batch sizes travel over
    classes: dict[str, list[str]]
    net: torch.nn.Module  # the plain module: checkpoints, eval and attributes
    model: torch.nn.Module  # what the steps run: `net`, wrapped in DDP and/or torch.compile
    data: TrainData
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler  # per-step warm-up + cosine
    two_views: bool  # IMC / IM-AL: two augmented views per clip, in one forward
    amp: dict  # torch.autocast arguments: bf16 on CUDA when train.amp, else disabled
    on_record: object = None  # on_record(record) for every record written (rank 0)
    log: object = None  # metrics.jsonl, open on rank 0
    tb: object = None  # TensorBoard SummaryWriter on rank 0, when tensorboard is installed
    step: int = 0  # optimiser steps taken
    epoch: int = 1  # the epoch being trained (1-based)
    pos: int = 0  # batches of `epoch` already consumed (mid-epoch resume point)
    best: float = -1.0  # best headline val top-1 so far; -1: none yet

    @property
    def main(self) -> bool:
        return self.rank == 0


def _check_config(cfg: ExperimentConfig, run_dir: Path, resume: bool) -> None:
    if not cfg.data.manifest and not cfg.data.shards:
        raise ConfigError("data.manifest is not set (give it in the recipe or "
                          "--set data.manifest=...)")
    if cfg.data.mixup:  # mixup_batch exists (data/transforms.py) but the loop does not mix yet
        raise ConfigError("data.mixup is not supported by the training loop yet; set it to 0")
    if resume and not (run_dir / "last").exists():
        raise UserError(f"cannot resume: {run_dir / 'last'} does not exist")


def read_classes(cfg: ExperimentConfig) -> tuple[dict[str, list[str]], list | None, list | None]:
    """(class names per head, train records, val records): from the shards' index.json (records
    None: the shards hold the clips), or one manifest read shared by the train and val splits."""
    if cfg.data.shards:  # WebDataset shards (data/shards.py)
        from .data.shards import read_index

        return read_index(cfg.data.shards, cfg.data.shards_index)["classes"], None, None
    from .data.manifests import read_manifest

    man = read_manifest(cfg.data.manifest, format=cfg.data.format, root=cfg.data.root)
    train_recs = [r for r in man.records if r.split == cfg.data.train_split]
    val_recs = [r for r in man.records if cfg.data.val_split and r.split == cfg.data.val_split]
    if not train_recs:
        raise ConfigError(f"no '{cfg.data.train_split}' clips in {cfg.data.manifest}")
    return man.classes, train_recs, val_recs


def build_network(cfg: ExperimentConfig, classes: dict[str, list[str]], device: torch.device,
                  *, main: bool = True) -> torch.nn.Module:
    """The recipe's model with its initial weights (train.init), on `device`. Seeded, so every
    rank starts from the same weights (DDP also broadcasts rank 0's)."""
    tc = cfg.train
    _seed_all(tc.seed)
    model = build_model(cfg, classes)
    _init_weights(model, cfg, classes)
    if cfg.loss.aux_ce > 0 and not getattr(model, "aux_heads", False):
        raise ConfigError("loss.aux_ce > 0 needs an audio+video bottleneck model with "
                          "model_args.aux_heads: true")
    if tc.grad_checkpoint:  # recompute block activations in backward: less memory, ~30 % slower
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        elif main:
            print(f"warning: {cfg.model} has no set_grad_checkpointing; ignoring "
                  "train.grad_checkpoint", file=sys.stderr)
    return model.to(device)


def build_data(cfg: ExperimentConfig, net, classes, train_recs, val_recs, *, rank: int,
               world: int, device: torch.device, two_views: bool) -> TrainData:
    """The training loader of this rank (and the val set): shards give a fixed number of
    batches per rank; files go through a ResumableSampler that can skip a resumed epoch's start."""
    tc = cfg.train
    loader_gen = torch.Generator()  # worker seeds must not draw from the model's RNG
    if cfg.data.shards:
        from .data.shards import training_data

        shard = training_data(cfg, world=world, rank=rank, two_views=two_views,
                              modalities=net.modalities,
                              loader_kwargs={**_loaders_kwargs(cfg, device),
                                             "generator": loader_gen})
        return TrainData(shard["train_set"], shard["val_set"], sampler=shard["train_set"],
                         loader=shard["loader"], loader_gen=loader_gen,
                         steps_per_epoch=shard["steps"], info=shard["data_info"])
    from .data.dataset import AVDataset

    train_set = AVDataset(train_recs, classes, cfg.data, train=True, two_views=two_views,
                          modalities=net.modalities, seed=tc.seed)
    val_set = (AVDataset(val_recs, classes, cfg.data, train=False, num_views=cfg.data.test_views,
                         modalities=net.modalities, seed=tc.seed) if val_recs else None)
    sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                               seed=tc.seed)
    # Persistent workers: no re-spawn (and dataset re-pickle) per epoch; the epoch reaches them
    # in the sampler's keys. Not for shards: their stream reads epoch/skip from the dataset
    # object, which only fresh workers see.
    loader = DataLoader(train_set, batch_size=tc.batch_size, sampler=sampler, drop_last=True,
                        generator=loader_gen, persistent_workers=cfg.data.num_workers > 0,
                        **_loaders_kwargs(cfg, device))
    steps_per_epoch = len(sampler) // tc.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(sampler)} training clips per process is fewer than "
                          f"train.batch_size={tc.batch_size}")
    return TrainData(train_set, val_set, sampler, loader, loader_gen, steps_per_epoch,
                     info=_files_info(cfg, train_recs, val_recs))


def _files_info(cfg: ExperimentConfig, train_recs: list, val_recs: list) -> dict:
    from .data.synthetic import folder_version

    info = {"train_clips": len(train_recs), "val_clips": len(val_recs)}
    gen = folder_version(Path(cfg.data.manifest).parent)
    if gen is not None and (Path(cfg.data.manifest).parent / "generator.json").is_file():
        info["generator_version"] = gen  # built-in data: which generator made it
    return info


def build_optimizer(net: torch.nn.Module, tc, device: torch.device, steps_per_epoch: int):
    """(AdamW, its per-step schedule: linear warm-up over train.warmup_epochs, cosine to min_lr)."""
    total = tc.epochs * steps_per_epoch
    opt = torch.optim.AdamW(_param_groups(net, tc.weight_decay), lr=tc.lr,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(
        s, total=total, warmup=round(tc.warmup_epochs * steps_per_epoch),
        min_ratio=tc.min_lr / tc.lr))
    return opt, sched


def restore(run: Run) -> None:
    """Resume RUN_DIR/last into `run`: weights, optimiser, schedule, counters, this rank's RNG."""
    last = run.run_dir / "last"
    state = ckpt.load_train_state(last)
    saved = ckpt.read_meta(last)
    if saved["model"] != run.cfg.model:
        raise UserError(f"cannot resume: {run.run_dir} trains '{saved['model']}', the config "
                        f"says '{run.cfg.model}'")
    ckpt.load_weights_into(run.net, last)
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.step, run.epoch, run.pos = state["step"], state["epoch"], state["pos"]
    run.best = state["best"]
    if run.world != state.get("world_size", 1):
        raise UserError(f"cannot resume exactly: saved with {state.get('world_size')} "
                        f"processes, now {run.world}")
    ckpt.set_rng_state(state.get("rng_ranks", [state["rng"]])[run.rank])  # each rank its own


def wrap_model(net: torch.nn.Module, cfg: ExperimentConfig, world: int, device: torch.device,
               two_views: bool) -> torch.nn.Module:
    """What the steps run: DDP over several processes, then torch.compile when asked (after
    DDP, as PyTorch recommends: DDP-aware graph breaks at the buckets)."""
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=may_leave_parameters_unused(net, cfg.loss, two_views))
    if cfg.train.compile:
        model = torch.compile(model)
    return model


def build_run(cfg: ExperimentConfig, out_dir, *, resume: bool = False, on_record=None) -> Run:
    """Set up the run in the order that fixes its randomness: initial weights (seeded), data,
    optimiser, then the resumed state or each rank's own seed; then DDP, compile and the logs."""
    tc, run_dir = cfg.train, Path(out_dir)
    rank, world, device = distributed.setup(tc.device)
    cpu_group = distributed.cpu_group()
    _check_config(cfg, run_dir, resume)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    classes, train_recs, val_recs = read_classes(cfg)
    net = build_network(cfg, classes, device, main=rank == 0)
    two_views = cfg.loss.imc or cfg.loss.imal
    data = build_data(cfg, net, classes, train_recs, val_recs, rank=rank, world=world,
                      device=device, two_views=two_views)
    opt, sched = build_optimizer(net, tc, device, data.steps_per_epoch)
    run = Run(cfg, run_dir, rank, world, device, cpu_group, classes, net=net, model=net,
              data=data, opt=opt, sched=sched, two_views=two_views, on_record=on_record,
              amp=dict(device_type=device.type, dtype=torch.bfloat16,
                       enabled=tc.amp and device.type == "cuda"))
    if resume:
        restore(run)
    else:
        torch.manual_seed(tc.seed + rank)  # each rank its own dropout / drop-path noise
    run.model = wrap_model(net, cfg, world, device, two_views)
    if run.main:
        run.log = open(run_dir / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            run.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            pass
    return run


def write_record(run: Run, record: dict) -> None:
    """Rank 0: one line of metrics.jsonl, on_record, and the numbers to TensorBoard."""
    if not run.main:
        return
    run.log.write(json.dumps(record) + "\n")
    run.log.flush()
    if run.on_record is not None:
        run.on_record(record)
    if run.tb:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                run.tb.add_scalar(f"{record['type']}/{k}", v, record["step"])


def save_checkpoint(run: Run, metrics: dict, is_best: bool) -> None:
    """RUN_DIR/step-NNNNNNN with weights, meta and the resume state; `last` (and `best`) point
    at it; old steps pruned. Every rank must call it: it gathers every rank's RNG state."""
    rngs = distributed.all_objects(ckpt.rng_state())
    if not run.main:
        return
    tc = run.cfg.train
    state = {"optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
             "rng": rngs[0], "rng_ranks": rngs, "step": run.step, "epoch": run.epoch,
             "pos": run.pos, "best": run.best, "world_size": run.world}
    epochs_done = round(run.epoch - 1 + run.pos / run.data.steps_per_epoch, 4)  # 2.5: mid-epoch 3
    meta = ckpt.make_meta(run.cfg, run.net, run.classes, metrics=metrics, step=run.step,
                          epoch=epochs_done, data_info=run.data.info)
    target = ckpt.write_checkpoint_dir(run.run_dir / f"step-{run.step:07d}", run.net, meta, state)
    ckpt.point_link(run.run_dir, "last", target)
    if is_best:
        ckpt.point_link(run.run_dir, "best", target)
    _prune(run.run_dir, tc.keep_last)


def close_logs(run: Run) -> None:
    if run.log:
        run.log.close()
    if run.tb:
        run.tb.close()


def train_step(run: Run, batch: dict, sizes: list[int]) -> tuple[dict, torch.Tensor]:
    """One optimiser step on `batch` (every rank's batch size in `sizes`): forward, eq. 7,
    backward, gradient clipping, AdamW, the schedule. Returns (the detached loss terms, the
    number of clips the first head got right, on the device)."""
    tc = run.cfg.train
    labels = {h: y.to(run.device, non_blocking=True) for h, y in batch["labels"].items()}
    out, losses = _forward_losses(run.model, run.net, batch, labels, run.cfg, run.epoch,
                                  run.device, run.amp, run.two_views,
                                  distributed.row_gatherer(sizes))
    run.opt.zero_grad(set_to_none=True)
    losses["total"].backward()
    losses = {k: v.detach() if torch.is_tensor(v) else v for k, v in losses.items()}
    if tc.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.clip_grad)
    run.opt.step()
    run.sched.step()
    run.step += 1
    first = next(iter(labels))
    correct = (out.head_logits[first].detach().argmax(-1) == labels[first]).sum()
    return losses, correct


def max_steps_reached(run: Run) -> bool:
    """train.max_steps is set and the run has taken that many steps."""
    return bool(run.cfg.train.max_steps and run.step >= run.cfg.train.max_steps)


def train_epoch(run: Run, *, progress: bool = True, stop=None) -> tuple[dict, bool]:
    """The steps of `run.epoch` from batch `run.pos` on, until the epoch ends, train.max_steps
    is reached or `stop` is set (then a mid-epoch checkpoint is saved). Returns (train_loss,
    train_top1 and skipped clips over all ranks, whether `stop` ended it)."""
    from tqdm.auto import tqdm

    tc, data = run.cfg.train, run.data
    data.sampler.set_epoch(run.epoch)
    data.sampler.skip = run.pos * tc.batch_size  # mid-epoch resume: skip what was already seen
    if hasattr(data.train_set, "set_epoch"):
        data.train_set.set_epoch(run.epoch)
    data.loader_gen.manual_seed(tc.seed * 100_003 + run.epoch)  # worker seeds: a function of epoch
    # Running sums stay on the device (loss·n, correct) or the host (samples, skipped clips): the
    # host reads the device only every log_every steps and at the epoch's end.
    dev_sums = torch.zeros(2, dtype=torch.float64, device=run.device)
    count = skipped = 0
    bar = tqdm(total=data.steps_per_epoch, initial=run.pos, desc=f"epoch {run.epoch}/{tc.epochs}",
               disable=not (progress and run.main), file=sys.stderr, dynamic_ncols=True)
    started, done, stopped = time.time(), False, False
    for batch in data.loader:
        run.pos += 1
        bar.update(1)
        skipped += int(batch.get("skipped", 0)) if batch else 0
        n = len(batch["index"]) if batch and "index" in batch else 0
        # Every rank takes the step together (or skips it together); the sizes travel over a
        # CPU channel and size the global batch of the contrastive losses.
        sizes = distributed.all_sizes(n, run.cpu_group)
        if min(sizes) == 0:
            continue
        losses, correct = train_step(run, batch, sizes)
        count += n
        dev_sums += torch.stack([losses["total"].detach().double() * n, correct.double()])
        if tc.log_every and run.step % tc.log_every == 0:  # the one host sync of log_every steps
            rate = count * run.world / max(1e-9, time.time() - started)
            values = {k: float(v) for k, v in losses.items()}
            _, correct_sum = dev_sums.tolist()
            bar.set_postfix(loss=f"{values['total']:.3f}", acc=f"{correct_sum / count:.2f}",
                            sps=f"{rate:.1f}")
            write_record(run, {"type": "step", "step": run.step, "epoch": run.epoch,
                               "lr": run.sched.get_last_lr()[0], **values,
                               "acc": float(correct) / n, "samples_per_s": rate})
        done = max_steps_reached(run)
        if stop is not None and stop.is_set():
            done = stopped = True
        every = tc.save_every_steps and run.step % tc.save_every_steps == 0
        if (done or every) and run.pos < data.steps_per_epoch:  # the epoch's end saves anyway
            save_checkpoint(run, {"train_loss": float(losses["total"])}, is_best=False)
        if done:
            break
    bar.close()
    loss_sum, correct, count, skipped = distributed.all_sum(
        [*dev_sums.tolist(), count, skipped], run.device)
    return {"train_loss": loss_sum / max(1, count), "train_top1": correct / max(1, count),
            "skipped": int(skipped)}, stopped


def validate(run: Run, *, final: bool, progress: bool = True) -> tuple[dict, dict]:
    """(report on one view, report on the recipe's test_views or {}): every rank evaluates its
    share and all get the same report. `best` is chosen on one view in every epoch, so epochs
    compare like with like; test_views (paper: 5) run once more at the end, reported beside it."""
    cfg = run.cfg

    def evaluate(dataset, desc):
        return run_eval(run.net, dataset, run.classes, batch_size=cfg.train.batch_size,
                        device=run.device, amp=cfg.train.amp, num_workers=cfg.data.num_workers,
                        progress=progress, desc=desc)

    one_view = evaluate(_with_views(run.data.val_set, 1), f"val {run.epoch}")
    views = {}
    if final and cfg.data.test_views > 1:
        views = evaluate(run.data.val_set, f"val {run.epoch}, {cfg.data.test_views} views")
    return one_view, views


def finish_epoch(run: Run, train_stats: dict, *, final: bool, started: float,
                 progress: bool = True) -> tuple[dict | None, dict]:
    """After an epoch's last step: validate (every train.eval_every epochs and at the end), move
    `best`, write the epoch record, save the checkpoint (last, best) and wait for it. Returns
    validate()'s two reports, (None, {}) when it did not validate."""
    tc = run.cfg.train
    evaluate_now = run.data.val_set is not None and (
        (tc.eval_every and run.epoch % tc.eval_every == 0) or final)
    val_report, views_report, is_best = None, {}, False
    if evaluate_now:
        val_report, views_report = validate(run, final=final, progress=progress)
        if val_report:
            top1 = headline_top1(val_report)
            is_best, run.best = top1 > run.best, max(run.best, top1)
    summary = {**train_stats, **({"val_top1": val_report.get("top1"),
                                  "val_top5": val_report.get("top5"),
                                  "val_skipped": val_report.get("skipped")}
                                 if evaluate_now else {}),
               **({"val_views": views_report["views"],
                   "val_views_top1": headline_top1(views_report)} if views_report else {})}
    write_record(run, {"type": "epoch", "step": run.step, "epoch": run.epoch,
                       "seconds": time.time() - started,
                       **{k: v for k, v in summary.items() if v is not None}})
    if run.main and progress:
        print(f"epoch {run.epoch}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                                f"{k}={v}" for k, v in summary.items()),
              file=sys.stderr)
    run.epoch, run.pos = run.epoch + 1, 0
    save_checkpoint(run, summary, is_best=is_best)
    if run.world > 1:
        dist.barrier()  # rank 0 saved; nobody runs ahead of a checkpoint being written
    return val_report, views_report


def train(cfg: ExperimentConfig, out_dir, resume: bool = False, progress: bool = True,
          on_record=None, stop=None) -> dict:
    """Train `cfg` into RUN_DIR `out_dir` (metrics.jsonl, step-*/ checkpoints, last, best).

    on_record(record): called on rank 0 with every record written to metrics.jsonl (step and
    epoch records). stop: a threading.Event-like object checked after every step; once set, the
    run saves a checkpoint and returns normally with "stopped": True.
    """
    t0 = time.time()
    run = build_run(cfg, out_dir, resume=resume, on_record=on_record)
    tc = cfg.train
    val_report, views_report, train_stats = {}, {}, {}
    done = max_steps_reached(run)
    stopped = False
    while run.epoch <= tc.epochs and not done:
        started = time.time()
        train_stats, stopped = train_epoch(run, progress=progress, stop=stop)
        done = stopped or max_steps_reached(run)
        if run.pos < run.data.steps_per_epoch:  # ended by max_steps / stop mid-epoch
            break
        val, views = finish_epoch(run, train_stats, final=run.epoch == tc.epochs or done,
                                  started=started, progress=progress)
        if val is not None:  # it validated: these are the latest reports
            val_report, views_report = val, views
    close_logs(run)
    return _result(run, train_stats, val_report, views_report, stopped=stopped,
                   seconds=time.time() - t0)


def _result(run: Run, train_stats: dict, val_report: dict, views_report: dict, *,
            stopped: bool, seconds: float) -> dict:
    """train()'s return value: where the run is, its last train and val numbers, its weights."""
    best_link = run.run_dir / "best"
    return {"run_dir": str(run.run_dir), "last": str(run.run_dir / "last"),
            "best": str(best_link) if best_link.exists() else None, "step": run.step,
            "epoch": min(run.epoch, run.cfg.train.epochs), **train_stats,
            **({"val_" + k: val_report[k] for k in ("top1", "top5", "clips", "skipped")
                if k in val_report}),
            **({"val_views": views_report["views"],
                "val_views_top1": headline_top1(views_report)} if views_report else {}),
            "best_top1": run.best if run.best >= 0 else None, "seconds": round(seconds, 1),
            "stopped": stopped, "world_size": run.world, "device": str(run.device),
            "weights_sha256": _weights_hash(run.net)}


def _weights_hash(model: torch.nn.Module) -> str:
    """sha256 of all weights: under DDP every rank must end with the same one."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
