"""Locate and compose the project's Hydra configs (``conf/``) outside a Hydra app."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from vidiff.errors import VIDiffError


def conf_dir() -> Path:
    """The ``conf/`` folder: ``$VIDIFF_CONF_DIR`` if set, else the one beside ``src/`` in this checkout."""
    env = os.environ.get("VIDIFF_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "model").is_dir():
        raise VIDiffError(f"{path}: VIDiff config folder not found (set VIDIFF_CONF_DIR to the repository's conf/)")
    return path


def model_presets() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def compose_model_config(preset: str = "tiny", overrides: Sequence[str] = ()) -> DictConfig:
    """The ``model`` node of ``conf/model/<preset>.yaml`` with ``paths`` resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if preset not in model_presets():
        raise VIDiffError(f"unknown model preset {preset!r} (choose from: {', '.join(model_presets())})")
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(overrides=[f"+model={preset}", "+paths=default", *overrides])
    return cfg.model


def load_model_preset(preset: str = "tiny", overrides: Sequence[str] = ()):
    """Instantiate a model preset (``tiny`` builds random weights; ``sd15`` loads local files)."""
    return instantiate_model(compose_model_config(preset, overrides))


def instantiate_model(cfg: DictConfig):
    """Instantiate a composed ``model`` node, surfacing our one-line errors (e.g. a missing weights folder)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg, _convert_="partial")
    except InstantiationException as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, VIDiffError):
            raise cause from None
        raise
