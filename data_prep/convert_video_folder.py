"""``vidiff-prep video-folder``: any folder of videos -> synthetic recolor / inpaint / dehaze / deblur / edit triplets.

Every video (searched recursively) is cut into segments of at most ``--max-frames`` frames; each segment gives
one sample per task. Sources are made from the clean clip: grayscale (recolor), white free-form holes
(inpaint), the atmospheric scattering model (dehaze), temporal averaging plus a shake kernel (deblur), a
deterministic look (edit, with the styled frame as the image instruction), and for rvos two shaded shapes (ball,
box, triangle) that glide over the footage, one of them named by the instruction and marked with a red overlay
(its exact mask is stored for J&F). Videos whose path matches
``--val-videos`` go to the ``val`` split, the rest to ``--split`` (default ``train``), so held-out clips come
from different source videos.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vidiff.data.tasks import RESTORATION_TASKS, SYNTHETIC_TASKS, instruction_for
from vidiff.data_prep import degrade
from vidiff.data_prep.frames import load_video_segment, probe_frame_count, segments
from vidiff.data_prep.schema import VIDEO_SUFFIXES, Job, PrepOptions, Sample, Spec, np_rng_for, rng_for, safe_key
from vidiff.errors import VIDiffError
from vidiff.overlay import render_overlay


SOURCE = "video-folder"
TASKS = SYNTHETIC_TASKS
DEFAULT_TASKS = ",".join(RESTORATION_TASKS)
# tasks whose source is a fixed function of the clip: a second draw would repeat the first sample
DETERMINISTIC_TASKS = ("recolor",)
HELP = "any folder of videos -> synthetic recolor/inpaint/dehaze/deblur (and edit) triplets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument(
        "--val-videos",
        default="",
        help="comma-separated glob patterns (matched against the path under --root); matching videos form the 'val' split",
    )
    parser.add_argument(
        "--tune-segments",
        type=int,
        default=0,
        metavar="N",
        help="the last N segments of every training video form the 'tune' split: a validation split of the "
        "training videos, for choosing sampler settings without touching 'val' (default: 0)",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=1,
        metavar="N",
        help="every training segment gives N samples per task, each with its own random degradation (hole "
        "pattern, haze, blur kernel, style, objects): more degradations to learn from when footage is scarce. "
        "'val' and 'tune' keep one draw, and so does recolor (grayscale has nothing to draw) (default: 1)",
    )


def parse_tasks(text: str, allowed: tuple[str, ...]) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in allowed]
    if unknown or not tasks:
        raise VIDiffError(f"--tasks {text!r}: unknown task(s) {unknown} (choose from {', '.join(allowed)})")
    return tasks


def find_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    tasks = parse_tasks(args.tasks, TASKS)
    videos = find_videos(root)
    if not videos:
        raise VIDiffError(f"{root}: no video files found (looked for {', '.join(VIDEO_SUFFIXES)})")
    patterns = [p.strip() for p in args.val_videos.split(",") if p.strip()]
    train_split = args.split or "train"
    tune_segments = getattr(args, "tune_segments", 0)
    if tune_segments < 0:
        raise VIDiffError(f"--tune-segments {tune_segments}: must be 0 or more")
    draws = getattr(args, "draws", 1)
    if draws < 1:
        raise VIDiffError(f"--draws {draws}: must be 1 or more")
    by_split: dict[str, list[Spec]] = {}
    for video in videos:
        rel = video.relative_to(root).as_posix()
        split = (
            "val" if any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(video.name, p) for p in patterns) else train_split
        )
        stem = safe_key(str(Path(rel).with_suffix("")))
        count = probe_frame_count(video)
        if isinstance(count, str):  # unusable file: one spec that reports why
            by_split.setdefault(split, []).append(Spec(f"{stem}-000", {"error": count}))
            continue
        spans = segments(count, options.max_frames)
        # a training video keeps at least one training segment
        tune_from = max(1, len(spans) - tune_segments) if split != "val" else len(spans)
        for i, (start, end) in enumerate(spans):
            segment_split = split if i < tune_from else "tune"
            data = {"video": str(video), "start": start, "end": end}
            # draw 0 keeps the plain key, so adding draws leaves the existing samples as they were
            by_split.setdefault(segment_split, []).append(Spec(f"{stem}-{i:03d}", data))
            if segment_split == train_split:
                by_split[segment_split] += [
                    Spec(f"{stem}-{i:03d}-draw{k}", {**data, "draw": k}) for k in range(1, draws)
                ]
    return [
        Job(task, split, [s for s in specs if task not in DETERMINISTIC_TASKS or "draw" not in s.data])
        for task in tasks
        for split, specs in sorted(by_split.items())
    ]


class Degraded(NamedTuple):
    source: np.ndarray
    target: np.ndarray
    instruction: str
    meta: dict
    style: np.ndarray | None = None  # the image instruction (edit)
    mask: np.ndarray | None = None  # the referred object's pixels (rvos)


# the synthetic rvos task always asks for a red overlay: one colour, one thing to learn on a small demo budget
RVOS_COLOR = "red"


def degrade_clip(task: str, frames: np.ndarray, seed: int, key: str) -> Degraded:
    """A (source, target) pair for one clean clip; every random choice is seeded by ``(seed, task, key)``."""
    rng_py, rng_np = rng_for(seed, task, key), np_rng_for(seed, task, key)
    if task == "recolor":
        source, meta = degrade.grayscale(frames)
    elif task == "inpaint":
        source, meta = degrade.free_form_holes(frames, rng_np)
    elif task == "dehaze":
        source, meta = degrade.haze(frames, rng_np)
    elif task == "deblur":
        source, meta = degrade.motion_blur(frames, rng_np)
    elif task == "edit":
        style = rng_py.choice(degrade.STYLES)
        target = degrade.stylize(frames, style)
        return Degraded(frames, target, degrade.STYLE_INSTRUCTIONS[style], {"style": style}, target[len(target) // 2])
    elif task == "rvos":
        source, masks, meta = degrade.moving_objects(frames, rng_np)
        referred = rng_py.randrange(len(masks))
        expression = f"the {meta['objects'][referred]['shape']}"
        instruction = instruction_for("rvos", rng_py, object=expression, color=RVOS_COLOR)
        meta = {**meta, "referred": referred, "color": RVOS_COLOR, "expressions": [expression]}
        mask = masks[referred]
        return Degraded(source, render_overlay(source, mask, RVOS_COLOR), instruction, meta, mask=mask)
    else:
        raise ValueError(task)
    return Degraded(source, frames, instruction_for(task, rng_py), meta)


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    frames, fps = load_video_segment(spec, options)
    start, end = spec.data["start"], spec.data["end"]
    pair = degrade_clip(job.task, frames, options.seed, spec.key)
    return Sample(
        key=spec.key,
        task=job.task,
        instruction=pair.instruction,
        source=pair.source,
        target=pair.target,
        style=pair.style,
        mask=pair.mask,
        fps=fps,
        origin=f"{spec.data['video']}#{start}-{end}",
        split=job.split,
        meta={"first_frame": start, **pair.meta},
    )
