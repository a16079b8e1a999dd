"""``VAEModule``: train the model's autoencoder on video frames (``conf/stage/vae.yaml``).

Real runs use Stable Diffusion's VAE as released and never need this. The ``tiny`` preset's VAE is random, and
no latent diffusion model can learn through an autoencoder that cannot reconstruct; this stage gives a small
model a working latent space (the demo runs it first). Loss: MSE + ``l1_weight``·L1 + ``kl_weight``·KL on
frames of both the source and the target clips (the U-Net sees the latents of both). At the end, the VAE's
``scaling_factor`` is set to 1 / std of the latents seen in training, as Stable Diffusion chose its 0.18215, so
the diffusion stages get unit-variance latents.

It runs on the engine the diffusion stages share (:class:`~vidiff.training.engine.StageModule`: optimizer, frozen
networks in eval mode, checkpoints without them, :meth:`~vidiff.training.engine.StageModule.export`); its stage
(``conf/stage/vae.yaml``) trains the ``vae`` parameter group on frames of the targets and, with ``source: true``, the
sources.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from vidiff.data.shards import to_model_range
from vidiff.errors import VIDiffError
from vidiff.models import VIDiffModel
from vidiff.training.engine import StageModule
from vidiff.training.objective import step_generator
from vidiff.training.optim import LR_SCHEDULES
from vidiff.training.stage import FROM_NAME, Stage


class VAEModule(StageModule):
    """Train ``model.vae`` alone; every other network stays as it is.

    Args:
        model: the networks; only ``model.vae`` trains (the ``vae`` stage's ``trains``).
        stage, trains, source, frames_per_sample, export: the stage (:class:`~vidiff.training.stage.Stage`); ``vae``
            takes the built-in autoencoder stage's: the ``vae`` group trains, on frames of the targets and the
            sources (``source``), every frame of each clip (``frames_per_sample: null``).
        init_from: a model directory or checkpoint to start from.
        lr, weight_decay, betas, warmup_steps: AdamW with linear warm-up.
        lr_schedule: after the warm-up, ``constant`` or ``cosine`` (decays to 0 at the last step).
        l1_weight, kl_weight: loss weights beside the MSE.
        frames_per_step: frames (from sources and targets) per step, drawn evenly from the batch.
        latent_momentum: momentum of the running latent variance that sets ``scaling_factor``.
        saturation_range: ``[low, high]``: each training frame's chroma (its difference from its luma) is scaled by
            a factor drawn uniformly from this range, so that an autoencoder trained on a few colourful clips does
            not paint colour into paler footage; ``None`` trains on the frames as they are.
        ema_decay: an EMA of the autoencoder's weights (``None``: none), exported in their place when the stage's
            ``export.ema`` says so: the last weights of a short run sit wherever its last batches left them.
    """

    def __init__(
        self,
        model: VIDiffModel,
        stage: str = "vae",
        trains: Sequence[str] = FROM_NAME,
        source: bool = FROM_NAME,
        frames_per_sample: int | None = FROM_NAME,
        export: Mapping[str, bool] = FROM_NAME,
        init_from: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        l1_weight: float = 0.5,
        kl_weight: float = 1e-6,
        frames_per_step: int = 16,
        latent_momentum: float = 0.99,
        saturation_range: Sequence[float] | None = None,
        ema_decay: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        spec = Stage.of(stage, trains=trains, source=source, frames_per_sample=frames_per_sample, export=export)
        # plain Python values only: checkpoints must load with torch.load(weights_only=True)
        trains, source, frames_per_sample, export = spec.plain_fields()
        betas = [float(b) for b in betas]
        if saturation_range is not None:
            saturation_range = [float(v) for v in saturation_range]
            if len(saturation_range) != 2 or not 0 <= saturation_range[0] <= saturation_range[1]:
                raise ValueError(f"saturation_range must be [low, high] with 0 <= low <= high, got {saturation_range}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.setup_stage(model, spec, init_from, ema_decay=ema_decay)
        # running second moment of the (unscaled) latents; a buffer, so it is checkpointed and resumed
        self.register_buffer("latent_var", torch.tensor(-1.0))

    def frames_of(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[n, 3, h, w]`` in [-1, 1]: frames of the targets and (``stage.source``) the sources, evenly spaced, at
        most ``frames_per_step`` (of the first ``stage.frames_per_sample`` frames of each clip)."""
        if "target" not in batch:
            raise VIDiffError(
                f"the autoencoder stage trains on pixels, but task {batch.get('task')!r} reads latent shards "
                "(vidiff-prep latents): point it at the pixel shards"
            )
        videos = [batch["target"]] + ([batch["source"]] if self.stage.source and "source" in batch else [])
        clip = slice(None, self.stage.frames_per_sample)
        frames = torch.cat([rearrange(v[:, :, clip], "b c f h w -> (b f) c h w") for v in videos])
        n = min(len(frames), int(self.hparams.frames_per_step))
        index = torch.linspace(0, len(frames) - 1, n).round().long()
        return to_model_range(frames[index].to(self.device))

    def vary_saturation(self, frames: torch.Tensor, micro_step: int) -> torch.Tensor:
        """``frames`` ``[n, 3, h, w]`` in [-1, 1], each with its chroma scaled by its own factor from
        ``saturation_range`` (luma kept: BT.601 weights), seeded by the micro-step like every other draw."""
        low, high = self.hparams.saturation_range
        # its own stream: the posterior sample of the same micro-step keeps the seed it has without this option
        generator = step_generator(self.hparams.seed + 1, micro_step, self.rank(), "cpu")
        factor = low + (high - low) * torch.rand(len(frames), generator=generator)
        # by hand: torchvision's adjust_saturation takes one factor per call and clamps to [0, 1], not [-1, 1]
        luma_weights = frames.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        luma = (frames * luma_weights).sum(dim=1, keepdim=True)
        factor = factor.to(frames.device, frames.dtype).view(-1, 1, 1, 1)
        return (luma + factor * (frames - luma)).clamp(-1, 1)

    def reconstruction_loss(
        self, frames: torch.Tensor, micro_step: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``micro_step`` seeds the posterior sample (with the seed and rank); ``None`` takes the posterior mode."""
        vae = self.model.vae
        posterior = vae.encode(frames).latent_dist
        if micro_step is None:
            latents = posterior.mode()
        else:
            latents = posterior.sample(step_generator(self.hparams.seed, micro_step, self.rank(), self.device))
        recon = vae.decode(latents).sample
        loss = F.mse_loss(recon, frames) + self.hparams.l1_weight * F.l1_loss(recon, frames)
        loss = loss + self.hparams.kl_weight * posterior.kl().mean()
        return loss, recon, posterior.mode().detach()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        frames = self.frames_of(batch)
        micro_step = int(batch.get("step", batch_idx))
        if self.hparams.get("saturation_range") is not None:
            frames = self.vary_saturation(frames, micro_step)
        loss, recon, latents = self.reconstruction_loss(frames, micro_step)
        var = latents.float().pow(2).mean()
        m = float(self.hparams.latent_momentum)
        self.latent_var = var if self.latent_var < 0 else m * self.latent_var + (1 - m) * var
        mse = F.mse_loss(recon.detach().clamp(-1, 1), frames) / 4  # in [0, 1] units
        self.log("train/loss", loss, prog_bar=True, batch_size=len(frames))
        self.log("train/vae_psnr", -10 * torch.log10(mse), prog_bar=True, batch_size=len(frames))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        frames = self.frames_of(batch)
        _, recon, _ = self.reconstruction_loss(frames)
        mse = F.mse_loss(recon.clamp(-1, 1), frames) / 4
        self.log(
            f"val/{batch['task']}/vae_psnr",
            -10 * torch.log10(mse),
            batch_size=len(frames),
            add_dataloader_idx=False,
        )

    def latent_scaling_factor(self) -> float | None:
        """1 / std of the latents seen so far (``None`` before the first step)."""
        return 1.0 / math.sqrt(float(self.latent_var)) if self.latent_var > 0 else None

    def vae_scaling_factor(self) -> float:
        """What the exported model will carry: the calibration of the latents seen so far, once there are some."""
        scale = self.latent_scaling_factor()
        return scale if scale is not None else super().vae_scaling_factor()

    def on_train_end(self) -> None:
        scale = self.latent_scaling_factor()
        if scale is not None:
            self.model.vae.register_to_config(scaling_factor=scale)
