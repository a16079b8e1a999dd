"""A :class:`~vidiff.data_prep.schema.Sample` as WebDataset tar members (see ``data_prep/README.md``):
H.264 clips, PNG images and masks, JSON metadata; deterministic bytes for the same sample."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vidiff.data_prep.schema import FORMAT_VERSION, Sample, SkipSample
from vidiff.io.video import write_video


# ---------------------------------------------------------------------------------------------- encoding
def encode_clip(frames: np.ndarray, fps: Fraction, crf: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="vidiff-prep-") as tmp:
        path = Path(tmp) / "clip.mp4"
        # byte-identical output for identical frames (see VideoWriter's codec_options)
        write_video(path, frames, fps, crf=crf, codec_options={"deterministic": "1"})
        return path.read_bytes()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """Boolean ``[f, h, w]`` -> gzip'd ``.npy`` of the bits packed along the width (``mtime=0``: deterministic)."""
    buffer = io.BytesIO()
    np.save(buffer, np.packbits(mask.astype(bool), axis=-1), allow_pickle=False)
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def encode_sample(sample: Sample, crf: int) -> dict[str, Any]:
    """A :class:`Sample` as WebDataset members (see ``data_prep/README.md``)."""
    target = sample.target
    if sample.source is not None and sample.source.shape != target.shape:
        raise SkipSample(f"source {sample.source.shape} and target {target.shape} clips differ in shape")
    if sample.mask is not None and not sample.mask.any():
        raise SkipSample("empty mask: the referred object is in no frame")
    f, h, w = target.shape[:3]
    meta = {
        "format": FORMAT_VERSION,
        "task": sample.task,
        "fps": str(Fraction(sample.fps).limit_denominator(100000)),
        "num_frames": int(f),
        "height": int(h),
        "width": int(w),
        "origin": sample.origin,
        "split": sample.split,
        **sample.meta,
    }
    members: dict[str, Any] = {"__key__": sample.key, "txt": sample.instruction.encode("utf-8")}
    members["tgt.mp4"] = encode_clip(target, sample.fps, crf)
    if sample.source is not None:
        members["src.mp4"] = encode_clip(sample.source, sample.fps, crf)
    if sample.mask is not None:
        members["mask.npy.gz"] = encode_mask(sample.mask)
    if sample.style is not None:
        members["style.png"] = encode_png(sample.style)
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members
