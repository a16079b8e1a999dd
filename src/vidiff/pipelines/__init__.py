"""Inference pipelines (no Lightning)."""

from vidiff.pipelines.vidiff_pipeline import (
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


__all__ = [
    "DIFFUSERS_CUSTOM_PIPELINE", "SCHEDULERS", "VIDiffPipeline", "VIDiffPipelineOutput", "dual_guidance",
    "load_model", "load_pipeline", "make_scheduler", "record_sampling", "save_model",
]  # fmt: skip
