import subprocess
import sys

import pytest

from vidiff.cli import edit
from vidiff.io import probe_video, read_video
from vidiff.pipelines import save_model

from .conftest import gradient_video


FAST = ["--model", "tiny", "--steps", "2", "--quiet"]


def test_edit_real_clip_writes_decodable_mp4(bikes_path, tmp_path):
    out = tmp_path / "edited.mp4"
    assert (
        edit.main(
            [str(bikes_path), "-o", str(out), "-i", "Recolor the gray video.", "--frames", "5", "--size", "64", *FAST]
        )
        == 0
    )
    frames, info = read_video(out)
    # requested frame count, input size and fps kept
    assert frames.shape == (5, 272, 640, 3)
    assert float(info.fps) == 25.0
    assert [p.name for p in tmp_path.iterdir()] == ["edited.mp4"]


def test_keep_size_writes_working_size(bikes_path, tmp_path):
    out = tmp_path / "small.mp4"
    args = [str(bikes_path), "-o", str(out), "-i", "x", "--frames", "3", "--size", "64", "--keep-size", *FAST]
    assert edit.main(args) == 0
    info = probe_video(out)
    assert (info.height, info.width, info.num_frames) == (64, 152, 3)


def test_image_instruction_and_checkpoint(tiny_model, bikes_path, tmp_path):
    from PIL import Image

    image = tmp_path / "style.png"
    Image.fromarray(gradient_video(1, 40, 40)[0]).save(image)
    ckpt = save_model(tiny_model, tmp_path / "model")
    out = tmp_path / "styled.mp4"
    args = [
        str(bikes_path),
        "-o",
        str(out),
        "--image",
        str(image),
        "--checkpoint",
        str(ckpt),
        "--frames",
        "2",
        "--size",
        "64",
        "--steps",
        "2",
        "--quiet",
    ]
    assert edit.main(args) == 0
    assert probe_video(out).num_frames == 2
    # --quiet means quiet: no third-party notices, no warnings from our own array handling
    quiet = _cli(*args, "--overwrite")
    assert quiet.returncode == 0 and quiet.stderr.strip() == "" and quiet.stdout.strip() == "", quiet.stderr


def _cli(*args):
    # through a real subprocess: checks exit code, stderr and that no traceback is printed
    return subprocess.run(
        [sys.executable, "-m", "vidiff.cli.edit", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty file"), (b"not a video at all\n" * 50, "not a video")],
    ids=["missing", "zero-byte", "text"],
)
def test_bad_input_one_line_error_no_output(tmp_path, content, message):
    source = tmp_path / "input.mp4"
    if content is not None:
        source.write_bytes(content)
    out = tmp_path / "out.mp4"
    result = _cli(str(source), "-o", str(out), "-i", "x", *FAST)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and str(source) in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["input.mp4"] if content is not None else [])


def test_refuses_to_overwrite(bikes_path, tmp_path):
    out = tmp_path / "exists.mp4"
    out.write_bytes(b"keep me")
    assert edit.main([str(bikes_path), "-o", str(out), "-i", "x", *FAST]) == 2
    assert out.read_bytes() == b"keep me"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(bikes_path.read_bytes())
    assert edit.main([str(clip), "-o", str(clip), "-i", "x", "--overwrite", *FAST]) == 2
    assert clip.read_bytes() == bikes_path.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-i", "x", "--size", "100"], "multiple of 8"),
        (["-i", "x", "--frames", "0"], "--frames"),
        ([], "--instruction"),
        (["-i", "x", "--image", "nope.png"], "nope.png"),
        (["-i", "x", "--strength", "1.5"], "--strength"),
    ],
)
def test_bad_flags(bikes_path, tmp_path, capsys, args, message):
    code = edit.main([str(bikes_path), "-o", str(tmp_path / "o.mp4"), "--model", "tiny", *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_truncated_mp4_is_rejected(bikes_path, tmp_path):
    source = tmp_path / "truncated.mp4"
    data = bikes_path.read_bytes()
    source.write_bytes(data[: len(data) // 2])  # bikes.mp4 keeps its index at the end: half a file is unreadable
    out = tmp_path / "out.mp4"
    result = _cli(str(source), "-o", str(out), "-i", "x", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(source) in result.stderr
    assert not out.exists()


def test_model_recommended_settings_are_used_and_said(tiny_model, bikes_path, tmp_path, capsys):
    """A model that records how it is best used edits that way when the user gives no sampler flags, and says so;
    a flag the user gives wins."""
    from vidiff.pipelines import record_sampling

    ckpt = save_model(tiny_model, tmp_path / "model", sampling={"size": 48})
    record_sampling(ckpt, {"tasks": {"dehaze": {"num_inference_steps": 1, "text_guidance_scale": 3.0}}})
    out = tmp_path / "out.mp4"
    base = [str(bikes_path), "-o", str(out), "--checkpoint", str(ckpt), "--frames", "2", "--keep-size", "--overwrite"]
    assert edit.main([*base, "-i", "Dehaze the video."]) == 0
    said = capsys.readouterr().err
    assert "recommended settings: --size 48, --steps 1, --text-scale 3.0 for dehaze" in said
    assert probe_video(out).height == 48  # the model's working size (bikes is 272 x 640)
    # a free-text instruction matches no task: only the general settings apply; the user's flag wins
    assert edit.main([*base, "-i", "Make it pop.", "--size", "64", "--steps", "1"]) == 0
    said = capsys.readouterr().err
    assert "recommended settings" not in said and probe_video(out).height == 64


def test_library_messages_get_the_command_flags(bikes_path, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = edit.main([str(bikes_path), "-o", str(out), "-i", "Paint the bike.", "--frames", "2", "--masks-out",
                      str(tmp_path / "masks"), *FAST])  # fmt: skip
    assert code == 2
    assert "error: --masks-out needs the overlay colour: name one in the instruction or give --mask-color" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_task_of_instruction():
    from vidiff.data.tasks import task_of_instruction

    assert task_of_instruction("remove the applied haze  from this video.") == "dehaze"
    assert task_of_instruction("Mark the pixels of the dog in red and leave the rest unchanged.") == "rvos"
    assert task_of_instruction("Edit the video to reflect the style of the target image.") == "edit"
    assert task_of_instruction("Make it pop.") is None and task_of_instruction(None) is None
