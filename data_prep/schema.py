"""The sample schema every converter builds: options, specs and jobs, and the seeded random choices.

A converter lists *specs* (cheap descriptions of one potential sample each, in a fixed order) grouped into
*jobs* (one per task and split), and builds a :class:`Sample` from one spec, or raises :class:`SkipSample`
with the reason. Every random choice is seeded from the spec (:func:`rng_for`), so output is deterministic.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np


FORMAT_VERSION = 1


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


class SkipSample(Exception):
    """This spec yields no sample; the message is the reason recorded in the report."""


@dataclass
class PrepOptions:
    """Options shared by every converter (the ``vidiff-prep`` flags of the same names)."""

    short_side: int = 320  # frames are stored with this short side (downscaled only, never upscaled)
    max_frames: int = 64  # longer videos are cut into consecutive segments of at most this many frames
    min_frames: int = 2  # segments shorter than this are skipped (and reported)
    shard_size: int = 64  # samples per shard
    crf: int = 17  # x264 quality of the stored clips (17: visually lossless)
    seed: int = 0  # seeds every synthetic degradation (mixed with each sample's key)
    workers: int = 1  # processes that build samples (order, and so the output, does not depend on it)


@dataclass
class Sample:
    """One training/evaluation sample before encoding.

    ``source`` is absent for ``t2v`` (a video and its caption); ``mask`` is the binary mask behind an ``rvos``
    overlay (kept for J&F scoring); ``style`` is an optional image instruction.
    """

    key: str
    task: str
    instruction: str
    target: np.ndarray  # [f, h, w, 3] uint8
    fps: Fraction
    origin: str
    split: str
    source: np.ndarray | None = None
    mask: np.ndarray | None = None  # [f, h, w] bool
    style: np.ndarray | None = None  # [h, w, 3] uint8
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Spec:
    """One potential sample: its key and whatever the converter needs to build it (picklable)."""

    key: str
    data: dict[str, Any]


@dataclass
class Job:
    """One task and split of a source, its specs in a fixed order; ``part`` numbers the jobs of a listing too long to
    hold at once (a WebVid CSV, read in chunks): each part has its own shards, state and resume point."""

    task: str
    split: str
    specs: list[Spec]
    part: int | None = None


def rng_for(seed: int, *parts: Any) -> random.Random:
    """A random generator that depends only on ``seed`` and the sample's identity (never on run order)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def np_rng_for(seed: int, *parts: Any) -> np.random.Generator:
    return np.random.default_rng(rng_for(seed, *parts).getrandbits(64))


def safe_key(text: str) -> str:
    """WebDataset keys may not contain dots (they separate the key from the extension) or slashes."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
