"""Splits for data people bring: a stratified, seeded validation split carved out of train, and
the plain manifest (absolute paths) that records the result."""
from __future__ import annotations

import csv
import dataclasses
import os
import random
from collections import defaultdict
from pathlib import Path

from .manifests import ClipRecord


def carve_split(records: list[ClipRecord], fraction: float, seed: int, *,
                name: str = "val") -> list[ClipRecord]:
    """The records with round(fraction * n) clips of each class (at least 1 where the class has
    >= 2 clips, never all of them) moved to split `name`. Stratified by the first head's label;
    which clips move depends only on (seed, class, the class's paths), not on record order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[next(iter(r.labels.values()))].append(i)
    moved: set[int] = set()
    for label, idx in sorted(by_class.items()):
        idx = sorted(idx, key=lambda i: (records[i].path, records[i].start or 0.0))
        n = len(idx)
        k = min(n - 1, max(1 if n >= 2 else 0, round(fraction * n)))
        random.Random(f"{seed}:{label}").shuffle(idx)
        moved.update(idx[:k])
    return [dataclasses.replace(r, split=name) if i in moved else r for i, r in enumerate(records)]


def write_plain_manifest(path: str | Path, records: list[ClipRecord],
                         classes: dict[str, list[str]]) -> Path:
    """Write records as a plain CSV path,label,split[,start,end] with absolute paths (atomic)."""
    names = classes["label"] if "label" in classes else next(iter(classes.values()))
    segments = any(r.start is not None or r.end is not None for r in records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"] + (["start", "end"] if segments else []))
        for r in records:
            row = [os.path.abspath(r.path), names[next(iter(r.labels.values()))], r.split]
            if segments:
                row += ["" if r.start is None else r.start, "" if r.end is None else r.end]
            w.writerow(row)
    os.replace(tmp, path)
    return path
