"""Embedding spaces of a checkpoint on a reference set: extraction, 2-D projections, ARI/HS.

    ref = ReferenceEmbeddings(checkpoint_dir, records, cache_dir=".cache/workbench")
    fig = ref.figure("fused", "umap", point=embeds["fused"], point_name="my clip")
    ref.scores()   # {"fused": {"ari": .., "hs": ..}, ...}   (paper Table 3)

Spaces are the model's E_CLS embeddings (ModelOutput.audio_embed / video_embed / fused_embed;
a unimodal model has only its own). Embeddings, projections and fitted reducers are computed once
per (checkpoint weights, reference set) and cached in memory and under
cache_dir/embeddings/KEY/, so a request only places one new point:
UMAP and PCA with the fitted reducer's `transform`; t-SNE has no transform, so it is refit with
the point added, starting from the cached layout (the reference points barely move), and that
refit is cached per new point.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import threading
from pathlib import Path

import numpy as np
import torch

# UMAP runs single-threaded (a fixed random_state), but numba's default threading layer leaves
# worker threads spinning after it, which made every later torch forward 5-10x slower (measured
# on 2 cores). One numba thread means no worker pool; it is read when numba is first imported.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

METHODS = ("umap", "tsne", "pca")
SPACES = ("audio", "video", "fused")


def embeddings_of(out) -> dict[str, np.ndarray]:
    """ModelOutput → {space: (B, D) float32} for the spaces the model has."""
    spaces = {"audio": out.audio_embed, "video": out.video_embed}
    res = {k: v.detach().float().cpu().numpy() for k, v in spaces.items() if v is not None}
    if len(res) == 2:
        res["fused"] = out.fused_embed.detach().float().cpu().numpy()
    return res


@torch.inference_mode()
def extract_embeddings(model: torch.nn.Module, meta: dict, records, *, batch_size: int = 16,
                       progress: bool = False) -> dict:
    """Embeddings of `records` (decoded like evaluation, centre view). Broken clips are skipped.

    Returns {"embeds": {space: (n, D)}, "labels": (n,) int, "names": [n], "skipped": int}.
    """
    from mmt_core.errors import MediaError
    from mmt_core.inference import prepare_clip

    head = next(iter(meta["classes"]))
    chunks: dict[str, list] = {}
    labels, names, skipped, batch = [], [], 0, []
    records = list(records)

    def flush():
        inputs = {k: torch.cat([b[k] for b in batch]) for k in batch[0]}  # (B, ...)
        for k, v in embeddings_of(model(**inputs)).items():
            chunks.setdefault(k, []).append(v)
        batch.clear()

    for i, rec in enumerate(records):
        try:
            batch.append(prepare_clip(rec.path, meta, views=1)["inputs"])
        except MediaError:
            skipped += 1
            continue
        labels.append(rec.labels[head])
        names.append(Path(rec.path).stem)
        if len(batch) == batch_size:
            flush()
        if progress:
            print(f"\rembeddings: {i + 1}/{len(records)}", end="", file=sys.stderr, flush=True)
    if batch:
        flush()
    if progress:
        print(file=sys.stderr)
    return {"embeds": {k: np.concatenate(v) for k, v in chunks.items()},
            "labels": np.asarray(labels, np.int64), "names": names, "skipped": skipped}


def fit_projection(x: np.ndarray, method: str, *, seed: int = 0):
    """2-D projection of x (n, D) → (coords (n, 2) float32, fitted reducer or None for t-SNE)."""
    n = len(x)
    if n < 4:
        raise ValueError(f"need at least 4 points to project, got {n}")
    if method == "pca":
        from sklearn.decomposition import PCA

        reducer = PCA(n_components=2, random_state=seed).fit(x)
        return reducer.transform(x).astype(np.float32), reducer
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, random_state=seed,
                            n_jobs=1).fit(x)
        return reducer.embedding_.astype(np.float32), reducer
    if method == "tsne":
        return _tsne(x, seed=seed), None
    raise ValueError(f"unknown projection '{method}'; choose from {', '.join(METHODS)}")


def _tsne(x: np.ndarray, *, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    if init is None:
        tsne = TSNE(perplexity=perplexity, init="pca", random_state=seed)
    else:  # refinement of a converged layout: no early exaggeration, few iterations
        tsne = TSNE(perplexity=perplexity, init=init, early_exaggeration=1.0, max_iter=300,
                    random_state=seed)
    return tsne.fit_transform(x).astype(np.float32)


def place_point(x_ref: np.ndarray, coords: np.ndarray, reducer, method: str, x_new: np.ndarray,
                *, seed: int = 0) -> np.ndarray:
    """2-D position (2,) of a new embedding x_new (D,) in a fitted projection of x_ref."""
    x_new = np.asarray(x_new, np.float32).reshape(1, -1)
    if method in ("pca", "umap"):
        return reducer.transform(x_new)[0].astype(np.float32)
    if method == "tsne":
        # Start the new point at the mean position of its 5 nearest reference neighbours.
        near = np.argsort(((x_ref - x_new) ** 2).sum(1))[:5]
        init = np.vstack([coords, coords[near].mean(0, keepdims=True)])
        return _tsne(np.vstack([x_ref, x_new]), seed=seed, init=init)[-1]
    raise ValueError(f"unknown projection '{method}'; choose from {', '.join(METHODS)}")


def scatter_figure(coords: np.ndarray, labels: np.ndarray, class_names: list[str],
                   names: list[str], *, point: np.ndarray | None = None, point_name: str = "",
                   point_label: str = "", title: str = "", paths: list[str] | None = None):
    """Plotly scatter coloured by class, hover = clip name; the new point as a big star.
    `paths` (one per point) go into each point's customdata: the app's click relay opens the
    clicked clip."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for c, cname in enumerate(class_names):
        m = labels == c
        if not m.any():
            continue
        fig.add_trace(go.Scatter(
            x=coords[m, 0], y=coords[m, 1], mode="markers", name=cname,
            text=[names[i] for i in np.flatnonzero(m)], marker={"size": 8, "opacity": 0.8},
            customdata=None if paths is None else [paths[i] for i in np.flatnonzero(m)],
            hovertemplate="%{text}<br>" + cname + "<extra></extra>"))
    if point is not None:
        fig.add_trace(go.Scatter(
            x=[float(point[0])], y=[float(point[1])], mode="markers", name=point_name or "your clip",
            marker={"size": 22, "symbol": "star", "color": "black",
                    "line": {"width": 2, "color": "gold"}},
            hovertemplate=f"{point_name}<br>predicted: {point_label}<extra></extra>"))
    fig.update_layout(title=title, height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"title": "class"}, xaxis={"showticklabels": False},
                      yaxis={"showticklabels": False})
    return fig


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ReferenceEmbeddings:
    """One checkpoint's embedding spaces on a reference set, computed once and cached.

    Memory cache: this object. Disk cache: cache_dir/embeddings/KEY/ with KEY a hash of the
    checkpoint's weights and the reference clips' paths, so retraining or another reference
    set never reuses stale numbers.
    """

    def __init__(self, checkpoint_dir: str | Path, records, *, cache_dir: str | Path,
                 model=None, meta: dict | None = None, seed: int = 0):
        from mmt_core.checkpoint import WEIGHTS

        self.checkpoint_dir = Path(checkpoint_dir)
        self.records = list(records)
        self.seed = seed
        self._model, self._meta = model, meta
        ident = {"weights": file_hash(self.checkpoint_dir / WEIGHTS), "seed": seed,
                 "config": (self.checkpoint_dir / "config.json").read_text(),
                 "clips": sorted(str(r.path) for r in self.records)}
        self.key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / "embeddings" / self.key
        self._ref: dict | None = None
        self._proj: dict[tuple[str, str], tuple] = {}
        self._placed: dict[tuple, np.ndarray] = {}
        # computes the reference embeddings and each projection once; concurrent requests of
        # the app wait for it (placing a point needs no lock: the fitted reducers are read-only)
        self._lock = threading.RLock()
        self.hits = {"memory": 0, "disk": 0, "computed": 0}  # how each projection was obtained

    def _model_meta(self):
        if self._model is None:
            from mmt_core.checkpoint import load_checkpoint

            model, self._meta = load_checkpoint(self.checkpoint_dir, "cpu")
            self._model = model.eval()
        return self._model, self._meta

    @property
    def class_names(self) -> list[str]:
        meta = self._meta or json.loads((self.checkpoint_dir / "config.json").read_text())
        return next(iter(meta["classes"].values()))

    def reference(self) -> dict:
        """{"embeds": {space: (n, D)}, "labels": (n,), "names": [n], "skipped": int}."""
        with self._lock:
            return self._reference()

    def _reference(self) -> dict:
        if self._ref is None:
            path = self.dir / "reference.npz"
            if path.is_file():
                z = np.load(path, allow_pickle=False)
                self._ref = {"embeds": {k[2:]: z[k] for k in z.files if k.startswith("e_")},
                             "labels": z["labels"], "names": [str(s) for s in z["names"]],
                             "skipped": int(z["skipped"])}
            else:
                model, meta = self._model_meta()
                self._ref = extract_embeddings(model, meta, self.records)
                self.dir.mkdir(parents=True, exist_ok=True)
                _atomic(path, lambda f: np.savez(
                    f, labels=self._ref["labels"], names=np.asarray(self._ref["names"]),
                    skipped=self._ref["skipped"],
                    **{f"e_{k}": v for k, v in self._ref["embeds"].items()}))
        return self._ref

    @property
    def spaces(self) -> list[str]:
        return [s for s in SPACES if s in self.reference()["embeds"]]

    def projection(self, space: str, method: str) -> tuple[np.ndarray, object]:
        """(coords (n, 2), fitted reducer or None) of one space, cached in memory and on disk."""
        with self._lock:
            return self._projection(space, method)

    def _projection(self, space: str, method: str) -> tuple[np.ndarray, object]:
        if (space, method) in self._proj:
            self.hits["memory"] += 1
            return self._proj[(space, method)]
        x = self._space(space)
        path = self.dir / f"proj_{space}_{method}.pkl"
        if path.is_file():
            with open(path, "rb") as f:  # our own cache file, written below
                self._proj[(space, method)] = pickle.load(f)
            self.hits["disk"] += 1
        else:
            self._proj[(space, method)] = fit_projection(x, method, seed=self.seed)
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic(path, lambda f: pickle.dump(self._proj[(space, method)], f))
            self.hits["computed"] += 1
        return self._proj[(space, method)]

    def _space(self, space: str) -> np.ndarray:
        embeds = self.reference()["embeds"]
        if space not in embeds:
            raise ValueError(f"'{self.checkpoint_dir.name}' has no {space} embedding; "
                             f"it has {', '.join(embeds)}")
        return embeds[space]

    def place(self, space: str, method: str, x_new: np.ndarray) -> np.ndarray:
        """2-D position of a new embedding (D,) in the cached projection (refits cached too)."""
        key = (space, method, hashlib.sha1(np.ascontiguousarray(x_new, np.float32)).hexdigest())
        if key not in self._placed:
            coords, reducer = self.projection(space, method)
            self._placed[key] = place_point(self._space(space), coords, reducer, method, x_new,
                                            seed=self.seed)
        return self._placed[key]

    def scores(self) -> dict[str, dict[str, float]]:
        """{space: {"ari", "hs"}}: KMeans clusters vs labels (mmt_core.metrics.cluster_scores)."""
        with self._lock:
            return self._scores()

    def _scores(self) -> dict[str, dict[str, float]]:
        path = self.dir / "scores.json"
        if path.is_file():
            return json.loads(path.read_text())
        from mmt_core.metrics import cluster_scores

        ref = self.reference()
        res = {s: cluster_scores(ref["embeds"][s], ref["labels"], seed=self.seed)
               for s in self.spaces}
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic(path, lambda f: f.write(json.dumps(res, indent=2).encode()))
        return res

    def figure(self, space: str, method: str, *, point: np.ndarray | None = None,
               point_name: str = "", point_label: str = "", shown: dict | None = None):
        """The reference set's scatter in one space/projection, `point` (D,) placed as a star.
        Each point carries its clip's name for the page (`shown`: path → name; default the
        path) in its customdata."""
        coords, _ = self.projection(space, method)
        ref = self.reference()
        xy = None if point is None else self.place(space, method, point)
        title = f"{self.checkpoint_dir.name}: {space} embeddings, {method.upper()}"
        by_stem = {Path(r.path).stem: str(r.path) for r in self.records}  # names are stems
        return scatter_figure(coords, ref["labels"], self.class_names, ref["names"], point=xy,
                              point_name=point_name, point_label=point_label, title=title,
                              paths=[(shown or {}).get(p, p)
                                     for p in (by_stem.get(n, "") for n in ref["names"])])


def _atomic(path: Path, write) -> None:
    """Write via a temp file + rename, so a crash never leaves a half cache file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    tmp.replace(path)
