"""Video metrics for VIDiff's tables (definitions and conventions: each module's docstring).

``build_metrics("psnr,ssim,cdc", weights)`` gives the metric objects; each takes uint8 ``[f, h, w, 3]`` videos.
"""

from __future__ import annotations

from collections.abc import Iterable

from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics.base import MetricInfo, VideoMetric
from vidiff.evaluation.metrics.learned import MetricWeights


METRIC_NAMES = (
    "psnr",
    "ssim",
    "ms_ssim",
    "lpips",
    "cdc",
    "colorfulness",
    "niqe",
    "fid",
    "clip",
    "pickscore",
    "consistency",
    "jf",
    "seam",
)
# metrics that run with no network weights, always available
WEIGHT_FREE = ("psnr", "ssim", "ms_ssim", "cdc", "colorfulness", "niqe", "jf", "seam")


def parse_metric_names(names: str | Iterable[str]) -> list[str]:
    if isinstance(names, str):
        names = [n for n in names.replace(" ", "").split(",") if n]
    names = list(dict.fromkeys(n.lower() for n in names))
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise VIDiffError(f"unknown metric {unknown[0]!r} (choose from: {', '.join(METRIC_NAMES)})")
    if not names:
        raise VIDiffError("no metrics given")
    return names


# name -> (module, class), imported on demand so the weight-free metrics never import the network code
_CLASSES = {
    "psnr": ("vidiff.evaluation.metrics.pixel", "PSNR"),
    "ssim": ("vidiff.evaluation.metrics.pixel", "SSIM"),
    "ms_ssim": ("vidiff.evaluation.metrics.pixel", "MSSSIM"),
    "cdc": ("vidiff.evaluation.metrics.pixel", "CDC"),
    "colorfulness": ("vidiff.evaluation.metrics.pixel", "Colorfulness"),
    "niqe": ("vidiff.evaluation.metrics.niqe", "NIQE"),
    "jf": ("vidiff.evaluation.metrics.segmentation", "JF"),
    "seam": ("vidiff.evaluation.metrics.temporal", "Seam"),
    "lpips": ("vidiff.evaluation.metrics.learned", "LPIPS"),
    "fid": ("vidiff.evaluation.metrics.learned", "FID"),
    "clip": ("vidiff.evaluation.metrics.learned", "CLIPScore"),
    "consistency": ("vidiff.evaluation.metrics.learned", "FrameConsistency"),
    "pickscore": ("vidiff.evaluation.metrics.learned", "PickScore"),
}


def metric_class(name: str) -> type[VideoMetric]:
    import importlib

    module, cls = _CLASSES[parse_metric_names([name])[0]]
    return getattr(importlib.import_module(module), cls)


def metric_info(name: str) -> MetricInfo:
    """What a metric is (label, direction, convention) without building it (no weights are loaded)."""
    return metric_class(name).info


def build_metric(name: str, weights: MetricWeights | None = None, device: str = "cpu", **options) -> VideoMetric:
    weights = weights or MetricWeights.from_env()
    cls = metric_class(name)
    if name == "colorfulness":
        return cls(absolute=options.get("colorfulness_abs", False))
    if name == "niqe":
        return cls(frame_stride=options.get("niqe_stride", 1))
    if name == "seam":
        return cls(clip_length=options.get("clip_length", 16), overlap=options.get("overlap", 2))
    if cls.info.needs_weights:
        return cls(weights, device=device)
    return cls()


def build_metrics(
    names: str | Iterable[str], weights: MetricWeights | None = None, device: str = "cpu", **options
) -> dict[str, VideoMetric]:
    """Every requested metric, built up front so a missing weight fails before any video is processed."""
    return {name: build_metric(name, weights, device, **options) for name in parse_metric_names(names)}


__all__ = [
    "METRIC_NAMES",
    "WEIGHT_FREE",
    "MetricInfo",
    "MetricWeights",
    "VideoMetric",
    "build_metric",
    "build_metrics",
    "metric_class",
    "metric_info",
    "parse_metric_names",
]
