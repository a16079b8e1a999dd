"""The checks of the sampling arguments, in one place and without heavy imports: ``VIDiffPipeline.check_inputs``,
long-video editing, ``vidiff-edit`` (before it loads a model) and the app all call these. Messages name the
argument (``num_inference_steps``); each command line translates into its own flags."""

from __future__ import annotations

import math

from vidiff.errors import VIDiffError


CARRY_MODES = ("auto", "reference", "latent", "none")

# What vidiff-edit, the app and vidiff-eval use when neither the user nor the model (its recorded ``sampling``)
# says: one place, so the three agree; ``VIDiffPipeline.__call__``'s defaults are the same values (a test checks).
DEFAULT_SAMPLING = {
    "num_inference_steps": 20,
    "text_guidance_scale": 7.5,
    "video_guidance_scale": 1.5,
    "scheduler": "ddim",
    "size": 256,
}


def check_sampling(
    num_inference_steps=DEFAULT_SAMPLING["num_inference_steps"],
    text_guidance_scale=DEFAULT_SAMPLING["text_guidance_scale"],
    video_guidance_scale=DEFAULT_SAMPLING["video_guidance_scale"],
    strength=1.0,
    anchor_fraction=0.5,
) -> None:
    """Raise :class:`VIDiffError` naming the first bad value."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise VIDiffError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    for name, scale in (("text_guidance_scale", text_guidance_scale), ("video_guidance_scale", video_guidance_scale)):
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise VIDiffError(f"{name} must be a finite number, got {scale!r}")
    if not 0.0 < strength <= 1.0:
        raise VIDiffError(f"strength must be in (0, 1], got {strength}")
    if not 0.0 <= anchor_fraction <= 1.0:
        raise VIDiffError(f"anchor_fraction must be in [0, 1], got {anchor_fraction}")


def check_long_video(clip_length: int = 16, overlap: int = 2, carry: str = "auto", size: int | None = None) -> None:
    """Raise :class:`VIDiffError` naming the first bad long-video setting."""
    if clip_length < 1:
        raise VIDiffError(f"clip_length must be at least 1, got {clip_length}")
    if not 0 <= overlap < clip_length:
        raise VIDiffError(f"overlap must be >= 0 and smaller than clip_length {clip_length}, got {overlap}")
    if carry not in CARRY_MODES:
        raise VIDiffError(f"long-video mode {carry!r}: choose from {', '.join(CARRY_MODES)}")
    if size is not None and (size < 8 or size % 8):
        raise VIDiffError(f"size must be a positive multiple of 8, got {size}")
