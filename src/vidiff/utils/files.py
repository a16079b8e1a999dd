"""Atomic outputs: everything is written under a temporary name, then moved into place in one step."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vidiff.errors import writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: Path, final: Path) -> Path:
    """Move a finished ``mkstemp``/``mkdtemp`` result to ``final``, replacing what is there.

    ``mkstemp``/``mkdtemp`` create private entries (0600/0700); the result gets the permissions a normal file
    or folder would get. A folder that already exists at ``final`` is swapped out, then deleted.
    """
    tmp, final = Path(tmp), Path(final)
    is_dir = tmp.is_dir()
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())
    if is_dir and final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, backup)
        os.replace(tmp, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file so that a reader never sees half of it (temporary name beside it, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with writing(path):  # a full disk: one line naming the file (a failed write names none)
            tmp.write_text(text)
            return publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """:func:`write_text_atomic` of ``data`` as indented JSON with sorted keys (stable bytes for the same data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
