""""Unlike the training data": a k-nearest-neighbour distance test in a model's embedding space.

    ref = fit({"audio": A, "video": V})          # reference embeddings (n, D) per modality
    score({"audio": a, "video": v}, ref)          # {"score", "threshold", "flagged", ...}
    save(checkpoint_dir, ref); load(checkpoint_dir)   # CHECKPOINT/ood.safetensors

The space is the classifier's input, `ModelOutput.fused_embed` = [E_CLS^V, E_CLS^A], taken one
modality half at a time and each half L2-normalised (as in Sun et al. 2022, "Out-of-distribution
detection with deep nearest neighbors"). A clip's score in a modality is its mean Euclidean
distance to its k nearest reference clips; that modality's threshold is a high quantile (default
99 %) of the reference clips' own leave-one-out scores. A clip is flagged when any modality is
past its threshold: it looks or sounds unlike everything in the reference set.

Why per modality: on the demo MMT the whole fused vector missed a noise video with noise audio
(score 0.28, threshold 0.74): the video encoder maps pixel noise among the built-in clips and
the video half dominates the vector, while the audio half alone put the clip 2.5x past its
threshold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OOD_FILE = "ood.safetensors"
K = 5  # neighbours averaged: small enough for 10-clip classes, large enough to ignore one twin
QUANTILE = 0.99  # of the reference clips' leave-one-out scores: the threshold
MODALITIES = ("audio", "video")


def embeddings_of(out) -> dict[str, np.ndarray]:
    """ModelOutput → {modality: (B, D) float32 L2-normalised E_CLS} for the modalities it has."""
    parts = {"audio": out.audio_embed, "video": out.video_embed}
    return {m: normalise(e.detach().float().cpu().numpy()) for m, e in parts.items()
            if e is not None}


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_scores(x: np.ndarray, ref: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """Mean distance of each row of x (n, D) to its k nearest rows of ref (m, D) → (n,).
    leave_one_out: x is ref, and each row's distance to itself is left out."""
    d = np.sqrt(np.maximum(((x[:, None, :] - ref[None, :, :]) ** 2).sum(-1), 0.0))  # (n, m)
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    k = min(k, d.shape[1] - (1 if leave_one_out else 0))
    if k < 1:
        raise ValueError("the reference set needs at least 2 clips")
    return np.sort(d, axis=1)[:, :k].mean(1)


def fit(embeddings: dict[str, np.ndarray], *, k: int = K, quantile: float = QUANTILE) -> dict:
    """{modality: (n, D)} → {"embeddings": {modality: normalised (n, D)}, "thresholds":
    {modality: float}, "k", "quantile", "n"}."""
    if not embeddings:
        raise ValueError("no reference embeddings")
    n = min(len(x) for x in embeddings.values())
    if n < 2:
        raise ValueError(f"need a reference set of at least 2 clips, got {n}")
    k = min(k, n - 1)  # the same k for the leave-one-out scores and for new clips
    ref, thr = {}, {}
    for m, x in embeddings.items():
        ref[m] = normalise(x)
        if ref[m].ndim != 2 or len(ref[m]) < 2:
            raise ValueError(f"need a (n >= 2, D) reference set, got {m} {ref[m].shape}")
        thr[m] = float(np.quantile(knn_scores(ref[m], ref[m], k, leave_one_out=True), quantile))
    return {"embeddings": ref, "thresholds": thr, "k": int(k), "quantile": float(quantile),
            "n": len(next(iter(ref.values())))}


def score(embedding: dict[str, np.ndarray], ref: dict) -> dict:
    """{"score", "threshold", "flagged", "modality", "modalities": {m: {score, threshold,
    flagged}}} of one clip ({modality: (D,)}); the headline numbers are those of the modality
    farthest past (or closest to) its threshold."""
    per = {}
    for m, r in ref["embeddings"].items():
        if m not in embedding:
            continue
        x = normalise(np.asarray(embedding[m], np.float32).reshape(1, -1))
        if x.shape[1] != r.shape[1]:
            raise ValueError(f"the {m} reference has {r.shape[1]}-d embeddings, the clip "
                             f"{x.shape[1]}-d: ood.safetensors belongs to another model")
        s, t = float(knn_scores(x, r, ref["k"])[0]), ref["thresholds"][m]
        per[m] = {"score": round(s, 4), "threshold": round(t, 4), "flagged": bool(s > t)}
    if not per:
        raise ValueError("the clip's embedding has none of the reference's modalities")
    worst = max(per, key=lambda m: per[m]["score"] / max(per[m]["threshold"], 1e-12))
    return {**per[worst], "flagged": any(p["flagged"] for p in per.values()), "modality": worst,
            "modalities": per}


@torch.inference_mode()
def embed_clips(model: torch.nn.Module, meta: dict, paths, *, batch_size: int = 16
                ) -> dict[str, np.ndarray]:
    """{modality: (n, D)} normalised embeddings of clip files (centre view, like `mmt predict`);
    clips that fail to decode are skipped."""
    from .errors import MediaError
    from .inference import prepare_clip

    rows: dict[str, list] = {}
    batch: list = []

    def flush():
        inputs = {k: torch.cat([b[k] for b in batch]) for k in batch[0]}  # (B, ...)
        for m, e in embeddings_of(model(**inputs)).items():
            rows.setdefault(m, []).append(e)
        batch.clear()

    for path in paths:
        try:
            batch.append(prepare_clip(path, meta, views=1)["inputs"])
        except MediaError:
            continue
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {m: np.concatenate(v) for m, v in rows.items()}


def build(checkpoint_dir: str | Path, paths, *, source: str = "", k: int = K,
          quantile: float = QUANTILE, model=None, meta=None) -> dict:
    """Embed `paths` with the checkpoint, fit, write CHECKPOINT/ood.safetensors; returns the
    fit's summary (thresholds, k, quantile, n)."""
    if model is None:
        from .checkpoint import load_checkpoint

        model, meta = load_checkpoint(checkpoint_dir, "cpu")
    ref = fit(embed_clips(model.eval(), meta, paths), k=k, quantile=quantile)
    save(checkpoint_dir, ref, source=source)
    return {key: v for key, v in ref.items() if key != "embeddings"}


def save(checkpoint_dir: str | Path, ref: dict, *, source: str = "") -> Path:
    """Write CHECKPOINT/ood.safetensors: one tensor per modality, thresholds etc. as metadata."""
    import json
    import os

    from safetensors.torch import save_file

    path = Path(checkpoint_dir) / OOD_FILE
    tmp = path.with_name(path.name + ".tmp")
    tensors = {m: torch.from_numpy(np.ascontiguousarray(e)) for m, e in ref["embeddings"].items()}
    save_file(tensors, str(tmp), metadata={
        "thresholds": json.dumps(ref["thresholds"]), "k": str(ref["k"]),
        "quantile": repr(ref["quantile"]), "source": source})
    os.chmod(tmp, 0o644)  # a checkpoint is meant to be shared
    os.replace(tmp, path)
    return path


def load(checkpoint_dir: str | Path) -> dict | None:
    """The fitted reference of a checkpoint, or None when it has no ood.safetensors."""
    import json

    from safetensors import safe_open

    path = Path(checkpoint_dir) / OOD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        emb = {m: f.get_tensor(m).float().numpy() for m in f.keys() if m in MODALITIES}
    return {"embeddings": emb, "thresholds": json.loads(meta["thresholds"]), "k": int(meta["k"]),
            "quantile": float(meta.get("quantile", QUANTILE)),
            "n": len(next(iter(emb.values()))), "source": meta.get("source", "")}
