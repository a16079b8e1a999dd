"""Inference pipelines (no Lightning)."""

from vidiff.pipelines.vidiff_pipeline import (
    SCHEDULERS,
    VIDiffPipeline,
    VIDiffPipelineOutput,
    dual_guidance,
    load_model,
    make_scheduler,
)


__all__ = ["SCHEDULERS", "VIDiffPipeline", "VIDiffPipelineOutput", "dual_guidance", "load_model", "make_scheduler"]
