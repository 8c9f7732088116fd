"""Tiny configs shared by the engine / checkpoint / inference / CLI tests (not a test module)."""
from __future__ import annotations

from mmt_core.config import load_config

# Small enough that a step takes well under a second on 2 CPU cores.
TINY = ["model=mmt_tiny", "data.num_frames=4", "data.image_size=32", "data.num_mel_bins=64",
        "data.audio_frames=64", "data.clip_seconds=3.2", "data.num_workers=0",
        "data.freq_mask=8", "data.time_mask=8", "train.batch_size=4", "train.device=cpu",
        "train.log_every=1", "train.lr=0.001"]


def tiny_overrides(manifest, *extra: str) -> list[str]:
    return [*TINY, f"data.manifest={manifest}", *extra]


def tiny_cfg(manifest, *extra: str):
    return load_config(None, tiny_overrides(manifest, *extra))
