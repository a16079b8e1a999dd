"""Segmentation as translation: the semi-transparent colour overlay and its inverse.

The ``rvos`` task renders the referred object as ``out = 0.5 * frame + 0.5 * color`` inside the mask (the
InstructDiffusion convention). To score segmentation (J&F) the model's overlay output is decoded back into a
binary mask by comparing every output pixel with the two things it can be: the source pixel unchanged, or the
source pixel blended with the requested colour.
"""

from __future__ import annotations

import re

import numpy as np


PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
OVERLAY_ALPHA = 0.5


def color_rgb(name: str) -> tuple[int, int, int]:
    key = name.strip().lower().replace("grey", "gray")
    if key not in PALETTE:
        raise ValueError(f"unknown overlay colour {name!r} (choose from: {', '.join(PALETTE)})")
    return PALETTE[key]


def color_in_instruction(instruction: str | None) -> str | None:
    """The palette colour named in an instruction ("Mark the pixels of the dog in red ..."), if exactly one is."""
    if not instruction:
        return None
    text = instruction.lower().replace("grey", "gray")
    found = [name for name in PALETTE if re.search(rf"\b{name}\b", text)]
    return found[0] if len(found) == 1 else None


def render_overlay(frames: np.ndarray, masks: np.ndarray, color: str | tuple[int, int, int]) -> np.ndarray:
    """uint8 ``[..., h, w, 3]`` frames with ``[..., h, w]`` boolean masks -> the overlay target."""
    rgb = np.asarray(color_rgb(color) if isinstance(color, str) else color, dtype=np.float32)
    blended = (1 - OVERLAY_ALPHA) * frames.astype(np.float32) + OVERLAY_ALPHA * rgb
    out = np.where(masks[..., None].astype(bool), blended, frames.astype(np.float32))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def overlay_to_mask(
    source: np.ndarray, output: np.ndarray, color: str | tuple[int, int, int], min_shift: float = 12.0
) -> np.ndarray:
    """Decode an overlay back into a boolean mask ``[..., h, w]``.

    A pixel is in the mask when the output is closer to the blended colour than to the unchanged source pixel.
    Where the source already has (nearly) the overlay colour the two hypotheses coincide; such pixels are kept
    out unless the blend moved them by at least ``min_shift`` (in 8-bit units), which makes the decision robust
    to small colour shifts of a generative model.
    """
    rgb = np.asarray(color_rgb(color) if isinstance(color, str) else color, dtype=np.float32)
    src = source.astype(np.float32)
    out = output.astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * src + OVERLAY_ALPHA * rgb
    to_blend = np.linalg.norm(out - blended, axis=-1)
    to_source = np.linalg.norm(out - src, axis=-1)
    separable = np.linalg.norm(blended - src, axis=-1) >= min_shift
    return (to_blend < to_source) & separable
