"""Checkpoint files that are never half-written, and never unpickled beyond tensors and plain values.

Lightning's default writer commits through fsspec, whose local temporary file lives in the system temp folder; a
move across filesystems is a copy, and a process killed during that copy leaves a truncated ``last.ckpt``. Here
the checkpoint is written next to its final name, flushed to disk, then renamed in one step (atomic on POSIX),
so a ``SIGKILL`` at any moment leaves either the previous checkpoint or the new one. Loading uses
``torch.load(weights_only=True, mmap=True)``: a checkpoint from elsewhere cannot run code when it is resumed from,
and its tensors are paged in from the file as they are copied into the model, not first read whole into host RAM.

A checkpoint holds what training changes: :func:`drop_frozen` leaves out every frozen network (rebuilt on resume
from the model config and ``stage.init_from``), :func:`restore_frozen` puts the rebuilt ones back before loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vidiff.errors import ModelLoadError, VIDiffError, writing


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """The bytes of the tensors in a (nested) checkpoint, each storage once: about the size ``torch.save``
    writes (the "need about N MB" of a full disk)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        if "://" in str(path):  # object storage: Lightning's own transactional writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            # a full disk is one line naming the checkpoint (torch.save wraps the OSError in a RuntimeError)
            with writing(path, need_bytes=_tensor_bytes(checkpoint)), open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True, mmap=True)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: checkpoint not found") from None
        except Exception as err:
            raise ModelLoadError(
                f"{path}: not a loadable checkpoint (truncated, or holds objects other than tensors and plain "
                f"values: {' '.join(str(err).split())[:160]})"
            ) from None


def frozen_state_keys(module: torch.nn.Module) -> list[str]:
    """State-dict keys of ``module.model`` that training does not change: frozen parameters and buffers."""
    trainable = {f"model.{name}" for name, p in module.model.named_parameters() if p.requires_grad}
    return [key for key in module.state_dict() if key.startswith("model.") and key not in trainable]


def drop_frozen(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Leave the frozen networks out of a checkpoint (``on_save_checkpoint``)."""
    state = checkpoint["state_dict"]
    for key in frozen_state_keys(module):
        state.pop(key, None)
    checkpoint["frozen_from"] = {"init_from": module.hparams.get("init_from")}


def restore_frozen(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Before a checkpoint without its frozen networks is loaded (``on_load_checkpoint``): they come from this run's
    model, built from the same model config and ``stage.init_from`` (refused if that names another model)."""
    if "frozen_from" not in checkpoint:
        return  # a checkpoint that holds every network
    theirs, ours = checkpoint["frozen_from"].get("init_from"), module.hparams.get("init_from")
    if (theirs or None) != (ours or None):
        raise VIDiffError(
            f"the checkpoint was trained from stage.init_from={theirs}, this run's is {ours}: its frozen networks "
            "are rebuilt from init_from, so resume with the same one"
        )
    state, current = checkpoint["state_dict"], module.state_dict()
    for key in frozen_state_keys(module):
        state.setdefault(key, current[key])
