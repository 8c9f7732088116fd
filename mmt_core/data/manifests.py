"""Dataset manifests: VGGSound, Kinetics-Sounds, EPIC-KITCHENS-100, folder-per-class, plain CSV.

Each reader turns the dataset's own index file into ClipRecords with an absolute media path and
integer labels per head. Records whose media file is missing are kept: the dataset meets them,
returns None and the engine counts them, so a half-downloaded dataset is visible, not silent.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

MEDIA_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".MP4")

# The 32 Kinetics-400 classes of Kinetics-Sounds (Arandjelovic & Zisserman 2017, as used by
# Xiao et al. 2020 and the MMT paper): classes whose action is audible.
KINETICS_SOUNDS_CLASSES = [
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball",
    "laughing", "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar",
    "playing clarinet", "playing drums", "playing guitar", "playing harmonica", "playing keyboard",
    "playing organ", "playing piano", "playing saxophone", "playing trombone", "playing trumpet",
    "playing violin", "playing xylophone", "ripping paper", "shoveling snow", "shuffling cards",
    "singing", "stomping grapes", "tap dancing", "tapping guitar", "tapping pen", "tickling",
    "typing",
]
EPIC_VERBS, EPIC_NOUNS = 97, 300


@dataclass
class ClipRecord:
    path: str  # absolute (or root-joined) media path
    labels: dict[str, int]  # head -> class index ("label", or "verb"/"noun")
    split: str = ""
    start: float | None = None  # segment start in seconds (EPIC); None = whole file
    end: float | None = None
    id: str = ""
    # Clips that share a source (a recording, a YouTube video, a sidecar's "group"/"source"):
    # a validation split never straddles it (mmt_core.data.splits.group_of). "" = unknown.
    group: str = ""


@dataclass
class Manifest:
    records: list[ClipRecord]
    classes: dict[str, list[str]]  # head -> class names, index = label
    format: str = ""
    path: str = ""
    splits: list[str] = field(default_factory=list)  # every split in the file, before filtering


def _read_rows(path: Path, header: bool) -> list:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f) if header else csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read manifest {path}: {e}") from None


def _need(row_keys, cols: list[str], path: Path) -> None:
    for c in cols:
        if c not in row_keys:
            raise UserError(f"manifest {path} has no column '{c}' (columns: {', '.join(row_keys)})")


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8-sig") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read manifest {path}: {e}") from None


def sniff_format(path: str | Path) -> str:
    """Tell the manifest format from a directory or the first CSV line."""
    p = Path(path)
    if p.is_dir():
        return "folder"
    if not p.is_file():
        raise UserError(f"manifest not found: {p}")
    cols = [c.strip().lower() for c in next(csv.reader([_first_line(p)]), [])]
    if "narration_id" in cols or {"video_id", "start_timestamp"} <= set(cols):
        return "epic100"
    if {"youtube_id", "time_start"} <= set(cols):
        return "kinetics_sounds"
    if {"path", "label"} <= set(cols):
        return "plain"
    if len(cols) == 4 and re.fullmatch(r"\d+(\.\d+)?", cols[1]):
        return "vggsound"
    raise UserError(f"cannot tell the format of {p}: expected a header with path,label "
                    "(plain), youtube_id,time_start (kinetics_sounds), narration_id (epic100), "
                    "or VGGSound rows 'ytid,start,label,split'; pass format= explicitly")


def _index_names(root: Path) -> dict[str, str]:
    """stem -> file name of the media files in root (one listing, not one stat per record)."""
    try:
        return {os.path.splitext(e.name)[0]: e.name for e in os.scandir(root)
                if e.is_file() and os.path.splitext(e.name)[1].lower() in
                {x.lower() for x in MEDIA_EXTS}}
    except OSError:
        return {}


def _label_map(names: list[str]) -> tuple[list[str], dict[str, int]]:
    classes = sorted(set(names))
    return classes, {c: i for i, c in enumerate(classes)}


def _finish(records, classes, fmt, path, split) -> Manifest:
    splits = sorted({r.split for r in records})
    if split:
        records = [r for r in records if r.split == split]
    return Manifest(records=records, classes=classes, format=fmt, path=str(path), splits=splits)


def read_plain(path: Path, root: Path, split: str | None) -> Manifest:
    """CSV with header path,label[,split][,start,end][,group]; paths relative to root."""
    rows = _read_rows(path, header=True)
    if rows:
        _need(rows[0].keys(), ["path", "label"], path)
    else:
        _need(next(csv.reader([_first_line(path)]), []), ["path", "label"], path)
    for i, r in enumerate(rows):
        if not r.get("path") or not r.get("label"):
            raise UserError(f"{path} line {i + 2}: empty path or label")
    names, index = _label_map([r["label"] for r in rows])
    recs = []
    for i, r in enumerate(rows):
        st, en = r.get("start") or None, r.get("end") or None
        recs.append(ClipRecord(path=str(root / r["path"]), labels={"label": index[r["label"]]},
                               split=(r.get("split") or "").strip(), id=str(i),
                               start=float(st) if st else None, end=float(en) if en else None,
                               group=(r.get("group") or "").strip()))
    return _finish(recs, {"label": names}, "plain", path, split)


def read_vggsound(path: Path, root: Path, split: str | None) -> Manifest:
    """VGGSound CSV, no header: ytid, start_seconds, label, split -> ROOT/{ytid}_{start:06d}.mp4."""
    rows = [r for r in _read_rows(path, header=False) if r]
    stems = _index_names(root)
    names, index = _label_map([r[2] for r in rows if len(r) >= 4])
    recs = []
    for n, r in enumerate(rows):
        if len(r) < 4:
            raise UserError(f"{path} line {n + 1}: expected 4 fields ytid,start,label,split, got {len(r)}")
        try:
            start = int(float(r[1]))
        except ValueError:
            raise UserError(f"{path} line {n + 1}: start '{r[1]}' is not a number") from None
        stem = f"{r[0]}_{start:06d}"
        name = stems.get(stem) or stems.get(f"{r[0]}_{start}") or stem + ".mp4"
        recs.append(ClipRecord(path=str(root / name), labels={"label": index[r[2]]},
                               split=r[3].strip(), id=stem, group=r[0]))
    return _finish(recs, {"label": names}, "vggsound", path, split)


def read_kinetics_sounds(path: Path, root: Path, split: str | None) -> Manifest:
    """Kinetics CSV label,youtube_id,time_start,time_end,split; keeps the 32 Kinetics-Sounds classes.

    Media: ROOT/{split}/{label}/{ytid}_{start:06d}_{end:06d}.mp4 (label folders with spaces or
    underscores both work).
    """
    rows = _read_rows(path, header=True)
    if rows:
        _need(rows[0].keys(), ["label", "youtube_id", "time_start", "time_end", "split"], path)
    index = {c: i for i, c in enumerate(KINETICS_SOUNDS_CLASSES)}
    recs = []
    for r in rows:
        label = r["label"].strip().strip('"')
        if label not in index:
            continue
        s, e = int(float(r["time_start"])), int(float(r["time_end"]))
        name = f"{r['youtube_id']}_{s:06d}_{e:06d}"
        sp = r["split"].strip()
        p = root / sp / label / f"{name}.mp4"
        if not p.exists():
            alt = root / sp / label.replace(" ", "_") / f"{name}.mp4"
            p = alt if alt.exists() else p
        recs.append(ClipRecord(path=str(p), labels={"label": index[label]}, split=sp, id=name,
                               group=r["youtube_id"]))
    return _finish(recs, {"label": list(KINETICS_SOUNDS_CLASSES)}, "kinetics_sounds", path, split)


def _hms(text: str, path: Path) -> float:
    m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", text.strip())
    if not m:
        raise UserError(f"{path}: timestamp '{text}' is not HH:MM:SS.ff")
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _epic_names(path: Path, which: str, count: int) -> list[str]:
    f = path.parent / f"EPIC_100_{which}_classes.csv"
    names = [f"{which}_{i}" for i in range(count)]
    if f.is_file():
        for r in _read_rows(f, header=True):
            if "id" in r and "key" in r and int(r["id"]) < count:
                names[int(r["id"])] = r["key"]
    return names


def _epic_split(path: Path) -> str:
    stem = path.stem.lower()
    return "train" if "train" in stem else "validation" if "validation" in stem else "test"


def _epic_rows(path: Path, root: Path) -> list[ClipRecord]:
    rows = _read_rows(path, header=True)
    cols = ["narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp",
            "verb_class", "noun_class"]
    if rows:
        _need(rows[0].keys(), cols, path)
    sp = _epic_split(path)
    recs = []
    for r in rows:
        base = root / r["participant_id"] / "videos"
        p = base / f"{r['video_id']}.MP4"
        if not p.exists() and (base / f"{r['video_id']}.mp4").exists():
            p = base / f"{r['video_id']}.mp4"
        recs.append(ClipRecord(
            path=str(p), labels={"verb": int(r["verb_class"]), "noun": int(r["noun_class"])},
            split=sp, start=_hms(r["start_timestamp"], path), end=_hms(r["stop_timestamp"], path),
            id=r["narration_id"], group=r["video_id"]))
    return recs


def read_epic100(path: Path, root: Path, split: str | None) -> Manifest:
    """EPIC-KITCHENS-100 annotations -> segments of ROOT/{participant}/videos/{video}.MP4.

    Reading EPIC_100_train.csv also reads EPIC_100_validation.csv beside it (and vice versa), so
    one manifest path gives splits "train" and "validation" (what papers report as test).
    Heads verb (97) and noun (300), names from EPIC_100_{verb,noun}_classes.csv beside the CSV.
    """
    files = [path] + [path.parent / f"EPIC_100_{n}.csv" for n in ("train", "validation")]
    recs, seen = [], set()
    for f in files:
        if f.is_file() and f.resolve() not in seen:
            seen.add(f.resolve())
            recs += _epic_rows(f, root)
    classes = {"verb": _epic_names(path, "verb", EPIC_VERBS), "noun": _epic_names(path, "noun", EPIC_NOUNS)}
    return _finish(recs, classes, "epic100", path, split)


def read_folder(path: Path, split: str | None) -> Manifest:
    """ROOT/class/*.mp4, or ROOT/{train,test,...}/class/*.mp4 (the split level is detected)."""
    subdirs = sorted(d for d in path.iterdir() if d.is_dir())
    split_names = {"train", "test", "val", "valid", "validation"}
    layered = bool(subdirs) and all(d.name.lower() in split_names for d in subdirs)
    groups = [(d.name, d) for d in subdirs] if layered else [("", path)]
    found = []
    for sp, base in groups:
        for cdir in sorted(d for d in base.iterdir() if d.is_dir()):
            for f in sorted(cdir.iterdir()):
                if f.is_file() and f.suffix.lower() in {e.lower() for e in MEDIA_EXTS}:
                    found.append((str(f), cdir.name, sp))
    if not found:
        raise UserError(f"no media files (mp4/webm/mkv/mov/avi) in class folders under {path}")
    names, index = _label_map([c for _, c, _ in found])
    recs = [ClipRecord(path=p, labels={"label": index[c]}, split=sp, id=Path(p).stem)
            for p, c, sp in found]
    return _finish(recs, {"label": names}, "folder", path, split)


FORMATS = ("auto", "plain", "vggsound", "kinetics_sounds", "epic100", "folder")


def read_manifest(path: str | Path, format: str = "auto", root: str | Path = "",
                  split: str | None = None) -> Manifest:
    """Read a manifest of any supported format; `root` defaults to the manifest's folder."""
    if format not in FORMATS:
        raise UserError(f"unknown manifest format '{format}' (choose from {', '.join(FORMATS)})")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"manifest not found: {p}")
    fmt = sniff_format(p) if format == "auto" else format
    if fmt == "folder":
        if not p.is_dir():
            raise UserError(f"format 'folder' needs a directory, got {p}")
        return read_folder(p, split)
    if p.is_dir():
        raise UserError(f"format '{fmt}' needs a CSV file, got the directory {p}")
    r = Path(root).expanduser() if root else p.parent
    readers = {"plain": read_plain, "vggsound": read_vggsound,
               "kinetics_sounds": read_kinetics_sounds, "epic100": read_epic100}
    return readers[fmt](p, r, split)
