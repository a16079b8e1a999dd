"""Inference: translate clips according to a text and/or image instruction.

:class:`VIDiffPipeline` is a diffusers ``DiffusionPipeline``: its networks are registered components, so
``save_pretrained``/``from_pretrained`` write and read a standard ``model_index.json``, and diffusers' memory tools
(``enable_model_cpu_offload``, ``enable_sequential_cpu_offload``, VAE slicing and tiling) and step-end callbacks
work as they do for any diffusers pipeline. Inference only (no Lightning, no training code), one ``__call__``.

The on-disk model format is the pipeline's (format 3); :func:`save_model`/:func:`load_model` are what training,
data preparation and evaluation use. Directories written in formats 1 and 2 (``_class_name: VIDiffModel``) still
load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    UNetMotionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from vidiff.errors import ModelLoadError, VIDiffError, writing
from vidiff.models.projector import ImageInstructionProjector
from vidiff.models.vidiff_model import CONDITIONINGS, VIDiffModel
from vidiff.pipelines.checks import check_sampling
from vidiff.utils.files import publish
from vidiff.utils.frames import image_to_tensor, pad_to_multiple, tensor_to_frames, video_to_tensor


# 3: a diffusers pipeline directory (`_class_name: VIDiffPipeline`, one [library, class] entry per component, the
# model's settings as pipeline config); 1 and 2: VIDiff's own index (`_class_name: VIDiffModel`), read by
# `_load_legacy` (2 added the conditioning convention; a format-1 model was trained on scaled source latents)
FORMAT_VERSION = 3
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
}
# what a model may record about how it is best used (pipeline config `sampling`, see VIDiffPipeline)
SAMPLING_KEYS = ("size", "scheduler", "num_inference_steps", "text_guidance_scale", "video_guidance_scale")
# where the file diffusers' community-pipeline loader wants lives: DiffusionPipeline.from_pretrained(dir,
# custom_pipeline=DIFFUSERS_CUSTOM_PIPELINE)
DIFFUSERS_CUSTOM_PIPELINE = str(Path(__file__).with_name("diffusers_custom") / "pipeline.py")
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "image_projector")


def make_scheduler(name: str, training_config) -> SchedulerMixin:
    """A sampler (``ddim``, ``euler_a``, ``dpmpp`` = DPM-Solver++) on the model's training noise schedule."""
    if name not in SCHEDULERS:
        raise VIDiffError(f"unknown scheduler {name!r} (choose from: {', '.join(SCHEDULERS)})")
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
class VIDiffPipelineOutput(BaseOutput):
    """``frames``: for one clip, ``[f, h, w, 3]`` uint8 (``output_type="np"``), ``[f, 3, h, w]`` in ``[-1, 1]``
    (``"pt"``); for a list of clips the same with a leading batch dimension; ``"latent"``: the final latents
    ``[b, c, f, h/8, w/8]``.
    ``latents``: the final (scaled) latents ``[b, c, f, h/8, w/8]`` whatever the output type (long-video editing
    anchors the next clip on them)."""

    frames: np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None


def _is_clip_list(video) -> bool:
    """A list of clips (each ``[f, h, w, 3]``/``[f, 3, h, w]`` or a list of frames), not one clip given as frames."""
    if isinstance(video, np.ndarray | torch.Tensor):
        return video.ndim == 5
    if isinstance(video, list | tuple) and len(video) > 0:
        first = video[0]
        return isinstance(first, list | tuple) or getattr(first, "ndim", 0) == 4
    return False


def _per_clip(value, n: int, what: str) -> list:
    """``value`` for each of ``n`` clips: a list of ``n``, or one value for all."""
    if isinstance(value, list | tuple) and not isinstance(value, str):
        if len(value) != n:
            raise VIDiffError(f"{len(value)} {what}s for {n} clips: give one {what} per clip, or one for all")
        return list(value)
    return [value] * n


class VIDiffPipeline(DiffusionPipeline):
    """Edit clips of F frames with a VIDiff model.

    Example::

        pipe = VIDiffPipeline.from_pretrained("outputs/model", torch_dtype=torch.float16).to("cuda")
        frames = pipe(video, "Recolor the gray video.", generator=torch.Generator().manual_seed(0)).frames

    Components: ``unet`` (8-channel ``UNetMotionModel``), ``vae``, ``text_encoder`` + ``tokenizer`` (CLIP), the
    sampler ``scheduler`` (any diffusers scheduler made ``from_config`` of the model's; the training noise schedule
    travels in its config) and, for models with an image-instruction branch, ``image_encoder`` + ``image_projector``.

    Config (what is not a network; saved in ``model_index.json``):
        source_residual: the U-Net predicts the clean target latents as ``source latents + output``.
        conditioning: ``"scaled"`` or ``"unscaled"`` source latents beside the noisy ones (see
            :class:`~vidiff.models.VIDiffModel`).
        reference_frames: the reference-frame counts the model learned to continue from (``[]`` never; ``None``
            unknown); long-video editing picks its scheme from it.
        sampling: how the model is best used, recorded by training and tuning: ``size`` (the short side it was
            trained at), ``scheduler``, ``num_inference_steps``, ``text_guidance_scale``, ``video_guidance_scale``,
            and ``tasks``: the same keys per task where a tune split chose them. Commands use them when the user
            gives none (:meth:`recommended`).

    :attr:`model` is the same networks as the training-side :class:`~vidiff.models.VIDiffModel` (no copy):
    instruction encoding, VAE encoding and the noise prediction are its methods, shared by training and sampling.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->image_projector->unet->vae"
    _optional_components = ["image_encoder", "image_projector"]
    # what callback_on_step_end may read and replace
    _callback_tensor_inputs = ["latents", "instruction_embeds", "source_latents"]

    def __init__(
        self,
        unet: UNetMotionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: SchedulerMixin,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        image_projector: ImageInstructionProjector | None = None,
        source_residual: bool = False,
        conditioning: str = "scaled",
        reference_frames: Sequence[int] | None = None,
        sampling: dict | None = None,
        format_version: int = FORMAT_VERSION,
    ):
        super().__init__()
        if (image_encoder is None) != (image_projector is None):
            raise VIDiffError("image_encoder and image_projector go together: give both or neither")
        if conditioning not in CONDITIONINGS:
            raise VIDiffError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, not {conditioning!r}")
        if source_residual and scheduler.config.prediction_type != "sample":
            raise VIDiffError(
                "source_residual needs the scheduler's prediction_type=sample (the output is a clean-latent "
                f"estimate), not {scheduler.config.prediction_type!r}"
            )
        self.register_modules(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
            image_encoder=image_encoder, image_projector=image_projector,
        )  # fmt: skip
        self.register_to_config(
            source_residual=bool(source_residual),
            conditioning=conditioning,
            reference_frames=None if reference_frames is None else [int(n) for n in reference_frames],
            sampling=_check_sampling(sampling),
            format_version=FORMAT_VERSION,  # always the format this code writes
        )
        self.vae_batch_size = 8  # frames per VAE call (enable_vae_slicing: one)
        self.interrupt = False  # set from callback_on_step_end to stop after the current step
        self._num_timesteps = 0
        self._model: VIDiffModel | None = None
        self._model_key: tuple | None = None
        self.set_progress_bar_config(desc="denoising", leave=False)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_model(
        cls, model: VIDiffModel, scheduler: str | SchedulerMixin = "ddim", sampling: dict | None = None
    ) -> VIDiffPipeline:
        """A pipeline over ``model``'s networks (shared, not copied; ``pipe.model is model``)."""
        if isinstance(scheduler, str):
            scheduler = make_scheduler(scheduler, model.noise_scheduler.config)
        pipe = cls(
            model.unet, model.vae, model.text_encoder, model.tokenizer, scheduler,
            model.image_encoder, model.image_projector,
            source_residual=model.source_residual, conditioning=model.conditioning,
            reference_frames=model.reference_frames, sampling=sampling,
        )  # fmt: skip
        pipe._model, pipe._model_key = model.eval(), pipe._components_key()
        return pipe

    def _components_key(self) -> tuple:
        config = (self.config.source_residual, self.config.conditioning, str(self.config.reference_frames))
        return tuple(id(getattr(self, name, None)) for name in _COMPONENTS) + config

    @property
    def model(self) -> VIDiffModel:
        """The training-side module over this pipeline's networks (rebuilt only when a component is replaced)."""
        key = self._components_key()
        if self._model is None or self._model_key != key:
            self._model = VIDiffModel(
                self.unet, self.vae, self.text_encoder, self.tokenizer,
                # the training schedule is the sampler's config read back as DDPM (set_timesteps is never called on it)
                DDPMScheduler.from_config(self.scheduler.config),
                self.image_encoder, self.image_projector,
                source_residual=self.config.source_residual, conditioning=self.config.conditioning,
                reference_frames=self.config.reference_frames,
            ).eval()  # fmt: skip
            self._model_key = key
        return self._model

    @property
    def size_multiple(self) -> int:
        """Frame sides are padded to multiples of this (the VAE's downsampling factor)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def recommended(self, task: str | None = None) -> dict:
        """The sampling settings the model records (``sampling``; a task's own override the general ones)."""
        sampling = dict(self.config.sampling or {})
        per_task = sampling.pop("tasks", None) or {}
        if task is not None:
            sampling.update(per_task.get(task, {}))
        return sampling

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs) -> Path:
        """diffusers' ``save_pretrained``, written atomically (a temporary folder renamed into place), safetensors only.

        A full disk is one line naming the folder. ``push_to_hub=True`` is passed through to diffusers as it is.
        """
        if kwargs.get("push_to_hub"):
            super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
            return Path(save_directory)
        path = Path(save_directory)
        need = sum(
            t.numel() * t.element_size()
            for name in _COMPONENTS
            if isinstance(getattr(self, name, None), torch.nn.Module)
            for t in getattr(self, name).state_dict().values()
        )
        with writing(path, need_bytes=need), _quiet_loading():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
            try:
                super().save_pretrained(tmp, safe_serialization=True, **kwargs)
                publish(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return path

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        scheduler: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> VIDiffPipeline:
        """Load a local model directory (any format VIDiff wrote; safetensors only, nothing is unpickled).

        ``scheduler``: a sampler name to use instead of the saved one; ``device``: where to put the networks.
        Other keyword arguments go to diffusers' ``from_pretrained``. A missing or damaged directory is one
        :class:`~vidiff.errors.ModelLoadError` line naming it.
        """
        path = Path(pretrained_model_name_or_path)
        torch_dtype = kwargs.pop("dtype", None) or torch_dtype  # diffusers' newer name for it
        index = read_model_index(path)
        if index.get("_class_name") == "VIDiffModel":
            pipe = cls.from_model(_load_legacy(path, index, torch_dtype))
        else:
            for name in _COMPONENTS:
                if (index.get(name) or [None])[0] is not None and not (path / name).is_dir():
                    raise ModelLoadError(f"{path / name}: missing component folder")
            try:
                with _quiet_loading():
                    if torch_dtype is not None:
                        kwargs["dtype"] = torch_dtype
                    pipe = super().from_pretrained(str(path), local_files_only=True, use_safetensors=True, **kwargs)
            except VIDiffError as err:  # a setting in model_index.json the pipeline refuses
                raise ModelLoadError(f"{path / 'model_index.json'}: {err}") from None
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ModelLoadError(f"{path}: cannot load model ({' '.join(str(err).split())[:200]})") from None
        if scheduler is not None:
            pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        return pipe.to(device) if device is not None else pipe

    # ---------------------------------------------------------------- memory
    def enable_vae_slicing(self) -> None:
        """Encode and decode one frame at a time (less memory, a little slower)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self, tile_size: int | None = None) -> None:
        """Encode and decode each frame in overlapping tiles of ``tile_size`` pixels (default: the VAE's
        ``sample_size``), blended at the seams: the VAE's activation memory no longer grows with the frame size."""
        if tile_size is not None:
            self.vae.tile_sample_min_size = int(tile_size)
            self.vae.tile_latent_min_size = int(tile_size) // self.size_multiple
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    # ---------------------------------------------------------------- long videos
    def edit_video(self, video, instruction: str | None = None, image=None, **kwargs):
        """Edit a video of any length, streaming clip by clip (see :func:`vidiff.pipelines.long_video.edit_video`).

        ``video`` is a file path or uint8 ``[f, h, w, 3]`` frames; keyword arguments: ``output`` (mp4 path),
        ``clip_length`` (16), ``overlap`` (2 reference frames), ``size`` (working short side), ``keep_size``,
        ``max_frames``, ``masks_out``/``mask_color``, ``seed``, ``progress``, ``carry``, plus the sampling arguments
        of ``__call__`` (``num_inference_steps``, ``text_guidance_scale``, ``video_guidance_scale``).
        """
        from vidiff.pipelines.long_video import edit_video

        return edit_video(self, video, instruction, image, **kwargs)

    # ---------------------------------------------------------------- inputs
    def check_inputs(
        self,
        video,
        instruction,
        image=None,
        num_inference_steps: int = 20,
        text_guidance_scale: float = 7.5,
        video_guidance_scale: float = 1.5,
        strength: float = 1.0,
        output_type: str = "np",
        anchor_fraction: float = 0.5,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        generator=None,
    ) -> tuple[torch.Tensor, list, list]:
        """Check every argument of ``__call__`` and return ``(source [b, 3, f, h, w] in [-1, 1], instructions,
        images)``, one instruction and image per clip. Anything wrong is a :class:`~vidiff.errors.VIDiffError`
        naming the value (the command lines add their flag names)."""
        clips = list(video) if _is_clip_list(video) else [video]
        n = len(clips)
        instructions = _per_clip(instruction, n, "instruction")
        images = _per_clip(image, n, "image instruction")
        for i, (text, picture) in enumerate(zip(instructions, images, strict=True)):
            if text is None and picture is None:
                where = f" (clip {i + 1})" if n > 1 else ""
                raise VIDiffError(f"give an instruction, an image instruction, or both{where}")
            if text is not None and not isinstance(text, str):
                raise VIDiffError(f"an instruction must be text, got {type(text).__name__}")
        if any(picture is not None for picture in images) and self.image_projector is None:
            raise VIDiffError("an image instruction was given but this model has no image-instruction branch")
        check_sampling(num_inference_steps, text_guidance_scale, video_guidance_scale, strength, anchor_fraction)
        if output_type not in ("np", "pt", "latent"):
            raise VIDiffError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise VIDiffError(
                f"callback tensor {unknown[0]!r} is not one of {', '.join(self._callback_tensor_inputs)}"
            )
        if isinstance(generator, list) and len(generator) != n:
            raise VIDiffError(f"{len(generator)} generators for {n} clips: give one per clip, or one for all")
        tensors = []
        for i, clip in enumerate(clips):
            try:
                tensors.append(video_to_tensor(clip))
            except ValueError as err:
                raise VIDiffError(f"video{f' (clip {i + 1})' if n > 1 else ''}: {err}") from None
        shapes = [tuple(t.shape[2:]) for t in tensors]
        if len(set(shapes)) > 1:
            listed = ", ".join("x".join(map(str, s)) for s in shapes)
            raise VIDiffError(f"clips in one call need the same frames x height x width, got {listed}")
        if shapes[0][0] < 1 or min(shapes[0][1:]) < 1:
            raise VIDiffError(f"video has no frames or no pixels ({'x'.join(map(str, shapes[0]))})")
        return torch.cat(tensors), instructions, images

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        video,
        instruction: str | list[str | None] | None = None,
        image=None,
        num_inference_steps: int = 20,
        text_guidance_scale: float = 7.5,
        video_guidance_scale: float = 1.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        strength: float = 1.0,
        anchor_latents: torch.Tensor | None = None,
        anchor_fraction: float = 0.5,
        callback_on_step_end: Callable[[VIDiffPipeline, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ) -> VIDiffPipelineOutput | tuple:
        """Translate ``video`` according to ``instruction`` (text) and/or ``image`` (a style/reference picture).

        Args:
            video: the source clip, ``[f, h, w, 3]`` uint8, ``[f, 3, h, w]`` float in ``[-1, 1]`` or a list of
                frames; or a list of such clips (a batch: same frame count and size), edited in one call.
            instruction: the text instruction (one for all clips, or a list, one per clip); ``None`` with an
                ``image`` gives an image-only instruction.
            image: optional image instruction (path, PIL image, uint8 ``[h, w, 3]`` or float ``[3, h, w]``), one for
                all clips or a list.
            num_inference_steps: sampler steps.
            text_guidance_scale: ``s_T``, the weight of the instruction.
            video_guidance_scale: ``s_V``, the weight of the source video.
            generator: a ``torch.Generator`` (or one per clip) for reproducible noise, drawn on the CPU so results
                do not depend on the device. With one generator per clip, a batch gives the clips it would give one
                by one.
            latents: optional initial noise ``[b, c, f, h/8, w/8]`` (unscaled; multiplied by the sampler's sigma).
            output_type: ``"np"`` (uint8 frames), ``"pt"`` (float frames in ``[-1, 1]``) or ``"latent"``.
            strength: 1.0 (the paper's sampling) starts from pure noise; below 1 the sampler starts from the
                source latents noised to that fraction of the schedule and runs only the remaining steps
                (SDEdit-style: the output keeps more of the source's layout, and fewer steps run).
            anchor_latents: clean (scaled) latents ``[b, c, n, h/8, w/8]`` for the first ``n`` frames, e.g. the
                previous clip's last frames when a long video is edited clip by clip: for the first
                ``anchor_fraction`` of the steps those frames' noisy latents are replaced by the anchor noised to the
                step's level (one fixed noise draw), so the rest of the clip is denoised around them and continues
                them; the later steps are free. Needs no training (unlike reference frames), in the spirit of
                InsV2V's long-video sampling correction.
            anchor_fraction: the fraction of the steps during which the anchor holds, in ``[0, 1]``.
            callback_on_step_end: diffusers' step-end callback, called as ``callback(pipe, step_index, timestep,
                tensors)`` after every step with ``tensors`` holding the names in ``callback_on_step_end_tensor_inputs``
                (``latents``; ``instruction_embeds``, the ``[terms * b, L, d]`` instruction rows of the guidance
                terms; ``source_latents``, their ``[terms * b, c, f, h, w]`` source rows, zeros in the unconditional
                one). The tensors it returns replace the pipeline's. Setting ``pipe.interrupt = True`` there stops
                the sampling after this step: the latents of that step are decoded and returned.
            return_dict: ``False`` returns ``(frames,)`` as diffusers pipelines do.
        """
        batched = _is_clip_list(video)
        source, instructions, images = self.check_inputs(
            video, instruction, image, num_inference_steps, text_guidance_scale, video_guidance_scale, strength,
            output_type, anchor_fraction, callback_on_step_end_tensor_inputs, generator,
        )  # fmt: skip
        self.interrupt = False
        model, device = self.model, self._execution_device
        b = source.shape[0]
        source, (height, width) = pad_to_multiple(source.to(device), self.size_multiple)

        # instruction rows: [null, null, full] for the (∅,∅), (V,∅), (V,T) predictions, each b clips
        instruction_embeds = torch.cat([
            model.encode_instruction([text], image_to_tensor(picture).to(device) if picture is not None else None)
            for text, picture in zip(instructions, images, strict=True)
        ])  # fmt: skip
        null_embeds = model.encode_instruction([None]).expand(b, -1, -1)
        instruction_batch = torch.cat([null_embeds, null_embeds, instruction_embeds]).to(self.unet.dtype)

        source_latents = model.encode_video(source, chunk_size=self.vae_batch_size).to(self.unet.dtype)
        source_batch = torch.cat([torch.zeros_like(source_latents), source_latents, source_latents])

        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        shape = source_latents.shape
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        elif latents.shape != shape:
            raise VIDiffError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
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
            n = anchor_latents.shape[2]
            if anchor_latents.shape[:2] != shape[:2] or anchor_latents.shape[3:] != shape[3:] or not 0 < n <= shape[2]:
                raise VIDiffError(
                    f"anchor_latents must be [{b}, {shape[1]}, n <= {shape[2]}, {shape[3]}, {shape[4]}], "
                    f"got {tuple(anchor_latents.shape)}"
                )
            anchor_latents = anchor_latents.to(device, torch.float32)
            anchor_noise = randn_tensor(
                anchor_latents.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32
            ).to(device)
        anchored_steps = round(anchor_fraction * len(timesteps)) if anchor_noise is not None else 0

        # only the terms the scales weigh: s_V = 1 cancels eps(∅,∅), and s_T = s_V = 1 leaves eps(V,T) alone
        terms = 3 if video_guidance_scale != 1 else (2 if text_guidance_scale != 1 else 1)
        source_batch, instruction_batch = source_batch[-terms * b :], instruction_batch[-terms * b :]
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for index, t in enumerate(timesteps):
                if self.interrupt:
                    break
                if index < anchored_steps:
                    # the anchored frames at this step's noise level, in the sampler's own parametrisation
                    anchored = scheduler.add_noise(anchor_latents, anchor_noise, t.reshape(1))
                    latents = torch.cat([anchored, latents[:, :, anchored.shape[2] :]], dim=2)
                model_input = scheduler.scale_model_input(latents, t).to(self.unet.dtype)
                # one batched U-Net call for every guidance term of every clip
                eps = model.predict_noise(torch.cat([model_input] * terms), source_batch, t, instruction_batch)
                eps = eps.float()
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
                    tensors = {
                        "latents": latents,
                        "instruction_embeds": instruction_batch,
                        "source_latents": source_batch,
                    }
                    returned = callback_on_step_end(
                        self, index, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = returned.pop("latents", latents)
                    instruction_batch = returned.pop("instruction_embeds", instruction_batch)
                    source_batch = returned.pop("source_latents", source_batch)
                progress.update()

        if output_type == "latent":
            frames = latents  # [b, c, f, h, w], one clip or many
        else:
            decoded = model.decode_latents(latents.to(self.vae.dtype), chunk_size=self.vae_batch_size)
            decoded = decoded[:, :, :, :height, :width].float().clamp(-1, 1).cpu()
            if output_type == "pt":
                frames = rearrange(decoded, "b c f h w -> b f c h w")
            else:
                frames = tensor_to_frames(decoded)
            frames = frames if batched else frames[0]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return VIDiffPipelineOutput(frames=frames, latents=latents)


# -------------------------------------------------------------------------------------------- model directories
@contextlib.contextmanager
def _quiet_loading():
    """No per-component progress bars from diffusers/transformers while a model directory is read or written."""
    was = diffusers.utils.logging.is_progress_bar_enabled()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            diffusers.utils.logging.enable_progress_bar()


def _check_sampling(sampling: dict | None) -> dict | None:
    if not sampling:
        return None
    sampling = json.loads(json.dumps(dict(sampling)))  # plain, JSON-able (OmegaConf nodes included)
    unknown = set(sampling) - set(SAMPLING_KEYS) - {"tasks"}
    for settings in (sampling.get("tasks") or {}).values():
        unknown |= set(settings) - set(SAMPLING_KEYS)
    if unknown:
        raise VIDiffError(f"sampling settings: unknown key {sorted(unknown)[0]!r} (known: {', '.join(SAMPLING_KEYS)})")
    return sampling


def read_model_index(path: str | os.PathLike) -> dict:
    """A model directory's ``model_index.json``, checked: one :class:`ModelLoadError` line if it is not one VIDiff reads."""
    path = Path(path)
    index_file = path / "model_index.json"
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model directory")
    if not index_file.is_file():
        raise ModelLoadError(f"{path}: not a VIDiff model directory (model_index.json is missing)")
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{index_file}: invalid JSON ({err})") from None
    if not isinstance(index, dict) or index.get("_class_name") not in ("VIDiffPipeline", "VIDiffModel"):
        name = index.get("_class_name") if isinstance(index, dict) else None
        raise ModelLoadError(f"{index_file}: not a VIDiff model (class {name!r})")
    version = index.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(f"{path}: saved by a newer VIDiff (format {version}); upgrade vidiff")
    return index


def _load_legacy(path: Path, index: dict, torch_dtype: torch.dtype | None) -> VIDiffModel:
    """A format-1 or format-2 directory (``_class_name: VIDiffModel``) as a :class:`VIDiffModel`."""
    required = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    if index.get("has_image_branch"):
        required += ["image_encoder", "image_projector"]
    for name in required:
        if not (path / name).is_dir():
            raise ModelLoadError(f"{path / name}: missing component folder")
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    # transformers 5 renamed torch_dtype to dtype
    tf_kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        with _quiet_loading():
            unet = UNetMotionModel.from_pretrained(path / "unet", use_safetensors=True, **kwargs)
            vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True, **kwargs)
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True, **tf_kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
            scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
            image_encoder = image_projector = None
            if index.get("has_image_branch"):
                image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                    path / "image_encoder", use_safetensors=True, **tf_kwargs
                )
                image_projector = ImageInstructionProjector.from_pretrained(
                    path / "image_projector", use_safetensors=True, **kwargs
                )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot load model ({' '.join(str(err).split())[:200]})") from None
    try:
        model = VIDiffModel(
            unet, vae, text_encoder, tokenizer, scheduler, image_encoder, image_projector,
            source_residual=bool(index.get("source_residual", False)),
            # format 1 predates the setting: every such model was trained on scaled source latents
            conditioning=index.get("conditioning", "scaled"),
            reference_frames=index.get("reference_frames"),
        )  # fmt: skip
    except ValueError as err:
        raise ModelLoadError(f"{path / 'model_index.json'}: {err}") from None
    return model.eval()


def save_model(model: VIDiffModel, path: str | os.PathLike, sampling: dict | None = None) -> Path:
    """Write ``model`` as a model directory (format 3, atomically); ``sampling``: see :class:`VIDiffPipeline`."""
    return VIDiffPipeline.from_model(model, sampling=sampling).save_pretrained(path)


def record_sampling(path: str | os.PathLike, sampling: dict) -> None:
    """Merge ``sampling`` settings (e.g. what a tune split chose) into a saved model's ``model_index.json``,
    replacing the file atomically; per-task settings merge task by task."""
    path = Path(path)
    index = read_model_index(path)
    if index.get("_class_name") != "VIDiffPipeline":
        raise ModelLoadError(f"{path}: sampling settings need a format-{FORMAT_VERSION} model (save it again)")
    merged = dict(index.get("sampling") or {})
    tasks = dict(merged.get("tasks") or {})
    for task, settings in (sampling.get("tasks") or {}).items():
        tasks[task] = {**tasks.get(task, {}), **settings}
    merged.update({k: v for k, v in sampling.items() if k != "tasks"})
    if tasks:
        merged["tasks"] = tasks
    index["sampling"] = _check_sampling(merged)
    tmp = path / ".model_index.json.partial"
    with writing(tmp):
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path / "model_index.json")


def load_model(
    checkpoint: str | os.PathLike | None = None,
    preset: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> VIDiffModel:
    """The model every command edits with: a model directory (loaded in ``dtype``, so diffusers keeps its
    float32-only modules in float32) or a preset from ``conf/model`` (built, then cast), on ``device``."""
    return load_pipeline(checkpoint, preset, device, dtype).model


def load_pipeline(
    checkpoint: str | os.PathLike | None = None,
    preset: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    scheduler: str | None = None,
) -> VIDiffPipeline:
    """:func:`load_model` as a pipeline, keeping what a directory records (its sampler and sampling settings)."""
    if checkpoint is not None:
        if os.path.isfile(checkpoint):
            raise ModelLoadError(
                f"{checkpoint}: checkpoint is not a model directory (vidiff-train writes <run>/model)"
            )
        pipe = VIDiffPipeline.from_pretrained(checkpoint, scheduler=scheduler, torch_dtype=dtype)
    else:
        from vidiff.config import load_model_preset

        model = load_model_preset(preset or "tiny")
        if dtype is not None and dtype != model.dtype:
            model = model.to(dtype=dtype)
        pipe = VIDiffPipeline.from_model(model, scheduler=scheduler or "ddim")
    return pipe.to(device)
