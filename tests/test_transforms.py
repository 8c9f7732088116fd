"""Video crops/flip/normalise, SpecAugment and mixup: shapes, ranges, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmt_core.data import transforms


def _frames(t=4, h=60, w=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_video_train_shape_and_determinism():
    f = _frames()
    a = transforms.video_train(f, 32, (0.3, 1.0), True, rng=np.random.default_rng(1))
    b = transforms.video_train(f, 32, (0.3, 1.0), True, rng=np.random.default_rng(1))
    c = transforms.video_train(f, 32, (0.3, 1.0), True, rng=np.random.default_rng(2))
    assert a.shape == (3, 4, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        transforms.video_train(f, 32, (0.0, 1.0), rng=np.random.default_rng(0))


def test_video_train_full_crop_is_resize_and_flip_mirrors():
    f = _frames(2, 32, 32)
    flips = set()
    for s in range(8):  # scale 1 and square frames: the crop is the whole frame
        out = transforms.video_train(f, 32, (1.0, 1.0), True, (0, 0, 0), (1, 1, 1), np.random.default_rng(s))
        plain = torch.from_numpy(f).permute(3, 0, 1, 2).float() / 255
        if torch.allclose(out, plain):
            flips.add(False)
        elif torch.allclose(out, plain.flip(-1)):
            flips.add(True)
    assert flips == {False, True}


def test_video_eval_centre_crop_and_normalise():
    f = np.zeros((2, 40, 80, 3), np.uint8)
    f[:, :, 20:60] = 255  # a white band in the centre, black sides
    out = transforms.video_eval(f, 40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert out.shape == (3, 2, 40, 40)
    assert torch.allclose(out, torch.ones_like(out))  # the centre crop is all white -> (1-0.5)/0.5
    tall = transforms.video_eval(np.zeros((1, 90, 30, 3), np.uint8), 24)
    assert tall.shape == (3, 1, 24, 24)
    assert torch.allclose(tall, torch.full_like(tall, -0.45 / 0.225))


def test_spec_augment_masks_within_limits():
    fb = torch.ones(1, 128, 200)
    for s in range(10):
        out = transforms.spec_augment(fb, 20, 30, np.random.default_rng(s))
        zero_rows = (out[0] == 0).all(1).sum().item()
        zero_cols = (out[0] == 0).all(0).sum().item()
        assert zero_rows <= 20 and zero_cols <= 30
    assert torch.equal(fb, torch.ones(1, 128, 200))  # input untouched
    widths = [(transforms.spec_augment(fb, 20, 30, np.random.default_rng(s))[0] == 0).all(1).sum().item()
              for s in range(20)]
    assert max(widths) > 0
    assert torch.equal(transforms.spec_augment(fb, 20, 30, np.random.default_rng(3)),
                       transforms.spec_augment(fb, 20, 30, np.random.default_rng(3)))


def test_mixup_batch():
    batch = {"video": torch.arange(4.0).view(4, 1), "audio": torch.arange(4.0).view(4, 1) * 10,
             "labels": {"label": torch.tensor([0, 1, 2, 3])}}
    out, lam, perm_labels = transforms.mixup_batch(batch, 0.4, np.random.default_rng(0))
    assert 0 <= lam <= 1
    perm = perm_labels["label"]
    assert sorted(perm.tolist()) == [0, 1, 2, 3]
    expected = lam * batch["video"][:, 0] + (1 - lam) * perm.float()
    torch.testing.assert_close(out["video"][:, 0], expected)
    torch.testing.assert_close(out["audio"][:, 0], expected * 10)
    same, lam0, lab0 = transforms.mixup_batch(batch, 0.0)
    assert lam0 == 1.0 and same is batch and torch.equal(lab0["label"], batch["labels"]["label"])


def test_uint8_path_and_device_normalisation():
    f = _frames(3, 48, 64)
    u = transforms.video_train_uint8(f, 32, (0.3, 1.0), True, np.random.default_rng(4))
    assert u.dtype == torch.uint8 and u.shape == (3, 3, 32, 32)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    ref = transforms.video_train(f, 32, (0.3, 1.0), True, mean, std, np.random.default_rng(4))
    assert torch.equal(transforms.normalise_video(u, mean, std), ref)  # one code path
    batch = torch.stack([u, u.flip(-1)])[None]  # (B=1, V=2, 3, T, S, S): test views
    out = transforms.normalise_video(batch, mean, std)
    assert out.shape == batch.shape and torch.equal(out[0, 0], ref)
    with pytest.raises(ValueError):
        transforms.normalise_video(ref, mean, std)  # already float


def test_uint8_resize_rounds_and_same_size_is_exact():
    f = _frames(2, 60, 80)
    # no resize (frames already at the crop size): exactly the float formula (x/255 - m)/s
    same = transforms.video_eval(f[:, :60, 10:70], 60)
    plain = (torch.from_numpy(f[:, :60, 10:70]).permute(3, 0, 1, 2).float() / 255 - 0.45) / 0.225
    assert torch.equal(same, plain)
    # with a resize: within one grey level of resizing in float
    import torch.nn.functional as F
    got = transforms.video_eval_uint8(f, 30).float()
    x = torch.from_numpy(f).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    want = F.interpolate(x, size=(30, 40), mode="bilinear", antialias=True)[..., 5:35]
    assert (got - want.permute(1, 0, 2, 3)).abs().max() <= 1.0
