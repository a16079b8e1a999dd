"""What every converter shares: the sample format, frame loading, and the resumable, atomic shard runner.

A converter lists *specs* (cheap descriptions of one potential sample each, in a fixed order) grouped into
*jobs* (one per task and split), and builds a :class:`Sample` from one spec, or raises :class:`SkipSample`
with the reason. :func:`run_converter` turns jobs into shards:

- deterministic: specs are processed in order, every random choice is seeded from the spec, tar members carry
  fixed metadata and x264 runs single-threaded, so the same input gives byte-identical shards;
- atomic: a shard is written under a hidden temporary name and renamed when complete;
- resumable: after each shard the job's progress (next spec, counts, skips) is committed to a state file, so
  a rerun after an interruption continues where the last committed shard ended and the result equals an
  uninterrupted run;
- accounted: every skip is recorded with its reason in the JSON report; nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vidiff.errors import VIDiffError
from vidiff.io.video import VideoReader, write_video
from vidiff.utils.files import publish, write_json_atomic
from vidiff.utils.frames import resize_frames


FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
STATE_DIR = ".vidiff-prep"


class SkipSample(Exception):
    """This spec yields no sample; the message is the reason recorded in the report."""


@dataclass
class PrepOptions:
    """Options shared by every converter (the ``vidiff-prep`` flags of the same names)."""

    short_side: int = 320  # frames are stored with this short side (downscaled only, never upscaled)
    max_frames: int = 64  # longer videos are cut into consecutive segments of at most this many frames
    min_frames: int = 2  # segments shorter than this are skipped (and reported)
    shard_size: int = 64  # samples per shard
    crf: int = 17  # x264 quality of the stored clips (17: visually lossless)
    seed: int = 0  # seeds every synthetic degradation (mixed with each sample's key)
    workers: int = 1  # processes that build samples (order, and so the output, does not depend on it)


@dataclass
class Sample:
    """One training/evaluation sample before encoding.

    ``source`` is absent for ``t2v`` (a video and its caption); ``mask`` is the binary mask behind an ``rvos``
    overlay (kept for J&F scoring); ``style`` is an optional image instruction.
    """

    key: str
    task: str
    instruction: str
    target: np.ndarray  # [f, h, w, 3] uint8
    fps: Fraction
    origin: str
    split: str
    source: np.ndarray | None = None
    mask: np.ndarray | None = None  # [f, h, w] bool
    style: np.ndarray | None = None  # [h, w, 3] uint8
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Spec:
    """One potential sample: its key and whatever the converter needs to build it (picklable)."""

    key: str
    data: dict[str, Any]


@dataclass
class Job:
    task: str
    split: str
    specs: list[Spec]


# ----------------------------------------------------------------------------------------------- inputs
def list_frames(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """An image as uint8; a missing or undecodable file raises :class:`SkipSample`."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image if mode == "P" and image.mode == "P" else image.convert(mode))
    except FileNotFoundError:
        raise SkipSample(f"missing frame {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SkipSample(f"unreadable frame {path} ({' '.join(str(err).split())[:80]})") from None


def read_frame_files(paths: Sequence[Path]) -> np.ndarray:
    frames = [read_image(p) for p in paths]
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise SkipSample(f"frames of different sizes in {paths[0].parent}: {sorted(sizes)}")
    return np.stack(frames)


def read_video_segment(path: Path, start: int, end: int) -> tuple[np.ndarray, Fraction]:
    """Frames ``[start, end)`` of a video file; decode problems raise :class:`SkipSample`."""
    try:
        with VideoReader(path) as reader:
            frames = []
            for index, frame in enumerate(reader.iter_frames()):
                if index >= end:
                    break
                if index >= start:
                    frames.append(frame)
            if reader.decode_error and len(frames) < end - start:
                raise SkipSample(f"unreadable frame {start + len(frames)} in {path} ({reader.decode_error})")
            fps = reader.info.fps if reader.info is not None else Fraction(25)
    except VIDiffError as err:
        raise SkipSample(str(err)) from None
    if len(frames) < end - start:
        raise SkipSample(f"{path}: expected frames {start}..{end - 1}, the video ends at frame {start + len(frames)}")
    return np.stack(frames), fps


def probe_frame_count(path: Path) -> int | str:
    """The frame count (from the header when it is exact, else by decoding), or why the file cannot be used.

    A reason string is turned into a reported skip by the converter; it never stops the run.
    """
    try:
        with VideoReader(path) as reader:
            info = reader.info
            if info is not None and info.num_frames_exact and info.num_frames > 0:
                return info.num_frames
            count = sum(1 for _ in reader.iter_frames())
            if reader.decode_error:
                return f"unreadable frame {count} in {path} ({reader.decode_error})"
            return count
    except VIDiffError as err:
        return str(err)


def segments(num_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Cut ``num_frames`` into near-equal consecutive ``[start, end)`` pieces of at most ``max_frames``."""
    if num_frames <= 0:
        return []
    pieces = -(-num_frames // max_frames)
    bounds = [round(i * num_frames / pieces) for i in range(pieces + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def storage_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Downscale (never upscale) to ``short_side``; both sides rounded to a multiple of 8."""
    scale = min(1.0, short_side / min(height, width))
    return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)


def fit_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    return resize_frames(frames, storage_size(frames.shape[1], frames.shape[2], short_side))


def fit_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize boolean masks ``[f, h, w]`` with nearest neighbour (no invented labels at the borders)."""
    if masks.shape[1:] == tuple(size):
        return masks.astype(bool)
    images = [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size[::-1], Image.NEAREST)) for m in masks]
    return np.stack(images) > 127


def rng_for(seed: int, *parts: Any) -> random.Random:
    """A random generator that depends only on ``seed`` and the sample's identity (never on run order)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def np_rng_for(seed: int, *parts: Any) -> np.random.Generator:
    return np.random.default_rng(rng_for(seed, *parts).getrandbits(64))


def safe_key(text: str) -> str:
    """WebDataset keys may not contain dots (they separate the key from the extension) or slashes."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


# ---------------------------------------------------------------------------------------------- encoding
def encode_clip(frames: np.ndarray, fps: Fraction, crf: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="vidiff-prep-") as tmp:
        path = Path(tmp) / "clip.mp4"
        # byte-identical output for identical frames (see VideoWriter's codec_options)
        write_video(path, frames, fps, crf=crf, codec_options={"deterministic": "1"})
        return path.read_bytes()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """Boolean ``[f, h, w]`` -> gzip'd ``.npy`` of the bits packed along the width (``mtime=0``: deterministic)."""
    buffer = io.BytesIO()
    np.save(buffer, np.packbits(mask.astype(bool), axis=-1), allow_pickle=False)
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def encode_sample(sample: Sample, crf: int) -> dict[str, Any]:
    """A :class:`Sample` as WebDataset members (see ``data_prep/README.md``)."""
    target = sample.target
    if sample.source is not None and sample.source.shape != target.shape:
        raise SkipSample(f"source {sample.source.shape} and target {target.shape} clips differ in shape")
    if sample.mask is not None and not sample.mask.any():
        raise SkipSample("empty mask: the referred object is in no frame")
    f, h, w = target.shape[:3]
    meta = {
        "format": FORMAT_VERSION,
        "task": sample.task,
        "fps": str(Fraction(sample.fps).limit_denominator(100000)),
        "num_frames": int(f),
        "height": int(h),
        "width": int(w),
        "origin": sample.origin,
        "split": sample.split,
        **sample.meta,
    }
    members: dict[str, Any] = {"__key__": sample.key, "txt": sample.instruction.encode("utf-8")}
    members["tgt.mp4"] = encode_clip(target, sample.fps, crf)
    if sample.source is not None:
        members["src.mp4"] = encode_clip(sample.source, sample.fps, crf)
    if sample.mask is not None:
        members["mask.npy.gz"] = encode_mask(sample.mask)
    if sample.style is not None:
        members["style.png"] = encode_png(sample.style)
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members


# ------------------------------------------------------------------------------------------------ runner
@dataclass
class JobState:
    """Committed progress of one job, saved after every published shard."""

    fingerprint: str
    next_spec: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "count"}]
    skips: list[dict[str, str]] = field(default_factory=list)  # [{"key", "reason"}]
    complete: bool = False

    @property
    def written(self) -> int:
        return sum(s["count"] for s in self.shards)


def _build_one(build: Callable[[Job, Spec, PrepOptions], Sample], job: Job, options: PrepOptions, spec: Spec):
    """Worker body: a sample's encoded members, or the skip reason. Never raises for a bad sample."""
    try:
        sample = build(job, spec, options)
        return encode_sample(sample, options.crf), None
    except SkipSample as skip:
        return None, str(skip)


class _ShardFile:
    """A tar being filled under a hidden temporary name."""

    def __init__(self, folder: Path, name: str):
        self.final = folder / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        # fixed mtime/owner: tar headers do not depend on when or by whom the shard was written
        # encoder=False: members are written exactly as given (the default encoder would re-encode by extension)
        self._writer = wds.TarWriter(self._handle, encoder=False, mtime=0, user="vidiff", group="vidiff", mode=0o444)
        self.count = 0

    def write(self, members: dict[str, Any]) -> None:
        self._writer.write(members)
        self.count += 1

    def publish(self) -> None:
        self._writer.close()  # also closes the file handle
        publish(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


def shard_name(source: str, split: str, index: int) -> str:
    return f"{source}-{split}-{index:06d}.tar"


def _fingerprint(source: str, job: Job, options: PrepOptions, extra: dict[str, Any]) -> str:
    settings = {k: v for k, v in asdict(options).items() if k != "workers"}
    payload = json.dumps(
        [FORMAT_VERSION, source, job.task, job.split, settings, extra, [(s.key, s.data) for s in job.specs]],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _update_sizes(folder: Path, name: str, count: int) -> None:
    """``sizes.json`` (shard file -> samples), the open_clip convention for sizing epochs."""
    path = folder / "sizes.json"
    sizes = json.loads(path.read_text()) if path.exists() else {}
    sizes[name] = count
    write_json_atomic(path, sizes)


def run_converter(
    source: str,
    jobs: Sequence[Job],
    build: Callable[[Job, Spec, PrepOptions], Sample],
    out_dir: Path,
    options: PrepOptions,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every job's shards under ``out_dir/<task>/`` and return (and save) the run report."""
    out_dir = Path(out_dir)
    report: dict[str, Any] = {"source": source, "out": str(out_dir), "options": asdict(options), "jobs": []}
    pool = None
    if options.workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(options.workers)
    try:
        for job in jobs:
            report["jobs"].append(_run_job(source, job, build, out_dir, options, extra or {}, progress, pool))
    finally:
        if pool is not None:
            pool.terminate()
    report["written"] = sum(j["written"] for j in report["jobs"])
    report["skipped"] = sum(j["skipped"] for j in report["jobs"])
    write_json_atomic(out_dir / "reports" / f"{source}.json", report)
    return report


def _run_job(source, job, build, out_dir, options, extra, progress, pool) -> dict[str, Any]:
    folder = out_dir / job.task
    folder.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_DIR / f"{source}-{job.task}-{job.split}.json"
    fingerprint = _fingerprint(source, job, options, extra)
    prefix = f"{source}-{job.split}-"
    # leftovers of an interrupted run are never published; clear them
    for stale in folder.glob(f".{prefix}*.partial"):
        stale.unlink(missing_ok=True)

    state = None
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("fingerprint") == fingerprint:
            state = JobState(**saved)
    resumed_from = state.next_spec if state is not None else 0
    if state is None:
        # a fresh job (or different inputs/options): shards from an older run of this job are replaced
        state = JobState(fingerprint=fingerprint)
        for old in folder.glob(f"{prefix}[0-9]*.tar"):
            old.unlink()

    if not state.complete:
        todo = job.specs[state.next_spec :]
        work = partial(_build_one, build, job, options)
        results: Iterator = pool.imap(work, todo) if pool is not None else map(work, todo)
        bar = tqdm(
            total=len(job.specs),
            initial=state.next_spec,
            desc=f"{source} {job.task}/{job.split}",
            unit="sample",
            disable=not progress,
        )
        shard = None
        try:
            for index, (members, reason) in enumerate(results, start=state.next_spec):
                spec = job.specs[index]
                if members is None:
                    state.skips.append({"key": spec.key, "reason": reason})
                else:
                    if shard is None:
                        shard = _ShardFile(folder, shard_name(source, job.split, len(state.shards)))
                    shard.write(members)
                bar.update(1)
                bar.set_postfix(written=state.written + (shard.count if shard else 0), skipped=len(state.skips))
                if shard is not None and shard.count >= options.shard_size:
                    _commit(state, shard, index + 1, folder, state_path)
                    shard = None
            if shard is not None:
                _commit(state, shard, len(job.specs), folder, state_path)
                shard = None
            state.next_spec = len(job.specs)
            state.complete = True
            write_json_atomic(state_path, asdict(state))
        except BaseException:
            if shard is not None:
                shard.abort()
            raise
        finally:
            bar.close()

    return {
        "task": job.task,
        "split": job.split,
        "specs": len(job.specs),
        "written": state.written,
        "skipped": len(state.skips),
        "skips": state.skips,
        "shards": state.shards,
        "resumed_from_spec": resumed_from,
    }


def _commit(state: JobState, shard: _ShardFile, next_spec: int, folder: Path, state_path: Path) -> None:
    shard.publish()
    state.shards.append({"name": shard.final.name, "count": shard.count})
    state.next_spec = next_spec
    _update_sizes(folder, shard.final.name, shard.count)
    write_json_atomic(state_path, asdict(state))


def build_frame_pair(job: Job, spec: Spec, options: PrepOptions, instruction: str, fps: Fraction, meta=None) -> Sample:
    """A restoration sample from two equally long lists of frame files (``spec.data['src']``/``['tgt']``)."""
    src_paths, tgt_paths = spec.data["src"], spec.data["tgt"]
    if len(src_paths) != len(tgt_paths):
        raise SkipSample(f"frame-count mismatch: {len(src_paths)} source vs {len(tgt_paths)} target frames")
    if len(src_paths) < options.min_frames:
        raise SkipSample(f"{len(src_paths)} frame(s), fewer than --min-frames {options.min_frames}")
    source = read_frame_files([Path(p) for p in src_paths])
    target = read_frame_files([Path(p) for p in tgt_paths])
    if source.shape != target.shape:
        raise SkipSample(f"source frames {source.shape[1:3]} and target frames {target.shape[1:3]} differ in size")
    return Sample(
        key=spec.key,
        task=job.task,
        instruction=instruction,
        source=fit_frames(source, options.short_side),
        target=fit_frames(target, options.short_side),
        fps=fps,
        origin=spec.data["origin"],
        split=job.split,
        meta=dict(meta or {}),
    )


def paired_specs(key: str, src_dir: Path, tgt_dir: Path, origin: str, max_frames: int, **extra) -> list[Spec]:
    """Specs over the union of frame names in two folders; a name present on one side only becomes a skip."""
    src = {p.name: p for p in list_frames(src_dir)} if src_dir.is_dir() else {}
    tgt = {p.name: p for p in list_frames(tgt_dir)} if tgt_dir.is_dir() else {}
    if not src or not tgt:
        missing = src_dir if not src else tgt_dir
        return [Spec(f"{key}-000", {"error": f"missing pair: no frames in {missing}"})]
    names = sorted(set(src) | set(tgt))
    specs = []
    for i, (start, end) in enumerate(segments(len(names), max_frames)):
        window = names[start:end]
        unpaired = [n for n in window if n not in src or n not in tgt]
        if unpaired:
            side = tgt_dir if unpaired[0] not in tgt else src_dir
            data = {"error": f"missing pair: {side / unpaired[0]} does not exist ({len(unpaired)} unpaired frame(s))"}
        else:
            data = {
                "src": [str(src[n]) for n in window],
                "tgt": [str(tgt[n]) for n in window],
                "origin": f"{origin}#{start}-{end}",
                **extra,
            }
        specs.append(Spec(f"{key}-{i:03d}", data))
    return specs


def load_video_segment(spec: Spec, options: PrepOptions) -> tuple[np.ndarray, Fraction]:
    """The frames of a ``{video, start, end}`` spec, resized for storage; its recorded error becomes a skip."""
    if "error" in spec.data:
        raise SkipSample(spec.data["error"])
    start, end = spec.data["start"], spec.data["end"]
    if end - start < options.min_frames:
        raise SkipSample(f"segment has {end - start} frame(s), fewer than --min-frames {options.min_frames}")
    frames, fps = read_video_segment(Path(spec.data["video"]), start, end)
    return fit_frames(frames, options.short_side), fps
