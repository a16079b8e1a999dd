"""``VIDiffModule``: one LightningModule, configured per training stage (``conf/stage/{t2i,t2v,v2v}.yaml``).

- ``t2i``: the image U-Net's spatial layers on image-text data (single-frame clips);
- ``t2v``: only the temporal (motion) layers on video-text data, every image parameter frozen;
- ``v2v``: the whole 8-channel U-Net and the image-instruction projector on multi-task triplets, with the
  InstructPix2Pix conditioning dropout (text alone / both / source alone) so dual guidance has all its terms.

What the network regresses (epsilon, velocity or clean latents, following the noise scheduler's
``prediction_type``), how timesteps are weighted and how conditions are dropped are components a stage config
selects (``conf/stage/objective``, ``conf/stage/cond_dropout``; see :mod:`vidiff.training.objective`). VAE and
CLIP encoders are frozen and stay in eval mode; the EMA covers trainable weights only and is updated after every
optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from diffusers.training_utils import EMAModel
from einops import rearrange
from torchmetrics import MeanMetric

from vidiff.data.shards import to_model_range
from vidiff.errors import ModelLoadError, VIDiffError
from vidiff.evaluation.metrics.pixel import video_psnr
from vidiff.models import VIDiffModel
from vidiff.models.autoencoder import autoencoder_fingerprint, sample_latents
from vidiff.models.unet import checkpoint_motion_modules, is_temporal_parameter
from vidiff.pipelines import load_model
from vidiff.training.checkpoint_io import AtomicCheckpointIO, drop_frozen, restore_frozen
from vidiff.training.objective import (
    ConditionDropout,
    DiffusionObjective,
    objective_of,
    step_generator,
)
from vidiff.training.optim import LR_SCHEDULES, adamw_with_warmup
from vidiff.utils.frames import tensor_to_frames


STAGES = ("t2i", "t2v", "v2v")


def batch_size(batch: dict[str, Any]) -> int:
    """Samples in a batch of pixels or of latents."""
    return len(batch["target"] if "target" in batch else batch["target_latents"])


def trainable_filter(stage: str):
    """Which ``VIDiffModel`` parameters a stage trains (by name)."""
    if stage == "t2i":
        return lambda name: name.startswith("unet.") and not is_temporal_parameter(name)
    if stage == "t2v":
        return lambda name: name.startswith("unet.") and is_temporal_parameter(name)
    if stage == "v2v":
        return lambda name: name.startswith(("unet.", "image_projector."))
    raise ValueError(f"unknown stage {stage!r} (choose from {', '.join(STAGES)})")


def load_init_weights(model: VIDiffModel, path: str | Path) -> None:
    """Start from a previous stage: a VIDiff model directory or a Lightning checkpoint (``weights_only``)."""
    path = Path(path)
    if path.is_dir():
        source = load_model(path)
        state, scaling_factor = source.state_dict(), source.vae.config.scaling_factor
    elif path.is_file():
        # a file that is not a checkpoint (or needs unpickling) is one line, as for ckpt_path
        checkpoint = AtomicCheckpointIO().load_checkpoint(path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ModelLoadError(f"{path}: not a Lightning checkpoint (no state_dict)")
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        scaling_factor = checkpoint.get("vae_scaling_factor")
        if "frozen_from" in checkpoint:
            # a checkpoint holds what its run trained: the rest comes from that run's own start
            if checkpoint["frozen_from"].get("init_from"):
                load_init_weights(model, checkpoint["frozen_from"]["init_from"])
            current = model.state_dict()
            state = {**{k: v for k, v in current.items() if k not in state}, **state}
    else:
        raise ModelLoadError(f"{path}: stage.init_from does not exist")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.startswith("image_")]:
        raise ModelLoadError(
            f"{path}: weights do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, e.g. "
            f"{(list(missing) + list(unexpected))[0]}); was it trained with another model preset?"
        )
    if scaling_factor is not None:
        # a config value, not a weight: the autoencoder stage's calibration would otherwise be lost here
        model.vae.register_to_config(scaling_factor=float(scaling_factor))


def cast_frozen(model: VIDiffModel, dtype: torch.dtype) -> None:
    """The frozen VAE and CLIP encoders in ``dtype`` (diffusers' notice about modules kept in fp32 is muted: the
    autoencoder has none)."""
    from diffusers.utils import logging as diffusers_logging

    logger = diffusers_logging.get_logger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(diffusers_logging.ERROR)
    try:
        for net in (model.vae, model.text_encoder, model.image_encoder):
            if net is not None and net.dtype != dtype:
                net.to(dtype)
    finally:
        logger.setLevel(level)


class VIDiffModule(L.LightningModule):
    """Train a :class:`VIDiffModel` for one stage.

    Args:
        model: the networks (built from ``conf/model``).
        stage: ``t2i``, ``t2v`` or ``v2v``.
        init_from: previous stage's model directory or checkpoint (``null``: the model as built).
        lr, weight_decay, betas: AdamW settings; ``warmup_steps`` of linear LR warm-up, then ``lr_schedule``:
            ``constant`` (the paper) or ``cosine`` (decays to 0 at the trainer's last step).
        objective: a :class:`~vidiff.training.objective.DiffusionObjective` (or its arguments): target, timestep
            weighting, offset noise.
        cond_dropout: a :class:`~vidiff.training.objective.ConditionDropout` (or ``{text_only, both,
            source_only}``); without a source (t2i/t2v) only ``text_only`` applies.
        ema_decay: EMA of the trainable weights (``null`` disables it), updated after each optimizer step; the
            exported model uses the EMA weights.
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
        unet_parts: str = "all",
        val_inference_steps: int = 10,
        val_text_guidance: float = 7.5,
        val_video_guidance: float = 1.5,
        seed: int = 0,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (choose from {', '.join(STAGES)})")
        # plain Python values only: checkpoints must load with torch.load(weights_only=True)
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
        self.model = model
        self.stage = stage
        if init_from:
            load_init_weights(model, init_from)
        keep = trainable_filter(stage)
        if unet_parts != "all":
            # which of the stage's U-Net parameters train: InsV2V's recipe trains only the motion modules of an
            # InstructPix2Pix + AnimateDiff model (parameters outside the U-Net, the image projector, still train)
            if unet_parts not in ("motion", "spatial"):
                raise ValueError(f"unknown unet_parts {unet_parts!r} (choose from all, motion, spatial)")
            stage_filter, temporal = keep, unet_parts == "motion"

            def keep(name: str) -> bool:
                in_part = not name.startswith("unet.") or is_temporal_parameter(name) == temporal
                return stage_filter(name) and in_part

        if lora:
            from vidiff.training.lora import add_lora, is_lora_parameter

            add_lora(model, lora)
            # the adapters train, the U-Net they adapt is frozen (v2v: the image projector still trains)
            stage_keep = keep

            def keep(name: str) -> bool:
                return is_lora_parameter(name) or (stage_keep(name) and not name.startswith("unet."))

        for name, param in model.named_parameters():
            param.requires_grad_(keep(name))
        if gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
            checkpoint_motion_modules(model.unet)
        if frozen_dtype:
            cast_frozen(model, getattr(torch, frozen_dtype))
        self.ema = None
        if ema_decay:
            self.ema = EMAModel(self.trainable_parameters(), decay=ema_decay, foreach=bool(ema_foreach))
            if ema_device == "cpu":
                self.ema.to("cpu")
        self.val_psnr = torch.nn.ModuleDict()
        self.train(False)  # frozen networks in eval mode from the start (see train())

    # ------------------------------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def configure_optimizers(self):
        hp = self.hparams
        schedule = hp.get("lr_schedule", "constant")
        # the cosine decay ends at the trainer's last optimizer step (max_steps, or epochs x batches)
        total = self.trainer.estimated_stepping_batches if schedule == "cosine" else None
        return adamw_with_warmup(
            self.trainable_parameters(),
            hp.lr,
            hp.weight_decay,
            hp.betas,
            hp.warmup_steps,
            schedule,
            total,
            optimizer=hp.get("optimizer", "adamw"),
        )

    def train(self, mode: bool = True) -> VIDiffModule:
        """Only the networks this stage trains follow ``mode``; the frozen VAE and CLIP encoders stay in eval
        mode whoever calls ``train()`` (Lightning after validation, callbacks after logging)."""
        super().train(mode)
        self.model.eval()
        if mode:
            self.model.unet.train()
            if self.model.image_projector is not None and self.stage == "v2v":
                self.model.image_projector.train()
        return self

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
        rank = self.global_rank if self._trainer is not None else 0
        return step_generator(self.hparams.seed, self.micro_step(batch), rank, self.device)

    def autoencoder_fingerprint(self) -> str:
        """The frozen autoencoder's fingerprint (computed once: no diffusion stage changes the VAE)."""
        if getattr(self, "_autoencoder_fingerprint", None) is None:
            self._autoencoder_fingerprint = autoencoder_fingerprint(self.model.vae)
        return self._autoencoder_fingerprint

    def batch_latents(self, batch: dict[str, Any], generator: torch.Generator):
        """Scaled (target, source) latents of a batch: encoded here from pixels, or read from a latent shard's
        posterior (``vidiff-prep latents``), which must come from this model's autoencoder."""
        source_latents = None
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
            mean = batch["target_latents"].to(self.device)
            std = batch["target_latents_std"].to(self.device)
            if self.stage == "t2i":
                mean, std = mean[:, :, :1], std[:, :, :1]
            latents = sample_latents(mean, std, scale, generator).to(self.model.dtype)
            if self.stage == "v2v" and "source_latents" in batch:
                source_latents = (batch["source_latents"].to(self.device) * scale).to(self.model.dtype)
            return latents, source_latents
        target = to_model_range(batch["target"].to(self.device))
        if self.stage == "t2i":
            target = target[:, :, :1]  # image stage: one frame per sample
        with torch.no_grad():
            latents = self.model.encode_video(target, sample=True, generator=generator).to(self.model.dtype)
            if self.stage == "v2v" and "source" in batch:
                source = to_model_range(batch["source"].to(self.device))
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
        projector = self.model.image_projector if self.stage == "v2v" else None
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

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # after the weights moved (once per accumulation window), before callbacks such as checkpointing run
        if self.ema is not None:
            self.ema.step(self._ema_inputs())

    def _ema_inputs(self) -> list[torch.Tensor]:
        """What the EMA averages: the trainable weights, or host copies of them when the EMA lives on the host."""
        params = self.trainable_parameters()
        if self.hparams.get("ema_device") != "cpu":
            return params
        # EMAModel averages only tensors that require grad (it copies the others)
        return [p.detach().to("cpu").requires_grad_() for p in params]

    def on_train_epoch_start(self) -> None:
        # Lightning keeps each submodule's mode as it finds it; the model is built in eval mode
        self.train(True)

    def ema_device(self) -> torch.device:
        return torch.device("cpu") if self.hparams.get("ema_device") == "cpu" else self.device

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.ema_device())

    # ------------------------------------------------------------------------------------------ EMA
    @contextlib.contextmanager
    def ema_scope(self):
        """The model carries the EMA weights inside the ``with`` block, its own weights outside."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.trainable_parameters())
        self.ema.copy_to(self.trainable_parameters())
        try:
            yield
        finally:
            self.ema.restore(self.trainable_parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from vidiff.training.runs import identity_of_model

        checkpoint["vae_scaling_factor"] = float(self.model.vae.config.scaling_factor)
        checkpoint["identity"] = identity_of_model(self.model)
        drop_frozen(self, checkpoint)
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_frozen(self, checkpoint)
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
            self.ema.to(self.ema_device())

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
        outputs = []
        for i, text in enumerate(batch["instruction"]):
            source = to_model_range(batch["source"][i].to(self.device))  # [c, f, h, w]
            has_image = batch.get("has_image") is not None and bool(batch["has_image"][i])
            out = pipe(
                video=rearrange(source, "c f h w -> f c h w"),
                instruction=text,
                image=batch["image"][i] if has_image else None,
                num_inference_steps=num_inference_steps or self.hparams.val_inference_steps,
                text_guidance_scale=self.hparams.val_text_guidance,
                video_guidance_scale=self.hparams.val_video_guidance,
                generator=torch.Generator(device="cpu").manual_seed(seed + i),
                output_type="pt",
            )
            outputs.append(rearrange(out.frames, "f c h w -> c f h w"))
        return torch.stack(outputs).to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        task = batch["task"]
        if "source" not in batch or self.stage != "v2v":
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
