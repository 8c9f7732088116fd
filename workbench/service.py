"""What the app computes, without any Gradio: models, example clips, reference set, and the
predict / explain / embed results as numpy arrays and plotly figures.

`Workbench` loads lazily and caches: the three demo models, the built-in reference set (the
synthetic test split, generated once into the cache dir), each model's reference embeddings and
projections (workbench.embeddings), and the last few prepared clips, so the Predict, Explain and
Embeddings results of one upload decode and run the models once.

Model sets (`Workbench.sets`, name → ModelSetEntry): "demo" (checkpoints/ on the built-in
data), one per `python app.py --models DIR` named by its folder (a compare run, a taught folder,
any folder mmt_core.model_set opens; its reference clips from `--data` / the manifest its fused
model records), and "taught" (CACHE/teach/taught/, written by the Teach tab or /teach, or
restored from a zip). `use(name)` switches the server-wide active set that every tab and
endpoint answers with (the first --models set at start, else "demo"); one teach run at a time
trains in a background thread.
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

from mmt_core.atomic import write_json
from mmt_core.errors import MediaError, UserError
from mmt_core.explain import CAM_BLOCKS

from . import embeddings as emb
from . import gradcam
from . import teach as teaching
from .inference import (DEMO_MODELS, LoadedModel, load_model_set, load_models, predict_prepared,
                        prepare)

REPO = Path(__file__).resolve().parent.parent
# The built-in test split of configs/synthetic_base.yaml (`mmt synth --seed 1001 --split test`):
# the same seed and split give the same clips, so the reference set is that split's first clips.
REFERENCE_SEED = 1001
POINTING_CLIPS_PER_CLASS = 5  # the Explain tab's pointing scores: 30 test clips (occlusion is slow)
EXAMPLES_SEED = 7  # example clips: a seed no split of the recipe uses, so they are unseen
ROLE_TITLES = {"mmt": "MMT (audio + video)", "audio": "Audio only (MAT)",
               "video": "Video only (MViTv2)"}


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def drop_earlier_weights(table: dict, name: str, weights: str) -> dict:
    """A pointing-score table without model `name`'s entries for weights other than `weights`
    (the hash that starts each key): scores of earlier weights can never be shown again."""
    return {k: v for k, v in table.items() if v.get("model") != name or k.startswith(weights + "/")}


@dataclasses.dataclass(frozen=True)
class ModelSetEntry:
    """One model set the app can switch to."""
    root: Path  # the folder it opens from (mmt_core.model_set layouts)
    kind: str = "models"  # "demo" | "taught" (the three demo-named checkpoints) | "models"
    data: Path | None = None  # --data: its clips' manifest (None: the one its model records)
    split: str = "test"  # the split of data its reference and dataset clips come from


def _env_list(name: str) -> list[str]:
    """An os.pathsep-separated list in an environment variable (app.py writes them)."""
    return [v for v in os.environ.get(name, "").split(os.pathsep) if v]


def set_name(folder: Path, taken) -> str:
    """A model set's name in the Models switch: its folder's name (a run's best/last/step-*
    link: with its parent's, "mmt/best"), made unique with " (2)", " (3)", ..."""
    folder = Path(folder)
    name = folder.name
    if name in ("best", "last") or name.startswith("step-"):
        name = f"{folder.parent.name}/{name}"
    out, k = name, 2
    while out in taken:
        out, k = f"{name} ({k})", k + 1
    return out


def model_set_entries(checkpoints: Path, taught: Path, models, data, split: str = "test"
                      ) -> dict[str, ModelSetEntry]:
    """name → ModelSetEntry: "demo", each of `models` (folders) by its folder name, "taught".
    `data`: none, one manifest for every folder, or one per folder (in order)."""
    models, data = [Path(m) for m in models or []], [Path(d) for d in data or []]
    if len(data) not in (0, 1, len(models)):
        raise UserError(f"give one --data for every --models folder, or one for all "
                        f"({len(models)} --models, {len(data)} --data)")
    out = {"demo": ModelSetEntry(Path(checkpoints), "demo")}
    for i, m in enumerate(models):
        d = data[i] if len(data) == len(models) else (data[0] if data else None)
        out[set_name(m, [*out, "taught"])] = ModelSetEntry(m, "models", d, split)
    out["taught"] = ModelSetEntry(Path(taught), "taught")
    return out


class Workbench:
    """The app's state. Thread-safe: one lock around loading, one around model work."""

    def __init__(self, *, checkpoints: str | Path | None = None, cache_dir: str | Path | None = None,
                 max_seconds: float | None = None, max_mb: float | None = None,
                 reference_clips_per_class: int = 10, seed: int = 0,
                 models=None, data=None, split: str | None = None):
        env = os.environ.get
        self.checkpoints = Path(checkpoints or env("MMT_CHECKPOINTS", REPO / "checkpoints"))
        # reference clips of a --models set: a stratified sample of at most this many
        self.reference_max = int(env("MMT_APP_REF_MAX", "2000"))
        # the OOD reference of a --models set: at most this many clips of its data (the
        # shipped demo's is fitted on 300)
        self.ood_max = int(env("MMT_APP_OOD_MAX", "300"))
        # torch threads while the Dataset tab evaluates a set (0: as many as the requests use)
        self.dataset_threads = int(env("MMT_APP_DATASET_THREADS", str(os.cpu_count() or 1)))
        self.cache_dir = Path(cache_dir or env("MMT_CACHE_DIR", REPO / ".cache" / "workbench"))
        # A 10 s clip is the expected case; a minute is plenty for one window of any model.
        self.max_seconds = max_seconds or _env_float("MMT_APP_MAX_SECONDS", 60.0)
        self.max_mb = max_mb or _env_float("MMT_APP_MAX_MB", 50.0)
        self.reference_clips_per_class = int(os.environ.get("MMT_APP_REF_CLIPS",
                                                            reference_clips_per_class))
        self.seed = seed
        self._lock = threading.RLock()
        self.teach_dir = self.cache_dir / "teach"
        # The set registry, name → ModelSetEntry: "demo" (checkpoints/ on the built-in data),
        # each `app.py --models DIR` by its folder name, and "taught" (the Teach tab's).
        listed = lambda v: [v] if isinstance(v, (str, Path)) else v  # noqa: E731
        self.sets = model_set_entries(self.checkpoints, self.teach_dir / "taught",
                                      listed(models) if models else _env_list("MMT_MODELS"),
                                      listed(data) if data else _env_list("MMT_DATA"),
                                      split or env("MMT_SPLIT") or "test")
        # the model set every tab and endpoint uses: the first --models set, else "demo"
        self.active = next((n for n, e in self.sets.items() if e.kind == "models"), "demo")
        self._sets: dict[str, dict[str, LoadedModel]] = {}  # name → its loaded models
        self._explorers: dict[tuple, emb.ReferenceEmbeddings] = {}
        self._records: dict[str, list] = {}
        self._ood: dict[tuple, dict | None] = {}  # (model set, checkpoint dir) -> ood reference
        # (model set, sha256 of the file, window start) -> (Prepared, results)
        self._prepared: OrderedDict = OrderedDict()
        self._timelines: dict[tuple, dict] = {}  # (model set, sha256, stride) -> timeline
        self._datasets: dict[str, object] = {}  # model set -> analysis.Evaluation of its data
        self._dataset_hashes: dict[str, dict] = {}  # model set -> {sha256 of a clip: index}
        self._dataset_path_sets: dict[str, set] = {}  # model set -> its dataset's clip paths
        self._sidecars: dict[str, dict] = {}  # model set -> {sha256 of an example: sidecar}
        self.clips = teaching.ClipStore(self.teach_dir / "sessions")
        self.job: teaching.TeachJob | None = None

    # ------------------------------------------------------------------ loading
    @property
    def taught_dir(self) -> Path:
        return self.sets["taught"].root

    def has_taught(self) -> bool:
        return all((self.taught_dir / n / "model.safetensors").is_file()
                   for n in DEMO_MODELS.values())

    def set_names(self) -> list[str]:
        """The model sets the Models switch offers, in the registry's order."""
        return list(self.sets)

    def use(self, name: str) -> str:
        """Make `name` (a key of `sets`) the model set every tab and endpoint answers with."""
        if name not in self.sets:
            raise UserError(f"unknown model set {name!r}; choose one of {', '.join(self.sets)}")
        if name == "taught" and not self.has_taught():
            raise UserError("no taught models yet: teach some classes first (Teach tab)")
        with self._lock:
            self.active = name
        return name

    @property
    def entry(self) -> ModelSetEntry:
        """The active set's registry entry."""
        return self.sets[self.active]

    @property
    def models(self) -> dict[str, LoadedModel]:
        with self._lock:
            name, e = self.active, self.entry
            if name not in self._sets and e.kind == "models":
                self._sets[name] = load_model_set(e.root)
            if name not in self._sets:
                missing = [n for n in DEMO_MODELS.values() if not (e.root / n).is_dir()]
                if missing:
                    raise UserError(f"{name} checkpoints missing under {e.root}: "
                                    f"{', '.join(missing)} (train them with `make demo` or "
                                    f"set MMT_CHECKPOINTS)")
                self._sets[name] = load_models(e.root)
            return self._sets[name]

    def _forget(self, name: str) -> None:
        """Drop everything cached for model set `name` (it was retrained or restored)."""
        with self._lock:
            self._sets.pop(name, None)
            self._records.pop(name, None)
            self._datasets.pop(name, None)
            self._dataset_hashes.pop(name, None)
            self._dataset_path_sets.pop(name, None)
            for key in [k for k in self._explorers if k[0] == name]:
                del self._explorers[key]
            for key in [k for k in self._prepared if k[0] == name]:
                del self._prepared[key]
            for key in [k for k in self._timelines if k[0] == name]:
                del self._timelines[key]
            self._ood.clear()

    @property
    def class_names(self) -> list[str]:
        return self.models["mmt"].class_names

    def examples(self) -> list[Path]:
        """One clip per class: from the set's data for a --models set with data, else built-in
        (generated on first use into cache_dir/examples)."""
        if self._set_data() is not None:
            return self._set_examples()
        return self._synthetic("examples", 1, EXAMPLES_SEED)

    # ---- a --models set's data: reference and example clips
    def _set_data(self) -> Path | None:
        """The manifest a --models set's clips come from: --data, else the one its fused model
        records (when it is here); None for the demo and taught sets and a --models set with
        neither (the built-in data)."""
        e = self.entry
        if e.kind != "models":
            return None
        if e.data:
            return Path(e.data)
        from mmt_core.model_set import open_model_set

        return open_model_set(e.root).manifest

    def _set_records(self):
        """The --models set's split (labels in the set's class order), a stratified sample of
        at most reference_max clips; one-line UserErrors for missing clips or other classes."""
        from mmt_core.analysis import split_records, stratified_cap
        from mmt_core.model_set import open_model_set

        ms = open_model_set(self.entry.root)
        records = split_records(ms, self._set_data(), self.entry.split)
        keep = stratified_cap([r.labels[ms.head] for r in records], self.reference_max, self.seed)
        return [records[i] for i in keep]

    def _set_examples(self) -> list[Path]:
        """The first reference clip of each class, copied as cache_dir/examples_set/KEY/
        examples_s0_CLASS_0000.EXT (the example picker names clips by that pattern)."""
        import hashlib
        import shutil

        records = self.reference_records()
        names = self.class_names
        firsts = {}
        for r in records:
            firsts.setdefault(r.labels["label"], r.path)
        key = hashlib.sha256(json.dumps(sorted(firsts.items())).encode()).hexdigest()[:12]
        out = self.cache_dir / "examples_set" / key
        paths = []
        for label, src in sorted(firsts.items()):
            dst = out / f"examples_s0_{names[label]}_0000{Path(src).suffix}"
            if not dst.is_file():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                if Path(src).with_suffix(".json").is_file():  # its boxes, for Explain
                    shutil.copyfile(Path(src).with_suffix(".json"), dst.with_suffix(".json"))
            paths.append(dst)
        return paths

    @property
    def generator_version(self) -> int:
        """The built-in data version the MMT checkpoint was trained on (1 when not recorded), so
        the example and reference clips look like its training data."""
        return int(self.models["mmt"].meta.get("data", {}).get("generator_version", 1))

    def sidecar(self, path) -> dict | None:
        """The box sidecar of a built-in example or reference clip, found by content (uploads
        arrive as copies under other names), or None."""
        import json as _json

        p = Path(path)
        if p.with_suffix(".json").is_file():
            side = p.with_suffix(".json")
        else:
            with self._lock:
                if self.active not in self._sidecars:
                    self._sidecars[self.active] = {emb.file_hash(c): c.with_suffix(".json")
                                                   for c in self.examples()}
            side = self._sidecars[self.active].get(emb.file_hash(p))
        if side is None or not side.is_file():
            return None
        d = _json.loads(side.read_text())
        return d if "boxes" in d and "frame_times" in d else None

    def reference_records(self):
        """The reference clips of the Embeddings tab, labels in the models' order: the built-in
        test split (clips_per_class per class) for the demo models, the taught clips for the
        taught ones."""
        with self._lock:
            name = self.active
            if name == "taught" and name not in self._records:
                self._records[name] = self._taught_records()
            if name not in self._records and self._set_data() is not None:
                self._records[name] = self._set_records()
            if name not in self._records:
                from mmt_core.data.manifests import read_manifest

                paths = self._synthetic("test", self.reference_clips_per_class, REFERENCE_SEED)
                man = read_manifest(paths[0].parent.parent / "manifest.csv", split="test")
                names, order = man.classes["label"], self.class_names
                if set(names) - set(order):
                    raise UserError("these models were not trained on the built-in classes and "
                                    "know no data of their own: give app.py --data MANIFEST")
                keep = {str(p) for p in paths}
                self._records[name] = [
                    dataclasses.replace(r, labels={"label": order.index(names[r.labels["label"]])})
                    for r in man.records if r.path in keep]
            return self._records[name]

    def _taught_records(self):
        """The clips the taught models were trained and validated on (that still exist)."""
        from mmt_core.data.manifests import read_manifest

        meta = self.models["mmt"].meta
        manifest = Path(meta["data"].get("manifest") or "")
        if not manifest.is_file():
            return []
        man = read_manifest(manifest, format="plain")
        return [r for r in man.records if Path(r.path).is_file()]

    def _synthetic(self, split: str, clips_per_class: int, seed: int) -> list[Path]:
        from mmt_core.data.synthetic import CLASSES, write_dataset

        version = self.generator_version
        out = self.cache_dir / ("examples" if split == "examples" else "reference")
        if version != 1:  # one folder per generator version (version 1 keeps the old folders)
            out = out.with_name(f"{out.name}_v{version}")
        paths = [out / split / f"{split}_s{seed}_{c.name}_{i:04d}.mp4"
                 for c in CLASSES for i in range(clips_per_class)]
        with self._lock:
            if not all(p.is_file() and p.with_suffix(".json").is_file() for p in paths):
                write_dataset(out, clips_per_class=clips_per_class, seed=seed, split=split,
                              progress=False, version=version)
        return paths

    def explorer(self, role: str) -> emb.ReferenceEmbeddings:
        with self._lock:
            key = (self.active, role)
            if key not in self._explorers:
                m = self.models[role]
                records = self.reference_records()
                if len(records) < 4:
                    raise UserError("the taught models' clips are not on this server (restored "
                                    "from a zip?): no reference set to project")
                self._explorers[key] = emb.ReferenceEmbeddings(
                    m.dir, records, cache_dir=self.cache_dir, model=m.model,
                    meta=m.meta, seed=self.seed)
            return self._explorers[key]

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
        self._ood[(self.active, str(self.models["mmt"].dir))] = self.ood_reference()
        timings["ood_reference_s"] = time.perf_counter() - t0
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

    def check_clip(self, path) -> Path:
        """A clip the app accepts (size, duration, a video stream), else a one-line UserError."""
        from mmt_core.data.media import probe

        p = self._check_upload(path)
        try:
            info = probe(p)
        except MediaError as e:
            raise MediaError(str(e).replace(str(p), p.name)) from None
        if not info.has_video:
            raise MediaError(f"{p.name} has no video stream; add video clips "
                             "(mp4, webm, mkv, mov, avi)")
        if info.duration > self.max_seconds:
            raise MediaError(f"{p.name} is {info.duration:.1f} s long; this workbench accepts "
                             f"clips up to {self.max_seconds:g} s")
        return p

    def prepared(self, path, start: float | None = None):
        """(Prepared, per-role results) of a clip (centre window, or the window at `start` s),
        cached for the last 4."""
        p = self._check_upload(path)
        # By content: each API call re-uploads the clip (a new file, same bytes).
        with self._lock:
            key = (self.active, emb.file_hash(p), None if start is None else round(start, 3))
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
            models = self.models
            try:
                prep = prepare(p, models, max_seconds=self.max_seconds, start=start)
            except MediaError as e:
                # media messages name the server-side temp path; the user knows their file
                raise MediaError(str(e).replace(str(p), p.name)) from None
            value = (prep, predict_prepared(prep, models, topk=len(self.class_names)))
            self._ood_notes(prep, value[1], models)
            self._prepared[key] = value
            while len(self._prepared) > 4:
                self._prepared.popitem(last=False)
            return value

    def _ood_notes(self, prep, results: dict, models: dict) -> None:
        """Add the MMT's "unlike the training data" verdict to results and a note to prep: which
        sense is unfamiliar and how far past its threshold (mmt_core.ood, docs/ood.md)."""
        from mmt_core import ood

        m, r = models["mmt"], results["mmt"]
        key = (self.active, str(m.dir))
        if key not in self._ood:
            self._ood[key] = self.ood_reference()
        if self._ood[key] is None or r["output"] is None:
            return
        feats = ood.mean_views(ood.clip_features(r["output"], prep.inputs[m.name]))
        res = ood.score(feats, self._ood[key])
        r["ood"] = res
        if res["flagged"]:
            prep.notes.append(
                f"⚠ **Unlike the training data** of the {self.active} models: {ood.note(res)}. "
                "The predictions below are shown but **unreliable**.")

    def ood_reference(self) -> dict | None:
        """The active MMT's "unlike the training data" reference (mmt_core.ood). A --models set
        with data: fitted once on that data's train split (else its --split), a stratified
        sample of at most ood_max clips, cached as cache_dir/ood/KEY/ood.safetensors with KEY
        from (the set's weights hash, the manifest's hash, the split). Otherwise the
        checkpoint's own ood.safetensors (None when it has none)."""
        import hashlib
        import sys

        from mmt_core import ood
        from mmt_core.analysis import split_records, stratified_cap
        from mmt_core.model_set import open_model_set

        m, manifest = self.models["mmt"], self._set_data()
        if manifest is None:
            return ood.load(m.dir)
        ms = open_model_set(self.entry.root)
        try:
            split, records = "train", split_records(ms, manifest, "train")
        except UserError:  # no train split here: the split the set shows
            split, records = self.entry.split, split_records(ms, manifest, self.entry.split)
        key = hashlib.sha256(repr((ms.weights_hash(), emb.file_hash(manifest), split,
                                   self.ood_max)).encode()).hexdigest()[:16]
        out = self.cache_dir / "ood" / key
        if not (out / ood.OOD_FILE).is_file():
            keep = stratified_cap([r.labels[ms.head] for r in records], self.ood_max, self.seed)
            paths = [records[i].path for i in keep]
            print(f"fitting the 'unlike the training data' reference on {len(paths)} clips of "
                  f"{manifest} (split {split})...", file=sys.stderr, flush=True)
            out.mkdir(parents=True, exist_ok=True)
            ood.build(out, paths, source=f"{manifest} (split {split})", model=m.model,
                      meta=m.meta)
        return ood.load(out)

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
        notes = list(prep.notes)
        for role in ROLE_TITLES:  # a set with only a fused model: the single-sense columns say so
            if role not in results:
                probs[role] = None
                notes.append(f"This model set has no {ROLE_TITLES[role]} model.")
        return {"probs": probs, "frames": prep.clip.frames, "times": prep.clip.times,
                "fbank": prep.fbank.numpy(), "notes": notes, "has_audio": prep.has_audio,
                "ood": results["mmt"].get("ood"), "models": self.active,
                "timing_s": time.perf_counter() - t0}

    def frames_at(self, path, start: float):
        """(frames uint8 (T,H,W,3), times) of the window starting at `start` seconds."""
        prep, _ = self.prepared(path, start=start)
        return prep.clip.frames, prep.clip.times

    def timeline(self, path, stride: float | None = None) -> dict:
        """Per-window probabilities of MMT, audio-only and video-only over the whole clip:
        {"starts": [K], "ends": [K], "window_seconds", "class_names", "probs": {role: (K, C) or
        None}, "duration"}. Each distinct decode setting decodes the clip once."""
        from mmt_core.inference import window_clips, window_probs

        p = self.check_clip(path)
        with self._lock:
            key = (self.active, emb.file_hash(p), stride)
            if key in self._timelines:
                return self._timelines[key]
            models = self.models
            clips_by_key, probs = {}, {}
            for role, m in models.items():
                pre = m.meta["preprocessing"]
                key = (pre["num_frames"], pre["clip_seconds"], pre["sample_rate"], pre["image_size"])
                if key not in clips_by_key:
                    try:
                        clips_by_key[key] = window_clips(p, m.meta, stride)
                    except MediaError as e:
                        raise MediaError(str(e).replace(str(p), p.name)) from None
                clips = clips_by_key[key]
                if "v" not in m.modalities and not clips[0].has_audio:
                    probs[role] = None
                    continue
                probs[role] = window_probs(m.model, m.meta, clips)
            first = clips_by_key[next(iter(clips_by_key))]
            window = models["mmt"].meta["preprocessing"]["clip_seconds"]
            res = {"starts": [c.start for c in first],
                   "ends": [min(c.duration, c.start + window) for c in first],
                   "window_seconds": window, "duration": first[0].duration,
                   "class_names": self.class_names, "probs": probs}
            self._timelines[key] = res
            while len(self._timelines) > 4:
                self._timelines.pop(next(iter(self._timelines)))
            return res

    def explain(self, path, target: str | None = None, block=CAM_BLOCKS,
                method: str = "gradcam", start: float | None = None) -> dict:
        """Video maps of MMT and the video-only model (overlaid on the frames, with the sounding
        object's box on built-in clips) and MMT's audio map, for class `target` (a class name;
        None: each model's own top prediction), by explainer `method` (mmt_core.explain);
        block-based methods take each encoder's `block` (an index or several, maps averaged;
        default (0, 1): stage 1 and the first block of stage 2; -2: the block before the last),
        on the window starting at `start` seconds (None: the centre). Also the method's
        pointing scores on the built-in test clips when they are known (see `pointing_scores`),
        else None."""
        from mmt_core.explain import EXPLAINERS, applicable, get_explainer, to_frame_resolution

        if method not in EXPLAINERS:
            raise UserError(f"unknown method '{method}'; choose from {', '.join(EXPLAINERS)}")
        if target and target not in self.class_names:
            raise UserError(f"unknown class '{target}'; classes: {', '.join(self.class_names)}")
        prep, results = self.prepared(path, start=start)
        side = self.sidecar(path)
        boxes = None
        if side is not None:
            from mmt_core.data.synthetic import sidecar_boxes_at

            boxes = sidecar_boxes_at(side, prep.clip.times)
        out = {"overlays": {}, "targets": {}, "method": method, "boxes": boxes, "seconds": {},
               "start": prep.clip.start}
        with self._lock:
            for role in ("mmt", "video", "audio"):
                if role not in results:  # not in this model set
                    continue
                m = self.models[role]
                if results[role]["probs"] is None or not applicable(method, m.modalities):
                    continue
                idx = (int(np.argmax(results[role]["probs"])) if not target
                       else m.class_names.index(target))
                out["targets"][role] = m.class_names[idx]
                t0 = time.perf_counter()
                try:
                    res = get_explainer(method)(m.model, prep.inputs[m.name], target=idx,
                                                block=block, meta=m.meta)
                except ValueError as e:
                    raise UserError(f"{method}: {e}") from None
                out["seconds"][role] = time.perf_counter() - t0
                if res["video"] is not None:
                    cam = to_frame_resolution(res["video"], *prep.clip.frames.shape[1:3])
                    shown = gradcam.overlay_frames(prep.clip.frames, cam)
                    out["overlays"][role] = (gradcam.draw_boxes(shown, boxes) if boxes is not None
                                             else shown)
                if res["audio"] is not None and role == "mmt":
                    out.setdefault("audio_cams", {})[role] = res["audio"]
        out["fbank"] = prep.fbank.numpy()
        out["seconds_per_frame"] = 0.01  # kaldi fbank 10 ms shift
        # a set's own clips with boxes: scored once here (not occlusion: minutes); the demo's
        # scores are precomputed (scripts/precompute_pointing.py)
        own = self._set_data() is not None
        have = not own or bool(self.pointing_records())
        out["pointing"] = {role: self.pointing_scores(role, method, block, compute=own and have
                                                      and method != "occlusion") if have else None
                           for role in ("mmt", "video") if role in out["targets"]}
        out["pointing_source"] = self.pointing_source() if have else None
        return out

    def pointing_records(self):
        """The clips the app scores explainers on. A --models set with data: the first
        POINTING_CLIPS_PER_CLASS clips of each class among its reference clips whose sidecar
        (NAME.json beside the clip) has boxes (none: no pointing game). Otherwise the first
        POINTING_CLIPS_PER_CLASS clips of each class of the built-in test split (seed
        REFERENCE_SEED)."""
        if self._set_data() is not None:
            from mmt_core.data.synthetic import load_sidecar

            per_class: dict[int, int] = {}
            out = []
            for r in self.reference_records():
                label = r.labels["label"]
                if per_class.get(label, 0) >= POINTING_CLIPS_PER_CLASS:
                    continue
                try:
                    load_sidecar(r.path)
                except UserError:  # no sidecar, or one without boxes
                    continue
                per_class[label] = per_class.get(label, 0) + 1
                out.append(r)
            return out
        paths = {str(p) for p in self._synthetic("test", POINTING_CLIPS_PER_CLASS, REFERENCE_SEED)}
        return [r for r in self.reference_records() if r.path in paths]

    def pointing_source(self) -> str:
        """The clips of the pointing game, in words."""
        if self._set_data() is not None:
            return (f"clips of {self._set_data()} (split {self.entry.split}) with boxes, at most "
                    f"{POINTING_CLIPS_PER_CLASS} per class")
        return (f"built-in test split (mmt synth --seed {REFERENCE_SEED} --split test), first "
                f"{POINTING_CLIPS_PER_CLASS} clips per class")

    def pointing_key(self, role: str, method: str, block=CAM_BLOCKS) -> str:
        """checkpoint weights hash / method and its version (`method_key`) / block(s) ("any"
        where the map does not depend on them) / clips: the key of a pointing-score table
        entry. The built-in clips are "5perclass"; a set's own clips add a hash of their paths."""
        import hashlib

        from mmt_core.checkpoint import WEIGHTS
        from mmt_core.explain import block_key, method_key

        weights = emb.file_hash(self.models[role].dir / WEIGHTS)[:16]
        key = (f"{weights}/{method_key(method)}/block{block_key(method, block)}/"
               f"{POINTING_CLIPS_PER_CLASS}perclass")
        if self._set_data() is not None:
            paths = [r.path for r in self.pointing_records()]
            key += "/" + hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]
        return key

    def compute_pointing(self, role: str, method: str, block=CAM_BLOCKS) -> dict:
        """The pointing game of `method` for one demo model on `pointing_records()`."""
        from mmt_core.evaluation import pointing_game

        m = self.models[role]
        with self._lock:
            out = pointing_game(m.model, m.meta, self.pointing_records(), explainers=[method],
                                block=block, progress=False)
        res = out["pointing"][method]
        res["seconds_per_clip"] = out["pointing_seconds"][method]
        res["clip_set"] = self.pointing_source()
        return res

    def pointing_scores(self, role: str, method: str, block=CAM_BLOCKS, *,
                        compute: bool = True) -> dict | None:
        """The pointing game of `method` for one model of the active set on
        `pointing_records()`: {"accuracy", "energy", "centre_baseline", "random_baseline",
        "frames", "clips", ...}. Looked up in checkpoints/pointing.json (precomputed for the
        shipped checkpoints by scripts/precompute_pointing.py), then in the cache dir; both keyed
        by the weights' hash. Otherwise computed once and cached when `compute`, else None."""
        key = self.pointing_key(role, method, block)
        shipped = self.checkpoints / "pointing.json"
        for f in (shipped, self.cache_dir / "pointing" / "pointing.json"):
            if f.is_file():
                hit = json.loads(f.read_text()).get(key)
                if hit is not None:
                    return hit
        if not compute:
            return None
        res = self.compute_pointing(role, method, block)
        name, weights = self.models[role].name, key.split("/", 1)[0]
        with self._lock:
            f = self.cache_dir / "pointing" / "pointing.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            table = json.loads(f.read_text()) if f.is_file() else {}
            table = drop_earlier_weights(table, name, weights)
            table[key] = {"model": name, **res}
            write_json(f, table, indent=1)
        return res

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
        # a set without a unimodal model shows the MMT's own space of that sense instead
        panels = [(r if r in results else "mmt", space) for r, space in panels]
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
            for role in [r for r in ("audio", "video", "mmt") if r in results]:
                for space, s in self.explorer(role).scores().items():
                    table.append([self.models[role].name, space, round(s["ari"], 3),
                                  round(s["hs"], 3)])
        return {"figures": figures, "scores": table,
                "reference_clips": len(self.explorer("mmt").reference()["labels"]),
                "reference_source": self.reference_source()}

    def reference_source(self) -> str:
        """Where the reference clips come from, in words."""
        if self.active == "taught":
            return "taught clips"
        if self._set_data() is not None:
            return f"clips of {self._set_data()} (split {self.entry.split})"
        return "built-in test clips"

    # ------------------------------------------------------------------ dataset analysis
    def dataset_source(self) -> tuple[Path, str]:
        """(manifest, split) the Dataset tab evaluates the active set on: a --models set's data;
        the built-in reference split for the demo; the taught clips' validation split."""
        if self._set_data() is not None:
            return self._set_data(), self.entry.split
        if self.active != "taught":
            paths = self._synthetic("test", self.reference_clips_per_class, REFERENCE_SEED)
            return paths[0].parent.parent / "manifest.csv", "test"
        manifest = Path(self.models["mmt"].meta["data"].get("manifest") or "")
        if not manifest.is_file():
            raise UserError("the taught models' clips are not on this server (restored from a "
                            "zip?): no dataset to analyse")
        return manifest, "val"

    def dataset(self):
        """mmt_core.analysis.Evaluation of the active set on its data (computed once, with a
        progress bar on the server's stderr, cached under cache_dir/analysis)."""
        from mmt_core.analysis import AnalysisConfig, evaluate_set
        from mmt_core.model_set import open_model_set

        with self._lock:
            name = self.active
            if name not in self._datasets:
                manifest, split = self.dataset_source()
                cfg = AnalysisConfig(max_clips=self.reference_max, num_workers=0,
                                     cache_dir=str(self.cache_dir / "analysis"))
                import torch

                # A batch job: every core's thread (120 clips: 0.12 s/clip with 2 threads, 0.18
                # with 1; benchmarks/bench_analysis.py), then the app's single thread again.
                threads = torch.get_num_threads()
                torch.set_num_threads(self.dataset_threads or threads)
                try:
                    self._datasets[name] = evaluate_set(open_model_set(self.entry.root),
                                                        manifest, split, cfg)
                finally:
                    torch.set_num_threads(threads)
            return self._datasets[name]

    def dataset_summary(self) -> dict:
        """Tables of the Dataset tab: {"accuracy", "per_class", "suspicious", "classes",
        "roles", "clips", "total", "skipped", "source", "seconds", "cached"}."""
        from mmt_core import analysis as A

        ev = self.dataset()
        manifest, split = self.dataset_source()
        return {"accuracy": A.accuracy_table(ev), "per_class": A.per_class(ev),
                "suspicious": A.suspicious(ev, top=20), "classes": ev.classes,
                "roles": ev.roles, "clips": len(ev.paths), "total": ev.total,
                "skipped": len(ev.skipped), "source": f"{manifest} (split {split})",
                "seconds": ev.seconds, "cached": ev.cached}

    def dataset_confusion(self, role: str = "mmt"):
        from mmt_core.analysis import confusion

        ev = self.dataset()
        return confusion(ev, role), ev.classes

    def dataset_cell(self, role: str, true: str, pred: str) -> list[dict]:
        from mmt_core.analysis import cell_clips

        return cell_clips(self.dataset(), role, true, pred)

    def dataset_clip(self, path) -> Path:
        """A clip of the dataset copied under cache_dir/dataset_clips (the page may only serve
        files from the cache dir), named by its content."""
        if str(path) not in self._dataset_paths():
            raise UserError(f"not a clip of the analysed dataset: {path}")
        return self._served_copy(path)

    def reference_clip(self, path) -> Path:
        """A reference clip of the Embeddings map (a clicked point), copied like dataset_clip."""
        if str(path) not in {str(r.path) for r in self.reference_records()}:
            raise UserError(f"not a reference clip of the {self.active} models: {path}")
        return self._served_copy(path)

    def _served_copy(self, path) -> Path:
        import shutil

        src = Path(path)
        dst = self.cache_dir / "dataset_clips" / f"{emb.file_hash(src)[:16]}_{src.name}"
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            if src.with_suffix(".json").is_file():  # its boxes, for Explain
                shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
        return dst

    def thumbnail(self, path) -> Path:
        """The middle frame of a clip of the analysed dataset as a small JPEG (at most 160 px a
        side) under cache_dir/thumbs, named by the clip's path, size and mtime (made once)."""
        import hashlib

        from PIL import Image

        from mmt_core.data import media

        if str(path) not in self._dataset_paths():
            raise UserError(f"not a clip of the analysed dataset: {path}")
        st = os.stat(path)
        key = hashlib.sha256(repr((str(path), st.st_size, st.st_mtime_ns)).encode()).hexdigest()
        out = self.cache_dir / "thumbs" / f"{key[:16]}.jpg"
        if not out.is_file():
            duration = media.probe(path).duration
            # one frame at the centre of the whole clip; audio is skipped
            frame = media.decode(path, num_frames=1, clip_seconds=duration, audio=False,
                                 max_side=160, sample_rate=100).frames[0]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.jpg")
            Image.fromarray(frame).save(tmp, quality=85)
            os.replace(tmp, out)
        return out

    def _dataset_paths(self) -> set[str]:
        """The analysed dataset's clip paths, as a set (membership checks)."""
        with self._lock:
            ev = self.dataset()
            return self._dataset_path_sets.setdefault(self.active, set(ev.paths))

    def dataset_neighbours(self, path, kind: str = "fused", k: int = 8) -> list[dict]:
        """The k clips of the dataset nearest a clip (one of the dataset, found by content,
        else any clip through the fused model's embeddings of it) by sound, picture, fused
        embedding, or across senses ("cross": sound g_A nearest this clip's picture g_V)."""
        from mmt_core import analysis as A

        ev = self.dataset()
        p = self._check_upload(path)
        with self._lock:
            name = self.active
            if name not in self._dataset_hashes:
                self._dataset_hashes[name] = {emb.file_hash(Path(q)): i
                                              for i, q in enumerate(ev.paths)}
            index = self._dataset_hashes[name].get(emb.file_hash(p))
        if index is not None:
            return A.neighbours(ev, index, kind, k)
        _, results = self.prepared(p)
        out = results["mmt"]["output"]
        if out is None:
            raise UserError("the MMT did not run on this clip (see the Predict notes)")
        query = {"audio": out.audio_embed, "video": out.video_embed,
                 "fused": out.fused_embed if out.audio_embed is not None and
                 out.video_embed is not None else None,
                 "audio_proj": out.audio_proj, "video_proj": out.video_proj}
        q = query[A.NEIGHBOUR_SPACES.get(kind, ("fused",))[0]]
        if q is None:
            raise UserError(f"the MMT gives no '{kind}' embedding for this clip")
        return A.neighbours_of(ev, q[0].float().numpy(), kind, k)

    # ------------------------------------------------------------------ ablations
    def ablations(self) -> dict | None:
        """checkpoints/ablations.json ({row: {top1, top5, ...}}) or None when absent."""
        path = self.checkpoints / "ablations.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text())


    # ------------------------------------------------------------------ teach
    def start_teach(self, folder: Path, *, epochs: int | None = None) -> teaching.TeachJob:
        """Train on a folder of class folders in a background thread (one run at a time)."""
        with self._lock:
            if self.job is not None and self.job.status == "running":
                raise UserError("a training run is already in progress; wait for it or stop it")
            teaching.clear_runs(self.teach_dir / "jobs")  # earlier runs: their models are taught/
            out = self.teach_dir / "jobs" / time.strftime("%Y%m%d-%H%M%S")
            out = out.with_name(out.name + f"-{os.getpid()}-{threading.get_ident() % 10000}")
            self.job = teaching.TeachJob.start(folder, out, self.checkpoints,
                                               epochs=epochs if epochs else teaching.teach_epochs(),
                                               on_done=self._taught)
            return self.job

    def _taught(self, job: teaching.TeachJob) -> None:
        """A finished run: its checkpoints become the taught set, and the active one."""
        with self._lock:
            teaching._swap_in(job.out / "taught", self.taught_dir)
            self._forget("taught")
            self.active = "taught"

    def teach_summary(self) -> dict | None:
        path = self.taught_dir / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def taught_zip(self) -> Path:
        if not self.has_taught():
            raise UserError("no taught models yet: teach some classes first")
        return teaching.zip_taught(self.taught_dir, self.teach_dir / "mmt_taught.zip")

    def restore_taught(self, path) -> dict:
        p = self._check_upload(path)
        with self._lock:
            self.teach_dir.mkdir(parents=True, exist_ok=True)
            summary = teaching.restore_zip(p, self.taught_dir, max_mb=max(self.max_mb, 100.0))
            self._forget("taught")
            self.active = "taught"
        return summary


_WB: Workbench | None = None
_WB_LOCK = threading.Lock()


def get_workbench() -> Workbench:
    """The process-wide Workbench (created on first use, never at import)."""
    global _WB
    with _WB_LOCK:
        if _WB is None:
            _WB = Workbench()
        return _WB
