"""How long dataset analysis takes: open a split with a model set the first time (decode, every
model, embeddings) and from the cache, then a confusion-cell lookup, a neighbour search and the
suspicious ranking.

    python benchmarks/bench_analysis.py --models checkpoints --data DIR/manifest.csv [--split test]
    python benchmarks/bench_analysis.py --models checkpoints --clips-per-class 20   # generates
    python benchmarks/bench_analysis.py --models checkpoints --compare   # before / after

--compare also times the first open the way it was before the set's models shared one decoding
pass (one pass per model), on the same data in the same run. Without --data it writes a fresh
built-in split (seed 7321, which no shipped model trained on)
into a temp dir. The cache goes to a fresh temp dir, so the first open is really the first.
Prints one JSON object, with the machine's load average before and after (the CPU may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="checkpoints")
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--clips-per-class", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader decode workers")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--compare", action="store_true",
                    help="first open once with one decoding pass per model (share_decode off: "
                         "how it was) and once decoding each clip once for the set, same data")
    a = ap.parse_args()

    import torch

    from mmt_core import analysis as A
    from mmt_core.model_set import open_model_set

    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            from mmt_core.data.synthetic import write_dataset

            data = write_dataset(Path(tmp) / "data", clips_per_class=a.clips_per_class,
                                 seed=7321, split=a.split, progress=False)["manifest"]
        ms = open_model_set(a.models)
        before = None
        if a.compare:  # its own cache dir: this first open is a first open too
            old = A.AnalysisConfig(cache_dir=str(Path(tmp) / "cache_per_model"),
                                   num_workers=a.workers, progress=True, share_decode=False)
            before = A.evaluate_set(ms, data, a.split, old)
        cfg = A.AnalysisConfig(cache_dir=str(Path(tmp) / "cache"), num_workers=a.workers,
                               progress=True)
        first = A.evaluate_set(ms, data, a.split, cfg)
        again = A.evaluate_set(ms, data, a.split, cfg)
        assert again.cached
        t = time.perf_counter()
        conf = A.confusion(again, ms.roles[0])
        true, pred = divmod(int(conf.argmax()), conf.shape[1])
        A.cell_clips(again, ms.roles[0], true, pred)
        cell_s = time.perf_counter() - t
        t = time.perf_counter()
        kind = "cross" if "video_proj" in again.embeds and "audio_proj" in again.embeds else \
            next(k for k, (q, s) in A.NEIGHBOUR_SPACES.items() if q in again.embeds)
        A.neighbours(again, 0, kind, k=8)
        neighbour_s = time.perf_counter() - t
        t = time.perf_counter()
        A.suspicious(again)
        rank_s = time.perf_counter() - t
    print(json.dumps({
        "models": {r: ms.metas[r]["model"] for r in ms.roles}, "data": str(data),
        "split": a.split, "clips": len(first.paths), "skipped": len(first.skipped),
        "first_open_s": round(first.seconds, 2), "cached_open_s": round(again.seconds, 3),
        "s_per_clip_first": round(first.seconds / max(len(first.paths), 1), 3),
        "decode_groups": A.decode_groups(ms, cfg),
        **({"per_model_decode_first_open_s": round(before.seconds, 2),
            "per_model_decode_s_per_clip": round(before.seconds / max(len(before.paths), 1), 3)}
           if before is not None else {}),
        "confusion_cell_s": round(cell_s, 4), "neighbours_s": round(neighbour_s, 4),
        "neighbour_kind": kind, "suspicious_rank_s": round(rank_s, 4),
        "workers": a.workers, "threads": a.threads, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()]}, indent=2))


if __name__ == "__main__":
    main()
