"""What the app computes, without any Gradio: models, example clips, reference set, and the
predict / explain / embed results as numpy arrays and plotly figures.

`Workbench` loads lazily and caches: the three demo models, the built-in reference set (the
synthetic test split, generated once into the cache dir), each model's reference embeddings and
projections (workbench.embeddings), and the last few prepared clips, so the Predict, Explain and
Embeddings results of one upload decode and run the models once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mmt_core.errors import MediaError, UserError

from . import embeddings as emb
from . import gradcam
from .inference import DEMO_MODELS, LoadedModel, load_models, predict_prepared, prepare

REPO = Path(__file__).resolve().parent.parent
# The built-in test split of configs/synthetic_base.yaml (`mmt synth --seed 1001 --split test`):
# the same seed and split give the same clips, so the reference set is that split's first clips.
REFERENCE_SEED = 1001
EXAMPLES_SEED = 7  # example clips: a seed no split of the recipe uses, so they are unseen
ROLE_TITLES = {"mmt": "MMT (audio + video)", "audio": "Audio only (MAT)",
               "video": "Video only (MViTv2)"}


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Workbench:
    """The app's state. Thread-safe: one lock around loading, one around model work."""

    def __init__(self, *, checkpoints: str | Path | None = None, cache_dir: str | Path | None = None,
                 max_seconds: float | None = None, max_mb: float | None = None,
                 reference_clips_per_class: int = 10, seed: int = 0):
        env = os.environ.get
        self.checkpoints = Path(checkpoints or env("MMT_CHECKPOINTS", REPO / "checkpoints"))
        self.cache_dir = Path(cache_dir or env("MMT_CACHE_DIR", REPO / ".cache" / "workbench"))
        # A 10 s clip is the expected case; a minute is plenty for one window of any model.
        self.max_seconds = max_seconds or _env_float("MMT_APP_MAX_SECONDS", 60.0)
        self.max_mb = max_mb or _env_float("MMT_APP_MAX_MB", 50.0)
        self.reference_clips_per_class = int(os.environ.get("MMT_APP_REF_CLIPS",
                                                            reference_clips_per_class))
        self.seed = seed
        self._lock = threading.RLock()
        self._models: dict[str, LoadedModel] | None = None
        self._explorers: dict[str, emb.ReferenceEmbeddings] = {}
        self._records = None
        self._prepared: OrderedDict = OrderedDict()  # sha256 of the file -> (Prepared, results)

    # ------------------------------------------------------------------ loading
    @property
    def models(self) -> dict[str, LoadedModel]:
        with self._lock:
            if self._models is None:
                missing = [n for n in DEMO_MODELS.values() if not (self.checkpoints / n).is_dir()]
                if missing:
                    raise UserError(f"demo checkpoints missing under {self.checkpoints}: "
                                    f"{', '.join(missing)} (train them with `make demo` or "
                                    f"set MMT_CHECKPOINTS)")
                self._models = load_models(self.checkpoints)
            return self._models

    @property
    def class_names(self) -> list[str]:
        return self.models["mmt"].class_names

    def examples(self) -> list[Path]:
        """One built-in clip per class (generated on first use into cache_dir/examples)."""
        return self._synthetic("examples", 1, EXAMPLES_SEED)

    def reference_records(self):
        """The built-in test split (clips_per_class per class), labels in the models' order."""
        with self._lock:
            if self._records is None:
                from mmt_core.data.manifests import read_manifest

                paths = self._synthetic("test", self.reference_clips_per_class, REFERENCE_SEED)
                man = read_manifest(self.cache_dir / "reference" / "manifest.csv", split="test")
                names, order = man.classes["label"], self.class_names
                if set(names) - set(order):
                    raise UserError("the demo checkpoints were not trained on the built-in classes")
                keep = {str(p) for p in paths}
                self._records = [
                    dataclasses.replace(r, labels={"label": order.index(names[r.labels["label"]])})
                    for r in man.records if r.path in keep]
            return self._records

    def _synthetic(self, split: str, clips_per_class: int, seed: int) -> list[Path]:
        from mmt_core.data.synthetic import CLASSES, write_dataset

        out = self.cache_dir / ("examples" if split == "examples" else "reference")
        paths = [out / split / f"{split}_s{seed}_{c.name}_{i:04d}.mp4"
                 for c in CLASSES for i in range(clips_per_class)]
        with self._lock:
            if not all(p.is_file() and p.with_suffix(".json").is_file() for p in paths):
                write_dataset(out, clips_per_class=clips_per_class, seed=seed, split=split,
                              progress=False)
        return paths

    def explorer(self, role: str) -> emb.ReferenceEmbeddings:
        with self._lock:
            if role not in self._explorers:
                m = self.models[role]
                self._explorers[role] = emb.ReferenceEmbeddings(
                    m.dir, self.reference_records(), cache_dir=self.cache_dir, model=m.model,
                    meta=m.meta, seed=self.seed)
            return self._explorers[role]

    def warmup(self, methods=("umap",), log=print) -> dict:
        """Load everything a first request needs (and JIT-compile UMAP) so requests are fast."""
        t0 = time.perf_counter()
        timings = {}
        self.models
        timings["models_s"] = time.perf_counter() - t0
        clip = self.examples()[0]
        timings["examples_s"] = time.perf_counter() - t0
        self.reference_records()
        timings["reference_clips_s"] = time.perf_counter() - t0
        for method in methods:
            self.embed(clip, method=method)
        timings["embeddings_s"] = time.perf_counter() - t0
        self.explain(clip)
        timings["total_s"] = time.perf_counter() - t0
        if log:
            log("workbench ready: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        return timings

    # ------------------------------------------------------------------ one clip
    def _check_upload(self, path) -> Path:
        if path is None or str(path) == "":
            raise UserError("no clip: upload a video file or pick an example")
        p = Path(path)
        if not p.is_file():
            raise UserError(f"file not found: {p.name}")
        mb = p.stat().st_size / 2**20
        if mb > self.max_mb:
            raise UserError(f"the file is {mb:.1f} MB; this workbench accepts up to "
                            f"{self.max_mb:g} MB")
        return p

    def prepared(self, path):
        """(Prepared, per-role results) of a clip, cached for the last 4 clips."""
        p = self._check_upload(path)
        # By content: each API call re-uploads the clip (a new file, same bytes).
        key = emb.file_hash(p)
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
            models = self.models
            try:
                prep = prepare(p, models, max_seconds=self.max_seconds)
            except MediaError as e:
                # media messages name the server-side temp path; the user knows their file
                raise MediaError(str(e).replace(str(p), p.name)) from None
            value = (prep, predict_prepared(prep, models, topk=len(self.class_names)))
            self._prepared[key] = value
            while len(self._prepared) > 4:
                self._prepared.popitem(last=False)
            return value

    def predict(self, path, topk: int = 5) -> dict:
        """{"probs": {role: {label: prob} or None}, "frames", "fbank", "notes", "timing"}."""
        t0 = time.perf_counter()
        prep, results = self.prepared(path)
        probs = {}
        for role, r in results.items():
            if r["probs"] is None:
                probs[role] = None
                continue
            names = self.models[role].class_names
            order = np.argsort(-r["probs"])[:topk]
            probs[role] = {names[i]: float(r["probs"][i]) for i in order}
        return {"probs": probs, "frames": prep.clip.frames, "times": prep.clip.times,
                "fbank": prep.fbank.numpy(), "notes": list(prep.notes), "has_audio": prep.has_audio,
                "timing_s": time.perf_counter() - t0}

    def explain(self, path, target: str | None = None, block: int = -2) -> dict:
        """Video CAMs of MMT and the video-only model (overlaid on the frames) and MMT's audio CAM
        for class `target` (a class name; None: each model's own top prediction), taken at each
        encoder's `block` (-2: the block before the last; 0: the finer stage-1 map)."""
        if target and target not in self.class_names:
            raise UserError(f"unknown class '{target}'; classes: {', '.join(self.class_names)}")
        prep, results = self.prepared(path)
        out = {"overlays": {}, "targets": {}}
        with self._lock:
            for role in ("mmt", "video", "audio"):
                m = self.models[role]
                if results[role]["probs"] is None:
                    continue
                idx = (int(np.argmax(results[role]["probs"])) if not target
                       else m.class_names.index(target))
                out["targets"][role] = m.class_names[idx]
                inputs = prep.inputs[m.name]
                if "v" in m.modalities:
                    cam = gradcam.video_cam(m.model, inputs, target=idx, block=block,
                                            frame_size=prep.clip.frames.shape[1:3])
                    out["overlays"][role] = gradcam.overlay_frames(prep.clip.frames, cam)
                if "a" in m.modalities and role == "mmt":
                    out.setdefault("audio_cams", {})[role] = gradcam.audio_cam(
                        m.model, inputs, target=idx, block=block)
        out["fbank"] = prep.fbank.numpy()
        out["seconds_per_frame"] = 0.01  # kaldi fbank 10 ms shift
        return out

    def embed(self, path, method: str = "umap", source: str = "mmt") -> dict:
        """Three scatter figures with the clip placed, and the ARI/HS table of every space.

        source "mmt": MMT's audio / video / fused embeddings; "models": the audio-only model's,
        the video-only model's and MMT's fused embeddings (the paper's Fig. 4 comparison).
        """
        if method not in emb.METHODS:
            raise UserError(f"unknown projection '{method}'; choose from {', '.join(emb.METHODS)}")
        prep, results = self.prepared(path)
        panels = ([("mmt", "audio"), ("mmt", "video"), ("mmt", "fused")] if source == "mmt" else
                  [("audio", "audio"), ("video", "video"), ("mmt", "fused")])
        figures = []
        with self._lock:
            for role, space in panels:
                ex, r = self.explorer(role), results[role]
                point = None
                if r["output"] is not None:
                    point = emb.embeddings_of(r["output"])[space][0]
                label = self.models[role].class_names[int(np.argmax(r["probs"]))] \
                    if r["probs"] is not None else ""
                figures.append(ex.figure(space, method, point=point, point_name=Path(path).name,
                                         point_label=label))
            table = []
            for role in ("audio", "video", "mmt"):
                for space, s in self.explorer(role).scores().items():
                    table.append([self.models[role].name, space, round(s["ari"], 3),
                                  round(s["hs"], 3)])
        return {"figures": figures, "scores": table,
                "reference_clips": len(self.explorer("mmt").reference()["labels"])}

    # ------------------------------------------------------------------ ablations
    def ablations(self) -> dict | None:
        """checkpoints/ablations.json ({row: {top1, top5, ...}}) or None when absent."""
        path = self.checkpoints / "ablations.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text())


_WB: Workbench | None = None
_WB_LOCK = threading.Lock()


def get_workbench() -> Workbench:
    """The process-wide Workbench (created on first use, never at import)."""
    global _WB
    with _WB_LOCK:
        if _WB is None:
            _WB = Workbench()
        return _WB
