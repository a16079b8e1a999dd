"""Frame-array helpers shared by the CLI, data preparation and evaluation."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange


def working_size(height: int, width: int, short_side: int, multiple: int = 8) -> tuple[int, int]:
    """The size a model works at: short side ``short_side``, aspect ratio kept, both sides multiples of ``multiple``."""
    scale = short_side / min(height, width)
    new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
    new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return new_h, new_w


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 ``[f, h, w, 3]`` frames to ``size = (h, w)`` (antialiased bilinear)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    video = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "f h w c -> f c h w").float()
    video = torch.nn.functional.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    return rearrange(video.round().clamp(0, 255).to(torch.uint8), "f c h w -> f h w c").numpy()
