"""workbench/teach.py without the page: the per-session clip store with the app's limits, the
taught-models zip (loads with `mmt predict` after unzipping) and its validation on restore."""
from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch

from conftest import make_media
from mmt_core.errors import UserError
from workbench import teach
from workbench.service import Workbench
from wb_helpers import DEMO, make_checkpoint


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A 'taught' set: the three tiny models (random weights) with a reference and a few-clip
    pool (probes on random descriptors) in each."""
    from mmt_core import fewshot, ood
    from mmt_core.checkpoint import read_meta

    root = tmp_path_factory.mktemp("taught")
    clips = [make_media(root / f"ref{i}.mp4", seconds=1.0 + 0.5 * i) for i in range(3)]
    for name in DEMO:
        make_checkpoint(root, name)
        ood.build(root / name, clips)
        meta = read_meta(root / name)
        dims = {"audio": meta["preprocessing"]["num_mel_bins"], "video": fewshot.BINS ** 3}
        classes = len(next(iter(meta["classes"].values())))
        y = torch.arange(classes).repeat(2)
        probes = {s: fewshot.fit_probe(torch.rand(len(y), dims[s]), y, classes)
                  for s in fewshot.SENSES[meta["modalities"]]}
        fewshot.save_pool(root / name, fewshot.Pool(probes, {"net": 1.0, **{s: 0.5 for s in probes}},
                                                    (meta["preprocessing"]["video_mean"],
                                                     meta["preprocessing"]["video_std"])))
    return root


def test_clip_store_limits_and_counts(tmp_path):
    wb = Workbench(checkpoints=tmp_path / "none", cache_dir=tmp_path / "cache", max_seconds=3,
                   max_mb=1)
    store = wb.clips
    ok = [make_media(tmp_path / f"c{i}.mp4", seconds=1.5) for i in range(3)]
    assert store.add("s1", "knock", ok, check=wb.check_clip) == {"knock": 3}
    assert store.add("s1", "clap", ok[:2], check=wb.check_clip) == {"clap": 2, "knock": 3}
    assert store.counts("s2") == {}  # sessions do not see each other's clips
    with pytest.raises(UserError, match="at least 3 clips"):
        store.ready("s1")
    with pytest.raises(UserError, match="accepts clips up to 3 s"):
        store.add("s1", "clap", [make_media(tmp_path / "long.mp4", seconds=4.0)],
                  check=wb.check_clip)
    with pytest.raises(UserError, match="no video stream"):
        store.add("s1", "clap", [make_media(tmp_path / "a.m4a", video=False)], check=wb.check_clip)
    big = tmp_path / "big.mp4"
    big.write_bytes(ok[0].read_bytes() + bytes(1_200_000))
    with pytest.raises(UserError, match="accepts up to 1 MB"):
        store.add("s1", "clap", [big], check=wb.check_clip)
    for bad in ("", "../x", "a/b", "x" * 41):
        with pytest.raises(UserError, match="class name"):
            store.add("s1", bad, ok, check=wb.check_clip)
    assert store.counts("s1") == {"clap": 2, "knock": 3}  # nothing half-added
    store.add("s1", "clap", ok[2:], check=wb.check_clip)
    assert store.ready("s1") == store.folder("s1")
    # a server-side folder of class folders
    src = tmp_path / "src"
    for c in ("bell", "drum"):
        (src / c).mkdir(parents=True)
        for i in range(3):
            shutil.copy(ok[i], src / c / f"{i}.mp4")
    assert store.add_folder("s3", src, check=wb.check_clip) == {"bell": 3, "drum": 3}
    with pytest.raises(UserError, match="not a folder"):
        store.add_folder("s3", tmp_path / "missing", check=wb.check_clip)
    store.clear("s3")
    assert store.counts("s3") == {}


def test_clear_runs_deletes_earlier_run_folders_only(tmp_path):
    jobs = tmp_path / "jobs"
    assert teach.clear_runs(jobs) == 0  # no runs yet
    for run in ("20261203-080000-1-2", "20261203-090000-1-2"):
        (jobs / run / "mmt" / "last").mkdir(parents=True)
        (jobs / run / "mmt" / "last" / "model.safetensors").write_bytes(b"x" * 100)
    (jobs / "notes.txt").write_text("not a run")
    assert teach.clear_runs(jobs) == 2
    assert [p.name for p in jobs.iterdir()] == ["notes.txt"]


def test_batch_size_fits_the_training_part():
    assert teach._batch_size({"a": 6, "b": 6, "c": 6, "d": 6, "e": 6}) == 8
    assert teach._batch_size({"a": 3, "b": 3}) == 4  # 2 + 2 train clips after 1 val each


def test_zip_loads_with_mmt_predict_after_unzipping(taught, tmp_path, capsys):
    from mmt_core.cli import main

    z = teach.zip_taught(taught, tmp_path / "mmt_taught.zip")
    names = zipfile.ZipFile(z).namelist()
    assert sorted(names) == sorted(f"mmt_taught/{m}/{f}" for m in DEMO
                                   for f in teach.CHECKPOINT_FILES)
    zipfile.ZipFile(z).extractall(tmp_path / "unzipped")
    clip = make_media(tmp_path / "clip.mp4", seconds=2.0)
    for name in DEMO:
        assert main(["predict", str(clip), "--checkpoint",
                     str(tmp_path / "unzipped" / "mmt_taught" / name), "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["model"] == name and len(res["predictions"]["label"]) == 5
        assert set(res["ood"]) >= {"score", "threshold", "flagged"}
    # ... and restores as the taught set
    summary = teach.restore_zip(z, tmp_path / "restored")
    assert summary["classes"][0] == "ball_bell"
    assert all((tmp_path / "restored" / m / "model.safetensors").is_file() for m in DEMO)


def _zip(path, entries: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_restore_rejects_anything_but_our_checkpoint_files(taught, tmp_path):
    good = {f"{m}/{f}": (taught / m / f).read_bytes() for m in DEMO for f in teach.CHECKPOINT_FILES}
    dst = tmp_path / "dst"
    cases = {
        "traversal": ({**good, "../evil/model.safetensors": b"x"}, "unexpected file"),
        "absolute": ({**good, "/etc/mmt_tiny/config.json": b"x"}, "unexpected file"),
        "pickle": ({**good, "mmt_tiny/model.pt": b"x"}, "unexpected file"),
        "extra": ({**good, "notes.txt": b"hi"}, "unexpected file"),
        "missing": ({k: v for k, v in good.items() if not k.startswith("mat_tiny/model")},
                    "mat_tiny"),
        "bad weights": ({**good, "mvit_tiny_video/model.safetensors": b"\x00" * 64},
                        "unreadable weights"),
    }
    for what, (entries, message) in cases.items():
        with pytest.raises(UserError, match=message):
            teach.restore_zip(_zip(tmp_path / f"{what}.zip", entries), dst)
        assert not dst.exists(), what  # nothing half-restored
    with pytest.raises(UserError, match="unpacks to"):
        teach.restore_zip(_zip(tmp_path / "big.zip", good), dst, max_mb=1)
    notzip = tmp_path / "no.zip"
    notzip.write_text("hello")
    with pytest.raises(UserError, match="not a zip"):
        teach.restore_zip(notzip, dst)
    other = json.loads(good["mat_tiny/config.json"])
    other["model"] = "mat_b"
    with pytest.raises(UserError, match="names another model"):
        teach.restore_zip(_zip(tmp_path / "other.zip", {
            **good, "mat_tiny/config.json": json.dumps(other)}), dst)
    assert teach.restore_zip(_zip(tmp_path / "ok.zip", good), dst)["classes"]
