"""The paper's training objective as pure functions on tensors.

L = CE + λ1·AVC + λ2·(IMC_V + IMC_A)/2  (eq. 7), with λ1 = λ2 = `lambda_at(epoch, schedule)`.
AVC (eq. 3) and IMC (eq. 4) are supervised contrastive losses in the form of Khosla et al.:
every pair of the same class is a positive, not only the same instance. AL / IM-AL are the
instance-level (ALBEF / TCL style) counterparts the ablation compares against.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig
from .models.output import ModelOutput

Labels = Tensor | Mapping[str, Tensor]


def cross_entropy(head_logits: Mapping[str, Tensor], labels: Mapping[str, Tensor],
                  label_smoothing: float = 0.0) -> Tensor:
    """Mean over heads of each head's batch-mean cross-entropy (verb+noun stay on one scale)."""
    if not head_logits:
        raise ValueError("cross_entropy needs at least one head")
    missing = [h for h in head_logits if h not in labels]
    if missing:
        raise ValueError(f"no labels for head(s) {missing}; labels have {sorted(labels)}")
    losses = [F.cross_entropy(logits.float(), labels[h], label_smoothing=label_smoothing)
              for h, logits in head_logits.items()]
    return torch.stack(losses).mean()


def same_class(labels: Labels) -> Tensor:
    """(B, B) bool: True where samples i and j agree on every head (the positives)."""
    heads = [labels] if isinstance(labels, Tensor) else list(labels.values())
    if not heads:
        raise ValueError("labels are empty")
    pos = None
    for y in heads:
        if y.dim() != 1:
            raise ValueError(f"labels must be (B,) per head, got {tuple(y.shape)}")
        eq = y[:, None] == y[None, :]  # (B, B)
        pos = eq if pos is None else pos & eq
    return pos


def _contrast(x: Tensor, y: Tensor, pos: Tensor, tau: float) -> Tensor:
    """mean_i of −mean_{j∈P(i)} log softmax_j(x̂_i·ŷ_j / τ): one direction of the loss."""
    sim = F.normalize(x.float(), dim=-1) @ F.normalize(y.float(), dim=-1).T / tau  # (B, B)
    logp = sim.log_softmax(dim=1)
    pos = pos.to(logp.dtype)
    return (-(logp * pos).sum(1) / pos.sum(1)).mean()


def _symmetric(x: Tensor, y: Tensor, pos: Tensor, tau: float) -> Tensor:
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"expected two (B, D) projections of equal shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if pos.shape != (x.shape[0], x.shape[0]):
        raise ValueError(f"labels give {pos.shape[0]} samples, projections have {x.shape[0]}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return (_contrast(x, y, pos, tau) + _contrast(y, x, pos.T, tau)) / 2


def supervised_avc(audio_proj: Tensor, video_proj: Tensor, labels: Labels, tau: float = 0.07) -> Tensor:
    """Eq. 3: audio i vs all videos j, positives = same class; averaged audio→video, video→audio."""
    return _symmetric(audio_proj, video_proj, same_class(labels), tau)


def supervised_imc(proj_view1: Tensor, proj_view2: Tensor, labels: Labels, tau: float = 0.07) -> Tensor:
    """Eq. 4 for one modality: view 1 of clip i vs view 2 of all clips, positives = same class."""
    return _symmetric(proj_view1, proj_view2, same_class(labels), tau)


def instance_al(a: Tensor, v: Tensor, tau: float = 0.07) -> Tensor:
    """ALBEF-style audio-video contrastive: the only positive is the same clip (InfoNCE)."""
    return _symmetric(a, v, torch.eye(a.shape[0], dtype=torch.bool, device=a.device), tau)


def instance_imal(p1: Tensor, p2: Tensor, tau: float = 0.07) -> Tensor:
    """Instance-level intra-modal alignment between two views (TCL's IMC without labels)."""
    return _symmetric(p1, p2, torch.eye(p1.shape[0], dtype=torch.bool, device=p1.device), tau)


def lambda_at(epoch: int, schedule) -> float:
    """λ for a 1-based epoch from [[last_epoch, value], ..., [None, value]] (or a plain number).

    Past the last finite entry without a `None` entry, the last value holds.
    """
    if isinstance(schedule, (int, float)):
        return float(schedule)
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    if not schedule:
        raise ValueError("lambda_schedule is empty")
    for last, value in schedule:
        if last is None or epoch <= last:
            return float(value)
    return float(schedule[-1][1])


def compute_losses(out: ModelOutput, labels: Mapping[str, Tensor], *, cfg: LossConfig, epoch: int,
                   out2: ModelOutput | None = None, gather=None) -> dict[str, Tensor | float]:
    """Every active term, "lambda" (a float) and "total" = ce·cfg.ce + λ·(avc + al) + λ·(imc + imal).

    A term whose inputs are absent (one modality, no second view) is skipped, not an error.
    Late-fusion (`avg`) models carry `aux_logits`: CE goes on each modality's own heads (summed,
    so each branch gets the gradient it would get trained alone) instead of on their average.

    gather: rows of this process -> rows of the global batch (`distributed.row_gatherer`): the
    contrastive terms then contrast every clip of every rank, as the paper's batch of 64 on 8
    GPUs; CE stays per process (DDP averages it). The contrastive terms always run in float32
    with autocast off: bf16 similarities / τ = 0.07 lose the small differences the loss is about.
    """
    if out.aux_logits:
        ce = sum(cross_entropy(h, labels, cfg.label_smoothing) for h in out.aux_logits.values())
    else:
        ce = cross_entropy(out.head_logits, labels, cfg.label_smoothing)
    lam = lambda_at(epoch, cfg.lambda_schedule)
    terms: dict[str, Tensor | float] = {"ce": ce}
    if cfg.aux_ce > 0 and out.unimodal_logits:  # CE on E_CLS^V and E_CLS^A alone, averaged
        terms["aux_ce"] = torch.stack([cross_entropy(h, labels, cfg.label_smoothing)
                                       for h in out.unimodal_logits.values()]).mean()
    terms.update(_contrastive_terms(out, out2, labels, cfg, gather or (lambda x: x)))
    total = ce * cfg.ce
    if "aux_ce" in terms:
        total = total + cfg.aux_ce * terms["aux_ce"]
    for k in ("avc", "al", "imc", "imal"):
        if k in terms:
            total = total + lam * terms[k]
    terms["lambda"] = lam
    terms["total"] = total
    return terms


def _contrastive_terms(out: ModelOutput, out2: ModelOutput | None, labels, cfg: LossConfig,
                       gather) -> dict[str, Tensor]:
    """AVC / AL between the modalities of `out`, IMC / IM-AL between the views `out` and `out2`,
    on the gathered (global) batch, in float32."""
    wanted = (cfg.avc or cfg.al, cfg.imc or cfg.imal)
    if not any(wanted):
        return {}

    def proj(o: ModelOutput | None, m: str) -> Tensor | None:
        x = getattr(o, f"{m}_proj") if o is not None else None
        return gather(x.float()) if x is not None else None

    terms: dict[str, Tensor] = {}
    with torch.autocast(out.head_logits[next(iter(out.head_logits))].device.type, enabled=False):
        a, v = proj(out, "audio"), proj(out, "video")
        y = {h: gather(t) for h, t in labels.items()}
        if wanted[0] and a is not None and v is not None:
            if cfg.avc:
                terms["avc"] = supervised_avc(a, v, y, cfg.tau)
            if cfg.al:
                terms["al"] = instance_al(a, v, cfg.tau)
        if wanted[1] and out2 is not None:
            # (IMC_V + IMC_A) / 2, or the one modality present.
            pairs = [(p1, proj(out2, m)) for m, p1 in (("video", v), ("audio", a)) if p1 is not None]
            pairs = [(p1, p2) for p1, p2 in pairs if p2 is not None]
            if cfg.imc and pairs:
                terms["imc"] = torch.stack([supervised_imc(p1, p2, y, cfg.tau) for p1, p2 in pairs]).mean()
            if cfg.imal and pairs:
                terms["imal"] = torch.stack([instance_imal(p1, p2, cfg.tau) for p1, p2 in pairs]).mean()
    return terms
