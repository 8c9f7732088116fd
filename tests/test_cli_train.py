"""`mmt train / eval / predict` end to end through the CLI (subprocesses, like a user)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine_helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def mmt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmt_core", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    recipe = out.parent / "recipe.yaml"
    recipe.write_text("model: mmt_tiny\ntrain:\n  epochs: 5\n")
    sets = [a for o in tiny_overrides(synth_dir / "manifest.csv") for a in ("--set", o)]
    r = mmt("train", "--config", recipe, "--out", out, *sets, "--set", "max_steps=2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["step"] == 2 and Path(res["last"]).is_dir()
    return out


def test_eval_json_fields(run_dir, synth_dir):
    r = mmt("eval", "--checkpoint", run_dir / "last", "--manifest", synth_dir / "manifest.csv",
            "--split", "test", "--views", "2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["clips"] == 6 and res["skipped"] == 0 and res["views"] == 2
    assert 0 <= res["top1"] <= res["top5"] <= 1
    assert len(res["per_class"]) == 6 and len(res["confusion"]) == 6
    assert sum(map(sum, res["confusion"])) == 6


def test_predict_json(run_dir, synth_dir):
    clip = next((synth_dir / "test").glob("*.mp4"))
    r = mmt("predict", clip, "--checkpoint", run_dir / "last", "--topk", "2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["predictions"]["label"]) == 2 and res["has_audio"] is True


def test_user_errors_exit_2_with_one_line(run_dir, synth_dir, tmp_path, capsys):
    from mmt_core.cli import main

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 100)
    cases = [
        ("predict", synth_dir / "manifest.csv", "--checkpoint", tmp_path / "nope"),
        ("eval", "--checkpoint", tmp_path, "--manifest", synth_dir / "manifest.csv"),
        ("predict", bad, "--checkpoint", run_dir / "last"),
        ("train", "--config", tmp_path / "missing.yaml", "--out", tmp_path / "r"),
        ("train", "--config", ROOT / "configs" / "synthetic_mmt_tiny.yaml", "--out",
         tmp_path / "r2", "--resume"),
    ]
    for args in cases:  # in-process: main() is exactly what the `mmt` entry point runs
        assert main([str(a) for a in args]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mmt {args[0]}: error:"), lines
    r = mmt("predict", bad, "--checkpoint", run_dir / "last")  # and once as a real process
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
