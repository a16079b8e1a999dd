"""The multi-task datamodule: task schedule, decoding, augmentation, long-video samples, validation, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from vidiff.data import MultiTaskDataModule, TaskSchedule, resolve_urls
from vidiff.errors import VIDiffError


TASKS = ("recolor", "inpaint", "dehaze", "deblur", "edit")


def make_dm(shards: Path, **kwargs) -> MultiTaskDataModule:
    tasks = {t: {"urls": str(shards / t), "batch_size": 2} for t in TASKS}
    options = {"seed": 3, "num_workers": 0, "num_frames": 4, "resolution": 32, "shuffle_buffer": 4}
    options.update(kwargs)
    return MultiTaskDataModule(
        tasks=tasks, val={t: {"urls": str(shards / t), "batch_size": 2} for t in TASKS}, **options
    )


def test_schedule_is_a_pure_function_of_seed_and_step():
    a = TaskSchedule({"x": 1, "y": 1, "z": 2}, seed=5)
    b = TaskSchedule({"x": 1, "y": 1, "z": 2}, seed=5)
    steps = [a.task_of(s) for s in range(4000)]
    assert steps == [b.task_of(s) for s in range(4000)]
    assert steps != [TaskSchedule({"x": 1, "y": 1, "z": 2}, seed=6).task_of(s) for s in range(4000)]
    freq = Counter(steps)
    assert freq["z"] / 4000 == pytest.approx(0.5, rel=0.1) and freq["x"] / 4000 == pytest.approx(0.25, rel=0.15)
    accum = TaskSchedule({"x": 1, "y": 1}, seed=5, accumulate_grad_batches=4)
    assert all(len({accum.task_of(4 * k + i) for i in range(4)}) == 1 for k in range(50))


def test_batches_follow_the_schedule_and_have_the_right_shapes(tiny_shards):
    dm = make_dm(tiny_shards, image_prob=1.0)
    batches = [b for _, b in zip(range(8), dm.train_dataloader())]
    for step, batch in enumerate(batches):
        assert batch["step"] == step and batch["task"] == dm.schedule.task_of(step)
        assert batch["target"].shape == batch["source"].shape == (2, 3, 4, 32, 32)
        assert batch["target"].dtype == torch.uint8 and batch["target"].float().std() > 10
        assert batch["image"].shape == (2, 3, 32, 32) and batch["has_image"].all()
        assert len(batch["instruction"]) == 2 and all(batch["instruction"])
        assert all(k.startswith("carphone") for k in batch["key"])  # only train shards
    # resuming at step 5 gives the same tasks and samples from there
    resumed = make_dm(tiny_shards, image_prob=1.0)
    mix = resumed.train_dataset(start_step=5)
    assert [(b["task"], b["key"]) for _, b in zip(range(3), mix)] == [(b["task"], b["key"]) for b in batches[5:8]]


def test_source_and_target_are_cropped_identically(tiny_shards):
    dm = make_dm(tiny_shards, crop_scale=(0.5, 0.7))
    for _, batch in zip(range(10), dm.train_dataloader()):
        if batch["task"] == "recolor":
            # the gray source is the luma of the target: identical crops make them agree pixel for pixel
            luma = (batch["target"].float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)).sum(1)
            assert (luma - batch["source"][:, 0].float()).abs().mean() < 8
            return
    pytest.fail("no recolor batch in 10 steps")


def test_long_video_samples_copy_target_frames_into_the_source(tiny_shards):
    dm = make_dm(tiny_shards, long_video_prob=1.0, long_video_frames=[2])
    batch = next(iter(dm.train_dataloader()))
    assert batch["num_reference_frames"] == [2, 2]
    assert torch.equal(batch["source"][:, :, :2], batch["target"][:, :, :2])
    assert not torch.equal(batch["source"][:, :, 2:], batch["target"][:, :, 2:])
    assert all(
        t.startswith(("Based on the first 2 frames,", "According to the first 2 frames,"))
        for t in batch["instruction"]
    )


def test_validation_is_finite_held_out_and_deterministic(tiny_shards):
    dm = make_dm(tiny_shards)
    loaders = dm.val_dataloader()
    assert len(loaders) == len(TASKS)
    first = [b["key"] for b in loaders[0]]
    assert first == [["bikes-000"]]  # held-out video only, read once
    again = next(iter(make_dm(tiny_shards).val_dataloader()[0]))
    assert torch.equal(next(iter(loaders[0]))["target"], again["target"])


def test_url_resolution_and_errors(tiny_shards, tmp_path):
    folder = tiny_shards / "dehaze"
    assert [Path(u).name for u in resolve_urls(str(folder), "val")] == ["video-folder-val-000000.tar"]
    brace = str(folder / "video-folder-train-{000000..000002}.tar")
    assert len(resolve_urls(brace)) == 3
    assert resolve_urls("pipe:cat a-{0..1}.tar") == ["pipe:cat a-0.tar", "pipe:cat a-1.tar"]
    with pytest.raises(VIDiffError, match="no such shard"):
        resolve_urls(str(tmp_path / "x-{000..001}.tar"))
    with pytest.raises(VIDiffError, match="unknown option"):
        MultiTaskDataModule(tasks={"dehaze": {"urls": str(folder), "bach_size": 2}})


def test_two_process_ddp_same_task_per_step_different_samples(tiny_shards, tmp_path):
    probe = Path(__file__).parent / "helpers" / "ddp_data_probe.py"
    result = subprocess.run(
        [sys.executable, str(probe), str(tiny_shards), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 12
    for a, b in zip(*ranks):
        assert a["global_step"] == b["global_step"] == a["step"] == b["step"]
        assert a["task"] == b["task"]
    assert len({r["task"] for r in ranks[0]}) >= 3
    differing = sum(a["keys"] != b["keys"] for a, b in zip(*ranks))
    assert differing >= 6, "ranks should draw different samples"
