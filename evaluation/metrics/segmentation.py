"""J&F of DAVIS for language-guided video object segmentation (own code: the DAVIS toolkit is not on PyPI).

- J (region similarity): intersection over union of the predicted and ground-truth masks; two empty masks agree
  perfectly (J = 1).
- F (contour accuracy): F-measure of the mask boundaries, a boundary pixel counting as matched when the other
  boundary passes within ``ceil(0.008 · image diagonal)`` pixels (DAVIS's tolerance).
- Per video the frame means are taken, J&F = (J + F) / 2, and the dataset value is the mean over videos.

Masks come as boolean ``[f, h, w]`` arrays, or as frames (RGB/gray video or PNGs) thresholded at 128.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_dilation

from vidiff.evaluation.metrics.base import MetricInfo, VideoMetric


def jaccard(pred: np.ndarray, target: np.ndarray) -> float:
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a mask that differ from their right, lower or lower-right neighbour (a one-pixel contour)."""
    mask = mask.astype(bool)
    padded = np.pad(mask, ((0, 1), (0, 1)), mode="edge")
    right = padded[:-1, 1:]
    down = padded[1:, :-1]
    diagonal = padded[1:, 1:]
    return (mask ^ right) | (mask ^ down) | (mask ^ diagonal)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def contour_f(pred: np.ndarray, target: np.ndarray, tolerance: float = 0.008) -> float:
    pred_edge, target_edge = boundary(pred), boundary(target)
    radius = max(1, math.ceil(tolerance * math.hypot(*pred.shape)))
    n_pred, n_target = pred_edge.sum(), target_edge.sum()
    if n_pred == 0 and n_target == 0:
        return 1.0
    if n_pred == 0 or n_target == 0:
        return 0.0
    disk = _disk(radius)
    precision = (pred_edge & binary_dilation(target_edge, disk)).sum() / n_pred
    recall = (target_edge & binary_dilation(pred_edge, disk)).sum() / n_target
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def to_masks(video: np.ndarray) -> np.ndarray:
    """Boolean masks from mask frames: uint8 ``[f, h, w(, c)]`` thresholded at 128 (channels averaged)."""
    video = np.asarray(video)
    if video.dtype == bool:
        return video
    if video.ndim == 4:
        video = video.astype(np.float32).mean(axis=-1)
    return video >= 128


class JF(VideoMetric):
    info = MetricInfo("jf", "J&F", True, convention="DAVIS J (IoU) and F (boundary, 0.008 diag), mean")

    def __init__(self) -> None:
        super().__init__()
        self.j_values: list[float] = []
        self.f_values: list[float] = []

    def score_video(self, pred, target, instruction):
        pred_masks, target_masks = to_masks(pred), to_masks(target)
        j = float(np.mean([jaccard(p, t) for p, t in zip(pred_masks, target_masks)]))
        f = float(np.mean([contour_f(p, t) for p, t in zip(pred_masks, target_masks)]))
        self.j_values.append(j)
        self.f_values.append(f)
        return (j + f) / 2

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "jf": float(np.mean(self.values)) if self.values else nan,
            "j": float(np.mean(self.j_values)) if self.j_values else nan,
            "f": float(np.mean(self.f_values)) if self.f_values else nan,
        }

    def reset(self) -> None:
        super().reset()
        self.j_values.clear()
        self.f_values.clear()
