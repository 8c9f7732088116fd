"""WebDataset tar shards: `mmt shard` writes them, training and evaluation stream from them.

Layout of DIR (what `write_shards` makes):
  DIR/{split}-000000.tar ...  WebDataset shards; one sample = files KEY.EXT sharing a KEY:
      KEY.mp4 (or .mkv/.webm/...)  the clip's own bytes (no re-encode); an EPIC-style segment is
                                   cut once by stream copy, from the key frame before its start
      KEY.json                     labels of every head (name + index), the segment's start/end in
                                   the stored media, the source path/segment, the sidecar if any
      --decoded instead of the media: KEY.000.jpg ... (the T sampled frames, JPEG) + KEY.fbank.npy
  DIR/index.json  format version, classes per head, kind (mp4 | decoded), sha256 of the manifest,
                  per split: shard names, samples per shard, skipped clips (and why)

Reading goes through the SAME per-sample code as the file-based dataset
(`AVDataset.make_item`): the media bytes are decoded from memory (`io.BytesIO`) by
`media.decode`, so a clip becomes the same tensors whichever way it was stored. Training streams
with replacement (`wds.ResampledShards`) and a fixed number of batches per epoch, so every rank
takes the same number of steps; evaluation reads every sample exactly once.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import av
import numpy as np
import torch

from ..atomic import write_json
from ..errors import ConfigError, MediaError, UserError
from .manifests import ClipRecord, read_manifest

FORMAT_VERSION = 1
MEDIA_EXTS = ("mp4", "mkv", "webm", "mov", "avi", "m4v")  # sample members that hold the media
DEFAULT_SHARD_MB = 1000.0  # ~1 GB shards: large sequential reads, few files, many per epoch


# ---------------------------------------------------------------------------- writing

def manifest_sha256(path: str | Path) -> str:
    """sha256 of the manifest's content (of the sorted file list for a folder dataset)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x.relative_to(p).as_posix() for x in p.rglob("*") if x.is_file()):
            h.update(f.encode() + b"\n")
    else:
        h.update(p.read_bytes())
    return h.hexdigest()


def cut_segment(path: str | Path, start: float, end: float) -> tuple[bytes, str, float]:
    """Stream-copy the packets of [start, end] of a media file into a new file in memory.

    Returns (bytes, extension, origin): the cut starts at the key frame at or before `start`
    (stream copy cannot start elsewhere), at `origin` seconds of the source, so the segment is
    [start - origin, end - origin] in the cut. mp4 first; matroska when mp4 cannot hold the
    codecs. Nothing is re-encoded; a file neither can hold raises MediaError (the clip is skipped).
    """
    errors = []
    for fmt, ext in (("mp4", "mp4"), ("matroska", "mkv")):
        try:
            data, origin = _remux(path, start, end, fmt)
            return data, ext, origin
        except (av.error.FFmpegError, ValueError) as e:
            errors.append(f"{fmt}: {e}")
    raise MediaError(f"cannot cut [{start:.2f}, {end:.2f}] of {path} by stream copy "
                     f"({'; '.join(errors)})")


def _remux(path, start: float, end: float, fmt: str) -> tuple[bytes, float]:
    with av.open(str(path)) as src:
        off = src.start_time / av.time_base if src.start_time is not None else 0.0
        streams = [s for s in (*src.streams.video[:1], *src.streams.audio[:1])]
        lead = streams[0]  # the video stream when there is one: cuts start at its key frames
        target = int((start + off) / lead.time_base)
        src.seek(target, stream=lead, backward=True)
        first = next((p for p in src.demux(lead) if p.pts is not None), None)
        if first is None:
            raise MediaError(f"no packets after {start:.2f}s in {path}")
        origin = float(first.pts * first.time_base) - off  # key frame time: the cut's zero
        first_dts = float(first.dts * first.time_base) - off if first.dts is not None else origin
        src.seek(target, stream=lead, backward=True)
        buf = io.BytesIO()
        with av.open(buf, "w", format=fmt) as dst:
            out = {s.index: dst.add_stream_from_template(s) for s in streams}
            for pkt in src.demux(*streams):
                if pkt.dts is None:  # flush packets
                    continue
                t = float(pkt.dts * pkt.time_base) - off
                if pkt.stream is lead and lead.type == "video":
                    # every frame shown up to `end` needs only packets decoded before it
                    keep = first_dts - 1e-6 <= t <= end
                else:
                    tp = float(pkt.pts * pkt.time_base) - off if pkt.pts is not None else t
                    keep = origin - 1e-6 <= tp <= end
                if not keep:
                    if t > end + 1.0:  # interleaving can lag by a few packets, not by a second
                        break
                    continue
                shift = int(round((origin + off) / pkt.time_base))
                pkt.pts = None if pkt.pts is None else pkt.pts - shift
                pkt.dts -= shift
                pkt.stream = out[pkt.stream.index]
                dst.mux(pkt)
        return buf.getvalue(), origin


def _labels(rec: ClipRecord, classes: dict[str, list[str]]) -> dict:
    return {h: {"index": int(i), "name": classes[h][i]} for h, i in rec.labels.items()}


def _sidecar(path: str) -> dict | None:
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


def _media_sample(rec: ClipRecord) -> tuple[dict, dict]:
    """(tar members, json fields) of one clip: its bytes, or its segment cut by stream copy."""
    from .media import probe

    info = probe(rec.path)  # MediaError for a missing / empty / unreadable file
    if rec.end is None:  # the whole file, byte for byte
        ext = Path(rec.path).suffix.lower().lstrip(".") or "mp4"
        ext = ext if ext in MEDIA_EXTS else "mp4"
        return {ext: Path(rec.path).read_bytes()}, {"start": rec.start, "end": None, "cut": None}
    start = rec.start or 0.0
    if min(rec.end, info.duration) <= start:
        raise MediaError(f"empty segment [{start:.2f}, {rec.end:.2f}] of {rec.path}")
    data, ext, origin = cut_segment(rec.path, start, rec.end)
    return {ext: data}, {"start": round(start - origin, 6), "end": round(rec.end - origin, 6),
                         "cut": {"origin": origin, "method": "stream copy"}}


def _decoded_sample(rec: ClipRecord, maker) -> tuple[dict, dict]:
    """(tar members, json fields) of one clip decoded the way training consumes it: the centre
    window's T frames at the decode size (JPEG) and its fbank (float16 .npy)."""
    from PIL import Image

    frames, fbs, has_audio = maker._raw(rec, None, 1)  # the same decode + fbank as AVDataset
    fb = fbs[0]
    members = {}
    for t, f in enumerate(frames[0]):
        b = io.BytesIO()
        Image.fromarray(f).save(b, format="JPEG", quality=95)
        members[f"{t:03d}.jpg"] = b.getvalue()
    b = io.BytesIO()
    np.save(b, fb.numpy().astype(np.float16))  # (F, N)
    members["fbank.npy"] = b.getvalue()
    return members, {"start": None, "end": None, "cut": None, "has_audio": bool(has_audio)}


def _decoded_preprocessing(cfg) -> dict:
    from .dataset import decode_short_side

    return {"num_frames": cfg.num_frames, "image_size": cfg.image_size,
            "short_side": decode_short_side(cfg.image_size), "clip_seconds": cfg.clip_seconds,
            "sample_rate": cfg.sample_rate, "num_mel_bins": cfg.num_mel_bins,
            "audio_frames": cfg.audio_frames, "video_seconds": cfg.video_seconds,
            "view": "centre", "fbank_dtype": "float16",
            "jpeg_quality": 95}


def write_shards(manifest: str | Path, out_dir: str | Path, *, split: str = "train",
                 shard_size: int = 0, shard_mb: float = 0.0, decoded_cfg=None,
                 format: str = "auto", root: str = "", seed: int = 0,
                 progress: bool = True) -> dict:
    """Write `split` of `manifest` as WebDataset shards `out_dir/{split}-NNNNNN.tar` + index.json.

    shard_size: samples per shard; shard_mb: MB per shard (default ~1 GB when neither is given).
    decoded_cfg: a DataConfig: store decoded frames + fbank at its sizes instead of the media.
    Clips are written in a random order (seeded by `seed`), so that each shard mixes the classes
    even when the manifest is sorted by class (a stream reads a shard front to back). Broken
    clips are skipped, counted and listed in the result and the index.
    """
    import webdataset as wds
    from tqdm.auto import tqdm

    from .features import one_thread

    if shard_size < 0 or shard_mb < 0:
        raise UserError("--shard-size and --shard-mb must be >= 0")
    if shard_size and shard_mb:
        raise UserError("give --shard-size or --shard-mb, not both")
    if not split or "/" in split:
        raise UserError(f"--split must be a plain name, got {split!r}")
    m = read_manifest(manifest, format=format, root=root, split=split)
    if not m.records:
        raise UserError(f"no clips in split '{split}' of {manifest}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}") from None
    kind = "decoded" if decoded_cfg is not None else "mp4"
    index = _merged_index(out, kind, m.classes, manifest_sha256(manifest),
                          _decoded_preprocessing(decoded_cfg) if decoded_cfg else None)
    for old in out.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):  # a rewrite of the split
        old.unlink()
    maker = None
    if decoded_cfg is not None:
        from .dataset import AVDataset

        maker = AVDataset([], m.classes, decoded_cfg, train=False)
    counts: dict[str, int] = {}
    skipped: list[dict] = []
    order = np.random.default_rng(seed).permutation(len(m.records))
    bar = tqdm([m.records[i] for i in order], desc=f"mmt shard {split}", disable=not progress,
               file=sys.stderr)
    max_mb = shard_mb or (0 if shard_size else DEFAULT_SHARD_MB)
    with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=shard_size or 10**9,
                         maxsize=max_mb * 1e6 if max_mb else float("inf"),
                         verbose=0) as writer, one_thread():
        for i, rec in enumerate(bar):
            try:
                members, fields = (_decoded_sample(rec, maker) if maker is not None
                                   else _media_sample(rec))
            except (MediaError, av.error.FFmpegError, OSError) as e:
                skipped.append({"path": rec.path, "error": str(e)})
                bar.set_postfix(skipped=len(skipped))
                continue
            meta = {"key": f"{i:07d}", "split": split, "labels": _labels(rec, m.classes),
                    **fields, "source": {"path": rec.path, "start": rec.start, "end": rec.end,
                                         "id": rec.id},
                    "sidecar": _sidecar(rec.path)}
            writer.write({"__key__": meta["key"], **members, "json": meta})
            name = os.path.basename(writer.fname)
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        raise UserError(f"none of the {len(m.records)} clips of split '{split}' could be read "
                        f"(first error: {skipped[0]['error']})")
    for f in out.glob(f"{split}-*.tar"):  # ShardWriter opens its first shard before any sample
        if f.name not in counts:
            f.unlink()
    index["splits"][split] = {"shards": [{"name": n, "samples": c} for n, c in counts.items()],
                              "order_seed": seed,
                              "samples": sum(counts.values()), "skipped": len(skipped),
                              "skipped_clips": skipped}
    write_json(out / "index.json", index, indent=1)
    names = sorted(counts)
    return {"out_dir": str(out), "split": split, "kind": kind, "shards": len(counts),
            "samples": sum(counts.values()), "skipped": len(skipped),
            "pattern": str(out / (f"{split}-{{{names[0][-10:-4]}..{names[-1][-10:-4]}}}.tar")),
            "bytes": sum((out / n).stat().st_size for n in counts),
            "skipped_clips": skipped}


def _merged_index(out: Path, kind: str, classes: dict, sha: str, pre: dict | None) -> dict:
    """The index to write: a new one, or the existing one of another split of the same data."""
    new = {"format": "mmt-webdataset", "version": FORMAT_VERSION, "kind": kind,
           "classes": classes, "manifest_sha256": sha, "preprocessing": pre, "splits": {}}
    path = out / "index.json"
    if not path.is_file():
        return new
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    what = {"manifest_sha256": "another manifest (sha256 mismatch)", "kind": "another kind",
            "classes": "other classes", "preprocessing": "other decoded sizes"}
    for key, text in what.items():
        if old.get(key) != new[key]:
            raise UserError(f"{out} holds shards of {text}; write to a new --out")
    return {**new, "splits": old.get("splits", {})}


# ---------------------------------------------------------------------------- reading

def expand_urls(spec: str) -> list[str]:
    """Brace-expand a shard pattern ('DIR/train-{000000..000009}.tar', URLs, pipe:); for local
    paths, check the files exist."""
    import braceexpand

    urls = [u for part in spec.split("::") for u in braceexpand.braceexpand(part.strip())]
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if local and len(missing) == len(local):
        raise ConfigError(f"no shards match {spec}")
    if missing:
        raise ConfigError(f"{len(missing)} of {len(urls)} shards of {spec} are missing, "
                          f"e.g. {missing[0]}")
    return urls


def _index_url(spec: str, index: str = "") -> str:
    if index:
        return index
    if spec.startswith("pipe:"):
        raise ConfigError("data.shards is a pipe: command; set data.shards_index to its "
                          "index.json (a path or URL)")
    if "://" not in spec and Path(spec).is_dir():
        return str(Path(spec) / "index.json")
    return spec.split("::")[0].rsplit("/", 1)[0] + "/index.json" if "/" in spec else "index.json"


def read_index(spec: str, index: str = "") -> dict:
    """The index.json of the shards `spec` (beside them, or `index` when given)."""
    import webdataset as wds

    url = _index_url(spec, index)
    try:
        if "://" in url and not url.startswith("file://"):
            with wds.gopen(url) as f:
                text = f.read()
        else:
            text = Path(url.removeprefix("file://")).read_text()
        idx = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"index.json missing: {url} (write shards with `mmt shard`)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read shard index {url}: {e}") from None
    if idx.get("format") != "mmt-webdataset" or idx.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{url} is not an index of `mmt shard` version {FORMAT_VERSION}")
    idx["url"] = url
    return idx


def shard_urls(spec: str, idx: dict, split: str) -> tuple[list[str], int]:
    """(urls, samples) of `split`: the pattern's shards, or all of the split's when spec is DIR."""
    sp = idx["splits"].get(split)
    if "://" not in spec and not spec.startswith("pipe:") and Path(spec).is_dir():
        if sp is None:
            raise ConfigError(f"{idx['url']} has no split '{split}' (has: "
                              f"{', '.join(idx['splits']) or 'none'})")
        return expand_urls("::".join(str(Path(spec) / s["name"]) for s in sp["shards"])), \
            sp["samples"]
    urls = expand_urls(spec)
    per = {s["name"]: s["samples"] for v in idx["splits"].values() for s in v["shards"]}
    names = [u.rstrip("/").rsplit("/", 1)[-1].split(" ")[0] for u in urls]
    unknown = [n for n in names if n not in per]
    if unknown and not spec.startswith("pipe:"):
        raise ConfigError(f"shard {unknown[0]} is not listed in {idx['url']}")
    return urls, sum(per.get(n, 0) for n in names)


def check_manifest(idx: dict, manifest: str) -> None:
    """A manifest given beside the shards must be the one they were written from."""
    if manifest and Path(manifest).exists() and manifest_sha256(manifest) != idx["manifest_sha256"]:
        raise ConfigError(f"manifest hash mismatch: {manifest} is not the manifest the shards of "
                          f"{idx['url']} were written from")


def check_decoded(idx: dict, cfg) -> None:
    """Decoded shards hold frames/fbank of fixed sizes: the recipe must ask for those."""
    pre = idx.get("preprocessing")
    if idx["kind"] != "decoded":
        return
    for key in ("num_frames", "clip_seconds", "sample_rate", "num_mel_bins", "audio_frames",
                "video_seconds"):
        if pre.get(key, 0.0) != getattr(cfg, key):  # indexes before video_seconds: 0
            raise ConfigError(f"decoded shards {idx['url']} hold {key}={pre[key]}, the config "
                              f"says {getattr(cfg, key)}: re-shard with this recipe")
    if cfg.image_size > pre["short_side"]:
        raise ConfigError(f"decoded shards hold frames of short side {pre['short_side']}, "
                          f"smaller than data.image_size={cfg.image_size}")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ShardDataset(torch.utils.data.IterableDataset):
    """Items of AVDataset (the same dict, from `AVDataset.make_item`) streamed from shards.

    train=True: an endless stream per rank and DataLoader worker — shards drawn with replacement
    by a seeded `wds.ResampledShards`, samples mixed in a `shuffle_buffer`-sample buffer — cut
    to `batches_per_epoch` batches of `batch_size` per rank (`with_epoch`), so every rank takes
    the same number of steps. Batch k of an epoch always comes from the same stream
    (stream k mod W of rank r, seeded by (seed, epoch, r, k mod W)) and its augmentation from
    (seed, epoch, r, stream, position), so with `skip` (samples already consumed) a resumed
    epoch continues with the batches it had not seen: exact, for the same world size and
    num_workers. train=False: every sample once (shards split over ranks and workers).
    Broken samples give {"broken": name} (collate_skip_broken counts them).
    """

    def __init__(self, urls: list[str], index: dict, classes: dict[str, list[str]], data_cfg, *,
                 train: bool, two_views: bool = False, num_views: int = 1, modalities: str = "av",
                 seed: int = 0, batch_size: int = 1, batches_per_epoch: int = 0):
        from .dataset import AVDataset

        if index["kind"] == "decoded" and num_views != 1:
            raise ConfigError(f"decoded shards hold one window per clip; {num_views} test views "
                              "need mp4 shards")
        if index["kind"] == "decoded":
            check_decoded(index, data_cfg)
        self.urls, self.kind = list(urls), index["kind"]
        self.class_index = {h: {n: i for i, n in enumerate(names)} for h, names in classes.items()}
        unknown = [f"{h}:{n}" for h, names in index["classes"].items() for n in names
                   if n not in self.class_index.get(h, {})]
        if unknown:
            raise UserError(f"the shards have classes the model does not know: "
                            f"{', '.join(unknown[:5])}")
        self.maker = AVDataset([], classes, data_cfg, train=train, two_views=two_views,
                               num_views=num_views, modalities=modalities, seed=seed)
        self.train, self.seed = train, seed
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.shuffle_buffer = data_cfg.shuffle_buffer
        self.epoch, self.skip = 0, 0  # skip: samples this rank already took in this epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -------------------------------------------------------------- one sample
    def item(self, sample: dict, rng, index: int) -> dict:
        """A shard sample (dict of member bytes) -> the AVDataset item, or {"broken": name}."""
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            meta = json.loads(sample["json"])
            labels = {h: self.class_index[h][v["name"]] for h, v in meta["labels"].items()}
            rec = ClipRecord(path=meta["source"]["path"], labels=labels, split=meta["split"],
                             start=meta["start"], end=meta["end"], id=meta["key"])
            return self.maker.make_item(rec, rng, index, source=self._source(sample, meta, name))
        except (MediaError, av.error.FFmpegError, OSError, KeyError, ValueError) as e:
            return {"broken": f"{name} ({type(e).__name__}: {e})"}

    def _source(self, sample: dict, meta: dict, name: str):
        if self.kind == "decoded":
            from PIL import Image

            frames = np.stack([np.asarray(Image.open(io.BytesIO(sample[k])).convert("RGB"))
                               for k in sorted(k for k in sample if k.endswith(".jpg"))])
            fb = np.load(io.BytesIO(sample["fbank.npy"]))
            return frames, torch.from_numpy(fb.astype(np.float32)), meta["has_audio"]
        ext = next((e for e in MEDIA_EXTS if e in sample), None)
        if ext is None:
            raise KeyError(f"no media member ({', '.join(MEDIA_EXTS)}) in sample")
        src = io.BytesIO(sample[ext])
        src.name = f"{name}.{ext}"
        return src

    # -------------------------------------------------------------- streams
    def __iter__(self):
        return self._train_stream() if self.train else self._eval_stream()

    def _train_stream(self):
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, _ = _rank_world()
        pos = self.skip // self.batch_size  # batches of this epoch already taken on this rank
        mine = len(range(w, self.batches_per_epoch - pos, nw))  # batches this worker serves
        if mine == 0:
            return
        stream = (pos + w) % nw  # the stream that served these batches before a resume
        done = (pos + w) // nw * self.batch_size  # samples of that stream already consumed
        pipe = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=_seed(self.seed, self.epoch, rank, stream),
                                worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 64),
                        seed=_seed(self.seed, self.epoch, rank, stream, 1)),
            wds.slice(done, None),
        ).with_epoch(mine * self.batch_size)
        for j, sample in enumerate(pipe):
            k = done + j
            rng = np.random.default_rng([self.seed, self.epoch, rank, stream, k])
            yield self.item(sample, rng, k)

    def _eval_stream(self):
        import webdataset as wds

        ds = wds.WebDataset(self.urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                            workersplitter=wds.split_by_worker, empty_check=False,
                            handler=wds.warn_and_continue)
        for j, sample in enumerate(ds):
            yield self.item(sample, np.random.default_rng([self.seed, j]), j)


def training_data(cfg, *, world: int, rank: int, two_views: bool, modalities: str,
                  loader_kwargs: dict) -> dict:
    """What engine.train needs to train from `cfg.data.shards`: classes, the train stream and
    its DataLoader, steps per epoch, the val set (or None) and counts for the checkpoint."""
    d, tc = cfg.data, cfg.train
    idx = read_index(d.shards, d.shards_index)
    check_manifest(idx, d.manifest)
    urls, samples = shard_urls(d.shards, idx, d.train_split)
    steps = d.batches_per_epoch or samples // (world * tc.batch_size)
    if steps <= 0:
        raise ConfigError(f"{samples} training samples in {d.shards} is fewer than one batch "
                          f"per process ({world} x train.batch_size={tc.batch_size})")
    classes = idx["classes"]
    train_set = ShardDataset(urls, idx, classes, d, train=True, two_views=two_views,
                             modalities=modalities, seed=tc.seed, batch_size=tc.batch_size,
                             batches_per_epoch=steps)
    loader = torch.utils.data.DataLoader(train_set, batch_size=tc.batch_size, **loader_kwargs)
    val_set, val_samples, vspec, vidx = None, 0, "", idx
    if d.val_split and d.val_shards:
        vspec, vidx = d.val_shards, read_index(d.val_shards)
    elif d.val_split and d.val_split in idx["splits"]:  # the val split beside the train shards
        base = idx["url"].rsplit("/", 1)[0]
        vspec = "::".join(f"{base}/{s['name']}" for s in idx["splits"][d.val_split]["shards"])
    if vspec:
        vurls, val_samples = shard_urls(vspec, vidx, d.val_split)
        val_set = ShardDataset(vurls, vidx, classes, d, train=False, num_views=d.test_views,
                               modalities=modalities, seed=tc.seed)
    return {"classes": classes, "train_set": train_set, "loader": loader, "steps": steps,
            "val_set": val_set, "index": idx,
            "data_info": {"shards": d.shards, "train_clips": samples, "val_clips": val_samples,
                          "shard_kind": idx["kind"], "manifest_sha256": idx["manifest_sha256"]}}
