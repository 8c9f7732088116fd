import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmt_core.models.baselines import BASELINES, ast_b, ast_tiny, mbt_b, mbt_tiny
from mmt_core.models.output import ModelOutput


def _inputs(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, *s, generator=g) for k, s in model.input_spec.items()}


def test_names():
    assert set(BASELINES) == {"ast_b", "ast_tiny", "mbt_b", "mbt_tiny"}


@pytest.mark.parametrize("builder", [ast_tiny, mbt_tiny])
def test_tiny_forward_backward_and_cam(builder):
    torch.manual_seed(0)
    model = builder(num_classes={"verb": 5, "noun": 7}, proj_dim=32, num_frames=4, image_size=48)
    x = _inputs(model)
    out = model(**x)
    assert isinstance(out, ModelOutput)
    assert out.head_logits["verb"].shape == (2, 5) and out.head_logits["noun"].shape == (2, 7)
    assert out.audio_proj.shape == (2, 32)
    if model.modalities == "av":
        assert out.video_proj.shape == (2, 32) and out.video_embed.shape == out.audio_embed.shape
    loss = sum(t.sum() for t in out.head_logits.values()) + out.audio_proj.sum()
    if out.video_proj is not None:
        loss = loss + out.video_proj.sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    for m in ("audio", "video")[: len(model.modalities)]:
        layer, reshape = model.cam_target(m)
        seen = {}
        h = layer.register_forward_hook(lambda mod, i, o: seen.__setitem__("t", o))
        model(**x)
        h.remove()
        grid = reshape(seen["t"])
        spec = model.input_spec[m]
        if m == "audio":  # 16x16 patches with stride 10
            assert grid.shape == (2, 64, (spec[1] - 16) // 10 + 1, (spec[2] - 16) // 10 + 1)
        else:  # 2x16x16 tubelets
            assert grid.shape == (2, 64, spec[1] // 2, spec[2] // 16, spec[3] // 16)


def test_other_input_size_resizes_position_embedding():
    model = ast_tiny(num_classes=3, mel_bins=64, audio_frames=256)
    out = model(audio=torch.randn(1, 1, 64, 128))
    assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()


def test_mbt_bottlenecks_carry_information_across_modalities():
    torch.manual_seed(0)
    model = mbt_tiny(num_classes=3).eval()
    x = _inputs(model, b=1)
    with torch.no_grad():
        a1 = model(**x).audio_embed
        a2 = model(audio=x["audio"], video=x["video"] + 1.0).audio_embed
        a_only = model(audio=x["audio"])
    # Audio tokens see the video only through the shared bottleneck tokens.
    assert not torch.allclose(a1, a2, atol=1e-5)
    assert a_only.video_proj is None and a_only.logits.shape == (1, 3)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ast_tiny(num_classes=0)
    with pytest.raises(ValueError):
        mbt_tiny(num_frames=1)
    with pytest.raises(ValueError):
        ast_tiny(fusion="avg")
    with pytest.raises(ValueError):
        mbt_tiny().cam_target("image")


def test_paper_sizes_on_meta_device():
    """AST-B: the paper's 87 M parameters and 131 G multiply-adds (1212 patches)."""
    with torch.device("meta"):
        ast = ast_b()
        mbt = mbt_b()
        x = {"audio": torch.empty(1, *ast.input_spec["audio"])}
    params = sum(p.numel() for p in ast.parameters())
    assert abs(params / 1e6 - 87) < 1.0
    assert ast.encoder.pos_embed.shape[1] == 12 * 101
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        ast(**x)
    assert abs(fc.get_total_flops() / 2e9 - 131) < 2.0
    # MBT-B: two ViT-B encoders plus heads.
    assert 170e6 < sum(p.numel() for p in mbt.parameters()) < 180e6
