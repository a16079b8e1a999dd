"""Training from cached latents (``vidiff-prep latents``) and the autoencoder identity it depends on."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from vidiff.config import load_model_preset
from vidiff.models.autoencoder import autoencoder_fingerprint
from vidiff.training.module import VIDiffModule


def _calibrated_autoencoder_model(tmp_path, scale: float = 0.5):
    """A tiny model whose VAE differs from the preset's, weights and scaling factor (as after the VAE stage)."""
    model = load_model_preset("tiny")
    with torch.no_grad():
        model.vae.encoder.conv_in.weight.mul_(1.5)
    model.vae.register_to_config(scaling_factor=scale)
    return model, model.save_pretrained(tmp_path / "vae_stage")


def test_next_stage_keeps_the_autoencoders_scaling_factor(tmp_path):
    """A stage started from the autoencoder stage's model must encode with that stage's calibrated scaling factor,
    not the preset's 0.18215 (the weights alone do not carry it)."""
    trained, folder = _calibrated_autoencoder_model(tmp_path)
    module = VIDiffModule(load_model_preset("tiny"), stage="t2v", init_from=str(folder), ema_decay=None)
    assert module.model.vae.config.scaling_factor == 0.5
    assert autoencoder_fingerprint(module.model.vae) == autoencoder_fingerprint(trained.vae)


def test_next_stage_from_a_lightning_checkpoint_keeps_the_scaling_factor(tmp_path):
    trained, _ = _calibrated_autoencoder_model(tmp_path, scale=0.25)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "vae_scaling_factor": 0.25}, checkpoint)
    module = VIDiffModule(load_model_preset("tiny"), stage="v2v", init_from=str(checkpoint), ema_decay=None)
    assert module.model.vae.config.scaling_factor == 0.25
