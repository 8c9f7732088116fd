"""The launched app through gradio_client: /teach trains on clips + class names and /predict then
answers with the taught classes; /models switches back; /timeline; the OOD note."""
from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")

from conftest import make_media  # noqa: E402
from wb_helpers import serve_app  # noqa: E402

pytestmark = pytest.mark.slow
TAUGHT = {"bellball": 0, "whistlebox": 3}  # class name -> built-in class whose clips teach it


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from serve_app(tmp_path_factory.mktemp("app_teach"), MMT_APP_REF_CLIPS="2",
                         MMT_APP_WARMUP="none", MMT_TEACH_EPOCHS="1",  # a fast, tiny run
                         MMT_APP_MAX_SECONDS="12")


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


def teach_clips(out, per_class: int = 3):
    """(path, class name) pairs: built-in generator clips of two classes."""
    import numpy as np

    from mmt_core.data.synthetic import make_clip

    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name, label in TAUGHT.items():
        for i in range(per_class):
            path = out / f"{name}_{i}.mp4"
            make_clip(path, label, np.random.default_rng([77, label, i]))
            pairs.append((path, name))
    return pairs


def test_timeline_and_ood_note_with_the_demo_models(client, tmp_path):
    from gradio_client import handle_file

    from test_ood import noise_clip

    long = make_media(tmp_path / "long.mp4", seconds=10.0, size=(96, 72))
    plot, slider, md = client.predict(handle_file(str(long)), api_name="/timeline")
    assert plot is not None and "6 windows over 10.0 s" in md
    *_, notes = client.predict(handle_file(str(noise_clip(tmp_path / "noise.mp4"))),
                               api_name="/predict")
    assert "Unlike the training data" in notes


def test_teach_api_then_predict_answers_with_the_taught_classes(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    pairs = teach_clips(tmp_path / "clips")
    with pytest.raises(AppError, match="one class name per clip"):
        client.predict([handle_file(str(p)) for p, _ in pairs], ["bellball"], api_name="/teach")
    summary = client.predict([handle_file(str(p)) for p, _ in pairs], [n for _, n in pairs],
                             api_name="/teach")
    assert summary["classes"] == sorted(TAUGHT) and summary["clips"] == 6
    assert 0.0 <= summary["train_top1"] <= 1.0 and 0.0 <= summary["val_top1"] <= 1.0
    assert summary["seconds"] > 0 and summary["models"] == "taught"

    mmt, audio, video, frames, spec, notes = client.predict(handle_file(str(pairs[0][0])),
                                                            api_name="/predict")
    for label in (mmt, audio, video):
        assert {c["label"] for c in label["confidences"]} == set(TAUGHT)

    md, _ = client.predict("demo", api_name="/models")  # the switch back
    assert "demo" in md
    mmt, *_ = client.predict(handle_file(str(pairs[0][0])), api_name="/predict")
    assert len(mmt["confidences"]) == 5 and mmt["label"] not in TAUGHT
