"""How runs connect: a stage starts from the previous stage's finished run, takes that model's identity, and a run
started again in its output folder resumes from its newest complete checkpoint.

- **Stage hand-off.** ``stage.init_from`` names a model directory, a Lightning checkpoint, or a *stage folder*
  (``outputs/<task_name>``, where ``vidiff-train`` puts that experiment's runs): the newest finished run under it
  (``runs/*/model`` or ``multiruns/*/*/model``; a run exports ``model/`` only when it reaches ``max_steps``) is used.
  A stage folder without a finished run is a one-line error naming the experiment to run first.
- **Identity.** What defines a trained model beyond its architecture (:data:`IDENTITY_KEYS`: the training noise
  schedule and its spacing, the prediction type, ``source_residual``, the conditioning convention) is read from
  ``init_from``'s model; a model config key left ``null`` takes it, a key set to another value is refused unless
  ``convert_identity`` says the run converts on purpose (then the conversion is printed). The VAE's scaling factor
  is a calibration, not a config choice: it always comes with the weights (:func:`~vidiff.training.engine.load_init_weights`).
- **Resume.** ``ckpt_path: auto`` resumes the output folder's checkpoint with the highest step that reads back
  (``last.ckpt``, the step checkpoints, Lightning's ``hpc_ckpt_*.ckpt``); an unreadable one is skipped with a
  one-line notice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from vidiff.config import conf_dir
from vidiff.errors import ModelLoadError, VIDiffError


SCHEDULER_IDENTITY = (
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "prediction_type",
    "rescale_betas_zero_snr",
    "timestep_spacing",
)
MODEL_IDENTITY = ("source_residual", "conditioning")
IDENTITY_KEYS = SCHEDULER_IDENTITY + MODEL_IDENTITY
# what a model saved before a key was recorded meant by it
IDENTITY_DEFAULTS = {"source_residual": False, "conditioning": "scaled"}


# ---------------------------------------------------------------------------------------------- stage hand-off
def finished_runs(stage_dir: Path) -> list[Path]:
    """The exported models of a stage folder's finished runs, newest last."""
    models = [
        *stage_dir.glob("runs/*/model/model_index.json"),
        *stage_dir.glob("multiruns/*/*/model/model_index.json"),
    ]
    return [p.parent for p in sorted(models, key=lambda p: p.stat().st_mtime)]


def experiments_named(task_name: str) -> list[str]:
    """The shipped experiments whose ``task_name`` is ``task_name`` (to name what to run first)."""
    root = conf_dir() / "experiment"
    return sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*.yaml")
        if f"\ntask_name: {task_name}\n" in f"\n{p.read_text()}\n"
    )


def resolve_init_from(init_from: str | None) -> str | None:
    """A model directory or checkpoint as is; a stage folder -> its newest finished run's model."""
    if not init_from:
        return init_from
    path = Path(init_from)
    if path.is_file() or (path / "model_index.json").is_file():
        return str(path)
    if path.name == "model" and not path.exists() and path.parent.is_dir():
        return str(path)  # a run's model/ that is missing: load_init_weights says so
    runs = finished_runs(path) if path.is_dir() else []
    if runs:
        print(f"vidiff-train: stage.init_from: {runs[-1]} (the newest finished run of {path})")
        return str(runs[-1])
    names = experiments_named(path.name)
    if not path.exists() and not names:
        raise ModelLoadError(f"{path}: stage.init_from does not exist")
    what = f"`vidiff-train experiment={names[0]}`" if names else f"the experiment whose task_name is {path.name}"
    started = sorted(path.glob("runs/*/checkpoints")) + sorted(path.glob("multiruns/*/*/checkpoints"))
    state = (
        f"its run {started[-1].parent} has not finished: start it again to resume it"
        if started
        else f"run {what} first"
    )
    raise VIDiffError(f"stage.init_from={path}: no finished run of the previous stage there; {state}")


# ---------------------------------------------------------------------------------------------- identity
def identity_of_model(model) -> dict[str, Any]:
    """A built :class:`~vidiff.models.VIDiffModel`'s identity."""
    scheduler = model.noise_scheduler.config
    identity = {k: scheduler.get(k) for k in SCHEDULER_IDENTITY}
    identity["source_residual"] = bool(model.source_residual)
    identity["conditioning"] = getattr(model, "conditioning", "scaled")
    return identity


def identity_of(init_from: str) -> dict[str, Any] | None:
    """The identity a model directory or a checkpoint records (``None``: a checkpoint from before it was recorded)."""
    path = Path(init_from)
    if path.is_file():
        from vidiff.training.checkpoint_io import AtomicCheckpointIO

        # a file that is not a checkpoint (or would need unpickling) is one line naming it
        checkpoint = AtomicCheckpointIO().load_checkpoint(path)
        if not isinstance(checkpoint, dict):
            raise ModelLoadError(f"{path}: not a Lightning checkpoint (no state_dict)")
        return checkpoint.get("identity")
    try:
        index = json.loads((path / "model_index.json").read_text())
        scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: cannot read the model's identity ({err})") from None
    identity = {k: scheduler.get(k) for k in SCHEDULER_IDENTITY}
    for key in MODEL_IDENTITY:
        identity[key] = index.get(key, IDENTITY_DEFAULTS[key])
    return identity


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    return a == b


def apply_identity(model_cfg: DictConfig, init_from: str | None, convert: bool = False) -> None:
    """Give ``model_cfg`` the identity of ``init_from``'s model: ``null`` keys take it; a key set otherwise is a
    one-line error naming both values, unless ``convert`` (a conversion on purpose, printed)."""
    if not init_from:
        return
    recorded = identity_of(init_from)
    if recorded is None:
        return
    conversions = []
    with open_dict(model_cfg):
        for key in IDENTITY_KEYS:
            node, where = (
                (model_cfg.noise_scheduler, f"model.noise_scheduler.{key}")
                if key in SCHEDULER_IDENTITY
                else (model_cfg, f"model.{key}")
            )
            theirs = recorded.get(key, IDENTITY_DEFAULTS.get(key))
            if key == "conditioning" and key not in node:
                if theirs not in (None, "scaled"):
                    raise VIDiffError(
                        f"stage.init_from={init_from}: its model uses conditioning={theirs!r}, which this "
                        "model config cannot build"
                    )
                continue
            ours = node.get(key)
            if ours is None:
                if theirs is not None:
                    node[key] = theirs
            elif theirs is not None and not _same(ours, theirs):
                if not convert:
                    raise VIDiffError(
                        f"{where}={ours} contradicts stage.init_from's model ({key}={theirs}, {init_from}): leave "
                        "it unset to continue that model, or pass convert_identity=true to convert it on purpose"
                    )
                conversions.append(f"{key} {theirs} -> {ours}")
    if conversions:
        print(f"vidiff-train: converting stage.init_from's model ({init_from}): {', '.join(conversions)}")


# ---------------------------------------------------------------------------------------------- resume
def checkpoint_step(path: Path) -> int:
    """A checkpoint's global step, read through mmap (no tensor is read); raises if the file does not load."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(checkpoint["global_step"])


def newest_checkpoint(output_dir: str | Path) -> str | None:
    """The complete checkpoint of ``output_dir`` with the highest step (``last`` first among equals), or ``None``."""
    output_dir = Path(output_dir)
    candidates = [output_dir / "checkpoints" / "last.ckpt"]
    candidates += sorted(p for p in (output_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    candidates += sorted(output_dir.glob("hpc_ckpt_*.ckpt"))
    best: tuple[int, Path] | None = None
    for path in candidates:
        if not path.is_file():
            continue
        try:
            step = checkpoint_step(path)
        except Exception as err:  # truncated, corrupt, or not a checkpoint
            print(f"vidiff-train: skipping {path}: not a readable checkpoint ({' '.join(str(err).split())[:120]})")
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return str(best[1]) if best else None
