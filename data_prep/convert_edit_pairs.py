"""``vidiff-prep edit-pairs``: instruction-edited video pairs -> ``edit``.

``--root`` is either a JSONL file (or a folder containing ``pairs.jsonl``) with one object per line::

    {"source": "a/src.mp4", "target": "a/tgt.mp4", "instruction": "Turn the video to sketch style.",
     "style": "a/style.png", "id": "a", "split": "train"}

(paths relative to the JSONL file; ``style``, ``id`` and ``split`` optional), or a folder with one subfolder per
pair holding ``source.<ext>`` and ``target.<ext>`` (video files or folders of frames), ``instruction.txt`` and
optionally ``style.png|jpg``. Source and target must have the same number of frames; a mismatch is reported.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from vidiff.data_prep.frames import (
    fit_frames,
    list_frames,
    probe_frame_count,
    read_frame_files,
    read_image,
    read_video_segment,
    segments,
)
from vidiff.data_prep.schema import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    Job,
    PrepOptions,
    Sample,
    SkipSample,
    Spec,
    safe_key,
)
from vidiff.errors import VIDiffError
from vidiff.utils.frames import resize_frames


SOURCE = "edit-pairs"
HELP = "a folder or JSONL of (source, target, instruction[, style image]) -> edit"
FRAME_FOLDER_FPS = Fraction(25)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _find(folder: Path, stem: str, suffixes) -> Path | None:
    if (folder / stem).is_dir():
        return folder / stem
    for suffix in suffixes:
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return None


def read_pairs(root: Path) -> list[dict]:
    jsonl = root if root.is_file() else root / "pairs.jsonl"
    pairs = []
    if jsonl.is_file():
        base = jsonl.parent
        for line_no, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                pair = {
                    "id": str(entry.get("id") or Path(entry["source"]).stem + f"-{line_no}"),
                    "source": str(base / entry["source"]),
                    "target": str(base / entry["target"]),
                    "instruction": str(entry.get("instruction") or ""),
                    "style": str(base / entry["style"]) if entry.get("style") else None,
                    "split": entry.get("split"),
                }
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                pairs.append({"id": f"line{line_no}", "error": f"{jsonl}:{line_no}: bad entry ({err})"})
                continue
            pairs.append(pair)
        return pairs
    if not root.is_dir():
        raise VIDiffError(f"{root}: no such folder or JSONL file")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        text = folder / "instruction.txt"
        pair = {
            "id": folder.name,
            "source": _find(folder, "source", VIDEO_SUFFIXES),
            "target": _find(folder, "target", VIDEO_SUFFIXES),
            "instruction": text.read_text(encoding="utf-8").strip() if text.exists() else "",
            "style": _find(folder, "style", IMAGE_SUFFIXES),
            "split": None,
        }
        for side in ("source", "target"):
            if pair[side] is None:
                pair = {
                    "id": folder.name,
                    "error": f"missing pair: {folder} has no {side} video or {side}/ frame folder",
                }
                break
            pair[side] = str(pair[side])
        else:
            pair["style"] = str(pair["style"]) if pair["style"] else None
        pairs.append(pair)
    if not pairs:
        raise VIDiffError(
            f"{root}: no pairs (expected pairs.jsonl or <pair>/source.mp4 + target.mp4 + instruction.txt)"
        )
    return pairs


def _count(path: Path) -> int | str:
    if not path.exists():
        return f"missing pair: {path} does not exist"
    if path.is_dir():
        return len(list_frames(path))
    return probe_frame_count(path)


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    by_split: dict[str, list[Spec]] = {}
    for pair in read_pairs(root):
        split = pair.get("split") or args.split or "train"
        if args.split and split != args.split:
            continue
        key = safe_key(f"edit-{pair['id']}")
        if "error" in pair:
            by_split.setdefault(split, []).append(Spec(f"{key}-000", {"error": pair["error"]}))
            continue
        if not pair["instruction"] and not pair["style"]:
            by_split.setdefault(split, []).append(
                Spec(f"{key}-000", {"error": f"pair {pair['id']}: no instruction text and no style image"})
            )
            continue
        counts = [_count(Path(pair["source"])), _count(Path(pair["target"]))]
        problem = next((c for c in counts if isinstance(c, str)), None)
        if problem is None and counts[0] != counts[1]:
            problem = f"frame-count mismatch: source has {counts[0]} frames, target {counts[1]} ({pair['id']})"
        if problem:
            by_split.setdefault(split, []).append(Spec(f"{key}-000", {"error": problem}))
            continue
        for i, (start, end) in enumerate(segments(counts[0], options.max_frames)):
            by_split.setdefault(split, []).append(Spec(f"{key}-{i:03d}", {**pair, "start": start, "end": end}))
    if not by_split:
        raise VIDiffError(f"{root}: no pairs for split {args.split}")
    return [Job("edit", split, specs) for split, specs in sorted(by_split.items())]


def _load(path: Path, start: int, end: int) -> tuple[np.ndarray, Fraction]:
    if path.is_dir():
        return read_frame_files(list_frames(path)[start:end]), FRAME_FOLDER_FPS
    return read_video_segment(path, start, end)


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    data = spec.data
    if "error" in data:
        raise SkipSample(data["error"])
    start, end = data["start"], data["end"]
    if end - start < options.min_frames:
        raise SkipSample(f"segment has {end - start} frame(s), fewer than --min-frames {options.min_frames}")
    source, fps = _load(Path(data["source"]), start, end)
    target, _ = _load(Path(data["target"]), start, end)
    (sh, sw), (th, tw) = source.shape[1:3], target.shape[1:3]
    if abs(sh / sw - th / tw) > 0.01:
        raise SkipSample(f"source {sw}x{sh} and target {tw}x{th} have different aspect ratios")
    source = fit_frames(source, options.short_side)
    target = resize_frames(target, source.shape[1:3])
    style = None
    if data.get("style"):
        style = read_image(Path(data["style"]))
    return Sample(
        key=spec.key,
        task="edit",
        instruction=data["instruction"],
        source=source,
        target=target,
        style=style,
        fps=fps,
        origin=f"{data['id']}#{start}-{end}",
        split=job.split,
        meta={"first_frame": start, "has_style": style is not None},
    )
