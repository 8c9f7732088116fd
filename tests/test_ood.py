""""Unlike the training data": the scorers and the detector, its file, `mmt ood build`, and the
shipped references on real media made here (ffmpeg sources with espeak-ng speech and a noise clip
are flagged by all three demo models, fresh built-in clips are not)."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from mmt_core import ood
from wb_helpers import ROOT

SHIPPED = ROOT / "checkpoints" / "mmt_tiny"
HAVE_TOOLS = all(shutil.which(t) for t in ("ffmpeg", "espeak-ng"))


def clusters(rng, n=120):
    """Reference features of two senses: 4 clusters in the embedding, a Gaussian in the stats."""
    centres = rng.standard_normal((4, 16)) * 3
    embed = np.concatenate([c + 0.3 * rng.standard_normal((n // 4, 16)) for c in centres])
    stats = rng.standard_normal((n, 6)) * [1, 2, 3, 1, 1, 5] + 10
    return centres, {"audio": {"embed": embed, "stats": stats},
                     "video": {"embed": rng.standard_normal((n, 8)), "stats": stats[:, :4]}}


@pytest.mark.parametrize("name", sorted(ood.SCORERS))
def test_each_scorer_ranks_far_points_above_the_reference(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5)) * [1, 1, 2, 0.5, 1] + 3
    scorer = ood.SCORERS[name]
    state = scorer.fit(x)
    near = scorer.score(state, x[:20] + 0.01)
    far = scorer.score(state, -x[:20] * 3)
    assert near.shape == (20,) and (far > near.max()).all()
    # out-of-fold scores of the reference: each row scored by a fit without it
    own = ood.out_of_fold(scorer, x, ood.K)
    assert own.shape == (200,) and np.isfinite(own).all() and own.min() >= 0


def test_fit_and_score_per_sense_with_the_threshold_ratio(tmp_path):
    rng = np.random.default_rng(0)
    centres, ref = clusters(rng)
    both = (("knn", "embed"), ("maha", "stats"))  # an ensemble: the largest member per sense
    fitted = ood.fit(ref, members=both, quantile=0.99)
    assert fitted["n"] == 120 and set(fitted["senses"]) == {"audio", "video"}
    assert fitted["method"] == "knn(embed) + maha(stats)"
    assert [m["feature"] for m in fitted["senses"]["audio"]] == ["embed", "stats"]
    # the reference clips themselves: about 1 % past the threshold, by construction
    own, _ = ood.sense_scores(ref["audio"], fitted["senses"]["audio"])
    assert (own > 1.0).mean() <= 0.05
    near = ood.score({"audio": {"embed": centres[1] + 0.3 * rng.standard_normal(16),
                                "stats": ref["audio"]["stats"][0]},
                      "video": {"embed": ref["video"]["embed"][0] + 0.01,
                                "stats": ref["video"]["stats"][0]}}, fitted)
    assert not near["flagged"] and near["score"] <= near["threshold"] == 1.0
    # ordinary content, foreign input statistics: the stats member flags the audio
    odd = ood.score({"audio": {"embed": centres[2], "stats": ref["audio"]["stats"][1] * 4},
                     "video": {"embed": ref["video"]["embed"][3],
                               "stats": ref["video"]["stats"][3]}}, fitted)
    assert odd["flagged"] and odd["modality"] == "audio" and odd["feature"] == "stats"
    assert odd["modalities"]["audio"]["ratio"] > 1 and not odd["modalities"]["video"]["flagged"]
    assert ood.note(odd) == f"sound unlike the training data ({odd['ratio']:.1f}× the threshold)"
    # a unimodal clip is scored on the sense it has; an embedding alone on the embedding member
    assert set(ood.score({"video": {"embed": ref["video"]["embed"][5]}}, fitted)
               ["modalities"]) == {"video"}
    assert ood.score({"audio": rng.standard_normal(16) * 30}, fitted)["feature"] == "embed"

    ood.save(tmp_path, fitted, source="test")
    back = ood.load(tmp_path)
    assert back["method"] == fitted["method"] and back["n"] == 120
    clip = {"audio": {"embed": centres[0], "stats": ref["audio"]["stats"][7]}}
    assert ood.score(clip, back) == ood.score(clip, fitted)
    assert ood.load(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="another model"):
        ood.score({"audio": {"embed": np.zeros(3)}}, fitted)
    with pytest.raises(ValueError):
        ood.fit({"audio": {"embed": np.zeros((1, 4))}})


def test_a_first_format_file_still_loads_as_knn_on_the_embedding(tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(2)
    emb = ood.normalise(rng.standard_normal((30, 8)))
    save_file({"audio": torch.from_numpy(emb)}, str(tmp_path / ood.OOD_FILE),
              metadata={"thresholds": json.dumps({"audio": 0.5}), "k": "5", "quantile": "0.99"})
    ref = ood.load(tmp_path)
    assert ref["method"] == "knn(embed)"
    res = ood.score({"audio": {"embed": emb[0]}}, ref)
    assert res["score"] == pytest.approx(ood.knn_scores(emb[:1], emb, 5)[0] / 0.5, abs=1e-3)


def test_input_statistics_tell_flat_scenes_from_texture_and_tones_from_noise():
    rng = np.random.default_rng(3)
    flat = torch.zeros(2, 3, 4, 32, 32)
    flat[:, :, :, 8:16, 8:16] = 1.5  # a coloured square on a flat background
    noise = torch.from_numpy(rng.standard_normal((2, 3, 4, 32, 32)).astype(np.float32))
    vs = ood.video_stats(torch.cat([flat, noise]))
    assert vs.shape[0] == 4 and np.isfinite(vs).all()
    flat_frac = 7  # fraction of near-flat neighbours (after 3 means, 3 stds, mean gradient)
    assert (vs[:2, flat_frac] > 0.9).all() and (vs[2:, flat_frac] < 0.1).all()
    t = torch.linspace(-3, 3, 64)[:, None]
    tone = (-(t - 1) ** 2 * 4).repeat(1, 100)  # (64, 100) one band, log-mel like
    hiss = torch.from_numpy(rng.standard_normal((64, 100)).astype(np.float32) * 0.1)
    pad = torch.cat([tone, torch.full((64, 20), 2.0)], 1)  # zero-padded frames: one value
    aus = ood.audio_stats(torch.stack([tone, hiss])[:, None])
    padded = ood.audio_stats(pad[None, None])[0]
    assert aus.shape == (2, 27) and padded == pytest.approx(aus[0], rel=1e-4, abs=1e-5)
    assert aus[0, 4] < aus[1, 4]  # spectral flatness: a tone is peaked, hiss is flat


def noise_clip(path, seconds: float = 4.0, size=(160, 120), seed: int = 0):
    """A foreign clip: uniform pixel noise and white-noise audio (H.264 + AAC, via PyAV)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        aus = c.add_stream("aac", rate=16000, layout="mono")
        for _ in range(int(seconds * 25)):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        wav = (0.3 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        for k in range(0, len(wav) - 1024, 1024):
            f = av.AudioFrame.from_ndarray(wav[None, k:k + 1024], format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, k
            for p in aus.encode(f):
                c.mux(p)
        for s in (vs, aus):
            for p in s.encode(None):
                c.mux(p)
    return path


def real_clip(path, video="mandelbrot=size=160x160:rate=15",
              text="hello, this is a recording of my living room"):
    """Real media made here: an ffmpeg source (default a Mandelbrot zoom) with espeak-ng speech
    (3 s, H.264 + AAC)."""
    wav = path.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video,
                    "-stream_loop", "-1", "-i", str(wav), "-map", "0:v", "-map", "1:a", "-t", "3",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "16000",
                    "-ac", "1", str(path)], check=True)
    return path


@pytest.mark.skipif(not (SHIPPED / ood.OOD_FILE).is_file() or not HAVE_TOOLS,
                    reason="no shipped ood.safetensors, or no ffmpeg / espeak-ng")
def test_shipped_models_flag_real_media_and_pass_fresh_builtin_clips(tmp_path):
    from mmt_core.data.synthetic import write_dataset
    from mmt_core.inference import predict_file

    clips = [real_clip(tmp_path / "fractal.mp4"),
             real_clip(tmp_path / "testsrc.mp4", "testsrc=size=320x240:rate=15", "one two three"),
             noise_clip(tmp_path / "noise.mp4")]
    # fresh built-in clips (seed 5151: never the reference seed 2002), one per class
    write_dataset(tmp_path / "synth", clips_per_class=1, seed=5151, split="test", progress=False)
    builtin = sorted((tmp_path / "synth" / "test").glob("*.mp4"))
    for name in ("mmt_tiny", "mat_tiny", "mvit_tiny_video"):
        ck = ROOT / "checkpoints" / name
        for clip in clips:
            res = predict_file(clip, ck)
            assert res["ood"]["flagged"] and res["reliable"] is False, (name, clip.name)
            assert res["ood"]["method"] == ood.load(ck)["method"]
            assert "unlike the training data (" in res["ood_note"], res["ood_note"]
            assert "× the threshold" in res["ood_note"] and res["predictions"]["label"]
        fresh = [predict_file(c, ck) for c in builtin]
        assert sum(r["ood"]["flagged"] for r in fresh) <= 1, (name, [r["ood"] for r in fresh])
        assert not fresh[0]["ood"]["flagged"] and fresh[0]["reliable"]
        assert "ood_note" not in fresh[0]


def test_cli_ood_build_on_a_small_generated_set(tmp_path, capsys):
    from mmt_core.cli import main
    from mmt_core.data.synthetic import write_dataset

    ck = tmp_path / "ck"
    ck.mkdir()
    for f in ("model.safetensors", "config.json"):
        shutil.copyfile(ROOT / "checkpoints" / "mat_tiny" / f, ck / f)
    write_dataset(tmp_path / "data", clips_per_class=2, seed=7, split="train", progress=False)
    man = tmp_path / "data" / "manifest.csv"
    assert main(["ood", "build", "--checkpoint", str(ck), "--manifest", str(man),
                 "--split", "train", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 12 and out["method"] == ood.method_name(ood.DEFAULT)
    assert set(out["thresholds"]) == {"audio"}  # mat_tiny hears only
    ref = ood.load(ck)
    assert ref["source"].startswith("manifest.csv split train")
    # bad input: one line on stderr, exit 2
    for argv, msg in ((["--split", "nosuch"], "has 0 clips"),
                      (["--manifest", str(tmp_path / "none.csv")], "not found")):
        args = ["ood", "build", "--checkpoint", str(ck), "--manifest", str(man), "--split",
                "train", *argv]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert main(["ood", "build", "--checkpoint", str(tmp_path), "--manifest", str(man)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
