"""Which "unlike the training data" detector, per sense: AUROC, FPR at 95 % TPR and flag rates of
many detectors on the same clips, for the three demo models. Prints JSON.

    python scripts/ood_devsets.py --out /work/data_ood          # the clips (out of git)
    python benchmarks/bench_ood.py --data /work/data_ood [--models mmt_tiny,...] > results.json

Reference: the built-in clips of seed 2002 (DATA/ref_s2002, 300 clips; the MMT also
DATA/ref_clutter_s2002, 150 cluttered ones), what scripts/build_ood.py ships.
In-distribution: DATA/synth_s3003 (choose) and DATA/synth_s4004 (held out). Out-of-distribution:
the kinds of group "select" (choose) and "heldout" (only reported), DATA/kinds.json.

Features per sense, from one forward with hooks: "embed" (E_CLS half, what the shipped k-NN
used), "raw" (E_CLS unnormalised), "layerI" (token mean of encoder block I), "stats" (input
statistics, mmt_core.ood.video_stats / audio_stats), "logits" (this sense's share of the head's
logits: W[:, half] e_half + b / 2; the whole logits for one-sense models). Scorers: k-NN,
Mahalanobis (one Gaussian), class-conditional and relative Mahalanobis (the reference's labels),
energy and ViM (on the head). A detector's threshold is the 99th percentile of the reference's
out-of-fold scores, as shipped; "flag" rates use it. Features are cached in DATA/feats_MODEL.npz.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmt_core import ood  # noqa: E402

DEMO = ("mmt_tiny", "mat_tiny", "mvit_tiny_video")
REF = "ref"  # the merged reference of a model (REFS)
# Each model's reference: built-in clips of seed 2002, plus cluttered ones for the MMT (its last
# epoch trained on `mmt synth --clutter` clips); scripts/build_ood.py ships the same.
REFS = {"mmt_tiny": ("ref_s2002", "ref_clutter_s2002")}
ALL_REFS = ("ref_s2002", "ref_clutter_s2002")


# ------------------------------------------------------------------------------ features

@torch.inference_mode()
def extract(ck: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    """{"sense/feature": (n, D)} of clips (centre view), hooks on every encoder block."""
    from mmt_core.checkpoint import load_checkpoint
    from mmt_core.inference import prepare_clip

    model, meta = load_checkpoint(ck, "cpu")
    model.eval()
    taps: dict[str, torch.Tensor] = {}
    for sense in ("audio", "video"):
        enc = getattr(model, sense, None)
        for i, blk in enumerate(enc.blocks if enc is not None else []):
            blk.register_forward_hook(
                lambda mod, inp, out, key=f"{sense}/layer{i}": taps.__setitem__(key, out.mean(1)))
    heads = getattr(model, "heads", None)
    W = next(iter(heads.values())) if heads is not None else None
    rows: dict[str, list] = {}
    for p in paths:
        inputs = prepare_clip(p, meta, views=1)["inputs"]
        out = model(**inputs)
        feats = ood.clip_features(out, inputs)
        dv = out.video_embed.shape[1] if out.video_embed is not None else 0
        for s, fs in feats.items():
            raw = (out.video_embed if s == "video" else out.audio_embed).float()
            part = slice(0, dv) if s == "video" else slice(dv, None)
            two = out.video_embed is not None and out.audio_embed is not None
            logits = raw @ W.weight[:, part].T + W.bias / (2 if two else 1)
            for name, x in {**fs, "raw": raw.numpy(), "logits": logits.numpy()}.items():
                rows.setdefault(f"{s}/{name}", []).append(np.asarray(x, np.float32))
        for key, x in taps.items():
            rows.setdefault(key, []).append(x.float().numpy())
        rows.setdefault("all/logits", []).append(out.logits.float().numpy())
        taps.clear()
    out = {k: np.concatenate(v) for k, v in rows.items()}
    if W is not None:
        out["head/weight"], out["head/bias"] = W.weight.numpy(), W.bias.numpy()
    return out


def load_features(data: Path, model: str, kinds: list[str]) -> dict[str, dict[str, np.ndarray]]:
    cache = data / f"feats_{model}.npz"
    have = dict(np.load(cache, allow_pickle=False)) if cache.is_file() else {}
    changed = False
    for kind in [*ALL_REFS, *kinds]:
        if f"{kind}|n" in have:
            continue
        folder = data / kind / ("ood" if kind in ALL_REFS else "")
        paths = sorted(folder.glob("*.mp4"))
        t0 = time.time()
        f = extract(ROOT / "checkpoints" / model, paths)
        print(f"{model} {kind}: {len(paths)} clips {time.time() - t0:.0f} s", file=sys.stderr)
        for key, x in f.items():
            have[f"{kind}|{key}"] = x
        have[f"{kind}|n"] = np.array(len(paths))
        if kind in ALL_REFS:
            have[f"{kind}|labels"] = np.array([json.loads(p.with_suffix(".json").read_text())
                                               ["label"] for p in paths])
        changed = True
    if changed:
        np.savez(cache, **have)
    by: dict[str, dict[str, np.ndarray]] = {}
    for key, x in have.items():
        kind, name = key.split("|")
        by.setdefault(kind, {})[name] = x
    refs = [by[r] for r in REFS.get(model, ALL_REFS[:1])]
    by[REF] = {key: (np.concatenate([r[key] for r in refs]) if not key.startswith("head/")
                     and key != "n" else refs[0][key]) for key in refs[0]}
    return by


# ------------------------------------------------------------------------------ scorers

def _gauss(x, labels=None):
    """Class means (or one mean) and a shared shrunk precision on standardised x."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    labs = np.zeros(len(z), int) if labels is None else labels
    means = np.stack([z[labs == c].mean(0) for c in np.unique(labs)])
    cen = z - means[np.searchsorted(np.unique(labs), labs)]
    cov = np.cov(cen, rowvar=False).reshape(z.shape[1], z.shape[1])
    cov = (1 - ood.SHRINK) * cov + ood.SHRINK * np.diag(np.diag(cov)) + 1e-3 * np.eye(len(cov))
    return mu, sd, means, np.linalg.inv(cov)


def _maha(state, x):
    mu, sd, means, prec = state
    z = (x - mu) / sd
    d = z[:, None] - means[None]  # (n, C, D)
    return np.einsum("ncd,de,nce->nc", d, prec, d)


class CondMaha:  # class-conditional Mahalanobis (Lee et al. 2018), reference labels
    def fit(self, x, labels, extra):
        return _gauss(x, labels)

    def score(self, st, x, extra):
        return _maha(st, x).min(1)


class RelMaha:  # relative Mahalanobis (Ren et al. 2021): class-conditional minus background
    def fit(self, x, labels, extra):
        return _gauss(x, labels), _gauss(x)

    def score(self, st, x, extra):
        return _maha(st[0], x).min(1) - _maha(st[1], x)[:, 0]


class Shipped:  # ood.SCORERS[name] (k-NN, one-Gaussian Mahalanobis)
    def __init__(self, name):
        self.s = ood.SCORERS[name]

    def fit(self, x, labels, extra):
        return self.s.fit(x)

    def score(self, st, x, extra):
        return self.s.score(st, x)


class Energy:  # Liu et al. 2020: -logsumexp(logits)
    def fit(self, x, labels, extra):
        return None

    def score(self, st, x, extra):
        return -np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) - x.max(1)


class ViM:  # Wang et al. 2022 on the raw embedding, the head (W, b) and the reference's subspace
    def fit(self, x, labels, extra):
        w, b, logits = extra["W"], extra["b"], extra["logits_of"](x)
        u = -np.linalg.pinv(w) @ b
        c = x - u
        dim = min(c.shape[1] // 2, max(1, c.shape[1] - w.shape[0]))
        _, _, vt = np.linalg.svd(c - 0 * c.mean(0), full_matrices=False)
        ns = vt[dim:].T  # (D, D - dim): the residual space
        alpha = logits.max(1).mean() / np.linalg.norm(c @ ns, axis=1).mean()
        return u, ns, alpha

    def score(self, st, x, extra):
        u, ns, alpha = st
        v = alpha * np.linalg.norm((x - u) @ ns, axis=1)
        lg = extra["logits_of"](x)
        m = np.maximum(lg.max(1), v)
        return v - (m + np.log(np.exp(lg - m[:, None]).sum(1) + np.exp(v - m)))


def oof(scorer, x, labels, extra, folds=ood.FOLDS):
    n = len(x)
    fold = np.arange(n) % folds
    out = np.empty(n)
    for f in range(folds):
        held = fold == f
        out[held] = scorer.score(scorer.fit(x[~held], labels[~held], extra), x[held], extra)
    return out


# ------------------------------------------------------------------------------ metrics

def auroc(neg, pos):
    """P(score of an OOD clip > score of an ID clip), ties half."""
    s = np.concatenate([neg, pos])
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks of ties
        t = s == v
        ranks[t] = ranks[t].mean()
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def fpr95(neg, pos):
    """ID clips past the threshold that flags 95 % of the OOD clips."""
    return float((neg >= np.quantile(pos, 0.05)).mean())


def detectors(senses: list[str], layers: dict[str, list[str]], two: bool):
    """name -> {sense: [(scorer, feature)]}: single members per sense, plus ensembles."""
    single = {"knn(embed)": (Shipped("knn"), "embed"), "maha(embed)": (Shipped("maha"), "raw"),
              "condmaha(embed)": (CondMaha(), "raw"), "relmaha(embed)": (RelMaha(), "raw"),
              "energy": (Energy(), "logits"), "vim": (ViM(), "raw"),
              "knn(stats)": (Shipped("knn"), "stats"), "maha(stats)": (Shipped("maha"), "stats"),
              "relmaha(stats)": (RelMaha(), "stats")}
    out = {name: {s: [m] for s in senses} for name, m in single.items()}
    for s in senses:
        for layer in layers[s]:
            out.setdefault(f"knn({layer})", {})[s] = [(Shipped("knn"), layer)]
            out.setdefault(f"maha({layer})", {})[s] = [(Shipped("maha"), layer)]
    for a, b in (("knn(embed)", "maha(stats)"), ("knn(embed)", "knn(stats)"),
                 ("maha(embed)", "maha(stats)"), ("vim", "maha(stats)")):
        out[f"{a} + {b}"] = {s: [single[a], single[b]] for s in senses}
    return out


def evaluate(by: dict, kinds: dict, model: str) -> dict:
    ref = by[REF]
    senses = [s for s in ("audio", "video") if f"{s}/embed" in ref]
    layers = {s: sorted({k.split("/")[1] for k in ref if k.startswith(f"{s}/layer")},
                        key=lambda n: int(n[5:])) for s in senses}
    W, b = ref.get("head/weight"), ref.get("head/bias")
    labels = ref["labels"]
    res = {}
    for name, det in detectors(senses, layers, len(senses) == 2).items():
        row: dict = {}
        ratios: dict[str, dict[str, np.ndarray]] = {}  # kind -> sense -> (n,) in threshold units
        for s in senses:
            dv = ref["video/raw"].shape[1] if "video/raw" in ref and len(senses) == 2 else 0
            part = slice(0, dv) if s == "video" else slice(dv, None)
            extra = {}
            if W is not None:
                ws = W[:, part] if len(senses) == 2 else W
                bs = b / (2 if len(senses) == 2 else 1)
                extra = {"W": ws, "b": bs, "logits_of": lambda x, ws=ws, bs=bs: x @ ws.T + bs}
            per_member = []
            for scorer, feat in det[s]:
                x = ref[f"{s}/{feat}"].astype(np.float64)
                o = oof(scorer, x, labels, extra)
                med, thr = np.median(o), np.quantile(o, ood.QUANTILE)
                st = scorer.fit(x, labels, extra)
                per_member.append({k: (scorer.score(st, by[k][f"{s}/{feat}"].astype(np.float64),
                                                    extra) - med) / max(thr - med, 1e-9)
                                   for k in kinds})
            for k in kinds:
                ratios.setdefault(k, {})[s] = np.max([m[k] for m in per_member], 0)
        for s in [*senses, "combined"]:
            get = (lambda k: np.max(list(ratios[k].values()), 0)) if s == "combined" else \
                (lambda k, s=s: ratios[k][s])
            r = {}
            for split, id_kind, group in (("select", "synth_s3003", "select"),
                                          ("heldout", "synth_s4004", "heldout")):
                if not any(v["group"] == group for v in kinds.values()):
                    continue
                neg = get(id_kind)
                pos = np.concatenate([get(k) for k, v in kinds.items() if v["group"] == group])
                r[split] = {"auroc": round(auroc(neg, pos), 4), "fpr95": round(fpr95(neg, pos), 4),
                            "id_flagged": round(float((neg > 1).mean()), 4),
                            "ood_flagged": round(float((pos > 1).mean()), 4)}
            row[s] = r
        row["flagged_by_kind"] = {k: round(float((np.max(list(ratios[k].values()), 0) > 1)
                                                 .mean()), 3) for k in kinds}
        res[name] = row
    return res


SHIPPABLE = {  # member sets of mmt_core.ood's detector, fitted and scored exactly as shipped
    "maha(stats)": (("maha", "stats"),), "knn(stats)": (("knn", "stats"),),
    "knn(embed)": (("knn", "embed"),), "maha(embed)": (("maha", "embed"),),
    "knn(embed) + maha(stats)": (("knn", "embed"), ("maha", "stats")),
    "maha(embed) + maha(stats)": (("maha", "embed"), ("maha", "stats")),
}


def rates(neg, pos):
    return {"auroc": round(auroc(neg, pos), 4), "fpr95": round(fpr95(neg, pos), 4)}


def evaluate_shipped(by: dict, kinds: dict) -> dict:
    """mmt_core.ood.fit on the reference, per-sense / combined AUROC and flag rates at the
    shipped threshold (score > 1)."""
    ref = by[REF]
    senses = [s for s in ("audio", "video") if f"{s}/embed" in ref]
    feats = {k: {s: {f: by[k][f"{s}/{f}"] for f in ("embed", "stats")} for s in senses}
             for k in [REF, *kinds]}
    out = {}
    for name, members in SHIPPABLE.items():
        fitted = ood.fit(feats[REF], members=members)
        score = {k: {s: ood.sense_scores(feats[k][s], fitted["senses"][s])[0]
                     / fitted["thresholds"][s] for s in senses} for k in kinds}
        row = {}
        for s in [*senses, "combined"]:
            get = (lambda k: np.max(list(score[k].values()), 0)) if s == "combined" else \
                (lambda k, s=s: score[k][s])
            row[s] = {}
            for split, id_kind in (("select", "synth_s3003"), ("heldout", "synth_s4004")):
                pos = np.concatenate([get(k) for k, v in kinds.items() if v["group"] == split])
                row[s][split] = rates(get(id_kind), pos)
        flag = {k: round(float((np.max(list(score[k].values()), 0) > 1).mean()), 3)
                for k in kinds}
        row["flagged"] = {g: round(float(np.mean(np.concatenate(
            [np.max(list(score[k].values()), 0) > 1 for k, v in kinds.items()
             if v["group"] == g]))), 4) for g in ("id", "id_extra", "select", "heldout")}
        row["flagged_by_kind"] = flag
        comb = {g: np.concatenate([np.max(list(score[k].values()), 0) for k, v in kinds.items()
                                   if v["group"] == g]) for g in ("id", "select", "heldout")}
        row["combined_score"] = {  # in threshold units: the margin between the two sides
            "id_p50_p95_max": [round(float(np.quantile(comb["id"], q)), 2) for q in (.5, .95, 1)],
            **{f"{g}_min_p5_p50": [round(float(np.quantile(comb[g], q)), 2) for q in (0, .05, .5)]
               for g in ("select", "heldout")}}
        out[name] = row
    return out


def taught_like(by: dict, sizes=(6, 12, 20)) -> dict:
    """A taught model's situation: the reference is N real clips (instruments_two, a fixed draw),
    and flag rates on the other instruments_two clips (should pass), the other instruments
    regime, fresh built-in clips and photographs (should be flagged)."""
    senses = [s for s in ("audio", "video") if f"{s}/embed" in by[REF]]
    order = np.random.default_rng(0).permutation(by["instruments_two"]["n"].item())
    out = {}
    for name in ("maha(stats)", "knn(embed)"):
        members = SHIPPABLE[name]
        for n in sizes:
            ref, rest = order[:n], order[n:]
            feats = lambda k, sel=slice(None): {s: {f: by[k][f"{s}/{f}"][sel] for f in
                                                    ("embed", "stats")} for s in senses}
            fitted = ood.fit(feats("instruments_two", ref), members=members)

            def flagged(f):
                r = [ood.sense_scores(f[s], fitted["senses"][s])[0] / fitted["thresholds"][s]
                     for s in senses]
                return round(float((np.max(r, 0) > 1).mean()), 3)

            out[f"{name}, {n} reference clips"] = {
                "instruments_two (rest)": flagged(feats("instruments_two", rest)),
                "instruments_one_snr0": flagged(feats("instruments_one_snr0")),
                "synth_s3003": flagged(feats("synth_s3003")),
                "photo_recording": flagged(feats("photo_recording"))}
    return out


@torch.inference_mode()
def check_cost(model: str, clip: Path, repeats: int = 20) -> dict:
    """Milliseconds the shipped check adds to one prediction: the input statistics and the
    scoring (the embedding comes from the forward the prediction runs anyway)."""
    from mmt_core.checkpoint import load_checkpoint
    from mmt_core.inference import prepare_clip

    net, meta = load_checkpoint(ROOT / "checkpoints" / model, "cpu")
    inputs = prepare_clip(clip, meta, views=1)["inputs"]
    out = net.eval()(**inputs)
    ref = ood.load(ROOT / "checkpoints" / model)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ood.score(ood.mean_views(ood.clip_features(out, inputs)), ref)
        times.append(time.perf_counter() - t0)
    return {"method": ref["method"], "median_ms": round(1000 * float(np.median(times)), 2),
            "max_ms": round(1000 * float(np.max(times)), 2)}


def markdown(res: dict) -> str:
    """docs/ood.md's tables from this script's JSON: per model and detector, AUROC / FPR@95%TPR
    per sense and combined on the chosen-on (select) and held-out kinds."""
    lines = []
    for model, r in res["models"].items():
        rows = {**r["detectors"], **{f"shipped: {k}": v for k, v in r["shippable"].items()}}
        senses = [s for s in ("audio", "video", "combined") if s in next(iter(rows.values()))]
        lines += [f"\n**{model}** (AUROC / FPR@95%TPR; select kinds | held-out kinds)\n",
                  "| detector | " + " | ".join(senses) + " |",
                  "|---|" + "---|" * len(senses)]
        for name, row in rows.items():
            cells = [f"{row[s]['select']['auroc']:.3f} / {row[s]['select']['fpr95']:.2f} \\| "
                     f"{row[s]['heldout']['auroc']:.3f} / {row[s]['heldout']['fpr95']:.2f}"
                     for s in senses]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", default=None, metavar="RESULTS.json",
                   help="print the tables of docs/ood.md from an earlier run's JSON and stop")
    p.add_argument("--data", default="/work/data_ood")
    p.add_argument("--models", default=",".join(DEMO))
    p.add_argument("--detectors", default="", help="comma-separated names to print (all)")
    a = p.parse_args()
    if a.markdown:
        print(markdown(json.loads(Path(a.markdown).read_text())))
        return
    data = Path(a.data)
    kinds = {k: v for k, v in json.loads((data / "kinds.json").read_text()).items()
             if v["clips"]}
    torch.set_num_threads(1)
    out = {"reference": {m: [f"DATA/{r}" for r in REFS.get(m, ALL_REFS[:1])] for m in DEMO},
           "kinds": {k: v["clips"] for k, v in kinds.items()}, "models": {}}
    for model in a.models.split(","):
        by = load_features(data, model, list(kinds))
        res = evaluate(by, kinds, model)
        if a.detectors:
            res = {k: v for k, v in res.items() if k in a.detectors.split(",")}
        out["models"][model] = {"detectors": res, "shippable": evaluate_shipped(by, kinds),
                                "taught_like": taught_like(by),
                                "check_cost_cpu_1thread": check_cost(
                                    model, sorted((data / "instruments_two").glob("*.mp4"))[0])}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
