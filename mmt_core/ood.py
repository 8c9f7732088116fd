""""Unlike the training data": a k-nearest-neighbour distance test in a model's embedding space.

    ref = fit(reference_embeddings)               # {"embeddings", "threshold", "k", ...}
    score(embedding, ref)                         # {"score", "threshold", "flagged"}
    save(checkpoint_dir, ref); load(checkpoint_dir)   # CHECKPOINT/ood.safetensors

The embedding is the classifier's input, `ModelOutput.fused_embed` ([E_CLS^V, E_CLS^A] for MMT,
the one modality's E_CLS for a unimodal model), L2-normalised as in Sun et al. 2022 ("Out-of-
distribution detection with deep nearest neighbors"). A clip's score is its mean Euclidean
distance to its k nearest reference clips; the threshold is a high quantile (default 99 %) of
the reference clips' own leave-one-out scores, so about 1 % of clips like the reference set are
flagged by construction and a clip farther from everything the model saw is flagged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OOD_FILE = "ood.safetensors"
K = 5  # neighbours averaged: small enough for 10-clip classes, large enough to ignore one twin
QUANTILE = 0.99  # of the reference clips' leave-one-out scores: the threshold


def embedding_of(out) -> np.ndarray:
    """ModelOutput → (B, D) float32 L2-normalised classifier-input embeddings."""
    return normalise(out.fused_embed.detach().float().cpu().numpy())


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


def fit(embeddings: np.ndarray, *, k: int = K, quantile: float = QUANTILE) -> dict:
    """Reference set (n, D) → {"embeddings" (normalised), "threshold", "k", "quantile", "n"}."""
    ref = normalise(embeddings)
    if ref.ndim != 2 or len(ref) < 2:
        raise ValueError(f"need a (n >= 2, D) reference set, got shape {ref.shape}")
    own = knn_scores(ref, ref, k, leave_one_out=True)
    return {"embeddings": ref, "threshold": float(np.quantile(own, quantile)), "k": int(k),
            "quantile": float(quantile), "n": len(ref)}


def score(embedding: np.ndarray, ref: dict) -> dict:
    """{"score", "threshold", "flagged"} of one embedding (D,) against a fitted reference."""
    x = normalise(np.asarray(embedding, np.float32).reshape(1, -1))
    s = float(knn_scores(x, ref["embeddings"], ref["k"])[0])
    return {"score": round(s, 4), "threshold": round(ref["threshold"], 4),
            "flagged": bool(s > ref["threshold"])}


def save(checkpoint_dir: str | Path, ref: dict, *, source: str = "") -> Path:
    """Write CHECKPOINT/ood.safetensors (the embeddings + threshold/k/quantile as metadata)."""
    import os

    from safetensors.torch import save_file

    path = Path(checkpoint_dir) / OOD_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(ref["embeddings"]))}, str(tmp),
              metadata={"threshold": repr(ref["threshold"]), "k": str(ref["k"]),
                        "quantile": repr(ref["quantile"]), "source": source})
    os.replace(tmp, path)
    return path


def load(checkpoint_dir: str | Path) -> dict | None:
    """The fitted reference of a checkpoint, or None when it has no ood.safetensors."""
    from safetensors import safe_open

    path = Path(checkpoint_dir) / OOD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        emb = f.get_tensor("embeddings").float().numpy()
    return {"embeddings": emb, "threshold": float(meta["threshold"]), "k": int(meta["k"]),
            "quantile": float(meta.get("quantile", QUANTILE)), "n": len(emb),
            "source": meta.get("source", "")}
