"""VIDiff networks (plain ``nn.Module``s; no Lightning here)."""

from vidiff.models.build import build_vidiff_model, load_state_dict_file
from vidiff.models.projector import ImageInstructionProjector
from vidiff.models.tokenizer import build_clip_tokenizer
from vidiff.models.unet import inflate, is_temporal_parameter, widen_conv_in, zero_init_motion
from vidiff.models.vidiff_model import VIDiffModel


__all__ = [
    "ImageInstructionProjector",
    "VIDiffModel",
    "build_clip_tokenizer",
    "build_vidiff_model",
    "inflate",
    "is_temporal_parameter",
    "load_state_dict_file",
    "widen_conv_in",
    "zero_init_motion",
]
