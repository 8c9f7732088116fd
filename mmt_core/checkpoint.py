"""Checkpoints: a directory with `model.safetensors` + `config.json` (+ `train_state.pt` for resume).

`config.json` carries everything needed to rebuild and feed the model (torchvision's idea of
weights that know their preprocessing and label names); `train_state.pt` holds only tensors,
dicts, lists and numbers so it loads with `torch.load(weights_only=True)`.

Writes are atomic: files are written into a temporary sibling directory, fsync'd, and the
directory is renamed into place. In a run directory the engine writes each checkpoint under a
fresh name (`step-000040/`) and then flips the `last` / `best` symlinks with `os.replace`, so a
crash at any moment leaves the previous `last` complete and loadable.
"""
from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .fewshot import POOL_FILE, attach, load_pool

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
FORMAT = "mmt-checkpoint/1"


class CheckpointError(UserError):
    """A checkpoint directory that is missing, incomplete or unreadable."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap DDP / torch.compile and return contiguous CPU tensors (safetensors needs them)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    # safetensors refuses tensors that share storage; clone() gives each its own.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def write_checkpoint_dir(path: str | Path, model: torch.nn.Module, meta: dict,
                         train_state: dict | None = None) -> Path:
    """Write a complete checkpoint into `path` atomically (temp dir + fsync + rename).

    If `path` already exists as a real directory it is swapped out (old one renamed aside, new one
    renamed in, old one deleted); the engine never relies on that case, it writes fresh names.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
    try:
        save_file(_state_dict(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, default=_json_default))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if path.is_symlink():
            path.unlink()
        if not path.exists():
            os.replace(tmp, path)  # a fresh name: one atomic rename
        else:
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(dir: str | Path, model: torch.nn.Module, meta: dict) -> Path:
    """Save weights + metadata (see `make_meta`) as a checkpoint directory, atomically."""
    return write_checkpoint_dir(dir, model, meta)


def point_link(run_dir: str | Path, name: str, target: str | Path) -> None:
    """Atomically make RUN_DIR/name a relative symlink to `target` (a directory in RUN_DIR)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".tmp-link-{name}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(Path(target).name, tmp)
    os.replace(tmp, run_dir / name)  # rename(2) over the old link: atomic
    _fsync_dir(run_dir)


def read_meta(dir: str | Path) -> dict:
    """config.json of a checkpoint directory, with a clear error when it is not one."""
    d = Path(dir)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {dir}")
    for name in (WEIGHTS, CONFIG):
        if not (d / name).is_file():
            raise CheckpointError(f"{dir} is not a checkpoint: {name} is missing")
    try:
        meta = json.loads((d / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / CONFIG}: not valid JSON ({e})") from None
    for key in ("model", "classes", "preprocessing"):
        if key not in meta:
            raise CheckpointError(f"{d / CONFIG}: '{key}' is missing")
    return meta


def num_classes_of(classes: dict[str, list[str]]) -> int | dict[str, int]:
    """One head called "label" → an int; several heads (EPIC verb/noun) → {head: n}."""
    if list(classes) == ["label"]:
        return len(classes["label"])
    return {head: len(names) for head, names in classes.items()}


def build_model_from_meta(meta: dict) -> torch.nn.Module:
    from .registry import create_model

    pre = meta["preprocessing"]
    return create_model(meta["model"], num_classes=num_classes_of(meta["classes"]),
                        num_frames=pre["num_frames"], image_size=pre["image_size"],
                        mel_bins=pre["num_mel_bins"], audio_frames=pre["audio_frames"],
                        **meta.get("model_args", {}))


def load_weights_into(model: torch.nn.Module, dir: str | Path) -> None:
    """Load DIR/model.safetensors into `model` (strict), with a one-line error on mismatch."""
    try:
        state = load_file(str(Path(dir) / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{Path(dir) / WEIGHTS}: unreadable weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing / unexpected keys, shape mismatches
        detail = [s.strip() for s in str(e).splitlines() if s.strip()]
        raise CheckpointError(f"{dir}: weights do not match the model "
                              f"({detail[1] if len(detail) > 1 else detail[0]})") from None


def load_checkpoint(dir: str | Path, device: str | torch.device = "cpu", pool: bool = True):
    """Rebuild the model from config.json and load model.safetensors. Returns (model, meta).
    pool: attach the checkpoint's few-clip pool (mmt_core.fewshot), if it has one; False for
    callers that want the network alone (weights to copy, embeddings, fitting a new pool)."""
    meta = read_meta(dir)
    try:
        model = build_model_from_meta(meta)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{dir}: cannot rebuild model '{meta.get('model')}' ({e})") from None
    load_weights_into(model, dir)
    if pool:
        try:
            attach(model, load_pool(dir))  # a few-clip checkpoint's pooled predictions (eval only)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return model.to(device), meta


def load_train_state(dir: str | Path) -> dict:
    path = Path(dir) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a truncated file come in many types
        raise CheckpointError(f"cannot resume: {path} is unreadable ({type(e).__name__})") from None


# ---- RNG state as plain tensors/lists (weights_only=True cannot unpickle numpy objects) ----

def rng_state() -> dict:
    py = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- config.json ----

# DataConfig fields that inference needs to feed a clip exactly as in training/evaluation.
PREPROCESSING_KEYS = ("num_frames", "image_size", "clip_seconds", "video_seconds", "sample_rate",
                      "num_mel_bins", "audio_frames", "audio_mean", "audio_std", "video_mean",
                      "video_std", "test_views", "max_clip_seconds")


def make_meta(cfg, model: torch.nn.Module, classes: dict[str, list[str]], *,
              metrics: dict | None = None, step: int = 0, epoch: int = 0,
              data_info: dict | None = None) -> dict:
    """The config.json of a checkpoint trained with ExperimentConfig `cfg`."""
    import dataclasses
    import time

    net = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
    d = cfg.data
    return {
        "format": FORMAT,
        "model": cfg.model,
        "model_args": dict(cfg.model_args),
        "modalities": getattr(net, "modalities", ""),
        "params": sum(p.numel() for p in net.parameters()),
        "classes": classes,
        "preprocessing": {k: getattr(d, k) for k in PREPROCESSING_KEYS},
        "data": {"manifest": d.manifest, "format": d.format, "root": d.root,
                 "train_split": d.train_split, "val_split": d.val_split, **(data_info or {})},
        "metrics": metrics or {},
        "step": step,
        "epoch": epoch,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "config": dataclasses.asdict(cfg),
    }


def data_config_from_meta(meta: dict, **overrides):
    """A DataConfig that preprocesses clips the way this checkpoint was trained."""
    from .config import DataConfig

    pre = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["preprocessing"].items()}
    return DataConfig(**{**pre, **overrides})


def export_checkpoint(src: str | Path, dst: str | Path, metrics: dict | None = None) -> Path:
    """Copy weights + config.json (no training state) to `dst`, merging `metrics` into the
    config's metrics: how a run's best checkpoint becomes a small shippable one."""
    src = Path(src).resolve()
    meta = read_meta(src)
    meta["metrics"] = {**meta.get("metrics", {}), **(metrics or {})}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dst.name}-", dir=dst.parent))
    os.chmod(tmp, 0o755)
    try:
        shutil.copyfile(src / WEIGHTS, tmp / WEIGHTS)
        if (src / POOL_FILE).is_file():  # fitted on these weights: travels with them
            shutil.copyfile(src / POOL_FILE, tmp / POOL_FILE)
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2, default=_json_default))
        if dst.is_dir() and (dst / WEIGHTS).is_file() and \
                filecmp.cmp(src / WEIGHTS, dst / WEIGHTS, shallow=False):
            # Re-exporting the same weights (new metrics): files computed from them, such as
            # the OOD reference, stay valid and are kept; new weights drop them.
            for f in dst.iterdir():  # what src brought (weights, config, pool) wins
                if f.is_file() and not (tmp / f.name).exists():
                    shutil.copyfile(f, tmp / f.name)
        for f in tmp.iterdir():
            _fsync_file(f)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
