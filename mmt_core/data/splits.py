"""Splits for data people bring: a stratified, seeded validation split carved out of train, and
the plain manifest (absolute paths) that records the result."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
from collections import defaultdict
from pathlib import Path

from .manifests import ClipRecord


def group_of(record: ClipRecord) -> str:
    """The source a clip was cut from: the manifest's group (a group column; VGGSound and
    Kinetics: the YouTube id; EPIC: the video), else its sidecar NAME.json's "group" or
    "source", else its file (segments of one file share it)."""
    if record.group:
        return record.group
    side = Path(record.path).with_suffix(".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
            g = meta.get("group") or meta.get("source") if isinstance(meta, dict) else None
            if g:
                return str(g)
        except (OSError, ValueError):
            pass
    return record.path


def carve_split(records: list[ClipRecord], fraction: float, seed: int, *,
                name: str = "val", notes: list | None = None) -> list[ClipRecord]:
    """The records with about round(fraction * n) clips of each class (at least 1 where the
    class has >= 2 clips, never all of them) moved to split `name`, whole sources at a time
    (`group_of`): clips cut from one recording never straddle train and val, so val measures
    what a model does on a recording it has not heard or seen. A class whose clips all come
    from one source falls back to a time split of it when the clips are segments with start
    times (the latest move), else to single clips; `notes` gets one line naming those classes.
    Which clips move depends only on (seed, class, the class's paths), not on record order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[next(iter(r.labels.values()))].append(i)
    moved: set[int] = set()
    timed, single = [], []
    for label, idx in sorted(by_class.items()):
        idx = sorted(idx, key=lambda i: (records[i].path, records[i].start or 0.0))
        n = len(idx)
        k = min(n - 1, max(1 if n >= 2 else 0, round(fraction * n)))
        groups: dict[str, list[int]] = defaultdict(list)
        for i in idx:
            groups[group_of(records[i])].append(i)
        if len(groups) >= 2:
            keys = sorted(groups)
            random.Random(f"{seed}:{label}").shuffle(keys)
            take: list[int] = []
            for g in keys[:-1]:  # never every source
                if len(take) >= k:
                    break
                take += groups[g]
            moved.update(take)
        elif k and all(records[i].start is not None for i in idx):
            moved.update(sorted(idx, key=lambda i: records[i].start)[-k:])  # the latest segments
            timed.append(label)
        else:
            random.Random(f"{seed}:{label}").shuffle(idx)
            moved.update(idx[:k])
            single.append(label)
    if notes is not None and (timed or single):
        notes.append(f"{len(timed) + len(single)} class(es) have a single source: val holds "
                     + (f"its latest segments for {len(timed)}" if timed else "")
                     + (" and " if timed and single else "")
                     + (f"clips of the same source as training for {len(single)} (val may "
                        "overrate them: add a group column)" if single else ""))
    return [dataclasses.replace(r, split=name) if i in moved else r for i, r in enumerate(records)]


def check_groups(records: list[ClipRecord], where: str) -> None:
    """A group column that gives every class a single group leaves nothing to hold out."""
    from ..errors import UserError

    given = [r for r in records if r.group]
    if not given:
        return
    per_class: dict[int, set] = defaultdict(set)
    for r in given:
        per_class[next(iter(r.labels.values()))].add(r.group)
    if len(per_class) >= 2 and all(len(g) == 1 for g in per_class.values()):
        raise UserError(f"{where}: the group column gives every class a single group, so no "
                        "source can be held out for validation (a group is the recording a clip "
                        "was cut from; leave the column out if there is none)")


def write_plain_manifest(path: str | Path, records: list[ClipRecord],
                         classes: dict[str, list[str]]) -> Path:
    """Write records as a plain CSV path,label,split[,start,end][,group] with absolute paths
    (atomic)."""
    names = classes["label"] if "label" in classes else next(iter(classes.values()))
    segments = any(r.start is not None or r.end is not None for r in records)
    grouped = any(r.group for r in records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"] + (["start", "end"] if segments else [])
                   + (["group"] if grouped else []))
        for r in records:
            row = [os.path.abspath(r.path), names[next(iter(r.labels.values()))], r.split]
            if segments:
                row += ["" if r.start is None else r.start, "" if r.end is None else r.end]
            if grouped:
                row.append(r.group)
            w.writerow(row)
    os.replace(tmp, path)
    return path
