"""What the demo's model quality rests on: the source-residual clean-latent estimate, the long clip degraded
exactly like the held-out segments, the synthetic rvos task with exact masks, and the tune split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from vidiff.config import load_model_preset
from vidiff.data.tasks import is_segmentation_instruction
from vidiff.data_prep import degrade
from vidiff.data_prep.convert_video_folder import degrade_clip
from vidiff.errors import ModelLoadError, VIDiffError
from vidiff.overlay import overlay_to_mask, render_overlay
from vidiff.pipelines import load_model, save_model


X0_OVERRIDES = ["model.noise_scheduler.prediction_type=sample", "model.source_residual=true"]


@pytest.fixture(scope="module")
def residual_model():
    return load_model_preset("tiny", overrides=X0_OVERRIDES)


def test_source_residual_starts_at_copy_the_source(residual_model):
    model = residual_model
    torch.manual_seed(0)
    noisy, source = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    instruction = model.encode_instruction(["Dehaze the video.", ""])
    timesteps = torch.tensor([999, 10])
    with torch.no_grad():
        plain = model.unet(
            torch.cat([noisy, source], 1), timesteps, encoder_hidden_states=instruction.repeat_interleave(3, 0)
        ).sample
        out = model.predict_noise(noisy, source, timesteps, instruction)
        torch.testing.assert_close(out, plain + source)
        # an untrained U-Net (zeroed output layer) estimates the target as the source itself
        saved = model.unet.conv_out.weight.detach().clone(), model.unet.conv_out.bias.detach().clone()
        model.unet.conv_out.weight.zero_(), model.unet.conv_out.bias.zero_()
        try:
            torch.testing.assert_close(model.predict_noise(noisy, source, timesteps, instruction), source)
            # a dropped source (the unconditional guidance branch) adds nothing
            zeros = torch.zeros_like(source)
            assert model.predict_noise(noisy, zeros, timesteps, instruction).abs().max() == 0
            # and DDIM sampling from pure noise lands on the source latents
            scheduler = DDIMScheduler.from_config(model.noise_scheduler.config)
            scheduler.set_timesteps(5)
            latents = torch.randn_like(source)
            for t in scheduler.timesteps:
                x0 = model.predict_noise(latents, source, t.repeat(2), instruction)
                latents = scheduler.step(x0, t, latents).prev_sample
            torch.testing.assert_close(latents, source, atol=1e-4, rtol=0)
        finally:
            model.unet.conv_out.weight.copy_(saved[0]), model.unet.conv_out.bias.copy_(saved[1])


def test_source_residual_is_saved_and_needs_x0_prediction(residual_model, tmp_path):
    save_model(residual_model, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["source_residual"] is True
    assert load_model(tmp_path / "model").source_residual is True
    with pytest.raises(VIDiffError, match="source_residual=true needs model.noise_scheduler.prediction_type=sample"):
        load_model_preset("tiny", overrides=["model.source_residual=true"])  # epsilon prediction
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    scheduler = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**config, "prediction_type": "epsilon"}))
    with pytest.raises(ModelLoadError, match="model_index.json: source_residual needs"):
        load_model(tmp_path / "model")
    assert index["source_residual"] is True


def test_inpaint_holes_stay_in_view_on_a_long_clip(bikes_path):
    from vidiff.io import read_video

    frames, _ = read_video(bikes_path, max_frames=120)
    frames = frames[:, ::4, ::4]
    for key in range(4):
        source, meta = degrade.free_form_holes(frames, np.random.default_rng(key))
        holes = (source == 255).all(-1) & ~(frames == 255).all(-1)
        per_frame = holes.mean(axis=(1, 2))
        # every frame keeps at least a third of the first frame's hole area (the strokes swing back, never leave)
        assert per_frame.min() > per_frame[0] / 3, (key, per_frame.min(), per_frame[0])
    # a 16-frame segment never reaches the swing limit: the strokes drift in a straight line
    offsets = degrade._reflect(np.outer(np.arange(16), [0.01, -0.01]) * 96, np.array([0.2, 0.2]) * 96)
    np.testing.assert_allclose(offsets, np.outer(np.arange(16), [0.01, -0.01]) * 96)


def test_long_clip_is_degraded_like_the_first_held_out_segment(bikes_path):
    from vidiff.demo import FIRST_HELD_OUT_KEY
    from vidiff.io import read_video

    frames, _ = read_video(bikes_path, max_frames=40)
    frames = frames[:, ::8, ::8]
    for task in ("inpaint", "dehaze", "deblur", "edit", "rvos"):
        segment = degrade_clip(task, frames[:16], 0, FIRST_HELD_OUT_KEY)
        long = degrade_clip(task, frames, 0, FIRST_HELD_OUT_KEY)
        drawn = {k: v for k, v in segment.meta.items() if k != "hole_coverage"}  # coverage is measured, not drawn
        assert long.instruction == segment.instruction and drawn.items() <= long.meta.items(), task
        if task == "deblur":  # the temporal window sees frames past the segment's end near its last frame
            np.testing.assert_array_equal(long.source[:12], segment.source[:12])
        else:
            np.testing.assert_array_equal(long.source[:16], segment.source)
        np.testing.assert_array_equal(long.target[:16], segment.target)


def test_synthetic_rvos_has_exact_masks(carphone_frames):
    frames = carphone_frames
    pair = degrade_clip("rvos", frames, 0, "clip-000")
    assert pair.mask.shape == frames.shape[:3] and pair.mask.any(axis=(1, 2)).all()
    shape = pair.meta["objects"][pair.meta["referred"]]["shape"]
    assert f"the {shape}" in pair.instruction and "red" in pair.instruction
    assert is_segmentation_instruction(pair.instruction)
    # the target is the composited source with the referred object (and nothing else) under the red overlay
    np.testing.assert_array_equal(pair.target, render_overlay(pair.source, pair.mask, "red"))
    np.testing.assert_array_equal(overlay_to_mask(pair.source, pair.target, "red"), pair.mask)
    # the referred object is painted over the footage where its mask is, and it moves
    changed = (pair.source != frames).any(-1)
    assert changed[pair.mask].mean() > 0.95
    assert (pair.mask[0] != pair.mask[-1]).any()


def test_tune_split_holds_the_last_segment_of_training_videos(tmp_path, carphone_frames):
    from vidiff.cli.prep import main as prep_main
    from vidiff.io import write_video

    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "a.mp4", carphone_frames, 25)  # 8 frames -> 4 segments of 2
    write_video(root / "held.mp4", carphone_frames[:4], 25)
    out = tmp_path / "shards"
    args = ["video-folder", "--root", str(root), "--out", str(out), "--val-videos", "held*", "--tasks", "rvos",
            "--short-side", "32", "--max-frames", "2", "--min-frames", "1", "--tune-segments", "1"]  # fmt: skip
    assert prep_main(args) == 0
    report = json.loads((out / "reports" / "video-folder.json").read_text())
    written = {j["split"]: j["written"] for j in report["jobs"]}
    assert written == {"train": 3, "tune": 1, "val": 2}
    import webdataset as wds

    tune = list(wds.WebDataset(str(next((out / "rvos").glob("*-tune-*.tar"))), shardshuffle=False, nodesplitter=None))
    assert [s["__key__"] for s in tune] == ["a-003"] and "mask.npy.gz" in tune[0]
    assert prep_main([*args[:-1], "-1"]) == 2


def test_draws_give_training_segments_fresh_degradations(tmp_path, carphone_frames):
    """--draws N: N samples per training segment, each degraded anew; val/tune and recolor keep one."""
    import webdataset as wds

    from vidiff.cli.prep import main as prep_main
    from vidiff.io import write_video

    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "a.mp4", carphone_frames, 25)  # 8 frames -> 4 segments of 2: 3 train, 1 tune
    write_video(root / "held.mp4", carphone_frames[:4], 25)
    out = tmp_path / "shards"
    args = ["video-folder", "--root", str(root), "--out", str(out), "--val-videos", "held*", "--tasks",
            "recolor,dehaze", "--short-side", "32", "--max-frames", "2", "--min-frames", "1", "--tune-segments", "1",
            "--draws", "3"]  # fmt: skip
    assert prep_main(args) == 0
    report = json.loads((out / "reports" / "video-folder.json").read_text())
    written = {(j["task"], j["split"]): j["written"] for j in report["jobs"]}
    assert written == {("dehaze", "train"): 9, ("dehaze", "tune"): 1, ("dehaze", "val"): 2,
                       ("recolor", "train"): 3, ("recolor", "tune"): 1, ("recolor", "val"): 2}  # fmt: skip
    samples = {}
    for shard in sorted((out / "dehaze").glob("*-train-*.tar")):
        for raw in wds.WebDataset(str(shard), shardshuffle=False, nodesplitter=None):
            samples[raw["__key__"]] = raw
    assert sorted(samples) == sorted(f"a-{i:03d}{d}" for i in range(3) for d in ("", "-draw1", "-draw2"))
    hazes = {key: json.loads(raw["json"])["beta"] for key, raw in samples.items()}
    # same clean target, different haze: the draws are seeded by their keys
    from vidiff.data.shards import decode_frames

    for i in range(3):
        keys = [f"a-{i:03d}", f"a-{i:03d}-draw1", f"a-{i:03d}-draw2"]
        targets = [decode_frames(samples[k]["tgt.mp4"], 0, 2) for k in keys]
        sources = [decode_frames(samples[k]["src.mp4"], 0, 2) for k in keys]
        assert all(np.array_equal(targets[0], t) for t in targets[1:])
        assert len({s.tobytes() for s in sources}) == 3, [hazes[k] for k in keys]
    # draw 0 is the sample a run without --draws writes
    plain = tmp_path / "plain"
    assert prep_main([*args[:4], str(plain), *args[5:-2]]) == 0
    (shard,) = sorted((plain / "dehaze").glob("*-train-*.tar"))[:1]
    first = next(iter(wds.WebDataset(str(shard), shardshuffle=False, nodesplitter=None)))
    assert first["src.mp4"] == samples[first["__key__"]]["src.mp4"]
    assert prep_main([*args[:-1], "0"]) == 2


def test_guidance_skips_the_terms_its_scales_cancel(pipe, monkeypatch):
    """s_V = 1 needs no eps(∅,∅) and s_T = s_V = 1 only eps(V,T): fewer U-Net rows, the same video."""
    video = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    batch_sizes = []
    predict = pipe.model.predict_noise

    def counting(noisy, *args, **kwargs):
        batch_sizes.append(noisy.shape[0])
        return predict(noisy, *args, **kwargs)

    monkeypatch.setattr(pipe.model, "predict_noise", counting)
    for s_t, s_v, rows in ((1.0, 1.0, 1), (4.0, 1.0, 2), (4.0, 2.0, 3)):
        batch_sizes.clear()
        common = {
            "video": video,
            "instruction": "Dehaze the video.",
            "num_inference_steps": 2,
            "output_type": "latent",
        }
        fast = pipe(**common, text_guidance_scale=s_t, video_guidance_scale=s_v, generator=torch.manual_seed(0))
        assert batch_sizes == [rows, rows], (s_t, s_v)
        # against all three terms (a scale a hair away from 1 keeps every term)
        full = pipe(**common, text_guidance_scale=s_t + 1e-9 * (s_t == 1.0), video_guidance_scale=s_v + 1e-9,
                    generator=torch.manual_seed(0))  # fmt: skip
        torch.testing.assert_close(fast.frames, full.frames, atol=1e-4, rtol=1e-4)


def test_pan_and_zoom_turns_a_photograph_into_smooth_footage():
    """The demo's extra training clips: a real photograph seen through a gliding, zooming window."""
    from PIL import Image

    from vidiff.assets import SKIMAGE_STILLS, pan_and_zoom, skimage_still

    photo = np.asarray(Image.open(skimage_still("coffee.png")).convert("RGB"))
    frames = pan_and_zoom(photo, 24, (48, 80), seed=3)
    assert frames.shape == (24, 48, 80, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, pan_and_zoom(photo, 24, (48, 80), seed=3))  # seeded
    assert not np.array_equal(frames, pan_and_zoom(photo, 24, (48, 80), seed=4))
    steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    assert (steps > 0.1).all()  # the camera moves in every frame ...
    assert steps.max() < 4 * np.median(steps) + 1  # ... smoothly (no jumps)
    # the content is the photograph's: the first frame's colours are those of the photo, not a blank
    assert abs(frames[0].mean() - photo.mean()) < 40 and frames[0].std() > 20
    assert all(skimage_still(name).is_file() for name in SKIMAGE_STILLS)


def test_demo_v2v_task_draw_follows_its_weights():
    """The demo's V2V stage draws dehaze, inpaint and rvos 3x as often as recolor; its other stages draw evenly."""
    from collections import Counter

    from vidiff.config import compose_config
    from vidiff.data.mixing import TaskSchedule

    def draws(experiment: str) -> Counter:
        cfg = compose_config("train", [f"experiment={experiment}", "paths.data_dir=/unused"])
        schedule = TaskSchedule({name: task.weight for name, task in cfg.data.tasks.items()}, seed=0)
        return Counter(schedule.task_of(step) for step in range(6000))

    v2v = draws("demo/v2v")
    # weights 1.5 x 3, 1 x 2, 0.5 (sum 7): expected per 6,000 draws 1,286 / 857 / 429, within 4 standard deviations
    for task in ("dehaze", "inpaint", "rvos"):
        assert 1160 < v2v[task] < 1410, v2v
    for task in ("deblur", "edit"):
        assert 750 < v2v[task] < 965, v2v
    assert 350 < v2v["recolor"] < 510, v2v
    vae = draws("demo/vae")
    assert all(880 < vae[task] < 1120 for task in vae), vae  # 1,000 each, 4 s.d. = 115
