"""Build the "unlike the training data" development sets (kept out of git; benchmarks/bench_ood.py
reads them).

    python scripts/ood_devsets.py [--out /work/data_ood] [--per-kind 12]

OUT/<kind>/*.mp4, one folder per kind of clip, and OUT/kinds.json {kind: {"group", "what"}}:
  in-distribution (group "id"): fresh built-in test splits, seeds 3003 (used to choose the
      detector) and 4004 (held out), never the reference seed 2002; group "id_extra": cluttered
      built-in clips (seed 5005, `mmt synth --clutter`), only reported;
  out-of-distribution, group "select" (the detector is chosen on these): the real-recordings
      instruments set in three regimes, ffmpeg testsrc / mandelbrot / smptebars with tones and noise;
  out-of-distribution, group "heldout" (only reported): photographs with real recordings (images
      and sounds that ship with matplotlib / scikit-learn / gradio), gradio's real videos, ffmpeg
      life / cellauto / testsrc2 / gradients with espeak-ng speech, black frames with silence or
      speech. Each clip is 3 s, 160x160 (like the built-in clips).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
INSTRUMENTS = Path("/work/shared/datasets/instruments.py")
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages"
PHOTOS = [SITE / p for p in (
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg", "sklearn/datasets/images/flower.jpg",
    "sklearn/datasets/images/china.jpg", "gradio/media_assets/images/cheetah.jpg",
    "gradio/media_assets/images/cheetah1.jpg", "gradio/media_assets/images/lion.jpg",
    "gradio/media_assets/images/tower.jpg",
    "gradio/media_assets/images/groot.jpeg")]
SOUNDS = [SITE / "gradio/media_assets/audio" / n for n in (
    "cantina.wav", "sax.wav", "recording1.wav", "audio_sample.wav", "cate_blanch.mp3",
    "heath_ledger.mp3")]
VIDEOS = [SITE / "gradio/media_assets/videos" / n for n in ("a.mp4", "b.mp4", "world.mp4")]
SENTENCES = ["the quick brown fox jumps over the lazy dog",
             "please put the kettle on, we will be home in ten minutes",
             "one two three four five six seven eight nine ten",
             "this is a test of the emergency broadcast system",
             "good morning, the weather today is cloudy with some rain"]
SECONDS, SIZE, FPS = 3.0, 160, 15


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def encode(video_in: list[str], audio_in: list[str], path: Path, vf: str = "") -> None:
    """One 3 s, 160x160 H.264 + AAC clip from ffmpeg inputs (video first, then audio)."""
    scale = f"scale={SIZE}:{SIZE}:force_original_aspect_ratio=increase,crop={SIZE}:{SIZE}"
    ffmpeg(*video_in, *audio_in, "-map", "0:v:0", "-map", "1:a:0", "-t", str(SECONDS),
           "-vf", ",".join(x for x in (vf, scale, f"fps={FPS}", "format=yuv420p") if x),
           "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "-ar", "16000", "-ac", "1",
           "-shortest", str(path))


def lavfi(src: str) -> list[str]:
    return ["-f", "lavfi", "-i", src]


def speech(text: str, path: Path, rng: random.Random) -> list[str]:
    subprocess.run(["espeak-ng", "-w", str(path), "-s", str(rng.randint(140, 190)),
                    "-p", str(rng.randint(30, 70)), text], check=True)
    return ["-stream_loop", "-1", "-i", str(path)]


def sound(rng: random.Random) -> list[str]:
    """A 3 s excerpt of one of the real recordings, looped if shorter."""
    return ["-stream_loop", "-1", "-ss", f"{rng.uniform(0, 1.5):.2f}", "-i", str(rng.choice(SOUNDS))]


def still(photo: Path, rng: random.Random) -> tuple[list[str], str]:
    """A photograph as camera-like footage: a slow zoom/pan (ffmpeg zoompan)."""
    z = rng.uniform(1.0015, 0.003 + 1.0)
    vf = (f"scale=640:-2,zoompan=z='min(zoom*{z:.4f},1.5)':x='iw/2-(iw/zoom/2)+{rng.randint(-40, 40)}'"
          f":y='ih/2-(ih/zoom/2)':d={int(SECONDS * FPS)}:s={SIZE * 2}x{SIZE * 2}:fps={FPS}")
    return ["-loop", "1", "-i", str(photo)], vf


def build_kind(kind: str, n: int, out: Path, tmp: Path, rng: random.Random) -> None:
    d = out / kind
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path, s = d / f"{kind}_{i:02d}.mp4", rng.randint(0, 10 ** 6)
        freq = rng.choice([220, 330, 440, 660, 880, 1000])
        say = tmp / f"say{i}.wav"
        if kind == "testsrc_sine":
            encode(lavfi(f"testsrc=size=320x240:rate={FPS}"), lavfi(f"sine=f={freq}:r=16000"), path)
        elif kind == "mandelbrot_noise":
            color = rng.choice(["white", "pink", "brown"])
            encode(lavfi(f"mandelbrot=size=320x240:rate={FPS}:start_scale={rng.uniform(1, 3):.2f}"),
                   lavfi(f"anoisesrc=c={color}:r=16000:a=0.3:seed={s}"), path)
        elif kind == "smptebars_sine":
            encode(lavfi(f"smptebars=size=320x240:rate={FPS}"),
                   lavfi(f"sine=f={freq}:r=16000:beep_factor=4"), path)
        elif kind == "photo_recording":
            v, vf = still(PHOTOS[i % len(PHOTOS)], rng)
            encode(v, sound(rng), path, vf)
        elif kind == "real_video":
            src = VIDEOS[i % len(VIDEOS)]
            has_audio = subprocess.run(
                ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries",
                 "stream=index", "-of", "csv=p=0", str(src)], capture_output=True,
                text=True).stdout.strip()
            start = f"{rng.uniform(0, 2):.2f}"
            audio = ["-ss", start, "-i", str(src)] if has_audio else sound(rng)
            encode(["-ss", start, "-i", str(src)], audio, path)
        elif kind == "life_speech":
            encode(lavfi(f"life=size=160x160:rate={FPS}:seed={s}:mold=10:ratio=0.{rng.randint(1, 5)}"
                         ":life_color=#{:06x}".format(rng.randint(0, 0xFFFFFF))),
                   speech(rng.choice(SENTENCES), say, rng), path)
        elif kind == "cellauto_speech":
            encode(lavfi(f"cellauto=size=160x160:rate={FPS}:rule={rng.choice([18, 30, 90, 110])}"
                         f":seed={s}"), speech(rng.choice(SENTENCES), say, rng), path)
        elif kind == "testsrc2_speech":
            encode(lavfi(f"testsrc2=size=320x240:rate={FPS}"),
                   speech(rng.choice(SENTENCES), say, rng), path)
        elif kind == "gradients_recording":
            encode(lavfi(f"gradients=size=320x240:rate={FPS}:speed=0.05:seed={s}"), sound(rng), path)
        elif kind == "black_silence":
            encode(lavfi(f"color=black:size=160x160:rate={FPS}"),
                   lavfi("anullsrc=r=16000:cl=mono"), path)
        elif kind == "black_speech":
            encode(lavfi(f"color=black:size=160x160:rate={FPS}"),
                   speech(rng.choice(SENTENCES), say, rng), path)
        else:
            raise ValueError(kind)


KINDS = {  # kind: (group, what)
    "synth_s3003": ("id", "mmt synth --seed 3003 --split test"),
    "synth_s4004": ("id", "mmt synth --seed 4004 --split test (held out)"),
    "synth_clutter_s5005": ("id_extra", "mmt synth --seed 5005 --split test --clutter (mmt_tiny's "
                            "last epoch trained on cluttered clips; reported, not chosen on)"),
    "instruments_two": ("select", "instruments.py, two instruments on screen, clean audio"),
    "instruments_one_snr0": ("select", "instruments.py --on-screen 1 --snr 0"),
    "instruments_two_snr-10": ("select", "instruments.py --snr -10"),
    "testsrc_sine": ("select", "ffmpeg testsrc + sine tone"),
    "mandelbrot_noise": ("select", "ffmpeg mandelbrot + white/pink/brown noise"),
    "smptebars_sine": ("select", "ffmpeg smptebars + beeping sine"),
    "photo_recording": ("heldout", "photographs (zoom/pan) + real recordings"),
    "real_video": ("heldout", "gradio's sample videos"),
    "life_speech": ("heldout", "ffmpeg life + espeak-ng speech"),
    "cellauto_speech": ("heldout", "ffmpeg cellauto + espeak-ng speech"),
    "testsrc2_speech": ("heldout", "ffmpeg testsrc2 + espeak-ng speech"),
    "gradients_recording": ("heldout", "ffmpeg gradients + real recordings"),
    "black_silence": ("heldout", "black frames + silence"),
    "black_speech": ("heldout", "black frames + espeak-ng speech"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/work/data_ood")
    p.add_argument("--per-kind", type=int, default=12, help="clips per ffmpeg / photo kind")
    p.add_argument("--synth-per-class", type=int, default=20, help="built-in clips per class")
    p.add_argument("--instruments-classes", type=int, default=25)
    p.add_argument("--seed", type=int, default=33)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from mmt_core.data.synthetic import write_dataset

    for kind in ("synth_s3003", "synth_s4004", "synth_clutter_s5005"):
        seed = int(kind.split("_s")[-1])
        if not (out / kind).is_dir():
            write_dataset(out / ".tmp" / kind, clips_per_class=a.synth_per_class // 2 if
                          "clutter" in kind else a.synth_per_class, seed=seed, split="test",
                          progress=False, clutter="clutter" in kind)
            shutil.move(out / ".tmp" / kind / "test", out / kind)
    for kind, flags in (("instruments_two", []), ("instruments_one_snr0", ["--on-screen", "1", "--snr", "0"]),
                        ("instruments_two_snr-10", ["--snr", "-10"])):
        if not (out / kind).is_dir():
            tmp = out / ".tmp" / kind
            subprocess.run([sys.executable, str(INSTRUMENTS), str(tmp), "0", "1", "--classes",
                            str(a.instruments_classes), *flags], check=True)
            shutil.move(tmp / "test", out / kind)
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            if not (out / kind).is_dir():
                build_kind(kind, a.per_kind, out, Path(tmp), random.Random(rng.random()))
    shutil.rmtree(out / ".tmp", ignore_errors=True)
    (out / "kinds.json").write_text(json.dumps(
        {k: {"group": g, "what": w, "clips": len(list((out / k).glob("*.mp4")))}
         for k, (g, w) in KINDS.items()}, indent=1))
    print(json.dumps({k: len(list((out / k).glob("*.mp4"))) for k in KINDS}))


if __name__ == "__main__":
    main()
