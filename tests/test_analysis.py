"""Dataset analysis: the pure tables on hand-made evaluations, and the shipped demo set on a
freshly generated built-in split with planted errors (flipped labels, swapped audio tracks),
through evaluate_set, its cache and `mmt audit`."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmt_core import analysis as A
from mmt_core.cli import main
from mmt_core.errors import UserError
from mmt_core.model_set import open_model_set
from wb_helpers import ROOT

CLASSES = ["cat", "cow", "dog"]


def onehotish(top: list[int], sure: float = 0.9) -> np.ndarray:
    """(n, 3) probabilities: `sure` on each row's top class, the rest spread evenly."""
    p = np.full((len(top), 3), (1 - sure) / 2, np.float32)
    p[np.arange(len(top)), top] = sure
    return p


def toy(labels, mmt, audio, video, embeds=None) -> A.Evaluation:
    n = len(labels)
    rng = np.random.default_rng(0)
    embeds = embeds or {s: rng.normal(size=(n, 4)).astype(np.float32) for s in A.SPACES}
    return A.Evaluation(paths=[f"/clips/{i}.mp4" for i in range(n)], labels=np.array(labels),
                        classes=CLASSES, probs={"mmt": onehotish(mmt), "audio": onehotish(audio),
                                                "video": onehotish(video)}, embeds=embeds)


def test_tables_gains_and_confusion_cells():
    #        labels: cat cat cow cow dog dog
    ev = toy([0, 0, 1, 1, 2, 2], mmt=[0, 0, 1, 1, 2, 0], audio=[0, 1, 1, 1, 2, 2],
             video=[0, 0, 0, 1, 1, 1])
    acc = A.accuracy_table(ev)
    assert list(acc) == ["mmt", "audio", "video", "avg"]
    assert acc["mmt"]["top1"] == pytest.approx(5 / 6) and acc["video"]["top1"] == pytest.approx(3 / 6)
    assert acc["mmt"]["top5"] == 1.0  # 3 classes: top-5 is every class
    rows = {r["class"]: r for r in A.per_class(ev)}
    assert rows["dog"]["mmt"] == 0.5 and rows["dog"]["video"] == 0.0 and rows["dog"]["audio"] == 1.0
    assert rows["dog"]["sound_adds"] == 0.5 and rows["dog"]["picture_adds"] == -0.5
    conf = A.confusion(ev, "video")
    assert conf.tolist() == [[2, 0, 0], [1, 1, 0], [0, 2, 0]] and conf.sum() == 6
    cell = A.cell_clips(ev, "video", true="dog", pred="cow")
    assert [c["index"] for c in cell] == [4, 5]
    assert cell[0]["video"]["top"] == "cow" and cell[0]["label"] == "dog"
    with pytest.raises(UserError, match="unknown class 'owl'"):
        A.cell_clips(ev, "mmt", true="owl", pred="cat")


def test_single_model_set_has_no_unimodal_columns():
    ev = toy([0, 1, 2], mmt=[0, 1, 1], audio=[0, 1, 2], video=[0, 1, 2])
    del ev.probs["audio"], ev.probs["video"]
    assert list(A.accuracy_table(ev)) == ["mmt"]
    assert A.per_class(ev)[0]["sound_adds"] is None
    with pytest.raises(UserError, match="no audio-only model"):
        A.confusion(ev, "audio")
    top = A.suspicious(ev)[0]
    assert top["index"] == 2 and top["reason"].startswith("the fused model disagrees")


def test_suspicious_ranks_flipped_labels_and_swapped_sound_first():
    labels = [0] * 10 + [1] * 10
    mmt, audio, video = list(labels), list(labels), list(labels)
    mmt[3] = audio[3] = video[3] = 2  # a flipped label: every sense says dog
    audio[14] = mmt[14] = 0  # a swapped sound: cat heard, cow seen and labelled; the fused
    # model follows the sound (as the shipped MMT does on swapped built-in clips)
    video[7] = 1  # a model's plain mistake: one sense wrong, the fused model right
    ev = toy(labels, mmt, audio, video)
    rank = A.suspicious(ev)
    assert {r["index"] for r in rank[:2]} == {3, 14} and rank[2]["index"] == 7
    why = {r["index"]: r["reason"] for r in rank}
    assert why[3] == ("every model disagrees with the label: audio says dog, "
                      "picture says dog, fused says dog, label says cat")
    assert why[14].startswith("the sound does not fit the label: audio says cat")
    assert rank[2]["reason"].startswith("the picture does not fit the label")
    flipped = next(r for r in rank if r["index"] == 3)
    assert flipped["probs"]["avg"]["dog"] == pytest.approx(0.9, abs=1e-4)
    assert rank[-1]["reason"].startswith("the models agree with the label")
    assert A.suspicious(ev, top=2) == rank[:2]


def test_a_model_that_leaves_the_label_open_is_no_evidence_against_it():
    """A sound two classes share leaves both open: it does not count against either label."""
    ev = toy([0, 0], mmt=[0, 0], audio=[0, 0], video=[0, 0])
    ev.probs["audio"] = np.array([[0.45, 0.1, 0.45], [0.45, 0.1, 0.45]], np.float32)
    ev.probs["video"] = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], np.float32)
    s = A.suspicious_scores(ev)
    assert s[0] < 1.5 < s[1]  # cat fits both; the second picture leaves no room for cat
    assert "picture does not fit" in A.reason(ev, 1) and "picture says cow or dog" in A.reason(ev, 1)


def test_two_wrong_labels_in_one_class_do_not_hide_each_other():
    """Clips 0 and 1 are both mislabelled cat; the model's usual cat is measured by the median
    of the other cat clips, which one other wrong label does not move (their mean would drop
    to 1e-4's level and let a plain mistake on a cow clip, clip 7, outrank both)."""
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    ev = toy(labels, mmt=labels, audio=labels, video=labels)
    del ev.probs["audio"], ev.probs["video"]
    p_label = np.array([1e-4, 1e-4, 0.6, 0.6, 0.5, 0.5, 0.5, 5e-4])
    ev.probs["mmt"] = np.stack([p_label, 1 - p_label, np.zeros(8)], 1).astype(np.float32)
    ev.probs["mmt"][4:] = ev.probs["mmt"][4:, [1, 0, 2]]  # the cow clips' label is column 1
    assert {r["index"] for r in A.suspicious(ev)[:2]} == {0, 1}


def test_temperature_softens_a_model_that_is_often_confidently_wrong():
    y = np.arange(40) % 3
    wrong = onehotish(np.where(np.arange(40) % 2 == 0, y, (y + 1) % 3).tolist(), sure=0.98)
    right = onehotish(y.tolist(), sure=0.6)
    assert A.temperature(wrong, y) > 2.0 and A.temperature(right, y) < 1.0
    assert np.allclose(A.calibrated(wrong, y).sum(1), 1.0)
    assert np.array_equal(A.calibrated(wrong[:10], y[:10]), wrong[:10])  # too few clips


def test_a_flip_that_every_sense_sees_outranks_a_weak_senses_confident_mistakes(monkeypatch):
    """40 clips; the picture model is confidently wrong on half of them, the sound model is
    right and unsure. Clip 0's label is flipped: sound and picture both name its true class,
    moderately. Calibrated, the flip ranks first; taken at face value, the picture's confident
    mistakes on correctly labelled clips bury it."""
    true = np.arange(40) % 3
    labels = true.copy()
    labels[0] = 1  # flipped: cat → cow
    video_top = np.where(np.arange(40) % 2 == 1, (true + 2) % 3, true)
    ev = toy(labels.tolist(), mmt=true.tolist(), audio=true.tolist(), video=video_top.tolist())
    ev.probs["audio"] = onehotish(true.tolist(), sure=0.6)
    ev.probs["video"] = onehotish(video_top.tolist(), sure=0.995)
    ev.probs["video"][0] = [0.6, 0.2, 0.2]
    ev.probs["mmt"] = onehotish(true.tolist(), sure=0.7)
    assert A.suspicious(ev)[0]["index"] == 0
    monkeypatch.setattr(A, "MIN_CALIBRATION_CLIPS", 10**6)
    assert A.suspicious(ev)[0]["index"] != 0


def test_neighbours_by_sense_and_across():
    e = np.eye(4, dtype=np.float32)
    embeds = {"audio": e, "video": e[[1, 0, 3, 2]], "fused": e, "audio_proj": e,
              "video_proj": e[[2, 3, 0, 1]]}
    ev = toy([0, 1, 2, 0], mmt=[0, 1, 2, 0], audio=[0, 1, 2, 0], video=[0, 1, 2, 0],
             embeds={k: v + 0.1 for k, v in embeds.items()})
    assert A.neighbours(ev, 0, "video", k=1)[0]["index"] == 1
    assert A.neighbours(ev, 0, "cross", k=1)[0]["index"] == 2  # g_A of clip 2 ~ g_V of clip 0
    near = A.neighbours(ev, 0, "audio", k=3)
    assert 0 not in [n["index"] for n in near] and len(near) == 3
    assert near[0]["similarity"] >= near[-1]["similarity"]
    with pytest.raises(UserError, match="unknown neighbour kind"):
        A.neighbours(ev, 0, "smell")


def test_stratified_cap_keeps_class_shares():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    keep = A.stratified_cap(labels, 100, seed=3)
    assert len(keep) == 100 and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep]).tolist() == [90, 9, 1]
    assert A.stratified_cap(labels[:50], 100).tolist() == list(range(50))
    assert not np.array_equal(keep, A.stratified_cap(labels, 100, seed=4))


def test_save_and_load_round_trip(tmp_path):
    ev = toy([0, 1, 2], mmt=[0, 1, 2], audio=[0, 1, 2], video=[0, 1, 2])
    ev.skipped, ev.total = ["/clips/broken.mp4"], 4
    A.save_evaluation(tmp_path / "e.npz", ev)
    back = A.load_evaluation(tmp_path / "e.npz")
    assert back.paths == ev.paths and back.classes == CLASSES and back.total == 4
    assert back.skipped == ev.skipped and set(back.embeds) == set(A.SPACES)
    np.testing.assert_array_equal(back.probs["video"], ev.probs["video"])


# ---------------------------------------------------------------- the shipped demo set, planted errors

def _swap_audio(clip: Path, other: Path) -> None:
    """Give `clip` the audio track of `other` (video stream kept as is)."""
    tmp = clip.with_name(clip.stem + ".swap.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-i", str(other),
                    "-map", "0:v", "-map", "1:a", "-c", "copy", str(tmp)], check=True)
    tmp.replace(clip)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A fresh built-in test split (a seed no shipped model trained on) with 2 labels flipped and
    the audio of 2 clips swapped for a clip of a class with another sound; the demo set's
    evaluation of it (cached under the returned cache dir)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    from mmt_core.data.synthetic import write_dataset

    base = tmp_path_factory.mktemp("analysis")
    clean, data = base / "clean", base / "planted"
    write_dataset(clean, clips_per_class=8, seed=7321, split="test", progress=False)
    shutil.copytree(clean, data)
    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = sorted({r["label"] for r in rows})
    sound = {n: n.split("_")[1] for n in names}  # classes are LOOK_SOUND
    planted = {}
    for k, i in enumerate((3, 20)):  # flip: the next class's name
        new = names[(names.index(rows[i]["label"]) + 1 + k) % len(names)]
        planted[str(data / rows[i]["path"])] = "flip"
        rows[i]["label"] = new
    for i in (9, 33):  # swap: the first clip whose class sounds different
        other = next(r for r in rows if sound[r["label"]] != sound[rows[i]["label"]]
                     and str(data / r["path"]) not in planted)
        _swap_audio(data / rows[i]["path"], clean / other["path"])
        planted[str(data / rows[i]["path"])] = "swap"
    with open(data / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    cache = base / "cache"
    cfg = A.AnalysisConfig(cache_dir=str(cache), num_workers=0, progress=False)
    ev = A.evaluate_set(open_model_set(ROOT / "checkpoints"), data / "manifest.csv", "test", cfg)
    return {"data": data, "planted": planted, "cache": cache, "cfg": cfg, "ev": ev}


def test_planted_errors_rank_first(planted):
    ev = planted["ev"]
    assert not ev.cached and len(ev.paths) == 48 and not ev.skipped
    assert set(ev.embeds) == set(A.SPACES) and ev.embeds["fused"].shape[0] == 48
    assert A.accuracy_table(ev)["mmt"]["top1"] > 0.8
    top = [r["path"] for r in A.suspicious(ev, top=6)]
    assert set(planted["planted"]) <= set(top), A.suspicious(ev, top=8)


def test_second_open_reads_the_cache(planted):
    ms = open_model_set(ROOT / "checkpoints")
    again = A.evaluate_set(ms, planted["data"] / "manifest.csv", "test", planted["cfg"])
    assert again.cached and again.paths == planted["ev"].paths
    np.testing.assert_array_equal(again.probs["mmt"], planted["ev"].probs["mmt"])
    capped = A.evaluate_set(ms, planted["data"] / "manifest.csv", "test",
                            A.AnalysisConfig(**{**planted["cfg"].__dict__, "max_clips": 12}))
    assert not capped.cached and len(capped.paths) == 12 and capped.total == 48


def test_one_decoding_pass_gives_what_one_pass_per_model_gives(planted, tmp_path):
    """The demo models share their preprocessing: one decode per clip for all three, with the
    same probabilities and embeddings as a pass (and a decode) per model."""
    ms = open_model_set(ROOT / "checkpoints")
    cfg = A.AnalysisConfig(cache_dir=str(tmp_path / "shared"), num_workers=0, progress=False,
                           max_clips=12)
    assert A.decode_groups(ms, cfg) == [["mmt", "audio", "video"]]
    per_model = A.AnalysisConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "per_model"),
                                    "share_decode": False})
    assert A.decode_groups(ms, per_model) == [["mmt"], ["audio"], ["video"]]
    a, b = (A.evaluate_set(ms, planted["data"] / "manifest.csv", "test", c)
            for c in (cfg, per_model))
    assert a.paths == b.paths and set(a.embeds) == set(b.embeds) == set(A.SPACES)
    for r in a.probs:
        np.testing.assert_allclose(a.probs[r], b.probs[r], atol=1e-5)
    for sp in a.embeds:
        np.testing.assert_allclose(a.embeds[sp], b.embeds[sp], atol=1e-4)


def test_audit_cli(planted, capsys):
    args = ["audit", "--models", str(ROOT / "checkpoints"), "--data",
            str(planted["data"] / "manifest.csv"), "--split", "test", "--top", "6",
            "--cache-dir", str(planted["cache"]), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    clips = out["clips"]
    assert len(clips) == 6 and set(planted["planted"]) <= {c["path"] for c in clips}
    assert [c["score"] for c in clips] == sorted((c["score"] for c in clips), reverse=True)
    assert set(clips[0]) >= {"path", "label", "score", "reason", "probs"}
    assert set(clips[0]["probs"]) == {"mmt", "audio", "video", "avg"}


def test_audit_cli_bad_input(planted, tmp_path, capsys):
    data = planted["data"]
    base = ["audit", "--split", "test", "--cache-dir", str(tmp_path / "c"), "--json"]
    assert main([*base, "--models", str(tmp_path), "--data", str(data / "manifest.csv")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    bad = tmp_path / "missing.csv"
    bad.write_text("path,label,split\nnot_here.mp4,ball_bell,test\nalso.mp4,box_bell,test\n")
    assert main([*base, "--models", str(ROOT / "checkpoints"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 'test' clips do not exist" in err and err.count("\n") == 1
    other = tmp_path / "other.csv"
    clip = next(iter(planted["planted"]))
    other.write_text(f"path,label,split\n{clip},owl,test\n{clip},ball_bell,test\n")
    assert main([*base, "--models", str(ROOT / "checkpoints"), "--data", str(other)]) == 2
    assert "classes this checkpoint does not know: label:owl" in capsys.readouterr().err


def test_audit_cli_is_a_subcommand():
    r = subprocess.run([sys.executable, "-m", "mmt_core", "audit", "--help"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--models" in r.stdout and "--top" in r.stdout
