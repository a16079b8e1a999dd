"""Seam visibility of videos edited clip by clip.

A long video is edited as clips of ``clip_length`` frames, each later clip continuing ``overlap`` frames of the one
before (:mod:`vidiff.pipelines.long_video`); where one clip's output meets the next's, a colour or texture jump is a
seam. ``seam`` is the mean absolute frame difference across each clip boundary divided by the mean absolute
difference between neighbouring frames inside the clips: 1.0 means a boundary is no more visible than any other
frame change, and the higher it is, the more each boundary stands out. Undefined (skipped, counted) for a video of
one clip, or one whose frames inside clips never change.
"""

from __future__ import annotations

import numpy as np

from vidiff.evaluation.metrics.base import MetricInfo, VideoMetric


def clip_starts(num_frames: int, clip_length: int, overlap: int) -> list[int]:
    """Output frame indices at which a new clip's frames begin (after the first): the clip boundaries."""
    if clip_length < 1 or not 0 <= overlap < clip_length:
        raise ValueError(f"need clip_length >= 1 and 0 <= overlap < clip_length, got {clip_length}, {overlap}")
    starts, start = [], clip_length
    while start < num_frames:
        starts.append(start)
        start += clip_length - overlap
    return starts


def seam_ratio(frames: np.ndarray, clip_length: int, overlap: int) -> float:
    """Boundary frame change over within-clip frame change of uint8 ``[f, h, w, 3]`` frames (nan when undefined)."""
    frames = np.asarray(frames, dtype=np.float32)
    if len(frames) < 2:
        return float("nan")
    # mean absolute change from frame i to frame i + 1, for every i
    changes = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    boundary = np.zeros(len(changes), dtype=bool)
    boundary[[s - 1 for s in clip_starts(len(frames), clip_length, overlap)]] = True
    if not boundary.any() or boundary.all():
        return float("nan")
    inside = changes[~boundary].mean()
    return float(changes[boundary].mean() / inside) if inside > 0 else float("nan")


class Seam(VideoMetric):
    info = MetricInfo(
        "seam",
        "Seam",
        higher_is_better=False,
        needs_target=False,
        convention="mean |frame change| across clip boundaries / inside clips (1.0 = invisible)",
    )

    def __init__(self, clip_length: int = 16, overlap: int = 2):
        super().__init__()
        self.clip_length, self.overlap = clip_length, overlap

    def score_video(self, pred, target, instruction):
        if not clip_starts(len(pred), self.clip_length, self.overlap):
            self.skips.add(f"one clip (at most {self.clip_length} frames): no boundary")
            return float("nan")
        value = seam_ratio(pred, self.clip_length, self.overlap)
        if np.isnan(value):
            self.skips.add("no frame change inside the clips")
        return value
