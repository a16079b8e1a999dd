"""``vidiff-train``: the Hydra training app over ``conf/train.yaml``.

    vidiff-train experiment=smoke paths.data_dir=data/tiny
    vidiff-train experiment=paper/stage3_v2v trainer=ddp logger=wandb
    vidiff-train -m hparams_search=lr_optuna experiment=smoke
    vidiff-train --cfg job experiment=smoke          # print the composed config

Outputs go to the run folder (``paths.output_dir``): ``checkpoints/last.ckpt``, ``model/`` (the VIDiff model
directory ``vidiff-edit --checkpoint`` loads, with EMA weights when EMA is on), logs and videos.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vidiff.cli.common import one_line_errors
from vidiff.config import conf_dir
from vidiff.errors import VIDiffError


class _DropLightningTips(logging.Filter):
    """Lightning advertises its cloud products ("💡 Tip: ... litlogger / litmodels") at every fit: third-party
    noise on a training log, dropped; every other Lightning message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (``null`` entries are skipped)."""
    if not cfg:
        return []
    nodes = [node for node in cfg.values() if node is not None and "_target_" in node]
    if any("Wandb" in str(node["_target_"]) for node in nodes):
        from vidiff.utils.extras import require

        require("wandb", "logger=wandb")
    return [hydra.utils.instantiate(node) for node in nodes]


def finish_wandb(loggers: list[Any], trainer) -> None:
    """Close W&B runs when fitting ends: Lightning leaves that to an exit hook, which may not get to write the run's
    last records (an offline run folder then holds no history to sync)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero and logger._experiment is not None:
            logger.experiment.finish()


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    from vidiff.training.runs import newest_checkpoint

    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "auto":  # the run folder's newest complete checkpoint, if any: a restarted run resumes by itself
        path = newest_checkpoint(cfg.paths.output_dir)
        if path is not None:
            print(f"vidiff-train: resuming from {path}")
        return path
    if ckpt == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise VIDiffError(
                f"{path}: no checkpoint to resume (ckpt_path=last resumes the run in hydra.run.dir; pass the same "
                f"hydra.run.dir as the run to resume, or ckpt_path=<file>)"
            )
        return str(path)
    if not Path(ckpt).is_file():
        raise VIDiffError(f"{ckpt}: ckpt_path does not exist")
    return str(ckpt)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build everything from ``cfg``, fit, export; return the final metrics and the objects."""
    import lightning as L
    import torch

    from vidiff.config import instantiate_model
    from vidiff.training.runs import apply_identity, resolve_init_from

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLightningTips())
    # the frozen VAE/CLIP encoders are in eval mode on purpose (the modules' train() keeps them there)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # Lightning's own use of a torch API that torch deprecated; nothing a user can act on
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    # a stage folder -> its newest finished run; the model takes that run's identity (vidiff.training.runs)
    cfg.stage.init_from = resolve_init_from(cfg.stage.get("init_from"))
    apply_identity(cfg.model, cfg.stage.init_from, bool(cfg.get("convert_identity")))
    model = instantiate_model(cfg.model)
    module = hydra.utils.instantiate(cfg.stage, model=model, _convert_="all")
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    speed = cfg.get("speed") or {}
    if speed.get("compile") or speed.get("channels_last"):
        from vidiff.utils.speed import apply_speed

        # before fit: DDP wraps (and buckets) the parameters in the layout they have then
        prog = "vidiff-train" if trainer.is_global_zero else None
        applied = apply_speed(module.model, **speed, device=trainer.strategy.root_device, prog=prog)
        if prog:
            print(f"{prog}: U-Net with {', '.join(applied)}")
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg))
    finally:
        finish_wandb(loggers, trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # a run stopped before max_steps (preemption) exports nothing: the next stage finds finished runs only
    finished = trainer.max_steps < 0 or trainer.global_step >= trainer.max_steps
    if cfg.get("export_model") and trainer.is_global_zero and not trainer.fast_dev_run and finished:
        # what long-video editing needs to know: did this model learn to continue from reference frames?
        trained = cfg.data.get("long_video_prob", 0) > 0
        reference_frames = tuple(cfg.data.get("long_video_frames", ())) if trained else ()
        # the size it learned at: what vidiff-edit, the app and vidiff-eval work at unless told otherwise
        sampling = {"size": int(cfg.data.resolution)} if cfg.data.get("resolution") else None
        full_precision = None
        if cfg.stage.get("frozen_dtype"):
            # the frozen encoders were cast for training; the export takes them from where they came from
            from vidiff.training.engine import load_init_weights

            full_precision = instantiate_model(cfg.model)
            if cfg.stage.init_from:
                load_init_weights(full_precision, cfg.stage.init_from)
        out = module.export(
            Path(cfg.paths.output_dir) / "model", reference_frames, sampling=sampling, full_precision=full_precision
        )
        print(f"vidiff-train: model exported to {out}")
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    with one_line_errors("vidiff-train"):
        metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    if name:
        if name not in metrics:
            print(
                f"vidiff-train: error: optimized_metric {name!r} was not logged (have: {sorted(metrics)})",
                file=sys.stderr,
            )
            sys.exit(2)
        return metrics[name]
    return None


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
