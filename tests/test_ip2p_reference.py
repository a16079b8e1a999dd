"""Released InstructPix2Pix weights edit exactly as diffusers' own InstructPix2Pix pipeline does.

The oracle is code we did not write: ``StableDiffusionInstructPix2PixPipeline`` on the same weights, noise, sampler,
step count and guidance scales. The weights are tiny and random but in the released layouts: a diffusers folder
written by that pipeline's ``save_pretrained`` (the layout of ``timbrooks/instruct-pix2pix``), and the original LDM
single file (``instruct-pix2pix-00-22000.ckpt``: the U-Net is the LDM module itself, with 8 input channels). VIDiff
loads both through the ``ip2p`` preset and edits a one-frame clip; a fresh motion adapter adds nothing on one frame,
so the two must agree to within a level of 255.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    MotionAdapter,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from tests.test_released_layouts import TEXT_WIDTH, WIDTH, clip_text, ldm_first_stage, original_animatediff
from vidiff.config import load_model_preset
from vidiff.models.tokenizer import build_clip_tokenizer
from vidiff.pipelines import load_model, save_model
from vidiff.pipelines.vidiff_pipeline import VIDiffPipeline


openaimodel = pytest.importorskip(
    "ldm.modules.diffusionmodules.openaimodel", reason="test-only: stable-diffusion-sdkit"
)

SAMPLERS = {"ddim": DDIMScheduler, "euler_a": EulerAncestralDiscreteScheduler}
# (s_T, s_V): the release's defaults, s_V = 1 (the unconditional term cancels), both 1 (only the fully conditioned
# prediction is left: diffusers then skips guidance altogether), and both large. Not (1, s_V != 1): diffusers'
# pipeline switches guidance off whenever s_T <= 1, which drops the s_V term its own formula keeps.
SCALES = [(7.5, 1.5), (5.0, 1.0), (1.0, 1.0), (3.0, 2.5)]
PROMPT = "turn the sky into a sunset"
STEPS = 4
SIZE = 64  # 8x8 latents: every down block of the SD layout halves a size that is still a multiple of 2
SD_BLOCKS = {
    "block_out_channels": [WIDTH * m for m in (1, 2, 4, 4)],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
VAE_BLOCKS = {
    "block_out_channels": [WIDTH * m for m in (1, 2, 4, 4)],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
}
# what timbrooks/instruct-pix2pix ships in scheduler/scheduler_config.json (an Euler-ancestral sampler on SD's betas)
RELEASED_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "steps_offset": 1, "set_alpha_to_one": False, "skip_prk_steps": True,
    "clip_sample": False,
}  # fmt: skip


def ldm_ip2p_unet() -> torch.nn.Module:
    """The original LDM U-Net with InstructPix2Pix's 8 input channels, at the reduced width."""
    return openaimodel.UNetModel(
        image_size=32, in_channels=8, out_channels=4, model_channels=WIDTH, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True, transformer_depth=1,
        context_dim=TEXT_WIDTH, use_checkpoint=False, legacy=False,
    )  # fmt: skip


def randomize(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Every parameter redrawn (zero-initialised output layers would hide a wrong conditioning)."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.ndim > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter[0].numel() ** 0.5)
    return module


@pytest.fixture(scope="module")
def released_ip2p(tmp_path_factory):
    """``{layout: (path to give VIDiff, diffusers' pipeline on the same weights)}``."""
    root = tmp_path_factory.mktemp("ip2p")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    # the diffusers folder, written by diffusers' own pipeline
    folder_pipe = StableDiffusionInstructPix2PixPipeline(
        vae=randomize(AutoencoderKL(**VAE_BLOCKS), generator),
        text_encoder=clip_text(),
        tokenizer=build_clip_tokenizer(),
        unet=randomize(
            UNet2DConditionModel(
                sample_size=32, in_channels=8, out_channels=4, cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
                **SD_BLOCKS,
            ),
            generator,
        ),
        scheduler=EulerAncestralDiscreteScheduler(**{k: v for k, v in RELEASED_SCHEDULER.items() if k in
                                                     ("beta_start", "beta_end", "beta_schedule", "steps_offset")}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    folder_pipe.scheduler.register_to_config(**RELEASED_SCHEDULER)
    folder = root / "instruct-pix2pix"
    folder_pipe.save_pretrained(folder, safe_serialization=True)
    folder_oracle = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )

    # the original single file: LDM's own modules under LDM's prefixes
    unet, text = randomize(ldm_ip2p_unet(), generator), clip_text()
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in ldm_first_stage().items()})
    state.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in text.state_dict().items()})
    single = root / "instruct-pix2pix-00-22000.ckpt"
    torch.save({"state_dict": {k: v.contiguous() for k, v in state.items()}, "global_step": 22000}, single)
    config = root / "config"
    UNet2DConditionModel(
        sample_size=32, in_channels=8, cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, **SD_BLOCKS
    ).save_config(config / "unet")
    AutoencoderKL(**VAE_BLOCKS).save_config(config / "vae")
    single_oracle = StableDiffusionInstructPix2PixPipeline(
        vae=AutoencoderKL.from_single_file(str(single), config=str(config), subfolder="vae"),
        text_encoder=text,
        tokenizer=build_clip_tokenizer(),
        unet=UNet2DConditionModel.from_single_file(str(single), config=str(config), subfolder="unet"),
        scheduler=DDIMScheduler(),  # replaced per test by the model's own sampler config
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return {"folder": (folder, folder_oracle), "single_file": (single, single_oracle)}


@pytest.fixture(scope="module")
def vidiff_ip2p(released_ip2p):
    """VIDiff's models of the two layouts: the ``ip2p`` preset with a fresh (zeroed) motion adapter."""
    # a single file carries no text-encoder config: its head count is the preset's (12, the release's); the reduced
    # width of these files has 4
    heads = {"folder": [], "single_file": ["model.text_encoder.config.num_attention_heads=4"]}
    return {
        layout: load_model_preset(
            "ip2p", [f"paths.ip2p={path}", "model.motion_adapter.pretrained=null", *heads[layout]]
        )
        for layout, (path, _) in released_ip2p.items()
    }


def source_frame() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], -1).astype(np.uint8)


def edit_both(model, oracle, sampler, text_scale, video_scale):
    """(VIDiff's frame, diffusers' image), both float ``[h, w, 3]`` in ``[0, 1]``, from the same noise."""
    frame = source_frame()
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(5))
    # both samplers are made from the model's noise schedule, which for the folder carries the release's file
    oracle.scheduler = SAMPLERS[sampler].from_config(model.noise_scheduler.config)
    oracle.set_progress_bar_config(disable=True)
    expected = oracle(
        PROMPT, image=Image.fromarray(frame), num_inference_steps=STEPS, guidance_scale=text_scale,
        image_guidance_scale=video_scale, latents=noise.clone(), generator=torch.Generator().manual_seed(9),
        output_type="np",
    ).images[0]  # fmt: skip
    pipe = VIDiffPipeline.from_model(model, scheduler=sampler)
    pipe.set_progress_bar_config(disable=True)
    ours = pipe(
        frame[None], PROMPT, num_inference_steps=STEPS, text_guidance_scale=text_scale,
        video_guidance_scale=video_scale, latents=noise[:, :, None].clone(),
        generator=torch.Generator().manual_seed(9), output_type="pt",
    ).frames[0]  # fmt: skip
    return ((ours + 1) / 2).permute(1, 2, 0).numpy(), expected


@pytest.mark.parametrize("layout", ["folder", "single_file"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_ip2p_one_frame_equals_diffusers_instruct_pix2pix(released_ip2p, vidiff_ip2p, layout, sampler):
    model, (_, oracle) = vidiff_ip2p[layout], released_ip2p[layout]
    spreads = []
    for text_scale, video_scale in SCALES:
        ours, expected = edit_both(model, oracle, sampler, text_scale, video_scale)
        levels = np.abs(ours - expected).max() * 255
        assert levels <= 1.0, f"{layout}, {sampler}, s_T={text_scale}, s_V={video_scale}: {levels:.1f} levels apart"
        spreads.append(expected.std())
    # the comparison is not between two flat images: the edits have structure, and differ between scales
    assert min(spreads) > 0.02
    # released weights keep their convention, read off the 8-channel U-Net with no flag
    assert model.conditioning == "unscaled" and model.unet.conv_in.in_channels == 8


def test_ip2p_convention_is_what_makes_them_agree(released_ip2p, vidiff_ip2p):
    """The check can fail: the same weights run with VIDiff's scaled-source convention land far from diffusers."""
    model, (_, oracle) = vidiff_ip2p["folder"], released_ip2p["folder"]
    model.conditioning = "scaled"
    try:
        ours, expected = edit_both(model, oracle, "ddim", 7.5, 1.5)
    finally:
        model.conditioning = "unscaled"
    assert np.abs(ours - expected).max() * 255 > 5


def test_ip2p_saved_and_reloaded_keeps_its_convention(vidiff_ip2p, tmp_path):

    model = vidiff_ip2p["folder"]
    loaded = load_model(save_model(model, tmp_path / "model"))
    assert loaded.conditioning == "unscaled"
    assert loaded.noise_scheduler.config.set_alpha_to_one is False  # the release's sampler settings travel too


def test_released_animatediff_acts_on_a_16_frame_ip2p_clip(released_ip2p, tmp_path):
    """With a released-layout AnimateDiff module (non-zero), a 16-frame clip runs and differs from editing each
    frame alone: the motion layers act across frames."""
    folder, _ = released_ip2p["folder"]
    generator = torch.Generator().manual_seed(3)
    adapter = randomize(
        MotionAdapter(
            block_out_channels=SD_BLOCKS["block_out_channels"], motion_layers_per_block=2,
            motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
        ),
        generator,
    )  # fmt: skip
    path = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save({"state_dict": original_animatediff(adapter)}, path)
    model = load_model_preset("ip2p", [f"paths.ip2p={folder}", f"paths.motion_adapter={path}"])
    pipe = VIDiffPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    clip = np.stack([np.roll(source_frame(), 2 * i, axis=1) for i in range(16)])
    noise = torch.randn(1, 4, 16, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))
    settings = {"num_inference_steps": 2, "output_type": "pt"}
    video = pipe(clip, PROMPT, latents=noise.clone(), **settings).frames
    assert video.shape == (16, 3, SIZE, SIZE) and torch.isfinite(video).all()
    frames = [
        pipe(clip[i : i + 1], PROMPT, latents=noise[:, :, i : i + 1].clone(), **settings).frames[0] for i in (0, 7)
    ]
    apart = max((video[i] - frame).abs().max().item() for i, frame in zip((0, 7), frames))
    assert apart * 127.5 > 2, f"the motion layers changed the clip by only {apart * 127.5:.2f} levels"


def test_vidiff_edit_model_ip2p_end_to_end(released_ip2p, tmp_path, monkeypatch, capsys):
    """``vidiff-edit --model ip2p`` on the released folder layouts, found through ``VIDIFF_WEIGHTS`` as a user would
    lay them out (conf/paths): it picks the latent long-video mode by itself and writes every frame."""
    from tests.conftest import encode_video
    from vidiff.cli import edit
    from vidiff.io import read_video

    folder, _ = released_ip2p["folder"]
    weights = folder.parent
    adapter = randomize(
        MotionAdapter(
            block_out_channels=SD_BLOCKS["block_out_channels"], motion_layers_per_block=2,
            motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32,
        ),
        torch.Generator().manual_seed(4),
    )  # fmt: skip
    adapter.save_pretrained(weights / "animatediff-motion-adapter-v1-5-2")
    source = tmp_path / "in.mp4"
    encode_video(source, np.stack([np.roll(source_frame(), 3 * i, axis=0) for i in range(12)]), "libx264", "yuv420p")
    out = tmp_path / "out.mp4"
    monkeypatch.setenv("VIDIFF_WEIGHTS", str(weights))
    command = [
        str(source), "-o", str(out), "--model", "ip2p", "-i", PROMPT, "--size", "64", "--clip-length", "8",
        "--steps", "2", "--device", "cpu",
    ]  # fmt: skip
    assert edit.main(command) == 0
    assert "2 latent-anchored frames (auto: the model never learned reference frames)" in capsys.readouterr().err
    frames, _ = read_video(out)
    assert frames.shape == (12, SIZE, SIZE, 3)
