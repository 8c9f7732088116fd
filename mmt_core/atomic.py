"""Atomic file writes: the text goes to a temporary sibling (named by the process id, so two
processes writing one file never share it) and one rename puts it in place, so a reader or a
crash never sees a half-written file."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, value, **dumps_kwargs) -> Path:
    """`json.dumps(value, **dumps_kwargs)` written atomically to `path`."""
    return write_text(path, json.dumps(value, **dumps_kwargs))
