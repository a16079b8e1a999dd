"""Build a :class:`VIDiffModel` from a config: random tiny networks, or pretrained weights from local paths.

``conf/model/tiny.yaml`` and ``conf/model/sd15.yaml`` both instantiate :func:`build_vidiff_model`. Every
component section has a ``config`` (used to build random weights, or to interpret a single-file checkpoint)
and an optional ``pretrained`` path. Nothing is ever downloaded: a path that does not exist is a one-line
:class:`~vidiff.errors.ModelLoadError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from diffusers import AutoencoderKL, DDPMScheduler, MotionAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_animatediff_checkpoint_to_diffusers,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from vidiff.errors import ModelLoadError
from vidiff.models.projector import ImageInstructionProjector
from vidiff.models.tokenizer import build_clip_tokenizer
from vidiff.models.unet import inflate, widen_conv_in
from vidiff.models.vidiff_model import VIDiffModel


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (diffusers configs must be JSON-serialisable)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise ModelLoadError(f"{path}: {what} not found (set the path in conf/paths or on the command line)")
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickle checkpoint loaded with ``weights_only=True``.

    ``weights_only`` refuses arbitrary objects, so a malicious .ckpt cannot run code.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad user file
        raise ModelLoadError(f"{path}: cannot read weights ({' '.join(str(err).split())[:200]})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: not a checkpoint of tensors")
    return dict(state)


def _load_converted(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids are buffers some checkpoints carry and others do not
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ModelLoadError(f"{path}: {what} weights incomplete ({len(missing)} missing, e.g. {missing[0]})")


# ---------------------------------------------------------------------------------------------- components
def build_unet2d(section: Mapping, stable_diffusion: str | None, seed: int) -> UNet2DConditionModel:
    config = _plain(section.get("config") or {})
    if stable_diffusion is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return UNet2DConditionModel(**config)
    path = _existing(stable_diffusion, "Stable Diffusion weights")
    if path.is_dir():
        _existing(path / "unet", "U-Net folder of the Stable Diffusion directory")
        return UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    unet = UNet2DConditionModel(**config)
    state = convert_ldm_unet_checkpoint(load_state_dict_file(path), unet.config)
    _load_converted(unet, state, path, "U-Net")
    return unet


def build_vae(section: Mapping, stable_diffusion: str | None, seed: int) -> AutoencoderKL:
    config = _plain(section.get("config") or {})
    pretrained = section.get("pretrained")
    if pretrained is not None:
        return AutoencoderKL.from_pretrained(_existing(pretrained, "VAE folder"), local_files_only=True)
    if stable_diffusion is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            return AutoencoderKL(**config)
    path = _existing(stable_diffusion, "Stable Diffusion weights")
    if path.is_dir():
        _existing(path / "vae", "VAE folder of the Stable Diffusion directory")
        return AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    vae = AutoencoderKL(**config)
    state = convert_ldm_vae_checkpoint(load_state_dict_file(path), vae.config)
    _load_converted(vae, state, path, "VAE")
    return vae


def build_text_encoder(section: Mapping, stable_diffusion: str | None, seed: int) -> CLIPTextModel:
    config = _plain(section.get("config") or {})
    if stable_diffusion is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed + 2)
            return CLIPTextModel(CLIPTextConfig(**config))
    path = _existing(stable_diffusion, "Stable Diffusion weights")
    if path.is_dir():
        _existing(path / "text_encoder", "text encoder folder of the Stable Diffusion directory")
        return CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    model = CLIPTextModel(CLIPTextConfig(**config))
    state = convert_ldm_clip_checkpoint(load_state_dict_file(path))
    _load_converted(model, state, path, "text encoder")
    return model


def build_tokenizer(stable_diffusion: str | None) -> CLIPTokenizer:
    if stable_diffusion is not None:
        path = Path(stable_diffusion)
        if path.is_dir() and (path / "tokenizer").is_dir():
            return CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    # SD 1.5 uses OpenAI CLIP's tokenizer, which we can rebuild offline from open_clip's vocabulary
    return build_clip_tokenizer()


def build_motion_adapter(
    section: Mapping | None, unet2d: UNet2DConditionModel, seed: int
) -> tuple[MotionAdapter, bool]:
    """The motion adapter and whether it is fresh (and so must be zero-initialised)."""
    section = section or {}
    config = _plain(section.get("config") or {})
    config.setdefault("block_out_channels", list(unet2d.config.block_out_channels))
    config.setdefault("motion_layers_per_block", unet2d.config.layers_per_block)
    pretrained = section.get("pretrained")
    if pretrained is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed + 3)
            return MotionAdapter(**config), True
    path = _existing(pretrained, "motion adapter")
    if path.is_dir():
        return MotionAdapter.from_pretrained(path, local_files_only=True), False
    # an original AnimateDiff checkpoint (mm_sd_v15*.ckpt / .safetensors): rename keys with diffusers' converter
    original = load_state_dict_file(path)
    pe = [v for k, v in original.items() if k.endswith("pos_encoder.pe")]
    if pe:
        config["motion_max_seq_length"] = int(pe[0].shape[1])
    config["use_motion_mid_block"] = any(k.startswith("mid_block.") for k in original)
    adapter = MotionAdapter(**config)
    state = convert_animatediff_checkpoint_to_diffusers(original)
    _load_converted(adapter, state, path, "motion adapter")
    return adapter, False


def build_image_branch(
    encoder: Mapping | None, projector: Mapping | None, cross_attention_dim: int, seed: int
) -> tuple[CLIPVisionModelWithProjection | None, ImageInstructionProjector | None]:
    if encoder is None:
        return None, None
    pretrained = encoder.get("pretrained")
    if pretrained is not None:
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            _existing(pretrained, "CLIP vision encoder folder"), local_files_only=True
        )
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed + 4)
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**_plain(encoder.get("config") or {})))
    projector = _plain(projector or {})
    with torch.random.fork_rng():
        torch.manual_seed(seed + 5)
        image_projector = ImageInstructionProjector(
            image_embed_dim=image_encoder.config.projection_dim,
            cross_attention_dim=cross_attention_dim,
            hidden_dim=projector.get("hidden_dim", 1024),
            num_tokens=projector.get("num_tokens", 4),
        )
    return image_encoder, image_projector


def build_vidiff_model(
    unet: Mapping,
    vae: Mapping,
    text_encoder: Mapping,
    noise_scheduler: Mapping,
    motion_adapter: Mapping | None = None,
    image_encoder: Mapping | None = None,
    image_projector: Mapping | None = None,
    stable_diffusion: str | None = None,
    in_channels: int = 8,
    seed: int = 0,
) -> VIDiffModel:
    """Assemble a VIDiff model.

    Args:
        unet, vae, text_encoder: sections with a diffusers/transformers ``config`` (random init, or the layout of a
            single-file checkpoint); ``vae`` may also name its own ``pretrained`` folder.
        noise_scheduler: ``DDPMScheduler`` arguments (the training schedule).
        motion_adapter: ``config`` for a fresh adapter (zero-initialised) or ``pretrained``: a diffusers folder or an
            AnimateDiff ``.ckpt``/``.safetensors``.
        image_encoder, image_projector: the image-instruction branch; ``None`` leaves it out.
        stable_diffusion: a diffusers Stable Diffusion folder or single ``.safetensors``/``.ckpt``; ``None`` builds
            random weights from the configs (the tiny preset).
        in_channels: U-Net input channels after widening (8 = noisy target + source latents).
        seed: seed for every randomly initialised part, so a preset is reproducible.
    """
    if stable_diffusion is not None:
        _existing(stable_diffusion, "Stable Diffusion weights")
    unet2d = build_unet2d(unet, stable_diffusion, seed)
    widen_conv_in(unet2d, in_channels)
    adapter, fresh = build_motion_adapter(motion_adapter, unet2d, seed)
    video_unet = inflate(unet2d, adapter, zero_init=fresh)
    scheduler_config = _plain(noise_scheduler)
    scheduler_config.pop("_target_", None)
    image_enc, image_proj = build_image_branch(image_encoder, image_projector, unet2d.config.cross_attention_dim, seed)
    model = VIDiffModel(
        unet=video_unet,
        vae=build_vae(vae, stable_diffusion, seed),
        text_encoder=build_text_encoder(text_encoder, stable_diffusion, seed),
        tokenizer=build_tokenizer(stable_diffusion),
        noise_scheduler=DDPMScheduler(**scheduler_config),
        image_encoder=image_enc,
        image_projector=image_proj,
    )
    return model.eval()
