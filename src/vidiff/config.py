"""Locate and compose the project's Hydra configs (``conf/``) outside a Hydra app."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vidiff.errors import VIDiffError


def to_plain(value: Any) -> Any:
    """OmegaConf containers (and mappings holding them) -> plain dicts/lists, e.g. for JSON-serialisable
    diffusers configs."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def conf_dir() -> Path:
    """The ``conf/`` folder: ``$VIDIFF_CONF_DIR`` if set, else the one installed with the package
    (``vidiff/conf`` in a wheel), else the checkout's top-level ``conf/`` (an editable install).

    A user's own configs extend or override these without copying them: ``vidiff-train --config-dir my_conf``
    puts ``my_conf/`` on Hydra's search path ahead of the package's configs.
    """
    env = os.environ.get("VIDIFF_CONF_DIR")
    here = Path(__file__).resolve().parent
    candidates = [Path(env)] if env else [here / "conf", here.parents[1] / "conf"]
    for path in candidates:
        if (path / "model").is_dir():
            return path
    raise VIDiffError(
        f"{candidates[0]}: VIDiff config folder not found (reinstall vidiff, or set VIDIFF_CONF_DIR to a conf/ folder)"
    )


def model_presets() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def compose_config(config_name: str | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a config from ``conf/`` outside a Hydra app (``config_name``: e.g. ``"eval"``; ``None``: only the
    overrides), as the console script with the same overrides would see it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def compose_model_config(preset: str = "tiny", overrides: Sequence[str] = ()) -> DictConfig:
    """The ``model`` node of ``conf/model/<preset>.yaml`` with ``paths`` resolved."""
    if preset not in model_presets():
        raise VIDiffError(f"unknown model preset {preset!r} (choose from: {', '.join(model_presets())})")
    return compose_config(None, [f"+model={preset}", "+paths=default", *overrides]).model


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
