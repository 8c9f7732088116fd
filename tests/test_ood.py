""""Unlike the training data": the k-NN test itself, its file, and the shipped references on real
clips (a foreign clip is flagged, built-in test clips mostly not)."""
from __future__ import annotations

import numpy as np
import pytest

from mmt_core import ood
from wb_helpers import ROOT


def test_fit_and_score_on_clusters(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 3
    ref = {"audio": np.concatenate([c + 0.3 * rng.standard_normal((30, 16)) for c in centres]),
           "video": rng.standard_normal((120, 8))}
    fitted = ood.fit(ref, k=5, quantile=0.99)
    assert fitted["n"] == 120 and set(fitted["thresholds"]) == {"audio", "video"}
    # the reference clips themselves: about 1 % past the threshold, by construction
    own = ood.knn_scores(fitted["embeddings"]["audio"], fitted["embeddings"]["audio"], 5,
                         leave_one_out=True)
    assert (own > fitted["thresholds"]["audio"]).mean() <= 0.02
    near = ood.score({"audio": centres[1] + 0.3 * rng.standard_normal(16),
                      "video": ref["video"][0] + 0.01}, fitted)
    assert not near["flagged"] and near["score"] <= near["threshold"]
    far = ood.score({"audio": rng.standard_normal(16) * 3, "video": ref["video"][3]}, fitted)
    assert far["flagged"] and far["modality"] == "audio"
    assert far["modalities"]["audio"]["flagged"] and not far["modalities"]["video"]["flagged"]
    # a unimodal clip is scored on the modality it has
    assert set(ood.score({"video": ref["video"][5]}, fitted)["modalities"]) == {"video"}

    ood.save(tmp_path, fitted, source="test")
    back = ood.load(tmp_path)
    assert back["thresholds"] == pytest.approx(fitted["thresholds"]) and back["k"] == 5
    np.testing.assert_allclose(back["embeddings"]["audio"], fitted["embeddings"]["audio"])
    assert ood.score({"audio": centres[0]}, back) == ood.score({"audio": centres[0]}, fitted)
    assert ood.load(tmp_path / "nothing") is None
    with pytest.raises(ValueError):
        ood.fit({"audio": np.zeros((1, 4))})


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


SHIPPED = ROOT / "checkpoints" / "mmt_tiny"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / ood.OOD_FILE).is_file(), reason="no shipped ood.safetensors")
def test_shipped_reference_flags_foreign_clips_not_builtin_ones(tmp_path):
    from conftest import make_media
    from mmt_core.data.synthetic import write_dataset
    from mmt_core.inference import predict_file

    noise = predict_file(noise_clip(tmp_path / "noise.mp4"), SHIPPED)
    assert noise["ood"]["flagged"] and "unlike the training data" in noise["ood_note"]
    grey = predict_file(make_media(tmp_path / "grey.mp4", seconds=4.0, size=(160, 120)), SHIPPED)
    assert grey["ood"]["flagged"]  # uniform grey frames with a 440 Hz tone
    # the built-in test split (seed 1001, never the reference seed 2002): mostly not flagged
    write_dataset(tmp_path / "synth", clips_per_class=5, seed=1001, split="test", progress=False)
    clips = sorted((tmp_path / "synth" / "test").glob("*.mp4"))
    flags = [predict_file(c, SHIPPED)["ood"]["flagged"] for c in clips]
    assert len(flags) == 30 and sum(flags) / len(flags) <= 0.10, flags
