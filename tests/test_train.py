"""vidiff-train: configs compose, stages train what they should, resume is exact, DDP, export, sweeps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from vidiff.config import conf_dir
from vidiff.pipelines import load_model


EXPERIMENTS = sorted(
    str(p.relative_to(conf_dir() / "experiment").with_suffix("")) for p in (conf_dir() / "experiment").rglob("*.yaml")
)


def compose_train(overrides: list[str], hydra_config: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_config)


def run_train(cfg):
    from vidiff.cli.train import train

    return train(cfg)


def tiny_overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke",
        f"paths.data_dir={shards}",
        f"paths.output_dir={out}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *extra,
    ]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tiny_shards, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"paths.output_dir={tmp_path}", f"paths.data_dir={tiny_shards}"])
    assert cfg.stage._target_ in ("vidiff.training.module.VIDiffModule", "vidiff.training.vae.VAEModule")
    if "single_task" in experiment:
        assert list(cfg.data.select_tasks) == [experiment.rsplit("_", 1)[-1]]
    # the sd15 experiments are instantiated with the tiny architecture (no weights here) and a CPU trainer
    cfg = compose_train(
        [
            f"experiment={experiment}",
            "model=tiny",
            "trainer=cpu",
            "stage.init_from=null",
            f"paths.output_dir={tmp_path}",
            f"paths.data_dir={tiny_shards}",
        ]
    )
    from vidiff.cli.train import instantiate_group
    from vidiff.config import instantiate_model

    data = instantiate(cfg.data)
    module = instantiate(cfg.stage, model=instantiate_model(cfg.model))
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.callbacks), logger=False)
    assert data.tasks and trainer.max_steps == cfg.trainer.max_steps
    # the stage node's fields are the module's stage, read once
    assert module.stage.name == cfg.stage.stage and list(module.stage.trains) == list(cfg.stage.trains)
    assert module.stage.source == cfg.stage.source and module.stage.frames_per_sample == cfg.stage.frames_per_sample


def test_slurm_launcher_and_ddp_trainer_compose(tmp_path):
    cfg = compose_train(
        ["experiment=paper/stage3_v2v", "hydra/launcher=slurm", "trainer=slurm", f"paths.output_dir={tmp_path}"],
        hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == cfg.trainer.devices == 8 and launcher.nodes == cfg.trainer.num_nodes
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.precision == "bf16-mixed"


def test_smoke_experiment_trains_exports_and_the_model_edits(tiny_shards, tmp_path, bikes_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vidiff.cli.train",
        "experiment=smoke",
        f"paths.data_dir={tiny_shards}",
        f"hydra.run.dir={out}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "model" / "model_index.json").exists()
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/dehaze/psnr" in metrics and "train/" in metrics
    assert list((out / "videos").glob("*.mp4"))
    edited = tmp_path / "edited.mp4"
    from vidiff.cli.edit import main as edit_main
    from vidiff.io import probe_video

    rc = edit_main(
        [
            str(bikes_path),
            "-o",
            str(edited),
            "-i",
            "Remove the haze.",
            "--checkpoint",
            str(out / "model"),
            "--frames",
            "4",
            "--steps",
            "2",
            "--size",
            "64",
            "--quiet",
        ]
    )
    assert rc == 0 and probe_video(edited).num_frames == 4


def test_t2v_trains_only_the_temporal_layers(tiny_shards, tmp_path):
    cfg = compose_train(
        tiny_overrides(
            tiny_shards,
            tmp_path,
            "stage=t2v",
            "trainer.max_steps=3",
            "export_model=false",
            "~logger",
            "~callbacks",
            "trainer.limit_val_batches=0",
        )
    )
    from vidiff.config import instantiate_model

    before = {k: v.clone() for k, v in instantiate_model(cfg.model).state_dict().items()}
    _, objects = run_train(cfg)
    after = objects["module"].model.state_dict()
    temporal = [k for k in after if "motion_modules." in k]
    assert temporal and all(torch.equal(before[k], after[k]) for k in after if k not in temporal)
    changed = [k for k in temporal if not torch.equal(before[k], after[k])]
    assert len(changed) > len(temporal) // 2


def _deterministic_data(shards: Path) -> list[str]:
    one_shard = shards / "dehaze" / "video-folder-train-000000.tar"
    return [
        "data.select_tasks=[dehaze]",
        f"data.tasks.dehaze.urls={one_shard}",
        "data.num_frames=8",
        "data.crop_scale=[1.0,1.0]",
        "+data.paraphrase=false",
        "data.long_video_prob=0.0",
        "data.tasks.edit.image_prob=0.0",
        "data.shuffle_buffer=1",
        "data.tasks.dehaze.batch_size=1",
        "~logger",
        "callbacks.video_logger=null",
        "callbacks.lr_monitor=null",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "trainer.limit_val_batches=0",
        "export_model=false",
    ]


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(tiny_shards, tmp_path):
    full_cfg = compose_train(
        tiny_overrides(tiny_shards, tmp_path / "full", "trainer.max_steps=6", *_deterministic_data(tiny_shards))
    )
    _, full = run_train(full_cfg)
    first = compose_train(
        tiny_overrides(tiny_shards, tmp_path / "resumed", "trainer.max_steps=3", *_deterministic_data(tiny_shards))
    )
    run_train(first)
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()
    second = compose_train(
        tiny_overrides(
            tiny_shards,
            tmp_path / "resumed",
            "trainer.max_steps=6",
            "ckpt_path=last",
            *_deterministic_data(tiny_shards),
        )
    )
    _, resumed = run_train(second)
    assert resumed["trainer"].global_step == full["trainer"].global_step == 6
    a, b = full["module"].trainable_state_dict(), resumed["module"].trainable_state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"
    # and the run did train: weights moved away from the 3-step checkpoint
    ema_a = full["module"].ema.shadow_params
    ema_b = resumed["module"].ema.shadow_params
    assert max((x - y).abs().max().item() for x, y in zip(ema_a, ema_b)) <= 1e-6


def test_resume_without_checkpoint_is_one_line_error(tiny_shards, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "vidiff.cli.train",
        "experiment=smoke",
        f"paths.data_dir={tiny_shards}",
        f"hydra.run.dir={tmp_path}",
        "ckpt_path=last",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1].startswith("vidiff-train: error:") and "Traceback" not in result.stderr
    )


def test_two_process_ddp_trains_and_saves(tiny_shards, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "vidiff.cli.train",
        "experiment=smoke",
        "trainer=ddp_sim",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=0",
        f"paths.data_dir={tiny_shards}",
        f"hydra.run.dir={out}",
        "callbacks.video_logger=null",
        "callbacks.model_checkpoint.every_n_train_steps=4",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "model" / "unet").is_dir()


@pytest.mark.slow
def test_two_trial_optuna_sweep(tiny_shards, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "vidiff.cli.train",
        "-m",
        "hparams_search=lr_optuna",
        "experiment=smoke",
        "hydra.sweeper.n_trials=2",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=0",
        "callbacks.video_logger=null",
        "export_model=false",
        f"paths.data_dir={tiny_shards}",
        f"hydra.sweep.dir={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "optimization_results.yaml").exists()
    assert "best_value" in (tmp_path / "optimization_results.yaml").read_text()


def test_vae_stage_learns_to_reconstruct_and_sets_the_latent_scale(tiny_shards, tmp_path):
    """The autoencoder stage (the demo's first): reconstruction of held-out real frames improves, and the exported
    model's VAE scaling factor whitens its latents."""
    import numpy as np

    from vidiff.config import load_model_preset
    from vidiff.evaluation.benchmark import iter_videos, vae_reconstruction
    from vidiff.evaluation.metrics.pixel import psnr_frames

    held_out = next(iter_videos(str(tiny_shards / "deblur"), "val", "deblur")).target
    before = psnr_frames(vae_reconstruction(load_model_preset("tiny"), held_out), held_out).mean()
    cfg = compose_train(
        [
            "experiment=demo/vae",
            f"paths.data_dir={tiny_shards}",
            f"paths.output_dir={tmp_path}",
            "trainer.max_steps=100",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
    )
    run_train(cfg)
    trained = load_model(tmp_path / "model")
    after = psnr_frames(vae_reconstruction(trained, held_out), held_out).mean()
    assert after > before + 3, (before, after)
    # the other networks are untouched by this stage
    fresh = load_model_preset("tiny")
    assert torch.equal(trained.unet.conv_in.weight, fresh.unet.conv_in.weight)
    scale = trained.vae.config.scaling_factor
    assert scale != 0.18215
    from vidiff.utils.frames import video_to_tensor

    with torch.no_grad():
        latents = trained.encode_video(video_to_tensor(held_out))
    assert 0.3 < float(latents.std()) < 3.0 and np.isfinite(scale)


def test_vae_stage_exports_the_ema_of_its_weights(tiny_shards, tmp_path):
    """`stage.ema_decay` on the autoencoder stage: the checkpoint carries the EMA, and the exported VAE is the EMA
    (its shadow weights exactly), not the last trained weights (the demo's last weights sit wherever its last
    batches left them: 20.2 against 25.3 dB on the held-out clip for two sample orders)."""
    from vidiff.training.checkpoint_io import AtomicCheckpointIO

    cfg = compose_train(
        [
            "experiment=demo/vae",
            f"paths.data_dir={tiny_shards}",
            f"paths.output_dir={tmp_path}",
            "trainer.max_steps=4",
            "stage.ema_decay=0.5",
            "callbacks.model_checkpoint.every_n_train_steps=4",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
    )
    run_train(cfg)
    checkpoint = AtomicCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    last = {k.removeprefix("model.vae."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.vae.")}
    exported = load_model(tmp_path / "model").vae
    names = [name for name, _ in exported.named_parameters()]
    assert set(names) == set(last)  # the checkpoint holds what trains: the VAE's weights
    shadow = dict(zip(names, checkpoint["ema"]["shadow_params"], strict=True))
    moved = [n for n in names if not torch.equal(shadow[n], last[n])]
    assert len(moved) > len(names) // 2  # the EMA lags the weights
    for name, param in exported.named_parameters():
        assert torch.equal(param.detach(), shadow[name]), name


def test_vae_saturation_range_scales_chroma_and_keeps_luma():
    """`stage.saturation_range`: each frame's chroma is scaled by its own seeded factor in the range; its luma (BT.601)
    is unchanged, a factor of 0 gives grey frames, and a bad range is refused when the stage is built."""
    from vidiff.config import load_model_preset
    from vidiff.training.vae import VAEModule

    model = load_model_preset("tiny")
    frames = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    luma = (frames * weights).sum(1, keepdim=True)
    chroma = frames - luma

    stage = VAEModule(model, saturation_range=[0.2, 0.6])
    varied = stage.vary_saturation(frames, micro_step=3)
    assert torch.allclose((varied * weights).sum(1, keepdim=True), luma, atol=1e-5)
    factors = ((varied - luma) * chroma).flatten(1).sum(1) / chroma.pow(2).flatten(1).sum(1)
    assert torch.all(factors > 0.2 - 1e-4) and torch.all(factors < 0.6 + 1e-4), factors
    assert factors.std() > 0.01  # one factor per frame, not one per batch
    assert torch.equal(varied, stage.vary_saturation(frames, micro_step=3))  # seeded by the micro-step
    assert not torch.equal(varied, stage.vary_saturation(frames, micro_step=4))

    grey = VAEModule(model, saturation_range=[0.0, 0.0]).vary_saturation(frames, micro_step=0)
    assert torch.allclose(grey, luma.expand_as(frames), atol=1e-6)
    with pytest.raises(ValueError, match="saturation_range"):
        VAEModule(model, saturation_range=[0.8, 0.2])


def test_wandb_logger_without_wandb_says_which_extra(monkeypatch, tmp_path):
    import sys

    from vidiff.cli.train import instantiate_group
    from vidiff.errors import VIDiffError

    cfg = compose_train(["logger=wandb", f"paths.output_dir={tmp_path}"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as after `pip install vidiff` without the wandb extra
    with pytest.raises(
        VIDiffError, match=r"logger=wandb needs wandb, which is not installed: pip install 'vidiff\[wandb\]'"
    ):
        instantiate_group(cfg.logger)


def test_insv2v_recipe_trains_only_the_motion_modules(tiny_shards, tmp_path):
    from vidiff.config import instantiate_model
    from vidiff.models.unet import is_temporal_parameter

    cfg = compose_train(
        ["experiment=paper/stage3_insv2v", "model=tiny", "trainer=cpu", f"paths.output_dir={tmp_path}",
         f"paths.data_dir={tiny_shards}"]
    )  # fmt: skip
    module = instantiate(cfg.stage, model=instantiate_model(cfg.model))
    trained = {n for n, p in module.model.named_parameters() if p.requires_grad}
    unet = {n for n in trained if n.startswith("unet.")}
    assert unet and all(is_temporal_parameter(n) for n in unet)
    assert {
        n for n, _ in module.model.named_parameters() if n.startswith("unet.") and is_temporal_parameter(n)
    } == unet
    assert not any(n.startswith(("vae.", "text_encoder.")) for n in trained)
