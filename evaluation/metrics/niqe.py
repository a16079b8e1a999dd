"""NIQE (Mittal, Soundararajan & Bovik 2013) with the official LIVE pristine parameters.

Written here because neither torchmetrics nor piq has NIQE, and pyiqa (which does) downloads its parameters and
pulls in a large dependency tree. The algorithm follows the original MATLAB release: the image is converted to
gray with MATLAB's ``rgb2gray`` and rounded, cropped to whole 96×96 blocks, and 36 features are taken per block —
generalised-Gaussian fits of the MSCN coefficients and of their products with the four neighbours — at full and
half resolution (MATLAB's antialiased bicubic ``imresize``). The quality is the Mahalanobis-like distance between
the fitted Gaussian and the pristine one. Lower is better. A video's NIQE is the mean over its frames.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy.ndimage import convolve
from scipy.special import gamma

from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics.base import MetricInfo, VideoMetric
from vidiff.evaluation.metrics.pixel import rgb2gray


PARAMS_FILE = Path(__file__).with_name("data") / "niqe_pris_params.npz"
BLOCK = 96


@functools.cache
def pristine_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    params = np.load(PARAMS_FILE, allow_pickle=False)
    return params["mu_pris_param"][0], params["cov_pris_param"], params["gaussian_window"]


@functools.cache
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """Candidate shapes α and the ratio Γ(2/α)² / (Γ(1/α)Γ(3/α)) the moment match looks up."""
    alphas = np.arange(0.2, 10.001, 0.001)
    ratios = gamma(2 / alphas) ** 2 / (gamma(1 / alphas) * gamma(3 / alphas))
    return alphas, ratios


def aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit by moment matching: shape α and left/right scales."""
    values = values.ravel()
    alphas, ratios = _shape_table()
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.mean(values[values < 0] ** 2)) if np.any(values < 0) else np.nan
        right = np.sqrt(np.mean(values[values > 0] ** 2)) if np.any(values > 0) else np.nan
        gamma_hat = left / right
        r_hat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
        r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = alphas[np.argmin((ratios - r_norm) ** 2)] if np.isfinite(r_norm) else np.nan
    factor = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * factor, right * factor


def block_features(block: np.ndarray) -> list[float]:
    """The 18 features of one block of MSCN coefficients."""
    alpha, beta_left, beta_right = aggd_fit(block)
    features = [alpha, (beta_left + beta_right) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        # circular shifts, as MATLAB's circshift in the reference code
        alpha, beta_left, beta_right = aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (beta_right - beta_left) * gamma(2 / alpha) / gamma(1 / alpha)
        features += [alpha, mean, beta_left, beta_right]
    return features


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def _resize_axis(image: np.ndarray, scale: float, axis: int) -> np.ndarray:
    """MATLAB ``imresize`` (bicubic, antialiased when shrinking, symmetric borders) along one axis."""
    in_len = image.shape[axis]
    out_len = int(np.ceil(in_len * scale))
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    centres = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
    first = np.floor(centres - kernel_width / 2)
    taps = int(np.ceil(kernel_width)) + 2
    index = first[:, None] + np.arange(taps)[None, :]
    distance = centres[:, None] - index
    weights = scale * _cubic(scale * distance) if scale < 1 else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    index = mirror[np.mod(index.astype(np.int64) - 1, 2 * in_len)]
    moved = np.moveaxis(image, axis, 0)
    out = np.einsum("ot,ot...->o...", weights, moved[index])
    return np.moveaxis(out, 0, axis)


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    return _resize_axis(_resize_axis(image, scale, 0), scale, 1)


def niqe_gray(image: np.ndarray) -> float:
    """NIQE of a gray image ``[h, w]`` with values in 0..255 (at least 96×96)."""
    mu_pristine, cov_pristine, window = pristine_params()
    h, w = image.shape
    rows, cols = h // BLOCK, w // BLOCK
    if rows == 0 or cols == 0:
        raise VIDiffError(f"NIQE needs frames of at least {BLOCK}x{BLOCK} pixels, got {w}x{h}")
    image = image[: rows * BLOCK, : cols * BLOCK].astype(np.float64)
    per_scale = []
    for scale in (1, 2):
        mu = convolve(image, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(image**2, window, mode="nearest") - mu**2))
        mscn = (image - mu) / (sigma + 1)
        size = BLOCK // scale
        per_scale.append(
            [
                block_features(mscn[r * size : (r + 1) * size, c * size : (c + 1) * size])
                for r in range(rows)
                for c in range(cols)
            ]
        )
        if scale == 1:
            image = imresize(image / 255.0, 0.5) * 255.0
    features = np.concatenate([np.asarray(f) for f in per_scale], axis=1)
    mu_dist = np.nanmean(features, axis=0)
    valid = features[~np.isnan(features).any(axis=1)]
    if len(valid) == 0:
        return float("nan")
    # one block (a frame under 192 pixels on a side) has no spread; MATLAB's nancov gives zeros there too
    cov_dist = np.cov(valid, rowvar=False) if len(valid) > 1 else np.zeros_like(cov_pristine)
    delta = mu_pristine - mu_dist
    return float(np.sqrt(delta @ np.linalg.pinv((cov_pristine + cov_dist) / 2) @ delta))


def niqe(frames: np.ndarray) -> np.ndarray:
    """Per-frame NIQE of uint8 RGB frames ``[f, h, w, 3]`` (MATLAB ``rgb2gray`` input, as the original)."""
    return np.array([niqe_gray(gray) for gray in rgb2gray(frames)])


class NIQE(VideoMetric):
    info = MetricInfo(
        "niqe", "NIQE", False, needs_target=False, convention="LIVE pristine params, rgb2gray, 96x96 blocks"
    )

    def __init__(self, frame_stride: int = 1):
        super().__init__()
        # NIQE costs ~0.1 s per 512x384 frame on a CPU core; long benchmarks may score every k-th frame
        self.frame_stride = max(1, int(frame_stride))

    def score_video(self, pred, target, instruction):
        return float(niqe(pred[:: self.frame_stride]).mean())
