import json

import numpy as np
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


def test_frame_pointing_with_baselines_by_hand():
    from mmt_core.metrics import event_share, frame_pointing

    maps = np.zeros((3, 10, 10), np.float32)
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4], [5, 5, 9, 9]], np.float32)  # 25 of 100 pixels
    maps[0, 2, 2] = 1.0  # peak in the box, all mass in it
    maps[1, 8, 8] = 1.0  # peak outside
    maps[1, 0, 0] = 1.0 / 3
    maps[1, 1, 1] = maps[1, 9, 0] = 1.0 / 3  # mass in the box: 2/3 of 2 total → 1/3
    # frame 2: an all-zero map misses (no peak), energy 0
    out = frame_pointing(maps, boxes)
    assert out["frames"] == 3 and out["hits"] == 1
    assert out["energy"] == pytest.approx(1.0 + (2 / 3) / 2 + 0.0)
    assert out["centre_hits"] == 1  # the centre pixel (5, 5) is only in the third box
    assert out["box_area"] == pytest.approx(3 * 0.25)
    assert frame_pointing(maps, [None, None, boxes[2]])["frames"] == 1
    with pytest.raises(ValueError):
        frame_pointing(maps, boxes[:2])
    # audio: onsets at 0.1 s and 0.5 s, 10 ms frames from 0: windows [0.1, 0.25), [0.5, 0.65)
    audio = np.zeros((4, 100), np.float32)
    audio[:, 12] = 1.0  # 0.12 s: inside the first window
    audio[:, 40] = 1.0  # 0.40 s: outside
    mass, cover = event_share(audio, [0.1, 0.5], start=0.0)
    assert mass == pytest.approx(0.5) and cover == pytest.approx(0.30)
    mass, _ = event_share(audio, [0.1, 0.5], start=0.3)  # frame 12 is at 0.42 s now, 40 at 0.70
    assert mass == 0.0
