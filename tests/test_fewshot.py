"""Learning from a few clips: the pool's descriptors, probes and weights, the pooled checkpoint
(eval only), the group-aware validation carve, the step budget, and the small-reference OOD
margin."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmt_core import fewshot
from mmt_core.data.manifests import ClipRecord, read_manifest
from mmt_core.data.splits import carve_split, check_groups, write_plain_manifest
from mmt_core.errors import UserError

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


# ---------------------------------------------------------------- descriptors

def _scene(colour, pos, t=2, s=32, bg=(0.2, 0.6, 0.3)) -> torch.Tensor:
    """(1, 3, T, S, S) frames in [0, 1]: a plain background and an 8x8 square at pos."""
    x = torch.tensor(bg).view(3, 1, 1, 1).repeat(1, t, s, s)
    x[:, :, pos[0]:pos[0] + 8, pos[1]:pos[1] + 8] = torch.tensor(colour).view(3, 1, 1, 1)
    return x[None]


def _norm(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1, 1)


def test_colour_histogram_ignores_where_an_object_is_but_not_what_colour_it_is():
    a = fewshot.video_descriptor(_norm(_scene((0.9, 0.1, 0.1), (2, 2))), MEAN, STD)
    moved = fewshot.video_descriptor(_norm(_scene((0.9, 0.1, 0.1), (20, 17))), MEAN, STD)
    other = fewshot.video_descriptor(_norm(_scene((0.1, 0.1, 0.9), (2, 2))), MEAN, STD)
    assert a.shape == (1, 512)
    assert torch.allclose(a.norm(dim=1), torch.ones(1))  # square-rooted frequencies: unit L2
    assert torch.allclose(a, moved)
    assert not torch.allclose(a, other)
    uint8 = (_scene((0.9, 0.1, 0.1), (2, 2)) * 255).round().to(torch.uint8)
    assert torch.allclose(fewshot.video_descriptor(uint8, MEAN, STD), a)


def test_audio_descriptor_is_the_spectrum_shape_whatever_the_gain():
    fb = torch.randn(2, 1, 16, 40)
    d = fewshot.audio_descriptor(fb)
    assert d.shape == (2, 16)
    assert torch.allclose(d, fewshot.audio_descriptor(fb + 3.0), atol=1e-5)  # a louder recording
    tilted = fb + torch.linspace(-1, 1, 16).view(1, 1, 16, 1)  # a brighter one is another shape
    assert not torch.allclose(d, fewshot.audio_descriptor(tilted), atol=1e-2)


# ---------------------------------------------------------------- probes and weights

def _blobs(n_per_class=6, classes=3, dim=10, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_probe_learns_separable_classes_and_out_of_fold_scores_held_out_rows():
    x, y = _blobs()
    probe = fewshot.fit_probe(x, y, 3)
    assert (fewshot.probe_logits(probe, x).argmax(1) == y).all()
    xt, yt = _blobs(seed=0, n_per_class=4)  # same centres, new draws
    assert (fewshot.probe_logits(probe, xt).argmax(1) == yt).float().mean() >= 0.9
    oof = fewshot.out_of_fold(x, y, 3)
    assert oof.shape == (18, 3) and torch.allclose(oof.exp().sum(1), torch.ones(18))
    assert (oof.argmax(1) == y).float().mean() >= 0.9
    noise = torch.randn(18, 10, generator=torch.Generator().manual_seed(5))
    assert (fewshot.out_of_fold(noise, y, 3).argmax(1) == y).float().mean() < 0.7


def test_weights_are_root_skill_over_chance_and_zero_at_chance():
    y = torch.arange(4).repeat(10)  # 40 clips, 4 classes
    right = torch.nn.functional.one_hot(y, 4).float() * 6  # confident and right
    wrong = torch.nn.functional.one_hot((y + 1) % 4, 4).float() * 6  # confident and wrong
    assert fewshot.expert_weight(right.log_softmax(-1), y, 4) == 1.0
    assert fewshot.expert_weight(wrong.log_softmax(-1), y, 4) == 0.0
    half = torch.where((torch.arange(40) % 2 == 0)[:, None], right, wrong)  # 50 % right
    assert fewshot.expert_weight(half.log_softmax(-1), y, 4) == pytest.approx(
        ((0.5 - 0.25) / 0.75) ** 0.5, abs=1e-4)  # the square root of the skill over chance
    few = torch.where((torch.arange(40) < 12)[:, None], right, wrong)  # 30 %: not above chance
    assert fewshot.expert_weight(few.log_softmax(-1), y, 4) == 0.0


class _Net(torch.nn.Module):
    """A stand-in network with the model interface: logits from the audio's first band."""
    modalities = "av"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(1, 2)

    def forward(self, *, video=None, audio=None):
        from mmt_core.models.output import ModelOutput

        return ModelOutput(head_logits={"label": self.w(audio[:, 0, :1, :].mean(-1))})


def test_pool_acts_in_eval_without_gradients_only(tmp_path):
    net = _Net()
    probes = {"audio": fewshot.fit_probe(torch.randn(8, 16), torch.arange(2).repeat(4), 2)}
    pool = fewshot.Pool(probes, {"net": 0.5, "audio": 1.0}, (MEAN, STD))
    fewshot.save_pool(tmp_path, pool)
    back = fewshot.load_pool(tmp_path)
    assert back.weights == pool.weights and torch.equal(back.probes["audio"]["weight"],
                                                        probes["audio"]["weight"])
    fewshot.attach(net, back)
    audio = torch.randn(3, 1, 16, 20)
    net.eval()
    raw = net(audio=audio).head_logits["label"]  # gradients on: the network alone (explain)
    with torch.inference_mode():
        pooled = net(audio=audio).head_logits["label"]
    expected = back.logits(raw.detach(), {"audio": audio})
    assert torch.allclose(pooled, expected) and not torch.allclose(pooled, raw)
    net.train()
    with torch.no_grad():
        assert torch.allclose(net(audio=audio).head_logits["label"], raw)
    assert fewshot.load_pool(tmp_path / "none") is None


def test_an_unreadable_pool_is_a_checkpoint_error(tmp_path):
    from mmt_core.checkpoint import CheckpointError, load_checkpoint
    from wb_helpers import make_checkpoint

    make_checkpoint(tmp_path, "mat_tiny")
    load_checkpoint(tmp_path / "mat_tiny")  # no pool: loads as before
    (tmp_path / "mat_tiny" / fewshot.POOL_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="fewshot.safetensors is unreadable"):
        load_checkpoint(tmp_path / "mat_tiny")
    load_checkpoint(tmp_path / "mat_tiny", pool=False)  # the network alone never reads it


def test_a_pool_fitted_later_reaches_a_running_process(tmp_path):
    """load_for_inference's cache is keyed by the weights and the pool: a pool saved beside
    cached weights (fit_run_pool after training) is used by the next prediction."""
    from mmt_core.inference import load_for_inference
    from wb_helpers import make_checkpoint

    d = make_checkpoint(tmp_path, "mat_tiny")
    model, _ = load_for_inference(d)
    assert not model._forward_hooks
    probes = {"audio": fewshot.fit_probe(torch.randn(12, 16), torch.arange(6).repeat(2), 6)}
    fewshot.save_pool(d, fewshot.Pool(probes, {"net": 1.0, "audio": 1.0}, (MEAN, STD)))
    again, _ = load_for_inference(d)
    assert again is not model and again._forward_hooks


# ---------------------------------------------------------------- group-aware validation

def _rec(path, label, **kw):
    return ClipRecord(path=path, labels={"label": label}, split="train", **kw)


def test_val_takes_whole_sources():
    recs = [_rec(f"/d/{c}_{g}_{i}.mp4", c, group=f"{c}-{g}") for c in range(3)
            for g in range(4) for i in range(3)]
    for seed in range(4):
        out = carve_split(recs, 0.2, seed)
        val_groups = {r.group for r in out if r.split == "val"}
        train_groups = {r.group for r in out if r.split == "train"}
        assert val_groups and not val_groups & train_groups
        for c in range(3):  # every class keeps training sources
            assert any(r.split == "train" and r.labels["label"] == c for r in out)


def test_single_source_classes_fall_back_and_say_so(tmp_path):
    # class 0: segments of one file -> its latest segments; class 1: one source in sidecars
    seg = [_rec("/d/long.mp4", 0, start=float(t), end=float(t) + 2) for t in range(0, 20, 2)]
    side = []
    for i in range(5):
        p = tmp_path / f"b{i}.mp4"
        (tmp_path / f"b{i}.json").write_text(json.dumps({"source": "one_recording.wav"}))
        side.append(_rec(str(p), 1))
    notes: list = []
    out = carve_split(seg + side, 0.2, 0, notes=notes)
    val0 = sorted(r.start for r in out if r.split == "val" and r.labels["label"] == 0)
    assert val0 == [16.0, 18.0]
    assert sum(r.split == "val" and r.labels["label"] == 1 for r in out) == 1
    assert len(notes) == 1 and "2 class(es) have a single source" in notes[0]
    # sidecar sources that differ are groups: whole ones move
    for i, r in enumerate(side):
        (tmp_path / f"b{i}.json").write_text(json.dumps({"source": f"rec{i % 2}"}))
    out = carve_split(side, 0.2, 0)
    moved = {i % 2 for i, r in enumerate(out) if r.split == "val"}
    assert len(moved) == 1 and sum(r.split == "val" for r in out) in (2, 3)


def test_a_group_column_with_one_group_per_class_is_an_error_and_groups_round_trip(tmp_path):
    recs = [_rec(f"/d/{c}_{i}.mp4", c, group=f"g{c}") for c in range(2) for i in range(3)]
    with pytest.raises(UserError, match="single group"):
        check_groups(recs, "my.csv")
    check_groups([_rec("/d/x.mp4", 0)], "my.csv")  # no groups given: nothing to check
    m = write_plain_manifest(tmp_path / "m.csv", recs, {"label": ["a", "b"]})
    assert [r.group for r in read_manifest(m).records] == [r.group for r in recs]


def test_step_budget_raises_the_epochs_of_a_few_clips(tmp_path):
    from mmt_core.own_data import own_config, step_budget

    recs = [_rec(f"/d/{c}_{i}.mp4", c) for c in range(4) for i in range(5)]  # 20 clips
    m = write_plain_manifest(tmp_path / "m.csv", recs, {"label": list("abcd")})
    cfg = own_config("mat_tiny", [f"data.manifest={m}", "data.format=plain",
                                  "train.batch_size=8", "train.epochs=3", "train.min_steps=30"])
    assert step_budget(cfg).train.epochs == 15  # 2 steps an epoch (the last batch is dropped)
    cfg.train.min_steps = 0
    assert step_budget(cfg).train.epochs == 3


# ---------------------------------------------------------------- OOD with a few clips

def test_a_small_reference_passes_its_own_distribution_and_flags_a_shift():
    from mmt_core import ood

    rng = np.random.default_rng(0)
    ref = ood.fit({"audio": {"stats": rng.normal(size=(24, 23)).astype(np.float32)}})
    def flagged(x):
        return np.mean([ood.score({"audio": {"stats": row[None]}}, ref)["flagged"] for row in x])
    assert flagged(rng.normal(size=(200, 23))) <= 0.1  # held-out draws of the same kind
    assert flagged(rng.normal(loc=3.0, size=(50, 23))) >= 0.9
    # one odd reference clip far from the rest does not open the gate for everything
    odd = rng.normal(size=(24, 23)).astype(np.float32)
    odd[0, :3] = 20.0
    ref = ood.fit({"audio": {"stats": odd}})
    assert flagged(rng.normal(size=(200, 23))) <= 0.1
    assert flagged(rng.normal(loc=3.0, size=(50, 23))) >= 0.75
