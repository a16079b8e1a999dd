"""LoRA stages: low-rank adapters (``peft``) on the U-Net's spatial and/or motion attention projections.

A stage turns them on with a config node (``stage.lora: {rank, alpha, targets}``); only the adapters (and, in v2v,
the image-instruction projector) train. The exported model directory holds the adapters merged into the U-Net's
weights: ``vidiff-edit``, the pipeline and evaluation load it as any other VIDiff model, with no peft at inference
and no extra matmuls per step (a separate adapter file would need both, for the one base model it was trained on).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from vidiff.models import VIDiffModel


# the attention projections of the spatial transformers (self + cross attention) and of the motion modules
TARGETS = {
    "spatial": r"(?:down_blocks|mid_block|up_blocks).*\.attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0)",
    "motion": r".*motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0)",
}


def lora_config(rank: int = 64, alpha: float | None = None, targets: Sequence[str] = ("spatial", "motion")):
    from peft import LoraConfig

    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise ValueError(f"lora.targets must be a non-empty subset of {sorted(TARGETS)}, got {list(targets)}")
    pattern = "|".join(f"(?:{TARGETS[t]})" for t in targets)
    return LoraConfig(r=int(rank), lora_alpha=float(alpha or rank), target_modules=pattern, init_lora_weights=True)


def add_lora(model: VIDiffModel, lora: Mapping[str, Any]) -> int:
    """Inject the adapters into ``model.unet`` (their up-projections start at zero: the model is unchanged) and
    return how many parameters they add."""
    before = sum(p.numel() for p in model.unet.parameters())
    model.unet.add_adapter(lora_config(**dict(lora)))
    return sum(p.numel() for p in model.unet.parameters()) - before


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def merged(model: VIDiffModel) -> VIDiffModel:
    """A model whose U-Net carries the adapters merged into its weights (a copy; ``model`` keeps its adapters).
    Every other network is shared, not copied."""
    unet = copy.deepcopy(model.unet)
    unet.fuse_lora()
    unet.unload_lora()
    return VIDiffModel(
        unet,
        model.vae,
        model.text_encoder,
        model.tokenizer,
        model.noise_scheduler,
        model.image_encoder,
        model.image_projector,
        source_residual=model.source_residual,
        # what the model is besides its weights travels too: a LoRA on InstructPix2Pix stays unscaled
        conditioning=model.conditioning,
        reference_frames=model.reference_frames,
    ).eval()
