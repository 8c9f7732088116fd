"""The registry: names, overrides accepted by every builder, errors, model_info and `mmt info`."""
import json

import pytest
import torch

from mmt_core.cli import main
from mmt_core.errors import UserError
from mmt_core.registry import create_model, list_models, model_info

NAMES = ["mat_tiny", "mat_s", "mat_b", "mvit_tiny_video", "mvit_v2_s_video", "mvit_v2_b_video",
         "mmt_tiny", "mmt_s", "mmt_b", "mvitv2_tiny_image", "ast_b", "ast_tiny", "mbt_b", "mbt_tiny"]


def test_all_variants_are_listed():
    assert set(NAMES) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_every_builder_takes_every_shape_override(name):
    with torch.device("meta"):  # no memory or init cost, even for the B models
        m = create_model(name, num_classes=3, num_frames=4, image_size=64, mel_bins=64,
                         audio_frames=128)
    assert hasattr(m, "input_spec") and hasattr(m, "modalities")
    spec = m.input_spec
    if "audio" in spec:
        assert spec["audio"] == (1, 64, 128)
    if "video" in spec:
        assert spec["video"] == (3, 4, 64, 64)
    if "image" in spec:
        assert spec["image"] == (3, 64, 64)


def test_defaults_and_mmt_options():
    with torch.device("meta"):
        assert create_model("mmt_tiny").input_spec == {"video": (3, 8, 96, 96), "audio": (1, 128, 320)}
        assert create_model("mat_b").input_spec == {"audio": (1, 128, 1024)}
        assert create_model("mmt_tiny", modalities="a").input_spec == {"audio": (1, 128, 320)}
        m = create_model("mmt_tiny", fusion_blocks=2, fusion_tokens=3, proj_dim=32)
        assert m.bottleneck.tokens.shape == (1, 3, 128) and m.bottleneck.num_blocks == 2
        assert m.audio_proj.out_features == 32


def test_unknown_name_and_option():
    with pytest.raises(ValueError, match="available: .*mat_b"):
        create_model("nope")
    with pytest.raises(UserError):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown model options"):
        create_model("mat_tiny", fusoin="avg")
    with pytest.raises(ValueError, match="modalities"):
        create_model("mat_tiny", modalities="v")


def test_model_info_counts_attention():
    small = model_info("mat_tiny", audio_frames=160)
    big = model_info("mat_tiny", audio_frames=640)
    assert small["inputs"] == {"audio": [1, 1, 128, 160]} and small["params"] > 0
    # Linear layers scale with tokens; attention with tokens^2: more than 4x for 4x the frames.
    assert big["gmacs"] > 4 * small["gmacs"]


def test_cli_info_json_and_unknown_model(capsys):
    assert main(["info", "--model", "mat_tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "mat_tiny" and info["params"] > 1e5 and info["gmacs"] > 0.1
    assert main(["info", "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmt info: error: unknown model 'nope'") and "\n" not in err
