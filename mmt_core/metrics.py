"""Evaluation metrics: top-k accuracy, multi-view ensembling, verb/noun/action accuracy, the
clustering scores of the paper's Table 3 (ARI, homogeneity), and a Grad-CAM pointing game.

Accuracies are fractions in [0, 1]; every report is plain Python (JSON-serialisable).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """(B,) bool: label among the k highest scores (k is capped at the number of classes)."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (B, C) and labels (B,), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k)
    return (top == labels[:, None]).any(dim=1)


def ensemble_views(logits: Tensor) -> Tensor:
    """(B, V, C) logits of V test views -> (B, C) mean of the per-view softmax (the paper's 5 views)."""
    if logits.dim() != 3:
        raise ValueError(f"expected logits (B, V, C), got {tuple(logits.shape)}")
    return logits.float().softmax(dim=-1).mean(dim=1)


def _acc(correct: Tensor) -> float:
    return float(correct.float().mean()) if correct.numel() else 0.0


def accuracy_report(probs_by_head: Mapping[str, Tensor], labels_by_head: Mapping[str, Tensor],
                    class_names_by_head: Mapping[str, Sequence[str]]) -> dict:
    """Top-1/top-5 per head (the first head's also at the top level); `action` when there are
    `verb` and `noun` heads (EPIC-100: top-k over the verb×noun joint score, so top-1 means both
    right); per-class accuracy and the confusion matrix (rows true, columns predicted) of the
    first head."""
    if not probs_by_head:
        raise ValueError("accuracy_report needs at least one head")
    heads = {}
    for h, p in probs_by_head.items():
        y = labels_by_head[h]
        heads[h] = {"top1": _acc(topk_correct(p, y, 1)), "top5": _acc(topk_correct(p, y, 5))}
    first = next(iter(probs_by_head))
    p, y = probs_by_head[first], labels_by_head[first]
    names = list(class_names_by_head.get(first) or [str(i) for i in range(p.shape[1])])
    if len(names) != p.shape[1]:
        raise ValueError(f"head {first!r}: {len(names)} class names for {p.shape[1]} classes")
    c = p.shape[1]
    conf = torch.bincount(y * c + p.argmax(1), minlength=c * c).reshape(c, c)  # (true, pred)
    counts = conf.sum(1)
    report = {
        "num_samples": int(y.numel()),
        "top1": heads[first]["top1"],
        "top5": heads[first]["top5"],
        "heads": heads,
        "classes": names,
        "per_class": [{"class": n, "count": int(counts[i]),
                       "accuracy": float(conf[i, i] / counts[i]) if counts[i] else None}
                      for i, n in enumerate(names)],
        "confusion": conf.tolist(),
    }
    if "verb" in probs_by_head and "noun" in probs_by_head:
        pv, pn = probs_by_head["verb"], probs_by_head["noun"]
        joint = (pv[:, :, None] * pn[:, None, :]).flatten(1)  # (B, verbs*nouns)
        action = labels_by_head["verb"] * pn.shape[1] + labels_by_head["noun"]
        report["action"] = {"top1": _acc(topk_correct(joint, action, 1)),
                            "top5": _acc(topk_correct(joint, action, 5))}
    return report


def cluster_scores(embeddings, labels, n_clusters: int | None = None, seed: int = 0) -> dict:
    """KMeans on L2-normalised embeddings vs the labels: adjusted Rand index and homogeneity
    (Table 3). `n_clusters` defaults to the number of distinct labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, homogeneity_score

    x = torch.as_tensor(embeddings).float()
    y = np.asarray(torch.as_tensor(labels).cpu())
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected embeddings (N, D) and labels (N,), got {tuple(x.shape)} and {y.shape}")
    k = n_clusters or len(np.unique(y))
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"cannot make {k} clusters of {x.shape[0]} embeddings")
    x = F.normalize(x, dim=1).cpu().numpy()
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return {"ari": float(adjusted_rand_score(y, pred)), "hs": float(homogeneity_score(y, pred))}


def pointing_game(cam, boxes, *, tolerance: int = 0) -> float:
    """Fraction of frames whose CAM maximum lies inside that frame's box (Zhang et al.'s pointing
    game). cam: (T, H, W) or (H, W); boxes: (T, 4) or (4,) as x0, y0, x1, y1 in the CAM's pixel
    grid (inclusive); a frame whose box is None or NaN is skipped. `tolerance` grows each box."""
    tally = frame_pointing(cam, boxes, tolerance=tolerance)
    if not tally["frames"]:
        raise ValueError("pointing_game: no frame has a box")
    return tally["hits"] / tally["frames"]


def _in_box(ix, iy, box, tolerance: float = 0) -> bool:
    x0, y0, x1, y1 = (float(b) for b in box)
    return bool((x0 - tolerance <= ix <= x1 + tolerance) and (y0 - tolerance <= iy <= y1 + tolerance))


def frame_pointing(maps, boxes, *, tolerance: float = 0) -> dict:
    """Pointing-game tallies of any (T, H, W) maps against per-frame boxes (T, 4) [x0, y0, x1, y1]
    in the maps' pixel grid (inclusive; a box of None/NaN skips its frame):
    "frames" scored; "hits": frames whose map peak lies in the box (an all-zero map misses);
    "energy": the sum over frames of the share of the frame's positive mass inside the box
    (energy-based pointing game); "centre_hits": frames whose centre pixel lies in the box (the
    centre baseline); "box_area": the sum of the box's share of the frame's pixels (the expected
    accuracy of a uniformly random peak). Divide the sums by "frames" for the scores.
    `tolerance` (pixels) grows each box for "hits" only (Zhang et al. allow 15 px at 224²)."""
    m = torch.as_tensor(maps, dtype=torch.float32)
    if m.dim() == 2:
        m, boxes = m[None], [boxes]
    if m.dim() != 3 or len(boxes) != m.shape[0]:
        raise ValueError(f"expected maps (T, H, W) with T boxes, got {tuple(m.shape)} and "
                         f"{len(boxes)} boxes")
    H, W = m.shape[1:]
    ys, xs = torch.arange(H, dtype=torch.float32)[:, None], torch.arange(W, dtype=torch.float32)[None]
    out = {"frames": 0, "hits": 0, "energy": 0.0, "centre_hits": 0, "box_area": 0.0}
    for frame, box in zip(m, boxes):
        if box is None or any(b != b for b in map(float, box)):
            continue
        x0, y0, x1, y1 = (float(b) for b in box)
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)  # (H, W)
        pos = frame.clamp(min=0)
        total = float(pos.sum())
        iy, ix = divmod(int(frame.argmax()), W)
        out["frames"] += 1
        out["hits"] += int(total > 0 and _in_box(ix, iy, box, tolerance))
        out["energy"] += float(pos[inside].sum()) / total if total > 0 else 0.0
        out["centre_hits"] += int(_in_box(W // 2, H // 2, box))
        out["box_area"] += float(inside.float().mean())
    return out


def event_share(audio_map, events, *, start: float, frame_shift: float = 0.01,
                window: float = 0.15) -> tuple[float, float]:
    """(share of an (F, N) audio map's positive mass in the fbank frames within `window` s after
    an event onset, share of the N frames such windows cover: the chance level). Frame j is at
    `start` + j·frame_shift seconds; onsets are in seconds from the start of the file."""
    m = torch.as_tensor(audio_map, dtype=torch.float32).clamp(min=0)
    if m.dim() != 2:
        raise ValueError(f"expected an (F, N) audio map, got {tuple(m.shape)}")
    t = start + torch.arange(m.shape[1], dtype=torch.float64) * frame_shift  # (N,)
    near = torch.zeros(m.shape[1], dtype=torch.bool)
    for onset in events:
        near |= (t >= float(onset)) & (t < float(onset) + window)
    per_frame = m.sum(0)  # (N,)
    total = float(per_frame.sum())
    mass = float(per_frame[near].sum()) / total if total > 0 else 0.0
    return mass, float(near.float().mean())
