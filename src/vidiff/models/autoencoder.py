"""The frozen autoencoder seen from outside: its fingerprint, its downsampling factor and its latent statistics.

Latent shards (``vidiff-prep latents``) store the posterior of every frame so that the diffusion stages can train
without running the encoder; the fingerprint says which autoencoder wrote them, and training refuses latents of
another one (a retrained or swapped VAE makes every cached latent wrong, silently).
"""

from __future__ import annotations

import hashlib
import json

import torch
from diffusers import AutoencoderKL


# config fields that change what a latent means; every weight is hashed as well
_CONFIG_FIELDS = ("latent_channels", "block_out_channels", "down_block_types", "scaling_factor", "shift_factor")


def autoencoder_fingerprint(vae: AutoencoderKL) -> str:
    """16 hex digits of SHA-256 over the autoencoder's meaning-bearing config and every weight (as float32).

    The same weights give the same fingerprint whatever dtype or device the model sits on.
    """
    digest = hashlib.sha256()
    config = {name: vae.config.get(name) for name in _CONFIG_FIELDS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def downsample_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent along each side (every down block but the last halves the size)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def latent_posterior(
    vae: AutoencoderKL, frames: torch.Tensor, chunk_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[n, 3, h, w]`` in [-1, 1] -> the posterior's mean and standard deviation ``[n, c, h/k, w/k]``,
    unscaled (``VIDiffModel.encode_video`` multiplies a sample or the mean by ``scaling_factor``)."""
    means, stds = [], []
    for chunk in frames.split(chunk_size):
        dist = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A scaled posterior sample, as ``encode_video(sample=True)`` draws it (mean + std x N(0, 1))."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling_factor
