"""The trainable MLP that maps CLIP image features into the text-embedding space."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn


class ImageInstructionProjector(ModelMixin, ConfigMixin):
    """Project one CLIP image embedding to ``num_tokens`` instruction tokens.

    The tokens are appended to the 77 text tokens, so the U-Net cross-attends to both.

    Args:
        image_embed_dim (`int`): size of the CLIP vision embedding (``projection_dim``).
        cross_attention_dim (`int`): size of the text tokens the U-Net attends to.
        hidden_dim (`int`, defaults to 1024): width of the hidden layer.
        num_tokens (`int`, defaults to 4): number of instruction tokens produced per image.
    """

    @register_to_config
    def __init__(self, image_embed_dim: int, cross_attention_dim: int, hidden_dim: int = 1024, num_tokens: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(image_embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``[b, image_embed_dim]`` -> ``[b, num_tokens, cross_attention_dim]``."""
        tokens = rearrange(self.mlp(image_embeds), "b (n d) -> b n d", n=self.config.num_tokens)
        return self.norm(tokens)
