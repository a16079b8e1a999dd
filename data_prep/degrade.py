"""Synthetic degradations that turn any clean clip into a (source, target) triplet.

Each takes uint8 frames ``[f, h, w, 3]`` and a seeded generator, and returns the degraded frames plus the
parameters it drew (stored in the sample's metadata so a triplet can be reproduced and analysed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw


def grayscale(frames: np.ndarray) -> tuple[np.ndarray, dict]:
    """ITU-R BT.601 luma, replicated on three channels (what a gray video looks like to the model)."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = np.clip(np.round(luma), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), {}


DRIFT_LIMIT = 0.2


def _reflect(offset: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """``offset`` folded into ``[-limit, limit]`` like a ball bouncing between two walls (a triangle wave)."""
    period = 4 * limit
    phase = np.mod(offset + limit, period)
    return np.where(phase < 2 * limit, phase, period - phase) - limit


def free_form_holes(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """White free-form brush strokes that drift slowly across the clip (a video-inpainting mask)."""
    f, h, w = frames.shape[:3]
    strokes = []
    for _ in range(int(rng.integers(2, 5))):
        points = [(rng.uniform(0, w), rng.uniform(0, h))]
        for _ in range(int(rng.integers(3, 7))):
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(0.08, 0.25) * min(h, w)
            x, y = points[-1]
            points.append(
                (
                    float(np.clip(x + length * math.cos(angle), 0, w)),
                    float(np.clip(y + length * math.sin(angle), 0, h)),
                )
            )
        width = int(max(3, rng.uniform(0.04, 0.1) * min(h, w)))
        strokes.append((points, width))
    velocity = rng.uniform(-0.01, 0.01, size=2) * np.array([w, h])  # pixels per frame
    # the strokes swing back and forth within ±DRIFT_LIMIT of the frame size, so a long clip keeps its holes in
    # view (a 16-frame segment never reaches the limit: at most 0.16 of the frame)
    limit = DRIFT_LIMIT * np.array([w, h])
    out = frames.copy()
    coverage = []
    for t in range(f):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        dx, dy = _reflect(velocity * t, limit)
        for points, width in strokes:
            moved = [(x + dx, y + dy) for x, y in points]
            draw.line(moved, fill=255, width=width, joint="curve")
            for x, y in moved:
                draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
        mask = np.asarray(canvas) > 127
        out[t][mask] = 255
        coverage.append(float(mask.mean()))
    return out, {"hole_coverage": round(float(np.mean(coverage)), 4)}


def haze(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The atmospheric scattering model ``I = J·t + A·(1 − t)`` with ``t = exp(−β·d)``.

    ``β`` is drawn from HazeWorld's values; the depth ``d`` (10–100 m) grows towards the top of the frame with
    a random tilt, a plausible street/landscape layout when no depth map is available.
    """
    f, h, w = frames.shape[:3]
    beta = float(rng.choice([0.005, 0.01, 0.02, 0.03]))
    light = float(rng.uniform(0.7, 1.0))
    tilt = float(rng.uniform(-0.3, 0.3))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    height = np.clip(1.0 - y / max(h - 1, 1) + tilt * (x / max(w - 1, 1) - 0.5), 0, 1)
    depth = 10.0 + 90.0 * height**1.5
    transmission = np.exp(-beta * depth)[None, ..., None]
    clean = frames.astype(np.float32) / 255.0
    hazy = clean * transmission + light * (1.0 - transmission)
    return np.clip(np.round(hazy * 255), 0, 255).astype(np.uint8), {"beta": beta, "light": round(light, 4)}


def motion_blur(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Temporal averaging of neighbouring frames (how BSD/GoPro blur is made) plus a linear camera-shake kernel."""
    f, h, w = frames.shape[:3]
    window = int(rng.choice([3, 5, 7]))
    length = max(3, int(round(rng.uniform(0.02, 0.05) * min(h, w))) | 1)
    angle = float(rng.uniform(0, math.pi))
    video = rearrange(torch.from_numpy(frames.astype(np.float32)), "f h w c -> c f h w")
    # temporal box filter, edges replicated
    pad = window // 2
    padded = torch.cat([video[:, :1].expand(-1, pad, -1, -1), video, video[:, -1:].expand(-1, pad, -1, -1)], dim=1)
    averaged = padded.unfold(1, window, 1).mean(-1)
    # line kernel at `angle`
    kernel = np.zeros((length, length), dtype=np.float32)
    centre = length // 2
    for s in np.linspace(-centre, centre, 4 * length):
        kernel[int(round(centre + s * math.sin(angle))), int(round(centre + s * math.cos(angle)))] = 1.0
    kernel /= kernel.sum()
    weight = torch.from_numpy(kernel)[None, None].expand(3, 1, -1, -1)
    planes = rearrange(averaged, "c f h w -> f c h w")
    planes = torch.nn.functional.pad(planes, (centre, centre, centre, centre), mode="replicate")
    blurred = torch.nn.functional.conv2d(planes, weight, groups=3)
    out = rearrange(blurred, "f c h w -> f h w c").round().clamp(0, 255).to(torch.uint8).numpy()
    return out, {"blur_window": window, "blur_length": length, "blur_angle": round(angle, 4)}


# deterministic looks for the synthetic `edit` task: the instruction names the look, and the style image shows it
STYLES = ("sepia", "negative", "posterize", "cool")


def stylize(frames: np.ndarray, style: str) -> np.ndarray:
    x = frames.astype(np.float32)
    if style == "sepia":
        matrix = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
        x = x @ matrix.T
    elif style == "negative":
        x = 255.0 - x
    elif style == "posterize":
        x = np.floor(x / 64.0) * 64.0 + 32.0
    elif style == "cool":
        x = x * np.array([0.8, 0.95, 1.2], dtype=np.float32) + np.array([0, 10, 25], dtype=np.float32)
    else:
        raise ValueError(f"unknown style {style!r} (choose from {', '.join(STYLES)})")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


STYLE_INSTRUCTIONS = {
    "sepia": "Turn the video to an old sepia photograph style.",
    "negative": "Turn the video into its color negative.",
    "posterize": "Give the video a flat posterized poster style.",
    "cool": "Give the video a cold blue cinematic look.",
}


# objects composited over real footage for the synthetic `rvos` task: a shape name the instruction refers to,
# and its exact mask by construction
SHAPES = ("ball", "box", "triangle")
OBJECT_COLORS = ((250, 160, 30), (40, 200, 220), (230, 230, 240), (60, 70, 200), (240, 220, 40), (40, 170, 70))


def _shape_mask(shape: str, centre: tuple[float, float], radius: float, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    x, y = centre
    if shape == "ball":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    elif shape == "box":
        draw.rectangle([x - radius * 0.85, y - radius * 0.85, x + radius * 0.85, y + radius * 0.85], fill=255)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius * 0.8), (x + radius, y + radius * 0.8)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r} (choose from {', '.join(SHAPES)})")
    return np.asarray(canvas) > 127


def moving_objects(frames: np.ndarray, rng: np.random.Generator, count: int = 2) -> tuple[np.ndarray, list, dict]:
    """Composite ``count`` differently shaped, shaded objects that glide and bounce across the clip.

    Returns the composited frames, one boolean ``[f, h, w]`` mask per object (its visible pixels: an object
    drawn later occludes an earlier one) and the parameters drawn (``shapes`` in drawing order).
    """
    f, h, w = frames.shape[:3]
    shapes = [str(s) for s in rng.choice(SHAPES, size=count, replace=False)]
    colors = [OBJECT_COLORS[i] for i in rng.choice(len(OBJECT_COLORS), size=count, replace=False)]
    out = frames.astype(np.float32)
    masks = []
    shading = np.linspace(1.15, 0.75, h, dtype=np.float32)[:, None, None]  # lit from above
    params = []
    for shape, color in zip(shapes, colors):
        radius = float(rng.uniform(0.18, 0.28) * min(h, w))
        margin = np.array([w - 2 * radius, h - 2 * radius]) / 2
        start = rng.uniform(-1, 1, size=2) * margin
        velocity = rng.uniform(-0.04, 0.04, size=2) * min(h, w)
        centre_of_frame = np.array([w / 2, h / 2])
        object_masks = []
        for t in range(f):
            x, y = centre_of_frame + _reflect(start + velocity * t, margin)
            object_masks.append(_shape_mask(shape, (x, y), radius, (h, w)))
        mask = np.stack(object_masks)
        painted = np.clip(np.asarray(color, dtype=np.float32) * shading, 0, 255)
        out = np.where(mask[..., None], painted[None], out)
        masks = [m & ~mask for m in masks]  # the new object hides what is behind it
        masks.append(mask)
        params.append({"shape": shape, "color": list(color), "radius": round(radius, 2)})
    composited = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return composited, masks, {"objects": params}
