"""Inference pipelines (no Lightning).

The names below load on first use (PEP 562): ``vidiff.pipelines.checks`` and ``vidiff.pipelines.long_video`` can be
imported without torch and diffusers, so command lines check their arguments before the heavy imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


_EXPORTS = {
    "DIFFUSERS_CUSTOM_PIPELINE": "vidiff.pipelines.vidiff_pipeline",
    "SCHEDULERS": "vidiff.pipelines.vidiff_pipeline",
    "VIDiffPipeline": "vidiff.pipelines.vidiff_pipeline",
    "VIDiffPipelineOutput": "vidiff.pipelines.vidiff_pipeline",
    "dual_guidance": "vidiff.pipelines.vidiff_pipeline",
    "load_model": "vidiff.pipelines.vidiff_pipeline",
    "load_pipeline": "vidiff.pipelines.vidiff_pipeline",
    "make_scheduler": "vidiff.pipelines.vidiff_pipeline",
    "record_sampling": "vidiff.pipelines.vidiff_pipeline",
    "save_model": "vidiff.pipelines.vidiff_pipeline",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from vidiff.pipelines.vidiff_pipeline import (  # noqa: F401
        DIFFUSERS_CUSTOM_PIPELINE,
        SCHEDULERS,
        VIDiffPipeline,
        VIDiffPipelineOutput,
        dual_guidance,
        load_model,
        load_pipeline,
        make_scheduler,
        record_sampling,
        save_model,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vidiff.pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
