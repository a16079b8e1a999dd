"""``vidiff-prep video-folder``: any folder of videos -> synthetic recolor / inpaint / dehaze / deblur / edit triplets.

Every video (searched recursively) is cut into segments of at most ``--max-frames`` frames; each segment gives
one sample per task. Sources are made from the clean clip: grayscale (recolor), white free-form holes
(inpaint), the atmospheric scattering model (dehaze), temporal averaging plus a shake kernel (deblur), and a
deterministic look (edit, with the styled frame as the image instruction). Videos whose path matches
``--val-videos`` go to the ``val`` split, the rest to ``--split`` (default ``train``), so held-out clips come
from different source videos.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from vidiff.data.tasks import RESTORATION_TASKS, SYNTHETIC_TASKS, instruction_for
from vidiff.data_prep import degrade
from vidiff.data_prep.frames import load_video_segment, probe_frame_count, segments
from vidiff.data_prep.schema import VIDEO_SUFFIXES, Job, PrepOptions, Sample, Spec, np_rng_for, rng_for, safe_key
from vidiff.errors import VIDiffError


SOURCE = "video-folder"
TASKS = SYNTHETIC_TASKS
DEFAULT_TASKS = ",".join(RESTORATION_TASKS)
HELP = "any folder of videos -> synthetic recolor/inpaint/dehaze/deblur (and edit) triplets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument(
        "--val-videos",
        default="",
        help="comma-separated glob patterns (matched against the path under --root); matching videos form the 'val' split",
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
        for i, (start, end) in enumerate(segments(count, options.max_frames)):
            by_split.setdefault(split, []).append(
                Spec(f"{stem}-{i:03d}", {"video": str(video), "start": start, "end": end})
            )
    return [Job(task, split, specs) for task in tasks for split, specs in sorted(by_split.items())]


def degrade_clip(task: str, frames, seed: int, key: str):
    """(source, target, instruction, meta, style image) for one clean clip; random choices seeded by the key."""
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
        return frames, target, degrade.STYLE_INSTRUCTIONS[style], {"style": style}, target[len(target) // 2]
    else:
        raise ValueError(task)
    return source, frames, instruction_for(task, rng_py), meta, None


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    frames, fps = load_video_segment(spec, options)
    start, end = spec.data["start"], spec.data["end"]
    source, target, instruction, meta, style = degrade_clip(job.task, frames, options.seed, spec.key)
    return Sample(
        key=spec.key,
        task=job.task,
        instruction=instruction,
        source=source,
        target=target,
        style=style,
        fps=fps,
        origin=f"{spec.data['video']}#{start}-{end}",
        split=job.split,
        meta={"first_frame": start, **meta},
    )
