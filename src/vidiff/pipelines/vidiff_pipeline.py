"""Inference: translate one clip according to a text and/or image instruction.

Inference only (no Lightning, no training code), one ``__call__``, like a diffusers pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from einops import rearrange
from PIL import Image
from tqdm.auto import tqdm

from vidiff.models.vidiff_model import VIDiffModel


SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
}


def load_model(
    checkpoint: str | os.PathLike | None = None,
    preset: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> VIDiffModel:
    """The model every command edits with: a ``vidiff-train`` model directory (loaded in ``dtype``, so diffusers
    keeps its float32-only modules in float32) or a preset from ``conf/model`` (built, then cast), on ``device``."""
    from vidiff.errors import VIDiffError

    if checkpoint is not None:
        if not os.path.isdir(checkpoint):
            raise VIDiffError(f"{checkpoint}: checkpoint is not a model directory (vidiff-train writes <run>/model)")
        model = VIDiffModel.from_pretrained(checkpoint, torch_dtype=dtype)
    else:
        from vidiff.config import load_model_preset

        model = load_model_preset(preset or "tiny")
        if dtype is not None and dtype != model.dtype:
            model = model.to(dtype=dtype)
    return model.to(device)


def make_scheduler(name: str, training_config) -> SchedulerMixin:
    """A sampler (``ddim``, ``euler_a``, ``dpmpp`` = DPM-Solver++) on the model's training noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r} (choose from: {', '.join(SCHEDULERS)})")
    return SCHEDULERS[name].from_config(training_config)


def dual_guidance(
    eps_uncond: torch.Tensor,
    eps_video: torch.Tensor,
    eps_full: torch.Tensor,
    text_guidance_scale: float,
    video_guidance_scale: float,
) -> torch.Tensor:
    """InstructPix2Pix classifier-free guidance with a source-video scale and an instruction scale.

    ``eps(∅,∅) + s_V·[eps(V,∅) − eps(∅,∅)] + s_T·[eps(V,T) − eps(V,∅)]``
    """
    return eps_uncond + video_guidance_scale * (eps_video - eps_uncond) + text_guidance_scale * (eps_full - eps_video)


@dataclass
class VIDiffPipelineOutput:
    """``frames``: ``[f, h, w, 3]`` uint8 (``output_type="np"``), ``[f, 3, h, w]`` in ``[-1, 1]`` (``"pt"``), or
    the final latents ``[1, c, f, h/8, w/8]`` (``"latent"``). ``latents``: the final (scaled) latents whatever the
    output type (long-video editing anchors the next clip on them)."""

    frames: np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None


def video_to_tensor(video) -> torch.Tensor:
    """Frames -> ``[1, 3, f, h, w]`` float in ``[-1, 1]``.

    Accepts uint8 ``[f, h, w, 3]`` (numpy or torch), a list of PIL images, or a float tensor ``[f, 3, h, w]``
    already in ``[-1, 1]``.
    """
    if isinstance(video, list | tuple):
        video = np.stack(
            [np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame) for frame in video]
        )
    if isinstance(video, np.ndarray):
        # a read-only array (e.g. a view of a decoded frame) is copied: torch cannot wrap it safely
        video = torch.from_numpy(np.ascontiguousarray(video) if video.flags.writeable else np.array(video, copy=True))
    if not isinstance(video, torch.Tensor) or video.ndim != 4:
        raise ValueError("video must be [f, h, w, 3] uint8 frames or a [f, 3, h, w] float tensor")
    if video.dtype == torch.uint8:
        if video.shape[-1] != 3:
            raise ValueError(f"uint8 video must be [f, h, w, 3], got {tuple(video.shape)}")
        video = rearrange(video, "f h w c -> c f h w").float() / 127.5 - 1.0
    else:
        if video.shape[1] != 3:
            raise ValueError(f"float video must be [f, 3, h, w] in [-1, 1], got {tuple(video.shape)}")
        video = rearrange(video.float(), "f c h w -> c f h w")
    return video.unsqueeze(0)


def image_to_tensor(image) -> torch.Tensor:
    """An image instruction -> ``[1, 3, h, w]`` float in ``[0, 1]`` (PIL, uint8 ``[h, w, 3]``, or float ``[3, h, w]``)."""
    if isinstance(image, str | os.PathLike):
        with Image.open(image) as img:
            image = img.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image, copy=True))  # PIL's arrays are read-only views
    if image.dtype == torch.uint8:
        image = rearrange(image, "h w c -> c h w").float() / 255.0
    if image.ndim == 3:
        image = image.unsqueeze(0)
    return image.float()


def pad_to_multiple(video: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``[b, c, f, h, w]`` on the bottom/right to multiples of ``multiple``; return it and the original
    ``(h, w)`` to crop back to. The border is replicated rather than zero-padded: a black band would leak into
    the edit."""
    h, w = video.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        flat = rearrange(video, "b c f h w -> (b f) c h w")
        flat = torch.nn.functional.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
        video = rearrange(flat, "(b f) c h w -> b c f h w", b=video.shape[0])
    return video, (h, w)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, f, h, w]`` in ``[-1, 1]`` -> uint8 ``[f, h, w, 3]``."""
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(video, "c f h w -> f h w c").cpu().numpy()


class VIDiffPipeline:
    """Edit a clip of F frames with a VIDiff model.

    Example::

        pipe = VIDiffPipeline.from_pretrained("outputs/model")
        frames = pipe(video, instruction="Recolor the gray video.", generator=torch.Generator().manual_seed(0)).frames

    Args:
        model: the networks (:class:`~vidiff.models.VIDiffModel`).
        scheduler: sampler name (``ddim``, ``euler_a``, ``dpmpp``) or a diffusers scheduler instance.
        vae_chunk_size: frames per VAE encode/decode call (bounds activation memory).
    """

    # what callback_on_step_end may read and replace (diffusers' name for the list)
    _callback_tensor_inputs = ("latents", "instruction_embeds", "source_latents")

    def __init__(self, model: VIDiffModel, scheduler: str | SchedulerMixin = "ddim", vae_chunk_size: int = 8):
        self.model = model.eval()
        self.scheduler = (
            make_scheduler(scheduler, model.noise_scheduler.config) if isinstance(scheduler, str) else scheduler
        )
        self.vae_chunk_size = vae_chunk_size
        self.interrupt = False  # set from callback_on_step_end to stop after the current step
        self.progress_bar_config: dict = {}
        # padded sizes must be multiples of the VAE factor (the U-Net handles any latent size itself)
        self.size_multiple = model.vae_scale_factor

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, scheduler: str = "ddim", device: str | torch.device = "cpu", torch_dtype=None
    ) -> VIDiffPipeline:
        return cls(VIDiffModel.from_pretrained(path, torch_dtype=torch_dtype).to(device), scheduler=scheduler)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options for the denoising progress bar, e.g. ``disable=True``."""
        self.progress_bar_config = kwargs

    def edit_video(self, video, instruction: str | None = None, image=None, **kwargs):
        """Edit a video of any length, streaming clip by clip (see :func:`vidiff.pipelines.long_video.edit_video`).

        ``video`` is a file path or uint8 ``[f, h, w, 3]`` frames; keyword arguments: ``output`` (mp4 path),
        ``clip_length`` (16), ``overlap`` (2 reference frames), ``size`` (working short side), ``keep_size``,
        ``max_frames``, ``masks_out``/``mask_color``, ``seed``, ``progress``, plus the sampling arguments of
        ``__call__`` (``num_inference_steps``, ``text_guidance_scale``, ``video_guidance_scale``).
        """
        from vidiff.pipelines.long_video import edit_video

        return edit_video(self, video, instruction, image, **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        video,
        instruction: str | None = None,
        image=None,
        num_inference_steps: int = 20,
        text_guidance_scale: float = 7.5,
        video_guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        strength: float = 1.0,
        step_callback: Callable[[int, int], None] | None = None,
        anchor_latents: torch.Tensor | None = None,
        anchor_fraction: float = 0.5,
        callback_on_step_end: Callable[[VIDiffPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> VIDiffPipelineOutput:
        """Translate ``video`` according to ``instruction`` (text) and/or ``image`` (a style/reference picture).

        Args:
            video: the source clip, ``[f, h, w, 3]`` uint8 or ``[f, 3, h, w]`` float in ``[-1, 1]``; any size.
            instruction: the text instruction; ``None`` with an ``image`` gives an image-only instruction.
            image: optional image instruction (path, PIL image, uint8 ``[h, w, 3]`` or float ``[3, h, w]``).
            num_inference_steps: sampler steps.
            text_guidance_scale: ``s_T``, the weight of the instruction.
            video_guidance_scale: ``s_V``, the weight of the source video.
            generator: a ``torch.Generator`` for reproducible noise (drawn on the CPU, so results do not depend on
                the device).
            latents: optional initial noise ``[1, c, f, h/8, w/8]`` (unscaled; multiplied by the sampler's sigma).
            output_type: ``"np"`` (uint8 frames), ``"pt"`` (float frames in ``[-1, 1]``) or ``"latent"``.
            strength: 1.0 (the paper's sampling) starts from pure noise; below 1 the sampler starts from the
                source latents noised to that fraction of the schedule and runs only the remaining steps
                (SDEdit-style: the output keeps more of the source's layout, and fewer steps run).
            step_callback: called as ``step_callback(done, total)`` after every denoising step (progress bars; an
                exception raised there stops the sampling at once, e.g. to cancel an edit).
            anchor_latents: clean (scaled) latents ``[1, c, n, h/8, w/8]`` for the first ``n`` frames, e.g. the previous
                clip's last frames when a long video is edited clip by clip: for the first ``anchor_fraction`` of the
                steps those frames' noisy latents are replaced by the anchor noised to the step's level (one fixed
                noise draw), so the rest of the clip is denoised around them and continues them; the later steps are
                free. Needs no training (unlike reference frames), in the spirit of InsV2V's long-video sampling
                correction.
            anchor_fraction: the fraction of the steps during which the anchor holds, in ``[0, 1]``.
            callback_on_step_end: diffusers' step-end callback, called as ``callback(pipe, step_index, timestep,
                tensors)`` after every step with ``tensors`` holding the names in ``callback_on_step_end_tensor_inputs``
                (``latents``; ``instruction_embeds``, the ``[terms, L, d]`` instruction rows of the guidance terms;
                ``source_latents``, their ``[terms, c, f, h, w]`` source rows, zeros in the unconditional one). The
                tensors it returns replace the pipeline's. Setting ``pipe.interrupt = True`` there stops the sampling
                after this step: the latents of that step are decoded and returned.
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: {unknown[0]!r} is not one of {', '.join(self._callback_tensor_inputs)}"
            )
        self.interrupt = False
        if instruction is None and image is None:
            raise ValueError("give an instruction, an image instruction, or both")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        model, device = self.model, self.device
        source = video_to_tensor(video).to(device)
        source, (height, width) = pad_to_multiple(source, self.size_multiple)

        # instruction rows: [null, null, full] for the (∅,∅), (V,∅), (V,T) predictions
        image_tensor = image_to_tensor(image).to(device) if image is not None else None
        instruction_embeds = model.encode_instruction([instruction], image_tensor)
        null_embeds = model.encode_instruction([None])
        instruction_batch = torch.cat([null_embeds, null_embeds, instruction_embeds]).to(model.unet.dtype)

        source_latents = model.encode_video(source, chunk_size=self.vae_chunk_size).to(model.unet.dtype)
        source_batch = torch.cat([torch.zeros_like(source_latents), source_latents, source_latents])

        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        shape = source_latents.shape
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif latents.shape != shape:
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        latents = latents.to(device, torch.float32)
        if strength < 1.0:
            skip = min(len(timesteps) - 1, int(round(len(timesteps) * (1.0 - strength))))
            timesteps = timesteps[skip:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(skip)
            latents = scheduler.add_noise(source_latents.float(), latents, timesteps[:1])
        else:
            latents = latents * scheduler.init_noise_sigma

        anchor_noise = None
        if anchor_latents is not None:
            if not 0.0 <= anchor_fraction <= 1.0:
                raise ValueError(f"anchor_fraction must be in [0, 1], got {anchor_fraction}")
            n = anchor_latents.shape[2]
            if anchor_latents.shape[:2] != shape[:2] or anchor_latents.shape[3:] != shape[3:] or not 0 < n <= shape[2]:
                raise ValueError(
                    f"anchor_latents must be [1, {shape[1]}, n <= {shape[2]}, {shape[3]}, {shape[4]}], "
                    f"got {tuple(anchor_latents.shape)}"
                )
            anchor_latents = anchor_latents.to(device, torch.float32)
            anchor_noise = torch.randn(anchor_latents.shape, generator=generator, dtype=torch.float32).to(device)
        anchored_steps = round(anchor_fraction * len(timesteps)) if anchor_noise is not None else 0

        # only the terms the scales weigh: s_V = 1 cancels eps(∅,∅), and s_T = s_V = 1 leaves eps(V,T) alone
        terms = 3 if video_guidance_scale != 1 else (2 if text_guidance_scale != 1 else 1)
        source_batch, instruction_batch = source_batch[-terms:], instruction_batch[-terms:]
        for index, t in enumerate(tqdm(timesteps, desc="denoising", leave=False, **self.progress_bar_config)):
            if self.interrupt:
                break
            if index < anchored_steps:
                # the anchored frames at this step's noise level, in the sampler's own parametrisation
                anchored = scheduler.add_noise(anchor_latents, anchor_noise, t.reshape(1))
                latents = torch.cat([anchored, latents[:, :, anchored.shape[2] :]], dim=2)
            model_input = scheduler.scale_model_input(latents, t).to(model.unet.dtype)
            # one batched U-Net call for all the guidance terms
            eps = model.predict_noise(torch.cat([model_input] * terms), source_batch, t, instruction_batch).float()
            if terms == 3:
                eps_uncond, eps_video, eps_full = eps.chunk(3)
                guided = dual_guidance(eps_uncond, eps_video, eps_full, text_guidance_scale, video_guidance_scale)
            elif terms == 2:
                eps_video, eps_full = eps.chunk(2)
                guided = eps_video + text_guidance_scale * (eps_full - eps_video)
            else:
                guided = eps
            latents = scheduler.step(guided, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                tensors = {"latents": latents, "instruction_embeds": instruction_batch, "source_latents": source_batch}
                returned = callback_on_step_end(
                    self, index, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                )
                latents = returned.pop("latents", latents)
                instruction_batch = returned.pop("instruction_embeds", instruction_batch)
                source_batch = returned.pop("source_latents", source_batch)
            if step_callback is not None:
                step_callback(index + 1, len(timesteps))

        if output_type == "latent":
            return VIDiffPipelineOutput(frames=latents, latents=latents)
        frames = model.decode_latents(latents.to(model.vae.dtype), chunk_size=self.vae_chunk_size)
        frames = frames[0, :, :, :height, :width].float().clamp(-1, 1)
        if output_type == "pt":
            return VIDiffPipelineOutput(frames=rearrange(frames, "c f h w -> f c h w").cpu(), latents=latents)
        return VIDiffPipelineOutput(frames=tensor_to_frames(frames), latents=latents)
