"""``StageModule``: what every training stage's LightningModule shares, one engine for the diffusion stages
(:class:`~vidiff.training.module.VIDiffModule`) and the autoencoder stage (:class:`~vidiff.training.vae.VAEModule`).

- the start: ``init_from``'s weights, which parameters train (the :class:`~vidiff.training.stage.Stage`'s
  ``trains``, or LoRA adapters in place of the U-Net's weights), the frozen networks held in eval mode;
- AdamW with its warm-up and schedule over the trained parameters (:mod:`vidiff.training.optim`);
- the EMA of the trained weights, updated after each optimizer step, and :meth:`StageModule.ema_scope`;
- checkpoints that hold what training changes (:mod:`vidiff.training.checkpoint_io`), with the EMA;
- :meth:`StageModule.export`: the model directory the next stage, ``vidiff-edit`` and evaluation load.

A subclass brings its loss (``training_step``) and validation; what differs between stages is data
(:mod:`vidiff.training.stage`), not a branch on the stage's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from diffusers.training_utils import EMAModel

from vidiff.errors import ModelLoadError
from vidiff.models import VIDiffModel
from vidiff.pipelines import load_model, save_model
from vidiff.training.checkpoint_io import AtomicCheckpointIO, drop_frozen, restore_frozen
from vidiff.training.optim import adamw_with_warmup
from vidiff.training.stage import Stage


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


class StageModule(L.LightningModule):
    """The shared engine of the training stages. A subclass saves its hyper-parameters (``lr``, ``weight_decay``,
    ``betas``, ``warmup_steps``, ``lr_schedule``, ``optimizer``, ``init_from``, ``ema_device``, ``lora``,
    ``frozen_dtype`` as it has them), then calls :meth:`setup_stage` with its model and :class:`Stage`."""

    model: VIDiffModel
    stage: Stage

    def setup_stage(
        self,
        model: VIDiffModel,
        stage: Stage,
        init_from: str | None = None,
        lora: Mapping[str, Any] | None = None,
        ema_decay: float | None = None,
        ema_device: str | None = None,
        ema_foreach: bool = False,
    ) -> None:
        """Load ``init_from``, set which parameters train (``lora``: adapters on the U-Net instead of its weights;
        the stage's other groups still train), start the EMA of the trained weights, frozen networks in eval."""
        self.model, self.stage = model, stage
        if init_from:
            load_init_weights(model, init_from)
        keep = stage.trains_parameter
        if lora:
            from vidiff.training.lora import add_lora, is_lora_parameter

            add_lora(model, lora)

            def keep(name: str) -> bool:
                return is_lora_parameter(name) or (stage.trains_parameter(name) and not name.startswith("unet."))

        for name, param in model.named_parameters():
            param.requires_grad_(keep(name))
        self.ema = None
        if ema_decay:
            self.ema = EMAModel(self.trainable_parameters(), decay=ema_decay, foreach=bool(ema_foreach))
            if ema_device == "cpu":
                self.ema.to("cpu")
        self.train(False)  # frozen networks in eval mode from the start (see train())

    # ------------------------------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def trained_networks(self) -> list[torch.nn.Module]:
        """The model's networks (U-Net, VAE, encoders, projector) that hold a trained parameter."""
        return [net for _, net in self.model.named_children() if any(p.requires_grad for p in net.parameters())]

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

    def train(self, mode: bool = True) -> StageModule:
        """Only the networks this stage trains follow ``mode``; the frozen ones stay in eval mode whoever calls
        ``train()`` (Lightning after validation, callbacks after logging)."""
        super().train(mode)
        self.model.eval()
        if mode:
            for net in self.trained_networks():
                net.train()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps each submodule's mode as it finds it; the model is built in eval mode
        self.train(True)

    def rank(self) -> int:
        """This process's global rank (0 outside a trainer): every random draw is seeded with it."""
        return self.global_rank if self._trainer is not None else 0

    # ------------------------------------------------------------------------------------------ EMA
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

    def ema_device(self) -> torch.device:
        return torch.device("cpu") if self.hparams.get("ema_device") == "cpu" else self.device

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.ema_device())

    @contextlib.contextmanager
    def ema_scope(self):
        """The model carries the EMA weights inside the ``with`` block, its own weights outside (no EMA: its own)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.trainable_parameters())
        self.ema.copy_to(self.trainable_parameters())
        try:
            yield
        finally:
            self.ema.restore(self.trainable_parameters())

    # ------------------------------------------------------------------------------------------ checkpoints
    def vae_scaling_factor(self) -> float:
        """The VAE scaling factor the exported model will carry (the autoencoder stage calibrates its own)."""
        return float(self.model.vae.config.scaling_factor)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what the exported model will carry, so a next stage started from this checkpoint encodes the same way
        checkpoint["vae_scaling_factor"] = self.vae_scaling_factor()
        drop_frozen(self, checkpoint)
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_frozen(self, checkpoint)
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
            self.ema.to(self.ema_device())

    # ------------------------------------------------------------------------------------------ export
    def export(
        self,
        path: str | Path,
        reference_frames: Sequence[int] | None = None,
        sampling: dict | None = None,
        full_precision: VIDiffModel | None = None,
    ) -> Path:
        """Write the trained model as a VIDiff model directory at ``path`` and return it: with the EMA weights
        (``stage.export.ema``, when there is an EMA), LoRA adapters merged into the U-Net's weights, the frozen
        networks back in full precision, and ``reference_frames`` (the long-video reference frames the training
        data taught; recorded when ``stage.export.reference_frames``). ``sampling``: how the model is best used
        (see :class:`~vidiff.pipelines.VIDiffPipeline`). ``full_precision``: the same model as built before training
        (config and ``init_from``), where the frozen networks are taken from when they were trained in a lower
        precision (``frozen_dtype``): casting back to float32 would not restore what the cast rounded away."""
        path = Path(path)
        if self.stage.export.reference_frames and reference_frames is not None:
            self.model.reference_frames = tuple(int(n) for n in reference_frames)
        if self.hparams.get("frozen_dtype"):
            self.model.float()
            if full_precision is not None:
                for name in ("vae", "text_encoder", "image_encoder"):
                    if getattr(self.model, name) is not None:
                        getattr(self.model, name).load_state_dict(getattr(full_precision, name).state_dict())
        with self.ema_scope() if self.stage.export.ema else contextlib.nullcontext():
            model = self.model
            if self.hparams.get("lora"):
                from vidiff.training.lora import merged

                model = merged(model)  # adapters merged: a plain VIDiff model directory, no peft to load it
            save_model(model, path, sampling)
        return path
