""""Unlike the training data": per sense, how far a clip lies from a model set's reference clips.

    feats = clip_features(out, inputs)            # {sense: {feature: (B, D)}} of one forward
    ref = fit(reference_feats)                    # fitted scorers + per-sense thresholds
    score({s: {f: row}}, ref)                     # {"score", "threshold", "ratio", "flagged", ...}
    save(checkpoint_dir, ref); load(checkpoint_dir)   # CHECKPOINT/ood.safetensors
    build(checkpoint_dir, clip_paths)             # embed + fit + save (taught models, `mmt ood build`)

A sense (audio, video) is described by two features of the same forward pass:
- "embed": its half of the classifier's input [E_CLS^V, E_CLS^A], L2-normalised;
- "stats": statistics of the input itself (colour, texture and motion of the frames; loudness,
  band energies, flatness and entropy of the fbank), `video_stats` / `audio_stats`.
A scorer (`SCORERS`: k-NN, Mahalanobis) fits one feature of one sense; a detector is a list of
(scorer, feature) members and its score in a sense is the largest of its members' scores, each
divided by that member's threshold, so 1.0 is "at the threshold" whatever the scorer. Thresholds
are a high quantile (default 99 %) of the reference clips' out-of-fold scores (each fold scored
by a fit on the other folds); with several members, their max is calibrated to that quantile
again, times a small-reference margin 1 + D/n (D dimensions, n clips). A clip is flagged when
any sense is past its threshold.

Why the input statistics (docs/ood.md has the measurements, benchmarks/bench_ood.py makes them):
the demo models' embeddings collapse real clips onto the synthetic classes (k-NN on the video
half: AUROC 0.74 on the held-out real clips, 0.42 for the video-only model), and earlier
layers, energy and ViM do no better for video (at most 0.88 held out); Mahalanobis on the input statistics separates every real
or foreign development clip from fresh built-in ones (AUROC 1.000 per sense, held-out kinds
too), and adding the embedding to it only added false alarms. Its limit: it says that a clip
*looks or sounds* unlike the reference, not that its content is new; a model set whose clips
vary widely (taught on real footage) gets wider statistics and a weaker check.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

OOD_FILE = "ood.safetensors"
K = 5  # neighbours averaged: small enough for 10-clip classes, large enough to ignore one twin
QUANTILE = 0.99  # of the reference clips' out-of-fold scores: the threshold
FOLDS = 5  # out-of-fold scoring of the reference clips (leave-one-out below FOLDS clips)
SHRINK = 0.1  # least Mahalanobis shrinkage toward the diagonal; D / n when that is more
SMALL_REFERENCE = 100  # fewer clips: thresholds scaled from the median (`high_quantile`)
MODALITIES = ("audio", "video")
# The shipped detector (chosen in docs/ood.md): k-NN on the embedding and Mahalanobis on the
# input statistics, per sense.
DEFAULT = (("maha", "stats"),)


# ------------------------------------------------------------------------------ features

def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embeddings_of(out) -> dict[str, np.ndarray]:
    """ModelOutput → {modality: (B, D) float32 L2-normalised E_CLS} for the modalities it has."""
    parts = {"audio": out.audio_embed, "video": out.video_embed}
    return {m: normalise(e.detach().float().cpu().numpy()) for m, e in parts.items()
            if e is not None}


def video_stats(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, S, S) normalised frames → (B, 24) colour, texture and motion statistics.
    Computed on the normalised values the model sees (the reference is, too)."""
    x = video.detach().float()
    b = x.shape[0]
    flat = x.reshape(b, 3, -1)  # (B, 3, T*S*S)
    dx = (x[..., 1:] - x[..., :-1]).abs().mean(1)  # (B, T, S, S-1): horizontal texture
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(1)
    grad = torch.cat([dx.reshape(b, -1), dy.reshape(b, -1)], 1)
    dt = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(1).reshape(b, -1)  # motion
    sat = (x.amax(1) - x.amin(1)).reshape(b, -1)  # colourfulness
    luma = x.mean(1).reshape(b, -1)
    lo, hi = luma.amin(1, keepdim=True), luma.amax(1, keepdim=True)
    hist = torch.stack([((luma - lo) / (hi - lo + 1e-6) * 8).clamp(0, 7.99).floor().eq(i)
                        .float().mean(1) for i in range(8)], 1)  # (B, 8) contrast-free shape
    # colours in use: entropy of a 6x6x6 colour histogram over the clip
    q = ((flat - flat.amin((1, 2), keepdim=True)) / (flat.amax((1, 2), keepdim=True)
         - flat.amin((1, 2), keepdim=True) + 1e-6) * 6).clamp(0, 5.99).floor()
    code = (q[:, 0] * 36 + q[:, 1] * 6 + q[:, 2]).long()  # (B, T*S*S)
    ent = []
    for c in code:
        p = torch.bincount(c, minlength=216).float() / c.numel()
        ent.append(-(p[p > 0] * p[p > 0].log()).sum())
    cols = [flat.mean(2), flat.std(2),  # (B, 3) each
            grad.mean(1, keepdim=True), (grad < 0.02).float().mean(1, keepdim=True),
            (grad > 0.5).float().mean(1, keepdim=True), grad.std(1, keepdim=True),
            dt.mean(1, keepdim=True), (dt > 0.1).float().mean(1, keepdim=True),
            sat.mean(1, keepdim=True), sat.std(1, keepdim=True),
            hist, torch.stack(ent)[:, None]]
    return torch.cat(cols, 1).numpy().astype(np.float32)


def audio_stats(audio: torch.Tensor) -> np.ndarray:
    """(B, 1, F, N) normalised log-mel fbank → (B, 27) loudness, spectral-shape and dynamics
    statistics. Padding frames (a column with one value in every bin) are left out: how many
    there are says how long the clip is, not what it sounds like (every built-in clip has the
    same length, so counting them made a clip-length test)."""
    rows = []
    for fb in audio.detach().float()[:, 0]:  # (F, N)
        const = fb.std(0) < 1e-5  # (N,) padding or digital silence
        x = fb[:, ~const] if (~const).sum() >= 2 else fb  # (F, N')
        f = x.shape[0]
        energy = x.logsumexp(0)  # (N',) loudness per frame (log domain)
        p = (x - energy).exp()  # spectrum as a distribution per frame
        entropy = -(p * p.clamp_min(1e-12).log()).sum(0)
        flatness = x.mean(0) - energy + np.log(f)  # log of geometric / arithmetic mean
        centroid = (p * torch.arange(f, dtype=x.dtype)[:, None]).sum(0) / f
        bands = x.reshape(8, f // 8, -1).mean(1)  # (8, N') band energies
        peak = x.amax(0) - x.median(0).values
        cols = [energy.mean(), energy.std(), entropy.mean(), entropy.std(),
                flatness.mean(), flatness.std(), centroid.mean(), centroid.std(), peak.mean(),
                (x[:, 1:] - x[:, :-1]).abs().mean(), (x[1:] - x[:-1]).abs().mean(),
                *bands.mean(1), *(bands - bands.mean(0)).std(1)]
        rows.append(torch.stack([torch.as_tensor(c, dtype=torch.float32) for c in cols]))
    return torch.stack(rows).nan_to_num(0.0).numpy()


def clip_features(out, inputs: dict) -> dict[str, dict[str, np.ndarray]]:
    """{sense: {"embed": (B, D), "stats": (B, F)}} of a forward's ModelOutput and its inputs
    ({"video": (B,3,T,S,S)} and/or {"audio": (B,1,F,N)}), for the senses the model takes."""
    feats = {m: {"embed": e} for m, e in embeddings_of(out).items()}
    if "video" in feats and "video" in inputs:
        feats["video"]["stats"] = video_stats(inputs["video"])
    if "audio" in feats and "audio" in inputs:
        feats["audio"]["stats"] = audio_stats(inputs["audio"])
    return feats


def mean_views(feats: dict) -> dict:
    """Features of a clip seen through V views → one row per feature (the views' mean)."""
    return {s: {f: np.asarray(x).mean(0) for f, x in fs.items()} for s, fs in feats.items()}


# ------------------------------------------------------------------------------ scorers

def knn_scores(x: np.ndarray, ref: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """Mean distance of each row of x (n, D) to its k nearest rows of ref (m, D) → (n,).
    leave_one_out: x is ref, and each row's distance to itself is left out."""
    d2 = (x * x).sum(1)[:, None] + (ref * ref).sum(1)[None] - 2 * x @ ref.T  # (n, m)
    d = np.sqrt(np.maximum(d2, 0.0))
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    k = min(k, d.shape[1] - (1 if leave_one_out else 0))
    if k < 1:
        raise ValueError("the reference set needs at least 2 clips")
    return np.sort(d, axis=1)[:, :k].mean(1)


class KNN:
    """k-NN distance on L2-normalised features (Sun et al., ICML 2022)."""
    name = "knn"

    @staticmethod
    def fit(x: np.ndarray, k: int = K) -> dict:
        return {"ref": normalise(x), "k": np.array(min(k, len(x) - 1), np.int64)}

    @staticmethod
    def score(state: dict, x: np.ndarray) -> np.ndarray:
        return knn_scores(normalise(x), state["ref"], int(np.ravel(state["k"])[0]))


class Maha:
    """Mahalanobis distance to one Gaussian of the reference (Lee et al., 2018, with one class:
    the reference of a model set has no labels to trust), on standardised features with the
    covariance shrunk toward its diagonal."""
    name = "maha"

    @staticmethod
    def fit(x: np.ndarray, k: int = K) -> dict:
        x = np.asarray(x, np.float64)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        z = (x - mu) / sd
        cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
        shrink = min(1.0, max(SHRINK, z.shape[1] / len(z)))  # a few taught clips: diagonal
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-3 * np.eye(len(cov))
        return {"mean": mu.astype(np.float32), "scale": sd.astype(np.float32),
                "precision": np.linalg.inv(cov).astype(np.float32)}

    @staticmethod
    def score(state: dict, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float32) - state["mean"]) / state["scale"]
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", z, state["precision"], z), 0.0))


SCORERS = {s.name: s for s in (KNN, Maha)}


def high_quantile(scores: np.ndarray, quantile: float, dims: int) -> float:
    """The `quantile` of out-of-fold distances. From SMALL_REFERENCE clips up, the empirical
    one; below, it would be one of the few largest scores, set by a single odd reference clip
    (one taught clip 7x farther than the rest made the threshold 7x looser, and a test pattern
    with white noise passed). There it is scaled from the median, as for distances whose
    squares follow a chi-square with `dims` degrees of freedom."""
    scores = np.asarray(scores, np.float64)
    if len(scores) >= SMALL_REFERENCE:
        return float(np.quantile(scores, quantile))
    from scipy.stats import chi2

    return float(np.median(scores) * np.sqrt(chi2.ppf(quantile, dims) / chi2.ppf(0.5, dims)))


def out_of_fold(scorer, x: np.ndarray, k: int, folds: int = FOLDS) -> np.ndarray:
    """Each reference row's score under a fit on the other folds (leave-one-out when few)."""
    n = len(x)
    folds = min(folds, n) if n >= 2 * folds else n
    fold = np.arange(n) % folds
    out = np.empty(n, np.float64)
    for f in range(folds):
        held = fold == f
        out[held] = scorer.score(scorer.fit(x[~held], k), x[held])
    return out


# ------------------------------------------------------------------------------ detector

def fit(features: dict[str, dict[str, np.ndarray]], *, members=DEFAULT, k: int = K,
        quantile: float = QUANTILE) -> dict:
    """{sense: {feature: (n, D)}} of the reference clips → {"senses": {sense: [{"scorer",
    "feature", "state", "threshold"}]}, "thresholds": {sense: the members' max at the quantile},
    "method", "k", "quantile",
    "n"}. A member whose feature a sense lacks is skipped."""
    if not features:
        raise ValueError("no reference features")
    n = min(len(x) for fs in features.values() for x in fs.values())
    if n < 2:
        raise ValueError(f"need a reference set of at least 2 clips, got {n}")
    senses, sense_thr = {}, {}
    for s, fs in features.items():
        fitted, oof = [], []
        for scorer_name, feat in members:
            if feat not in fs:
                continue
            x = np.asarray(fs[feat], np.float32)
            if x.ndim != 2 or len(x) < 2:
                raise ValueError(f"need a (n >= 2, D) reference set, got {s} {feat} {x.shape}")
            scorer = SCORERS[scorer_name]
            o = out_of_fold(scorer, x, k)
            thr = max(high_quantile(o, quantile, x.shape[1]), 1e-6)
            fitted.append({"scorer": scorer_name, "feature": feat, "state": scorer.fit(x, k),
                           "threshold": thr})
            oof.append(o / thr)
        if fitted:
            senses[s] = fitted
            # the members' max is calibrated again, so an ensemble keeps the quantile's rate;
            # then a small-reference margin of 1 + D/n (D: the widest member's dimensions).
            # A few taught clips cannot show how far their classes' other recordings lie: with
            # 24 clips of 23-27 statistics, the quantile alone flagged 33-54 % of held-out
            # clips of the taught classes (docs/ood.md, "Taught models"); the margin is ~1.1
            # for a reference of hundreds of clips.
            d = max(np.asarray(fs[f]).shape[1] for _, f in members if f in fs)
            sense_thr[s] = max(high_quantile(np.max(oof, 0), quantile, d), 1e-6) * (1 + d / n)
    return {"senses": senses, "thresholds": sense_thr,
            "method": method_name(members), "k": int(min(k, n - 1)), "quantile": float(quantile),
            "n": int(n)}


def method_name(members) -> str:
    return " + ".join(f"{s}({f})" for s, f in members)


def sense_scores(feats: dict[str, np.ndarray], fitted: list[dict]) -> tuple[np.ndarray, str]:
    """(n,) score of rows of one sense's features: the largest member score / its threshold,
    and the member that gave it for the first row."""
    ratios = [SCORERS[m["scorer"]].score(m["state"], np.atleast_2d(feats[m["feature"]]))
              / m["threshold"] for m in fitted if m["feature"] in feats]
    if not ratios:
        raise ValueError("the clip's features have none of the reference's")
    r = np.stack(ratios)  # (members, n)
    return r.max(0), fitted[int(r[:, 0].argmax())]["feature"]


def score(features: dict, ref: dict) -> dict:
    """One clip's {sense: {feature: (D,)}} → {"score", "threshold", "ratio", "flagged",
    "modality", "method", "modalities": {sense: {score, threshold, ratio, flagged, feature}}};
    the headline is the sense farthest past (or closest to) its threshold. `score` is the
    distance in threshold units, so `threshold` is 1.0 and `ratio` == `score`."""
    per = {}
    for s, fitted in ref["senses"].items():
        if s not in features:
            continue
        feats = features[s]
        if not isinstance(feats, dict):  # an embedding alone, as older callers pass it
            feats = {"embed": feats}
        for m in fitted:
            if m["feature"] in feats:
                want = (m["state"].get("ref", m["state"].get("mean"))).shape[-1]
                got = np.asarray(feats[m["feature"]]).shape[-1]
                if want != got:
                    raise ValueError(f"the {s} {m['feature']} reference is {want}-d, the clip's "
                                     f"{got}-d: ood.safetensors belongs to another model")
        r, feature = sense_scores(feats, fitted)
        r = float(r[0]) / ref["thresholds"][s]
        per[s] = {"score": round(r, 4), "threshold": 1.0, "ratio": round(r, 2),
                  "flagged": bool(r > 1.0), "feature": feature}
    if not per:
        raise ValueError("the clip's features have none of the reference's senses")
    worst = max(per, key=lambda m: per[m]["score"])
    return {**per[worst], "flagged": any(p["flagged"] for p in per.values()), "modality": worst,
            "method": ref["method"], "modalities": per}


SENSE_WORD = {"audio": "sound", "video": "picture"}


def note(res: dict) -> str:
    """'sound unlike the training data (2.3× the threshold)' for each flagged sense."""
    parts = [f"{SENSE_WORD.get(s, s)} unlike the training data ({p['ratio']:.1f}× the threshold)"
             for s, p in sorted(res["modalities"].items(), key=lambda kv: -kv[1]["score"])
             if p["flagged"]]
    return "; ".join(parts)


# ------------------------------------------------------------------------------ clips, files

@torch.inference_mode()
def features_of_clips(model: torch.nn.Module, meta: dict, paths, *, batch_size: int = 16
                      ) -> dict[str, dict[str, np.ndarray]]:
    """{sense: {feature: (n, D)}} of clip files (centre view, like `mmt predict`); clips that
    fail to decode are skipped."""
    from .errors import MediaError
    from .clip_input import prepare_clip

    rows: dict[str, dict[str, list]] = {}
    batch: list = []

    def flush():
        inputs = {k: torch.cat([b[k] for b in batch]) for k in batch[0]}  # (B, ...)
        for s, fs in clip_features(model(**inputs), inputs).items():
            for f, x in fs.items():
                rows.setdefault(s, {}).setdefault(f, []).append(x)
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
    return {s: {f: np.concatenate(v) for f, v in fs.items()} for s, fs in rows.items()}


def build(checkpoint_dir: str | Path, paths, *, source: str = "", k: int = K,
          quantile: float = QUANTILE, model=None, meta=None, members=DEFAULT) -> dict:
    """Featurise `paths` with the checkpoint, fit, write CHECKPOINT/ood.safetensors; returns the
    fit's summary (method, per-member thresholds, k, quantile, n)."""
    if model is None:
        from .checkpoint import load_checkpoint

        model, meta = load_checkpoint(checkpoint_dir, "cpu", pool=False)  # embeddings only
    feats = features_of_clips(model.eval(), meta, paths)
    if not feats:
        raise ValueError("none of the reference clips could be decoded")
    ref = fit(feats, members=members, k=k, quantile=quantile)
    save(checkpoint_dir, ref, source=source)
    return summary(ref)


def summary(ref: dict) -> dict:
    return {"method": ref["method"], "n": ref["n"], "k": ref["k"], "quantile": ref["quantile"],
            "thresholds": {s: {**{f"{m['scorer']}({m['feature']})": round(m["threshold"], 4)
                                  for m in ms}, "max": round(ref["thresholds"][s], 4)}
                           for s, ms in ref["senses"].items()}}


def save(checkpoint_dir: str | Path, ref: dict, *, source: str = "") -> Path:
    """Write CHECKPOINT/ood.safetensors: one tensor per fitted array ("sense.i.name"), the
    members and thresholds as metadata."""
    import os

    from safetensors.torch import save_file

    path = Path(checkpoint_dir) / OOD_FILE
    tmp = path.with_name(path.name + ".tmp")
    tensors, layout = {}, {}
    for s, ms in ref["senses"].items():
        layout[s] = []
        for i, m in enumerate(ms):
            for key, v in m["state"].items():
                tensors[f"{s}.{i}.{key}"] = torch.from_numpy(np.ascontiguousarray(v))
            layout[s].append({"scorer": m["scorer"], "feature": m["feature"],
                              "threshold": m["threshold"], "keys": sorted(m["state"])})
    save_file(tensors, str(tmp), metadata={
        "format": "2", "senses": json.dumps(layout), "method": ref["method"],
        "thresholds": json.dumps(ref["thresholds"]),
        "k": str(ref["k"]), "quantile": repr(ref["quantile"]), "n": str(ref["n"]),
        "source": source})
    os.chmod(tmp, 0o644)  # a checkpoint is meant to be shared
    os.replace(tmp, path)
    return path


def load(checkpoint_dir: str | Path) -> dict | None:
    """The fitted reference of a checkpoint, or None when it has no ood.safetensors. A file of
    the first format (k-NN on the embedding only) loads as that one-member detector."""
    from safetensors import safe_open

    path = Path(checkpoint_dir) / OOD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        arrays = {key: f.get_tensor(key).numpy() for key in f.keys()}
    if meta.get("format") != "2":  # format 1: {modality: (n, D)} embeddings, k-NN thresholds
        thr, k = json.loads(meta["thresholds"]), int(meta["k"])
        senses = {s: [{"scorer": "knn", "feature": "embed", "threshold": float(thr[s]),
                       "state": {"ref": arrays[s].astype(np.float32),
                                 "k": np.array(k, np.int64)}}]
                  for s in MODALITIES if s in arrays}
        return {"senses": senses, "thresholds": {s: 1.0 for s in senses},
                "method": "knn(embed)", "k": k, "quantile": float(meta.get("quantile", QUANTILE)),
                "n": len(next(iter(arrays.values()))), "source": meta.get("source", "")}
    senses = {s: [{"scorer": m["scorer"], "feature": m["feature"], "threshold": m["threshold"],
                   "state": {key: arrays[f"{s}.{i}.{key}"] for key in m["keys"]}}
                  for i, m in enumerate(ms)]
              for s, ms in json.loads(meta["senses"]).items()}
    return {"senses": senses, "thresholds": json.loads(meta["thresholds"]), "method": meta["method"],
            "k": int(meta["k"]), "quantile": float(meta["quantile"]), "n": int(meta["n"]),
            "source": meta.get("source", "")}
