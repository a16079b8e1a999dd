"""``VIDiffPipeline`` as a diffusers ``DiffusionPipeline``, in the style of diffusers' ``PipelineTesterMixin``, on the
tiny components: the saved directory is diffusers' standard one, it loads through diffusers' own loader, dtypes,
batches, VAE slicing/tiling, input checks; offload on a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vidiff.errors import ModelLoadError, VIDiffError
from vidiff.pipelines import DIFFUSERS_CUSTOM_PIPELINE, VIDiffPipeline, record_sampling
from vidiff.utils.frames import resize_frames


INSTRUCTION = "Recolor the gray video."


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "model"
    VIDiffPipeline.from_model(tiny_model, scheduler="euler_a", sampling={"size": 64}).save_pretrained(path)
    return path


@pytest.fixture()
def clip(carphone_frames):
    return carphone_frames[:3, :32, :40]


def _edit(pipe, video, instruction=INSTRUCTION, seed=0, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    kwargs.setdefault("num_inference_steps", 2)
    generator = [torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list) else None
    generator = generator or torch.Generator().manual_seed(seed)
    return pipe(video, instruction, generator=generator, **kwargs).frames


def test_saved_directory_is_diffusers_standard(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "VIDiffPipeline" and "_diffusers_version" in index
    assert index["unet"] == ["diffusers", "UNetMotionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["scheduler"] == ["diffusers", "EulerAncestralDiscreteScheduler"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert index["image_projector"] == ["vidiff.models.projector", "ImageInstructionProjector"]
    assert index["format_version"] == 3 and index["conditioning"] == "scaled" and index["sampling"] == {"size": 64}
    for name in ("unet", "vae", "text_encoder", "image_encoder", "image_projector"):
        assert list((saved / name).glob("*.safetensors")), name
    assert not list(saved.rglob("*.bin")) and not list(saved.parent.glob(".model.partial-*"))


def test_save_load_round_trip_gives_identical_frames(tiny_model, saved, clip):
    before = _edit(VIDiffPipeline.from_model(tiny_model, scheduler="euler_a"), clip)
    loaded = VIDiffPipeline.from_pretrained(saved)
    assert type(loaded.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert np.array_equal(_edit(loaded, clip), before)
    # the training schedule travels in the sampler's config
    for key in (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "prediction_type",
        "timestep_spacing",
    ):
        assert loaded.model.noise_scheduler.config[key] == tiny_model.noise_scheduler.config[key], key
    assert loaded.model.unet is loaded.unet  # the training-side module is the same networks, not a copy


def test_diffusers_own_loader_with_custom_pipeline(saved, clip, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    # as diffusers documents for community pipelines: its code runs only when trusted
    pipe = DiffusionPipeline.from_pretrained(
        saved, custom_pipeline=DIFFUSERS_CUSTOM_PIPELINE, trust_remote_code=True, local_files_only=True
    )
    assert isinstance(pipe, VIDiffPipeline)
    assert np.array_equal(_edit(pipe, clip), _edit(VIDiffPipeline.from_pretrained(saved), clip))


def test_torch_dtype_load(saved, clip):
    pipe = VIDiffPipeline.from_pretrained(saved, torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.image_projector.dtype == torch.bfloat16
    frames = _edit(pipe, clip)
    full = _edit(VIDiffPipeline.from_pretrained(saved), clip)
    assert frames.shape == full.shape and frames.dtype == np.uint8
    # bfloat16 keeps 8 bits of mantissa: close to float32 on average, not equal
    assert np.abs(frames.astype(float) - full).mean() < 8


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_batch_of_two_equals_the_clips_one_by_one(tiny_model, carphone_frames, scheduler):
    pipe = VIDiffPipeline.from_model(tiny_model, scheduler=scheduler)
    clips = [carphone_frames[:3, :32, :40], carphone_frames[4:7, 8:40, :40]]
    instructions = [INSTRUCTION, "Remove the haze."]
    batch = _edit(pipe, clips, instructions, seed=[3, 4])
    assert batch.shape == (2, 3, 32, 40, 3)
    for i in range(2):
        alone = _edit(pipe, clips[i], instructions[i], seed=3 + i)
        # same noise, same math; a batched matmul may round differently in the last float bit
        assert np.abs(batch[i].astype(int) - alone).max() <= 1, i
    # one instruction for every clip
    shared = _edit(pipe, clips, INSTRUCTION, seed=[3, 4])
    assert np.abs(shared[0].astype(int) - batch[0]).max() <= 1 and np.abs(shared[1].astype(int) - batch[1]).max() > 1


def test_vae_slicing_gives_the_same_frames(tiny_model, clip):
    pipe = VIDiffPipeline.from_model(tiny_model)
    plain = _edit(pipe, clip)
    pipe.enable_vae_slicing()
    try:
        assert np.abs(_edit(pipe, clip).astype(int) - plain).max() <= 1
    finally:
        pipe.disable_vae_slicing()


# The tiny VAE is random: its GroupNorm statistics and mid-block attention span the whole frame, so tiles (which see
# only themselves) decode visibly differently; a trained VAE blends far better. Measured here at the tiny VAE's own
# tile size (256 px): mean 0.114 on outputs of std 0.33, correlation 0.79. The bounds leave room for other CPUs.
TILED_MEAN, TILED_CORRELATION = 0.15, 0.7


def test_tiled_vae_decode_of_a_512x768_frame(tiny_model, carphone_frames):
    pipe = VIDiffPipeline.from_model(tiny_model)
    frame = resize_frames(carphone_frames[:1], (512, 768))
    video = torch.from_numpy(frame).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.model.encode_video(video)
        untiled = pipe.model.decode_latents(latents)
        small = pipe.model.decode_latents(latents[..., :16, :16])
        pipe.enable_vae_tiling()
        try:
            tiled = pipe.model.decode_latents(latents)
            small_tiled = pipe.model.decode_latents(latents[..., :16, :16])
        finally:
            pipe.disable_vae_tiling()
    assert tiled.shape == untiled.shape == (1, 3, 1, 512, 768)
    difference = (tiled - untiled).abs()
    correlation = torch.corrcoef(torch.stack([tiled.flatten(), untiled.flatten()]))[0, 1]
    assert difference.mean() < TILED_MEAN and correlation > TILED_CORRELATION, (difference.mean(), correlation)
    assert difference.mean() > 0  # the tiles really were decoded separately
    assert torch.equal(small, small_tiled)  # a frame within one tile is not tiled


def test_check_inputs_name_the_values(tiny_model, clip):
    pipe = VIDiffPipeline.from_model(tiny_model)
    cases = [
        ({"video": clip, "instruction": None}, "give an instruction, an image instruction, or both"),
        ({"video": [clip, clip], "instruction": ["a", "b", "c"]}, "3 instructions for 2 clips"),
        ({"video": [clip, clip[:, :24]], "instruction": "a"}, "same frames x height x width, got 3x32x40, 3x24x40"),
        (
            {"video": clip, "instruction": "a", "num_inference_steps": 0},
            "num_inference_steps must be a positive integer",
        ),
        ({"video": clip, "instruction": "a", "strength": 1.5}, r"strength must be in \(0, 1\], got 1.5"),
        ({"video": clip, "instruction": "a", "output_type": "gif"}, "output_type must be 'np', 'pt' or 'latent'"),
        ({"video": clip[0], "instruction": "a"}, r"video: a video must be \[f, h, w, 3\] uint8 frames"),
        (
            {"video": clip, "instruction": "a", "text_guidance_scale": float("nan")},
            "text_guidance_scale must be a finite",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(VIDiffError, match=message) as err:
            pipe(**kwargs)
        assert "--" not in str(err.value)  # library messages name values; the command lines add their flags


def test_recorded_sampling_settings(saved, tmp_path):
    import shutil

    model = shutil.copytree(saved, tmp_path / "model")
    record_sampling(model, {"num_inference_steps": 30, "tasks": {"dehaze": {"text_guidance_scale": 5.0}}})
    pipe = VIDiffPipeline.from_pretrained(model)
    assert pipe.recommended() == {"size": 64, "num_inference_steps": 30}
    assert pipe.recommended("dehaze") == {"size": 64, "num_inference_steps": 30, "text_guidance_scale": 5.0}
    with pytest.raises(VIDiffError, match="unknown key 'steps'"):
        record_sampling(model, {"steps": 3})


def test_fallback_sampler_settings_are_one_constant():
    """Where neither the user nor the model says, vidiff-edit, the app, vidiff-eval and the pipeline's own
    defaults sample alike: all read DEFAULT_SAMPLING (they were three copies of the values)."""
    import inspect

    from evaluation.benchmark import SamplingOptions
    from vidiff.app import EditRequest
    from vidiff.cli.edit import FALLBACK, build_parser
    from vidiff.pipelines.checks import DEFAULT_SAMPLING, check_sampling

    call = inspect.signature(VIDiffPipeline.__call__).parameters
    checks = inspect.signature(check_sampling).parameters
    for key in ("num_inference_steps", "text_guidance_scale", "video_guidance_scale"):
        assert call[key].default == checks[key].default == DEFAULT_SAMPLING[key] == FALLBACK[key]
        assert SamplingOptions.FALLBACK[key] == DEFAULT_SAMPLING[key]
    assert SamplingOptions.FALLBACK["scheduler"] == DEFAULT_SAMPLING["scheduler"]
    request = EditRequest()
    assert (request.steps, request.text_scale, request.video_scale, request.scheduler, request.size) == tuple(
        DEFAULT_SAMPLING[k]
        for k in ("num_inference_steps", "text_guidance_scale", "video_guidance_scale", "scheduler", "size")
    )
    assert FALLBACK["size"] == DEFAULT_SAMPLING["size"]
    help_text = " ".join(build_parser().format_help().split())
    assert f"else {DEFAULT_SAMPLING['num_inference_steps']})" in help_text
    assert f"else {DEFAULT_SAMPLING['scheduler']})" in help_text


def test_broken_directories_are_one_line(saved, tmp_path):
    import shutil

    broken = shutil.copytree(saved, tmp_path / "no_unet")
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLoadError, match="unet: missing component folder"):
        VIDiffPipeline.from_pretrained(broken)
    newer = shutil.copytree(saved, tmp_path / "newer")
    index = json.loads((newer / "model_index.json").read_text())
    (newer / "model_index.json").write_text(json.dumps({**index, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="saved by a newer VIDiff"):
        VIDiffPipeline.from_pretrained(newer)


@pytest.mark.gpu
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_gives_the_frames_of_the_gpu(saved, clip, offload):
    on_gpu = _edit(VIDiffPipeline.from_pretrained(saved).to("cuda"), clip)
    pipe = VIDiffPipeline.from_pretrained(saved)
    getattr(pipe, f"enable_{offload}_cpu_offload")()
    assert pipe._execution_device.type == "cuda"
    offloaded = _edit(pipe, clip)
    assert np.abs(offloaded.astype(int) - on_gpu).max() <= 1
    if offload == "model":
        assert pipe.unet.device.type == "cpu"  # handed back after the call


def test_validation_samples_its_batch_in_one_call(tiny_model, carphone_frames, monkeypatch):
    """Training's validation edits a batch of clips in one pipeline call, with what each clip gives alone."""
    from einops import rearrange

    from vidiff.training.module import VIDiffModule

    module = VIDiffModule(tiny_model, stage="v2v", val_inference_steps=2)
    clips = torch.from_numpy(np.stack([carphone_frames[:3, :32, :40], carphone_frames[4:7, :32, :40]]))
    image = torch.rand(3, 32, 32)
    batch = {"source": rearrange(clips, "b f h w c -> b c f h w"), "instruction": [INSTRUCTION, "Remove the haze."],
             "image": torch.stack([image, image]), "has_image": torch.tensor([False, True])}  # fmt: skip
    calls = []
    call = VIDiffPipeline.__call__
    monkeypatch.setattr(VIDiffPipeline, "__call__", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    batched = module.translate(batch, seed=5)
    assert len(calls) == 1 and batched.shape == (2, 3, 3, 32, 40)
    pipe = VIDiffPipeline.from_model(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    for i, picture in enumerate([None, image]):
        alone = pipe(clips[i].numpy(), batch["instruction"][i], image=picture, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(5 + i), output_type="pt").frames  # fmt: skip
        assert (rearrange(alone, "f c h w -> c f h w") - batched[i]).abs().max() < 1e-4, i


def test_reference_frames_and_settings_survive_a_round_trip(tiny_model, tmp_path):
    from vidiff.pipelines import load_model, save_model

    tiny_model.reference_frames = (1, 2)  # a two-entry list in model_index.json, not a [library, class] pair
    try:
        loaded = load_model(save_model(tiny_model, tmp_path / "model"))
    finally:
        tiny_model.reference_frames = None
    assert loaded.reference_frames == (1, 2) and loaded.conditioning == "scaled" and not loaded.source_residual
