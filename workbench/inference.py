"""The three demo models side by side on one clip, decoding the clip once.

    models = load_models("checkpoints")                 # mmt_tiny, mat_tiny, mvit_tiny_video
    res = predict_clip("clip.mp4", models, topk=5)
    res["predictions"]["mmt_tiny"]                       # [{"label", "prob"}, ...]

Each checkpoint's preprocessing comes from its config.json; clips are decoded once per distinct
decode setting (frames, window, sample rate) — the demo models share one — and each model's
inputs are built from that decoded clip exactly like `mmt_core.inference.prepare_clip` does.
One view (the centre window) is used: the app favours latency over the paper's 5-view average.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmt_core.errors import MediaError, UserError
from mmt_core.inference import clip_inputs

# Role in the app → demo checkpoint name under checkpoints/.
DEMO_MODELS = {"mmt": "mmt_tiny", "audio": "mat_tiny", "video": "mvit_tiny_video"}


@dataclass
class LoadedModel:
    name: str  # checkpoint directory name
    dir: Path
    model: torch.nn.Module  # eval mode, CPU
    meta: dict  # config.json

    @property
    def modalities(self) -> str:
        return getattr(self.model, "modalities", "") or self.meta.get("modalities", "")

    @property
    def head(self) -> str:
        return next(iter(self.meta["classes"]))

    @property
    def class_names(self) -> list[str]:
        return self.meta["classes"][self.head]


@dataclass
class Prepared:
    clip: object  # media.Clip of the centre window (frames uint8 (T,H,W,3), audio, times)
    fbank: torch.Tensor  # (F, N) normalised fbank, for display
    # model name -> {"video": (1,3,T,S,S), "audio": (1,1,F,N)} (what that model takes)
    inputs: dict[str, dict[str, torch.Tensor]]
    has_audio: bool
    decode_s: float
    notes: list[str] = field(default_factory=list)


def load_models(root: str | Path = "checkpoints", names: dict[str, str] | None = None
                ) -> dict[str, LoadedModel]:
    """role → LoadedModel for the demo checkpoints (missing ones raise CheckpointError)."""
    from mmt_core.checkpoint import load_checkpoint

    out = {}
    for role, name in (names or DEMO_MODELS).items():
        model, meta = load_checkpoint(Path(root) / name, "cpu")
        out[role] = LoadedModel(name=name, dir=Path(root) / name, model=model.eval(), meta=meta)
    return out


def load_model_set(folder: str | Path) -> dict[str, LoadedModel]:
    """role → LoadedModel for the model set in `folder` (mmt_core.model_set: a compare run, a
    taught folder, checkpoints/, one checkpoint). The app needs the fused model; the audio-only
    and video-only ones are optional. Each model is named by its folder when those differ
    (checkpoints/: mmt_tiny, mat_tiny, mvit_tiny_video), else by role and architecture (a
    compare run's three `best` links may all point at a step-0000040)."""
    from mmt_core.checkpoint import load_checkpoint
    from mmt_core.model_set import open_model_set

    ms = open_model_set(folder)
    if "mmt" not in ms.models:
        raise UserError(f"{folder}: the workbench needs a fused (audio + video) model; this set "
                        f"has only {', '.join(ms.roles)}")
    names = {r: d.name for r, d in ms.models.items()}
    if len(set(names.values())) < len(names):
        names = {r: f"{r}_{ms.metas[r]['model']}" for r in ms.models}
    out = {}
    for role, d in ms.models.items():
        model, meta = load_checkpoint(d, "cpu")
        out[role] = LoadedModel(name=names[role], dir=d, model=model.eval(), meta=meta)
    return out


def _decode_key(pre: dict) -> tuple:
    return (pre["num_frames"], float(pre["clip_seconds"]), pre["sample_rate"])


def prepare(path: str | Path, models: dict[str, LoadedModel], *,
            max_seconds: float | None = None, start: float | None = None) -> Prepared:
    """Decode `path` once per distinct decode setting and build every model's inputs: the
    centre window, or the window starting at `start` seconds (a timeline window).

    Raises MediaError (a one-line, user-facing message) for a file that is not a usable video.
    """
    from mmt_core.data import media

    t0 = time.perf_counter()
    info = media.probe(path)
    if not info.has_video:
        raise MediaError("the file has no video stream; upload a video clip "
                         "(mp4, webm, mkv, mov, avi)")
    if max_seconds is not None and info.duration > max_seconds:
        raise MediaError(f"the clip is {info.duration:.1f} s long; this workbench accepts clips up "
                         f"to {max_seconds:g} s (cut it first, e.g. with ffmpeg -t {max_seconds:g})")
    clips: dict[tuple, object] = {}
    inputs = {}
    for m in models.values():
        pre = m.meta["preprocessing"]
        key = _decode_key(pre)
        if key not in clips:
            clips[key] = media.decode(path, num_frames=pre["num_frames"],
                                      clip_seconds=pre["clip_seconds"],
                                      sample_rate=pre["sample_rate"],
                                      **({"view": 0, "num_views": 1} if start is None
                                         else {"start": start}),
                                      max_seconds=pre.get("max_clip_seconds", 600.0))
        inputs[m.name] = clip_inputs(clips[key], m.meta, m.modalities)
    # The normalised fbank shown in the app: the first audio model's input, else computed.
    audio = [x["audio"] for x in inputs.values() if "audio" in x]
    first = next(iter(models.values()))
    clip = clips[_decode_key(first.meta["preprocessing"])]
    fb = audio[0][0, 0] if audio else clip_inputs(clip, first.meta, "a")["audio"][0, 0]
    notes = []
    if not clip.has_audio:
        notes.append("This clip has no audio track: MMT hears silence, so its prediction comes "
                     "from the video; the audio-only model is skipped.")
    return Prepared(clip=clip, fbank=fb, inputs=inputs, has_audio=bool(clip.has_audio),
                    decode_s=time.perf_counter() - t0, notes=notes)


@torch.inference_mode()
def predict_prepared(prep: Prepared, models: dict[str, LoadedModel], topk: int = 5) -> dict:
    """role → {"model", "top": [{"label", "prob"}], "probs": (C,) ndarray, "output": ModelOutput}."""
    results = {}
    for role, m in models.items():
        if "v" not in m.modalities and not prep.has_audio:
            results[role] = {"model": m.name, "top": [], "probs": None, "output": None,
                             "skipped": "no audio track"}
            continue
        out = m.model(**prep.inputs[m.name])
        probs = out.head_logits[m.head].float().softmax(-1)[0]
        values, idx = probs.topk(min(topk, probs.numel()))
        top = [{"label": m.class_names[i], "prob": round(float(v), 6)}
               for v, i in zip(values.tolist(), idx.tolist())]
        results[role] = {"model": m.name, "top": top, "probs": probs.numpy(), "output": out}
    return results


def predict_clip(path: str | Path, models: dict[str, LoadedModel], topk: int = 5, *,
                 max_seconds: float | None = None) -> dict:
    """Decode once, run every model: {"predictions": {role: top-k}, "notes", "timing"}."""
    t0 = time.perf_counter()
    prep = prepare(path, models, max_seconds=max_seconds)
    t1 = time.perf_counter()
    res = predict_prepared(prep, models, topk)
    t2 = time.perf_counter()
    return {"clip": str(path), "has_audio": prep.has_audio, "notes": prep.notes,
            "predictions": {role: r["top"] for role, r in res.items()},
            "models": {role: r["model"] for role, r in res.items()},
            "timing": {"decode_s": round(t1 - t0, 4), "forward_s": round(t2 - t1, 4)},
            "results": res, "prepared": prep}
