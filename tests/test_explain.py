"""mmt_core.explain: every explainer on real (randomly initialised) demo models and built-in clips,
the explicit-attention path against SDPA, the relevance rule on hand-checkable cases, occlusion
on a model whose score depends on one region, and the pointing game through `mmt eval`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from wb_helpers import one_torch_thread

from mmt_core.explain import EXPLAINERS, applicable, get_explainer, list_explainers
from mmt_core.models.multiscale import MultiScaleBlock, explicit_attention
from mmt_core.models.output import ModelOutput


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield




@pytest.fixture(scope="module")
def mmt_results(loaded, prepared):
    """Every explainer on MMT for class 2 (computed once: occlusion takes seconds)."""
    model, meta = loaded["mmt_tiny"]
    return {n: get_explainer(n)(model, prepared["mmt_tiny"]["inputs"], target=2, meta=meta)
            for n in EXPLAINERS}


# ----------------------------------------------------------------------------- registry
def test_registry_lists_every_method_with_a_description():
    assert list(EXPLAINERS) == ["gradcam", "relevance", "occlusion", "audio_contrast"]
    every = list_explainers()
    assert set(every) == set(EXPLAINERS)
    assert all(isinstance(d, str) and 20 < len(d) < 200 and "\n" not in d for d in every.values())
    assert "audio_contrast" not in list_explainers("v") and "audio_contrast" in list_explainers("av")
    assert applicable("occlusion", "a") and not applicable("audio_contrast", "a")
    with pytest.raises(ValueError, match="unknown explainer"):
        get_explainer("saliency")


def test_core_does_not_import_the_workbench():
    import subprocess
    import sys

    code = ("import sys, mmt_core.explain, mmt_core.evaluation, mmt_core.explain.gradcam, "
            "mmt_core.explain.relevance, mmt_core.explain.occlusion, "
            "mmt_core.explain.audio_contrast; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('workbench', 'gradio', 'plotly')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- explicit attention
@pytest.mark.parametrize("name", ["mmt_tiny", "mat_tiny", "mvit_tiny_video"])
def test_explicit_attention_matches_sdpa(name):
    from mmt_core.registry import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    x = {k: torch.randn(2, *s) for k, s in model.input_spec.items()}
    for grad in (False, True):  # SDPA runs chunked without autograd, in one call with it
        with torch.set_grad_enabled(grad):
            ref = model(**x).logits
            with explicit_attention(model) as mods:
                out = model(**x).logits
                kept = [m.last_attn for m in mods]
        assert (out - ref).abs().max().item() <= 1e-5
        assert mods and all(a is not None and a.dim() == 4 for a in kept)
        rows = kept[0].sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)  # probabilities
    assert not any(m.explicit for m in mods) and all(m.last_attn is None for m in mods)  # restored


# ----------------------------------------------------------------------------- every explainer
@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_mmt_maps_shapes_range_target(method, mmt_results, loaded):
    _, meta = loaded["mmt_tiny"]
    pre = meta["preprocessing"]
    res = mmt_results[method]
    assert res["target"] == 2
    video = res["video"]
    assert video.shape == (pre["num_frames"], pre["image_size"], pre["image_size"])
    assert video.dtype == np.float32 and np.isfinite(video).all()
    assert video.min() >= 0.0 and video.max() <= 1.0
    assert video.max() == pytest.approx(1.0) and video.std() > 0  # normalised, not constant
    if method == "audio_contrast":
        assert res["audio"] is None  # a video-evidence method
    else:
        audio = res["audio"]
        assert audio.shape == (pre["num_mel_bins"], pre["audio_frames"])
        assert np.isfinite(audio).all() and audio.min() >= 0.0 and audio.max() <= 1.0
        assert audio.std() > 0


@pytest.mark.parametrize("method", ["gradcam", "relevance", "occlusion"])
def test_target_changes_the_map_and_none_means_top_class(method, loaded, prepared, mmt_results):
    model, meta = loaded["mmt_tiny"]
    inputs = prepared["mmt_tiny"]["inputs"]
    other = get_explainer(method)(model, inputs, target=4, meta=meta)
    assert other["target"] == 4
    assert np.abs(other["video"] - mmt_results[method]["video"]).max() > 1e-3
    with torch.no_grad():
        top = int(model(**{k: v[:1] for k, v in inputs.items()}).logits[0].argmax())
    assert get_explainer("gradcam")(model, inputs, target=None)["target"] == top
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_unimodal_models(loaded, prepared):
    video, vmeta = loaded["mvit_tiny_video"]
    audio, ameta = loaded["mat_tiny"]
    for method in ("gradcam", "relevance"):
        v = get_explainer(method)(video, prepared["mvit_tiny_video"]["inputs"], target=1)
        assert v["audio"] is None and v["video"].ndim == 3 and 0 <= v["video"].min()
        a = get_explainer(method)(audio, prepared["mat_tiny"]["inputs"], target=1)
        assert a["video"] is None and a["audio"].shape == (128, 320)
    for model, meta, inputs in ((video, vmeta, prepared["mvit_tiny_video"]["inputs"]),
                                (audio, ameta, prepared["mat_tiny"]["inputs"])):
        with pytest.raises(ValueError, match="audio-visual"):
            get_explainer("audio_contrast")(model, inputs, meta=meta)
    with pytest.raises(ValueError, match="outside"):
        get_explainer("gradcam")(video, prepared["mvit_tiny_video"]["inputs"], block=9)


def test_cam_blocks_parses_every_spelling():
    from mmt_core.explain import CAM_BLOCKS, cam_blocks

    assert cam_blocks(-2) == (-2,) and cam_blocks(np.int64(0)) == (0,)
    assert cam_blocks((0, 1)) == cam_blocks([0, 1]) == cam_blocks("0,1") == cam_blocks("0+1")
    assert cam_blocks(CAM_BLOCKS) == (0, 1)
    for bad in ("first", "", ()):
        with pytest.raises(ValueError, match="block"):
            cam_blocks(bad)


def test_gradcam_over_several_blocks_is_pytorch_grad_cams_multi_layer_cam(loaded, prepared):
    """Several blocks: the mean of their Grad-CAM maps, rescaled to [0, 1]. Blocks 1 and 2 share a
    token grid, so pytorch-grad-cam can also run them as one multi-layer CAM: the same map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from mmt_core.explain._common import SingleInput, frozen_except, model_inputs

    video, _ = loaded["mvit_tiny_video"]
    x = model_inputs(video, prepared["mvit_tiny_video"]["inputs"])
    ours = get_explainer("gradcam")(video, x, target=1, block=(1, 2))["video"]
    (l1, reshape), (l2, _) = video.cam_target("video", 1), video.cam_target("video", 2)
    assert video.video.grids[1] == video.video.grids[2]  # same grid: one reshape serves both
    with frozen_except(video), torch.enable_grad(), \
            GradCAM(model=SingleInput(video, name="video", fixed={}, head=None),
                    target_layers=[l1, l2], reshape_transform=reshape) as gc:
        ref = gc(input_tensor=x["video"], targets=[ClassifierOutputTarget(1)])[0]
    # The library scales each layer's zoomed map once; we take its finished single-layer maps
    # (clipped at 0 and rescaled once more after the spline zoom), so they agree up to that.
    assert np.abs(ours - ref).max() < 0.1 and np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
    one, two = (get_explainer("gradcam")(video, x, target=1, block=b)["video"] for b in (1, 2))
    mean = (one + two) / 2
    np.testing.assert_allclose(ours, (mean - mean.min()) / (mean.max() - mean.min()), atol=1e-5)
    assert not np.allclose(ours, one, atol=1e-3)  # the second block changes the map
    default = get_explainer("gradcam")(video, x, target=1)["video"]  # CAM_BLOCKS = (0, 1)
    assert default.shape == ours.shape and np.isclose(default.max(), 1.0)
    assert np.allclose(default, get_explainer("gradcam")(video, x, target=1, block="0,1")["video"])


def test_audio_contrast_vanishes_when_the_sound_is_silence(loaded, prepared):
    """With the clip's own audio replaced by silence, both maps are the same: nothing is left."""
    from mmt_core.explain import silence_fbank

    model, meta = loaded["mmt_tiny"]
    silent = {**prepared["mmt_tiny"]["inputs"], "audio": silence_fbank(meta)}
    res = get_explainer("audio_contrast")(model, silent, target=2, meta=meta)
    assert res["video"].max() == 0.0
    with pytest.raises(ValueError, match="meta"):
        get_explainer("audio_contrast")(model, silent, target=2)


# ----------------------------------------------------------------------------- relevance rule
def _block(**kw) -> MultiScaleBlock:
    args = dict(dim=4, dim_out=4, num_heads=1, input_size=(2, 2), kernel_q=(1, 1),
                kernel_kv=(1, 1), stride_q=(1, 1), stride_kv=(1, 1), axis_names=("h", "w"))
    return MultiScaleBlock(**{**args, **kw})


def test_block_rule_is_chefers_rule_without_pooling():
    from mmt_core.explain.relevance import block_rule

    blk = _block(residual_pool=False)  # no pooling anywhere: R_out = R + Ā R
    assert blk.attn.pool_q is None and blk.attn.pool_v is None and blk.shortcut_pool is None
    torch.manual_seed(0)
    A = torch.rand(1, 1, 5, 5).softmax(-1)
    G = torch.randn(1, 1, 5, 5)
    abar = (A * G).clamp(min=0)[0, 0]
    R = block_rule(torch.eye(5), blk, (2, 2), 1, A, G)
    assert torch.allclose(R, torch.eye(5) + abar)


def test_block_rule_carries_relevance_through_q_pooling():
    """A 2×2 grid pooled to one token (Q stride 2, kernel 1): the shortcut max-pool (3×3 window,
    padding 1) covers all four tokens (1/4 each), the residual pooling conv picks token (0, 0);
    the two skip paths are averaged: 1/8 + 1/2 on token (0, 0), 1/8 on the others."""
    from mmt_core.explain.relevance import block_rule

    blk = _block(stride_q=(2, 2), stride_kv=(1, 1))
    assert blk.attn.pool_q is not None and blk.shortcut_pool is not None
    A = torch.zeros(1, 1, 2, 5)  # (prefix + 1 query) x (prefix + 4 keys): no attention term
    R = block_rule(torch.eye(5), blk, (2, 2), 1, A, torch.zeros_like(A))
    assert R.shape == (2, 5)
    assert torch.allclose(R[0], torch.tensor([1.0, 0, 0, 0, 0]))  # the class token: identity
    assert torch.allclose(R[1], torch.tensor([0.0, 5 / 8, 1 / 8, 1 / 8, 1 / 8]))
    A[0, 0, 0, 3] = 1.0  # the class token attends to grid token (1, 0) with a positive gradient
    R = block_rule(torch.eye(5), blk, (2, 2), 1, A, torch.full_like(A, 0.5))
    assert torch.allclose(R[0], torch.tensor([1.0, 0, 0, 0.5, 0]))


@pytest.mark.parametrize("name", ["mvit_tiny_video", "mat_tiny"])
def test_relevance_rollout_equals_the_full_matrix_product(name, loaded, prepared):
    """The readout (one backward pass through the rule) equals the class row of the full
    R = M_n ... M_1 · I computed block by block."""
    from mmt_core.explain._common import model_inputs
    from mmt_core.explain.relevance import block_rule, record_attention, relevance_maps

    model, _ = loaded[name]
    x = model_inputs(model, prepared[name]["inputs"])
    encs, steps, attn, first = record_attention(model, x, 1, None)
    (enc_name, grid0), = first.items()
    n0 = 1 + int(np.prod(grid0))
    R = torch.eye(n0)
    for (_, blk, grid, P), (A, G) in zip(steps, attn):
        R = block_rule(R, blk, grid, P, A, G)
    full = R[0, 1:].reshape(grid0)
    fast = relevance_maps(model, x, 1, None)[enc_name]
    assert torch.allclose(fast, full, rtol=1e-4, atol=1e-6)
    assert full.abs().sum() > 0


# ----------------------------------------------------------------------------- occlusion
class OneRegion(nn.Module):
    """A video 'model' whose class-0 score is the mean of one 16×16 region of every frame."""

    modalities = "v"

    def __init__(self, y0: int, x0: int):
        super().__init__()
        self.y0, self.x0 = y0, x0
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, *, video):
        r = video[:, :, :, self.y0:self.y0 + 16, self.x0:self.x0 + 16].mean(dim=(1, 2, 3, 4))
        return ModelOutput(head_logits={"label": torch.stack((r * self.w, -r), dim=1)})


def test_occlusion_finds_the_only_region_that_matters():
    torch.manual_seed(0)
    model = OneRegion(48, 16)
    video = torch.rand(1, 3, 8, 96, 96)  # a noisy background …
    video[..., 48:64, 16:32] += 2.0  # … and one bright "object": blanking it lowers the score
    res = get_explainer("occlusion")(model, {"video": video}, target=0)
    m = res["video"]
    assert m.shape == (8, 96, 96) and res["audio"] is None
    iy, ix = np.unravel_index(m[0].argmax(), m[0].shape)
    assert 48 <= iy < 64 and 16 <= ix < 32  # the peak is the region's patch centre
    inside = m[:, 48:64, 16:32].sum() / m.sum()
    assert inside > 0.2  # most mass near the region (the map is interpolated between centres)
    assert m[:, :16, 64:].max() == 0.0  # far away: no drop at all


def test_occlusion_blanks_video_to_each_frames_background_colour():
    from mmt_core.explain.occlusion import _blank

    video = torch.full((1, 3, 4, 32, 32), 0.2)
    video[:, 0] = torch.arange(4.0).view(4, 1, 1)  # red channel: frame t's background is t
    video[..., 8:16, 8:16] = 5.0  # an object covering 1/16 of each frame
    fill = _blank("video", video)
    assert fill.shape == (1, 3, 4, 1, 1)
    assert torch.equal(fill[0, 0, :, 0, 0], torch.arange(4.0))  # per frame, not the object's 5
    assert torch.allclose(fill[0, 1:], torch.tensor(0.2))
    assert _blank("audio", torch.ones(1, 1, 8, 8)) == 0.0  # the mean fbank level


# ----------------------------------------------------------------------------- pointing game
def test_pointing_game_scores_through_mmt_eval(ckpts, synth_dir, capsys):
    from mmt_core.cli import main

    rc = main(["eval", "--checkpoint", str(ckpts["mmt_tiny"]), "--manifest",
               str(synth_dir / "manifest.csv"), "--split", "test", "--pointing",
               "--explainer", "gradcam", "--explainer", "relevance", "--batch-size", "4", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["pointing"]) == {"gradcam", "relevance"}
    assert rep["pointing_block"] == [0, 1]  # the default CAM layers
    assert rep["pointing_best"] in rep["pointing"]
    best = rep["pointing"][rep["pointing_best"]]["accuracy"]
    assert all(best >= p["accuracy"] for p in rep["pointing"].values())
    for p in rep["pointing"].values():
        assert {"accuracy", "energy", "centre_baseline", "random_baseline", "frames",
                "clips"} <= set(p)
        assert p["clips"] == 6 and p["frames"] == 6 * 8
        for k in ("accuracy", "energy", "centre_baseline", "random_baseline"):
            assert 0.0 <= p[k] <= 1.0
        assert 0.01 < p["random_baseline"] < 0.3  # built-in boxes cover a few % of the frame
        # built-in sidecars have event onsets: the audio map's mass near them, and chance
        assert 0.0 <= p["audio_event_mass"] <= 1.0 and 0.05 < p["audio_event_coverage"] < 0.6
    same = {k: rep["pointing"]["gradcam"][k] for k in ("centre_baseline", "random_baseline")}
    assert same == {k: rep["pointing"]["relevance"][k] for k in same}  # baselines: one per clip set


def test_pointing_errors(ckpts, synth_dir, capsys):
    from mmt_core.cli import main

    base = ["eval", "--checkpoint", str(ckpts["mvit_tiny_video"]), "--manifest",
            str(synth_dir / "manifest.csv"), "--split", "test", "--pointing", "--batch-size", "4"]
    assert main(base + ["--explainer", "saliency"]) == 2
    assert "unknown explainer 'saliency'" in capsys.readouterr().err
    assert main(base + ["--explainer", "audio_contrast"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert main(base + ["--explainer", "gradcam", "--cam-block", "7"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(base + ["--explainer", "gradcam", "--cam-block", "0,x"]) == 2
    assert "--cam-block" in capsys.readouterr().err
    audio = ["eval", "--checkpoint", str(ckpts["mat_tiny"]), *base[3:]]
    assert main(audio) == 2
    assert "video encoder" in capsys.readouterr().err
