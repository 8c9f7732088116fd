"""A model set: a folder holding a fused model and, optionally, its audio-only and video-only
models, recognised from each checkpoint's config.json ("modalities": av → fused, a → audio,
v → video; any registered size).

    ms = open_model_set("runs/mine_compare")      # what `mmt compare` wrote
    ms.models["mmt"], ms.class_names, ms.manifest  # checkpoint dirs, classes, the data it points at

Layouts that open:
- a compare run: RUN/{mmt,audio,video}/ are run directories, each with a `best` (else `last`)
  symlink to its chosen checkpoint;
- a `mmt train --data` run of an MMT: RUN/best (the fused model) and RUN/{audio,video}/best;
- the Teach tab's taught folder and the shipped `checkpoints/`: one checkpoint directory per model
  ({mmt_tiny,mat_tiny,mvit_tiny_video}/);
- one checkpoint directory: a set of that one model.
Every model of a set must know the same classes (same names, same order), so their
probabilities can be compared and averaged column by column.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from .errors import UserError
from .fewshot import POOL_FILE

# config.json "modalities" → the model's role in a set.
ROLES = {"av": "mmt", "a": "audio", "v": "video"}
ROLE_NAMES = {"mmt": "fused", "audio": "audio-only", "video": "video-only"}
# A run directory points at its chosen checkpoint with these symlinks, preferred in this order.
RUN_LINKS = ("best", "last")


@dataclass(frozen=True)
class ModelSet:
    root: Path  # the folder the set was opened from
    models: dict[str, Path]  # role ("mmt" / "audio" / "video") → checkpoint dir (links resolved)
    metas: dict[str, dict]  # role → that checkpoint's config.json

    @property
    def roles(self) -> list[str]:
        """The roles present, in the order mmt, audio, video."""
        return [r for r in ROLE_NAMES if r in self.models]

    @property
    def classes(self) -> dict[str, list[str]]:
        """head → class names (every model of the set has the same)."""
        return next(iter(self.metas.values()))["classes"]

    @property
    def head(self) -> str:
        return next(iter(self.classes))

    @property
    def class_names(self) -> list[str]:
        return self.classes[self.head]

    def preprocessing(self, role: str) -> dict:
        """How `role`'s model takes a clip (frames, window, fbank statistics): config.json's."""
        return self.metas[role]["preprocessing"]

    @property
    def recorded_manifest(self) -> str | None:
        """The manifest the fused model (else the first model) was trained on, as recorded."""
        meta = self.metas.get("mmt") or next(iter(self.metas.values()))
        return (meta.get("data") or {}).get("manifest") or None

    @property
    def manifest(self) -> Path | None:
        """recorded_manifest when it exists here (absolute, or relative to the working
        directory as the engine records it), else None."""
        rec = self.recorded_manifest
        return Path(rec) if rec and Path(rec).exists() else None

    def weights_hash(self) -> str:
        """sha256 over every model's role, weights and few-clip pool (it changes the
        predictions too): a cache key of anything computed from the set's outputs."""
        h = hashlib.sha256()
        for role in self.roles:
            h.update(role.encode())
            for name in (ckpt.WEIGHTS, POOL_FILE):
                if (self.models[role] / name).is_file():
                    with open(self.models[role] / name, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
        return h.hexdigest()

    def describe(self) -> dict:
        """Plain-JSON summary: role → {dir, model}, classes, manifest."""
        return {"root": str(self.root),
                "models": {r: {"dir": str(self.models[r]), "model": self.metas[r]["model"]}
                           for r in self.roles},
                "classes": self.class_names, "manifest": self.recorded_manifest}


def _is_checkpoint(d: Path) -> bool:
    return (d / ckpt.WEIGHTS).is_file() and (d / ckpt.CONFIG).is_file()


def _run_choice(d: Path) -> Path | None:
    """The checkpoint a run directory's `best` (else `last`) link names, or None."""
    for name in RUN_LINKS:
        if _is_checkpoint(d / name):
            return d / name
    return None


def _candidates(root: Path) -> list[Path]:
    """The checkpoint dirs a set folder holds: itself, its run choice, and per child folder
    (hidden ones and a run's step-* / best / last excluded) that child or its run choice."""
    if _is_checkpoint(root):
        return [root]
    found = [c for c in [_run_choice(root)] if c is not None]
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or child.name in RUN_LINKS or \
                child.name.startswith("step-") or not child.is_dir():
            continue
        if _is_checkpoint(child):
            found.append(child)
        elif (choice := _run_choice(child)) is not None:
            found.append(choice)
    return found


def open_model_set(folder: str | Path) -> ModelSet:
    """The model set in `folder` (layouts: module docstring); a one-line UserError for a folder
    with no checkpoint, two models of one role, or models that disagree on the classes."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"model set not found: {root} is not a folder")
    found = _candidates(root)
    if not found:
        raise UserError(f"{root}: no checkpoint found (expected model.safetensors + config.json "
                        f"in it, in its sub-folders, or behind their best/last links)")
    models: dict[str, Path] = {}
    metas: dict[str, dict] = {}
    for d in found:
        meta = ckpt.read_meta(d)
        mods = meta.get("modalities", "")
        role = ROLES.get(mods)
        if role is None:
            raise UserError(f"{d}: a model of modalities '{mods}' has no role in a model set "
                            f"(av: fused, a: audio-only, v: video-only)")
        if role in models:
            raise UserError(f"{root}: two {ROLE_NAMES[role]} models ({models[role]} and {d}); "
                            f"a model set holds one of each")
        models[role], metas[role] = d.resolve(), meta
    first = next(iter(models))
    for role in models:
        if metas[role]["classes"] != metas[first]["classes"]:
            a, b = metas[first]["classes"], metas[role]["classes"]
            diff = sorted(set(sum(a.values(), [])) ^ set(sum(b.values(), [])))
            why = f"differing: {', '.join(diff[:5])}" if diff else "same names, another order"
            raise UserError(f"{root}: the {ROLE_NAMES[first]} and {ROLE_NAMES[role]} models "
                            f"know different classes ({why})")
    order = [r for r in ROLE_NAMES if r in models]
    return ModelSet(root=root, models={r: models[r] for r in order},
                    metas={r: metas[r] for r in order})
