"""Config loading: YAML recipes with `base:`, --set overrides, and clear errors."""
import subprocess
import sys

import pytest

from mmt_core.config import ExperimentConfig, apply_override, config_from_dict, load_config
from mmt_core.errors import ConfigError


def test_defaults_follow_the_paper():
    cfg = ExperimentConfig()
    assert cfg.loss.tau == 0.07
    assert cfg.train.lr == 1e-4
    assert cfg.data.num_mel_bins == 128 and cfg.data.audio_frames == 1024
    assert cfg.loss.lambda_schedule == [[20, 0.25], [40, 0.1], [None, 0.05]]


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: mmt_tiny\nmodel_args: {fusion_tokens: 4, fusion_blocks: 2}\n"
        "data: {num_frames: 8, image_size: 96}\ntrain: {epochs: 3}\n")
    (tmp_path / "row.yaml").write_text(
        "base: base.yaml\nmodel_args: {fusion: avg}\nloss: {avc: false}\n")
    cfg = load_config(tmp_path / "row.yaml", ["train.max_steps=8", "seed=3", "data.image_size=64",
                                              "loss.lambda_schedule=[[null, 0.5]]"])
    assert cfg.model == "mmt_tiny"
    # model_args merge key by key; nested sections merge too
    assert cfg.model_args == {"fusion_tokens": 4, "fusion_blocks": 2, "fusion": "avg"}
    assert cfg.data.num_frames == 8 and cfg.data.image_size == 64
    assert cfg.loss.avc is False and cfg.loss.imc is True
    assert cfg.train.epochs == 3 and cfg.train.max_steps == 8 and cfg.train.seed == 3
    assert cfg.loss.lambda_schedule == [[None, 0.5]]


def test_tuple_fields_round_trip():
    cfg = config_from_dict({"data": {"video_mean": [0.5, 0.5, 0.5]}})
    assert cfg.data.video_mean == (0.5, 0.5, 0.5)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("item, message", [
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("train.nonsense=1", "unknown config key 'train.nonsense'"),
    ("no_equals_sign", "key=value"),
])
def test_bad_overrides_are_config_errors(item, message):
    values = {}
    with pytest.raises(ConfigError, match=message):
        apply_override(values, item)
        config_from_dict(values)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_reports_config_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmt_core", "train", "--config",
                        str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "config file not found" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_numbers_without_a_dot_are_numbers():
    cfg = load_config(None, ["train.lr=5e-4", "train.epochs=3"])
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match="expects a number"):
        load_config(None, ["train.lr=fast"])
