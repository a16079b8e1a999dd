"""``vidiff-prep webvid``: WebVid (CSV + preview mp4s) -> ``t2v`` video-caption samples and synthetic
``recolor`` / ``inpaint`` triplets.

The CSV (``videoid,contentUrl,duration,page_dir,name``; ``videoid`` read as text) is found as
``<root>/results_*.csv`` or ``<root>/metadata/results_*.csv`` (frozen-in-time's layout), or given with ``--csv``;
its split comes from its name (``results_2M_val.csv`` -> ``val``, ``..._train.csv`` -> ``train``; ``--split``
otherwise). The videos may be laid out as

- video2dataset wrote them (what WebVid's README points to): ``NNNNN.tar`` shards or ``NNNNN/`` folders of
  ``<key>.mp4`` / ``<key>.txt`` / ``<key>.json``, the ``videoid`` only inside the ``.json``;
- ``download.py`` / TFDS / flat: ``videos/<page_dir>/<videoid>.mp4``, ``<page_dir>/<videoid>.mp4``,
  ``*/<page_dir>/<videoid>.mp4`` or ``<videoid>.mp4``.

The videos present are indexed once (a walk of the tree and the ``.json`` members of the tars, never the videos
themselves); the CSV is then streamed in parts of ``--rows-per-part`` rows, each part its own resumable job, and a
video's frames are counted in the worker that converts it. So the first shard appears after the first part,
whatever the CSV's size. Many WebVid URLs are dead: a listed video that is not there is a counted skip.

With ``--num-parts N`` (a cluster run), chunk ``c`` of ``--rows-per-part`` rows belongs to part ``c mod N``: every
part streams the CSV (one row in memory at a time) and builds specs for its own chunks only, and the shard names
``webvid-<split>-CCCCC-NNNNNN.tar`` are those a single run writes.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vidiff.data_prep.convert_video_folder import degrade_clip, parse_tasks
from vidiff.data_prep.frames import load_video_segment, probe_frame_count, segments
from vidiff.data_prep.schema import Job, PrepOptions, Sample, SkipSample, Spec, safe_key
from vidiff.errors import VIDiffError


SOURCE = "webvid"
HELP = "WebVid-10M/2M CSV + videos (video2dataset tars/folders or download.py) -> t2v, recolor, inpaint"
TASKS = ("t2v", "recolor", "inpaint")
REQUIRED_COLUMNS = ("videoid", "page_dir", "name")
LAYOUTS = (
    "video2dataset: NNNNN.tar or NNNNN/ with <key>.mp4 + <key>.json holding the videoid",
    "download.py/TFDS/flat: videos/<page_dir>/<videoid>.mp4, <page_dir>/<videoid>.mp4 or <videoid>.mp4",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument("--csv", default=None, help="one CSV file (split from its name, else --split, else train)")
    parser.add_argument(
        "--rows-per-part", type=int, default=10_000, help="CSV rows per resumable chunk (default %(default)s)"
    )


def split_of(path: Path) -> str | None:
    match = re.search(r"_(train|val|test)$", path.stem)
    return match.group(1) if match else None


def csv_files(root: Path, args) -> list[tuple[Path, str]]:
    if args.csv:
        path = Path(args.csv)
        if not path.exists():
            raise VIDiffError(f"{path}: no such CSV file")
        return [(path, split_of(path) or args.split or "train")]
    found = []
    for path in sorted([*root.glob("results_*.csv"), *root.glob("metadata/results_*.csv")]):
        split = split_of(path)
        if split and (not args.split or args.split == split):
            found.append((path, split))
    if not found:
        raise VIDiffError(
            f"{root}: no results_*_train.csv / results_*_val.csv in it or in metadata/ (or pass --csv FILE)"
        )
    return found


# ---------------------------------------------------------------------------------------------- video index
def index_videos(root: Path) -> dict[str, tuple[str, ...]]:
    """``{videoid: ("file", path) | ("tar", tar path, member)}`` for every video present under ``root``."""
    index: dict[str, tuple[str, ...]] = {}
    for folder, _dirs, files in os.walk(root):
        names = set(files)
        for name in sorted(files):
            path = Path(folder) / name
            if name.endswith(".tar"):
                index.update(_index_tar(path))
            elif name.endswith(".mp4"):
                stem = name[: -len(".mp4")]
                if f"{stem}.json" in names:  # video2dataset folder: the videoid is in the sidecar json
                    videoid = _videoid_of(path.with_suffix(".json").read_bytes())
                    if videoid:
                        index.setdefault(videoid, ("file", str(path)))
                else:
                    index.setdefault(stem, ("file", str(path)))
    return index


def _videoid_of(raw: bytes) -> str | None:
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    videoid = meta.get("videoid") or meta.get("video_id")
    if videoid is None and isinstance(meta.get("url"), str):  # some v2d runs keep only the url
        match = re.search(r"/(\d+)(?:/|\.mp4|$)", meta["url"])
        videoid = match.group(1) if match else None
    return str(videoid) if videoid is not None else None


def _index_tar(path: Path) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    videos: set[str] = set()
    ids: dict[str, str] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:  # streamed: the mp4 payloads are skipped, only the small json members are read
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if ext == "mp4":
                    videos.add(key)
                elif ext == "json":
                    videoid = _videoid_of(tar.extractfile(member).read())
                    if videoid:
                        ids[key] = videoid
    except (tarfile.TarError, OSError):
        return {}  # an unreadable shard indexes nothing; its videos are reported missing
    for key, videoid in ids.items():
        if key in videos:
            found[videoid] = ("tar", str(path), f"{key}.mp4")
    return found


# ---------------------------------------------------------------------------------------------- jobs
def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> Iterator[Job]:
    """Checks and the video index now; the CSV rows later, part by part, as the runner asks for jobs."""
    tasks = parse_tasks(args.tasks, TASKS)
    if args.rows_per_part < 1:
        raise VIDiffError(f"--rows-per-part must be at least 1 (got {args.rows_per_part})")
    files = csv_files(root, args)
    for path, _ in files:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise VIDiffError(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
    index = index_videos(root)
    if not index:
        raise VIDiffError(f"{root}: no videos found; expected one of: " + "; ".join(LAYOUTS))
    num_parts = getattr(args, "num_parts", 1)
    part = getattr(args, "part", None) or 0
    return _parts(files, index, tasks, int(args.rows_per_part), num_parts, part)


def _parts(files, index, tasks, rows_per_part: int, num_parts: int = 1, part: int = 0) -> Iterator[Job]:
    """One job per task and chunk of ``rows_per_part`` rows, for the chunks ``c`` with ``c mod num_parts == part``
    (the runner's choice too); the other chunks' rows are parsed (to count them) but never held or looked up."""
    chunk = 0
    for path, split in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            # numbered and filtered as csv.DictReader does (blank lines are not rows); line = row number + 1
            rows = enumerate((row for row in reader if row), start=2)
            while True:
                if chunk % num_parts != part:
                    if not sum(1 for _ in itertools.islice(rows, rows_per_part)):
                        break
                    chunk += 1
                    continue
                block = list(itertools.islice(rows, rows_per_part))
                if not block:
                    break
                specs = [_spec(path, line, dict(zip(header, row)), index) for line, row in block]
                for task in tasks:
                    yield Job(task, split, specs, part=chunk)
                chunk += 1


def _spec(path: Path, line: int, row: dict, index: dict) -> Spec:
    videoid = (row.get("videoid") or "").strip()
    page_dir = (row.get("page_dir") or "").strip()
    caption = " ".join((row.get("name") or "").split())
    key = safe_key(f"webvid-{page_dir}-{videoid}")
    if not videoid or not caption:
        return Spec(f"{key}-line{line}", {"error": f"{path.name}:{line}: empty videoid or caption"})
    location = index.get(videoid)
    if location is None:
        return Spec(key, {"error": f"missing video {videoid} ({page_dir}; listed in {path.name}:{line})"})
    return Spec(key, {"location": list(location), "caption": caption, "videoid": videoid})


# ---------------------------------------------------------------------------------------------- samples
def build(job: Job, spec: Spec, options: PrepOptions) -> list[Sample]:
    """Every segment of one video (its frames are counted here, in the worker)."""
    if "error" in spec.data:
        raise SkipSample(spec.data["error"])
    kind, *where = spec.data["location"]
    if kind == "file":
        return _samples(job, spec, options, Path(where[0]))
    tar_path, member = where
    with tempfile.TemporaryDirectory(prefix="vidiff-webvid-") as tmp:
        video = Path(tmp) / "video.mp4"
        try:
            with tarfile.open(tar_path) as tar:
                video.write_bytes(tar.extractfile(member).read())
        except (tarfile.TarError, OSError, AttributeError) as err:
            raise SkipSample(f"{tar_path}:{member}: cannot read ({err})") from None
        return _samples(job, spec, options, video, origin=f"{Path(tar_path).name}:{member}")


def _samples(job: Job, spec: Spec, options: PrepOptions, video: Path, origin: str | None = None) -> list[Sample]:
    count = probe_frame_count(video)
    if isinstance(count, str):
        raise SkipSample(count)
    samples = []
    for i, (start, end) in enumerate(segments(count, options.max_frames)):
        if end - start < options.min_frames:
            continue
        segment = Spec(f"{spec.key}-{i:03d}", {"video": str(video), "start": start, "end": end})
        frames, fps = load_video_segment(segment, options)
        common = {
            "key": segment.key,
            "task": job.task,
            "fps": fps,
            "origin": f"webvid/{spec.data['videoid']}#{start}-{end}" + (f" ({origin})" if origin else ""),
            "split": job.split,
        }
        meta = {"first_frame": start, "caption": spec.data["caption"], "videoid": spec.data["videoid"]}
        if job.task == "t2v":
            samples.append(Sample(instruction=spec.data["caption"], target=frames, meta=meta, **common))
            continue
        pair = degrade_clip(job.task, frames, options.seed, segment.key)
        samples.append(
            Sample(
                instruction=pair.instruction,
                source=pair.source,
                target=pair.target,
                meta={**meta, **pair.meta},
                **common,
            )
        )
    if not samples:
        raise SkipSample(f"{count} frame(s), fewer than --min-frames {options.min_frames}")
    return samples
