"""Manifest readers on small files in each dataset's real column format."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmt_core.data import manifests
from mmt_core.data.manifests import read_manifest, sniff_format
from mmt_core.errors import UserError


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0")
    return p


def test_vggsound(tmp_path):
    csv = tmp_path / "vggsound.csv"  # no header; labels may hold commas (quoted)
    csv.write_text('---g-f_I2yQ,1,"people marching",test\n'
                   '--0PQM4-hqg,30,"waterfall burbling",train\n'
                   '--56QUhyDQM,185,"playing tennis",train\n'
                   '-0aRbIOQZmg,25,"dog barking, growling",train\n')
    media = tmp_path / "media"
    _touch(media / "--0PQM4-hqg_000030.mp4")
    _touch(media / "--56QUhyDQM_000185.mkv")  # any extension found is accepted
    assert sniff_format(csv) == "vggsound"
    m = read_manifest(csv, root=str(media), split="train")
    assert [Path(r.path).name for r in m.records] == [
        "--0PQM4-hqg_000030.mp4", "--56QUhyDQM_000185.mkv", "-0aRbIOQZmg_000025.mp4"]
    assert m.classes["label"] == sorted(["people marching", "waterfall burbling", "playing tennis",
                                         "dog barking, growling"])
    assert m.records[2].labels == {"label": m.classes["label"].index("dog barking, growling")}
    assert not Path(m.records[2].path).exists()  # missing media are kept, not dropped
    assert m.splits == ["test", "train"]
    assert len(read_manifest(csv, root=str(media), split="test").records) == 1


def test_kinetics_sounds(tmp_path):
    csv = tmp_path / "kinetics400_train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "playing bagpipes,abc123,10,20,train\n"
                   "abseiling,zzz999,0,10,train\n"
                   '"playing drums",def456,5,15,val\n'
                   "tapping pen,ghi789,31,41,train\n")
    _touch(tmp_path / "train" / "playing_bagpipes" / "abc123_000010_000020.mp4")  # underscore dirs
    assert sniff_format(csv) == "kinetics_sounds"
    m = read_manifest(csv)
    assert len(manifests.KINETICS_SOUNDS_CLASSES) == 32
    assert [r.id for r in m.records] == ["abc123_000010_000020", "def456_000005_000015",
                                         "ghi789_000031_000041"]  # abseiling is not a KS class
    assert Path(m.records[0].path).exists()
    assert m.records[1].path.endswith("val/playing drums/def456_000005_000015.mp4")
    assert m.classes["label"][m.records[2].labels["label"]] == "tapping pen"


def test_epic100(tmp_path):
    csv = tmp_path / "EPIC_100_validation.csv"
    csv.write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
        "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
        "P01_11_0,P01,P01_11,00:00:00.560,00:00:00.14,00:00:03.37,7,168,take knife,take,0,knife,4,['knife'],[4]\n"
        "P01_11_1,P01,P01_11,00:00:04.370,00:01:04.37,00:01:06.10,218,305,open drawer,open,3,drawer,8,['drawer'],[8]\n")
    (tmp_path / "EPIC_100_verb_classes.csv").write_text(
        "id,key,instances,category\n0,take,\"['take']\",retrieve\n3,open,\"['open']\",access\n")
    _touch(tmp_path / "P01" / "videos" / "P01_11.MP4")
    assert sniff_format(csv) == "epic100"
    m = read_manifest(csv)
    assert len(m.classes["verb"]) == 97 and len(m.classes["noun"]) == 300
    assert m.classes["verb"][0] == "take" and m.classes["verb"][3] == "open"
    assert m.classes["noun"][4] == "noun_4"  # no noun file: generic names
    r = m.records[1]
    assert r.labels == {"verb": 3, "noun": 8} and r.split == "validation" and r.id == "P01_11_1"
    assert r.start == pytest.approx(64.37) and r.end == pytest.approx(66.10)
    assert Path(r.path).exists()
    train = tmp_path / "EPIC_100_train.csv"  # the sibling split is read too: one manifest path
    train.write_text(csv.read_text().splitlines()[0] + "\n"
                     "P02_01_0,P02,P02_01,00:00:01.00,00:00:01.00,00:00:02.50,1,2,cut onion,cut,7,onion,9,[],[]\n")
    both = read_manifest(train)
    assert both.splits == ["train", "validation"] and len(both.records) == 3
    assert [r.id for r in read_manifest(csv, split="train").records] == ["P02_01_0"]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = bad_dir / "EPIC_100_train.csv"
    bad.write_text("narration_id,participant_id,video_id,start_timestamp,stop_timestamp,noun_class\n"
                   "a,P01,P01_1,00:00:01.00,00:00:02.00,3\n")
    with pytest.raises(UserError, match="'verb_class'.*EPIC_100_train.csv|EPIC_100_train.csv.*'verb_class'"):
        read_manifest(bad, format="epic100")


def test_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    _touch(flat / "dog" / "a.mp4")
    _touch(flat / "dog" / "notes.txt")
    _touch(flat / "cat" / "b.webm")
    m = read_manifest(flat)
    assert m.format == "folder" and m.classes["label"] == ["cat", "dog"]
    assert sorted(Path(r.path).name for r in m.records) == ["a.mp4", "b.webm"]
    split = tmp_path / "split"
    _touch(split / "train" / "dog" / "a.mp4")
    _touch(split / "train" / "cat" / "b.mp4")
    _touch(split / "test" / "cat" / "c.mkv")
    m = read_manifest(split, split="test")
    assert [(Path(r.path).name, r.split) for r in m.records] == [("c.mkv", "test")]
    assert m.classes["label"] == ["cat", "dog"] and m.records[0].labels == {"label": 0}
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no media files"):
        read_manifest(tmp_path / "empty")


def test_plain_and_errors(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split\nclips/a.mp4,b,train\n/abs/c.mp4,a,test\n")
    m = read_manifest(csv)
    assert m.format == "plain" and m.classes == {"label": ["a", "b"]}
    assert m.records[0].path == str(tmp_path / "clips" / "a.mp4") and m.records[1].path == "/abs/c.mp4"
    m2 = read_manifest(csv, root="/data", split="train")
    assert [r.path for r in m2.records] == ["/data/clips/a.mp4"]
    nolabel = tmp_path / "n.csv"
    nolabel.write_text("path,split\na.mp4,train\n")
    with pytest.raises(UserError, match="'label'.*n.csv|n.csv.*'label'"):
        read_manifest(nolabel, format="plain")
    with pytest.raises(UserError, match="cannot tell the format"):
        read_manifest(nolabel)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(UserError, match="cannot read manifest"):
        read_manifest(binary, format="plain")
    with pytest.raises(UserError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="unknown manifest format"):
        read_manifest(csv, format="xml")
