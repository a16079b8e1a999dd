"""Video metrics for VIDiff's tables (definitions and conventions: each module's docstring).

``build_metrics("psnr,ssim,cdc", weights)`` gives the metric objects; each takes uint8 ``[f, h, w, 3]`` videos.
"""

from __future__ import annotations

from collections.abc import Iterable

from evaluation.metrics.base import MetricInfo, VideoMetric
from evaluation.metrics.learned import MetricWeights
from vidiff.errors import VIDiffError


METRIC_NAMES = (
    "psnr",
    "ssim",
    "lpips",
    "cdc",
    "colorfulness",
    "niqe",
    "fid",
    "clip",
    "pickscore",
    "consistency",
    "jf",
)
# metrics that run with no network weights, always available
WEIGHT_FREE = ("psnr", "ssim", "cdc", "colorfulness", "niqe", "jf")


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


def build_metric(name: str, weights: MetricWeights | None = None, device: str = "cpu", **options) -> VideoMetric:
    weights = weights or MetricWeights.from_env()
    if name == "psnr":
        from evaluation.metrics.pixel import PSNR

        return PSNR()
    if name == "ssim":
        from evaluation.metrics.pixel import SSIM

        return SSIM()
    if name == "cdc":
        from evaluation.metrics.pixel import CDC

        return CDC()
    if name == "colorfulness":
        from evaluation.metrics.pixel import Colorfulness

        return Colorfulness(absolute=options.get("colorfulness_abs", False))
    if name == "niqe":
        from evaluation.metrics.niqe import NIQE

        return NIQE(frame_stride=options.get("niqe_stride", 1))
    if name == "jf":
        from evaluation.metrics.segmentation import JF

        return JF()
    from evaluation.metrics import learned

    cls = {
        "lpips": learned.LPIPS,
        "fid": learned.FID,
        "clip": learned.CLIPScore,
        "consistency": learned.FrameConsistency,
        "pickscore": learned.PickScore,
    }[name]
    return cls(weights, device=device)


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
    "parse_metric_names",
]
