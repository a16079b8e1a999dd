"""The released checkpoint layouts load exactly through the ``sd15`` preset.

The files are written by code other than ours: the U-Net and the autoencoder are the original LDM modules (from the
``stable-diffusion-sdkit`` wheel, test-only, installed by ``make install``), instantiated with SD-1's layout at a
reduced width, so their ``state_dict`` has the released key names by construction; the text encoder carries LDM's
``cond_stage_model.transformer.text_model.`` names; AnimateDiff files are diffusers adapters renamed by the inverse of
diffusers' converter, with the original per-attention ``pos_encoder.pe`` tables (AnimateDiff's sinusoid). The oracle
for what each must load to is diffusers' own ``from_single_file`` (with a local config folder), or the module that
wrote the file.
"""

from __future__ import annotations

import math
import re

import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from vidiff.config import load_model_preset


openaimodel = pytest.importorskip(
    "ldm.modules.diffusionmodules.openaimodel", reason="test-only: stable-diffusion-sdkit"
)
ldm_autoencoder = pytest.importorskip("ldm.modules.diffusionmodules.model")

WIDTH = 32  # SD-1 has 320 (U-Net) and 128 (VAE); every key name is the same at any width
TEXT_WIDTH = 48


def ldm_unet() -> torch.nn.Module:
    return openaimodel.UNetModel(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=WIDTH,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=8,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=TEXT_WIDTH,
        use_checkpoint=False,
        legacy=False,
    )


def ldm_first_stage() -> dict[str, torch.Tensor]:
    ddconfig = {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": WIDTH, "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    parts = {
        "encoder": ldm_autoencoder.Encoder(**ddconfig),
        "decoder": ldm_autoencoder.Decoder(**ddconfig),
        "quant_conv": torch.nn.Conv2d(8, 8, 1),
        "post_quant_conv": torch.nn.Conv2d(4, 4, 1),
    }
    return {f"{name}.{k}": v for name, module in parts.items() for k, v in module.state_dict().items()}


def clip_text() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
    )  # fmt: skip
    return CLIPTextModel(config)


def ddpm_buffers() -> dict[str, torch.Tensor]:
    """The extra buffers of LDM's LatentDiffusion that released files carry beside the networks."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return {
        "betas": betas.float(),
        "alphas_cumprod": alphas_cumprod.float(),
        "alphas_cumprod_prev": torch.cat([torch.ones(1), alphas_cumprod[:-1].float()]),
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float(),
        "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt().float(),
        "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log().float(),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
    }


@pytest.fixture(scope="module")
def released_sd15(tmp_path_factory):
    """``{format: path}`` of one SD-1 single file written three ways, and the modules that wrote it."""
    torch.manual_seed(0)
    unet, first_stage, text = ldm_unet(), ldm_first_stage(), clip_text()
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in first_stage.items()})
    # transformers 4's CLIPTextModel names (what LDM's FrozenCLIPEmbedder saved): "text_model." + transformers 5's
    state.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in text.state_dict().items()})
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state = {k: v.contiguous() for k, v in state.items()}
    root = tmp_path_factory.mktemp("released")
    files = {
        "safetensors": root / "v1-5-tiny.safetensors",
        "ckpt_wrapped": root / "v1-5-tiny.ckpt",
        "ckpt_plain": root / "v1-5-tiny-plain.ckpt",
    }
    safetensors.torch.save_file(state, str(files["safetensors"]))
    torch.save({"state_dict": {**state, **ddpm_buffers()}, "global_step": 840000, "epoch": 5}, files["ckpt_wrapped"])
    torch.save(state, files["ckpt_plain"])
    return files, text, root


def diffusers_oracle(path, root):
    """What diffusers' own single-file loaders make of the file, with local configs of the reduced width."""
    unet_config = root / "config" / "unet"
    vae_config = root / "config" / "vae"
    UNet2DConditionModel(
        sample_size=32,
        block_out_channels=[WIDTH * m for m in (1, 2, 4, 4)],
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    ).save_config(unet_config)
    AutoencoderKL(
        block_out_channels=[WIDTH * m for m in (1, 2, 4, 4)],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
    ).save_config(vae_config)
    unet = UNet2DConditionModel.from_single_file(str(path), config=str(unet_config.parent), subfolder="unet")
    vae = AutoencoderKL.from_single_file(str(path), config=str(vae_config.parent), subfolder="vae")
    return unet, vae


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff's PositionalEncoding buffer, ``[1, length, dim]``."""
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


def original_animatediff(adapter: MotionAdapter) -> dict[str, torch.Tensor]:
    """A diffusers adapter in the original AnimateDiff layout: the inverse of diffusers'
    ``convert_animatediff_checkpoint_to_diffusers``, plus the ``pos_encoder.pe`` tables it drops."""
    original = {}
    for key, value in adapter.state_dict().items():
        if key.endswith("pos_embed.pe"):
            continue
        key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        key = key.replace(".norm1", ".norms.0").replace(".norm2", ".norms.1").replace(".norm3", ".ff_norm")
        key = key.replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1")
        original[key] = value.clone().contiguous()
    length = adapter.config.motion_max_seq_length
    for key in list(original):
        match = re.match(r"(.*\.transformer_blocks\.\d+\.attention_blocks\.\d+)\.to_q\.weight$", key)
        if match:
            original[f"{match.group(1)}.pos_encoder.pe"] = sinusoid_table(length, original[key].shape[0])
    return original


ADAPTERS = {
    # release: (positions, mid block, file format)
    "v1_mm_sd_v15": (24, False, "ckpt"),
    "v2_mm_sd_v15_v2": (32, True, "ckpt"),
    "v3_sd15_mm": (32, True, "safetensors"),
}


@pytest.mark.parametrize("layout", ["safetensors", "ckpt_wrapped", "ckpt_plain"])
def test_sd15_single_file_loads_exactly(released_sd15, layout):
    files, text, root = released_sd15
    path = files[layout]
    model = load_model_preset(
        "sd15", [f"paths.sd15={path}", "model.motion_adapter.pretrained=null", "model.image_encoder=null"]
    )
    oracle_unet, oracle_vae = diffusers_oracle(files["safetensors"], root)
    ours = model.unet.state_dict()
    compared = 0
    for key, value in oracle_unet.state_dict().items():
        mine = ours[key]
        if key == "conv_in.weight":  # widened to 8 input channels: the source channels are added as zeros
            assert torch.equal(mine[:, :4], value) and not mine[:, 4:].any()
        else:
            assert torch.equal(mine, value), key
        compared += 1
    assert compared == len(oracle_unet.state_dict()) > 300
    for key, value in oracle_vae.state_dict().items():
        assert torch.equal(model.vae.state_dict()[key], value), key
    for key, value in text.state_dict().items():
        assert torch.equal(model.text_encoder.state_dict()[key], value), key
    # and the released LDM tensors themselves, without any converter in between
    state = safetensors.torch.load_file(str(files["safetensors"]))
    assert torch.equal(model.unet.conv_in.weight[:, :4], state["model.diffusion_model.input_blocks.0.0.weight"])
    assert torch.equal(model.vae.encoder.conv_in.weight, state["first_stage_model.encoder.conv_in.weight"])
    assert model.unet.config.cross_attention_dim == TEXT_WIDTH


@pytest.mark.parametrize("release", list(ADAPTERS))
def test_animatediff_original_files_load_exactly(released_sd15, tmp_path, release):
    files, _, _ = released_sd15
    positions, mid_block, fmt = ADAPTERS[release]
    torch.manual_seed(1)
    adapter = MotionAdapter(
        block_out_channels=[WIDTH * m for m in (1, 2, 4, 4)],
        motion_layers_per_block=2,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=positions,
        use_motion_mid_block=mid_block,
    )
    original = original_animatediff(adapter)
    assert any(k.endswith("attention_blocks.0.pos_encoder.pe") for k in original)
    assert not any(".norm1" in k or ".attn1" in k for k in original)
    path = tmp_path / f"{release}.{fmt}"
    if fmt == "safetensors":
        safetensors.torch.save_file(original, str(path))
    else:
        torch.save({"state_dict": original}, path)
    model = load_model_preset(
        "sd15", [f"paths.sd15={files['safetensors']}", f"paths.motion_adapter={path}", "model.image_encoder=null"]
    )
    ours = model.unet.state_dict()
    expected = adapter.state_dict()
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
    tables = [k for k in expected if k.endswith("pos_embed.pe")]
    assert tables and all(ours[k].shape[1] == positions for k in tables)
    for key in (k for k in original if k.endswith("pos_encoder.pe")):
        block = re.sub(r"\.temporal_transformer", "", key.rsplit(".attention_blocks", 1)[0])
        assert torch.equal(ours[f"{block}.pos_embed.pe"], original[key])
    assert any(k.startswith("mid_block.motion_modules") for k in ours) == mid_block
