"""Foreign weights: torchvision / timm give the same logits as their own models (oracles), the MAT
init from timm keeps the RGB sum, SlowFast-named checkpoints load, bad inputs are UserErrors."""
import re

import pytest
import timm
import torch
from torchvision.models.video import mvit_v2_s

from mmt_core.errors import ConfigError, UserError
from mmt_core.models.convert import load_foreign_weights
from mmt_core.registry import create_model


def _perturb(model):
    """Random init plus noise on every parameter and buffer, so no tensor is a trivial constant
    (LayerNorm ones, zero biases, zero rel-pos tables would hide mapping mistakes)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    return model.eval()


def test_torchvision_mvit_v2_s_oracle():
    torch.manual_seed(0)
    ref = _perturb(mvit_v2_s())
    ours = create_model("mvit_v2_s_video").eval()
    report = load_foreign_weights(ours, ref.state_dict(), "torchvision")
    assert not report["missing"] and not report["skipped"], report
    assert "heads.label.weight" in report["loaded"]
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.inference_mode():
        diff = (ref(x) - ours(video=x).logits).abs().max().item()
    assert diff <= 1e-4


def test_timm_mvitv2_tiny_image_oracle(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = _perturb(timm.create_model("mvitv2_tiny", pretrained=False))
    path = tmp_path / "mvitv2_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = create_model("mvitv2_tiny_image").eval()
    report = load_foreign_weights(ours, path, "timm")
    assert not report["missing"] and not report["skipped"], report
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        diff = (ref(x) - ours(image=x).logits).abs().max().item()
    assert diff <= 1e-4


def test_timm_init_of_mat_sums_rgb_and_resizes_rel_pos():
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    torch.manual_seed(0)  # a timm MViTv2 with mat_tiny's stages (mvitv2_base <-> mat_b alike)
    cfg = MultiScaleVitCfg(depths=(1, 4), embed_dim=64, stride_q=((1, 1), (2, 2)))
    sd = _perturb(MultiScaleVit(cfg)).state_dict()
    mat = create_model("mmt_tiny")  # av: timm goes to the audio encoder (the paper's MAT init)
    before = {k: v.clone() for k, v in mat.video.state_dict().items()}
    report = load_foreign_weights(mat, sd, "timm")
    assert report["encoder"] == "audio"
    torch.testing.assert_close(mat.audio.patch_embed.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert any("summed" in a for a in report["adapted"]) and any("interpolated" in a for a in report["adapted"])
    assert "audio.cls_token" in report["missing"]  # timm mvitv2_tiny has no class token
    blk0 = mat.audio.blocks[0].attn
    assert blk0.rel_pos_t.shape[0] == 2 * 80 - 1 and blk0.rel_pos_f.shape[0] == 2 * 32 - 1
    # the mapped tables are timm's h / w tables interpolated to the mel / time axes
    src = sd["stages.0.blocks.0.attn.rel_pos_w"]
    assert torch.allclose(blk0.rel_pos_t[0], src[0]) and torch.allclose(blk0.rel_pos_t[-1], src[-1])
    assert all(torch.equal(v, mat.video.state_dict()[k]) for k, v in before.items())  # video untouched
    out = mat(video=torch.randn(1, 3, 8, 96, 96), audio=torch.randn(1, 1, 128, 320))
    assert torch.isfinite(out.logits).all()


def _slowfast_names(sd: dict) -> dict:
    """Our video-encoder names -> SlowFast's MViT names (the inverse of convert's mapping)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("video."):
            k = k[len("video."):].replace("patch_embed.", "patch_embed.proj.")
            k = re.sub(r"^(blocks\.\d+)\.shortcut_proj\.", r"\1.proj.", k)
        elif k.startswith("heads.label."):
            k = k.replace("heads.label.", "head.projection.")
        else:
            continue
        out[k] = v
    return out


def test_slowfast_pyth_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    src = _perturb(create_model("mvit_tiny_video", num_classes=7))
    path = tmp_path / "MViTv2_tiny.pyth"
    torch.save({"model_state": _slowfast_names(src.state_dict()), "epoch": 3}, path)
    dst = create_model("mvit_tiny_video", num_classes=7).eval()
    report = load_foreign_weights(dst, str(path), "slowfast")
    assert not report["missing"] and not report["skipped"], report
    x = torch.randn(1, 3, 8, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(dst(video=x).logits, src(video=x).logits)


def test_bad_weights_are_user_errors(tmp_path):
    model = create_model("mat_tiny")
    with pytest.raises(ConfigError, match="not found"):
        load_foreign_weights(model, tmp_path / "nope.pth", "timm")
    with pytest.raises(ConfigError, match="source"):
        load_foreign_weights(model, {}, "caffe")
    with pytest.raises(UserError, match="video encoder"):
        load_foreign_weights(model, {"conv_proj.weight": torch.zeros(1)}, "torchvision")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_foreign_weights(model, bad, "timm")
