"""`torchrun --nproc_per_node 2` on CPU (gloo): both ranks train in lock-step and end equal."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine_helpers import tiny_overrides
from mmt_core import checkpoint as ckpt
from mmt_core.engine import _weights_hash

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, os, sys
from mmt_core.config import load_config
from mmt_core.engine import train
res = train(load_config(None, json.loads(sys.argv[2])), sys.argv[1], progress=False)
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(res, f)
"""


def test_two_process_training_keeps_ranks_identical(synth_dir, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    run.mkdir()
    # 12 clips / 2 ranks = 6 per rank, batch 2: 3 steps per epoch; stop after 3 (an epoch end,
    # so the rank-0 validation + barrier path runs too).
    overrides = tiny_overrides(synth_dir / "manifest.csv", "train.batch_size=2", "max_steps=3",
                               "train.epochs=2", "model_args.drop_path=0.1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--standalone", str(script), str(run), json.dumps(overrides)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((run / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(x["world_size"] == 2 and x["step"] == 3 for x in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    model, meta = ckpt.load_checkpoint(run / "last")  # rank 0 wrote it
    assert _weights_hash(model) == ranks[0]["weights_sha256"]
    assert meta["step"] == 3 and ranks[0]["skipped"] == 0


def _torchrun(script, run, overrides, *extra):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--standalone", str(script), str(run), json.dumps(overrides), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((run / f"rank{i}.json").read_text()) for i in (0, 1)]


RESUME_SCRIPT = SCRIPT.replace("progress=False)", "progress=False, resume=len(sys.argv) > 3)")


def test_two_process_resume_mid_epoch_is_exact_with_drop_path(synth_dir, tmp_path):
    """Each rank draws its own drop-path noise (and augmentations): the checkpoint keeps every
    rank's RNG state, so stopping after 2 steps and resuming ends where 4 straight steps end."""
    script = tmp_path / "ddp_train.py"
    script.write_text(RESUME_SCRIPT)
    base = tiny_overrides(synth_dir / "manifest.csv", "train.batch_size=2", "train.epochs=2",
                          "model_args.drop_path=0.2", "data.train_scale=[0.3,1.0]")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    want = _torchrun(script, straight, [*base, "train.max_steps=4"])
    _torchrun(script, resumed, [*base, "train.max_steps=2"])
    got = _torchrun(script, resumed, [*base, "train.max_steps=4"], "resume")
    assert got[0]["step"] == want[0]["step"] == 4
    assert got[0]["weights_sha256"] == got[1]["weights_sha256"] == want[0]["weights_sha256"]
