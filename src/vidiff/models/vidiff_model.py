"""VIDiffModel: every network the VIDiff diffusion model needs, as one training-side ``nn.Module``.

On disk a model is a diffusers pipeline directory written by :class:`vidiff.pipelines.VIDiffPipeline` (one subfolder
per component, weights as safetensors, the settings below in ``model_index.json``); the pipeline wraps the same
networks and calls this module's ``encode_instruction``, ``encode_video`` and ``predict_noise``, so training and
sampling share them. Save with :func:`vidiff.pipelines.save_model`, load with :func:`vidiff.pipelines.load_model`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNetMotionModel
from einops import rearrange
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from vidiff.models.projector import ImageInstructionProjector


# how the source latents enter the U-Net (see VIDiffModel)
CONDITIONINGS = ("scaled", "unscaled")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VIDiffModel(nn.Module):
    """The VIDiff networks: video U-Net, VAE, CLIP text encoder + tokenizer, CLIP vision encoder + projector.

    Args:
        unet: 8-channel ``UNetMotionModel`` predicting epsilon from ``[noisy target latents, source latents]``.
        vae: ``AutoencoderKL`` shared by source and target videos.
        text_encoder, tokenizer: CLIP text side; the instruction starts with its 77 token embeddings.
        noise_scheduler: the DDPM schedule the model is trained with (samplers are derived from its config).
        image_encoder, image_projector: optional image-instruction branch; its tokens follow the text tokens.
        source_residual: the U-Net predicts the clean target latents as ``source latents + its output`` (only with
            ``prediction_type="sample"``). For restoration the target is close to the source, so the network
            only has to learn the change (an all-zero output copies the source); the plain paper model
            (``False``) must first learn to carry every detail of the source through the whole U-Net.
        conditioning: how the source latents enter the U-Net beside the noisy target latents. ``"scaled"``: multiplied
            by the VAE's ``scaling_factor``, like the target latents (every model VIDiff trained before this
            setting existed). ``"unscaled"``: the VAE posterior's mode as it is, InstructPix2Pix's convention (its
            released weights, InsV2V and diffusers' ``StableDiffusionInstructPix2PixPipeline`` all concatenate
            ``latent_dist.mode()`` unscaled); a model built on InstructPix2Pix weights must keep it, or every edit is
            silently wrong. Callers always pass *scaled* source latents; :meth:`predict_noise` converts.
        reference_frames: the reference-frame counts ("Based on the first n frames,") the model was trained to
            continue from: ``()`` if it never was (released InstructPix2Pix weights; a V2V stage without
            long-video samples), ``None`` if unknown (built from configs, or saved before this was recorded). Long-video
            editing picks its scheme from it (:mod:`vidiff.pipelines.long_video`).
    """

    def __init__(
        self,
        unet: UNetMotionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        noise_scheduler: DDPMScheduler,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        image_projector: ImageInstructionProjector | None = None,
        source_residual: bool = False,
        conditioning: str = "scaled",
        reference_frames: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if (image_encoder is None) != (image_projector is None):
            raise ValueError("image_encoder and image_projector go together")
        if source_residual and noise_scheduler.config.prediction_type != "sample":
            raise ValueError(
                "source_residual needs noise_scheduler.prediction_type=sample (the output is a clean-latent "
                f"estimate), not {noise_scheduler.config.prediction_type!r}"
            )
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, not {conditioning!r}")
        self.source_residual = bool(source_residual)
        self.conditioning = conditioning
        self.reference_frames = None if reference_frames is None else tuple(int(n) for n in reference_frames)
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.image_projector = image_projector
        self.tokenizer = tokenizer
        self.noise_scheduler = noise_scheduler

    # ---------------------------------------------------------------- properties
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def num_image_tokens(self) -> int:
        return 0 if self.image_projector is None else self.image_projector.config.num_tokens

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ---------------------------------------------------------------- instruction
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """``len(prompts)`` strings -> ``[b, 77, d]`` CLIP token embeddings (``""`` is the null instruction)."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        input_ids = tokens.input_ids.to(self.text_encoder.device)
        return self.text_encoder(input_ids).last_hidden_state

    def preprocess_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, h, w]`` in ``[0, 1]`` -> CLIP's input: resize the short side, center crop, normalise.

        Done in torch (no PIL round trip) so it also runs on batches on the GPU.
        """
        size = self.image_encoder.config.image_size
        h, w = images.shape[-2:]
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        images = nn.functional.interpolate(images, (new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        images = images[..., top : top + size, left : left + size].clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, h, w]`` in ``[0, 1]`` -> ``[b, num_image_tokens, d]`` instruction tokens."""
        if self.image_encoder is None:
            raise ValueError("this model has no image-instruction branch")
        pixels = self.preprocess_image(images.to(self.image_encoder.device, self.image_encoder.dtype))
        image_embeds = self.image_encoder(pixel_values=pixels).image_embeds
        return self.image_projector(image_embeds.to(self.image_projector.dtype))

    def encode_instruction(
        self,
        prompts: list[str | None],
        images: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The instruction embedding ``[b, 77 + k, d]``: text tokens followed by image tokens.

        A missing text is the empty prompt; a missing image (``images is None`` or ``image_mask[i] == False``)
        gives ``k`` zero tokens. Models with an image branch always emit ``77 + k`` tokens so that every
        combination (text only, image only, both, neither) batches together, in training and in sampling.
        """
        text = self.encode_text(["" if p is None else p for p in prompts])
        if self.image_projector is None:
            if images is not None:
                raise ValueError("an image instruction was given but this model has no image branch")
            return text
        b, k, d = len(prompts), self.num_image_tokens, text.shape[-1]
        image_tokens = torch.zeros(b, k, d, device=text.device, dtype=text.dtype)
        if images is not None:
            tokens = self.encode_image(images).to(text.dtype)
            if image_mask is not None:
                tokens = tokens * image_mask.to(tokens.device, tokens.dtype).view(-1, 1, 1)
            image_tokens = tokens.expand(b, k, d) if tokens.shape[0] == 1 else tokens
        return torch.cat([text, image_tokens], dim=1)

    # ---------------------------------------------------------------- latents
    def encode_video(self, video: torch.Tensor, chunk_size: int = 8, sample: bool = False, generator=None):
        """``[b, 3, f, h, w]`` in ``[-1, 1]`` -> scaled latents ``[b, c, f, h/8, w/8]``, ``chunk_size`` frames at a time."""
        b = video.shape[0]
        frames = rearrange(video, "b c f h w -> (b f) c h w").to(self.vae.device, self.vae.dtype)
        latents = []
        for chunk in frames.split(chunk_size):
            dist = self.vae.encode(chunk).latent_dist
            latents.append(dist.sample(generator) if sample else dist.mode())
        latents = torch.cat(latents) * self.vae.config.scaling_factor
        return rearrange(latents, "(b f) c h w -> b c f h w", b=b)

    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """Scaled latents ``[b, c, f, h, w]`` -> video ``[b, 3, f, 8h, 8w]`` in ``[-1, 1]`` (chunked decode)."""
        b = latents.shape[0]
        flat = rearrange(latents, "b c f h w -> (b f) c h w") / self.vae.config.scaling_factor
        frames = [self.vae.decode(chunk.to(self.vae.dtype)).sample for chunk in flat.split(chunk_size)]
        return rearrange(torch.cat(frames), "(b f) c h w -> b c f h w", b=b)

    def predict_noise(
        self, noisy_latents: torch.Tensor, source_latents: torch.Tensor, timesteps, instruction: torch.Tensor
    ) -> torch.Tensor:
        """The scheduler's prediction (epsilon, v or x0, per ``noise_scheduler.prediction_type``) for ``[b, 4, f, h, w]``
        noisy target latents given the (scaled) source latents and instruction ``[b, L, d]``."""
        f = noisy_latents.shape[2]
        condition = source_latents
        if self.conditioning == "unscaled":
            condition = source_latents / self.vae.config.scaling_factor
        model_input = torch.cat([noisy_latents, condition], dim=1)
        # UNetMotionModel wants the text states once per frame: [(b f), L, d]
        states = instruction.repeat_interleave(f, dim=0)
        prediction = self.unet(model_input, timesteps, encoder_hidden_states=states).sample
        if self.source_residual:
            # a dropped source (zeros, the unconditional branch of guidance) adds nothing
            prediction = prediction + source_latents.to(prediction.dtype)
        return prediction
