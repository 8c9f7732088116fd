import json

import pytest
import torch

from mmt_core.metrics import accuracy_report, cluster_scores, ensemble_views, pointing_game, topk_correct


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, 1).tolist() == [True, False, False]
    assert topk_correct(logits, labels, 2).tolist() == [True, True, False]
    assert topk_correct(logits, labels, 5).all()  # k capped at C = 3
    with pytest.raises(ValueError):
        topk_correct(logits, labels[:2], 1)


def test_ensemble_views_is_mean_of_softmax():
    logits = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])  # one clip, two views
    probs = ensemble_views(logits)
    s = torch.sigmoid(torch.tensor(10.0)).item()
    assert probs.shape == (1, 2)
    assert probs[0, 0].item() == pytest.approx((0.5 + s) / 2, rel=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(1))


def test_accuracy_report_single_head_confusion_and_json():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]])
    labels = torch.tensor([0, 1, 2, 1])
    r = accuracy_report({"label": probs}, {"label": labels}, {"label": ["a", "b", "c"]})
    json.dumps(r)  # must serialise
    assert r["top1"] == pytest.approx(0.75) and r["top5"] == 1.0
    assert r["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    acc = {c["class"]: c["accuracy"] for c in r["per_class"]}
    assert acc == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert "action" not in r


def test_accuracy_report_verb_noun_action():
    verb = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    noun = torch.tensor([[0.1, 0.2, 0.7], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    labels = {"verb": torch.tensor([0, 0, 0]), "noun": torch.tensor([2, 1, 0])}
    r = accuracy_report({"verb": verb, "noun": noun}, labels, {"verb": ["v0", "v1"], "noun": ["n0", "n1", "n2"]})
    assert r["heads"]["verb"]["top1"] == pytest.approx(2 / 3)
    assert r["heads"]["noun"]["top1"] == pytest.approx(2 / 3)
    # Both right only for clip 0 (clip 1 misses the noun, clip 2 the verb).
    assert r["action"]["top1"] == pytest.approx(1 / 3)
    assert r["action"]["top5"] >= r["action"]["top1"]


def test_cluster_scores_separable_vs_random():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    centers = torch.eye(4, 16) * 10
    tight = centers[labels] + 0.1 * torch.randn(40, 16, generator=g)
    s = cluster_scores(tight, labels)
    assert s["ari"] == pytest.approx(1.0) and s["hs"] == pytest.approx(1.0)
    noise = cluster_scores(torch.randn(40, 16, generator=g), labels)
    assert noise["ari"] < 0.5 and noise["hs"] < 0.5


def test_pointing_game():
    cam = torch.zeros(2, 8, 8)
    cam[0, 2, 3] = 1.0  # frame 0 peaks at x=3, y=2
    cam[1, 7, 7] = 1.0  # frame 1 peaks at x=7, y=7
    boxes = [(2, 1, 4, 3), (0, 0, 3, 3)]
    assert pointing_game(cam, boxes) == 0.5
    assert pointing_game(cam, boxes, tolerance=4) == 1.0
    assert pointing_game(cam[0], boxes[0]) == 1.0
    assert pointing_game(cam, [None, (6, 6, 7, 7)]) == 1.0
