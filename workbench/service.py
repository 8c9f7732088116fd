"""What the app computes, without any Gradio: models, example clips, reference set, and the
predict / explain / embed results as numpy arrays and plotly figures.

`Workbench` loads lazily and caches: the three demo models, the built-in reference set (the
synthetic test split, generated once into the cache dir), each model's reference embeddings and
projections (workbench.embeddings), and the last few prepared clips, so the Predict, Explain and
Embeddings results of one upload decode and run the models once.

Model sets (`Workbench.sets`, name → ModelSetEntry): "demo" (checkpoints/ on the built-in
data), one per `python app.py --models DIR` named by its folder (a compare run, a taught folder,
any folder mmt_core.model_set opens; its reference clips from `--data` / the manifest its fused
model records), and "taught" (the session's own CACHE/teach/taught/SESSION/, written by its Teach
tab or /teach, or restored from a zip).

Sessions (workbench.classroom): `wb.view(session_id)` is the Workbench as one browser session or
API client sees it: its own active set (`use(name)` switches that session only), clips, taught
set and training ticket; the loaded models and caches are shared, keyed by each set's folder (and
how often it was replaced), so two sessions on the demo share everything. A view fixes its set
when made, so one answer never mixes two sets. Teach runs wait in one FIFO queue
(`classroom.TrainQueue`, MMT_TRAIN_SLOTS at once). `end_session(id)` (the page's unload, an
idle session's age) drops its queued run, stops its running one and deletes its files.

Threads: no lock is held while a model runs. Eval models under inference_mode are shared by
concurrent requests; the explainers hook and differentiate a model, so each set has its own
explain copies behind one lock per set. Each cache entry is computed once under its own lock
(`_once`), so a slow one (the embedding warm-up) never holds up another (a predict).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mmt_core.atomic import write_json
from mmt_core.errors import MediaError, UserError
from mmt_core.explain import CAM_BLOCKS

from . import classroom
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


def clip_refs(paths) -> dict[str, str]:
    """path → the name the page shows for it: its path under the clips' common folder (the
    browser never sees a server path; the server maps the name back)."""
    paths = [str(p) for p in paths]
    if not paths:
        return {}
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return {p: os.path.relpath(os.path.abspath(p), root) for p in paths}


def two_way_refs(paths) -> tuple[dict[str, str], dict[str, str]]:
    """(`clip_refs(paths)`: path → shown name, and its inverse: shown name → path)."""
    names = clip_refs(paths)
    return names, {name: path for path, name in names.items()}


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


_MISSING = object()  # a cache miss (None is a value: a set without an OOD reference)


class Workbench:
    """The app's state. Thread-safe (module docstring: sessions and threads)."""

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
        # guards the cache dicts (never held while a model runs or a cache entry is computed)
        self._lock = threading.RLock()
        self._key_locks: dict[tuple, threading.Lock] = {}  # (cache, key) -> its compute lock
        self.teach_dir = self.cache_dir / "teach"
        # The set registry, name → ModelSetEntry: "demo" (checkpoints/ on the built-in data),
        # each `app.py --models DIR` by its folder name, and "taught" (each session's own).
        listed = lambda v: [v] if isinstance(v, (str, Path)) else v  # noqa: E731
        self.sets = model_set_entries(self.checkpoints, self.teach_dir / "taught" / "local",
                                      listed(models) if models else _env_list("MMT_MODELS"),
                                      listed(data) if data else _env_list("MMT_DATA"),
                                      split or env("MMT_SPLIT") or "test")
        # a new session's model set: the first --models set, else "demo"
        default = next((n for n, e in self.sets.items() if e.kind == "models"), "demo")
        self.sessions = classroom.Sessions(default, self.teach_dir / "taught")
        self.session = self.sessions.get("local")  # this object's session; views have theirs
        self.active = self.session.active  # the set this object answers with
        self._pinned: dict[str, LoadedModel] | None = None  # a view's models, fixed at first use
        self._is_view = False
        # "Add from a server folder": only under these folders (none: off)
        self.teach_folders = [Path(f).expanduser().resolve()
                              for f in _env_list("MMT_TEACH_FOLDERS")]
        # a session not seen for this long is ended (API clients that never close, lost tabs)
        self.session_ttl_s = _env_float("MMT_SESSION_TTL_S", 4 * 3600.0)
        self._swept = time.time()
        # Caches, keyed by `key` (a set's folder and how often it was replaced), shared by
        # every session answering with that set.
        self._generations: dict[str, int] = {}  # set folder -> times replaced
        self._sets: dict[str, dict[str, LoadedModel]] = {}  # key → its loaded models
        self._explain_sets: dict[str, dict[str, LoadedModel]] = {}  # key → explain copies
        self._explorers: dict[tuple, emb.ReferenceEmbeddings] = {}
        self._records: dict[str, list] = {}
        self._ood: dict[tuple, dict | None] = {}  # (key, checkpoint dir) -> ood reference
        # (key, sha256 of the file, window start) -> (Prepared, results): the last few clips
        self._prepared: OrderedDict = OrderedDict()
        # a class of 30 each on their own clip: predict, explain, embed of one upload all hit
        self.prepared_max = int(env("MMT_APP_PREPARED", "32"))
        self._timelines: OrderedDict = OrderedDict()  # (key, sha256, stride) -> timeline
        self._datasets: dict[str, object] = {}  # key -> analysis.Evaluation of its data
        self._dataset_hashes: dict[str, dict] = {}  # key -> {sha256 of a clip: index}
        self._dataset_path_sets: dict[str, tuple] = {}  # key -> two_way_refs of dataset clips
        self._reference_refs: dict[str, tuple] = {}  # key -> two_way_refs of reference clips
        self._sidecars: dict[str, dict] = {}  # key -> {sha256 of an example: sidecar}
        self.clips = teaching.ClipStore(self.teach_dir / "sessions")
        self.trainq = classroom.TrainQueue(classroom.train_slots(), self._launch, self._ended)

    # ------------------------------------------------------------------ sessions
    def view(self, session_id: str | None) -> "Workbench":
        """This Workbench as session `session_id` sees it (made on its first request): its
        active set (fixed for this view: one answer, one set), its taught set, its clips and
        run. Caches and loaded models are shared. Also ends sessions idle past the TTL."""
        self.sweep()
        s = self.sessions.get(session_id)
        v = copy.copy(self)  # shares every cache dict and lock
        v.session, v.active, v._pinned, v._is_view = s, s.active, None, True
        v.sets = {**self.sets, "taught": ModelSetEntry(s.taught_dir, "taught")}
        return v

    @property
    def ticket(self) -> classroom.Ticket | None:
        """This session's queued or running training run."""
        return self.trainq.ticket_of(self.session.id)

    def end_session(self, session_id: str | None) -> None:
        """A session left (the page's unload, a closed API client, its age): its queued run is
        dropped, a running one stopped, its clips, taught set, runs and downloads deleted (a
        run that is still stopping is deleted when it ends: `_ended`)."""
        s = self.sessions.pop(session_id)
        if s is None or s.id == "local":
            return
        ticket = self.trainq.drop(s.id)
        self._delete_session_files(s, runs=ticket is None or ticket.done.is_set())

    def _delete_session_files(self, s: classroom.Session, runs: bool) -> None:
        """A left session's clips, taught set and downloads, and with `runs` its runs' folders
        (not while a run still writes there)."""
        self.clips.clear(s.id)
        self._forget_root(s.taught_dir)
        for d in (s.taught_dir, self.downloads(s.id), *([self.teach_dir / "jobs" / s.id] if runs
                                                        else [])):
            shutil.rmtree(d, ignore_errors=True)

    def sweep(self, every_s: float = 60.0) -> list[str]:
        """End the sessions idle for longer than session_ttl_s (checked at most every
        `every_s` seconds). Returns their ids."""
        if time.time() - self._swept < every_s:
            return []
        self._swept = time.time()
        gone = self.sessions.idle(self.session_ttl_s)
        for sid in gone:
            self.end_session(sid)
        return gone

    def _once(self, cache: dict, key, compute):
        """cache[key], computed by one thread while the others asking for that key wait; other
        keys, and everything else, never wait for it."""
        hit = cache.get(key, _MISSING)
        if hit is not _MISSING:
            return hit
        with self._lock:
            lock = self._key_locks.setdefault((id(cache), key), threading.Lock())
        with lock:
            hit = cache.get(key, _MISSING)
            if hit is _MISSING:
                hit = compute()
                with self._lock:
                    cache[key] = hit
            return hit

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
        """Make `name` (a key of `sets`) the model set this session's tabs and endpoints answer
        with (other sessions keep theirs)."""
        if name not in self.sets:
            raise UserError(f"unknown model set {name!r}; choose one of {', '.join(self.sets)}")
        if name == "taught" and not self.has_taught():
            raise UserError("no taught models yet: teach some classes first (Teach tab)")
        self.active = self.session.active = name
        self._pinned = None
        return name

    @property
    def entry(self) -> ModelSetEntry:
        """The active set's registry entry."""
        return self.sets[self.active]

    @property
    def key(self) -> str:
        """The active set's cache key: its folder, and how often that folder was replaced (a
        retrained or restored taught set is a new key; entries of the old one never hit)."""
        root = str(self.entry.root)
        return f"{root}#{self._generations.get(root, 0)}"

    def _load(self) -> dict[str, LoadedModel]:
        e = self.entry
        if e.kind == "models":
            return load_model_set(e.root)
        missing = [n for n in DEMO_MODELS.values() if not (e.root / n).is_dir()]
        if missing:
            raise UserError(f"{self.active} checkpoints missing under {e.root}: "
                            f"{', '.join(missing)} (train them with `make demo` or "
                            f"set MMT_CHECKPOINTS)")
        return load_models(e.root)

    @property
    def models(self) -> dict[str, LoadedModel]:
        """role → LoadedModel of the active set (eval mode; shared: forward passes only, under
        inference_mode). A view keeps the first answer for the rest of its request."""
        if self._pinned is not None:
            return self._pinned
        models = self._once(self._sets, self.key, self._load)
        if self._is_view:
            self._pinned = models
        return models

    def explain_models(self) -> dict[str, LoadedModel]:
        """Copies of the active set's models for the explainers (they add hooks and gradients,
        which a concurrent predict on the shared models must not see); use under
        `explain_lock()`."""
        models = self.models

        def copies():
            return {r: dataclasses.replace(m, model=copy.deepcopy(m.model))
                    for r, m in models.items()}
        return self._once(self._explain_sets, self.key, copies)

    def explain_lock(self) -> threading.Lock:
        """The lock of the active set's explain copies (one explainer at a time per set)."""
        with self._lock:
            return self._key_locks.setdefault(("explain", self.key), threading.Lock())

    def _forget_root(self, root) -> None:
        """Drop everything cached for the set in folder `root` (it was retrained, restored or
        its session ended): a new generation, so late writes of the old one never hit."""
        root = str(root)
        with self._lock:
            old = f"{root}#{self._generations.get(root, 0)}"
            self._generations[root] = self._generations.get(root, 0) + 1
            for cache in (self._sets, self._explain_sets, self._records, self._datasets,
                          self._dataset_hashes, self._dataset_path_sets, self._sidecars,
                          self._reference_refs):
                cache.pop(old, None)
            for cache in (self._explorers, self._prepared, self._timelines, self._ood):
                for k in [k for k in cache if k[0] == old]:
                    del cache[k]

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
            sides = self._once(self._sidecars, self.key, lambda: {
                emb.file_hash(c): c.with_suffix(".json") for c in self.examples()})
            side = sides.get(emb.file_hash(p))
        if side is None or not side.is_file():
            return None
        d = _json.loads(side.read_text())
        return d if "boxes" in d and "frame_times" in d else None

    def reference_records(self):
        """The reference clips of the Embeddings tab, labels in the models' order: the built-in
        test split (clips_per_class per class) for the demo models, the taught clips for the
        taught ones."""
        return self._once(self._records, self.key, self._reference_records)

    def _reference_records(self):
        if self.active == "taught":
            return self._taught_records()
        if self._set_data() is not None:
            return self._set_records()
        from mmt_core.data.manifests import read_manifest

        paths = self._synthetic("test", self.reference_clips_per_class, REFERENCE_SEED)
        man = read_manifest(paths[0].parent.parent / "manifest.csv", split="test")
        names, order = man.classes["label"], self.class_names
        if set(names) - set(order):
            raise UserError("these models were not trained on the built-in classes and "
                            "know no data of their own: give app.py --data MANIFEST")
        keep = {str(p) for p in paths}
        return [dataclasses.replace(r, labels={"label": order.index(names[r.labels["label"]])})
                for r in man.records if r.path in keep]

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
            lock = self._key_locks.setdefault(("synthetic", str(out)), threading.Lock())
        with lock:  # written once; other requests go on meanwhile
            if not all(p.is_file() and p.with_suffix(".json").is_file() for p in paths):
                write_dataset(out, clips_per_class=clips_per_class, seed=seed, split=split,
                              progress=False, version=version)
        return paths

    def explorer(self, role: str) -> emb.ReferenceEmbeddings:
        m = self.models[role]

        def make():
            records = self.reference_records()
            if len(records) < 4:
                raise UserError("the taught models' clips are not on this server (restored "
                                "from a zip?): no reference set to project")
            return emb.ReferenceEmbeddings(m.dir, records, cache_dir=self.cache_dir,
                                           model=m.model, meta=m.meta, seed=self.seed)
        return self._once(self._explorers, (self.key, role), make)

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
        self._once(self._ood, (self.key, str(self.models["mmt"].dir)), self.ood_reference)
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
    def served_dirs(self) -> list[str]:
        """The folders the page serves files from (gradio's allowed_paths): the example clips
        (per generator version of the demo checkpoint; a --models set's), the dataset and
        reference clip copies, the thumbnails. Never the teach folders."""
        version = 1
        cfg = self.checkpoints / DEMO_MODELS["mmt"] / "config.json"
        if cfg.is_file():
            version = int(json.loads(cfg.read_text()).get("data", {}).get("generator_version", 1))
        names = ["examples", f"examples_v{version}", "examples_set", "dataset_clips", "thumbs"]
        return [str(self.cache_dir / n) for n in dict.fromkeys(names)]

    def downloads(self, session_id: str) -> Path:
        """Where a session's taught zip is written: the system temp dir (gradio may hand it to
        the browser from there, but never serves it by path, unlike allowed_paths)."""
        import tempfile

        return Path(tempfile.gettempdir()) / "mmt-workbench-downloads" / session_id

    def shown(self, path) -> str:
        """A server path as the page may show it: relative to the repository or the cache dir
        when under them, else its last folder and name."""
        p = Path(path).resolve()
        for base in (self.cache_dir.resolve(), REPO):
            if p.is_relative_to(base):
                return str(p.relative_to(base))
        return f"…/{p.parent.name}/{p.name}"

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
        key = (self.key, emb.file_hash(p), None if start is None else round(start, 3))
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        models = self.models
        try:
            prep = prepare(p, models, max_seconds=self.max_seconds, start=start)
        except MediaError as e:
            # media messages name the server-side temp path; the user knows their file
            raise MediaError(str(e).replace(str(p), p.name)) from None
        # no lock while the models run: two requests for one new clip may both compute it
        value = (prep, predict_prepared(prep, models, topk=len(self.class_names)))
        self._ood_notes(prep, value[1], models)
        with self._lock:
            self._prepared[key] = value
            while len(self._prepared) > self.prepared_max:
                self._prepared.popitem(last=False)
        return value

    def _ood_notes(self, prep, results: dict, models: dict) -> None:
        """Add the MMT's "unlike the training data" verdict to results and a note to prep: which
        sense is unfamiliar and how far past its threshold (mmt_core.ood, docs/ood.md)."""
        from mmt_core import ood

        m, r = models["mmt"], results["mmt"]
        ref = self._once(self._ood, (self.key, str(m.dir)), self.ood_reference)
        if ref is None or r["output"] is None:
            return
        feats = ood.mean_views(ood.clip_features(r["output"], prep.inputs[m.name]))
        res = ood.score(feats, ref)
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
        key = (self.key, emb.file_hash(p), stride)
        with self._lock:
            if key in self._timelines:
                self._timelines.move_to_end(key)
                return self._timelines[key]
        models = self.models
        clips_by_setting, probs = {}, {}
        for role, m in models.items():
            pre = m.meta["preprocessing"]
            setting = (pre["num_frames"], pre["clip_seconds"], pre["sample_rate"],
                       pre["image_size"])
            if setting not in clips_by_setting:
                try:
                    clips_by_setting[setting] = window_clips(p, m.meta, stride)
                except MediaError as e:
                    raise MediaError(str(e).replace(str(p), p.name)) from None
            clips = clips_by_setting[setting]
            if "v" not in m.modalities and not clips[0].has_audio:
                probs[role] = None
                continue
            probs[role] = window_probs(m.model, m.meta, clips)
        first = clips_by_setting[next(iter(clips_by_setting))]
        window = models["mmt"].meta["preprocessing"]["clip_seconds"]
        res = {"starts": [c.start for c in first],
               "ends": [min(c.duration, c.start + window) for c in first],
               "window_seconds": window, "duration": first[0].duration,
               "class_names": models["mmt"].class_names, "probs": probs}
        with self._lock:
            self._timelines[key] = res
            while len(self._timelines) > self.prepared_max:
                self._timelines.popitem(last=False)
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
        models = self.explain_models()
        with self.explain_lock():
            for role in ("mmt", "video", "audio"):
                if role not in results:  # not in this model set
                    continue
                m = models[role]
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
            return (f"clips of {self.shown(self._set_data())} (split {self.entry.split}) with "
                    f"boxes, at most {POINTING_CLIPS_PER_CLASS} per class")
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

        m = self.explain_models()[role]
        records = self.pointing_records()
        with self.explain_lock():
            out = pointing_game(m.model, m.meta, records, explainers=[method],
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
        shown = self._reference_two_way()[0]
        for role, space in panels:
            ex, r = self.explorer(role), results[role]
            point = None
            if r["output"] is not None:
                point = emb.embeddings_of(r["output"])[space][0]
            label = self.models[role].class_names[int(np.argmax(r["probs"]))] \
                if r["probs"] is not None else ""
            figures.append(ex.figure(space, method, point=point, point_name=Path(path).name,
                                     point_label=label, shown=shown))
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
            return f"clips of {self.shown(self._set_data())} (split {self.entry.split})"
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

        def evaluate():
            manifest, split = self.dataset_source()
            cfg = AnalysisConfig(max_clips=self.reference_max, num_workers=0,
                                 cache_dir=str(self.cache_dir / "analysis"))
            import torch

            # A batch job: every core's thread (120 clips: 0.12 s/clip with 2 threads, 0.18
            # with 1; benchmarks/bench_analysis.py), then the app's single thread again.
            threads = torch.get_num_threads()
            torch.set_num_threads(self.dataset_threads or threads)
            try:
                return evaluate_set(open_model_set(self.entry.root), manifest, split, cfg)
            finally:
                torch.set_num_threads(threads)
        return self._once(self._datasets, self.key, evaluate)

    def dataset_summary(self) -> dict:
        """Tables of the Dataset tab: {"accuracy", "per_class", "suspicious", "classes",
        "roles", "clips", "total", "skipped", "source", "seconds", "cached"}."""
        from mmt_core import analysis as A

        ev = self.dataset()
        manifest, split = self.dataset_source()
        return {"accuracy": A.accuracy_table(ev), "per_class": A.per_class(ev),
                "suspicious": A.suspicious(ev, top=20), "classes": ev.classes,
                "roles": ev.roles, "clips": len(ev.paths), "total": ev.total,
                "skipped": len(ev.skipped), "source": f"{self.shown(manifest)} (split {split})",
                "seconds": ev.seconds, "cached": ev.cached}

    def dataset_confusion(self, role: str = "mmt"):
        from mmt_core.analysis import confusion

        ev = self.dataset()
        return confusion(ev, role), ev.classes

    def dataset_cell(self, role: str, true: str, pred: str) -> list[dict]:
        from mmt_core.analysis import cell_clips

        return cell_clips(self.dataset(), role, true, pred)

    def dataset_ref(self, path) -> str:
        """The name the page shows for a clip of the analysed dataset (never a server path):
        its path under the clips' common folder."""
        return self._dataset_two_way()[0][str(path)]

    def _dataset_clip_path(self, ref) -> str:
        """The dataset clip a page name (or, from Python, its path) stands for; nothing else."""
        names, paths = self._dataset_two_way()
        path = paths.get(str(ref or ""))
        if path is None and str(ref) in names:
            path = str(ref)
        if path is None:
            raise UserError(f"not a clip of the analysed dataset: {Path(str(ref)).name}")
        return path

    def dataset_clip(self, ref) -> Path:
        """A clip of the dataset (by its `dataset_ref`) copied under cache_dir/dataset_clips
        (a folder the page may serve), named by its content."""
        return self._served_copy(self._dataset_clip_path(ref))

    def _reference_two_way(self) -> tuple[dict[str, str], dict[str, str]]:
        """`two_way_refs` of the reference clips (the Embeddings maps' points)."""
        return self._once(self._reference_refs, self.key, lambda: two_way_refs(
            [r.path for r in self.reference_records()]))

    def reference_clip(self, ref) -> Path:
        """A reference clip of the Embeddings map (a clicked point, by the name its point
        carries), copied like dataset_clip."""
        path = self._reference_two_way()[1].get(str(ref or ""))
        if path is None:
            raise UserError(f"not a reference clip of the {self.active} models: {ref}")
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

    def thumbnail(self, ref) -> Path:
        """The middle frame of a clip of the analysed dataset (by its `dataset_ref`) as a small
        JPEG (at most 160 px a side) under cache_dir/thumbs, named by the clip's path, size and
        mtime (made once)."""
        import hashlib

        from PIL import Image

        from mmt_core.data import media

        path = self._dataset_clip_path(ref)
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

    def _dataset_two_way(self) -> tuple[dict[str, str], dict[str, str]]:
        """`two_way_refs` of the analysed dataset's clips."""
        ev = self.dataset()
        return self._once(self._dataset_path_sets, self.key, lambda: two_way_refs(ev.paths))

    def dataset_neighbours(self, path, kind: str = "fused", k: int = 8) -> list[dict]:
        """The k clips of the dataset nearest a clip (one of the dataset, found by content,
        else any clip through the fused model's embeddings of it) by sound, picture, fused
        embedding, or across senses ("cross": sound g_A nearest this clip's picture g_V)."""
        from mmt_core import analysis as A

        ev = self.dataset()
        p = self._check_upload(path)
        hashes = self._once(self._dataset_hashes, self.key, lambda: {
            emb.file_hash(Path(q)): i for i, q in enumerate(ev.paths)})
        index = hashes.get(emb.file_hash(p))
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
    def add_folder(self, folder) -> dict[str, int]:
        """"Add from a server folder": the class folders of `folder`, which must lie under one
        of MMT_TEACH_FOLDERS (none listed: off, the default), into this session's clips."""
        if not self.teach_folders:
            raise UserError("adding clips from a server folder is off on this server (the "
                            "operator lists the folders it may read in MMT_TEACH_FOLDERS)")
        text = str(folder or "").strip()
        root = Path(text).expanduser().resolve() if text else None
        if root is None or not any(root.is_relative_to(f) for f in self.teach_folders):
            raise UserError(f"{text!r} is not under a folder this server shares "
                            f"(MMT_TEACH_FOLDERS)")

        def check(path):  # a link inside may not lead out of the shared folders
            if not any(Path(path).resolve().is_relative_to(f) for f in self.teach_folders):
                raise UserError(f"{Path(path).name} lies outside the shared folders")
            return self.check_clip(path)
        return self.clips.add_folder(self.session.id, root, check=check)

    def start_teach(self, folder: Path, *, epochs: int | None = None) -> classroom.Ticket:
        """Queue a training run of this session on a folder of class folders (one queued or
        running run per session; it starts when a slot is free: `trainq`)."""
        ticket = classroom.Ticket(self.session, Path(folder),
                                  epochs=epochs if epochs else teaching.teach_epochs())
        return self.trainq.submit(ticket)

    def _launch(self, ticket: classroom.Ticket) -> teaching.TeachJob:
        """The queue's start: a background TeachJob under jobs/SESSION/ (its earlier runs
        deleted: their models are in its taught set)."""
        s = ticket.session
        jobs = self.teach_dir / "jobs" / s.id
        teaching.clear_runs(jobs)
        out = jobs / time.strftime("%Y%m%d-%H%M%S")
        return teaching.TeachJob.start(ticket.folder, out, self.checkpoints,
                                       epochs=ticket.epochs,
                                       on_done=lambda job: self._taught(s, job))

    def _taught(self, s: classroom.Session, job: teaching.TeachJob) -> None:
        """A finished run: its checkpoints become the session's taught set, and its active set
        (unless the session has left meanwhile)."""
        if s.ended:
            return
        s.taught_dir.parent.mkdir(parents=True, exist_ok=True)
        teaching._swap_in(job.out / "taught", s.taught_dir)
        self._forget_root(s.taught_dir)
        s.active = "taught"

    def _ended(self, ticket: classroom.Ticket) -> None:
        """A run ended (the queue's watcher): a left session's files go now."""
        if ticket.session.ended:
            self._delete_session_files(ticket.session, runs=True)

    def teach_summary(self) -> dict | None:
        path = self.taught_dir / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def taught_zip(self) -> Path:
        """This session's taught set as a zip (in `downloads`: the teach folders are blocked)."""
        if not self.has_taught():
            raise UserError("no taught models yet: teach some classes first")
        out = self.downloads(self.session.id) / "mmt_taught.zip"
        out.parent.mkdir(parents=True, exist_ok=True)
        return teaching.zip_taught(self.taught_dir, out)

    def restore_taught(self, path) -> dict:
        """A taught-models zip becomes this session's taught set, and its active one."""
        p = self._check_upload(path)
        self.taught_dir.parent.mkdir(parents=True, exist_ok=True)
        summary = teaching.restore_zip(p, self.taught_dir, max_mb=max(self.max_mb, 100.0))
        self._forget_root(self.taught_dir)
        self.use("taught")
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
