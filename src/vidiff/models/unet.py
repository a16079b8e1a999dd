"""The video U-Net: an 8-channel Stable Diffusion U-Net inflated with AnimateDiff motion modules.

Built from diffusers parts only: ``UNet2DConditionModel`` -> ``conv_in`` widened from 4 to 8 input channels
(noisy target latents + source-video latents, InstructPix2Pix) -> ``UNetMotionModel.from_unet2d`` with a
``MotionAdapter``. A fresh adapter has every temporal ``proj_out`` zeroed so the video network starts equal
to the per-frame image network.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Give ``unet`` ``in_channels`` input channels; the new ones start at zero, old weights and bias are kept.

    With zeroed extra inputs the widened U-Net computes exactly what the original one did.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if in_channels < old.in_channels:
        raise ValueError(f"cannot shrink conv_in from {old.in_channels} to {in_channels} channels")
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, device=old.weight.device
    ).to(old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        # the InstructPix2Pix example in diffusers forgets the bias; the original IP2P keeps it
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def motion_modules(unet: UNetMotionModel) -> list[AnimateDiffTransformer3D]:
    """Every temporal transformer (down, mid and up blocks)."""
    return [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]


def zero_init_motion(unet: UNetMotionModel) -> UNetMotionModel:
    """Zero each temporal layer's output projection: the temporal residual branch then adds nothing."""
    with torch.no_grad():
        for module in motion_modules(unet):
            module.proj_out.weight.zero_()
            if module.proj_out.bias is not None:
                module.proj_out.bias.zero_()
    return unet


def inflate(
    unet: UNet2DConditionModel,
    motion_adapter: MotionAdapter,
    zero_init: bool,
) -> UNetMotionModel:
    """Turn a (possibly widened) 2D U-Net into a ``UNetMotionModel`` carrying ``motion_adapter``'s layers."""
    # from_unet2d ends with `model.to(unet.dtype)`, which makes diffusers log its "modules that should be kept in
    # float32: []" notice even though nothing is cast; that notice is third-party noise, so it is muted here only
    from diffusers.utils import logging as diffusers_logging

    logger = diffusers_logging.get_logger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(diffusers_logging.ERROR)
    try:
        video_unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
    finally:
        logger.setLevel(level)
    if zero_init:
        zero_init_motion(video_unet)
    return video_unet


def is_temporal_parameter(name: str) -> bool:
    """True for parameters of the motion modules (what stage 2 trains)."""
    return "motion_modules." in name


def checkpoint_motion_modules(unet: UNetMotionModel) -> int:
    """Recompute the down and up blocks' motion modules in the backward pass, as diffusers' gradient checkpointing
    does for their resnets and spatial attentions (it leaves these motion modules out; the mid block's it covers).

    Returns how many modules were wrapped. The results are unchanged: only what is kept for backward differs.
    """
    wrapped = 0
    for name, module in unet.named_modules():
        if not isinstance(module, AnimateDiffTransformer3D) or not name.startswith(("down_blocks.", "up_blocks.")):
            continue
        if getattr(module, "_vidiff_checkpointed", False):
            continue

        def forward(*args, _forward=module.forward, **kwargs):
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        module.forward = forward
        module._vidiff_checkpointed = True
        wrapped += 1
    return wrapped
