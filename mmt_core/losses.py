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


def _imc_terms(out: ModelOutput, out2: ModelOutput, fn) -> list[Tensor]:
    return [fn(getattr(out, f"{m}_proj"), getattr(out2, f"{m}_proj"))
            for m in ("video", "audio")
            if getattr(out, f"{m}_proj") is not None and getattr(out2, f"{m}_proj") is not None]


def compute_losses(out: ModelOutput, labels: Mapping[str, Tensor], *, cfg: LossConfig, epoch: int,
                   out2: ModelOutput | None = None) -> dict[str, Tensor]:
    """Every active term, "lambda" and "total" = ce·cfg.ce + λ·(avc + al) + λ·(imc + imal).

    A term whose inputs are absent (one modality, no second view) is skipped, not an error.
    Late-fusion (`avg`) models carry `aux_logits`: CE goes on each modality's own heads (summed,
    so each branch gets the gradient it would get trained alone) instead of on their average.
    """
    if out.aux_logits:
        ce = sum(cross_entropy(h, labels, cfg.label_smoothing) for h in out.aux_logits.values())
    else:
        ce = cross_entropy(out.head_logits, labels, cfg.label_smoothing)
    lam = lambda_at(epoch, cfg.lambda_schedule)
    terms: dict[str, Tensor] = {"ce": ce}
    if cfg.aux_ce > 0 and out.unimodal_logits:  # CE on E_CLS^V and E_CLS^A alone, averaged
        terms["aux_ce"] = torch.stack([cross_entropy(h, labels, cfg.label_smoothing)
                                       for h in out.unimodal_logits.values()]).mean()
    both = out.audio_proj is not None and out.video_proj is not None
    if cfg.avc and both:
        terms["avc"] = supervised_avc(out.audio_proj, out.video_proj, labels, cfg.tau)
    if cfg.al and both:
        terms["al"] = instance_al(out.audio_proj, out.video_proj, cfg.tau)
    if out2 is not None:
        # (IMC_V + IMC_A) / 2, or the one modality present.
        if cfg.imc and (imc := _imc_terms(out, out2, lambda x, y: supervised_imc(x, y, labels, cfg.tau))):
            terms["imc"] = torch.stack(imc).mean()
        if cfg.imal and (imal := _imc_terms(out, out2, lambda x, y: instance_imal(x, y, cfg.tau))):
            terms["imal"] = torch.stack(imal).mean()
    total = ce * cfg.ce
    if "aux_ce" in terms:
        total = total + cfg.aux_ce * terms["aux_ce"]
    for k in ("avc", "al", "imc", "imal"):
        if k in terms:
            total = total + lam * terms[k]
    terms["lambda"] = torch.tensor(lam, device=ce.device)
    terms["total"] = total
    return terms
