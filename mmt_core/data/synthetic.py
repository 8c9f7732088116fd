"""The built-in "sounding objects" dataset: short mp4 clips where neither sense alone suffices.

Three looks (red ball, blue box, green star) and three sounds (drum, bell, whistle) form six
classes on a cycle: each look belongs to two classes and each sound to two, so a video-only model
tops out near 50 %, an audio-only model near 50 %, and a model that binds the sound to the object
that makes it reaches ~100 %. The sounding object hits (jumps, squashes, flashes) exactly at the
audio event onsets; a silent distractor glides smoothly. Everything else (event times and counts,
loudness, positions, sizes, background, noise) is drawn independently of the class. Each clip has
a JSON sidecar with the sounding object's box per frame (pointing game).

Generator versions (`generator_version` in every sidecar and in OUT/generator.json):
- 1: the distractor has one of the two *other* looks. This leaks: "the blue box glides" says
  the sounding object is not a box, so a model can read the class off the distractor
  (checkpoints/README.md). Kept for reproducing the first demo checkpoints' figures.
- 2: the distractor's look is drawn uniformly from all three looks, independently of the class
  (two red balls: one hits with the sound, one glides), so only the object that acts with the
  sound carries class evidence. The default; the shipped demo checkpoints are trained on it.
A folder holds clips of one version: writing another version into it is an error.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import av
from av.codec.context import Flags
import numpy as np

from ..errors import UserError

FPS = 25  # video frame rate of every clip
SECONDS = 4.0  # clip length
SIZE = 128  # frame side in pixels (H = W)
AUDIO_RATE = 44100  # on purpose not 16 kHz: decoding must resample
MANIFEST = "manifest.csv"
VERSION_FILE = "generator.json"  # {"generator_version": v} next to manifest.csv
GENERATOR_VERSIONS = (1, 2)
DEFAULT_VERSION = 2  # leak-free; what the shipped checkpoints are trained on


class SynthClass(NamedTuple):
    name: str
    look: str
    sound: str
    description: str


# Sorted by name, so the plain-manifest reader (which sorts label names) gives the same indices.
CLASSES: list[SynthClass] = [
    SynthClass("ball_bell", "ball", "bell", "red ball that rings like a bell"),
    SynthClass("ball_drum", "ball", "drum", "red ball that thumps like a drum"),
    SynthClass("box_bell", "box", "bell", "blue box that rings like a bell"),
    SynthClass("box_whistle", "box", "whistle", "blue box that whistles"),
    SynthClass("star_drum", "star", "drum", "green star that thumps like a drum"),
    SynthClass("star_whistle", "star", "whistle", "green star that whistles"),
]
LOOKS = ("ball", "box", "star")
_COLOURS = {"ball": (215, 45, 40), "box": (40, 80, 220), "star": (40, 185, 60)}

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


# ----------------------------------------------------------------------------- sounds
def _sound(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One event of `kind`, peak-normalised to 1 (loudness is set by the caller)."""
    sr = AUDIO_RATE
    if kind == "drum":  # low tone with a falling pitch + a short noise burst
        t = np.arange(int(0.5 * sr)) / sr
        f0 = rng.uniform(55, 110)
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 1.5 * np.exp(-t / 0.03))) / sr
        tone = np.sin(phase) * np.exp(-t / rng.uniform(0.12, 0.2))
        noise = np.convolve(rng.standard_normal(len(t)), np.ones(8) / 8, "same") * np.exp(-t / 0.02)
        x = tone + 0.6 * noise
    elif kind == "bell":  # inharmonic partials ringing, the higher ones dying faster
        t = np.arange(int(1.2 * sr)) / sr
        f0, tau = rng.uniform(500, 900), rng.uniform(0.45, 0.75)
        x = sum(a * np.sin(2 * np.pi * f0 * r * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t * r / (tau * 1.5))
                for r, a in ((1.0, 1.0), (2.76, 0.6), (5.40, 0.4), (8.93, 0.25)))
        x = x * np.minimum(1.0, t / 0.002)
    elif kind == "whistle":  # rising chirp with vibrato and a square-ish third harmonic
        dur = rng.uniform(0.25, 0.4)
        t = np.arange(int(dur * sr)) / sr
        f = rng.uniform(1200, 1800) * (1 + 0.5 * t / dur) * (1 + 0.02 * np.sin(2 * np.pi * 6 * t))
        phase = 2 * np.pi * np.cumsum(f) / sr
        x = (np.sin(phase) + 0.3 * np.sin(3 * phase)) * np.minimum(1, t / 0.01) * np.minimum(1, (dur - t) / 0.03)
    else:
        raise ValueError(f"unknown sound {kind!r}")
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def _event_times(rng: np.random.Generator) -> np.ndarray:
    """3-6 onsets in [0.2, SECONDS-0.5] at least GAP apart, uniform over such sets; class-blind."""
    n, gap, lo, hi = int(rng.integers(3, 7)), 0.45, 0.2, SECONDS - 0.5
    free = np.sort(rng.uniform(0.0, hi - lo - (n - 1) * gap, size=n))  # slack left after the gaps
    return np.round(lo + free + gap * np.arange(n), 4)


def _audio(sound: str, events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    total = int(SECONDS * AUDIO_RATE)
    x = rng.standard_normal(total, dtype=np.float32) * 10 ** (rng.uniform(-55, -38) / 20)  # noise floor
    gain = 10 ** (rng.uniform(-16, -6) / 20)
    for onset in events:
        ev = _sound(sound, rng) * gain * 10 ** (rng.uniform(-3, 3) / 20)
        i = int(round(onset * AUDIO_RATE))
        n = min(len(ev), total - i)
        x[i:i + n] += ev[:n]
    return np.clip(x, -1, 1)


# ----------------------------------------------------------------------------- pictures
def _paint(img: np.ndarray, look: str, cx: float, cy: float, r: float, colour: np.ndarray,
           sx: float = 1.0, sy: float = 1.0) -> None:
    """Paint one object centred at (cx, cy), radius r, squashed by (sx, sy), into img in place."""
    x0, x1 = max(0, int(cx - r * sx) - 1), min(SIZE, int(cx + r * sx) + 2)
    y0, y1 = max(0, int(cy - r * sy) - 1), min(SIZE, int(cy + r * sy) + 2)
    dx = (_XX[y0:y1, x0:x1] - cx) / (r * sx)  # only the object's bounding patch: 30x faster
    dy = (_YY[y0:y1, x0:x1] - cy) / (r * sy)
    if look == "ball":
        m = dx * dx + dy * dy <= 1.0
    elif look == "box":
        m = (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    else:  # a five-pointed star in polar form
        rho, theta = np.sqrt(dx * dx + dy * dy), np.arctan2(dy, dx) + np.pi / 2
        m = rho <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 3
    img[y0:y1, x0:x1][m] = colour


def _background(rng: np.random.Generator) -> np.ndarray:
    """Muted random colour with a random texture (gradient, stripes or blotches), float (H, W, 3)."""
    base = rng.uniform(70, 170) + rng.uniform(-25, 25, size=3)
    kind = rng.integers(3)
    if kind == 0:
        a = rng.uniform(0, 2 * np.pi)
        tex = ((_XX * np.cos(a) + _YY * np.sin(a)) / SIZE - 0.5) * rng.uniform(20, 60)
    elif kind == 1:
        a, f = rng.uniform(0, np.pi), rng.uniform(0.05, 0.2)
        tex = np.sin((_XX * np.cos(a) + _YY * np.sin(a)) * f) * rng.uniform(8, 20)
    else:
        small = rng.standard_normal((8, 8)).astype(np.float32)
        tex = np.kron(small, np.ones((SIZE // 8, SIZE // 8), np.float32)) * rng.uniform(6, 16)
    return np.clip(base[None, None, :] + tex[..., None], 0, 255).astype(np.float32)


def _add_clutter(bg: np.ndarray, rng: np.random.Generator) -> None:
    """Paint 3-8 static shapes of the three looks, in random colours (the objects' own included),
    into the background in place: a training augmentation (`mmt synth --clutter`) against
    Grad-CAM's stray background peaks: shapes on the background then say nothing about the class,
    so the objects must be told from clutter by motion (docs/explain.md)."""
    for _ in range(int(rng.integers(3, 9))):
        look = LOOKS[int(rng.integers(3))]
        r = rng.uniform(6, 17)
        colour = rng.uniform(40, 220, 3).astype(np.float32)
        _paint(bg, look, rng.uniform(0, SIZE), rng.uniform(0, SIZE), r, colour)  # x, then y


def _place(rng: np.random.Generator, r: float, other: tuple[float, float, float] | None,
           margin: float) -> tuple[float, float]:
    lo, hi = r + margin, SIZE - r - margin
    for _ in range(100):
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if other is None or np.hypot(x - other[0], y - other[1]) > r + other[2] + 6:
            return x, y
    return x, y


def _render(look: str, other_look: str, events: np.ndarray, rng: np.random.Generator,
            hide: str | None = None, clutter: bool = False):
    """Frames (N, H, W, 3) uint8 and the sounding object's boxes (N, 4) [x0, y0, x1, y1].
    `hide` ("sounder" / "distractor") leaves that object out and draws everything else as it
    would be (the same random draws): a counterfactual clip. `clutter` adds static shapes to the
    background (`_add_clutter`)."""
    n = int(SECONDS * FPS)
    times = np.arange(n) / FPS
    bg = _background(rng)
    if clutter:
        _add_clutter(bg, rng)
    r1, r2 = rng.uniform(10, 17), rng.uniform(10, 17)
    jump = rng.uniform(7, 11)
    cx, cy = _place(rng, r1, None, margin=jump + 2)
    ox, oy = _place(rng, r2, (cx, cy, r1), margin=2)
    amp, freq, ph = rng.uniform(8, 22, 2), rng.uniform(0.2, 0.6, 2), rng.uniform(0, 2 * np.pi, 2)
    col1 = np.array(_COLOURS[look], np.float32) + rng.uniform(-20, 20, 3)
    col2 = np.array(_COLOURS[other_look], np.float32) + rng.uniform(-20, 20, 3)
    sigma = rng.uniform(1.5, 4)
    # all frames at once: background + sensor noise, objects painted in place, one clip/cast;
    # 16 noise frames drawn per clip, shuffled over time: drawing 100 would be 5x slower
    bank = rng.standard_normal((16, SIZE, SIZE, 3), dtype=np.float32) * sigma
    video = bank[rng.integers(0, 16, size=n)]
    video += bg
    boxes = np.empty((n, 4), np.float32)
    for k, t in enumerate(times):
        img = video[k]
        # distractor: smooth Lissajous glide, clamped inside the frame, never hits
        dx = np.clip(ox + amp[0] * np.sin(2 * np.pi * freq[0] * t + ph[0]), r2, SIZE - r2)
        dy = np.clip(oy + amp[1] * np.sin(2 * np.pi * freq[1] * t + ph[1]), r2, SIZE - r2)
        if hide != "distractor":
            _paint(img, other_look, dx, dy, r2, col2)
        # sounding object: at each onset it jumps up, squashes and flashes, then settles
        past = t - events[events <= t + 1e-9]
        e = float(np.exp(-past.min() / 0.1)) if len(past) else 0.0
        sx, sy, y = 1 + 0.3 * e, 1 - 0.3 * e, cy - jump * e
        if hide != "sounder":
            _paint(img, look, cx, y, r1, np.clip(col1 + 80 * e, 0, 255), sx, sy)
        boxes[k] = [max(0.0, cx - r1 * sx), max(0.0, y - r1 * sy),
                    min(float(SIZE), cx + r1 * sx), min(float(SIZE), y + r1 * sy)]
    frames = np.clip(video, 0, 255, out=video).astype(np.uint8)
    return frames, boxes, times


def _encode(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    """H.264 yuv420p + AAC mp4 with +faststart, deterministic (bitexact, one encoder thread)."""
    with av.open(str(path), "w", format="mp4",
                 options={"movflags": "+faststart", "fflags": "+bitexact"}) as c:
        vs = c.add_stream("libx264", rate=FPS, options={"crf": "20", "preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = SIZE, SIZE, "yuv420p"
        vs.codec_context.thread_count = 1
        vs.codec_context.flags |= int(Flags.bitexact)
        aus = c.add_stream("aac", rate=AUDIO_RATE, layout="mono", options={"aac_coder": "fast"})
        aus.codec_context.flags |= int(Flags.bitexact)
        per = 1024  # AAC frame size
        pos = 0
        for k, fr in enumerate(frames):
            for p in vs.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
            upto = min(len(audio), int((k + 1) * AUDIO_RATE / FPS))
            while pos + per <= upto or (k == len(frames) - 1 and pos < len(audio)):
                chunk = audio[pos:pos + per]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate, af.pts = AUDIO_RATE, pos
                for p in aus.encode(af):
                    c.mux(p)
                pos += len(chunk)
        for s in (vs, aus):
            for p in s.encode(None):
                c.mux(p)


def _clip_rng(seed: int, split: str, label: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), label, i])


def _check_version(version) -> int:
    if isinstance(version, bool) or version not in GENERATOR_VERSIONS:
        raise UserError(f"--version must be one of {', '.join(map(str, GENERATOR_VERSIONS))}, "
                        f"got {version!r}")
    return int(version)


def distractor_looks(look: str, version: int) -> list[str]:
    """The looks the distractor is drawn from (uniformly) for a sounding object of `look`."""
    return [lk for lk in LOOKS if lk != look] if _check_version(version) == 1 else list(LOOKS)


HIDE = ("sounder", "distractor")  # what a counterfactual clip may leave out


def make_clip(path: str | Path, label: int, rng: np.random.Generator,
              version: int = DEFAULT_VERSION, hide: str | None = None,
              clutter: bool = False) -> dict:
    """Write one clip of class `label` to `path` (+ `path.json` sidecar); returns the sidecar.
    `hide` leaves one object out ("sounder" / "distractor", recorded as the sidecar's `hidden`):
    the same clip otherwise, to test what a model's answer rests on. `clutter` paints static
    shapes on the background (a training augmentation; the sidecar's `clutter` is true)."""
    if hide is not None and hide not in HIDE:
        raise UserError(f"hide must be one of {', '.join(HIDE)}, got {hide!r}")
    cls = CLASSES[label]
    other = str(rng.choice(distractor_looks(cls.look, version)))
    events = _event_times(rng)
    frames, boxes, times = _render(cls.look, other, events, rng, hide, clutter)
    audio = _audio(cls.sound, events, rng)
    path = Path(path)
    tmp = path.with_name(path.stem + ".part.mp4")
    _encode(tmp, frames, audio)
    os.replace(tmp, path)
    side = {"generator_version": version, "class": cls.name, "label": label, "look": cls.look,
            "sound": cls.sound, "distractor": other, "fps": FPS, "width": SIZE, "height": SIZE,
            "seconds": SECONDS, "audio_rate": AUDIO_RATE, "events": events.tolist(),
            "frame_times": np.round(times, 6).tolist(),
            "boxes": np.round(boxes, 2).tolist()}
    if hide is not None:
        side["hidden"] = hide
    if clutter:
        side["clutter"] = True
    path.with_suffix(".json").write_text(json.dumps(side))
    return side


def _make_job(job: tuple) -> str:
    path, label, seed, split, i, version, hide, clutter = job
    make_clip(path, label, _clip_rng(seed, split, label, i), version, hide=hide, clutter=clutter)
    return path


def folder_version(out: str | Path) -> int | None:
    """The generator version of the clips in folder `out`: OUT/generator.json, else 1 when the
    folder already has a manifest (written before versions were recorded), else None (empty)."""
    out = Path(out)
    f = out / VERSION_FILE
    if f.is_file():
        try:
            return int(json.loads(f.read_text())["generator_version"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{f} is not a generator version file ({e})") from None
    return 1 if (out / MANIFEST).is_file() else None


def write_dataset(out: str | Path, clips_per_class: int = 20, seed: int = 0, split: str = "train",
                  progress: bool = True, workers: int = 0, version: int | None = None,
                  hide: str | None = None, clutter: bool = False) -> dict:
    """Write clips_per_class clips of each class under out/split/ and append them to out/manifest.csv.

    File names carry split and seed, so later calls with another split or seed add clips and
    never overwrite others; rerunning the same split+seed rewrites the same files (identical).
    `version`: the generator version (module docstring; None: the folder's version, else
    DEFAULT_VERSION); a folder holds one version only. `hide="sounder"` writes counterfactual
    clips without the sounding object (file names carry `nosounder`), labelled with their class:
    the two classes of a sound then look alike, so a model trained on them learns that nothing but
    the sounding object tells them apart (docs/explain.md, "What the answer rests on").
    `clutter=True` paints static shapes on every clip's background (names carry `clutter`), a
    training augmentation: the shipped MMT's last epoch ran on such clips (checkpoints/README.md).
    """
    if hide is not None and hide not in HIDE:
        raise UserError(f"--hide must be one of {', '.join(HIDE)}, got {hide!r}")
    if not isinstance(clips_per_class, int) or clips_per_class < 1:
        raise UserError(f"--clips-per-class must be a positive integer, got {clips_per_class}")
    if clips_per_class > 10000:
        raise UserError(f"--clips-per-class {clips_per_class} is too many (max 10000)")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split or ""):
        raise UserError(f"--split must be letters, digits, '_' or '-', got {split!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out exists and is not a directory: {out}")
    have = folder_version(out)
    version = _check_version(version if version is not None else have or DEFAULT_VERSION)
    if have is not None and have != version:
        raise UserError(f"{out} holds generator version {have} clips; write version {version} "
                        f"into another folder (versions are never mixed)")
    t0 = time.monotonic()
    try:
        (out / split).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out / split}: {e.strerror}") from None
    rows, jobs = [], []
    tag = (f"_no{hide}" if hide else "") + ("_clutter" if clutter else "")
    for label, cls in enumerate(CLASSES):
        for i in range(clips_per_class):
            rel = f"{split}/{split}_s{seed}{tag}_{cls.name}_{i:04d}.mp4"
            rows.append({"path": rel, "label": cls.name, "split": split})
            jobs.append((str(out / rel), label, seed, split, i, version, hide, bool(clutter)))
    # each clip has its own Generator, so clips are identical however they are spread over workers
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(jobs) >= 12:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            done = ex.map(_make_job, jobs, chunksize=2)
            _drain(done, len(jobs), progress)
    else:
        _drain(map(_make_job, jobs), len(jobs), progress)
    if progress:
        print(file=sys.stderr)
    manifest = out / MANIFEST
    _append_manifest(manifest, rows)
    if not (out / VERSION_FILE).is_file():
        (out / VERSION_FILE).write_text(json.dumps({"generator_version": version}) + "\n")
    return {"clips": len(rows), "classes": [c.name for c in CLASSES], "out": str(out),
            "manifest": str(manifest), "generator_version": version,
            "seconds": round(time.monotonic() - t0, 2)}


def _drain(results, total: int, progress: bool) -> None:
    for k, _ in enumerate(results, 1):
        if progress:
            print(f"\rmmt synth: {k}/{total} clips", end="", file=sys.stderr, flush=True)


def _append_manifest(manifest: Path, rows: list[dict]) -> None:
    """Keep existing rows (minus those being rewritten), add the new ones; atomic replace."""
    old = []
    if manifest.exists():
        with manifest.open(newline="") as f:
            old = [r for r in csv.DictReader(f)]
    new_paths = {r["path"] for r in rows}
    keep = [r for r in old if r.get("path") not in new_paths]
    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(keep + rows)
    os.replace(tmp, manifest)


# ----------------------------------------------------------------------------- sidecars
def load_sidecar(clip_path: str | Path) -> dict:
    """The JSON sidecar of a clip (built-in clips, or any set in the same form, e.g. the
    instruments set): needs `frame_times` and per-frame `boxes`; `events` is optional."""
    side = Path(clip_path).with_suffix(".json")
    if not side.is_file():
        raise UserError(f"no box sidecar for {clip_path} (expected {side}); only built-in clips have one")
    try:
        d = json.loads(side.read_text())
    except ValueError as e:
        raise UserError(f"{side} is not valid JSON ({e})") from None
    if "boxes" not in d or "frame_times" not in d:
        raise UserError(f"{side} has no per-frame 'boxes' and 'frame_times'")
    return d


def load_boxes(clip_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(frame times (N,), sounding-object boxes (N, 4) [x0, y0, x1, y1] in pixels) of a clip."""
    d = load_sidecar(clip_path)
    return np.asarray(d["frame_times"], np.float64), np.asarray(d["boxes"], np.float32)


def check_one_version(clip_paths) -> int | None:
    """The one generator version of built-in clips' sidecars (None: sidecars without a version,
    e.g. real-recording sets); a UserError when versions are mixed."""
    seen = {}
    for p in clip_paths:
        side = Path(p).with_suffix(".json")
        if side.is_file():
            d = json.loads(side.read_text())
            v = d.get("generator_version")
            if v is None and "events" in d and "distractor" in d:
                v = 1  # a built-in clip written before versions were recorded
            seen.setdefault(v, str(p))
    versions = sorted(v for v in seen if v is not None)
    if len(versions) > 1:
        raise UserError(f"clips of generator versions {versions} are mixed (e.g. "
                        f"{seen[versions[0]]} and {seen[versions[1]]}); keep one version per manifest")
    return versions[0] if versions else None


def boxes_at(clip_path: str | Path, times) -> np.ndarray:
    """Boxes (len(times), 4) of the frames shown at `times` seconds (the frame at or before t)."""
    return sidecar_boxes_at(load_sidecar(clip_path), times)


def sidecar_boxes_at(side: dict, times) -> np.ndarray:
    """`boxes_at` on a loaded sidecar dict."""
    ft = np.asarray(side["frame_times"], np.float64)
    boxes = np.asarray(side["boxes"], np.float32)
    fps = 1.0 / (ft[1] - ft[0]) if len(ft) > 1 else float(side.get("fps", FPS))
    idx = np.clip(np.floor(np.asarray(times, np.float64) * fps + 1e-6).astype(int), 0, len(boxes) - 1)
    return boxes[idx]
