"""Build a :class:`VIDiffModel` from a config: random tiny networks, or pretrained weights from local paths.

``conf/model/tiny.yaml`` and ``conf/model/sd15.yaml`` both instantiate :func:`build_vidiff_model`. Every
component section has a ``config`` (used to build random weights, or to interpret a single-file checkpoint)
and an optional ``pretrained`` path. Nothing is ever downloaded: a path that does not exist is a one-line
:class:`~vidiff.errors.ModelLoadError` naming it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

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

from vidiff.config import to_plain as _plain
from vidiff.errors import ModelLoadError, VIDiffError
from vidiff.models.projector import ImageInstructionProjector
from vidiff.models.tokenizer import build_clip_tokenizer
from vidiff.models.unet import inflate, widen_conv_in
from vidiff.models.vidiff_model import CONDITIONINGS, VIDiffModel


T = TypeVar("T")
log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------- single files
UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."


def _scaled(channels: list[int], base: int) -> list[int]:
    """``channels`` with the same multipliers over a first width of ``base`` (SD-1's 1, 2, 4, 4)."""
    return [c * base // channels[0] for c in channels]


def single_file_configs(
    state: Mapping[str, torch.Tensor], unet: dict, vae: dict, text: dict
) -> tuple[dict, dict, dict]:
    """The U-Net, VAE and text-encoder configs of an SD-1 single file, widths read from its tensors.

    The released layout fixes the key names and the depth; the widths (and the text encoder's depth) are taken
    from the file, so a reduced-width file with the real names loads as well as the 4 GB release.
    """
    unet, vae, text = dict(unet), dict(vae), dict(text)
    conv_in = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        unet["block_out_channels"] = _scaled(list(unet["block_out_channels"]), int(conv_in.shape[0]))
        unet["in_channels"] = int(conv_in.shape[1])
        to_k = [v for k, v in state.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")]
        if to_k:
            unet["cross_attention_dim"] = int(to_k[0].shape[1])
    vae_in = state.get(VAE_PREFIX + "encoder.conv_in.weight")
    if vae_in is not None:
        vae["block_out_channels"] = _scaled(list(vae["block_out_channels"]), int(vae_in.shape[0]))
        post_quant = state.get(VAE_PREFIX + "post_quant_conv.weight")
        if post_quant is not None:
            vae["latent_channels"] = int(post_quant.shape[0])
    tokens = state.get(TEXT_PREFIX + "text_model.embeddings.token_embedding.weight")
    if tokens is not None:
        text["vocab_size"], text["hidden_size"] = (int(n) for n in tokens.shape)
        positions = state[TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"]
        text["max_position_embeddings"] = int(positions.shape[0])
        fc1 = state.get(TEXT_PREFIX + "text_model.encoder.layers.0.mlp.fc1.weight")
        if fc1 is not None:
            text["intermediate_size"] = int(fc1.shape[0])
        layers = {
            m.group(1)
            for k in state
            if (m := re.match(re.escape(TEXT_PREFIX) + r"text_model\.encoder\.layers\.(\d+)\.", k))
        }
        text["num_hidden_layers"] = len(layers)
        text["projection_dim"] = text["hidden_size"]
        if text["hidden_size"] % int(text.get("num_attention_heads", 1)):
            text["num_attention_heads"] = max(1, text["hidden_size"] // 64)  # CLIP's head width
    return unet, vae, text


def _load_converted(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    own = model.state_dict()
    if not any(k.startswith("text_model.") for k in own):
        # transformers 5 names CLIPTextModel's weights without the "text_model." that LDM files (and diffusers'
        # converter, which strips only the LDM prefix) carry
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    shapes = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        k = shapes[0]
        raise ModelLoadError(
            f"{path}: {what} weights do not fit ({len(shapes)} tensors of another shape, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)"
        )
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
    state: dict[str, torch.Tensor] | None = None,
) -> T:
    """One Stable Diffusion component: random weights (``stable_diffusion is None``), the ``subfolder`` of a diffusers
    folder, or a single-file checkpoint (``state``, if already read) whose keys ``convert`` maps into the model
    ``make()`` builds from the config."""
    if stable_diffusion is None:
        return _seeded(seed, make)
    path = _existing(stable_diffusion, "Stable Diffusion weights")
    if path.is_dir():
        _existing(path / subfolder, f"{what} folder of the Stable Diffusion directory")
        return model_class.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    model = make()
    _load_converted(model, convert(state if state is not None else load_state_dict_file(path), model), path, what)
    return model


def build_unet2d(
    section: Mapping, stable_diffusion: str | None, seed: int, state: dict | None = None
) -> UNet2DConditionModel:
    config = _plain(section.get("config") or {})
    return _sd_component(
        lambda: UNet2DConditionModel(**config),
        UNet2DConditionModel,
        lambda state, unet: convert_ldm_unet_checkpoint(state, unet.config),
        "unet",
        "U-Net",
        stable_diffusion,
        seed,
        state,
    )


def build_vae(section: Mapping, stable_diffusion: str | None, seed: int, state: dict | None = None) -> AutoencoderKL:
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
        state,
    )


def build_text_encoder(
    section: Mapping, stable_diffusion: str | None, seed: int, state: dict | None = None
) -> CLIPTextModel:
    config = _plain(section.get("config") or {})
    return _sd_component(
        lambda: CLIPTextModel(CLIPTextConfig(**config)),
        CLIPTextModel,
        lambda state, _: convert_ldm_clip_checkpoint(state),
        "text_encoder",
        "text encoder",
        stable_diffusion,
        seed + 2,
        state,
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
    state.update(_positional_buffers(original, path))
    _load_converted(adapter, state, path, "motion adapter")
    return adapter, False


def _positional_buffers(original: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """AnimateDiff files give each of a block's two attentions a ``pos_encoder.pe`` table; diffusers keeps one
    ``pos_embed.pe`` per transformer block (its converter drops them). Both tables of a block must agree."""
    tables: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        match = re.match(
            r"(.*)\.temporal_transformer\.(transformer_blocks\.\d+)\.attention_blocks\.\d+\.pos_encoder\.pe$", key
        )
        if match is None:
            continue
        name = f"{match.group(1)}.{match.group(2)}.pos_embed.pe"
        if name in tables and not torch.equal(tables[name], value):
            raise ModelLoadError(f"{path}: the positional tables of {match.group(1)} differ between its attentions")
        tables[name] = value
    return tables


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


# Stable Diffusion's DDPM training schedule: what a model config's ``noise_scheduler`` key left ``null`` means when
# no previous stage's model gives it (vidiff.training.runs takes these keys from ``stage.init_from``)
SCHEDULE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "timestep_spacing": "leading",
}


def build_noise_scheduler(section: Mapping, stable_diffusion: str | None) -> DDPMScheduler:
    """The training noise schedule: the preset's ``noise_scheduler`` section, over the ``scheduler/`` config of a
    diffusers Stable Diffusion folder when there is one.

    The release's file brings the sampler settings its authors sampled with (``set_alpha_to_one``,
    ``timestep_spacing``, ...), which samplers derived from this schedule then share with diffusers' own pipeline
    on the same folder; the preset's non-null keys win where both set one. Without such a file, a ``null`` key
    takes Stable Diffusion's value (:data:`SCHEDULE_DEFAULTS`).
    """
    config = {k: v for k, v in _plain(section).items() if v is not None and k != "_target_"}
    released = Path(stable_diffusion) / "scheduler" / "scheduler_config.json" if stable_diffusion else None
    if released is None or not released.is_file():
        return DDPMScheduler(**{**SCHEDULE_DEFAULTS, **config})
    try:
        release = json.loads(released.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{released}: unreadable scheduler config ({err})") from None
    # keys neither sets keep diffusers' defaults (and samplers made from this schedule their own), as diffusers'
    # pipeline on the same folder has them
    return DDPMScheduler.from_config({**{k: v for k, v in release.items() if not k.startswith("_")}, **config})


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
    source_residual: bool | None = False,
    conditioning: str | None = None,
) -> VIDiffModel:
    """Assemble a VIDiff model.

    Args:
        unet, vae, text_encoder: sections with a diffusers/transformers ``config`` (random init, or the layout of a
            single-file checkpoint); ``vae`` may also name its own ``pretrained`` folder.
        noise_scheduler: ``DDPMScheduler`` arguments (the training schedule); a key left ``None`` takes Stable
            Diffusion's value (:data:`SCHEDULE_DEFAULTS`).
        motion_adapter: ``config`` for a fresh adapter (zero-initialised) or ``pretrained``: a diffusers folder or an
            AnimateDiff ``.ckpt``/``.safetensors``.
        image_encoder, image_projector: the image-instruction branch; ``None`` leaves it out.
        stable_diffusion: a diffusers Stable Diffusion folder or single ``.safetensors``/``.ckpt``; ``None`` builds
            random weights from the configs (the tiny preset).
        in_channels: U-Net input channels after widening (8 = noisy target + source latents).
        seed: seed for every randomly initialised part, so a preset is reproducible.
        source_residual: predict clean latents as source latents + U-Net output (see :class:`VIDiffModel`).
        conditioning: ``"scaled"`` or ``"unscaled"`` source latents (see :class:`VIDiffModel`); ``None`` (the presets'
            default) reads it off the weights: a ``stable_diffusion`` U-Net that already has ``in_channels`` input
            channels is an InstructPix2Pix release, trained on unscaled source latents, so it gets ``"unscaled"``;
            anything else (SD-1.5 widened from 4 channels, random weights) gets ``"scaled"``, VIDiff's own convention.
    """
    schedule = build_noise_scheduler(noise_scheduler, stable_diffusion)
    source_residual = bool(source_residual)
    prediction_type = schedule.config.prediction_type
    if source_residual and prediction_type != "sample":
        raise VIDiffError(
            "model.source_residual=true needs model.noise_scheduler.prediction_type=sample (the U-Net's output is "
            f"then a clean-latent estimate), not {prediction_type!r}"
        )
    state = None
    if stable_diffusion is not None and _existing(stable_diffusion, "Stable Diffusion weights").is_file():
        # one read of the single file for all three components; their widths come from its tensors
        state = load_state_dict_file(stable_diffusion)
        configs = single_file_configs(
            state,
            _plain(unet.get("config") or {}),
            _plain(vae.get("config") or {}),
            _plain(text_encoder.get("config") or {}),
        )
        unet, vae, text_encoder = (
            {**_plain(section), "config": config} for section, config in zip((unet, vae, text_encoder), configs)
        )
    if conditioning is not None and conditioning not in CONDITIONINGS:
        raise VIDiffError(
            f"model.conditioning must be one of {', '.join(CONDITIONINGS)} or null, not {conditioning!r}"
        )
    unet2d = build_unet2d(unet, stable_diffusion, seed, state)
    # released weights whose U-Net already takes the source channels were trained as InstructPix2Pix
    pretrained_ip2p = stable_diffusion is not None and unet2d.config.in_channels == in_channels
    if conditioning is None:
        conditioning = "unscaled" if pretrained_ip2p else "scaled"
        if pretrained_ip2p:
            log.info("%s: %d-channel U-Net (InstructPix2Pix): unscaled source latents", stable_diffusion, in_channels)
    widen_conv_in(unet2d, in_channels)
    adapter, fresh = build_motion_adapter(motion_adapter, unet2d, seed)
    video_unet = inflate(unet2d, adapter, zero_init=fresh)
    image_enc, image_proj = build_image_branch(image_encoder, image_projector, unet2d.config.cross_attention_dim, seed)
    model = VIDiffModel(
        unet=video_unet,
        vae=build_vae(vae, stable_diffusion, seed, state),
        text_encoder=build_text_encoder(text_encoder, stable_diffusion, seed, state),
        tokenizer=build_tokenizer(stable_diffusion),
        noise_scheduler=schedule,
        image_encoder=image_enc,
        image_projector=image_proj,
        source_residual=source_residual,
        conditioning=conditioning,
        # released InstructPix2Pix weights never saw reference frames; other built models have not been trained yet
        reference_frames=() if pretrained_ip2p else None,
    )
    return model.eval()
