"""Build a :class:`VIDiffModel` from a config: random tiny networks, or pretrained weights from local paths.

``conf/model/tiny.yaml`` and ``conf/model/sd15.yaml`` both instantiate :func:`build_vidiff_model`. Every
component section has a ``config`` (used to build random weights, or to interpret a single-file checkpoint)
and an optional ``pretrained`` path. Nothing is ever downloaded: a path that does not exist is a one-line
:class:`~vidiff.errors.ModelLoadError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

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


T = TypeVar("T")


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
def _seeded(seed: int, make: Callable[[], T]) -> T:
    """Build random weights from ``seed`` without disturbing the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def _sd_component(
    make: Callable[[], T],
    model_class,
    convert: Callable[[dict, T], dict],
    subfolder: str,
    what: str,
    stable_diffusion: str | None,
    seed: int,
) -> T:
    """One Stable Diffusion component: random weights (``stable_diffusion is None``), the ``subfolder`` of a diffusers
    folder, or a single-file checkpoint whose keys ``convert`` maps into the model ``make()`` builds from the config."""
    if stable_diffusion is None:
        return _seeded(seed, make)
    path = _existing(stable_diffusion, "Stable Diffusion weights")
    if path.is_dir():
        _existing(path / subfolder, f"{what} folder of the Stable Diffusion directory")
        return model_class.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    model = make()
    _load_converted(model, convert(load_state_dict_file(path), model), path, what)
    return model


def build_unet2d(section: Mapping, stable_diffusion: str | None, seed: int) -> UNet2DConditionModel:
    config = _plain(section.get("config") or {})
    return _sd_component(
        lambda: UNet2DConditionModel(**config),
        UNet2DConditionModel,
        lambda state, unet: convert_ldm_unet_checkpoint(state, unet.config),
        "unet",
        "U-Net",
        stable_diffusion,
        seed,
    )


def build_vae(section: Mapping, stable_diffusion: str | None, seed: int) -> AutoencoderKL:
    pretrained = section.get("pretrained")
    if pretrained is not None:
        return AutoencoderKL.from_pretrained(_existing(pretrained, "VAE folder"), local_files_only=True)
    config = _plain(section.get("config") or {})
    return _sd_component(
        lambda: AutoencoderKL(**config),
        AutoencoderKL,
        lambda state, vae: convert_ldm_vae_checkpoint(state, vae.config),
        "vae",
        "VAE",
        stable_diffusion,
        seed + 1,
    )


def build_text_encoder(section: Mapping, stable_diffusion: str | None, seed: int) -> CLIPTextModel:
    config = _plain(section.get("config") or {})
    return _sd_component(
        lambda: CLIPTextModel(CLIPTextConfig(**config)),
        CLIPTextModel,
        lambda state, _: convert_ldm_clip_checkpoint(state),
        "text_encoder",
        "text encoder",
        stable_diffusion,
        seed + 2,
    )


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
        return _seeded(seed + 3, lambda: MotionAdapter(**config)), True
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
        vision_config = CLIPVisionConfig(**_plain(encoder.get("config") or {}))
        image_encoder = _seeded(seed + 4, lambda: CLIPVisionModelWithProjection(vision_config))
    projector = _plain(projector or {})
    image_projector = _seeded(
        seed + 5,
        lambda: ImageInstructionProjector(
            image_embed_dim=image_encoder.config.projection_dim,
            cross_attention_dim=cross_attention_dim,
            hidden_dim=projector.get("hidden_dim", 1024),
            num_tokens=projector.get("num_tokens", 4),
        ),
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
