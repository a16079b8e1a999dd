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
from vidiff.pipelines import load_model, save_model
from vidiff.training.module import VIDiffModule


def _calibrated_autoencoder_model(tmp_path, scale: float = 0.5):
    """A tiny model whose VAE differs from the preset's, weights and scaling factor (as after the VAE stage)."""
    model = load_model_preset("tiny")
    with torch.no_grad():
        model.vae.encoder.conv_in.weight.mul_(1.5)
    model.vae.register_to_config(scaling_factor=scale)
    return model, save_model(model, tmp_path / "vae_stage")


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


# ------------------------------------------------------------------------------------------ latent shards
@pytest.fixture(scope="module")
def autoencoder_model(tmp_path_factory):
    """A saved tiny model whose VAE is not the preset's (another fingerprint) and is calibrated."""
    model, folder = _calibrated_autoencoder_model(tmp_path_factory.mktemp("ae"), scale=0.4)
    return model, folder


@pytest.fixture(scope="module")
def latent_shards(tiny_shards, autoencoder_model, tmp_path_factory):
    from vidiff.cli.prep import main as prep_main

    out = tmp_path_factory.mktemp("latents")
    _, folder = autoencoder_model
    args = ["latents", "--model", str(folder), "--shards", str(tiny_shards), "--out", str(out), "--device", "cpu"]
    assert prep_main([*args, "--quiet", "--dtype", "float32"]) == 0
    return out


def _raw_samples(shard):
    import webdataset as wds

    return list(wds.tarfile_to_samples()([{"url": str(shard)}]))


def test_latent_shards_hold_the_posterior_of_every_stored_frame(tiny_shards, latent_shards, autoencoder_model):
    """Every input sample is in the output with all its members, plus the autoencoder's posterior of every stored
    frame (mean and std, as the VAE itself gives them) and the fingerprint of that autoencoder."""
    from vidiff.data.shards import decode_frames, to_model_range
    from vidiff.models.autoencoder import latent_posterior

    model, _ = autoencoder_model
    fingerprint = autoencoder_fingerprint(model.vae)
    assert fingerprint != autoencoder_fingerprint(load_model_preset("tiny").vae)
    for task in ("dehaze", "rvos", "edit"):
        inputs = sorted((tiny_shards / task).glob("*.tar"))
        outputs = sorted((latent_shards / task).glob("*.tar"))
        assert [p.name for p in inputs] == [p.name for p in outputs]  # every split, same names
        manifest = json.loads((latent_shards / task / "latents.json").read_text())
        assert manifest["autoencoder"] == fingerprint and manifest["factor"] == 8
        raw_in, raw_out = _raw_samples(inputs[0])[0], _raw_samples(outputs[0])[0]
        for member in ("src.mp4", "tgt.mp4", "txt"):
            assert raw_out[member] == raw_in[member]
        meta = json.loads(raw_out["json"])
        assert meta["latent"]["autoencoder"] == fingerprint and meta["latent"]["scaling_factor"] == 0.4
        frames = decode_frames(raw_in["src.mp4"], 0, meta["num_frames"])  # [f, h, w, 3]
        h, w = frames.shape[1] // 8 * 8, frames.shape[2] // 8 * 8
        video = to_model_range(torch.from_numpy(frames[:, :h, :w]).permute(0, 3, 1, 2))
        mean, std = latent_posterior(model.vae, video)
        stored = np.load(__import__("io").BytesIO(raw_out["src.latent.npy"]))
        assert stored.shape == (2, meta["num_frames"], 4, h // 8, w // 8)
        np.testing.assert_allclose(stored[0], mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(stored[1], std.numpy(), atol=1e-5)
        assert "tgt.latent.npy" in raw_out
    rvos = _raw_samples(sorted((latent_shards / "rvos").glob("*.tar"))[0])[0]
    assert "mask.npy.gz" in rvos


def test_latent_prep_resumes_and_refuses_latents_of_another_autoencoder(tiny_shards, latent_shards, tmp_path, capsys):
    from vidiff.cli.prep import main as prep_main

    shard = sorted((latent_shards / "dehaze").glob("*.tar"))[0]
    before = shard.stat().st_mtime_ns
    preset = save_model(load_model_preset("tiny"), tmp_path / "preset")
    # a rerun with the same autoencoder rewrites nothing
    _, folder = _calibrated_autoencoder_model(tmp_path / "again", scale=0.4)
    args = ["latents", "--shards", str(tiny_shards), "--out", str(latent_shards), "--quiet", "--dtype", "float32"]
    assert prep_main([*args, "--model", str(folder), "--tasks", "dehaze"]) == 0
    assert shard.stat().st_mtime_ns == before
    assert "already converted" in capsys.readouterr().out
    # another autoencoder: a one-line error naming the folder, nothing touched
    assert prep_main([*args, "--model", str(preset), "--tasks", "dehaze"]) == 2
    err = capsys.readouterr().err
    assert "holds latents of autoencoder" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert shard.stat().st_mtime_ns == before
    # not a model folder
    assert prep_main([*args, "--model", str(tmp_path)]) == 2
    assert "no autoencoder here" in capsys.readouterr().err


def _latent_options(**overrides):
    from vidiff.data.shards import ClipOptions

    return ClipOptions(**{"num_frames": 4, "resolution": 32, "long_video_prob": 0.0, **overrides})


def test_latent_training_sample_is_a_window_and_crop_of_the_stored_posterior(latent_shards):
    from vidiff.data.shards import decode_sample

    raw = _raw_samples(sorted((latent_shards / "inpaint").glob("*-train-*.tar"))[0])[0]
    stats = np.load(__import__("io").BytesIO(raw["tgt.latent.npy"]))
    source = np.load(__import__("io").BytesIO(raw["src.latent.npy"]))
    sample = decode_sample(raw, "inpaint", _latent_options(), random.Random(3))
    assert "target" not in sample and "source" not in sample
    mean, std, src = sample["target_latents"], sample["target_latents_std"], sample["source_latents"]
    assert mean.shape == std.shape == src.shape == (4, 4, 4, 4)  # [c, F, 32/8, 32/8]
    # find the window and crop among all placements: exactly one matches, and source and std share it
    f, h, w = stats.shape[1], stats.shape[-2], stats.shape[-1]
    found = [
        (t, y, x)
        for t in range(f - 3)
        for y in range(h - 3)
        for x in range(w - 3)
        if np.array_equal(stats[0, t : t + 4, :, y : y + 4, x : x + 4].transpose(1, 0, 2, 3), mean.numpy())
    ]
    assert len(found) == 1
    t, y, x = found[0]
    np.testing.assert_array_equal(stats[1, t : t + 4, :, y : y + 4, x : x + 4].transpose(1, 0, 2, 3), std.numpy())
    np.testing.assert_array_equal(source[0, t : t + 4, :, y : y + 4, x : x + 4].transpose(1, 0, 2, 3), src.numpy())
    # other draws move the window (augmentation still happens)
    crops = {tuple(decode_sample(raw, "inpaint", _latent_options(), random.Random(s))["target_latents"][0, 0, 0].tolist())
             for s in range(8)}  # fmt: skip
    assert len(crops) > 1
    # validation reads the pixels the latent shard keeps
    val = decode_sample(raw, "inpaint", _latent_options(train=False))
    assert val["target"].shape == (3, 4, 32, 32) and "target_latents" not in val


def test_latent_continuation_sample_copies_target_means_into_the_source(latent_shards):
    from vidiff.data.shards import decode_sample

    raw = _raw_samples(sorted((latent_shards / "dehaze").glob("*-train-*.tar"))[0])[0]
    sample = decode_sample(
        raw, "dehaze", _latent_options(long_video_prob=1.0, long_video_frames=[2]), random.Random(0)
    )
    assert sample["num_reference_frames"] == 2
    assert torch.equal(sample["source_latents"][:, :2], sample["target_latents"][:, :2])
    assert not torch.equal(sample["source_latents"][:, 2:], sample["target_latents"][:, 2:])
    assert "the first 2 frames" in sample["instruction"]


def test_latent_image_instruction_and_hflip(latent_shards):
    from vidiff.data.shards import decode_sample
    from vidiff.errors import VIDiffError

    raw = _raw_samples(sorted((latent_shards / "edit").glob("*-train-*.tar"))[0])[0]
    sample = decode_sample(raw, "edit", _latent_options(image_prob=1.0), random.Random(0))
    assert sample["has_image"] and sample["image"].shape == (3, 32, 32) and float(sample["image"].std()) > 0.01
    with pytest.raises(VIDiffError, match="hflip"):
        decode_sample(raw, "edit", _latent_options(hflip=True), random.Random(0))


def test_module_reads_latent_batches_and_refuses_another_autoencoders(latent_shards, autoencoder_model):
    """The source latents of a latent batch are the model's own encoding of those frames (scaled), the target is a
    posterior sample; latents of another autoencoder stop training with a one-line error."""
    from vidiff.data.shards import collate, decode_sample
    from vidiff.errors import VIDiffError
    from vidiff.training.objective import step_generator

    model, folder = autoencoder_model
    raws = _raw_samples(sorted((latent_shards / "deblur").glob("*-train-*.tar"))[0])
    batch = collate([decode_sample(r, "deblur", _latent_options(), random.Random(i)) for i, r in enumerate(raws)])
    module = VIDiffModule(load_model_preset("tiny"), stage="v2v", init_from=str(folder), ema_decay=None)
    target, source = module.batch_latents(batch, step_generator(0, 5, 0, "cpu"))
    torch.testing.assert_close(source, batch["source_latents"] * 0.4)
    noise = torch.randn(batch["target_latents"].shape, generator=step_generator(0, 5, 0, "cpu"))
    torch.testing.assert_close(target, (batch["target_latents"] + batch["target_latents_std"] * noise) * 0.4)
    loss = module.shared_step({**batch, "step": 0})
    assert torch.isfinite(loss)
    loss.backward()
    assert module.model.unet.conv_in.weight.grad is not None

    preset = VIDiffModule(load_model_preset("tiny"), stage="v2v", ema_decay=None)
    with pytest.raises(VIDiffError, match="re-run `vidiff-prep latents`"):
        preset.shared_step({**batch, "step": 0})


def test_training_from_latent_shards_runs_and_the_vae_stage_refuses_them(latent_shards, autoencoder_model, tmp_path):
    """``vidiff-train`` on the latent folder: T2V and V2V train (validation reads the kept pixels); the autoencoder
    stage, which needs pixels, stops with a one-line error."""
    _, folder = autoencoder_model
    common = [
        f"paths.data_dir={latent_shards}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    run = tmp_path / "v2v"
    result = subprocess.run(
        [sys.executable, "-m", "vidiff.cli.train", "experiment=smoke", f"hydra.run.dir={run}",
         f"stage.init_from={folder}", "trainer.max_steps=6", "trainer.val_check_interval=6", *common],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/dehaze/psnr" in metrics

    assert load_model(run / "model").vae.config.scaling_factor == 0.4
    result = subprocess.run(
        [sys.executable, "-m", "vidiff.cli.train", "experiment=demo/vae", f"hydra.run.dir={tmp_path / 'vae'}",
         "trainer.max_steps=2", "data.num_frames=4", "data.resolution=32", *common],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the autoencoder stage trains on pixels" in result.stderr


def test_a_configuration_error_while_decoding_stops_the_stream_instead_of_skipping_batches():
    """A ``VIDiffError`` from a decoder (e.g. hflip on latent shards) fails every sample alike: it must surface, not
    be counted as one corrupt batch after another."""
    from vidiff.data.mixing import TaskSchedule, TaskScheduledMix
    from vidiff.data.shards import collate, warn_and_count
    from vidiff.errors import VIDiffError

    def decoder(raw, rng):
        raise VIDiffError("data: hflip cannot be applied to latent shards")

    batches = iter([[{"__key__": f"k{i}"}] for i in range(3)])
    mix = TaskScheduledMix({"dehaze": batches}, TaskSchedule({"dehaze": 1.0}, 0), decoders={"dehaze": decoder},
                           collate=collate)  # fmt: skip
    with pytest.raises(VIDiffError, match="hflip"):
        next(iter(mix))
    assert mix.decode_errors == 0
    counter: dict[str, int] = {}
    with pytest.raises(VIDiffError):
        warn_and_count(counter)(VIDiffError("config"))
    assert warn_and_count(counter)(ValueError("corrupt")) is True and counter["errors"] == 1


# ------------------------------------------------------------------------------------------ latents or pixels, per task
def test_the_latents_option_chooses_per_task_between_cached_latents_and_pixels(tiny_shards, latent_shards):
    """``latents: null`` reads what the sample holds, ``false`` encodes a latent shard's kept pixels on the fly,
    ``true`` on a pixel shard is a one-line configuration error (it would fail for every sample alike)."""
    from vidiff.data.shards import decode_sample
    from vidiff.errors import VIDiffError

    latent_raw = _raw_samples(sorted((latent_shards / "dehaze").glob("*-train-*.tar"))[0])[0]
    pixel_raw = _raw_samples(sorted((tiny_shards / "dehaze").glob("*-train-*.tar"))[0])[0]
    assert "target_latents" in decode_sample(latent_raw, "dehaze", _latent_options(), random.Random(0))
    assert "target_latents" in decode_sample(latent_raw, "dehaze", _latent_options(latents=True), random.Random(0))
    as_pixels = decode_sample(latent_raw, "dehaze", _latent_options(latents=False), random.Random(0))
    assert "target_latents" not in as_pixels and as_pixels["target"].shape == (3, 4, 32, 32)
    assert "target" in decode_sample(pixel_raw, "dehaze", _latent_options(latents=False), random.Random(0))
    with pytest.raises(VIDiffError, match="dehaze.*latents: true.*vidiff-prep latents") as err:
        decode_sample(pixel_raw, "dehaze", _latent_options(latents=True), random.Random(0))
    assert "\n" not in str(err.value)
    # latents not written yet: the error says how to write them
    from vidiff.data import MultiTaskDataModule

    missing = MultiTaskDataModule({"dehaze": {"urls": str(latent_shards / "nowhere"), "latents": True}})
    with pytest.raises(VIDiffError, match=r"nowhere: no such shard \(data task 'dehaze' reads cached latents"):
        missing.task_pipeline("dehaze")


def test_one_run_mixes_tasks_from_cached_latents_with_tasks_encoded_on_the_fly(
    tiny_shards, latent_shards, autoencoder_model, tmp_path
):
    """``vidiff-train`` with dehaze and deblur reading cached latents, recolor reading a latent shard's pixels
    (``latents: false``) and inpaint and edit reading pixel shards: both kinds of batch train, every loss finite."""
    from .test_train import compose_train, run_train, tiny_overrides

    _, folder = autoencoder_model
    tasks = []
    for task in ("dehaze", "deblur"):
        tasks += [f"data.tasks.{task}.urls={latent_shards / task}", f"+data.tasks.{task}.latents=true"]
    tasks += [f"data.tasks.recolor.urls={latent_shards / 'recolor'}", "+data.tasks.recolor.latents=false"]
    tasks += ["+data.tasks.inpaint.latents=false", "+data.tasks.edit.latents=false"]
    overrides = tiny_overrides(
        tiny_shards, tmp_path, f"stage.init_from={folder}", "trainer.max_steps=4", "trainer.limit_val_batches=0",
        "callbacks.video_logger=null", "callbacks.lr_monitor=null", "~logger", "+callbacks.kinds._target_=tests.helpers.batch_kinds.BatchKinds",
        *tasks,
    )  # fmt: skip
    _, objects = run_train(compose_train(overrides))
    (probe,) = [c for c in objects["trainer"].callbacks if type(c).__name__ == "BatchKinds"]
    assert len(probe.records) == 4
    kinds = {(r["task"], r["latents"]) for r in probe.records}
    print("steps (task, from latents):", [(r["task"], r["latents"]) for r in probe.records])
    assert kinds <= {("dehaze", True), ("deblur", True), ("recolor", False), ("inpaint", False), ("edit", False)}
    assert {latents for _, latents in kinds} == {True, False}, kinds
    assert all(np.isfinite(r["loss"]) for r in probe.records)
