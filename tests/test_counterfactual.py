"""scripts/counterfactual.py: the shipped MMT on built-in clips with one object left out."""
from __future__ import annotations

import pytest

from wb_helpers import ROOT, load_script, one_torch_thread


@pytest.fixture(scope="module")
def cf():
    return load_script("scripts/counterfactual.py")


def test_relation_names_the_distractor_that_must_be_told_apart(cf):
    side = {"look": "ball", "sound": "bell"}
    assert cf.relation({**side, "distractor": "ball"}) == "same"
    assert cf.relation({**side, "distractor": "box"}) == "rival"  # box_bell shares the bell
    assert cf.relation({**side, "distractor": "star"}) == "neutral"


def test_shipped_mmt_answers_full_and_counterfactual_clips(cf):
    with one_torch_thread():
        res = cf.run(str(ROOT / "checkpoints/mmt_tiny"), seed=1001, split="test", per_class=1,
                     progress=False)
    assert len(res["clips"]) == 6 and set(res["classes"]) >= {"ball_bell", "all"}
    for row in res["clips"]:
        assert row["relation"] in ("same", "rival", "neutral")
        for v in cf.VERSIONS:
            assert 0.0 <= row[v]["p_true"] <= 1.0 and 0 <= row[v]["top"] < 6
    total = res["classes"]["all"]
    assert total["clips"] == 6 and total["right"] >= 5  # the shipped MMT: ≥ 94 % top-1
    assert total["p_true_full"] > 0.8
    assert 0.0 <= total["changed_without_sounder"] <= 1.0
