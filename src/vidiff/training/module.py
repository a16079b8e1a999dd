"""``VIDiffModule``: the diffusion stages (``conf/stage/{t2i,t2v,v2v,v2v_motion}.yaml``) on the shared engine
(:class:`~vidiff.training.engine.StageModule`).

A stage is data (:class:`~vidiff.training.stage.Stage`): the parameter groups that train, whether a source clip
conditions the U-Net, how many frames of each clip a step sees, what the export carries. The built-in ones:

- ``t2i``: the image U-Net's spatial layers on image-text data (each clip's first frame);
- ``t2v``: only the temporal (motion) layers on video-text data, every image parameter frozen;
- ``v2v``: the whole 8-channel U-Net and the image-instruction projector on multi-task triplets, with the
  InstructPix2Pix conditioning dropout (text alone / both / source alone) so dual guidance has all its terms;
- ``v2v_motion`` (InsV2V's recipe): as ``v2v``, with only the U-Net's motion modules (and the projector) training.

What the network regresses (epsilon, velocity or clean latents, following the noise scheduler's
``prediction_type``), how timesteps are weighted and how conditions are dropped are components a stage config
selects (``conf/stage/objective``, ``conf/stage/cond_dropout``; see :mod:`vidiff.training.objective`). VAE and
CLIP encoders are frozen and stay in eval mode; the EMA covers trainable weights only and is updated after every
optimizer step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torchmetrics import MeanMetric

from vidiff.data.shards import to_model_range
from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics.pixel import video_psnr
from vidiff.models import VIDiffModel
from vidiff.models.autoencoder import autoencoder_fingerprint, sample_latents
from vidiff.models.unet import checkpoint_motion_modules
from vidiff.training.engine import StageModule, cast_frozen
from vidiff.training.objective import (
    ConditionDropout,
    DiffusionObjective,
    objective_of,
    step_generator,
)
from vidiff.training.optim import LR_SCHEDULES
from vidiff.training.stage import FROM_NAME, Stage
from vidiff.utils.frames import tensor_to_frames


def batch_size(batch: dict[str, Any]) -> int:
    """Samples in a batch of pixels or of latents."""
    return len(batch["target"] if "target" in batch else batch["target_latents"])


class VIDiffModule(StageModule):
    """Train a :class:`VIDiffModel` for one diffusion stage.

    Args:
        model: the networks (built from ``conf/model``).
        stage: the stage's name: ``t2i``, ``t2v`` or ``v2v`` take the built-in stage's fields below; another name
            (``v2v_motion``) gives ``trains`` and ``source`` itself (:class:`~vidiff.training.stage.Stage`).
        trains: the parameter groups that train (``unet``, ``unet.spatial``, ``unet.motion``, ``image_projector``,
            ...; :data:`~vidiff.training.stage.PARAMETER_GROUPS`).
        source: whether the source clip conditions the U-Net (its latents fill the extra input channels, zeros
            otherwise; without a source only ``cond_dropout.text_only`` applies and validation scores losses).
        frames_per_sample: frames of each clip, from the first, that a step trains on (1: an image stage; ``null``:
            all the data loads).
        export: what the exported model carries: ``{ema, reference_frames}`` (:class:`~vidiff.training.stage.Export`).
        init_from: previous stage's model directory or checkpoint (``null``: the model as built).
        lr, weight_decay, betas: AdamW settings; ``warmup_steps`` of linear LR warm-up, then ``lr_schedule``:
            ``constant`` (the paper) or ``cosine`` (decays to 0 at the trainer's last step).
        objective: a :class:`~vidiff.training.objective.DiffusionObjective` (or its arguments): target, timestep
            weighting, offset noise.
        cond_dropout: a :class:`~vidiff.training.objective.ConditionDropout` (or ``{text_only, both,
            source_only}``); without a source only ``text_only`` applies.
        ema_decay: EMA of the trainable weights (``null`` disables it), updated after each optimizer step; the
            exported model uses the EMA weights (``export.ema``).
        gradient_checkpointing: recompute U-Net activations in the backward pass (less memory, ~30 % slower),
            the motion modules of the down and up blocks included (diffusers' own checkpointing skips them).
        ema_device: ``cpu`` keeps the EMA in host memory (updated from a host copy of the weights each step);
            ``null``: on the training device. ``ema_foreach``: update it with foreach ops (faster, one temporary
            copy of the trainable weights).
        optimizer: ``adamw`` or ``adamw8bit`` (torchao, 8-bit moments); a name or ``{name: ...}``
            (``conf/stage/optimizer``).
        frozen_dtype: ``bfloat16`` keeps the frozen VAE and CLIP encoders in bf16 (half their memory; their outputs
            are cast back to the U-Net's dtype); ``null``: as built.
        lora: ``{rank, alpha, targets: [spatial, motion]}``: train low-rank adapters on the U-Net's attention
            projections instead of the U-Net (see :mod:`vidiff.training.lora`); the export merges them.
        val_inference_steps, val_text_guidance, val_video_guidance: sampler settings of the validation PSNR.
        seed: with the micro-step and rank, seeds each micro-batch's noise, timesteps, dropout and VAE sampling,
            so every micro-batch of an accumulation window draws its own, and a run resumed from a checkpoint
            draws exactly what the uninterrupted run would have drawn.
    """

    def __init__(
        self,
        model: VIDiffModel,
        stage: str = "v2v",
        trains: Sequence[str] = FROM_NAME,
        source: bool = FROM_NAME,
        frames_per_sample: int | None = FROM_NAME,
        export: Mapping[str, bool] = FROM_NAME,
        init_from: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        objective: DiffusionObjective | Mapping[str, Any] | None = None,
        cond_dropout: ConditionDropout | Mapping[str, float] | None = None,
        ema_decay: float | None = 0.9999,
        gradient_checkpointing: bool = False,
        ema_device: str | None = None,
        ema_foreach: bool = False,
        optimizer: str | Mapping[str, Any] = "adamw",
        frozen_dtype: str | None = None,
        lora: Mapping[str, Any] | None = None,
        val_inference_steps: int = 10,
        val_text_guidance: float = 7.5,
        val_video_guidance: float = 1.5,
        seed: int = 0,
    ):
        super().__init__()
        spec = Stage.of(stage, trains=trains, source=source, frames_per_sample=frames_per_sample, export=export)
        # plain Python values only: checkpoints must load with torch.load(weights_only=True)
        trains, source, frames_per_sample, export = spec.plain_fields()
        betas = [float(b) for b in betas]
        optimizer = optimizer if isinstance(optimizer, str) else dict(optimizer)["name"]
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
        self.objective = objective_of(objective)
        self.cond_dropout = ConditionDropout.of(cond_dropout)
        self.save_hyperparameters(ignore=["model", "objective", "cond_dropout"], logger=False)
        self.hparams["objective"] = {
            "min_snr_gamma": self.objective.min_snr_gamma,
            "noise_offset": self.objective.noise_offset,
            "timestep_sampling": self.objective.timestep_sampling,
            "logit_mean": self.objective.logit_mean,
            "logit_std": self.objective.logit_std,
        }
        self.hparams["cond_dropout"] = self.cond_dropout.as_dict()
        self.val_psnr = torch.nn.ModuleDict()
        self.setup_stage(model, spec, init_from, lora, ema_decay, ema_device, ema_foreach)
        if gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            checkpoint_motion_modules(model.unet)
        if frozen_dtype:
            cast_frozen(model, getattr(torch, frozen_dtype))

    # ------------------------------------------------------------------------------------------ training
    def _instruction_and_source(
        self, batch: dict[str, Any], source_latents: torch.Tensor | None, target_shape, generator=None
    ):
        """Apply conditioning dropout; return (instruction embedding, source latents, whether images were encoded).

        Runs with gradients on: the frozen encoders build no graph, and the trainable image projector (v2v) gets
        its gradients from this single encoding.
        """
        b = target_shape[0]
        texts = list(batch["instruction"])
        has_image = batch.get("has_image")
        image_mask = (
            has_image.clone().to(self.device)
            if has_image is not None
            else torch.zeros(b, dtype=torch.bool, device=self.device)
        )
        has_source = source_latents is not None
        if not has_source:  # t2i / t2v: no source video; the 4 extra input channels stay zero
            source_latents = torch.zeros(target_shape, device=self.device, dtype=self.model.dtype)
        drop_text, drop_source = self.cond_dropout.sample(b, generator, self.device, has_source)
        texts = ["" if d else t for t, d in zip(texts, drop_text.tolist())]
        image_mask = image_mask & ~drop_text
        images = batch.get("image") if bool(image_mask.any()) and self.model.image_projector is not None else None
        instruction = self.model.encode_instruction(
            texts, images.to(self.device) if images is not None else None, image_mask
        )
        source_latents = source_latents * (~drop_source).view(-1, 1, 1, 1, 1).to(source_latents.dtype)
        return instruction.to(self.model.dtype), source_latents, images is not None

    def micro_step(self, batch: dict[str, Any]) -> int:
        """The global micro-step of ``batch`` (the data stream numbers its batches; without that number, the
        trainer's count of micro-batches)."""
        if "step" in batch:
            return int(batch["step"])
        if self._trainer is None:
            return 0
        return int(self.trainer.fit_loop.total_batch_idx)

    def batch_generator(self, batch: dict[str, Any]) -> torch.Generator:
        return step_generator(self.hparams.seed, self.micro_step(batch), self.rank(), self.device)

    def autoencoder_fingerprint(self) -> str:
        """The frozen autoencoder's fingerprint (computed once: no diffusion stage changes the VAE)."""
        if getattr(self, "_autoencoder_fingerprint", None) is None:
            self._autoencoder_fingerprint = autoencoder_fingerprint(self.model.vae)
        return self._autoencoder_fingerprint

    def batch_latents(self, batch: dict[str, Any], generator: torch.Generator):
        """Scaled (target, source) latents of a batch: encoded here from pixels, or read from a latent shard's
        posterior (``vidiff-prep latents``), which must come from this model's autoencoder. The source only in a
        stage that uses one; the first ``stage.frames_per_sample`` frames of each clip (all when ``None``)."""
        source_latents = None
        frames = slice(None, self.stage.frames_per_sample)
        use_source = self.stage.source
        scale = self.model.vae.config.scaling_factor
        if "target_latents" in batch:
            expected = self.autoencoder_fingerprint()
            written_by = set(batch.get("autoencoder") or [""])
            if written_by != {expected}:
                raise VIDiffError(
                    f"latent shards of task {batch.get('task')!r} were encoded by autoencoder "
                    f"{', '.join(sorted(written_by))}, this model's is {expected}: re-run `vidiff-prep latents` "
                    "with this model, or train from the pixel shards"
                )
            mean = batch["target_latents"][:, :, frames].to(self.device)
            std = batch["target_latents_std"][:, :, frames].to(self.device)
            latents = sample_latents(mean, std, scale, generator).to(self.model.dtype)
            if use_source and "source_latents" in batch:
                source = batch["source_latents"][:, :, frames].to(self.device)
                source_latents = (source * scale).to(self.model.dtype)
            return latents, source_latents
        target = to_model_range(batch["target"][:, :, frames].to(self.device))
        with torch.no_grad():
            latents = self.model.encode_video(target, sample=True, generator=generator).to(self.model.dtype)
            if use_source and "source" in batch:
                source = to_model_range(batch["source"][:, :, frames].to(self.device))
                source_latents = self.model.encode_video(source).to(self.model.dtype)
        return latents, source_latents

    def shared_step(self, batch: dict[str, Any]) -> torch.Tensor:
        generator = self.batch_generator(batch)
        latents, source_latents = self.batch_latents(batch, generator)
        objective, scheduler = self.objective, self.model.noise_scheduler
        noise = objective.sample_noise(latents, generator)
        timesteps = objective.sample_timesteps(latents.shape[0], scheduler, generator, self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        instruction, source_latents, used_projector = self._instruction_and_source(
            batch, source_latents, latents.shape, generator
        )
        projector = self.model.image_projector
        if projector is not None and not any(p.requires_grad for p in projector.parameters()):
            projector = None  # a frozen projector needs no gradient
        prediction = self.model.predict_noise(noisy, source_latents, timesteps, instruction)
        loss = objective.loss(prediction, objective.target(scheduler, latents, noise, timesteps), scheduler, timesteps)
        if projector is not None and not used_projector:
            # text-only steps leave the projector without gradients; a zero-weighted touch keeps DDP's
            # gradient buckets complete without find_unused_parameters (and its per-step graph walk)
            loss = loss + 0.0 * sum(p.sum() for p in projector.parameters())
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.shared_step(batch)
        task = batch["task"]
        bs = batch_size(batch)
        # every rank trains the same task at a given step (TaskSchedule), so per-task sync never deadlocks
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log(f"train/{task}/loss", loss, batch_size=bs, sync_dist=True)
        return loss

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from vidiff.training.runs import identity_of_model

        # what defines the model beside its weights, so a next stage started from this checkpoint takes it
        checkpoint["identity"] = identity_of_model(self.model)
        super().on_save_checkpoint(checkpoint)

    # ------------------------------------------------------------------------------------------ validation
    def setup(self, stage: str) -> None:
        # one running mean of video PSNR per validation task, created before checkpoints are restored
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for task in getattr(dm, "val_task_names", []):
            if task not in self.val_psnr:
                self.val_psnr[task] = MeanMetric()

    @torch.no_grad()
    def translate(self, batch: dict[str, Any], num_inference_steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """The model's output for a batch's sources, ``[b, 3, f, h, w]`` in [-1, 1]."""
        from vidiff.pipelines import VIDiffPipeline

        pipe = VIDiffPipeline.from_model(self.model)
        pipe.set_progress_bar_config(disable=True)
        n = len(batch["instruction"])
        has_image = batch.get("has_image")
        out = pipe(
            # the whole batch in one call; one generator per clip gives each clip what it would get alone
            video=list(rearrange(to_model_range(batch["source"].to(self.device)), "b c f h w -> b f c h w")),
            instruction=list(batch["instruction"]),
            image=[batch["image"][i] if has_image is not None and bool(has_image[i]) else None for i in range(n)],
            num_inference_steps=num_inference_steps or self.hparams.val_inference_steps,
            text_guidance_scale=self.hparams.val_text_guidance,
            video_guidance_scale=self.hparams.val_video_guidance,
            generator=[torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)],
            output_type="pt",
        )
        return rearrange(out.frames, "b f c h w -> b c f h w").to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        task = batch["task"]
        if "source" not in batch or not self.stage.source:
            # a fixed draw per validation batch, so validation losses are comparable between evaluations
            loss = self.shared_step({**batch, "step": -1 - batch_idx})
            self.log(f"val/{task}/loss", loss, batch_size=batch_size(batch), add_dataloader_idx=False)
            return
        with self.ema_scope():
            output = self.translate(batch)
        target = to_model_range(batch["target"].to(self.device))
        # the tables' PSNR (vidiff.evaluation.metrics.pixel.video_psnr) on the same 8-bit frames, per video
        for out_video, target_video in zip(output, target):
            self.val_psnr[task].update(video_psnr(tensor_to_frames(out_video), tensor_to_frames(target_video)))

    def on_validation_epoch_end(self) -> None:
        # every rank computes every task's metric in the same order, also a rank that got no batch of that task
        # (fewer validation samples than ranks): the cross-rank sync inside compute() then never waits forever
        for task in sorted(self.val_psnr):
            metric = self.val_psnr[task]
            if metric.update_count == 0 and not torch.distributed.is_initialized():
                continue
            value = metric.compute()
            metric.reset()
            if torch.isfinite(value):
                self.log(f"val/{task}/psnr", value, sync_dist=False, add_dataloader_idx=False)

    # ------------------------------------------------------------------------------------------ logging
    @torch.no_grad()
    def log_videos(self, batch: dict[str, Any], n: int = 2) -> dict[str, torch.Tensor]:
        """``source | output | target`` side by side, ``[b, 3, f, h, 3w]`` in [-1, 1], for the video logger."""
        batch = {k: (v[:n] if isinstance(v, torch.Tensor | list) else v) for k, v in batch.items()}
        if "source_latents" in batch:  # a latent shard's batch: show what the autoencoder makes of its latents
            scale = self.model.vae.config.scaling_factor
            for name in ("source", "target"):
                decoded = self.model.decode_latents(batch[f"{name}_latents"].to(self.device) * scale)
                batch[name] = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if "source" not in batch:
            return {}
        target = to_model_range(batch["target"].to(self.device))
        with self.ema_scope():
            output = self.translate(batch, num_inference_steps=min(10, self.hparams.val_inference_steps))
        source = to_model_range(batch["source"].to(self.device))
        return {f"{batch['task']}": torch.cat([source, output.to(source.dtype), target], dim=-1)}
