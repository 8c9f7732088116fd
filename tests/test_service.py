"""workbench.service without the Gradio page: example clips follow the checkpoint's generator
version, and the Explain results carry the method, boxes and pointing scores."""
from __future__ import annotations

import json

import pytest

from wb_helpers import one_torch_thread, random_checkpoints


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return random_checkpoints(tmp_path_factory.mktemp("ckpt"))


def test_examples_follow_the_checkpoints_generator_version(ckpts, tmp_path):
    from workbench.service import Workbench

    wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "v1")
    assert wb.generator_version == 1  # not recorded: a checkpoint from before versions existed
    side = json.loads(wb.examples()[0].with_suffix(".json").read_text())
    assert side["generator_version"] == 1 and wb.examples()[0].parent.parent.name == "examples"
    cfg = ckpts / "mmt_tiny" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["data"]["generator_version"] = 2
    cfg.write_text(json.dumps(meta))
    try:
        wb2 = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "v2")
        assert wb2.generator_version == 2
        clips = wb2.examples()
        assert clips[0].parent.parent.name == "examples_v2"
        assert {json.loads(c.with_suffix(".json").read_text())["generator_version"]
                for c in clips} == {2}
    finally:
        meta["data"].pop("generator_version")
        cfg.write_text(json.dumps(meta))


def test_explain_result_has_method_boxes_and_pointing(ckpts, tmp_path):
    import shutil

    from workbench.service import Workbench

    wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c")
    example = wb.examples()[2]
    upload = tmp_path / "upload.mp4"  # another name, the same bytes: found by content
    shutil.copyfile(example, upload)
    res = wb.explain(upload, method="relevance")
    assert res["method"] == "relevance" and res["boxes"] is not None
    assert res["boxes"].shape == (8, 4)
    assert set(res["overlays"]) == {"mmt", "video"} and res["audio_cams"]["mmt"].shape == (128, 320)
    assert res["pointing"] == {"mmt": None, "video": None}  # random weights: nothing precomputed
    con = wb.explain(upload, method="audio_contrast")
    assert set(con["overlays"]) == {"mmt"} and "audio_cams" not in con
    from mmt_core.errors import UserError

    with pytest.raises(UserError, match="unknown method"):
        wb.explain(upload, method="saliency")


def test_shipped_pointing_table_covers_every_method_and_layer(tmp_path):
    """checkpoints/pointing.json answers the Explain tab at once for every method and CAM layer of
    the shipped demo models, under the methods' current versions (a changed method gets a new key,
    so a stale score is never shown)."""
    from mmt_core.explain import EXPLAINERS, applicable, method_key
    from wb_helpers import ROOT
    from workbench.service import Workbench
    from workbench.ui import CAM_LAYERS

    wb = Workbench(checkpoints=ROOT / "checkpoints", cache_dir=tmp_path / "empty")
    table = json.loads((ROOT / "checkpoints" / "pointing.json").read_text())
    for role in ("mmt", "video"):
        for method in EXPLAINERS:
            if not applicable(method, wb.models[role].modalities):
                continue
            for block in CAM_LAYERS.values():
                hit = wb.pointing_scores(role, method, block, compute=False)
                assert hit is not None, (role, method, block)
                assert 0.0 <= hit["accuracy"] <= 1.0 and hit["clips"] == 30
    assert method_key("occlusion") == "occlusion-v2" and method_key("gradcam") == "gradcam"
    stale = [k for k in table if k.split("/")[1] == "occlusion"]  # version 1's key
    assert not stale, stale


def test_computed_pointing_scores_replace_those_of_earlier_weights(ckpts, tmp_path):
    """The app's own table of pointing scores (cache dir) keeps one set of weights per model: a
    retrained checkpoint's scores replace the old ones, other models' entries stay."""
    from workbench.service import Workbench

    wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c")
    f = tmp_path / "c" / "pointing" / "pointing.json"
    f.parent.mkdir(parents=True)
    name = wb.models["mmt"].name
    old = {"0123456789abcdef/gradcam/block0,1/5perclass": {"model": name, "accuracy": 0.1},
           "fedcba9876543210/gradcam/block0,1/5perclass": {"model": "other", "accuracy": 0.2}}
    f.write_text(json.dumps(old))
    res = wb.pointing_scores("mmt", "gradcam")
    table = json.loads(f.read_text())
    key = wb.pointing_key("mmt", "gradcam")
    assert set(table) == {key, "fedcba9876543210/gradcam/block0,1/5perclass"}
    assert table[key]["model"] == name and table[key]["accuracy"] == res["accuracy"]
    assert 0.0 <= res["accuracy"] <= 1.0 and res["clips"] == 30
    assert wb.pointing_scores("mmt", "gradcam", compute=False)["accuracy"] == res["accuracy"]
