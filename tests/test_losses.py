import math

import pytest
import torch
import torch.nn.functional as F

from mmt_core.config import LossConfig
from mmt_core.losses import (compute_losses, cross_entropy, instance_al, instance_imal,
                             lambda_at, same_class, supervised_avc, supervised_imc)
from mmt_core.models.output import ModelOutput


def _info_nce(a, v, tau):
    """Reference CLIP/ALBEF InfoNCE, written independently: CE on the similarity rows/cols."""
    sim = F.normalize(a, dim=-1) @ F.normalize(v, dim=-1).T / tau
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2


def test_avc_hand_computed_two_samples_same_class():
    # Orthogonal unit vectors, both clips of one class: every pair is a positive.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # Row i: sims (1/τ, 0); log-softmax = (2 - log(e²+1), -log(e²+1)); mean over both positives.
    lse = math.log(math.exp(2.0) + 1.0)
    expected = -((2.0 - lse) + (-lse)) / 2
    got = supervised_avc(a, v, torch.tensor([3, 3]), tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Distinct classes: only the diagonal is positive → −(2 − lse).
    got = supervised_avc(a, v, torch.tensor([0, 1]), tau=tau)
    assert got.item() == pytest.approx(lse - 2.0, rel=1e-6)


def test_avc_three_samples_mixed_positives_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    tau = 1.0
    an, vn = F.normalize(a, dim=-1), F.normalize(v, dim=-1)
    s = (an @ vn.T).tolist()
    pos = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]

    def direction(sim, pos):
        total = 0.0
        for i in range(3):
            lse = math.log(sum(math.exp(x) for x in sim[i]))
            js = [j for j in range(3) if pos[i][j]]
            total += -sum(sim[i][j] - lse for j in js) / len(js)
        return total / 3

    sT = [list(r) for r in zip(*s)]
    expected = (direction(s, pos) + direction(sT, pos)) / 2
    assert supervised_avc(a, v, y, tau=tau).item() == pytest.approx(expected, rel=1e-6)


def test_supervised_equals_info_nce_for_distinct_labels():
    g = torch.Generator().manual_seed(0)
    a, v = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    y = torch.arange(6)
    ref = _info_nce(a, v, 0.07)
    assert torch.allclose(supervised_avc(a, v, y, 0.07), ref, atol=1e-5)
    assert torch.allclose(supervised_imc(a, v, y, 0.07), ref, atol=1e-5)
    assert torch.allclose(instance_al(a, v, 0.07), ref, atol=1e-5)
    assert torch.allclose(instance_imal(a, v, 0.07), ref, atol=1e-5)
    # With repeated labels the supervised loss differs from the instance one.
    y2 = torch.tensor([0, 0, 1, 1, 2, 2])
    assert not torch.allclose(supervised_avc(a, v, y2, 0.07), ref, atol=1e-3)


def test_multi_head_positive_means_all_heads_equal():
    labels = {"verb": torch.tensor([0, 0, 1, 0]), "noun": torch.tensor([5, 6, 5, 5])}
    pos = same_class(labels)
    assert pos.tolist() == [[True, False, False, True], [False, True, False, False],
                            [False, False, True, False], [True, False, False, True]]


def test_invariant_to_scaling_projections():
    g = torch.Generator().manual_seed(1)
    a, v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 0, 2, 1])
    base = supervised_avc(a, v, y)
    scaled = supervised_avc(a * 7.5, v * torch.tensor([[0.1], [2.0], [3.0], [0.5], [9.0]]), y)
    assert torch.allclose(base, scaled, atol=1e-5)


def test_gradient_flows_to_both_projections():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 3, generator=g, requires_grad=True)
    v = torch.randn(4, 3, generator=g, requires_grad=True)
    supervised_avc(a, v, torch.tensor([0, 1, 0, 1])).backward()
    assert a.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert torch.isfinite(a.grad).all() and torch.isfinite(v.grad).all()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        supervised_avc(torch.randn(3, 4), torch.randn(4, 4), torch.arange(3))
    with pytest.raises(ValueError):
        supervised_avc(torch.randn(3, 4), torch.randn(3, 4), torch.arange(4))
    with pytest.raises(ValueError):
        supervised_avc(torch.randn(3, 4), torch.randn(3, 4), torch.arange(3), tau=0.0)
    with pytest.raises(ValueError):
        cross_entropy({"verb": torch.randn(2, 3)}, {"noun": torch.tensor([0, 1])})


def test_lambda_schedule_boundaries():
    sched = LossConfig().lambda_schedule
    assert [lambda_at(e, sched) for e in (1, 20, 21, 40, 41, 100)] == [0.25, 0.25, 0.1, 0.1, 0.05, 0.05]
    assert lambda_at(9, [[3, 1.0], [5, 2.0]]) == 2.0  # past the end: the last value holds
    assert lambda_at(4, 0.3) == 0.3
    with pytest.raises(ValueError):
        lambda_at(0, sched)


def test_cross_entropy_averages_heads():
    logits = {"verb": torch.tensor([[2.0, 0.0]]), "noun": torch.tensor([[0.0, 0.0, 0.0]])}
    labels = {"verb": torch.tensor([0]), "noun": torch.tensor([2])}
    verb = math.log(math.exp(2) + 1) - 2
    noun = math.log(3)
    assert cross_entropy(logits, labels).item() == pytest.approx((verb + noun) / 2, rel=1e-6)


def _out(g, b=4, c=3, d=8, audio=True, video=True, aux=False):
    r = lambda *s: torch.randn(*s, generator=g, requires_grad=True)  # noqa: E731
    out = ModelOutput(head_logits={"label": r(b, c)},
                      audio_proj=r(b, d) if audio else None, video_proj=r(b, d) if video else None)
    if aux:
        out.aux_logits = {"audio": {"label": r(b, c)}, "video": {"label": r(b, c)}}
    return out


def test_compute_losses_total_is_eq7():
    g = torch.Generator().manual_seed(3)
    out, out2 = _out(g), _out(g)
    labels = {"label": torch.tensor([0, 1, 0, 2])}
    cfg = LossConfig(ce=1.0, avc=True, imc=True)
    d = compute_losses(out, labels, cfg=cfg, epoch=25, out2=out2)
    assert set(d) == {"ce", "avc", "imc", "lambda", "total"}
    assert d["lambda"] == pytest.approx(0.1)
    imc_v = supervised_imc(out.video_proj, out2.video_proj, labels, 0.07)
    imc_a = supervised_imc(out.audio_proj, out2.audio_proj, labels, 0.07)
    assert torch.allclose(d["imc"], (imc_v + imc_a) / 2)
    assert torch.allclose(d["total"], d["ce"] + 0.1 * d["avc"] + 0.1 * d["imc"])
    d["total"].backward()
    assert out2.audio_proj.grad is not None and out.head_logits["label"].grad is not None


def test_compute_losses_skips_missing_terms_and_uses_aux_logits():
    g = torch.Generator().manual_seed(4)
    labels = {"label": torch.tensor([0, 1, 0, 2])}
    cfg = LossConfig(al=True, imal=True)
    # Audio only, no second view: only CE.
    d = compute_losses(_out(g, video=False), labels, cfg=cfg, epoch=1)
    assert set(d) == {"ce", "lambda", "total"} and torch.allclose(d["total"], d["ce"])
    # One modality with two views: IMC/IM-AL of that modality alone.
    o1, o2 = _out(g, video=False), _out(g, video=False)
    d = compute_losses(o1, labels, cfg=cfg, epoch=1, out2=o2)
    assert torch.allclose(d["imc"], supervised_imc(o1.audio_proj, o2.audio_proj, labels))
    assert "imal" in d and "avc" not in d
    # Late fusion: CE on each modality's own logits, not the average.
    o = _out(g, aux=True)
    d = compute_losses(o, labels, cfg=LossConfig(avc=False, imc=False), epoch=1)
    ref = sum(F.cross_entropy(o.aux_logits[m]["label"], labels["label"]) for m in ("audio", "video"))
    assert torch.allclose(d["ce"], ref)


def test_contrastive_terms_run_in_float32_under_autocast():
    """Under bf16 autocast the similarities must still be float32: bf16 keeps 8 bits of
    mantissa, and sim / τ = 0.07 turns its rounding into visible loss differences."""
    g = torch.Generator().manual_seed(5)
    out, out2 = _out(g, b=16, d=64), _out(g, b=16, d=64)
    labels = {"label": torch.arange(16) % 3}
    cfg = LossConfig(avc=True, imc=True, al=True, imal=True)
    plain = compute_losses(out, labels, cfg=cfg, epoch=1, out2=out2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = compute_losses(out, labels, cfg=cfg, epoch=1, out2=out2)
    for k in ("avc", "imc", "al", "imal"):
        assert auto[k].dtype == torch.float32
        assert auto[k].item() == pytest.approx(plain[k].item(), rel=1e-6), k
