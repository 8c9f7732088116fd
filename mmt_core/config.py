"""Experiment configs: dataclasses with one documented default per knob, YAML load, --set overrides.

A recipe (configs/*.yaml) names only what differs from these defaults. Leaf modules never see
this object: the engine hands each part its own sub-config or plain keyword arguments.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    manifest: str = ""  # CSV in one of the formats of mmt_core.data.manifests
    format: str = "auto"  # auto | plain | vggsound | kinetics_sounds | epic100 | folder
    root: str = ""  # media root for manifests with relative paths ("" = the manifest's folder)
    train_split: str = "train"  # split used by `mmt train`
    val_split: str = "test"  # split evaluated during/after training ("" = none)
    num_frames: int = 16  # T frames per clip (paper: 16)
    image_size: int = 224  # square crop side fed to the video encoder
    clip_seconds: float = 10.0  # window the audio is cut from (VGGSound: 10 s); frames too when
    # video_seconds is 0. Window the T frames span, inside that audio window: drawn at random in
    # training, evenly spaced test views (they differ; the audio is the same in each). 0 = the
    # audio window (each test view then moves both). Paper recipes: 2.133 = 16 frames x stride 4
    # at 30 fps (MViTv2 16x4).
    video_seconds: float = 0.0
    sample_rate: int = 16000  # audio is resampled to this, mono (AST/CAV-MAE convention)
    num_mel_bins: int = 128  # kaldi fbank mel bins
    audio_frames: int = 1024  # fbank frames after cut/pad (10 ms shift: 1024 = 10.24 s)
    audio_mean: float = -4.2677393  # fbank normalisation mean (AST AudioSet; `mmt stats` per dataset)
    audio_std: float = 4.5689974  # fbank normalisation std; features are (x - mean) / (2 * std)
    video_mean: tuple[float, float, float] = (0.45, 0.45, 0.45)  # Kinetics convention (SlowFast/MViT)
    video_std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    train_scale: tuple[float, float] = (0.5, 1.0)  # random-resized-crop area range in training
    hflip: bool = True  # random horizontal flip in training
    freq_mask: int = 48  # SpecAugment frequency mask width (AST: 48 of 128)
    time_mask: int = 192  # SpecAugment time mask width (AST: 192 of 1024)
    mixup: float = 0.0  # mixup alpha (0 = off; the training loop rejects other values for now)
    test_views: int = 1  # temporal views averaged at test time (paper: 5); training validates on 1
    cache_dir: str = ""  # preprocessed frame+fbank shards (mmt_core.data.cache); "" = decode on the fly
    max_clip_seconds: float = 600.0  # refuse longer files (decode cap)
    # Own data (`mmt train --data`): share of each class's training clips carved out as the
    # validation split when the data has none (at least one clip per class with >= 2 clips).
    val_fraction: float = 0.15
    num_workers: int = 2  # DataLoader worker processes
    # WebDataset shards written by `mmt shard` (mmt_core/data/shards.py, docs/scaling.md)
    shards: str = ""  # train from shards: a DIR, a brace pattern, URLs or pipe: ("" = the manifest)
    shards_index: str = ""  # their index.json ("" = beside the shards; needed for pipe:)
    val_shards: str = ""  # shards of val_split ("" = val_split's shards listed in that index.json)
    shuffle_buffer: int = 256  # samples mixed per worker (raw: ~1.6 MB each for VGGSound mp4)
    batches_per_epoch: int = 0  # per rank per epoch from shards (0 = index.json samples / (world x batch))


@dataclass
class LossConfig:
    ce: float = 1.0  # weight of the classification cross-entropy
    avc: bool = True  # supervised audio-video contrastive (eq. 3)
    imc: bool = True  # supervised intra-modal contrastive (eq. 4), needs two views
    al: bool = False  # instance-level audio-video alignment (ALBEF ITC), ablation baseline
    imal: bool = False  # instance-level intra-modal alignment, ablation baseline
    tau: float = 0.07  # temperature of every contrastive term (paper: 0.07)
    # λ1 = λ2 per epoch: [[last_epoch, value], ...], last entry's epoch may be null (= forever).
    # Paper: 0.25 for epochs 1-20, 0.1 for 21-40, 0.05 after.
    lambda_schedule: list = field(default_factory=lambda: [[20, 0.25], [40, 0.1], [None, 0.05]])
    label_smoothing: float = 0.0  # CE label smoothing
    # Weight of the CE of the unimodal heads on E_CLS^V and E_CLS^A alone (models built with
    # model_args.aux_heads: true). 0 = off, the paper's loss.
    aux_ce: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 100  # paper: 100
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    batch_size: int = 8  # per process; paper: 64 in total on 8 GPUs
    lr: float = 1e-4  # AdamW peak learning rate (paper: 1e-4)
    min_lr: float = 1e-6  # cosine floor
    weight_decay: float = 0.05  # AdamW weight decay (MViTv2 recipe)
    warmup_epochs: float = 1.0  # linear warm-up length in epochs
    clip_grad: float = 1.0  # max grad norm (0 = off)
    amp: bool = True  # bf16 autocast on CUDA; always float32 on CPU
    compile: bool = False  # torch.compile the model
    grad_checkpoint: bool = False  # activation checkpointing in the encoder blocks
    seed: int = 0  # seeds python, numpy, torch and the data order
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10  # steps between JSONL log lines
    eval_every: int = 1  # epochs between evaluations (0 = only at the end)
    save_every_steps: int = 0  # also checkpoint every N steps (0 = each epoch end only)
    keep_last: int = 2  # step checkpoints kept besides the best/last
    init: str = ""  # weights to start from: checkpoint dir(s), comma-separated, or a foreign file
    init_source: str = ""  # torchvision | timm | slowfast | "" (our own checkpoint)
    # An audio+video model initialised from an audio-only and a video-only checkpoint of the same
    # classes starts its fused head at [W_V, W_A], b_V + b_A (logit-sum late fusion). Off: the
    # paper's recipes and the ablation rows keep a fresh head; the own-data MMT recipe turns it on.
    init_fused_head: bool = False
    # After training, fit mmt_core.fewshot's pool (descriptor probes + network, weights from
    # out-of-sample predictions) into the best checkpoint. Own-data recipes: on.
    fewshot_pool: bool = False
    # Own data: at least this many optimizer steps, whatever the epoch count (a few clips give
    # only a few steps per epoch). 0 = the epochs alone.
    min_steps: int = 0


@dataclass
class ExperimentConfig:
    model: str = "mmt_tiny"  # a name from mmt_core.list_models()
    model_args: dict = field(default_factory=dict)  # overrides passed to create_model
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Instantiate dataclass `cls` from a dict, recursing into nested dataclasses."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{where + '.' if where else ''}{key}'")
        f = known[key]
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{where}.{key}" if where else key)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[key] = tuple(value)
        elif isinstance(default, (int, float)) and not isinstance(default, bool) \
                and isinstance(value, str):
            kwargs[key] = _number(value, type(default), f"{where}.{key}" if where else key)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _number(text: str, kind: type, key: str):
    """YAML 1.1 reads `5e-4` (no dot) as a string: accept it for numeric keys."""
    try:
        return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise ConfigError(f"config key '{key}' expects a number, got '{text}'") from None


def config_from_dict(values: dict) -> ExperimentConfig:
    return _build(ExperimentConfig, values or {}, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML recipe (optionally with `base: other.yaml`) and apply `key=value` overrides."""
    values: dict = {}
    if path:
        values = _read_yaml(Path(path))
    for item in overrides or []:
        apply_override(values, item)
    return config_from_dict(values)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    base = values.pop("base", None)
    if base:
        merged = _read_yaml((path.parent / base).resolve())
        _deep_update(merged, values)
        values = merged
    return values


def _deep_update(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict) and k != "model_args":
            _deep_update(into[k], v)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k] = {**into[k], **v}
        else:
            into[k] = v


def apply_override(values: dict, item: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (numbers, lists, null...).

    Short keys are accepted for the train section: `max_steps=4` means `train.max_steps=4`.
    """
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    if len(parts) == 1 and parts[0] not in {f.name for f in dataclasses.fields(ExperimentConfig)}:
        for section in ("train", "data", "loss"):
            sec_cls = type(getattr(ExperimentConfig(), section))
            if parts[0] in {f.name for f in dataclasses.fields(sec_cls)}:
                parts = [section, parts[0]]
                break
        else:
            raise ConfigError(f"unknown config key '{key}'")
    node = values
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{key}': '{p}' is not a section")
    node[parts[-1]] = value


def config_to_json(cfg: ExperimentConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
