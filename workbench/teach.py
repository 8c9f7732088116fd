"""Teach the workbench new classes from a few clips: collect clips per class, train in the
background with the own-data recipe, keep the taught checkpoints, zip / restore them.

    store = ClipStore(cache_dir / "teach")
    store.add("session", "knock", [upload paths], check=wb.check_clip)
    job = TeachJob.start(store.folder("session"), out_dir, demo_checkpoints)  # a thread
    job.snapshot()          # {"status", "fraction", "records", ...}: what the page polls
    job.stop()              # the engine saves and returns after its current step

Training is `mmt_core.own_data.train_own(..., model="mmt_tiny")` (→ engine.train): the audio-only
and video-only models start from the shipped encoders (their heads are left behind: other
classes), then the MMT starts from those two. Nothing here imports gradio.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

from mmt_core.errors import UserError
from mmt_core.fewshot import POOL_FILE

from .inference import DEMO_MODELS

CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,39}")
MIN_CLASSES, MAX_CLASSES = 2, 10
MAX_CLIPS_PER_CLASS = 200
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
# The taught checkpoints' files: all a zip may hold (besides folders).
CHECKPOINT_FILES = ("model.safetensors", "config.json", "ood.safetensors", POOL_FILE)
ZIP_FOLDER = "mmt_taught"  # the zip's top folder: unzip, then --checkpoint mmt_taught/mmt_tiny
MAX_ZIP_MB = 100.0  # uncompressed: three tiny checkpoints are ~15 MB
BATCH = 8  # clips per step: 5 classes x 6 clips give ~3 steps per epoch


def check_class_name(name) -> str:
    name = str(name or "").strip()
    if not CLASS_NAME.fullmatch(name):
        raise UserError(f"class name {name!r}: use 1-40 letters, digits, spaces, '_' or '-', "
                        "starting with a letter or digit")
    return name


# Per model, from the shipped encoders. benchmarks/bench_teach.py (5 classes x 6 clips): 3 and 4
# epochs both reach 4/5 validation clips with the MMT; 3 take 247 CPU s (2 cores: ~2 min), 4 288.
EPOCHS = 3


def teach_epochs() -> int:
    """MMT_TEACH_EPOCHS (the tests use 1), else EPOCHS."""
    v = os.environ.get("MMT_TEACH_EPOCHS", "").strip()
    return int(v) if v else EPOCHS


def safe_name(text: str | None, default: str) -> str:
    """`text` as a folder name: letters, digits, _ and - only, at most 64 (default if empty)."""
    return re.sub(r"[^A-Za-z0-9_-]", "", str(text or default))[:64] or default


class ClipStore:
    """Per-session folders of class folders: ROOT/SESSION/CLASS/clip.mp4."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, session: str) -> Path:
        return self.root / safe_name(session, "anonymous")

    def counts(self, session: str) -> dict[str, int]:
        d = self.folder(session)
        if not d.is_dir():
            return {}
        return {c.name: sum(1 for f in c.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
                for c in sorted(d.iterdir()) if c.is_dir()}

    def add(self, session: str, class_name: str, paths, *, check) -> dict[str, int]:
        """Copy clip files into SESSION/CLASS after `check(path)` (size, duration, video stream:
        raises UserError); returns the counts per class."""
        name = check_class_name(class_name)
        paths = [Path(p) for p in (paths or []) if p]
        if not paths:
            raise UserError("no clips to add: upload one or more video files")
        counts = self.counts(session)
        if name not in counts and len(counts) >= MAX_CLASSES:
            raise UserError(f"at most {MAX_CLASSES} classes")
        if counts.get(name, 0) + len(paths) > MAX_CLIPS_PER_CLASS:
            raise UserError(f"at most {MAX_CLIPS_PER_CLASS} clips per class")
        for p in paths:
            check(p)
        dst = self.folder(session) / name
        dst.mkdir(parents=True, exist_ok=True)
        for p in paths:
            suffix = p.suffix.lower() if p.suffix.lower() in VIDEO_SUFFIXES else ".mp4"
            shutil.copyfile(p, dst / f"{uuid.uuid4().hex[:12]}{suffix}")
        return self.counts(session)

    def add_folder(self, session: str, folder, *, check) -> dict[str, int]:
        """Add every clip of a server-side folder of class folders (FOLDER/CLASS/*.mp4)."""
        root = Path(str(folder or "")).expanduser()
        if not str(folder or "").strip() or not root.is_dir():
            raise UserError(f"not a folder on the server: {folder!r}")
        classes = [c for c in sorted(root.iterdir()) if c.is_dir()
                   and any(f.suffix.lower() in VIDEO_SUFFIXES for f in c.iterdir())]
        if not classes:
            raise UserError(f"{root} has no class folders with video clips in them")
        for c in classes:
            self.add(session, c.name, sorted(f for f in c.iterdir()
                                             if f.suffix.lower() in VIDEO_SUFFIXES), check=check)
        return self.counts(session)

    def clear(self, session: str) -> None:
        shutil.rmtree(self.folder(session), ignore_errors=True)

    def ready(self, session: str) -> Path:
        """The session's folder when it can be trained on, else a UserError saying what is missing."""
        counts = self.counts(session)
        if len(counts) < MIN_CLASSES:
            raise UserError(f"name at least {MIN_CLASSES} classes and add clips to each "
                            f"(now: {len(counts)})")
        few = [c for c, n in counts.items() if n < 3]
        if few:
            raise UserError(f"every class needs at least 3 clips (2 to train on, 1 to check); "
                            f"add more to: {', '.join(few)}")
        return self.folder(session)


def _batch_size(counts: dict[str, int], val_fraction: float = 0.15) -> int:
    """Clips per step: BATCH, or fewer when the training part (after the carved validation
    clips, as mmt_core.data.splits.carve_split counts them) is smaller."""
    train = sum(n - min(n - 1, max(1, round(val_fraction * n))) for n in counts.values())
    return max(1, min(BATCH, train))


class TeachJob:
    """One background training run (own_data.train_own on the MMT, audio-only and video-only)."""

    def __init__(self, data: Path, out: Path, demo: Path, *, epochs: int | None,
                 on_done=None):
        self.data, self.out, self.demo, self.epochs = Path(data), Path(out), Path(demo), epochs
        self.counts = {c.name: sum(1 for f in c.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
                       for c in sorted(self.data.iterdir()) if c.is_dir()}
        self.records: list[dict] = []
        self.status = "running"  # running | done | stopped | failed
        self.error = ""
        self.result: dict | None = None
        self.started = time.time()
        self.finished: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._on_done = on_done
        self.thread = threading.Thread(target=self._run, daemon=True, name="teach")

    @classmethod
    def start(cls, data, out, demo, *, epochs=None, on_done=None) -> "TeachJob":
        job = cls(data, out, demo, epochs=epochs, on_done=on_done)
        job.thread.start()
        return job

    def stop(self) -> None:
        self._stop.set()

    def _record(self, record: dict) -> None:
        with self._lock:
            self.records.append(record)

    def planned_epochs(self) -> dict[str, int]:
        from mmt_core.own_data import own_config

        return {run: own_config(model, (), self.epochs).train.epochs
                for run, model in (("audio", DEMO_MODELS["audio"]), ("video", DEMO_MODELS["video"]),
                                   ("mmt", DEMO_MODELS["mmt"]))}

    def _run(self) -> None:
        from mmt_core.own_data import train_own

        try:
            init = {"audio": str(self.demo / DEMO_MODELS["audio"]),
                    "video": str(self.demo / DEMO_MODELS["video"])}
            overrides = [f"train.batch_size={_batch_size(self.counts)}", "train.log_every=1",
                         "data.num_workers=0"]
            res = train_own(self.data, DEMO_MODELS["mmt"], self.out / "run", epochs=self.epochs,
                            overrides=overrides, progress=False, on_record=self._record,
                            stop=self._stop, init=init)
            if res.get("stopped"):
                self.status = "stopped"
                return
            self.result = export_taught(self.out / "run", self.out / "taught", res,
                                        seconds=time.time() - self.started)
            if self._on_done:
                self._on_done(self)
            self.status = "done"
        except UserError as e:
            self.status, self.error = "failed", str(e)
        except Exception as e:  # a bug: shown on the page, the server keeps serving
            import traceback

            traceback.print_exc()
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            self.finished = time.time()

    def snapshot(self) -> dict:
        """What the page shows: status, progress fraction, the records so far, the result."""
        with self._lock:
            records = list(self.records)
        plan = self.planned_epochs()
        done = sum(1 for r in records if r.get("type") == "epoch")
        steps = [r for r in records if r.get("type") == "step"]
        frac = done / max(1, sum(plan.values()))
        if self.status == "done":
            frac = 1.0
        elif steps and records[-1].get("type") == "step":
            # within an epoch: steps of this epoch over the steps of the previous one (or a guess)
            run, ep = steps[-1]["run"], steps[-1]["epoch"]
            per = [r for r in records if r.get("type") == "step" and r.get("run") == run]
            this = sum(1 for r in per if r["epoch"] == ep)
            prev = sum(1 for r in per if r["epoch"] == ep - 1) or this + 1
            frac += min(this / prev, 0.95) / max(1, sum(plan.values()))
        return {"status": self.status, "fraction": min(1.0, frac), "records": records,
                "plan": plan, "error": self.error, "result": self.result,
                "seconds": round((self.finished or time.time()) - self.started, 1),
                "counts": self.counts}


def clear_runs(jobs: Path) -> int:
    """Delete the folders of earlier teach runs under `jobs` (their models were moved to the
    taught set; what is left is training state and decoded caches, tens of MB per run). Called
    when a new run starts, so only the latest run's folder stays. Returns how many were deleted."""
    gone = 0
    for run in jobs.glob("*") if jobs.is_dir() else ():
        if run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
            gone += 1
    return gone


def export_taught(run: Path, dst: Path, res: dict, *, seconds: float) -> dict:
    """Copy the best checkpoints of a train_own run into DST/{mmt_tiny,mat_tiny,mvit_tiny_video},
    fit each one's "unlike the training data" reference on the training clips, write
    DST/summary.json; returns the summary."""
    from mmt_core import ood
    from mmt_core.checkpoint import export_checkpoint, read_meta
    from mmt_core.data.manifests import read_manifest

    best = {"mmt": res.get("best") or res["last"]}
    for role in ("audio", "video"):
        sub = Path(res["unimodal"][role])
        best[role] = str(sub / ("best" if (sub / "best").exists() else "last"))
    tmp = Path(tempfile.mkdtemp(prefix=".taught-", dir=dst.parent))
    try:
        man = read_manifest(res["manifest"], format="plain")
        train_paths = [r.path for r in man.records if r.split == "train"]
        # the OOD reference: every taught clip (train and val), few as they are
        taught = [r.path for r in man.records]
        for role, name in DEMO_MODELS.items():
            export_checkpoint(best[role], tmp / name)
            ood.build(tmp / name, taught, source=f"the {len(taught)} taught clips")
        metrics = read_meta(tmp / DEMO_MODELS["mmt"])["metrics"]
        summary = {"classes": man.classes["label"], "clips": len(man.records),
                   "clips_per_class": {c: sum(1 for r in man.records if r.labels["label"] == i)
                                       for i, c in enumerate(man.classes["label"])},
                   "train_clips": len(train_paths),
                   "train_top1": metrics.get("train_top1"),
                   "seconds": round(seconds, 1)}
        if metrics.get("val_top1") is not None:
            summary["val_top1"] = metrics["val_top1"]
            summary["val_clips"] = sum(1 for r in man.records if r.split == "val")
        for role in ("audio", "video"):
            m = read_meta(tmp / DEMO_MODELS[role])["metrics"]
            if m.get("val_top1") is not None:
                summary[f"{role}_val_top1"] = m["val_top1"]
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        _swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _swap_in(tmp: Path, dst: Path) -> None:
    """Replace the folder dst with tmp (renames: never a half-written taught set)."""
    old = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:6]}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- download / restore

def zip_taught(taught: Path, out: Path) -> Path:
    """taught/{mmt_tiny,...}/{model.safetensors,config.json,ood.safetensors} → a zip whose top
    folder is ZIP_FOLDER (unzip, then `mmt predict CLIP --checkpoint mmt_taught/mmt_tiny`)."""
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in DEMO_MODELS.values():
            for f in CHECKPOINT_FILES:
                if (taught / name / f).is_file():
                    z.write(taught / name / f, f"{ZIP_FOLDER}/{name}/{f}")
    os.replace(tmp, out)
    return out


_MEMBER = re.compile(r"(?:[A-Za-z0-9_. -]{1,64}/)?(" + "|".join(DEMO_MODELS.values()) + r")/("
                     + "|".join(re.escape(f) for f in CHECKPOINT_FILES) + r")")


def restore_zip(path, dst: Path, *, max_mb: float = MAX_ZIP_MB) -> dict:
    """Validate a taught-checkpoints zip and make it the taught set at dst; returns its summary.

    Only our checkpoint files (an optional top folder, then mmt_tiny|mat_tiny|mvit_tiny_video /
    model.safetensors|config.json|ood.safetensors), no links, no absolute or '..' paths, at most
    max_mb uncompressed; every model must load (safetensors only) with the same classes.
    """
    from mmt_core.checkpoint import CheckpointError, load_checkpoint, read_meta

    p = Path(str(path or ""))
    if not p.is_file():
        raise UserError("no zip uploaded")
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError):
        raise UserError("not a zip file") from None
    tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=dst.parent))
    try:
        with z:
            members = [i for i in z.infolist() if not i.is_dir()]
            total = sum(i.file_size for i in members)
            if total > max_mb * 2**20:
                raise UserError(f"the zip unpacks to {total / 2**20:.0f} MB; at most {max_mb:g} MB")
            for info in members:
                name = info.filename
                mode = (info.external_attr >> 16) & 0o170000
                m = _MEMBER.fullmatch(name)
                if not m or ".." in name.split("/") or name.startswith("/") or mode == 0o120000:
                    raise UserError(f"unexpected file in the zip: {name!r} (only "
                                    f"{', '.join(CHECKPOINT_FILES)} of "
                                    f"{', '.join(DEMO_MODELS.values())})")
                target = tmp / m.group(1) / m.group(2)
                if target.exists():
                    raise UserError(f"the zip holds {m.group(1)}/{m.group(2)} twice")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    left = info.file_size + 1
                    while chunk := src.read(min(1 << 20, left)):
                        left -= len(chunk)
                        if left <= 0:
                            raise UserError(f"{name}: larger than its header says")
                        out.write(chunk)
        classes = None
        for name in DEMO_MODELS.values():
            try:
                if read_meta(tmp / name)["model"] != name:  # never build another (big) model
                    raise UserError(f"{name}/config.json names another model")
                _, meta = load_checkpoint(tmp / name, "cpu")
            except CheckpointError as e:
                raise UserError(f"{name}: {e}") from None
            if (tmp / name / "ood.safetensors").is_file():
                from mmt_core import ood

                try:
                    ood.load(tmp / name)
                except Exception:
                    raise UserError(f"{name}/ood.safetensors is unreadable") from None
            names = next(iter(meta["classes"].values()))
            if classes is not None and names != classes:
                raise UserError("the three models of the zip were taught different classes")
            classes = names
        summary = {"classes": classes, "restored_from": p.name}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        _swap_in(tmp, dst)
        return summary
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
