"""Every tiny variant trains (forward + backward), MMT's options, fusion tokens and Grad-CAM targets."""
import pytest
import torch

from mmt_core.registry import create_model, model_info

B = 2


def _inputs(model, batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, *s, generator=g) for k, s in model.input_spec.items()}


def _check_trains(model):
    model.train()
    out = model(**_inputs(model))
    loss = sum(v.logsumexp(-1).mean() for v in out.head_logits.values())
    for p in (out.audio_proj, out.video_proj):
        if p is not None:
            loss = loss + p.square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


@pytest.mark.parametrize("name,kw", [
    ("mat_tiny", {}), ("mvit_tiny_video", {}), ("mvitv2_tiny_image", dict(image_size=64)),
    ("mmt_tiny", {}), ("mmt_tiny", dict(fusion="avg")), ("mmt_tiny", dict(modalities="a")),
    ("mmt_tiny", dict(modalities="v")), ("mmt_tiny", dict(num_classes={"verb": 5, "noun": 7})),
])
def test_tiny_variants_forward_backward(name, kw):
    torch.manual_seed(0)
    small = dict(num_frames=4, image_size=64, mel_bins=64, audio_frames=128)  # fast; any size works
    model = create_model(name, **{**small, **kw})
    out = _check_trains(model)
    heads = kw.get("num_classes", {"label": 6 if "tiny" in name and name != "mvitv2_tiny_image" else 1000})
    assert {h: v.shape for h, v in out.head_logits.items()} == {h: (B, n) for h, n in heads.items()}
    mods = model.modalities
    assert (out.audio_embed is not None) == (mods in ("av", "a"))
    assert (out.video_embed is not None) == (mods in ("av", "v", "image"))
    for p in (out.audio_proj, out.video_proj):
        assert p is None or p.shape == (B, 256)
    assert out.fused_embed.shape[0] == B and torch.isfinite(out.logits).all()


def test_tiny_sizes_fit_the_demo_budget():
    sizes = {n: sum(p.numel() for p in create_model(n).parameters())
             for n in ("mmt_tiny", "mat_tiny", "mvit_tiny_video")}
    assert sizes["mmt_tiny"] <= 3e6 and sizes["mat_tiny"] <= 2e6 and sizes["mvit_tiny_video"] <= 2e6


def test_avg_fusion_averages_the_two_heads():
    torch.manual_seed(0)
    model = create_model("mmt_tiny", fusion="avg").eval()
    out = model(**_inputs(model))
    a, v = out.aux_logits["audio"]["label"], out.aux_logits["video"]["label"]
    assert not torch.allclose(a, v)
    torch.testing.assert_close(out.logits, (a + v) / 2)


def _shared(tokens, **kw):
    torch.manual_seed(0)
    return create_model("mmt_tiny", fusion_tokens=tokens, **kw).eval()


def test_fusion_tokens_carry_information_between_modalities():
    model = _shared(4)
    x = _inputs(model, seed=0)
    other_video = _inputs(model, seed=1)["video"]
    with torch.no_grad():
        a1 = model(**x).audio_embed
        a2 = model(video=other_video, audio=x["audio"]).audio_embed
    assert not torch.allclose(a1, a2)  # the audio side saw the video through the bottleneck


def test_zero_fusion_tokens_equal_separate_encoders_and_grids_do_not_depend_on_L():
    fused0, fused4 = _shared(0), _shared(4)
    separate = create_model("mmt_tiny", fusion="avg").eval()
    separate.video.load_state_dict(fused0.video.state_dict())
    separate.audio.load_state_dict(fused0.audio.state_dict())
    x = _inputs(fused0)
    with torch.no_grad():
        o0, o4, os_ = fused0(**x), fused4(**x), separate(**x)
    torch.testing.assert_close(o0.video_embed, os_.video_embed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o0.audio_embed, os_.audio_embed, atol=1e-5, rtol=1e-5)
    for enc in ("video", "audio"):  # prefix tokens never reach pooling: same grids at every block
        assert getattr(fused0, enc).grids == getattr(fused4, enc).grids == getattr(separate, enc).grids
    assert fused0.video.grids[-1] == (4, 12, 12) and fused0.audio.grids[-1] == (16, 40)
    assert not torch.allclose(o4.video_embed, os_.video_embed)


def test_fusion_rejects_bad_options():
    with pytest.raises(ValueError, match="fusion_blocks"):
        create_model("mmt_tiny", fusion_blocks=9)
    with pytest.raises(ValueError, match="fusion must be"):
        create_model("mmt_tiny", fusion="concat")
    with pytest.raises(ValueError, match="missing"):
        create_model("mmt_tiny")(video=torch.randn(1, 3, 8, 96, 96))


@pytest.mark.parametrize("modality,grid", [("video", (4, 12, 12)), ("audio", (16, 40))])
def test_cam_target_gives_grid_maps_inside_hooks(modality, grid):
    torch.manual_seed(0)
    model = create_model("mmt_tiny").eval()
    layer, reshape = model.cam_target(modality)
    enc = getattr(model, modality)
    assert layer is enc.blocks[-2]
    seen = {}
    # pytorch-grad-cam calls reshape inside the forward hook, before later blocks have run
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(map=reshape(o), raw=o))
    with torch.no_grad():
        model(**_inputs(model))
    handle.remove()
    raw, fmap = seen["raw"], seen["map"]
    assert isinstance(raw, torch.Tensor) and fmap.shape == (B, enc.blocks[-2].dim_out, *grid)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), raw[:, raw.shape[1] - fmap[0, 0].numel():])
    with pytest.raises(ValueError):
        create_model("mat_tiny").cam_target("video")


def test_cam_target_block_zero_is_the_finer_stage_one_grid():
    torch.manual_seed(0)
    model = create_model("mmt_tiny").eval()
    layer, reshape = model.cam_target("video", block=0)
    assert layer is model.video.blocks[0]
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(map=reshape(o)))
    with torch.no_grad():
        model(**_inputs(model))
    handle.remove()
    assert seen["map"].shape[2:] == (4, 24, 24)  # stage 1: 8 frames / 2, 96 px / 4
    with pytest.raises(ValueError, match="outside"):
        model.cam_target("video", block=5)


def test_mat_b_budget_52m_params_46gmacs():
    info = model_info("mat_b")
    assert info["inputs"] == {"audio": [1, 1, 128, 1024]}
    assert abs(info["params"] / 52e6 - 1) <= 0.03, info
    assert abs(info["gmacs"] / 46.2 - 1) <= 0.15, info


def test_mvit_v2_s_video_matches_torchvision_budget():
    info = model_info("mvit_v2_s_video")
    proj = 768 * 256 + 256  # g_V, not in torchvision's model
    assert info["params"] - proj == 34_537_744  # torchvision mvit_v2_s
    assert abs(info["gmacs"] - 64.224) < 0.05  # torchvision's published _ops (incl. attention)


def _train_step_record(model, inputs, seed):
    """One forward + backward at `seed`: (gradients by name, bytes kept for backward). The bytes
    are the distinct storages autograd saves (parameters excluded) plus each block's input, which
    a checkpointed block keeps outside autograd's saved tensors."""
    from mmt_core.models.multiscale import MultiScaleBlock
    from timm.models.vision_transformer import Block

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def keep(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    blocks = [m for m in model.modules() if isinstance(m, (MultiScaleBlock, Block))]
    def keep_input(module, args):
        keep(args[0])

    handles = [b.register_forward_pre_hook(keep_input) for b in blocks]
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = model(**inputs)
    for h in handles:  # recomputation in backward runs the blocks again: record the forward only
        h.remove()
    loss = sum(v.logsumexp(-1).mean() for v in out.head_logits.values())
    loss = loss + out.audio_proj.square().mean() + out.video_proj.square().mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(kept.values())


@pytest.mark.parametrize("name", ["mmt_tiny", "mbt_tiny"])
def test_grad_checkpointing_keeps_gradients_and_saves_memory(name):
    torch.manual_seed(0)
    model = create_model(name, drop_path=0.3, dropout=0.2).train()
    x = _inputs(model)
    plain, plain_bytes = _train_step_record(model, x, seed=1)
    model.set_grad_checkpointing(True)
    ckpt, ckpt_bytes = _train_step_record(model, x, seed=1)
    other, _ = _train_step_record(model, x, seed=2)  # drop-path / dropout really draw
    model.set_grad_checkpointing(False)
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)
    assert any(not torch.allclose(other[n], plain[n]) for n in plain)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)
    with torch.no_grad():  # checkpointing is a training-only switch: eval outputs are unchanged
        model.eval().set_grad_checkpointing(True)
        torch.testing.assert_close(model(**x).logits, model.set_grad_checkpointing(False) or model(**x).logits)
