"""Few-clip pooling: what a checkpoint adds when it was trained on only a few clips per class.

    train = own_data.collect_pool_inputs(model, train_set)    # network log-probs, descriptors
    pool = fit_pool(model.modalities, train, val, classes, (video_mean, video_std))
    save_pool(checkpoint_dir, pool)       # CHECKPOINT/fewshot.safetensors
    load_checkpoint(dir)                  # attaches it: every eval forward without gradients
                                          # returns the pooled log-probabilities
    (own_data.fit_run_pool does all of it for a run's checkpoint.)

A Transformer fine-tuned on six clips per class learns them by heart (training accuracy 100 %)
and, on real recordings it has not seen, can stay near chance (docs/fewshot.md). Two fixed,
training-free descriptors of a clip carry much of what so few clips can teach:
- picture: a joint colour histogram of all the frames (8 x 8 x 8 RGB bins, square-rooted, i.e.
  the Hellinger map), blind to where an object is and how large (Swain & Ballard's colour
  indexing);
- sound: the shape of the long-term spectrum, each mel band's mean level over the window minus
  the clip's mean level (blind to how loud the recording is).
A probe per sense (multinomial logistic regression on the standardised descriptor) and the
network's own logits are pooled log-linearly (a weighted product of experts),

    log p(c | clip) = sum_k w_k log p_k(c | clip) + const,

each weight the square root of the expert's skill over chance on clips it has not seen,
w = sqrt((top-1 - 1/C) / (1 - 1/C)), and 0 unless that top-1 beats chance (binomial test): out
of fold over the training and validation clips for the probes (they are cheap to refit), the
validation split for the network (which has seen the training clips). The square root narrows
the gap between the experts' weights: out of fold on clips cut from the same recordings, the
expert that learns a recording's fingerprint (the sound's long-term spectrum) looks better than
it is on the recordings' later parts. An expert's confidence is left as it is. Weights
fitted to each expert's out-of-sample log-likelihood (temperatures) were tried first: they
squashed useful but overconfident probes (a colour probe right on 48 % of held-out clips got
w = 0.05), and equal votes let a weak picture probe outvote the sound where the picture cannot
tell (docs/fewshot.md). The pool only acts in eval mode without gradients: training, the
explainers and the checkpoint's weights are unchanged, and a checkpoint without the file behaves
as before.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

POOL_FILE = "fewshot.safetensors"
BINS = 8  # per colour channel: 512 joint bins
FOLDS = 5  # out-of-fold predictions of the probes (leave-one-out below that many clips)
L2 = 1e-2  # probe weight decay (on standardised descriptors): few clips, many dimensions
SIGNIFICANCE = 0.05  # an expert votes only when its out-of-sample top-1 beats chance at this level
SENSES = {"a": ("audio",), "v": ("video",), "av": ("audio", "video")}


# ------------------------------------------------------------------------------ descriptors

def video_descriptor(video: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, T, S, S) normalised (or uint8) frames → (B, 512) square-rooted joint colour
    histogram of all the frames' pixels."""
    x = video.detach().float()
    if video.dtype == torch.uint8:
        x = x / 255.0
    else:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1, 1)
        x = x * s + m  # back to [0, 1]
    q = (x.clamp(0, 1) * BINS).clamp(max=BINS - 1e-3).floor().long()  # (B, 3, T, S, S)
    code = (q[:, 0] * BINS + q[:, 1]) * BINS + q[:, 2]  # (B, T, S, S)
    code = code.flatten(1)  # (B, T*S*S)
    hist = torch.zeros(code.shape[0], BINS ** 3, device=x.device).scatter_add_(
        1, code, torch.ones_like(code, dtype=torch.float32))
    return (hist / code.shape[1]).sqrt()


def audio_descriptor(audio: torch.Tensor) -> torch.Tensor:
    """(B, 1, F, N) normalised log-mel fbank → (B, F): the long-term spectrum's shape, each
    band's mean level minus the clip's mean level, so a louder or quieter recording of the same
    source matches. (Adding each band's spread over time fitted the training recordings' dynamics
    and fell from 85 % to 15 % top-1 on held-out excerpts of unnormalised recordings,
    docs/fewshot.md.)"""
    x = audio.detach().float()[:, 0]  # (B, F, N)
    band = x.mean(-1)  # (B, F)
    return band - band.mean(1, keepdim=True)


def descriptors(inputs: dict, video_norm) -> dict[str, torch.Tensor]:
    """{sense: (B, D)} of the model inputs present."""
    out = {}
    if inputs.get("audio") is not None:
        out["audio"] = audio_descriptor(inputs["audio"])
    if inputs.get("video") is not None:
        out["video"] = video_descriptor(inputs["video"], *video_norm)
    return out


# ------------------------------------------------------------------------------ probes

def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = L2) -> dict:
    """Multinomial logistic regression on standardised x (n, D): {"mean", "std", "weight",
    "bias"}; L-BFGS to convergence (a convex problem, so the same answer every time)."""
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-4) if len(x) > 1 else torch.ones(x.shape[1])
    z = (x - mean) / std
    w = torch.zeros(classes, x.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return {"mean": mean, "std": std, "weight": w.detach(), "bias": b.detach()}


def probe_logits(probe: dict, x: torch.Tensor) -> torch.Tensor:
    return ((x - probe["mean"]) / probe["std"]) @ probe["weight"].T + probe["bias"]


def out_of_fold(x: torch.Tensor, y: torch.Tensor, classes: int, folds: int = FOLDS
                ) -> torch.Tensor:
    """(n, C) log-probabilities of each row under a probe fitted on the other folds (folds
    interleave within each class, so every fold keeps every class)."""
    n = len(y)
    folds = min(folds, n)
    fold = torch.empty(n, dtype=torch.long)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        fold[idx] = torch.arange(len(idx)) % folds
    out = torch.empty(n, classes)
    for f in range(folds):
        held = fold == f
        if held.any():
            out[held] = probe_logits(fit_probe(x[~held], y[~held], classes), x[held]
                                     ).log_softmax(-1)
    return out


def expert_weight(logp: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """An expert's vote from its out-of-sample predictions: the square root of its skill over
    chance, kappa = (top-1 - 1/C) / (1 - 1/C) (Cohen's kappa for a uniform guess), when that
    top-1 beats chance (one-sided binomial test at SIGNIFICANCE), else 0. Its confidence is left
    as it is."""
    from scipy.stats import binom

    n, hits = len(y), int((logp.argmax(1) == y).sum())
    if not n or binom.sf(hits - 1, n, 1.0 / classes) >= SIGNIFICANCE:
        return 0.0
    return round(((hits / n - 1.0 / classes) / (1.0 - 1.0 / classes)) ** 0.5, 4)


# ------------------------------------------------------------------------------ the pool

class Pool:
    """The fitted pool of one checkpoint: probes per sense, a weight per expert."""

    def __init__(self, probes: dict, weights: dict, video_norm, report: dict | None = None):
        self.probes, self.weights, self.video_norm = probes, weights, tuple(video_norm)
        self.report = report or {}

    def logits(self, net_logits: torch.Tensor, inputs: dict) -> torch.Tensor:
        """(B, C) pooled log-probabilities from the network's logits and its inputs."""
        out = self.weights["net"] * net_logits.float().log_softmax(-1)
        voting = {s: inputs.get(s) for s in self.probes if self.weights.get(s, 0.0) > 0}
        for sense, x in descriptors(voting, self.video_norm).items():  # only the senses that vote
            # the probes stay on the CPU (the pool is not a module: model.to() leaves it)
            out = out + self.weights[sense] * probe_logits(
                self.probes[sense], x.float().cpu()).log_softmax(-1).to(out.device)
        return out.log_softmax(-1)

    def hook(self, module, args, kwargs, output):
        """forward hook: the "label" head pooled in eval mode without gradients (predictions).
        Training, and explanations (which need gradients), see the network alone."""
        if module.training or torch.is_grad_enabled() or "label" not in output.head_logits:
            return output
        output.head_logits["label"] = self.logits(output.head_logits["label"], kwargs).to(
            output.head_logits["label"].dtype)
        return output


def fit_pool(modalities: str, train: dict, val: dict, classes: int, video_norm) -> Pool:
    """Probes on the train + val descriptors, and a weight per expert from its out-of-sample
    predictions (`expert_weight`): out-of-fold over train + val for a probe, val for the
    network (kept when there is no val). Takes `own_data.collect_pool_inputs` outputs:
    {"logp": (n, C) network log-probs, "y": (n,), sense: (n, D) descriptors}."""
    n_val = int(len(val.get("y", [])))
    weights = {"net": expert_weight(val["logp"], val["y"], classes) if n_val else 1.0}
    probes, report = {}, {"val_clips": n_val}
    y = torch.cat([train["y"], val["y"]]) if n_val else train["y"]
    for sense in SENSES[modalities]:
        x = torch.cat([train[sense], val[sense]]) if n_val else train[sense]
        oof = out_of_fold(x, y, classes)
        weights[sense] = expert_weight(oof, y, classes)
        probes[sense] = fit_probe(x, y, classes)
        report[f"{sense}_oof_top1"] = round(float((oof.argmax(1) == y).float().mean()), 4)
    if n_val:
        report["net_val_top1"] = round(float((val["logp"].argmax(1) == val["y"]).float().mean()), 4)
    if not any(weights.values()):  # nothing beats chance: the network, as trained
        weights["net"] = 1.0
    return Pool(probes, weights, video_norm, report)


def save_pool(checkpoint_dir, pool: Pool) -> Path:
    """CHECKPOINT/fewshot.safetensors (probe tensors; weights and report as metadata),
    written to a temporary sibling and renamed into place."""
    from safetensors.torch import save_file

    tensors = {f"{s}.{k}": v.contiguous() for s, p in pool.probes.items() for k, v in p.items()}
    meta = {"weights": json.dumps(pool.weights), "video_norm": json.dumps(pool.video_norm),
            "report": json.dumps(pool.report)}
    path = Path(checkpoint_dir) / POOL_FILE
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_pool(checkpoint_dir) -> Pool | None:
    """The checkpoint's pool, or None when it has none."""
    from safetensors import safe_open

    path = Path(checkpoint_dir) / POOL_FILE
    if not path.is_file():
        return None
    probes: dict[str, dict] = {}
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            for key in f.keys():
                sense, name = key.split(".", 1)
                probes.setdefault(sense, {})[name] = f.get_tensor(key)
        return Pool(probes, json.loads(meta["weights"]), json.loads(meta["video_norm"]),
                    json.loads(meta.get("report", "{}")))
    except Exception as e:  # safetensors and json errors come in many types
        raise ValueError(f"{path} is unreadable ({type(e).__name__})") from None


def attach(model, pool: Pool | None):
    """Pool `model`'s eval-mode "label" logits (a no-op for None); returns the model."""
    if pool is not None:
        model.register_forward_hook(pool.hook, with_kwargs=True)
    return model
