"""Weight-free metrics: PSNR, SSIM (torchmetrics), CDC and Colorfulness (own code: no maintained library has them).

Conventions (the reference definitions and test vectors are cited in tests/test_metrics.py):

- PSNR: per frame on 8-bit RGB cast to float (MAX = 255), averaged over frames, then over videos; a frame
  reproduced exactly (infinite PSNR) counts as 100 dB.
- SSIM: Wang et al. (Gaussian 11×11, σ = 1.5, K1 = 0.01, K2 = 0.03) on RGB in [0, 1] without downsampling,
  averaged over channels, frames and videos (torchmetrics).
- CDC (TCVC): Jensen–Shannon divergence (natural log) of the 256-bin histograms of each 8-bit RGB channel between
  frames ``t`` apart, for t ∈ {1, 2, 4} with weights 1/3; a video shorter than 5 frames has no t = 4 pairs, and the
  weights of the distances it does have are renormalised. Lower is better.
- Colorfulness: Hasler & Süsstrunk M3 on 0..255 sRGB, the paper's form (no absolute values) by default.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from vidiff.evaluation.metrics.base import MetricInfo, VideoMetric


def psnr_frames(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 ``[f, h, w, 3]`` videos; identical frames give ``inf``."""
    diff = pred.astype(np.float64) - target.astype(np.float64)
    mse = (diff**2).reshape(len(diff), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


PSNR_CAP_DB = 100.0


def video_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """The project's one video PSNR (validation and the tables both use it): per-frame PSNR of uint8 RGB frames,
    a frame reproduced exactly capped at 100 dB so one perfect frame cannot swamp the mean, averaged over frames."""
    return float(np.minimum(psnr_frames(pred, target), PSNR_CAP_DB).mean())


def ssim_frames(pred: np.ndarray, target: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Per-frame SSIM of uint8 ``[f, h, w, c]`` videos (channels averaged)."""
    values = []
    for start in range(0, len(pred), chunk):
        p = torch.from_numpy(np.ascontiguousarray(pred[start : start + chunk])).permute(0, 3, 1, 2).float() / 255
        t = torch.from_numpy(np.ascontiguousarray(target[start : start + chunk])).permute(0, 3, 1, 2).float() / 255
        ssim = structural_similarity_index_measure(
            p, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"
        )
        values.append(ssim.numpy())
    return np.concatenate(values)


def rgb2gray(frames: np.ndarray) -> np.ndarray:
    """MATLAB's ``rgb2gray`` (ITU-R BT.601 luma with MATLAB's coefficients), rounded, as float64."""
    weights = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
    return np.round(frames.astype(np.float64) @ weights)


def _histograms(frames: np.ndarray) -> np.ndarray:
    """``[f, 3, 256]``: per frame and channel, the probability mass of each 8-bit value."""
    f, h, w, c = frames.shape
    flat = frames.reshape(f, h * w, c).transpose(0, 2, 1).astype(np.int64)
    offsets = (np.arange(f * c) * 256).reshape(f, c, 1)
    counts = np.bincount((flat + offsets).ravel(), minlength=f * c * 256).reshape(f, c, 256)
    return counts / float(h * w)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence (natural log) along the last axis; ``0 log 0 = 0``."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log(a / np.where(b > 0, b, 1.0)), 0.0)
        return terms.sum(axis=-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def cdc(frames: np.ndarray, distances: tuple[int, ...] = (1, 2, 4)) -> float:
    """Color Distribution Consistency of one video (NaN for a single frame: no temporal pairs)."""
    hist = _histograms(frames)
    per_distance = [js_divergence(hist[:-t], hist[t:]).mean() for t in distances if len(frames) > t]
    # the mean over available distances = renormalised equal weights (documented edge case for short videos)
    return float(np.mean(per_distance)) if per_distance else float("nan")


def colorfulness(frames: np.ndarray, absolute: bool = False) -> np.ndarray:
    """Hasler–Süsstrunk M3 per frame on 0..255 RGB (``absolute=True``: the pyimagesearch/ColorMNet variant)."""
    rgb = frames.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    if absolute:
        rg, yb = np.abs(rg), np.abs(yb)
    axes = (1, 2)
    sigma = np.sqrt(rg.std(axis=axes) ** 2 + yb.std(axis=axes) ** 2)
    mu = np.sqrt(rg.mean(axis=axes) ** 2 + yb.mean(axis=axes) ** 2)
    return sigma + 0.3 * mu


class PSNR(VideoMetric):
    info = MetricInfo("psnr", "PSNR", True, convention="per-frame 8-bit RGB PSNR, mean over frames then videos")

    def score_video(self, pred, target, instruction):
        return video_psnr(pred, target)


class SSIM(VideoMetric):
    info = MetricInfo("ssim", "SSIM", True, convention="Gaussian 11x11 σ=1.5 on RGB [0,1], no downsampling")

    def score_video(self, pred, target, instruction):
        return float(ssim_frames(pred, target).mean())


MS_SSIM_MIN_SIDE = 161  # five scales of an 11-pixel window: the coarsest of four halvings must hold one window


class MSSSIM(VideoMetric):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003; the standard five scale weights) from piq, per frame on RGB
    in [0, 1], averaged over frames. Frames whose short side is under 161 pixels cannot hold the coarsest scale:
    such videos are skipped and counted, never scored at fewer scales."""

    info = MetricInfo("ms_ssim", "MS-SSIM", True, convention="piq, 5 scales, Gaussian 11x11 σ=1.5, RGB [0,1]")

    def __init__(self, chunk: int = 8):
        super().__init__()
        self.chunk = chunk

    def score_video(self, pred, target, instruction):
        import piq

        if min(pred.shape[1:3]) < MS_SSIM_MIN_SIDE:
            self.skips.add(f"frames under {MS_SSIM_MIN_SIDE} px (too small for 5 scales)")
            return float("nan")
        values = []
        for start in range(0, len(pred), self.chunk):
            p = torch.from_numpy(np.array(pred[start : start + self.chunk])).permute(0, 3, 1, 2).float() / 255
            t = torch.from_numpy(np.array(target[start : start + self.chunk])).permute(0, 3, 1, 2).float() / 255
            values.append(piq.multi_scale_ssim(p, t, data_range=1.0, reduction="none"))
        return float(torch.cat(values).mean())


class CDC(VideoMetric):
    info = MetricInfo("cdc", "CDC", False, needs_target=False, convention="JS of 256-bin RGB histograms, t in {1,2,4}")

    def score_video(self, pred, target, instruction):
        value = cdc(pred)
        if np.isnan(value):
            self.skips.add("single frame (no temporal pairs)")
        return value


class Colorfulness(VideoMetric):
    info = MetricInfo("colorfulness", "Colorfulness", True, needs_target=False, convention="Hasler-Süsstrunk M3")

    def __init__(self, absolute: bool = False):
        super().__init__()
        self.absolute = absolute

    def score_video(self, pred, target, instruction):
        return float(colorfulness(pred, self.absolute).mean())
