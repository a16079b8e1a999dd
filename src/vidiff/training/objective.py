"""The pieces of a diffusion training step that a stage config selects (``conf/stage/objective``,
``conf/stage/cond_dropout``), shared by the LightningModules instead of written inline in them.

- :func:`step_generator`: the RNG of one micro-batch, from ``(seed, micro-step, rank)``;
- :class:`DiffusionObjective`: noise, timestep sampling, the regression target that follows the noise
  scheduler's ``prediction_type`` and the per-sample loss weighting (min-SNR-γ);
- :class:`ConditionDropout`: InstructPix2Pix's conditioning dropout (text alone / both / source alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def step_generator(seed: int, micro_step: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one micro-batch on one rank.

    Every micro-batch of a gradient-accumulation window and every rank draws its own noise, timesteps, dropout and
    VAE samples, and a resumed run draws exactly what the uninterrupted run drew at the same micro-step.
    """
    mixed = (int(seed) * 1_000_003 + int(micro_step) * 1_009 + int(rank) * 7_919_111) % (2**63)
    return torch.Generator(device=device).manual_seed(mixed)


class DiffusionObjective:
    """What the network is asked at each step, and how much each sample counts.

    Args:
        min_snr_gamma: min-SNR-γ loss weighting (Hang et al. 2023; 5.0 is their default); ``None`` weighs every
            timestep equally.
        noise_offset: offset noise (a per-channel constant added to the noise); 0 = plain DDPM.
        timestep_sampling: ``uniform`` (DDPM) or ``logit_normal`` (Esser et al. 2024, SD3): ``t/T = sigmoid(m + s·z)``
            with ``z ~ N(0, 1)``, ``m = logit_mean``, ``s = logit_std``; ``m > 0`` spends more of the steps at high
            noise, where a restoration model has to produce the output from the source alone.

    The target follows ``scheduler.config.prediction_type``: the noise (``epsilon``), the velocity
    ``√ᾱ·ε − √(1−ᾱ)·x0`` (``v_prediction``, via the scheduler's ``get_velocity``) or the clean latents
    (``sample``). The samplers read the same field, so training and sampling always agree.
    """

    def __init__(
        self,
        min_snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        timestep_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive or null, got {min_snr_gamma}")
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"unknown timestep_sampling {timestep_sampling!r} (choose from {', '.join(TIMESTEP_SAMPLING)})"
            )
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)
        self.noise_offset = float(noise_offset)
        self.timestep_sampling = timestep_sampling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    @staticmethod
    def prediction_type(scheduler: SchedulerMixin) -> str:
        kind = scheduler.config.prediction_type
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {kind!r} (choose from {', '.join(PREDICTION_TYPES)})")
        return kind

    def sample_noise(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        if self.noise_offset:
            offset = torch.randn(
                *latents.shape[:2], *([1] * (latents.ndim - 2)), generator=generator, device=latents.device
            )
            noise = noise + self.noise_offset * offset.to(latents.dtype)
        return noise

    def sample_timesteps(self, n: int, scheduler: SchedulerMixin, generator: torch.Generator, device) -> torch.Tensor:
        steps = scheduler.config.num_train_timesteps
        if self.timestep_sampling == "uniform":
            return torch.randint(0, steps, (n,), generator=generator, device=device)
        z = torch.randn(n, generator=generator, device=device)
        fraction = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return (fraction * steps).long().clamp(0, steps - 1)

    def target(
        self, scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        kind = self.prediction_type(scheduler)
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        return latents

    @staticmethod
    def snr(scheduler: SchedulerMixin, timesteps: torch.Tensor) -> torch.Tensor:
        alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        return alphas_cumprod / (1.0 - alphas_cumprod).clamp_min(1e-12)

    def loss_weights(self, scheduler: SchedulerMixin, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights of the MSE, or ``None`` (uniform)."""
        if self.min_snr_gamma is None:
            return None
        snr = self.snr(scheduler, timesteps)
        clipped = snr.clamp(max=self.min_snr_gamma)
        kind = self.prediction_type(scheduler)
        # min(SNR, γ) in x0 units, divided by how each target scales the x0 error: SNR (ε), SNR + 1 (v), 1 (x0)
        if kind == "epsilon":
            return clipped / snr.clamp_min(1e-8)
        if kind == "v_prediction":
            return clipped / (snr + 1.0)
        return clipped

    def loss(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        scheduler: SchedulerMixin,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
        weights = self.loss_weights(scheduler, timesteps)
        if weights is not None:
            per_sample = per_sample * weights
        return per_sample.mean()

    def __repr__(self) -> str:
        return (
            f"DiffusionObjective(min_snr_gamma={self.min_snr_gamma}, noise_offset={self.noise_offset}, "
            f"timestep_sampling={self.timestep_sampling!r}, logit_mean={self.logit_mean}, logit_std={self.logit_std})"
        )


class ConditionDropout:
    """InstructPix2Pix conditioning dropout: each sample independently loses its instruction alone
    (``text_only``), instruction and source together (``both``), or its source alone (``source_only``), so the
    model learns every term of dual classifier-free guidance. Without a source (t2i, t2v) only the instruction
    is dropped, with probability ``text_only``.
    """

    def __init__(self, text_only: float = 0.05, both: float = 0.05, source_only: float = 0.05):
        self.text_only, self.both, self.source_only = float(text_only), float(both), float(source_only)
        total = self.text_only + self.both + self.source_only
        if min(self.text_only, self.both, self.source_only) < 0 or total > 1:
            raise ValueError(f"cond_dropout fractions must be >= 0 and sum to <= 1, got {self.as_dict()}")

    @classmethod
    def of(cls, value: ConditionDropout | Mapping[str, Any] | None) -> ConditionDropout:
        if isinstance(value, ConditionDropout):
            return value
        value = {k: v for k, v in dict(value or {}).items() if k != "_target_"}
        return cls(**value)

    def as_dict(self) -> dict[str, float]:
        return {"text_only": self.text_only, "both": self.both, "source_only": self.source_only}

    def sample(
        self, batch_size: int, generator: torch.Generator, device, has_source: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(drop_text, drop_source)`` boolean masks of shape ``[batch_size]``."""
        r = torch.rand(batch_size, generator=generator, device=device)
        if not has_source:
            return r < self.text_only, torch.zeros(batch_size, dtype=torch.bool, device=device)
        drop_text = r < self.text_only + self.both  # text alone, or text and source together
        drop_source = (r >= self.text_only) & (r < self.text_only + self.both + self.source_only)
        return drop_text, drop_source

    def __repr__(self) -> str:
        return f"ConditionDropout({self.as_dict()})"


def objective_of(value: DiffusionObjective | Mapping[str, Any] | None) -> DiffusionObjective:
    if isinstance(value, DiffusionObjective):
        return value
    return DiffusionObjective(**{k: v for k, v in dict(value or {}).items() if k != "_target_"})
