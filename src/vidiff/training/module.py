"""``VIDiffModule``: one LightningModule, configured per training stage (``conf/stage/{t2i,t2v,v2v}.yaml``).

- ``t2i``: the image U-Net's spatial layers on image-text data (single-frame clips);
- ``t2v``: only the temporal (motion) layers on video-text data, every image parameter frozen;
- ``v2v``: the whole 8-channel U-Net and the image-instruction projector on multi-task triplets, with the
  InstructPix2Pix conditioning dropout (text alone / both / source alone) so dual guidance has all its terms.

The loss is DDPM epsilon-prediction MSE. VAE and CLIP encoders are frozen; the EMA covers trainable weights only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from einops import rearrange
from torchmetrics.image import PeakSignalNoiseRatio

from vidiff.data.shards import to_model_range
from vidiff.errors import ModelLoadError
from vidiff.models import VIDiffModel
from vidiff.models.unet import is_temporal_parameter


STAGES = ("t2i", "t2v", "v2v")


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
        state = VIDiffModel.from_pretrained(path).state_dict()
    elif path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" not in checkpoint:
            raise ModelLoadError(f"{path}: not a Lightning checkpoint (no state_dict)")
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    else:
        raise ModelLoadError(f"{path}: stage.init_from does not exist")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.startswith("image_")]:
        raise ModelLoadError(
            f"{path}: weights do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, e.g. "
            f"{(list(missing) + list(unexpected))[0]}); was it trained with another model preset?"
        )


class VIDiffModule(L.LightningModule):
    """Train a :class:`VIDiffModel` for one stage.

    Args:
        model: the networks (built from ``conf/model``).
        stage: ``t2i``, ``t2v`` or ``v2v``.
        init_from: previous stage's model directory or checkpoint (``null``: the model as built).
        lr, weight_decay, betas: AdamW settings; ``warmup_steps`` of linear LR warm-up, then constant.
        cond_dropout: ``{text_only, both, source_only}`` fractions (v2v); t2i/t2v use ``text_only`` alone.
        ema_decay: EMA of the trainable weights (``null`` disables it); the exported model uses the EMA weights.
        gradient_checkpointing: recompute U-Net activations in the backward pass (less memory, ~30 % slower).
        val_inference_steps, val_text_guidance, val_video_guidance: sampler settings of the validation PSNR.
        noise_offset: optional offset noise (0 = plain DDPM).
        seed: with the global step and rank, seeds each step's noise, timesteps and dropout, so a run resumed
            from a checkpoint draws exactly what the uninterrupted run would have drawn.
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
        cond_dropout: dict[str, float] | None = None,
        ema_decay: float | None = 0.9999,
        gradient_checkpointing: bool = False,
        val_inference_steps: int = 10,
        val_text_guidance: float = 7.5,
        val_video_guidance: float = 1.5,
        noise_offset: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (choose from {', '.join(STAGES)})")
        # plain Python values only: checkpoints must load with torch.load(weights_only=True)
        betas = [float(b) for b in betas]
        cond_dropout = {str(k): float(v) for k, v in (cond_dropout or {}).items()}
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.model = model
        self.stage = stage
        self.cond_dropout = {"text_only": 0.05, "both": 0.05, "source_only": 0.05, **(cond_dropout or {})}
        if init_from:
            load_init_weights(model, init_from)
        keep = trainable_filter(stage)
        for name, param in model.named_parameters():
            param.requires_grad_(keep(name))
        if gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        self.ema = EMAModel(self.trainable_parameters(), decay=ema_decay) if ema_decay else None
        self.val_psnr = torch.nn.ModuleDict()

    # ------------------------------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def configure_optimizers(self):
        params = self.trainable_parameters()
        hp = self.hparams
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        warmup = max(0, int(hp.warmup_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

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
        if source_latents is None:  # t2i / t2v: no source video; the 4 extra input channels stay zero
            source_latents = torch.zeros(target_shape, device=self.device, dtype=self.model.dtype)
            drop_text = torch.rand(b, generator=generator, device=self.device) < self.cond_dropout["text_only"]
            drop_source = torch.zeros(b, dtype=torch.bool, device=self.device)
        else:
            r = torch.rand(b, generator=generator, device=self.device)
            p_text, p_both, p_source = (self.cond_dropout[k] for k in ("text_only", "both", "source_only"))
            drop_text = r < p_text + p_both  # text alone, or text and source together
            drop_source = (r >= p_text) & (r < p_text + p_both + p_source)
        texts = ["" if d else t for t, d in zip(texts, drop_text.tolist())]
        image_mask = image_mask & ~drop_text
        images = batch.get("image") if bool(image_mask.any()) and self.model.image_projector is not None else None
        instruction = self.model.encode_instruction(
            texts, images.to(self.device) if images is not None else None, image_mask
        )
        source_latents = source_latents * (~drop_source).view(-1, 1, 1, 1, 1).to(source_latents.dtype)
        return instruction, source_latents, images is not None

    def step_generator(self) -> torch.Generator:
        rank = self.global_rank if self._trainer is not None else 0
        step = self.global_step if self._trainer is not None else 0
        seed = (int(self.hparams.seed) * 1_000_003 + step * 1009 + rank) % (2**63)
        return torch.Generator(device=self.device).manual_seed(seed)

    def shared_step(self, batch: dict[str, Any]) -> torch.Tensor:
        generator = self.step_generator()
        target = to_model_range(batch["target"].to(self.device))
        if self.stage == "t2i":
            target = target[:, :, :1]  # image stage: one frame per sample
        with torch.no_grad():
            latents = self.model.encode_video(target, sample=True, generator=generator)
            source_latents = None
            if self.stage == "v2v" and "source" in batch:
                source = to_model_range(batch["source"].to(self.device))
                source_latents = self.model.encode_video(source)
        noise = torch.randn(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
        if self.hparams.noise_offset:
            offset = torch.randn(
                *latents.shape[:2], 1, 1, 1, generator=generator, device=self.device, dtype=latents.dtype
            )
            noise = noise + self.hparams.noise_offset * offset
        scheduler = self.model.noise_scheduler
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=self.device
        )
        noisy = scheduler.add_noise(latents, noise, timesteps)
        instruction, source_latents, used_projector = self._instruction_and_source(
            batch, source_latents, latents.shape, generator
        )
        projector = self.model.image_projector if self.stage == "v2v" else None
        prediction = self.model.predict_noise(noisy, source_latents, timesteps, instruction)
        loss = F.mse_loss(prediction.float(), noise.float())
        if projector is not None and not used_projector:
            # text-only steps leave the projector without gradients; a zero-weighted touch keeps DDP's
            # gradient buckets complete without find_unused_parameters (and its per-step graph walk)
            loss = loss + 0.0 * sum(p.sum() for p in projector.parameters())
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.shared_step(batch)
        task = batch["task"]
        bs = batch["target"].shape[0]
        # every rank trains the same task at a given step (TaskSchedule), so per-task sync never deadlocks
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log(f"train/{task}/loss", loss, batch_size=bs, sync_dist=True)
        return loss

    def on_before_zero_grad(self, optimizer) -> None:
        # right after each optimizer step, before callbacks (e.g. checkpointing) see the batch end
        if self.ema is not None:
            self.ema.step(self.trainable_parameters())

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def on_train_epoch_start(self) -> None:
        # trained networks in train mode, frozen encoders in eval mode (the model is built in eval mode)
        self.model.eval()
        self.model.unet.train()
        if self.model.image_projector is not None:
            self.model.image_projector.train(self.stage == "v2v")

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
        if self.ema is not None:
            checkpoint["ema"] = {
                "shadow": [p.detach().cpu() for p in self.ema.shadow_params],
                "step": int(self.ema.optimization_step),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in checkpoint:
            for shadow, saved in zip(self.ema.shadow_params, checkpoint["ema"]["shadow"]):
                shadow.data.copy_(saved.to(shadow.device))
            self.ema.optimization_step = checkpoint["ema"]["step"]

    # ------------------------------------------------------------------------------------------ validation
    def setup(self, stage: str) -> None:
        # one PSNR metric per validation task, created before checkpoints are restored or metrics logged
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for task in getattr(dm, "val_task_names", []):
            if task not in self.val_psnr:
                self.val_psnr[task] = PeakSignalNoiseRatio(data_range=1.0)

    @torch.no_grad()
    def translate(self, batch: dict[str, Any], num_inference_steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """The model's output for a batch's sources, ``[b, 3, f, h, w]`` in [-1, 1]."""
        from vidiff.pipelines import VIDiffPipeline

        pipe = VIDiffPipeline(self.model)
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
            loss = self.shared_step(batch)
            self.log(f"val/{task}/loss", loss, batch_size=batch["target"].shape[0], add_dataloader_idx=False)
            return
        with self.ema_scope():
            output = self.translate(batch)
        target = to_model_range(batch["target"].to(self.device))
        metric = self.val_psnr[task]
        metric.update(((output.float() + 1) / 2).clamp(0, 1), ((target + 1) / 2).clamp(0, 1))
        self.log(
            f"val/{task}/psnr",
            metric,
            batch_size=target.shape[0],
            add_dataloader_idx=False,
            metric_attribute=f"val_psnr.{task}",
        )

    # ------------------------------------------------------------------------------------------ logging
    @torch.no_grad()
    def log_videos(self, batch: dict[str, Any], n: int = 2) -> dict[str, torch.Tensor]:
        """``source | output | target`` side by side, ``[b, 3, f, h, 3w]`` in [-1, 1], for the video logger."""
        batch = {k: (v[:n] if isinstance(v, torch.Tensor | list) else v) for k, v in batch.items()}
        target = to_model_range(batch["target"].to(self.device))
        if "source" not in batch:
            return {}
        with self.ema_scope():
            output = self.translate(batch, num_inference_steps=min(10, self.hparams.val_inference_steps))
        source = to_model_range(batch["source"].to(self.device))
        return {f"{batch['task']}": torch.cat([source, output.to(source.dtype), target], dim=-1)}
