"""WebDataset shards: `mmt shard` (whole clips byte for byte, EPIC segments by stream copy,
decoded frames + fbank), reading them into the same items as AVDataset, training and evaluation
through the CLI, exact resume, and two ranks under torchrun with c10d rendezvous."""
from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import frame_level, make_media
from engine_helpers import TINY, tiny_cfg, tiny_overrides
from mmt_core import checkpoint as ckpt
from mmt_core.cli import main as mmt
from mmt_core.config import DataConfig
from mmt_core.data.dataset import AVDataset, collate_skip_broken
from mmt_core.data.manifests import read_manifest
from mmt_core.data.media import decode, probe
from mmt_core.data.shards import ShardDataset, read_index, shard_urls, write_shards
from mmt_core.engine import train
from mmt_core.errors import ConfigError
from test_ddp import ROOT, SCRIPT

SMALL = DataConfig(num_frames=4, image_size=32, num_mel_bins=64, audio_frames=64,
                   clip_seconds=3.2)  # the sizes of engine_helpers.TINY


def _samples(tar) -> list[dict]:
    return list(wds.WebDataset(str(tar), shardshuffle=False, empty_check=False))


@pytest.fixture(scope="module")
def sharded(synth_dir, tmp_path_factory):
    """The tiny built-in dataset + one broken clip, as mp4 shards of 5 samples (train) and one
    shard (test)."""
    root = tmp_path_factory.mktemp("sharddata")
    data = root / "data"
    shutil.copytree(synth_dir, data)
    (data / "train" / "broken.mp4").write_bytes(b"not a video" * 40)
    with open(data / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerow(["train/broken.mp4", "ball_bell", "train"])
    out = root / "shards"
    res = write_shards(data / "manifest.csv", out, split="train", shard_size=5, progress=False)
    write_shards(data / "manifest.csv", out, split="test", progress=False)
    return data, out, res


def test_shard_counts_index_and_original_bytes(sharded):
    data, out, res = sharded
    assert res["samples"] == 12 and res["skipped"] == 1 and res["shards"] == 3
    assert "broken.mp4" in res["skipped_clips"][0]["path"]
    idx = json.loads((out / "index.json").read_text())
    assert [s["samples"] for s in idx["splits"]["train"]["shards"]] == [5, 5, 2]
    assert [s["name"] for s in idx["splits"]["train"]["shards"]] == [
        "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert idx["splits"]["test"]["samples"] == 6 and idx["splits"]["train"]["skipped"] == 1
    assert idx["classes"]["label"][0] == "ball_bell" and idx["kind"] == "mp4"
    assert len(idx["manifest_sha256"]) == 64
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json", "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    first = [json.loads(x["json"])["source"]["path"] for x in _samples(out / "train-000000.tar")]
    in_order = [r.path for r in read_manifest(data / "manifest.csv", split="train").records][:5]
    assert sorted(first) != sorted(in_order)  # written in a seeded random order: mixed classes
    s = _samples(out / "train-000000.tar")[0]
    meta = json.loads(s["json"])
    assert s["mp4"] == Path(meta["source"]["path"]).read_bytes()  # no re-encode
    names = idx["classes"]["label"]
    assert meta["labels"]["label"]["name"] == names[meta["labels"]["label"]["index"]]
    assert meta["sidecar"] is not None and "boxes" in json.dumps(meta["sidecar"])


def test_epic_segment_is_cut_by_stream_copy(tmp_path):
    (tmp_path / "P01" / "videos").mkdir(parents=True)
    video = make_media(tmp_path / "P01" / "videos" / "P01_01.MP4", seconds=6.0)
    csv_path = tmp_path / "EPIC_100_train.csv"
    csv_path.write_text(
        "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
        "P01_01_0,P01,P01_01,00:00:02.00,00:00:04.00,3,8\n"
        "P01_01_1,P01,P01_01,00:00:00.20,00:00:01.40,0,4\n")
    res = write_shards(csv_path, tmp_path / "shards", split="train", progress=False)
    assert res["samples"] == 2 and res["skipped"] == 0
    full = probe(video).duration
    for s in _samples(tmp_path / "shards" / "train-000000.tar"):
        meta = json.loads(s["json"])
        src = meta["source"]
        cut = probe(io.BytesIO(s["mp4"])).duration
        assert full - 1.0 > cut >= src["end"] - src["start"] - 0.05  # shorter, not too short
        assert meta["cut"]["method"] == "stream copy" and meta["labels"]["verb"]["index"] in (0, 3)
        assert meta["end"] - meta["start"] == pytest.approx(src["end"] - src["start"], abs=1e-4)
        seconds = src["end"] - src["start"]
        a = decode(video, num_frames=6, clip_seconds=seconds, start=src["start"], end=src["end"])
        b = decode(io.BytesIO(s["mp4"]), num_frames=6, clip_seconds=seconds, start=meta["start"],
                   end=meta["end"])
        assert np.array_equal(a.frames, b.frames)  # the same frames (grey level = frame index)
        want = [frame_level(int(t * 25)) for t in a.times]  # the frames of the segment's times
        assert np.abs(b.frames[:, 0, 0, 0].astype(int) - want).max() <= 4
        # the same sound: the tone's level rises with time, so its 10-ms envelope tells the time
        env = [np.sqrt((x[:len(x) // 160 * 160].reshape(-1, 160) ** 2).mean(1))
               for x in (a.audio, b.audio)]
        assert np.abs(env[0] - env[1])[5:].max() < 0.02 and env[0].max() > 0.1


def test_shard_items_equal_avdataset_items(sharded):
    data, out, _ = sharded
    m = read_manifest(data / "manifest.csv", split="test")
    cfg = DataConfig(**{**SMALL.__dict__, "manifest": str(data / "manifest.csv")})
    idx = read_index(str(out))
    urls, n = shard_urls(str(out), idx, "test")
    assert n == 6
    by_path = {r.path: i for i, r in enumerate(m.records)}
    for views in (1, 2):
        files = AVDataset(m.records, m.classes, cfg, train=False, num_views=views)
        shards = ShardDataset(urls, idx, m.classes, cfg, train=False, num_views=views)
        items = list(shards)
        assert len(items) == 6
        for it, s in zip(items, _samples(urls[0])):
            ref = files[by_path[json.loads(s["json"])["source"]["path"]]]
            assert torch.equal(it["video"], ref["video"]) and torch.equal(it["audio"], ref["audio"])
            assert it["labels"] == ref["labels"] and it["has_audio"] == ref["has_audio"]


def test_decoded_shards_hold_what_training_consumes(sharded, tmp_path):
    data, _, _ = sharded
    cfg = DataConfig(**{**SMALL.__dict__, "manifest": str(data / "manifest.csv")})
    res = write_shards(data / "manifest.csv", tmp_path, split="test", decoded_cfg=cfg,
                       progress=False)
    assert res["kind"] == "decoded" and res["samples"] == 6
    s = _samples(tmp_path / "test-000000.tar")[0]
    assert sorted(k for k in s if not k.startswith("__")) == [
        "000.jpg", "001.jpg", "002.jpg", "003.jpg", "fbank.npy", "json"]
    idx = read_index(str(tmp_path))
    assert idx["preprocessing"]["num_frames"] == 4 and idx["preprocessing"]["short_side"] == 256
    m = read_manifest(data / "manifest.csv", split="test")
    files = AVDataset(m.records, m.classes, cfg, train=False)
    urls, _ = shard_urls(str(tmp_path), idx, "test")
    by_path = {r.path: i for i, r in enumerate(m.records)}
    for it, s in zip(ShardDataset(urls, idx, m.classes, cfg, train=False), _samples(urls[0])):
        ref = files[by_path[json.loads(s["json"])["source"]["path"]]]
        assert it["video"].shape == ref["video"].shape and it["audio"].shape == ref["audio"].shape
        assert (it["video"].float() - ref["video"].float()).abs().mean() < 1.7  # uint8, JPEG q95
        assert (it["audio"] - ref["audio"]).abs().max() < 0.01  # float16 fbank
    with pytest.raises(ConfigError, match="num_frames=4, the config says 8"):
        ShardDataset(urls, idx, m.classes, DataConfig(**{**cfg.__dict__, "num_frames": 8}),
                     train=False)


def test_broken_sample_in_a_shard_is_counted(tmp_path, sharded):
    _, out, _ = sharded
    good = _samples(out / "test-000000.tar")[0]
    with wds.TarWriter(str(tmp_path / "test-000000.tar")) as w:
        w.write({"__key__": "0000000", "mp4": good["mp4"], "json": good["json"]})
        w.write({"__key__": "0000001", "mp4": b"garbage" * 100, "json": good["json"]})
    idx = read_index(str(out))
    ds = ShardDataset([str(tmp_path / "test-000000.tar")], idx, idx["classes"], SMALL,
                      train=False)
    batch = collate_skip_broken(list(ds))
    assert batch["skipped"] == 1 and len(batch["index"]) == 1
    assert "0000001" in batch["skipped_paths"][0]


def test_train_and_eval_from_shards_through_the_cli(sharded, tmp_path, capsys):
    data, out, _ = sharded
    sets = [a for kv in tiny_overrides(data / "manifest.csv", f"data.shards={out}",
                                       "train.epochs=2", "data.num_workers=2",
                                       "data.val_split=test")
            for a in ("--set", kv)]
    assert mmt(["train", "--config", str(ROOT / "configs" / "synthetic_base.yaml"),
                "--out", str(tmp_path / "run"), "--json", *sets]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 6 and res["val_clips"] == 6  # 12 samples / batch 4 = 3 steps x 2
    _, meta = ckpt.load_checkpoint(tmp_path / "run" / "last")
    assert meta["data"]["shards"] == str(out) and meta["data"]["train_clips"] == 12
    assert mmt(["eval", "--checkpoint", str(tmp_path / "run" / "last"), "--shards", str(out),
                "--split", "test", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["clips"] == 6 and ev["skipped"] == 0 and 0 <= ev["top1"] <= 1


def test_shard_cli_writes_json_and_checks_its_flags(sharded, tmp_path, capsys):
    data, _, _ = sharded
    man = str(data / "manifest.csv")
    assert mmt(["shard", "--manifest", man, "--split", "test", "--out", str(tmp_path),
                "--shard-size", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["shards"] == 2 and res["samples"] == 6 and res["pattern"].endswith(
        "test-{000000..000001}.tar")
    for argv, msg in ((["--decoded"], "--decoded needs --config"),
                      (["--shard-size", "4", "--shard-mb", "10"], "not both")):
        assert mmt(["shard", "--manifest", man, "--out", str(tmp_path / "x"), *argv]) == 2
        assert msg in capsys.readouterr().err


def test_shard_errors_are_one_line(sharded, tmp_path, capsys):
    data, out, _ = sharded
    base = ["train", "--out", str(tmp_path / "r"), "--config",
            str(ROOT / "configs" / "synthetic_base.yaml"), "--set", "data.manifest="]
    cases = [
        ([*base, "--set", f"data.shards={out}/train-{{000007..000009}}.tar"], "no shards match"),
        ([*base, "--set", f"data.shards={data}/train"], "index.json missing"),
        ([*base, "--set", f"data.shards={out}", "--set", f"data.manifest={data}/manifest.csv.x"],
         "manifest hash mismatch"),
    ]
    (data / "manifest.csv.x").write_text((data / "manifest.csv").read_text() + "x.mp4,a,train\n")
    for argv, msg in cases:
        assert mmt(argv) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert mmt(["shard", "--manifest", str(data / "manifest.csv.x"), "--split", "test",
                "--out", str(out)]) == 2
    assert "another manifest" in capsys.readouterr().err


def test_resume_mid_epoch_from_shards_is_exact(sharded, tmp_path):
    data, out, _ = sharded
    extra = [f"data.shards={out}", "data.val_split=", "data.num_workers=2", "train.epochs=2",
             "model_args.drop_path=0.1", "data.shuffle_buffer=4"]
    man = data / "manifest.csv"
    train(tiny_cfg(man, *extra, "max_steps=5"), tmp_path / "a", progress=False)
    train(tiny_cfg(man, *extra, "max_steps=2"), tmp_path / "b", progress=False)
    res = train(tiny_cfg(man, *extra, "max_steps=5"), tmp_path / "b", resume=True, progress=False)
    assert res["step"] == 5
    a, _ = ckpt.load_checkpoint(tmp_path / "a" / "last")
    b, _ = ckpt.load_checkpoint(tmp_path / "b" / "last")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_c10d_rendezvous_end_on_identical_weights(sharded, tmp_path):
    """Two `torchrun --nnodes 2` agents on this machine (one gloo rank each) train from two
    shards: the multi-node command of docs/scaling.md."""
    data, out, _ = sharded
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    run.mkdir()
    # 12 samples / (2 ranks x batch 2) = 3 steps per epoch; 3 steps then the epoch-end eval
    two = f"data.shards={out}/train-{{000000..000001}}.tar"
    overrides = tiny_overrides(data / "manifest.csv", two,
                               "train.batch_size=2", "max_steps=3", "train.epochs=2",
                               "data.num_workers=0")
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "t",
           str(script), str(run), json.dumps(overrides)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    ranks = [json.loads((run / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == 3 for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["val_clips"] == 6  # every test sample once, split over the two ranks
