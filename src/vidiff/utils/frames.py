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


# ------------------------------------------------------------------------------------ frames <-> model tensors
# The one place frames become model tensors and back. Not diffusers' VideoProcessor: it resizes every clip to a
# multiple of the VAE factor (we pad with the replicated border and crop back, so the output keeps the input's
# exact size and aspect ratio) and it returns float [0, 1] arrays, while the video writer, the metrics and the app
# all take uint8 frames.
def video_to_tensor(video) -> torch.Tensor:
    """Frames -> ``[1, 3, f, h, w]`` float in ``[-1, 1]``.

    Accepts uint8 ``[f, h, w, 3]`` (numpy or torch), a list of PIL images or uint8 frames, or a float tensor
    ``[f, 3, h, w]`` already in ``[-1, 1]``.
    """
    from PIL import Image

    if isinstance(video, list | tuple):
        video = np.stack(
            [np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame) for frame in video]
        )
    if isinstance(video, np.ndarray):
        # a read-only array (e.g. a view of a decoded frame) is copied: torch cannot wrap it safely
        video = torch.from_numpy(np.ascontiguousarray(video) if video.flags.writeable else np.array(video, copy=True))
    if not isinstance(video, torch.Tensor) or video.ndim != 4:
        shape = tuple(getattr(video, "shape", ())) or type(video).__name__
        raise ValueError(f"a video must be [f, h, w, 3] uint8 frames or a [f, 3, h, w] float tensor, got {shape}")
    if video.dtype == torch.uint8:
        if video.shape[-1] != 3:
            raise ValueError(f"uint8 video frames must be [f, h, w, 3], got {tuple(video.shape)}")
        video = rearrange(video, "f h w c -> c f h w").float() / 127.5 - 1.0
    else:
        if video.shape[1] != 3:
            raise ValueError(f"a float video must be [f, 3, h, w] in [-1, 1], got {tuple(video.shape)}")
        video = rearrange(video.float(), "f c h w -> c f h w")
    return video.unsqueeze(0)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, f, h, w]`` in ``[-1, 1]`` -> uint8 ``[f, h, w, 3]`` (a batch ``[b, 3, f, h, w]`` -> ``[b, f, h, w, 3]``)."""
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(video, "... c f h w -> ... f h w c").cpu().numpy()


def image_to_tensor(image) -> torch.Tensor:
    """An image -> ``[1, 3, h, w]`` float in ``[0, 1]`` (a path, PIL image, uint8 ``[h, w, 3]`` or float ``[3, h, w]``)."""
    import os

    from PIL import Image

    if isinstance(image, str | os.PathLike):
        with Image.open(image) as img:
            image = img.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image, copy=True))  # PIL's arrays are read-only views
    if image.dtype == torch.uint8:
        image = rearrange(image, "h w c -> c h w").float() / 255.0
    if image.ndim == 3:
        image = image.unsqueeze(0)
    return image.float()


def pad_to_multiple(video: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``[b, c, f, h, w]`` on the bottom/right to multiples of ``multiple``; return it and the original
    ``(h, w)`` to crop back to. The border is replicated rather than zero-padded: a black band would leak into
    the edit."""
    h, w = video.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        flat = rearrange(video, "b c f h w -> (b f) c h w")
        flat = torch.nn.functional.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
        video = rearrange(flat, "(b f) c h w -> b c f h w", b=video.shape[0])
    return video, (h, w)
