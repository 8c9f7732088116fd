"""Reference embeddings, projections, placement of a new clip, cluster scores and caching."""
from __future__ import annotations

import numpy as np
import pytest

from wb_helpers import make_checkpoint, one_torch_thread

from workbench import embeddings as emb


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synth_dir):
    from mmt_core.data.manifests import read_manifest

    tmp = tmp_path_factory.mktemp("emb")
    ckpt = make_checkpoint(tmp, "mmt_tiny")
    # 12 reference clips: the 2 train clips of each class of the shared tiny dataset
    records = read_manifest(synth_dir / "manifest.csv", split="train").records
    return ckpt, records, tmp / "cache"


def test_reference_embeddings_and_cache(setup):
    ckpt, records, cache = setup
    ref = emb.ReferenceEmbeddings(ckpt, records, cache_dir=cache)
    r = ref.reference()
    n = len(records)
    assert ref.spaces == ["audio", "video", "fused"]
    da, dv = r["embeds"]["audio"].shape[1], r["embeds"]["video"].shape[1]
    assert r["embeds"]["audio"].shape == (n, da) and r["embeds"]["video"].shape == (n, dv)
    assert r["embeds"]["fused"].shape == (n, da + dv)
    assert sorted(set(r["labels"].tolist())) == list(range(6)) and len(r["names"]) == n
    coords, reducer = ref.projection("fused", "pca")
    assert coords.shape == (n, 2) and np.isfinite(coords).all()
    assert ref.hits == {"memory": 0, "disk": 0, "computed": 1}
    ref.projection("fused", "pca")
    assert ref.hits["memory"] == 1
    # A fresh object (a new app process) reads everything from the disk cache.
    again = emb.ReferenceEmbeddings(ckpt, records, cache_dir=cache)
    assert again.key == ref.key
    assert np.array_equal(again.reference()["embeds"]["fused"], r["embeds"]["fused"])
    assert np.array_equal(again.projection("fused", "pca")[0], coords)
    assert again.hits == {"memory": 0, "disk": 1, "computed": 0}
    # Other weights → another cache key.
    other = make_checkpoint(cache.parent / "other", "mmt_tiny", seed=1)
    assert emb.ReferenceEmbeddings(other, records, cache_dir=cache).key != ref.key


def test_place_point_pca_and_tsne(setup):
    ckpt, records, cache = setup
    ref = emb.ReferenceEmbeddings(ckpt, records, cache_dir=cache)
    x = ref.reference()["embeds"]["video"]
    coords, reducer = ref.projection("video", "pca")
    p = ref.place("video", "pca", x[3])
    assert np.allclose(p, coords[3], atol=1e-4)  # a reference clip lands on its own dot
    t_coords, _ = ref.projection("video", "tsne")
    assert t_coords.shape == (len(records), 2)
    q = ref.place("video", "tsne", x[3] + 0.01)
    assert q.shape == (2,) and np.isfinite(q).all()
    # The refit starts from the cached layout: the new point sits among the reference points.
    lo, hi = t_coords.min(0), t_coords.max(0)
    span = hi - lo
    assert np.all(q >= lo - span) and np.all(q <= hi + span)


def test_umap_projection_and_transform(setup):
    ckpt, records, cache = setup
    ref = emb.ReferenceEmbeddings(ckpt, records, cache_dir=cache)
    coords, reducer = ref.projection("audio", "umap")
    assert coords.shape == (len(records), 2) and np.isfinite(coords).all()
    p = ref.place("audio", "umap", ref.reference()["embeds"]["audio"][0])
    assert p.shape == (2,) and np.isfinite(p).all()


def test_cluster_scores_and_figure(setup):
    ckpt, records, cache = setup
    ref = emb.ReferenceEmbeddings(ckpt, records, cache_dir=cache)
    scores = ref.scores()
    assert set(scores) == {"audio", "video", "fused"}
    for s in scores.values():
        assert -1.0 <= s["ari"] <= 1.0 and 0.0 <= s["hs"] <= 1.0
    fig = ref.figure("fused", "pca", point=ref.reference()["embeds"]["fused"][0],
                     point_name="my.mp4", point_label="ball_bell")
    names = [t.name for t in fig.data]
    assert names[-1] == "my.mp4" and len(names) == 7  # 6 classes + the highlighted clip
    assert fig.data[-1].marker.size > fig.data[0].marker.size
    assert sum(len(t.x) for t in fig.data[:-1]) == len(records)


def test_bad_arguments(setup):
    ckpt, records, cache = setup
    with pytest.raises(ValueError, match="unknown projection"):
        emb.fit_projection(np.zeros((10, 4), np.float32), "lda")
    with pytest.raises(ValueError, match="at least 4"):
        emb.fit_projection(np.zeros((3, 4), np.float32), "pca")
