"""Videos to score: a video file, a folder of frames (one video), or a folder of videos / frame folders.

Collections are matched by name (file stem or folder name) between predictions and targets; an unmatched name is
an error, never silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vidiff.errors import VIDiffError


VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise VIDiffError(f"{path}: not a readable image ({' '.join(str(err).split())[:120]})") from None


def read_frames_folder(folder: Path, max_frames: int | None = None) -> np.ndarray:
    images = _images_in(folder)[:max_frames]
    if not images:
        raise VIDiffError(f"{folder}: no image frames found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    frames = []
    for image in images:
        frames.append(read_image(image))
        if frames[-1].shape != frames[0].shape:
            raise VIDiffError(f"{image}: size {frames[-1].shape[1::-1]} differs from the first frame's")
    return np.stack(frames)


def read_any(path: Path, max_frames: int | None = None) -> np.ndarray:
    """uint8 ``[f, h, w, 3]`` from a video file or a folder of frames."""
    from vidiff.io import read_video

    if path.is_dir():
        return read_frames_folder(path, max_frames)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)[None]
    frames, _ = read_video(path, max_frames=max_frames)
    return frames


def list_videos(path: Path) -> dict[str, Path]:
    """``{name: path}`` of the videos that ``path`` stands for (one entry unless it is a collection folder)."""
    if not path.exists():
        raise VIDiffError(f"{path}: no such file or folder")
    if not path.is_dir():
        return {path.stem: path}
    if _images_in(path):
        return {path.name: path}
    items = {}
    for child in sorted(path.iterdir(), key=_natural_key):
        if child.is_file() and child.suffix.lower() in VIDEO_SUFFIXES:
            items[child.stem] = child
        elif child.is_dir() and _images_in(child):
            items[child.name] = child
    if not items:
        raise VIDiffError(f"{path}: no videos or frame folders inside")
    return items


def pair_videos(pred: Path, target: Path | None) -> list[tuple[str, Path, Path | None]]:
    """``(name, prediction, target)`` triples; single inputs pair directly, collections by name."""
    preds = list_videos(pred)
    if target is None:
        return [(name, p, None) for name, p in preds.items()]
    targets = list_videos(target)
    if len(preds) == 1 and len(targets) == 1:
        (name, p), (t,) = next(iter(preds.items())), targets.values()
        return [(name, p, t)]
    missing = [name for name in preds if name not in targets]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise VIDiffError(f"{target}: no target for {len(missing)} prediction(s) of {pred} ({shown})")
    extra = [name for name in targets if name not in preds]
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise VIDiffError(f"{pred}: no prediction for {len(extra)} target(s) in {target} ({shown})")
    return [(name, p, targets[name]) for name, p in preds.items()]
