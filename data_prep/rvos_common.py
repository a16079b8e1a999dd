"""Shared by the two referring-segmentation converters (Ref-DAVIS17, Refer-YouTube-VOS).

A sample is one (video segment, object): the target is the video with the object under a semi-transparent
colour overlay (``0.5·frame + 0.5·colour``, colour drawn per sample from the named palette), the instruction
one of the 11 templates filled with a referring expression, and the binary mask is kept for J&F scoring.
Every referring expression of the object is stored in the metadata so training can draw among them.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from vidiff.data.tasks import instruction_for
from vidiff.data_prep.frames import fit_frames, fit_masks, read_frame_files, read_image, segments
from vidiff.data_prep.schema import Job, PrepOptions, Sample, SkipSample, Spec, rng_for
from vidiff.overlay import PALETTE, render_overlay


def object_specs(
    key: str,
    frames: list[Path],
    masks: list[Path],
    obj_id: int,
    expressions: list[str],
    origin: str,
    fps: float,
    max_frames: int,
    **extra,
) -> list[Spec]:
    specs = []
    for i, (start, end) in enumerate(segments(len(frames), max_frames)):
        data = {
            "frames": [str(p) for p in frames[start:end]],
            "masks": [str(p) for p in masks[start:end]],
            "obj_id": obj_id,
            "expressions": expressions,
            "origin": f"{origin}#{start}-{end}",
            "fps": fps,
            **extra,
        }
        specs.append(Spec(f"{key}-{i:03d}", data))
    return specs


def read_object_masks(paths: list[Path], obj_id: int) -> np.ndarray:
    masks = []
    for path in paths:
        labels = read_image(path, mode="P")
        if labels.ndim != 2:
            raise SkipSample(f"{path}: not an indexed (palette) mask PNG")
        masks.append(labels == obj_id)  # 255 (void) and other ids are background
    return np.stack(masks)


def build_rvos(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    if "error" in spec.data:
        raise SkipSample(spec.data["error"])
    data = spec.data
    if len(data["frames"]) < options.min_frames:
        raise SkipSample(f"{len(data['frames'])} frame(s), fewer than --min-frames {options.min_frames}")
    frames = read_frame_files([Path(p) for p in data["frames"]])
    masks = read_object_masks([Path(p) for p in data["masks"]], data["obj_id"])
    if masks.shape != frames.shape[:3]:
        raise SkipSample(f"mask size {masks.shape[1:]} differs from frame size {frames.shape[1:3]}")
    if not masks.any():
        raise SkipSample(f"empty mask: object {data['obj_id']} appears in none of the frames")
    frames = fit_frames(frames, options.short_side)
    masks = fit_masks(masks, frames.shape[1:3])
    rng = rng_for(options.seed, job.task, spec.key)
    color = rng.choice(sorted(PALETTE))
    expression = data["expressions"][0]
    return Sample(
        key=spec.key,
        task="rvos",
        instruction=instruction_for("rvos", rng, object=expression, color=color),
        source=frames,
        target=render_overlay(frames, masks, color),
        mask=masks,
        fps=Fraction(data["fps"]).limit_denominator(1001),
        origin=data["origin"],
        split=job.split,
        meta={
            "color": color,
            "obj_id": data["obj_id"],
            "expressions": data["expressions"],
            **{k: data[k] for k in ("category",) if k in data},
        },
    )
