"""Frame I/O for the converters: frame folders, video segments, and resizing to the stored size."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vidiff.data_prep.schema import IMAGE_SUFFIXES, PrepOptions, SkipSample, Spec
from vidiff.errors import VIDiffError
from vidiff.io.video import VideoReader
from vidiff.utils.frames import resize_frames


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


def load_video_segment(spec: Spec, options: PrepOptions) -> tuple[np.ndarray, Fraction]:
    """The frames of a ``{video, start, end}`` spec, resized for storage; its recorded error becomes a skip."""
    if "error" in spec.data:
        raise SkipSample(spec.data["error"])
    start, end = spec.data["start"], spec.data["end"]
    if end - start < options.min_frames:
        raise SkipSample(f"segment has {end - start} frame(s), fewer than --min-frames {options.min_frames}")
    frames, fps = read_video_segment(Path(spec.data["video"]), start, end)
    return fit_frames(frames, options.short_side), fps
