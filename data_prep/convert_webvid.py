"""``vidiff-prep webvid``: WebVid (CSV + preview mp4s) -> ``t2v`` video-caption samples and synthetic
``recolor`` / ``inpaint`` triplets.

CSV columns ``videoid,contentUrl,duration,page_dir,name`` (``videoid`` read as text); the split comes from the
file name (``results_*_train.csv`` / ``results_*_val.csv``) or ``--csv FILE --split NAME``. A video is looked up
as ``videos/<page_dir>/<videoid>.mp4`` (``download.py``), ``<page_dir>/<videoid>.mp4``,
``*/<page_dir>/<videoid>.mp4`` (TFDS) or ``<videoid>.mp4`` (flat); many WebVid URLs are dead, so missing
files are expected and reported as skips.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from vidiff.data_prep.convert_video_folder import degrade_clip, parse_tasks
from vidiff.data_prep.frames import load_video_segment, probe_frame_count, segments
from vidiff.data_prep.schema import Job, PrepOptions, Sample, Spec, safe_key
from vidiff.errors import VIDiffError


SOURCE = "webvid"
HELP = "WebVid-10M/2M CSV + videos -> t2v captions, synthetic recolor and inpaint"
TASKS = ("t2v", "recolor", "inpaint")
REQUIRED_COLUMNS = ("videoid", "page_dir", "name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument("--csv", default=None, help="one CSV file (its split is --split, default train)")


def find_video(root: Path, page_dir: str, videoid: str) -> Path | None:
    for candidate in (
        root / "videos" / page_dir / f"{videoid}.mp4",
        root / page_dir / f"{videoid}.mp4",
        root / f"{videoid}.mp4",
    ):
        if candidate.exists():
            return candidate
    matches = sorted(root.glob(f"*/{page_dir}/{videoid}.mp4"))
    return matches[0] if matches else None


def csv_files(root: Path, args) -> list[tuple[Path, str]]:
    if args.csv:
        path = Path(args.csv)
        if not path.exists():
            raise VIDiffError(f"{path}: no such CSV file")
        return [(path, args.split or "train")]
    found = []
    for path in sorted(root.glob("results_*.csv")):
        split = "val" if path.stem.endswith("_val") else "train" if path.stem.endswith("_train") else None
        if split and (not args.split or args.split == split):
            found.append((path, split))
    if not found:
        raise VIDiffError(f"{root}: no results_*_train.csv / results_*_val.csv (or pass --csv FILE)")
    return found


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    tasks = parse_tasks(args.tasks, TASKS)
    by_split: dict[str, list[Spec]] = {}
    for path, split in csv_files(root, args):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise VIDiffError(f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                videoid = (row.get("videoid") or "").strip()
                page_dir = (row.get("page_dir") or "").strip()
                caption = " ".join((row.get("name") or "").split())
                key = safe_key(f"webvid-{page_dir}-{videoid}")
                if not videoid or not caption:
                    by_split.setdefault(split, []).append(
                        Spec(f"{key}-line{line}", {"error": f"{path}:{line}: empty videoid or caption"})
                    )
                    continue
                video = find_video(root, page_dir, videoid)
                if video is None:
                    by_split.setdefault(split, []).append(
                        Spec(
                            f"{key}-000",
                            {"error": f"missing video {page_dir}/{videoid}.mp4 (listed in {path.name}:{line})"},
                        )
                    )
                    continue
                count = probe_frame_count(video)
                if isinstance(count, str):
                    by_split.setdefault(split, []).append(Spec(f"{key}-000", {"error": count}))
                    continue
                for i, (start, end) in enumerate(segments(count, options.max_frames)):
                    by_split.setdefault(split, []).append(
                        Spec(
                            f"{key}-{i:03d}",
                            {"video": str(video), "start": start, "end": end, "caption": caption, "videoid": videoid},
                        )
                    )
    return [Job(task, split, specs) for task in tasks for split, specs in sorted(by_split.items())]


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    frames, fps = load_video_segment(spec, options)
    start, end = spec.data["start"], spec.data["end"]
    common = {
        "key": spec.key,
        "task": job.task,
        "fps": fps,
        "origin": f"webvid/{spec.data['videoid']}#{start}-{end}",
        "split": job.split,
    }
    meta = {"first_frame": start, "caption": spec.data["caption"]}
    if job.task == "t2v":
        return Sample(instruction=spec.data["caption"], target=frames, meta=meta, **common)
    source, target, instruction, extra, _ = degrade_clip(job.task, frames, options.seed, spec.key)
    return Sample(instruction=instruction, source=source, target=target, meta={**meta, **extra}, **common)
