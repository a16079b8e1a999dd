"""The file diffusers' community-pipeline loader reads: ``DiffusionPipeline.from_pretrained(model_dir,
custom_pipeline=vidiff.pipelines.DIFFUSERS_CUSTOM_PIPELINE)`` finds the one pipeline class defined or imported here.

Not a package module of its own: diffusers copies it into its modules cache and imports it from there.
"""

from vidiff.pipelines.vidiff_pipeline import VIDiffPipeline


__all__ = ["VIDiffPipeline"]
