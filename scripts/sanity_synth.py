"""Sanity check of the built-in dataset: can simple features of ONE sense find the class?

    python scripts/sanity_synth.py DATA_DIR [--split train]

DATA_DIR is a `mmt synth` folder. Audio: logistic regression on fbank statistics (per-mel mean
and std over time) predicting the sound and the class. Video: a random forest on colour-mask
areas and motion (per look colour: mean and std of the mask area, mean / max / std of the mask
centroid's frame-to-frame speed, over all 100 frames) predicting the sounding object's look and
the class. 5-fold cross-validation; prints accuracies as JSON. A dataset without a leak keeps
each sense near one class pair (≈ 50 %) while finding its own attribute (sound / look).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def colour_masks(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(N, H, W, 3) uint8 → look → (N, H, W) bool of its dominant colour."""
    f = frames.astype(np.int16)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return {"ball": (r > g + 60) & (r > b + 60), "box": (b > r + 60) & (b > g + 40),
            "star": (g > r + 60) & (g > b + 40)}


def video_features(frames: np.ndarray) -> np.ndarray:
    feats = []
    for m in colour_masks(frames).values():
        area = m.mean(axis=(1, 2))  # (N,)
        ys, xs = np.mgrid[0:m.shape[1], 0:m.shape[2]]
        n = np.maximum(m.sum(axis=(1, 2)), 1)
        cy, cx = (m * ys).sum(axis=(1, 2)) / n, (m * xs).sum(axis=(1, 2)) / n
        speed = np.hypot(np.diff(cy), np.diff(cx))
        feats += [area.mean(), area.std(), speed.mean(), speed.max(), speed.std(),
                  np.abs(np.diff(area)).max()]
    return np.array(feats, np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--split", default="train")
    a = p.parse_args()
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mmt_core.data import media
    from mmt_core.data.features import fbank
    from mmt_core.data.manifests import read_manifest
    from mmt_core.data.synthetic import check_one_version, load_sidecar

    man = read_manifest(Path(a.data) / "manifest.csv", split=a.split)
    recs = [r for r in man.records if r.split == a.split]
    version = check_one_version([r.path for r in recs])
    A, V, cls, sound, look = [], [], [], [], []
    for r in recs:
        side = load_sidecar(r.path)
        clip = media.decode(r.path, num_frames=100, clip_seconds=4.0, sample_rate=16000, view=0,
                            num_views=1)
        fb = fbank(clip.audio, 16000, 64, None).numpy()  # (64, N)
        A.append(np.concatenate([fb.mean(1), fb.std(1)]))
        V.append(video_features(clip.frames))
        cls.append(side["class"])
        sound.append(side["sound"])
        look.append(side["look"])
    A, V = np.stack(A), np.stack(V)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    rf = RandomForestClassifier(n_estimators=300, random_state=0)
    cv = lambda model, x, y: float(cross_val_score(model, x, y, cv=5).mean())  # noqa: E731
    print(json.dumps({
        "clips": len(recs), "generator_version": version,
        "audio_logreg_sound": cv(lr, A, sound), "audio_logreg_class": cv(lr, A, cls),
        "video_forest_look": cv(rf, V, look), "video_forest_class": cv(rf, V, cls),
    }, indent=1))


if __name__ == "__main__":
    main()
