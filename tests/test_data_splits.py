"""Data configs: validation never reads a table's test split, and the T2V window never ends in repeated frames."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from vidiff.config import compose_config


@pytest.mark.parametrize("data", ["multitask_v1", "t2v", "t2i", "tiny", "demo"])
def test_validation_reads_no_test_split(data):
    cfg = compose_config("train", [f"data={data}", "paths.data_dir=/unused"])
    splits = {name: task.get("split", "val") for name, task in (cfg.data.get("val") or {}).items()}
    assert "test" not in splits.values(), splits


def clip_sample(tmp_path, length: int) -> dict:
    from vidiff.io import write_video

    frames = np.zeros((length, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(length) * 4)[:, None, None]  # frame i is red level 4i
    write_video(tmp_path / f"clip{length}.mp4", frames, 25)
    return {
        "__key__": f"clip{length}",
        "json": json.dumps({"num_frames": length, "width": 32, "height": 32}).encode(),
        "tgt.mp4": (tmp_path / f"clip{length}.mp4").read_bytes(),
        "txt": b"a red fade",
    }


def test_t2v_window_fits_the_clip_instead_of_repeating_frames(tmp_path):
    """The stage-2 sampler (16 frames, stride 4: a 61-frame window) on a 40-frame clip takes 16 different frames
    (stride 2, the largest that fits); on a 64-frame clip it keeps stride 4."""
    from vidiff.data.shards import ClipOptions, decode_sample

    options = ClipOptions(num_frames=16, frame_stride=4, resolution=32, crop_scale=(1.0, 1.0), paraphrase=False)
    for length, stride in ((40, 2), (64, 4)):
        raw = clip_sample(tmp_path, length)
        for seed in range(3):
            sample = decode_sample(raw, "t2v", options, random.Random(seed))
            red = sample["target"][0].float().mean(dim=(1, 2)).numpy()  # [16]
            assert np.allclose(np.diff(red), 4 * stride, atol=2.5), (length, red)


def test_prep_carves_a_val_split_from_training_videos():
    from vidiff.data_prep.runner import carve_val
    from vidiff.data_prep.schema import Job, Spec

    specs = [Spec(f"v{v}-{s}", {"origin": f"video{v}#{s * 8}-{s * 8 + 8}"}) for v in range(10) for s in range(3)]
    jobs = carve_val([Job("dehaze", "train", specs), Job("dehaze", "test", specs[:3])], every=5)
    by_split = {job.split: job for job in jobs}
    assert set(by_split) == {"train", "val", "test"}
    val_videos = {s.data["origin"].split("#")[0] for s in by_split["val"].specs}
    train_videos = {s.data["origin"].split("#")[0] for s in by_split["train"].specs}
    assert len(val_videos) == 2 and not val_videos & train_videos  # whole videos, on one side only
    assert len(by_split["val"].specs) == 6 and len(by_split["train"].specs) == 24
    assert by_split["test"].specs == specs[:3]
