"""The built-in "sounding objects" dataset: files, manifest, determinism, sidecar boxes, design."""
from __future__ import annotations

import csv
import json
from collections import Counter

import av
import numpy as np
import pytest

from mmt_core.data import media, synthetic
from mmt_core.data.features import fbank
from mmt_core.errors import UserError


def _rows(out):
    with (out / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def test_manifest_and_files(synth_dir):
    rows = _rows(synth_dir)
    assert Counter(r["split"] for r in rows) == {"train": 12, "test": 6}
    assert Counter(r["label"] for r in rows if r["split"] == "train") == {c.name: 2 for c in synthetic.CLASSES}
    for r in rows:
        assert (synth_dir / r["path"]).is_file() and (synth_dir / r["path"]).with_suffix(".json").is_file()
    looks = Counter(c.look for c in synthetic.CLASSES)
    sounds = Counter(c.sound for c in synthetic.CLASSES)
    assert set(looks.values()) == {2} and set(sounds.values()) == {2}  # each sense is ambiguous
    assert len({(c.look, c.sound) for c in synthetic.CLASSES}) == 6


def test_codecs_are_browser_playable(synth_dir):
    path = synth_dir / _rows(synth_dir)[0]["path"]
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 44100
        assert float(v.average_rate) == 25
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head  # +faststart
    info = media.probe(path)
    assert info.duration == pytest.approx(4.0, abs=0.05) and (info.width, info.height) == (128, 128)


def test_same_seed_identical_other_seed_new(tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    synthetic.make_clip(a, 3, synthetic._clip_rng(7, "train", 3, 0))
    synthetic.make_clip(b, 3, synthetic._clip_rng(7, "train", 3, 0))
    synthetic.make_clip(c, 3, synthetic._clip_rng(8, "train", 3, 0))
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".json").read_text() == b.with_suffix(".json").read_text()
    assert a.read_bytes() != c.read_bytes()
    assert json.loads(c.with_suffix(".json").read_text())["class"] == "box_whistle"


def test_append_never_overwrites(tmp_path):
    synthetic.write_dataset(tmp_path, clips_per_class=1, seed=0, split="train", progress=False)
    first = (tmp_path / "train" / "train_s0_ball_bell_0000.mp4").read_bytes()
    r = synthetic.write_dataset(tmp_path, clips_per_class=1, seed=3, split="train", progress=False)
    assert r["clips"] == 6 and r["classes"] == [c.name for c in synthetic.CLASSES]
    rows = _rows(tmp_path)
    assert len(rows) == 12 and len({x["path"] for x in rows}) == 12
    assert (tmp_path / "train" / "train_s0_ball_bell_0000.mp4").read_bytes() == first
    synthetic.write_dataset(tmp_path, clips_per_class=1, seed=3, split="train", progress=False)
    assert len(_rows(tmp_path)) == 12  # the same split+seed again replaces its rows


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="clips-per-class"):
        synthetic.write_dataset(tmp_path, clips_per_class=0)
    with pytest.raises(UserError, match="split"):
        synthetic.write_dataset(tmp_path, clips_per_class=1, split="../x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        synthetic.write_dataset(tmp_path / "file", clips_per_class=1)


def test_boxes_inside_frame_and_on_the_object(synth_dir):
    for row in _rows(synth_dir)[:6]:
        path = synth_dir / row["path"]
        side = json.loads(path.with_suffix(".json").read_text())
        times, boxes = synthetic.load_boxes(path)
        assert boxes.shape == (100, 4) and len(times) == 100
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 128)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        clip = media.decode(path, num_frames=10, clip_seconds=4.0)
        colour = np.array(synthetic._COLOURS[side["look"]], np.float32)
        for frame, box in zip(clip.frames, synthetic.boxes_at(path, clip.times)):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            centre = frame[cy - 2:cy + 3, cx - 2:cx + 3].reshape(-1, 3).mean(0)
            # the box centre shows the sounding object's colour (possibly flashed brighter)
            dominant = int(np.argmax(colour))
            assert np.argmax(centre) == dominant, (row["path"], centre, colour)


def test_hits_happen_at_sound_onsets(synth_dir):
    """The object jumps (box moves up) right at each event onset and the audio starts there."""
    path = synth_dir / _rows(synth_dir)[1]["path"]
    side = json.loads(path.with_suffix(".json").read_text())
    times, boxes = synthetic.load_boxes(path)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    rest_y = np.median(cy)
    for onset in side["events"]:
        k = int(np.ceil(onset * 25 - 1e-9))  # first frame at or after the onset
        assert cy[k] < rest_y - 3  # jumped up at the onset frame
        assert abs(cy[k - 1] - rest_y) < abs(cy[k] - rest_y)  # more than just before it
    clip = media.decode(path, num_frames=1, clip_seconds=4.0)
    env = np.abs(clip.audio).reshape(-1, 160).max(1)  # 10 ms envelope
    i = int(side["events"][0] * 100)  # before the first event there is only the noise floor
    assert env[i + 1:i + 4].max() > 3 * env[:i - 1].max()


def test_sounds_differ_by_sound_not_by_look():
    """Mean spectra of the three sounds are distinct; the class only picks which one plays."""
    spectra = {}
    for kind in ("drum", "bell", "whistle"):
        rng = np.random.default_rng(0)
        wav = synthetic._sound(kind, rng)
        spectra[kind] = fbank(wav, 44100, 64, None).mean(1).numpy()
    peaks = {k: int(np.argmax(v)) for k, v in spectra.items()}
    assert peaks["drum"] < peaks["bell"] < peaks["whistle"]


def test_event_statistics_do_not_depend_on_class():
    counts = {c.name: [] for c in synthetic.CLASSES}
    for label, c in enumerate(synthetic.CLASSES):
        for i in range(40):
            counts[c.name].append(len(synthetic._event_times(synthetic._clip_rng(0, "train", label, i))))
    means = [np.mean(v) for v in counts.values()]
    assert max(means) - min(means) < 0.8  # 3..6 events uniformly, whatever the class


# ----------------------------------------------------------------------------- generator versions
# sha256 of the mp4 and of the sidecar (without "generator_version", keys sorted) written by the
# code before versions existed, for make_clip(label, _clip_rng(3, "test", label, 0)).
V1_HASHES = {
    0: ("d31eecf7b4b5495221c5d0ab00f2f1f25c0d91a8e1367da7d326707c3bd0715a",
        "e82c15542c46e662e2b29304c0df407a3c44a2b79998f977c00e1b387002b428"),
    3: ("da4e560d06863c595857e25f9d4d1dd1f1330345b9972c8340da480bdac4d0d5",
        "9b5f33f6ef006eccb0717c71799d17b277b1cc215bc7926791205587bb6492ff"),
}


@pytest.mark.parametrize("label", sorted(V1_HASHES))
def test_version_1_is_bit_identical_to_the_shipped_generator(tmp_path, label):
    import hashlib

    path = tmp_path / "c.mp4"
    side = synthetic.make_clip(path, label, synthetic._clip_rng(3, "test", label, 0), 1)
    assert side.pop("generator_version") == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == V1_HASHES[label][0]
    assert hashlib.sha256(json.dumps(side, sort_keys=True).encode()).hexdigest() == V1_HASHES[label][1]


def test_version_2_draws_the_distractor_from_all_three_looks(tmp_path):
    assert synthetic.distractor_looks("ball", 1) == ["box", "star"]
    assert synthetic.distractor_looks("ball", 2) == ["ball", "box", "star"]
    seen = Counter()
    for i in range(9):  # red-ball clips: the distractor is sometimes another red ball
        side = synthetic.make_clip(tmp_path / f"c{i}.mp4", 1, synthetic._clip_rng(0, "train", 1, i), 2)
        assert side["generator_version"] == 2 and side["look"] == "ball"
        assert json.loads((tmp_path / f"c{i}.json").read_text())["generator_version"] == 2
        seen[side["distractor"]] += 1
    assert seen["ball"] >= 1 and len(seen) >= 2
    # the sounding object is still the one that hits: its box moves at the onsets (as in v1)
    with pytest.raises(UserError, match="--version"):
        synthetic.make_clip(tmp_path / "x.mp4", 0, synthetic._clip_rng(0, "train", 0, 0), 3)


def test_versions_are_recorded_and_never_mixed(tmp_path, capsys):
    from mmt_core.cli import main

    v2 = tmp_path / "v2"
    assert main(["synth", "--out", str(v2), "--clips-per-class", "1", "--seed", "5",
                 "--split", "test", "--version", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generator_version"] == 2
    assert json.loads((v2 / "generator.json").read_text()) == {"generator_version": 2}
    assert synthetic.folder_version(v2) == 2
    # another split without --version keeps the folder's version
    res = synthetic.write_dataset(v2, clips_per_class=1, seed=6, split="val", progress=False)
    assert res["generator_version"] == 2
    assert main(["synth", "--out", str(v2), "--clips-per-class", "1", "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert "generator version 2" in err and len(err.strip().splitlines()) == 1
    # a folder written before versions were recorded (manifest, no generator.json) is version 1
    old = tmp_path / "old"
    synthetic.write_dataset(old, clips_per_class=1, seed=0, split="test", progress=False, version=1)
    (old / "generator.json").unlink()
    assert synthetic.folder_version(old) == 1
    with pytest.raises(UserError, match="never mixed"):
        synthetic.write_dataset(old, clips_per_class=1, seed=1, split="val", progress=False, version=2)
    # clips of two versions in one list (e.g. a hand-merged manifest): a clear error
    mixed = [next((old / "test").glob("*.mp4")), next((v2 / "test").glob("*.mp4"))]
    with pytest.raises(UserError, match="mixed"):
        synthetic.check_one_version(mixed)
    assert synthetic.check_one_version(mixed[1:]) == 2


def test_counterfactual_clips_leave_out_one_object_and_nothing_else(tmp_path):
    """make_clip(hide=...): the same clip without the sounding object / the distractor (what
    scripts/counterfactual.py asks a model about)."""
    cls = synthetic.CLASSES[1]

    def render(hide):
        rng = synthetic._clip_rng(0, "train", 1, 0)
        other = str(rng.choice(synthetic.distractor_looks(cls.look, 2)))
        return synthetic._render(cls.look, other, synthetic._event_times(rng), rng, hide)

    full, boxes, _ = render(None)
    no_sounder, boxes_s, _ = render("sounder")
    no_distractor, _, _ = render("distractor")
    assert np.array_equal(boxes, boxes_s)  # the same draws: the box says where it would be
    near = np.zeros(full.shape[:3], bool)  # the sounding object's box, 3 px wider
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        near[k, max(0, int(y0) - 3):int(y1) + 4, max(0, int(x0) - 3):int(x1) + 4] = True
    changed_s = (full != no_sounder).any(-1)
    changed_d = (full != no_distractor).any(-1)
    assert changed_s[near].mean() > 0.3 and not changed_s[~near].any()  # only the sounder went
    assert changed_d[~near].sum() > 1000  # the distractor went, elsewhere in the frame
    side = synthetic.make_clip(tmp_path / "c.mp4", 1, synthetic._clip_rng(0, "train", 1, 0),
                               hide="sounder")
    assert side["hidden"] == "sounder"
    assert "hidden" not in synthetic.make_clip(tmp_path / "d.mp4", 1,
                                               synthetic._clip_rng(0, "train", 1, 0))
    with pytest.raises(UserError, match="hide must be one of"):
        synthetic.make_clip(tmp_path / "x.mp4", 1, synthetic._clip_rng(0, "train", 1, 0),
                            hide="both")


def test_synth_writes_counterfactual_clips_beside_the_full_ones(tmp_path):
    """`mmt synth --hide sounder`: training clips without the sounding object, labelled with their
    class, in the same folder as the full clips of the same seed (names carry 'nosounder')."""
    from mmt_core.cli import main

    synthetic.write_dataset(tmp_path, clips_per_class=1, seed=0, progress=False)
    assert main(["synth", "--out", str(tmp_path), "--clips-per-class", "1", "--hide", "sounder",
                 "--json"]) == 0
    rows = _rows(tmp_path)
    hidden = [x for x in rows if "_nosounder_" in x["path"]]
    assert len(rows) == 12 and len(hidden) == 6
    assert sorted(x["label"] for x in hidden) == [c.name for c in synthetic.CLASSES]
    for x in hidden:
        side = json.loads((tmp_path / x["path"]).with_suffix(".json").read_text())
        assert side["hidden"] == "sounder" and side["class"] == x["label"]
        full = tmp_path / x["path"].replace("_nosounder", "")
        assert full.read_bytes() != (tmp_path / x["path"]).read_bytes()
        assert "hidden" not in json.loads(full.with_suffix(".json").read_text())
    with pytest.raises(UserError, match="--hide must be one of"):
        synthetic.write_dataset(tmp_path, clips_per_class=1, progress=False, hide="both")


def test_clutter_paints_static_shapes_on_the_background():
    """_add_clutter: 3-8 shapes painted into the background, the same for the same draws."""
    flat = np.full((synthetic.SIZE, synthetic.SIZE, 3), 128.0, np.float32)
    a, b = flat.copy(), flat.copy()
    synthetic._add_clutter(a, np.random.default_rng(5))
    synthetic._add_clutter(b, np.random.default_rng(5))
    assert np.array_equal(a, b)
    changed = (a != 128.0).any(-1)
    assert 100 < changed.sum() < 0.8 * changed.size  # some shapes, not a repaint


def test_synth_clutter_writes_tagged_clips_with_a_cluttered_background(tmp_path):
    """`mmt synth --clutter`: names carry 'clutter', sidecars say so, clean clips are untouched,
    and the boxes still hold the sounding object (it is painted over the clutter)."""
    from mmt_core.cli import main

    synthetic.write_dataset(tmp_path, clips_per_class=1, seed=0, progress=False)
    assert main(["synth", "--out", str(tmp_path), "--clips-per-class", "1", "--clutter",
                 "--json"]) == 0
    rows = _rows(tmp_path)
    cluttered = [x for x in rows if "_clutter_" in x["path"]]
    assert len(rows) == 12 and len(cluttered) == 6
    for x in cluttered:
        side = json.loads((tmp_path / x["path"]).with_suffix(".json").read_text())
        assert side["clutter"] is True and side["class"] == x["label"]
        clean = (tmp_path / x["path"].replace("_clutter", "")).with_suffix(".json")
        assert "clutter" not in json.loads(clean.read_text())
    cls = synthetic.CLASSES[0]
    rng = synthetic._clip_rng(0, "train", 0, 0)
    other = str(rng.choice(synthetic.distractor_looks(cls.look, 2)))
    frames, boxes, _ = synthetic._render(cls.look, other, synthetic._event_times(rng), rng,
                                         clutter=True)
    x0, y0, x1, y1 = boxes[0]
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    red = np.array(synthetic._COLOURS["ball"], np.float32)
    assert np.abs(frames[0, cy, cx].astype(np.float32) - red).max() < 50  # the ball, on top
