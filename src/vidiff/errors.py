"""User-facing errors.

Anything a user can cause (a missing file, a file that is not a video, a bad flag value) raises
:class:`VIDiffError`. Console scripts print its message on one line and exit with status 2; every
other exception is a bug and keeps its traceback.

Faults of the machine a user can fix are reported the same way (:func:`user_error`): a full disk or quota, a
file-size limit, a read-only folder, permission denied, a file that vanished. So are our errors raised inside
Hydra's ``instantiate``, which Hydra wraps in an ``InstantiationException``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path


class VIDiffError(Exception):
    """An error caused by user input. The message names the problem and the file, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class VideoReadError(VIDiffError):
    """A file could not be read as a video."""


class ModelLoadError(VIDiffError):
    """Model weights or configs could not be found or loaded."""


class StorageError(VIDiffError):
    """A file could not be written or read: out of space, a size limit, read-only, permission denied, vanished."""


# out of space: whatever raised it (a library may wrap the OSError), the cause is the disk, not a bug
_OUT_OF_SPACE = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit of the file system, or `ulimit -f`)",
}
# these name the file they concern; only an OSError that says which file is reported as one line
_FILE_FAULTS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or folder",
}


def _out_of_space(err: BaseException) -> OSError | None:
    """The out-of-space ``OSError`` behind ``err`` (itself, or one it was raised from or while handling; or the
    ``(os error N)`` a Rust extension such as safetensors puts in its message)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _OUT_OF_SPACE:
            return err
        rust = re.search(r"\(os error (\d+)\)", str(err))
        if not isinstance(err, OSError) and rust and int(rust.group(1)) in _OUT_OF_SPACE:
            return OSError(int(rust.group(1)), os.strerror(int(rust.group(1))))
        err = err.__cause__ or err.__context__
    return None


def _is_temporary_of(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is how our writers name ``path`` while writing it: hidden, beside it (a file, or a
    folder the file is in)."""
    return any(p.parent == path.parent and p.name.startswith(f".{path.stem}") for p in (candidate, *candidate.parents))


def storage_error(
    err: BaseException, path: str | os.PathLike | None = None, need_bytes: int | None = None
) -> StorageError | None:
    """``err`` as a one-line :class:`StorageError`, or ``None`` when it is no such fault.

    ``path``: the file being written. It is named instead of what the OS named when that is nothing (``tarfile``
    and ``torch.save`` write to an open file) or its hidden temporary file beside it (``.<stem>...``); any other
    file (an input that vanished, a full temporary folder) is named as the OS named it. ``need_bytes``: the size
    being written, when known (said as "need about N MB")."""
    cause = _out_of_space(err)
    if cause is None:
        if not (isinstance(err, OSError) and err.errno in _FILE_FAULTS and (path or err.filename)):
            return None
        cause = err
    words = _OUT_OF_SPACE.get(cause.errno) or _FILE_FAULTS[cause.errno]
    name = cause.filename
    if path is not None and (name is None or _is_temporary_of(Path(os.fsdecode(name)), Path(path))):
        name = path
    need = ""
    if need_bytes and cause.errno in _OUT_OF_SPACE:
        mb = need_bytes / 2**20
        need = f" (need about {mb:.0f} MB)" if mb >= 1 else f" (need about {max(1, round(need_bytes / 1024))} KB)"
    return StorageError(f"{name}: {words}{need}" if name is not None else f"{words}{need}")


def user_error(err: BaseException) -> VIDiffError | None:
    """The one-line error a user should see for ``err``, or ``None`` if ``err`` is a bug (it keeps its traceback).

    Hydra wraps what a target raises in ``InstantiationException`` (``raise ... from err``); the cause is
    reported when it is ours."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, VIDiffError):
        return err
    return storage_error(err)


@contextlib.contextmanager
def writing(path: str | os.PathLike, need_bytes: int | None = None) -> Iterator[None]:
    """Report a storage fault while writing ``path`` (its temporary file, in fact) as a :class:`StorageError`
    naming ``path``: the OS names the temporary file, and some libraries (``tarfile``, ``torch.save``) none."""
    try:
        yield
    except VIDiffError:
        raise
    except Exception as err:
        problem = storage_error(err, path, need_bytes)
        if problem is None:
            raise
        raise problem from err


def with_flags(message: str, flags: dict[str, str]) -> str:
    """A library message that names arguments (``num_inference_steps``) with the command line's flags instead
    (``--steps``): the library speaks in values, each command translates into its own words."""
    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message)
    return message
