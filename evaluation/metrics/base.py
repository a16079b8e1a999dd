"""The interface every video metric keeps.

A metric is fed one video at a time (uint8 frames ``[f, h, w, 3]``) and summarises a dataset. Per-video metrics
average per-video values, so every video has equal weight whatever its length; dataset-level metrics (FID) pool
frames instead. A video for which a metric is undefined (e.g. CDC of a single frame) is not dropped silently: it
is counted in ``skipped`` with the reason, and reported.

Why not torchmetrics' ``Metric`` as the base: its states are tensors reduced across ranks, while these metrics
score whole decoded videos on one process (NIQE, CDC and J&F in NumPy) and keep per-video values and skip reasons,
which its state model does not carry. Training's cross-rank validation mean uses torchmetrics' ``MeanMetric`` over
the per-video PSNR of :func:`vidiff.evaluation.metrics.pixel.video_psnr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vidiff.errors import VIDiffError


@dataclass
class MetricInfo:
    """What a metric is, for tables: ``higher_is_better`` decides the arrow (↑/↓) and the best-value highlight."""

    name: str
    label: str
    higher_is_better: bool
    needs_target: bool = True
    needs_instruction: bool = False
    needs_weights: bool = False
    convention: str = ""


@dataclass
class Skips:
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class VideoMetric:
    """Base class: subclasses set ``info`` and implement ``score_video`` (or override ``update``/``compute``)."""

    info: MetricInfo

    def __init__(self) -> None:
        self.values: list[float] = []
        self.skips = Skips()

    @property
    def name(self) -> str:
        return self.info.name

    def score_video(self, pred: np.ndarray, target: np.ndarray | None, instruction: str | None) -> float:
        raise NotImplementedError

    def update(self, pred: np.ndarray, target: np.ndarray | None = None, instruction: str | None = None) -> float:
        """Score one video; returns its value (NaN when the metric is undefined for it, counted as a skip)."""
        pred = check_video(pred, "prediction")
        if self.info.needs_target:
            if target is None:
                raise VIDiffError(f"{self.name} compares with a target video: give TARGET")
            target = check_video(target, "target")
            if target.shape != pred.shape:
                raise VIDiffError(
                    f"{self.name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
                )
        if self.info.needs_instruction and not instruction:
            raise VIDiffError(f"{self.name} scores text alignment: give the instruction (--instruction)")
        value = float(self.score_video(pred, target, instruction))
        self.values.append(value)
        return value

    def compute(self) -> dict[str, float]:
        """``{name: mean over scored videos}`` (NaN when nothing could be scored)."""
        finite = [v for v in self.values if not math.isnan(v)]
        return {self.name: float(np.mean(finite)) if finite else float("nan")}

    def reset(self) -> None:
        self.values.clear()
        self.skips = Skips()


def check_video(video, what: str) -> np.ndarray:
    """Metrics take uint8 RGB frames ``[f, h, w, 3]``; a single image ``[h, w, 3]`` is a one-frame video."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise VIDiffError(f"{what}: expected RGB frames [f, h, w, 3], got shape {tuple(video.shape)}")
    if video.dtype != np.uint8:
        raise VIDiffError(f"{what}: expected uint8 frames, got {video.dtype}")
    if len(video) == 0:
        raise VIDiffError(f"{what}: the video has no frames")
    return video
