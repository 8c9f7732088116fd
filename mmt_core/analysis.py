"""Dataset analysis of a model set on a manifest split, UI-free (the workbench only draws it).

    ev = evaluate_set(open_model_set("runs/mine"), "my_clips/manifest.csv", "test")
    accuracy_table(ev)            # top-1 / top-5 of fused, audio-only, video-only, Avg
    per_class(ev)                 # per-class accuracy side by side + what sound / picture add
    confusion(ev, "mmt"); cell_clips(ev, "mmt", true="dog", pred="cow")
    suspicious(ev)                # clips whose label, sound and picture disagree, with a reason
    neighbours(ev, 3, "cross")    # clips whose g_A lies nearest clip 3's g_V

`evaluate_set` runs every model of the set over the split once (run_eval, batched, with a
progress bar) and keeps per clip each model's probabilities and the embeddings (E_CLS^A,
E_CLS^V, the fused vector [E_CLS^V, E_CLS^A], and the AVC projections g_A / g_V: the fused
model's, or a unimodal model's own where there is no fused one). That is cached on disk as .npz
by (weights, manifest content, split, cap): a second open only reads the file. Everything else
here is a pure function of that Evaluation.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .model_set import ROLE_NAMES, ModelSet

CACHE_VERSION = 1  # bump when what the cache holds changes
SPACES = ("audio", "video", "fused", "audio_proj", "video_proj")
# What a row of the tables calls each model; "avg" is the mean of the two unimodal softmaxes.
MODEL_NAMES = {**ROLE_NAMES, "avg": "Avg"}
# Probabilities are floored here before taking logs: one model's 1e-9 should not outweigh the
# rest of the evidence (the log margin is then at most ln(1e4) ≈ 9.2 per model).
PROB_FLOOR = 1e-4
# Below this many clips the audit uses each model's probabilities as they are (no temperature).
MIN_CALIBRATION_CLIPS = 20


@dataclass
class AnalysisConfig:
    max_clips: int = 2000  # stratified cap: a bigger split is sampled per class (seeded)
    batch_size: int = 16  # clips per forward
    num_workers: int = 2  # DataLoader decode workers (0: decode in the main process)
    views: int = 0  # temporal views per clip; 0: each checkpoint's test_views
    seed: int = 0  # of the stratified sample
    cache_dir: str = ".cache/analysis"  # where the .npz of each (weights, manifest, split) goes
    progress: bool = True  # tqdm bars on stderr while the models run
    # models whose preprocessing matches decode each clip once for all of them (False: one
    # decoding pass per model, as before; the benchmark compares the two)
    share_decode: bool = True


@dataclass
class Evaluation:
    paths: list[str]  # (n,) clip paths, manifest order (after the cap)
    labels: np.ndarray  # (n,) int, index into classes
    classes: list[str]
    probs: dict[str, np.ndarray]  # role → (n, C) softmax (views averaged)
    embeds: dict[str, np.ndarray]  # space (SPACES) → (n, D)
    skipped: list[str] = field(default_factory=list)  # clips some model could not read
    total: int = 0  # clips of the split before the cap
    cached: bool = False  # read from the cache
    seconds: float = 0.0  # to compute (or to read)

    @property
    def roles(self) -> list[str]:
        """Models with probabilities, plus "avg" when both unimodal models are there."""
        roles = [r for r in ROLE_NAMES if r in self.probs]
        return roles + (["avg"] if {"audio", "video"} <= set(self.probs) else [])

    def probs_of(self, role: str) -> np.ndarray:
        if role == "avg":
            return (self.probs["audio"] + self.probs["video"]) / 2
        if role not in self.probs:
            raise UserError(f"this model set has no {MODEL_NAMES.get(role, role)} model "
                            f"(it has: {', '.join(MODEL_NAMES[r] for r in self.roles)})")
        return self.probs[role]


# ---------------------------------------------------------------- evaluation + cache

def split_records(ms: ModelSet, manifest, split: str):
    """The split's records with labels in the set's class order; one-line errors for a
    missing manifest / split / clip and for classes the set does not know."""
    from .data.manifests import read_manifest
    from .evaluation import _remap_labels

    man = read_manifest(manifest)
    if list(man.classes) != [ms.head]:
        raise UserError(f"{manifest}: heads {', '.join(man.classes)} do not match the model "
                        f"set's '{ms.head}'")
    records = [r for r in man.records if r.split == split]
    if not records:
        raise UserError(f"no clips of split '{split}' in {manifest} (splits: "
                        f"{', '.join(s or '(none)' for s in man.splits)})")
    missing = [r.path for r in records if not os.path.isfile(r.path)]
    if missing:
        raise UserError(f"{manifest}: {len(missing)} of {len(records)} '{split}' clips do not "
                        f"exist (first: {missing[0]})")
    return _remap_labels(records, man.classes, ms.classes)


def stratified_cap(labels, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `cap` items keeping each class's share (largest remainder;
    every present class keeps at least one item), drawn with `seed`."""
    labels = np.asarray(labels)
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * cap / n
    quota = np.maximum(np.floor(exact).astype(int), 1)
    for i in np.argsort(-(exact - np.floor(exact))):  # hand out what flooring left over
        if quota.sum() >= cap:
            break
        quota[i] += 1
    keep = [rng.choice(np.flatnonzero(labels == c), size=min(q, k), replace=False)
            for c, q, k in zip(classes, quota, counts)]
    return np.sort(np.concatenate(keep))


def records_hash(records) -> str:
    """Content hash of the clips evaluated: path, label, segment, and the file's size and
    mtime (a clip edited in place, e.g. a new audio track, is a new clip)."""
    h = hashlib.sha256()
    for r in records:
        st = os.stat(r.path)
        h.update(repr((r.path, sorted(r.labels.items()), r.start, r.end, st.st_size,
                       st.st_mtime_ns)).encode())
    return h.hexdigest()


def cache_path(ms: ModelSet, records, split: str, cfg: AnalysisConfig) -> Path:
    key = hashlib.sha256(repr((CACHE_VERSION, ms.weights_hash(), records_hash(records), split,
                               cfg.views)).encode()).hexdigest()[:24]
    return Path(cfg.cache_dir) / f"{split}-{key}.npz"


def decode_groups(ms: ModelSet, cfg: AnalysisConfig) -> list[list[str]]:
    """The set's roles grouped by how they take a clip (config.json's preprocessing and the
    views): each group decodes every clip once and runs all its models on it. The demo set is
    one group; cfg.share_decode=False gives each model its own pass (and its own decode)."""
    if not cfg.share_decode:
        return [[r] for r in ms.roles]
    groups: dict[str, list[str]] = {}
    for role in ms.roles:
        pre = ms.preprocessing(role)
        key = repr((sorted(pre.items()), cfg.views or pre.get("test_views") or 1))
        groups.setdefault(key, []).append(role)
    return list(groups.values())


def _run_group(roles: list[str], ms: ModelSet, records, cfg: AnalysisConfig) -> dict:
    """role → (probs (n', C), {space: (n', D)}) of the models in `roles`, which share their
    preprocessing, and the indices (n',) of the clips evaluated (broken ones are left out):
    one DataLoader decodes each clip once for all of them (the sum of their senses)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from . import checkpoint as ckpt
    from .data.dataset import AVDataset, collate_skip_broken
    from .evaluation import flatten_views, model_inputs, resolve_device, video_norm_of
    from .metrics import ensemble_views

    device = resolve_device("auto", 0)
    models = {}
    for role in roles:
        model, meta = ckpt.load_checkpoint(ms.models[role], device)
        models[role] = (model.eval(), meta)
    meta = models[roles[0]][1]
    senses = "".join(m for m in "av" if any(m in mo.modalities for mo, _ in models.values()))
    views = cfg.views or meta["preprocessing"].get("test_views") or 1
    ds = AVDataset(records, ms.classes, ckpt.data_config_from_meta(meta), train=False,
                   num_views=views, modalities=senses)
    norm = video_norm_of(ds)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.num_workers, collate_fn=collate_skip_broken,
                        generator=torch.Generator().manual_seed(0))
    probs: dict[str, list] = {r: [] for r in roles}
    chunks: dict[str, dict[str, list]] = {r: {} for r in roles}
    index: list = []
    desc = " + ".join(f"{MODEL_NAMES[r]} ({models[r][1]['model']})" for r in roles)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not cfg.progress, leave=False):
            if not batch or not batch.get("labels"):
                continue
            index.append(batch["index"])
            for role, (model, _) in models.items():
                inputs, v = flatten_views(model_inputs(batch, model.modalities, device,
                                                       video_norm=norm))
                with torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=device.type == "cuda"):
                    out = model(**inputs)
                logits = out.head_logits[ms.head].float()  # (B·V, C)
                probs[role].append(ensemble_views(logits.reshape(-1, v, logits.shape[-1])).cpu())
                spaces = {"audio": out.audio_embed, "video": out.video_embed,
                          "audio_proj": out.audio_proj, "video_proj": out.video_proj,
                          "fused": out.fused_embed if out.audio_embed is not None and
                          out.video_embed is not None else None}
                for sp, x in spaces.items():
                    if x is not None:  # views averaged: (B·V, D) → (B, D)
                        chunks[role].setdefault(sp, []).append(
                            x.float().reshape(-1, v, x.shape[-1]).mean(1).cpu())
    if not index:
        raise UserError(f"no clip could be evaluated ({len(records)} broken or unreadable)")
    idx = torch.cat(index).numpy()
    return {r: (torch.cat(probs[r]).numpy(), {sp: torch.cat(c).numpy()
                                              for sp, c in chunks[r].items()}, idx)
            for r in roles}


def evaluate_set(ms: ModelSet, manifest, split: str = "test",
                 cfg: AnalysisConfig | None = None) -> Evaluation:
    """Every model of `ms` on the split (capped), from the cache when it is there."""
    cfg = cfg or AnalysisConfig()
    t0 = time.perf_counter()
    records = split_records(ms, manifest, split)
    total = len(records)
    records = [records[i] for i in
               stratified_cap([r.labels[ms.head] for r in records], cfg.max_clips, cfg.seed)]
    path = cache_path(ms, records, split, cfg)
    if path.is_file():
        try:
            ev = load_evaluation(path)
            ev.cached, ev.seconds = True, time.perf_counter() - t0
            return ev
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is recomputed
    n = len(records)
    probs, embeds, seen = {}, {}, np.ones(n, bool)
    runs = {}
    for group in decode_groups(ms, cfg):
        runs.update(_run_group(group, ms, records, cfg))
    for role in ms.roles:
        p, e, idx = runs[role]
        full = np.full((n, p.shape[1]), np.nan, np.float32)
        full[idx] = p
        probs[role] = full
        mask = np.zeros(n, bool)
        mask[idx] = True
        seen &= mask
        for s, x in e.items():
            if s not in embeds:  # the fused model's spaces first, then what the others add
                embeds[s] = np.full((n, x.shape[1]), np.nan, np.float32)
                embeds[s][idx] = x
    ok = np.flatnonzero(seen)
    ev = Evaluation(paths=[records[i].path for i in ok],
                    labels=np.array([records[i].labels[ms.head] for i in ok], np.int64),
                    classes=list(ms.class_names), probs={r: p[ok] for r, p in probs.items()},
                    embeds={s: x[ok] for s, x in embeds.items()},
                    skipped=[records[i].path for i in np.flatnonzero(~seen)], total=total)
    save_evaluation(path, ev)
    ev.seconds = time.perf_counter() - t0
    return ev


def save_evaluation(path: Path, ev: Evaluation) -> None:
    """One .npz (no pickles), written to a temporary sibling and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"paths": np.array(ev.paths, dtype=str), "labels": ev.labels,
              "classes": np.array(ev.classes, dtype=str),
              "skipped": np.array(ev.skipped, dtype=str), "total": np.array(ev.total),
              **{f"probs_{r}": p for r, p in ev.probs.items()},
              **{f"embed_{s}": x for s, x in ev.embeds.items()}}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_evaluation(path: Path) -> Evaluation:
    with np.load(path, allow_pickle=False) as z:
        return Evaluation(paths=z["paths"].tolist(), labels=z["labels"],
                          classes=z["classes"].tolist(),
                          probs={k[6:]: z[k] for k in z.files if k.startswith("probs_")},
                          embeds={k[6:]: z[k] for k in z.files if k.startswith("embed_")},
                          skipped=z["skipped"].tolist(), total=int(z["total"]))


# ---------------------------------------------------------------- tables

def _topk(p: np.ndarray, y: np.ndarray, k: int) -> float:
    top = np.argsort(-p, axis=1)[:, :k]  # (n, k)
    return float((top == y[:, None]).any(1).mean()) if len(y) else 0.0


def accuracy_table(ev: Evaluation) -> dict:
    """role → {"name", "top1", "top5"} for fused, audio-only, video-only and Avg (those present)."""
    return {r: {"name": MODEL_NAMES[r], "top1": _topk(ev.probs_of(r), ev.labels, 1),
                "top5": _topk(ev.probs_of(r), ev.labels, 5)} for r in ev.roles}


def per_class(ev: Evaluation) -> list[dict]:
    """Per class: clip count, accuracy of each model, and what each sense adds to the other:
    "sound_adds" = fused − video-only, "picture_adds" = fused − audio-only (None without those)."""
    rows = []
    preds = {r: ev.probs_of(r).argmax(1) for r in ev.roles}
    for c, name in enumerate(ev.classes):
        sel = ev.labels == c
        row = {"class": name, "count": int(sel.sum())}
        for r, pr in preds.items():
            row[r] = float((pr[sel] == c).mean()) if sel.any() else None
        fused = row.get("mmt")
        for key, other in (("sound_adds", "video"), ("picture_adds", "audio")):
            row[key] = (fused - row[other] if fused is not None and row.get(other) is not None
                        else None)
        rows.append(row)
    return rows


def confusion(ev: Evaluation, role: str = "mmt") -> np.ndarray:
    """(C, C) counts, rows the label, columns `role`'s top prediction."""
    c = len(ev.classes)
    pred = ev.probs_of(role).argmax(1)
    return np.bincount(ev.labels * c + pred, minlength=c * c).reshape(c, c)


def _class_index(ev: Evaluation, name) -> int:
    if isinstance(name, (int, np.integer)):
        return int(name)
    if name not in ev.classes:
        raise UserError(f"unknown class '{name}' (classes: {', '.join(ev.classes)})")
    return ev.classes.index(name)


def clip_row(ev: Evaluation, i: int) -> dict:
    """One clip: path, label, and each model's top class with its probability."""
    row = {"index": int(i), "path": ev.paths[i], "label": ev.classes[ev.labels[i]]}
    for r in ev.roles:
        p = ev.probs_of(r)[i]
        row[r] = {"top": ev.classes[int(p.argmax())], "prob": float(p.max()),
                  "label_prob": float(p[ev.labels[i]])}
    return row


def cell_clips(ev: Evaluation, role: str, true, pred) -> list[dict]:
    """The clips of one confusion cell (label `true`, `role` predicts `pred`), most confident
    first."""
    t, p = _class_index(ev, true), _class_index(ev, pred)
    probs = ev.probs_of(role)
    idx = np.flatnonzero((ev.labels == t) & (probs.argmax(1) == p))
    idx = idx[np.argsort(-probs[idx, p], kind="stable")]
    return [clip_row(ev, i) for i in idx]


# ---------------------------------------------------------------- suspicious clips

def _usual_label_logp(lp_label: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) for clip i, the median of log p(label) over the other clips with clip i's label
    (0 = log 1 where it is alone). The median, not the mean: with a few clips per class, one
    other wrong label in the class would drag a mean down with it."""
    usual = np.zeros(len(y))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) > 1:
            for k, i in enumerate(idx):
                usual[i] = np.median(np.delete(lp_label[idx], k))
    return usual


def _evidence_against_label(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) one model's evidence that clip i is not what its label says: how much less likely
    it finds the label than it usually finds that class on the clips labelled with it,

        [usual_label_logp − log p(label)]+

    measured per class (confident learning's per-class thresholds, Northcutt et al. 2021), so a
    class the model never gets right does not flood the ranking."""
    lp = np.log(np.maximum(p[np.arange(len(y)), y], PROB_FLOOR))
    return np.maximum(_usual_label_logp(lp, y) - lp, 0.0)


def temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature T that makes softmax(log p / T) fit the labels y best (temperature
    scaling, Guo et al. 2017; one scalar, in [1/4, 16]). The few wrong labels an audit looks for
    barely move it; what it corrects is a model that is confidently wrong on many clips."""
    from scipy.optimize import minimize_scalar

    lp = np.log(np.maximum(p.astype(np.float64), 1e-12))

    def nll(log_t: float) -> float:
        z = lp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.25), np.log(16.0)),
                                        method="bounded").x))


def calibrated(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p recalibrated with `temperature` on the split itself; unchanged below
    MIN_CALIBRATION_CLIPS clips, where one temperature says little."""
    if len(y) < MIN_CALIBRATION_CLIPS:
        return p
    z = np.log(np.maximum(p.astype(np.float64), 1e-12)) / temperature(p, y)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def suspicious_scores(ev: Evaluation) -> np.ndarray:
    """(n,) how likely each clip's label is wrong, or its sound or picture does not fit it
    (docs/workbench.md, "Dataset analysis"). Each model's probabilities are first recalibrated
    on the split (`calibrated`), so a model that is often confidently wrong (a weak sense)
    counts for less:

        score = Σ over the set's models m of evidence_m   (`_evidence_against_label`)

    A flipped label scores on every model; a swapped sound on the audio-only model (and on the
    fused one where it follows the sound). Probabilities are floored at PROB_FLOOR (each term
    is at most ln(1/PROB_FLOOR) ≈ 9.2)."""
    y = ev.labels
    score = sum(_evidence_against_label(calibrated(p, y), y) for p in ev.probs.values())
    return np.asarray(score, np.float64)


def _says(p: np.ndarray, names: list[str], mass: float = 0.8, most: int = 3) -> list[str]:
    """The classes a model leaves open: most likely first, until they hold `mass` of the
    probability (at most `most`)."""
    order = np.argsort(-p, kind="stable")
    out, total = [], 0.0
    for c in order[:most]:
        out.append(names[int(c)])
        total += float(p[c])
        if total >= mass:
            break
    return out


def reason(ev: Evaluation, i: int) -> str:
    """Why clip i looks suspicious, in words: "the sound does not fit the label: audio says
    cow, picture says dog, fused says dog, label says dog" ("a or b" where a model leaves two
    or three classes open)."""
    label = ev.classes[ev.labels[i]]
    open_ = {r: _says(ev.probs[r][i], ev.classes) for r in ev.probs}
    says = {"audio": "audio says", "video": "picture says", "mmt": "fused says"}
    facts = ", ".join(f"{says[r]} {' or '.join(open_[r])}" for r in ("audio", "video", "mmt")
                      if r in open_)
    facts += f", label says {label}"
    fits = {r: label in names for r, names in open_.items()}
    if not any(fits.values()):
        verdict = ("every model disagrees with the label" if len(open_) > 1 else
                   f"the {ROLE_NAMES[next(iter(open_))]} model disagrees with the label")
    elif "audio" in fits and "video" in fits and fits["audio"] != fits["video"]:
        verdict = ("the sound does not fit the label" if fits["video"] else
                   "the picture does not fit the label")
    elif not fits.get("mmt", True):
        verdict = "the fused model disagrees with the label"
    elif "audio" in open_ and "video" in open_ and not set(open_["audio"]) & set(open_["video"]):
        verdict = "sound and picture disagree with each other"
    else:
        verdict = "the models agree with the label"
    return f"{verdict}: {facts}"


def suspicious(ev: Evaluation, top: int | None = None) -> list[dict]:
    """Clips by suspicious score, highest first: {"index", "path", "label", "score", "reason",
    "probs": {role: {class: p}}} (top: at most that many)."""
    score = suspicious_scores(ev)
    order = np.argsort(-score, kind="stable")[:top]
    return [{"index": int(i), "path": ev.paths[i], "label": ev.classes[ev.labels[i]],
             "score": round(float(score[i]), 4), "reason": reason(ev, i),
             "probs": {r: {c: round(float(p), 4) for c, p in zip(ev.classes, ev.probs_of(r)[i])}
                       for r in ev.roles}}
            for i in order]


# ---------------------------------------------------------------- neighbours

# Neighbour kinds → (the query clip's space, the space searched): "cross" looks for the clips
# whose sound embedding g_A lies nearest this clip's picture embedding g_V (the space AVC trains
# the two to share).
NEIGHBOUR_SPACES = {"audio": ("audio", "audio"), "video": ("video", "video"),
                    "fused": ("fused", "fused"), "cross": ("video_proj", "audio_proj")}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def neighbours(ev: Evaluation, i: int, kind: str = "fused", k: int = 8) -> list[dict]:
    """The k clips nearest clip i by cosine similarity ("audio": by sound, "video": by picture,
    "fused", "cross": g_A nearest this clip's g_V), clip i itself left out for the same-space
    kinds (in "cross" it is the answer when its own sound matches its picture)."""
    q_space, space = _neighbour_spaces(ev, kind)
    return neighbours_of(ev, ev.embeds[q_space][i], kind, k,
                         exclude=i if q_space == space else None)


def _neighbour_spaces(ev: Evaluation, kind: str) -> tuple[str, str]:
    if kind not in NEIGHBOUR_SPACES:
        raise UserError(f"unknown neighbour kind '{kind}' (choose from "
                        f"{', '.join(NEIGHBOUR_SPACES)})")
    q_space, space = NEIGHBOUR_SPACES[kind]
    if q_space not in ev.embeds or space not in ev.embeds:
        raise UserError(f"this model set has no '{kind}' embeddings (it has: "
                        f"{', '.join(ev.embeds)})")
    return q_space, space


def neighbours_of(ev: Evaluation, query: np.ndarray, kind: str = "fused", k: int = 8,
                  exclude: int | None = None) -> list[dict]:
    """The k clips of `ev` nearest `query` (a clip's embedding in kind's query space, e.g. a
    new clip's g_V for "cross"), by cosine similarity, leaving out clip `exclude`."""
    _, space = _neighbour_spaces(ev, kind)
    sims = _unit(ev.embeds[space]) @ _unit(np.asarray(query, np.float32))  # (n,)
    if exclude is not None:
        sims[exclude] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return [{**clip_row(ev, j), "similarity": float(sims[j])} for j in order]
