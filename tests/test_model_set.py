"""Model sets: the three folder layouts, a single checkpoint, and the one-line errors."""
from __future__ import annotations

import pytest
import torch

from mmt_core.checkpoint import make_meta, point_link, save_checkpoint
from mmt_core.config import load_config
from mmt_core.engine import build_model
from mmt_core.errors import UserError
from mmt_core.model_set import open_model_set
from wb_helpers import DEMO, ROOT

CLASSES = ["cat", "cow", "dog"]
ROLE_MODEL = {"mmt": "mmt_tiny", "audio": "mat_tiny", "video": "mvit_tiny_video"}


def save_tiny(dir, name: str, classes=CLASSES, manifest: str = ""):
    """An untrained demo-sized `name` model saved as a checkpoint in `dir`."""
    cfg = load_config(ROOT / DEMO[name], [f"data.manifest={manifest}"] if manifest else [])
    torch.manual_seed(0)
    model = build_model(cfg, {"label": list(classes)})
    return save_checkpoint(dir, model, make_meta(cfg, model, {"label": list(classes)}))


def compare_layout(run, roles=("mmt", "audio", "video"), link="best"):
    """RUN/{role}/step-0000010 + RUN/{role}/LINK, as the engine leaves a compare run."""
    for role in roles:
        target = save_tiny(run / role / "step-0000010", ROLE_MODEL[role],
                           manifest=str(run / "manifest.csv"))
        point_link(run / role, link, target)
    return run


def test_compare_run_with_best_links(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label,split\n")
    ms = open_model_set(compare_layout(tmp_path))
    assert ms.roles == ["mmt", "audio", "video"]
    assert ms.models["mmt"] == (tmp_path / "mmt" / "step-0000010").resolve()
    assert ms.class_names == CLASSES and ms.head == "label"
    assert ms.manifest == tmp_path / "manifest.csv"
    assert ms.preprocessing("audio")["num_mel_bins"] == 128
    assert len(ms.weights_hash()) == 64


def test_last_link_when_there_is_no_best(tmp_path):
    ms = open_model_set(compare_layout(tmp_path, roles=("mmt",), link="last"))
    assert ms.roles == ["mmt"]
    assert ms.manifest is None  # recorded, but not on this machine


def test_taught_folder_and_single_checkpoint(tmp_path):
    for role, name in ROLE_MODEL.items():
        save_tiny(tmp_path / name, name)
    (tmp_path / "summary.json").write_text("{}")
    ms = open_model_set(tmp_path)
    assert {r: p.name for r, p in ms.models.items()} == {
        "mmt": "mmt_tiny", "audio": "mat_tiny", "video": "mvit_tiny_video"}
    one = open_model_set(tmp_path / "mat_tiny")
    assert one.roles == ["audio"] and one.class_names == CLASSES


def test_shipped_checkpoints_open():
    ms = open_model_set(ROOT / "checkpoints")
    assert ms.roles == ["mmt", "audio", "video"]
    assert len(ms.class_names) == 6


def test_weights_hash_changes_with_the_weights(tmp_path):
    a = open_model_set(save_tiny(tmp_path / "a", "mat_tiny")).weights_hash()
    cfg = load_config(ROOT / DEMO["mat_tiny"])
    torch.manual_seed(1)
    model = build_model(cfg, {"label": CLASSES})
    save_checkpoint(tmp_path / "b", model, make_meta(cfg, model, {"label": CLASSES}))
    assert open_model_set(tmp_path / "b").weights_hash() != a


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no checkpoint found"):
        open_model_set(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        open_model_set(tmp_path / "missing")


def test_two_models_of_one_role(tmp_path):
    save_tiny(tmp_path / "a", "mat_tiny")
    save_tiny(tmp_path / "b", "mat_tiny")
    with pytest.raises(UserError, match="two audio-only models"):
        open_model_set(tmp_path)


def test_models_that_disagree_on_the_classes(tmp_path):
    save_tiny(tmp_path / "mmt_tiny", "mmt_tiny")
    save_tiny(tmp_path / "mat_tiny", "mat_tiny", classes=["cat", "cow", "owl"])
    with pytest.raises(UserError, match="different classes .*differing: dog, owl"):
        open_model_set(tmp_path)
    save_tiny(tmp_path / "mat_tiny", "mat_tiny", classes=["cow", "cat", "dog"])
    with pytest.raises(UserError, match="another order"):
        open_model_set(tmp_path)


# ---------------------------------------------------------------- the workbench opens a set

@pytest.fixture(scope="module")
def own_run(tmp_path_factory, synth_dir):
    """A compare-layout set of untrained models for classes cat/cow/dog, and a plain manifest of
    the built-in clips relabelled into those classes, recorded in the models' configs."""
    import csv

    run = tmp_path_factory.mktemp("own_run")
    with open(synth_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    builtin = sorted({r["label"] for r in rows})
    with open(run / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for r in rows:
            w.writerow([str(synth_dir / r["path"]), CLASSES[builtin.index(r["label"]) % 3],
                        "test"])
    return compare_layout(run)


def test_workbench_opens_a_compare_run(own_run, tmp_path):
    from workbench.service import Workbench
    from wb_helpers import one_torch_thread

    with one_torch_thread():
        wb = Workbench(models=own_run, checkpoints=tmp_path / "none", cache_dir=tmp_path / "c")
        assert wb.class_names == CLASSES
        assert {m.name for m in wb.models.values()} == {"mmt_mmt_tiny", "audio_mat_tiny",
                                                        "video_mvit_tiny_video"}
        assert len(wb.reference_records()) == 18  # the recorded manifest's test split
        examples = wb.examples()
        assert [p.name for p in examples] == [f"examples_s0_{c}_0000.mp4" for c in CLASSES]
        res = wb.predict(examples[0], topk=3)
        assert set(res["probs"]) == {"mmt", "audio", "video"}
        assert set(res["probs"]["audio"]) == set(CLASSES)
        emb = wb.embed(examples[0], method="pca", source="models")
        assert len(emb["figures"]) == 3 and emb["reference_clips"] == 18


def test_several_model_sets_beside_the_demo(own_run, tmp_path):
    """Two --models folders: named by folder ("mmt/best" for a run's link), the first active,
    the demo still there; switching changes the classes."""
    from workbench.service import Workbench
    from wb_helpers import one_torch_thread

    with one_torch_thread():
        wb = Workbench(models=[own_run, own_run / "mmt" / "best"],
                       data=[own_run / "manifest.csv"], cache_dir=tmp_path / "c")
        assert wb.set_names() == ["demo", own_run.name, "mmt/best", "taught"]
        assert wb.active == own_run.name and wb.class_names == CLASSES
        wb.use("mmt/best")
        assert set(wb.models) == {"mmt"} and wb.class_names == CLASSES
        wb.use("demo")
        assert wb.class_names[0] == "ball_bell" and "cat" not in wb.class_names
        with pytest.raises(UserError, match="unknown model set 'nope'"):
            wb.use("nope")
    with pytest.raises(UserError, match="one --data for every --models"):
        Workbench(models=[own_run, own_run], data=["a.csv", "b.csv", "c.csv"])
    assert Workbench(models=[own_run, own_run]).set_names()[1:3] == [own_run.name,
                                                                    f"{own_run.name} (2)"]


def test_app_checks_every_models_flag(own_run, tmp_path):
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "app.py", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run("--models", str(own_run), "--models", "a", "--data", "x", "--data", "y",
            "--data", "z")
    assert r.returncode == 2 and "one --data for every --models" in r.stderr
    r = run("--models", str(own_run), "--models", str(tmp_path))  # the second has no checkpoint
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert f"{tmp_path}: no checkpoint found" in r.stderr


def test_workbench_opens_a_set_with_only_a_fused_model(own_run, tmp_path):
    from workbench.service import Workbench
    from wb_helpers import one_torch_thread

    with one_torch_thread():
        wb = Workbench(models=own_run / "mmt" / "best", data=own_run / "manifest.csv",
                       checkpoints=tmp_path / "none", cache_dir=tmp_path / "c")
        clip = wb.examples()[1]
        res = wb.predict(clip)
        assert res["probs"]["audio"] is None and res["probs"]["video"] is None
        assert "This model set has no Audio only (MAT) model." in res["notes"]
        assert len(wb.embed(clip, method="pca", source="models")["figures"]) == 3
        out = wb.explain(clip, method="gradcam")
        assert set(out["overlays"]) == {"mmt"}


def test_ood_reference_and_pointing_game_come_from_the_sets_clips(own_run, tmp_path):
    """A --models set with data: the "unlike the training data" reference is fitted on its
    clips and cached by (weights, manifest, split); the pointing game runs on its clips that
    have box sidecars (the built-in clips here)."""
    from mmt_core import ood
    from workbench.service import Workbench
    from wb_helpers import one_torch_thread

    with one_torch_thread():
        wb = Workbench(models=own_run, cache_dir=tmp_path / "c")
        clip = wb.examples()[0]
        assert clip.with_suffix(".json").is_file()  # the example keeps its boxes
        assert wb.predict(clip)["ood"] is not None
        files = list((tmp_path / "c" / "ood").glob(f"*/{ood.OOD_FILE}"))
        assert len(files) == 1 and ood.load(files[0].parent)["n"] == 18
        assert str(own_run / "manifest.csv") in ood.load(files[0].parent)["source"]
        again = Workbench(models=own_run, cache_dir=tmp_path / "c").ood_reference()
        assert again["n"] == 18 and len(list((tmp_path / "c" / "ood").iterdir())) == 1
        assert len(wb.pointing_records()) == 15  # 5 of each class (all 18 clips have boxes)
        out = wb.explain(clip, method="gradcam")
        assert "manifest.csv" in out["pointing_source"]
        assert out["pointing"]["mmt"]["clips"] == 15 and out["boxes"] is not None


def test_workbench_refuses_a_set_without_a_fused_model(own_run, tmp_path):
    from workbench.service import Workbench

    wb = Workbench(models=own_run / "audio" / "best", data=own_run / "manifest.csv",
                   checkpoints=tmp_path / "none", cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="needs a fused .* has only audio"):
        wb.models


def test_app_refuses_a_bad_model_set_with_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "app.py", "--models", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "no checkpoint found" in r.stderr


def test_workbench_dataset_analysis_of_a_set(own_run, tmp_path):
    from workbench.service import Workbench
    from wb_helpers import one_torch_thread

    with one_torch_thread():
        wb = Workbench(models=own_run, checkpoints=tmp_path / "none", cache_dir=tmp_path / "c")
        summary = wb.dataset_summary()
        assert summary["clips"] == 18 and not summary["cached"]
        assert list(summary["accuracy"]) == ["mmt", "audio", "video", "avg"]
        assert [r["class"] for r in summary["per_class"]] == CLASSES
        assert len(summary["suspicious"]) == 18
        conf, classes = wb.dataset_confusion("audio")
        assert classes == CLASSES and conf.sum() == 18
        true, pred = divmod(int(conf.argmax()), 3)
        cell = wb.dataset_cell("audio", CLASSES[true], CLASSES[pred])
        assert len(cell) == conf.max() and all(c["label"] == CLASSES[true] for c in cell)
        from PIL import Image

        thumb = wb.thumbnail(cell[0]["path"])  # the clip's middle frame, small
        assert thumb.parent == tmp_path / "c" / "thumbs" and max(Image.open(thumb).size) <= 160
        shown = wb.dataset_clip(cell[0]["path"])  # a copy the page may serve
        assert shown.parent == tmp_path / "c" / "dataset_clips"
        near = wb.dataset_neighbours(shown, "cross", k=4)  # found by content
        assert len(near) == 4 and near[0]["similarity"] >= near[-1]["similarity"]
        near = wb.dataset_neighbours(shown, "fused", k=4)
        assert cell[0]["path"] not in [n["path"] for n in near]  # itself left out
        # a clip outside the dataset: through the MMT's embeddings of it
        import numpy as np

        from mmt_core.data.synthetic import make_clip

        outside = tmp_path / "new.mp4"
        make_clip(outside, 2, np.random.default_rng(99))
        assert len(wb.dataset_neighbours(outside, "video", k=5)) == 5
        for fn in (wb.dataset_clip, wb.thumbnail):
            with pytest.raises(UserError, match="not a clip of the analysed dataset"):
                fn(outside)


@pytest.mark.slow
def test_app_dataset_tab_on_a_compare_run(own_run, tmp_path):
    """`python app.py --models RUN`: the Dataset tab's endpoints answer with the run's classes;
    a clip of a confusion cell opens (Predict runs on it) and has similar clips."""
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    from wb_helpers import AppServer

    server = AppServer({"MMT_MODELS": str(own_run), "MMT_CACHE_DIR": str(tmp_path / "cache"),
                        "MMT_APP_THREADS": "1", "MMT_APP_WARMUP": "pca"}, tmp_path / "app.log")
    try:
        server.wait()
        c = Client(server.url, verbose=False)
        md, acc, per, role, fig, true, pred, sus = c.predict(api_name="/dataset")
        assert "18 clips" in md and f"{own_run.name}/manifest.csv" in md
        assert str(own_run) not in md  # no server path goes to the page
        assert [r[0] for r in acc["data"]] == ["fused (MMT)", "audio-only", "video-only", "Avg"]
        assert [r[0] for r in per["data"]] == CLASSES
        assert len(sus["data"]) == 18 and fig is not None
        cell = c.predict("mmt", CLASSES[0], CLASSES[0], api_name="/dataset_cell")
        cell2 = c.predict("mmt", CLASSES[0], CLASSES[1], api_name="/dataset_cell")
        rows = cell["data"] + cell2["data"]
        assert rows and all(r[1] == CLASSES[0] for r in rows)
        shown, player = c.predict(rows[0][0], api_name="/dataset_open")
        assert shown and player
        near = c.predict(handle_file(shown), "cross", api_name="/dataset_neighbours")
        assert len(near["data"]) == 8 and all(r[1] in CLASSES for r in near["data"])
    except Exception:
        print(server.output()[-3000:])
        raise
    finally:
        server.stop()
