import pickle

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel
from einops import rearrange
from omegaconf import OmegaConf

from vidiff.config import compose_model_config, load_model_preset
from vidiff.errors import ModelLoadError
from vidiff.models import VIDiffModel, build_clip_tokenizer, inflate, load_state_dict_file, widen_conv_in
from vidiff.models.unet import motion_modules
from vidiff.pipelines import load_model, save_model


def tiny_unet2d(in_channels=4, seed=0) -> UNet2DConditionModel:
    cfg = OmegaConf.to_container(compose_model_config("tiny").unet.config)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**cfg, "in_channels": in_channels})
    # random init leaves some biases at zero; perturb every weight so equalities are not trivially 0 == 0
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval()


def tiny_adapter(unet) -> MotionAdapter:
    torch.manual_seed(1)
    return MotionAdapter(
        block_out_channels=list(unet.config.block_out_channels),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        use_motion_mid_block=False,
    )


def per_frame(unet2d, sample, states):
    """Run a 2D U-Net on every frame of [b, c, f, h, w]."""
    b, f = sample.shape[0], sample.shape[2]
    out = unet2d(rearrange(sample, "b c f h w -> (b f) c h w"), 10, encoder_hidden_states=states).sample
    return rearrange(out, "(b f) c h w -> b c f h w", b=b, f=f)


def test_zero_initialised_temporal_layers_equal_per_frame_unet():
    unet2d = tiny_unet2d()
    video_unet = inflate(tiny_unet2d(), tiny_adapter(unet2d), zero_init=True).eval()
    torch.manual_seed(2)
    sample = torch.randn(2, 4, 5, 16, 16)
    states = torch.randn(2 * 5, 7, 32)
    with torch.no_grad():
        expected = per_frame(unet2d, sample, states)
        got = video_unet(sample, 10, encoder_hidden_states=states).sample
    assert got.shape == (2, 4, 5, 16, 16)
    assert (got - expected).abs().max() < 1e-5
    # the check can fail: a fresh (non-zeroed) adapter changes the output
    noisy = inflate(tiny_unet2d(), tiny_adapter(unet2d), zero_init=False).eval()
    with torch.no_grad():
        assert (noisy(sample, 10, encoder_hidden_states=states).sample - expected).abs().max() > 1e-3
    assert all(m.proj_out.weight.abs().sum() == 0 for m in motion_modules(video_unet))


def test_widened_conv_in_with_zero_source_equals_original():
    original = tiny_unet2d(in_channels=4)
    widened = widen_conv_in(tiny_unet2d(in_channels=4), 8)
    assert widened.conv_in.in_channels == 8 and widened.config.in_channels == 8
    assert torch.equal(widened.conv_in.bias, original.conv_in.bias)
    assert widened.conv_in.weight[:, 4:].abs().sum() == 0
    torch.manual_seed(3)
    x = torch.randn(2, 4, 16, 16)
    states = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = original(x, 5, encoder_hidden_states=states).sample
        got = widened(torch.cat([x, torch.zeros_like(x)], 1), 5, encoder_hidden_states=states).sample
        changed = widened(torch.cat([x, torch.ones_like(x)], 1), 5, encoder_hidden_states=states).sample
    assert (got - expected).abs().max() < 1e-6
    # the new channels are live (trainable), only zero at init
    widened.conv_in.weight.data[:, 4:] = 0.1
    with torch.no_grad():
        changed = widened(torch.cat([x, torch.ones_like(x)], 1), 5, encoder_hidden_states=states).sample
    assert (changed - expected).abs().max() > 1e-3


def test_tiny_preset_is_reproducible_and_video_unet(tiny_model):
    assert tiny_model.unet.conv_in.in_channels == 8
    assert tiny_model.vae_scale_factor == 8
    again = load_model_preset("tiny")
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_tokenizer_matches_clip_ids():
    tokenizer = build_clip_tokenizer()
    ids = tokenizer("a photo of a cat").input_ids
    # OpenAI CLIP / SD 1.5 token ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77


def test_instruction_embedding_text_image_both(tiny_model):
    image = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        text_only = tiny_model.encode_instruction(["Recolor the gray video."])
        image_only = tiny_model.encode_instruction([None], image)
        both = tiny_model.encode_instruction(["Turn it into a sketch."], image)
        null = tiny_model.encode_instruction([None])
    k = tiny_model.num_image_tokens
    assert k == 4
    for emb in (text_only, image_only, both, null):
        assert emb.shape == (1, 77 + k, 32)
    # text tokens come first, image tokens after; a missing image is k zero tokens
    assert text_only[:, 77:].abs().sum() == 0 and both[:, 77:].abs().sum() > 0
    assert torch.allclose(image_only[:, :77], null[:, :77])
    assert torch.allclose(image_only[:, 77:], both[:, 77:])


def _outputs(model: VIDiffModel, seed=0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, 3, 32, 40, generator=gen) * 2 - 1
    with torch.no_grad():
        latents = model.encode_video(video)
        instruction = model.encode_instruction(["make it blue"], torch.rand(1, 3, 32, 32, generator=gen))
        eps = model.predict_noise(torch.randn(latents.shape, generator=gen), latents, 500, instruction)
        frames = model.decode_latents(latents)
    return latents, instruction, eps, frames


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == [
        "image_encoder",
        "image_projector",
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
    assert list(path.rglob("*.safetensors")) and not list(path.rglob("*.bin"))
    loaded = load_model(path)
    saved_state, loaded_state = tiny_model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for key in saved_state:
        assert torch.equal(saved_state[key], loaded_state[key]), key
    # same weights; outputs equal up to float32 round-off (transformers may reorder the attention math)
    for a, b in zip(_outputs(tiny_model), _outputs(loaded)):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-5
    assert loaded.noise_scheduler.config.beta_schedule == "scaled_linear"
    # saving again over an existing directory replaces it atomically
    save_model(tiny_model, path)
    assert (path / "model_index.json").is_file()


def test_from_pretrained_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_model(tmp_path / "empty")


def _animatediff_keys(state: dict) -> dict:
    """diffusers MotionAdapter keys -> the original AnimateDiff checkpoint layout (inverse of diffusers' converter)."""
    out = {}
    for key, value in state.items():
        for new, old in [
            (".norm1", ".norms.0"),
            (".norm2", ".norms.1"),
            (".norm3", ".ff_norm"),
            (".attn1", ".attention_blocks.0"),
            (".attn2", ".attention_blocks.1"),
        ]:
            key = key.replace(new, old)
        key = key.replace(".transformer_blocks", ".temporal_transformer.transformer_blocks")
        key = key.replace(".proj_in", ".temporal_transformer.proj_in").replace(
            ".proj_out", ".temporal_transformer.proj_out"
        )
        key = key.replace(".norm.", ".temporal_transformer.norm.")
        out[key] = value
    return out


@pytest.fixture(scope="module")
def sd15_like_tree(tmp_path_factory):
    """A tiny model saved in the on-disk formats the sd15 preset reads."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("weights")
    tiny = load_model_preset("tiny")
    sd = root / "stable-diffusion-v1-5"
    unet2d = tiny_unet2d()
    unet2d.save_pretrained(sd / "unet")
    tiny.vae.save_pretrained(sd / "vae")
    tiny.text_encoder.save_pretrained(sd / "text_encoder")
    tiny.tokenizer.save_pretrained(sd / "tokenizer")
    adapter = tiny_adapter(unet2d)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.01)  # non-zero proj_out: a loaded adapter must not be zeroed
    adapter.save_pretrained(root / "motion-adapter")
    torch.save({"state_dict": _animatediff_keys(adapter.state_dict())}, root / "mm_tiny.ckpt")
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
    )
    vision.save_pretrained(root / "clip-vision")
    return root, unet2d, adapter, vision


@pytest.mark.parametrize("adapter_format", ["folder", "ckpt"])
def test_sd15_preset_loads_local_files(sd15_like_tree, adapter_format):
    root, unet2d, adapter, vision = sd15_like_tree
    motion = root / ("motion-adapter" if adapter_format == "folder" else "mm_tiny.ckpt")
    overrides = [
        f"paths.weights_dir={root}",
        f"paths.motion_adapter={motion}",
        f"paths.clip_vision={root / 'clip-vision'}",
        # the adapter config only matters for the .ckpt layout, which carries no config of its own
        "model.motion_adapter.config.motion_num_attention_heads=2",
        "model.motion_adapter.config.motion_norm_num_groups=8",
        "model.image_projector.hidden_dim=64",
    ]
    model = load_model_preset("sd15", overrides)
    assert model.unet.conv_in.in_channels == 8
    state = model.unet.state_dict()
    assert torch.equal(state["conv_in.weight"][:, :4], unet2d.conv_in.weight)
    assert torch.equal(state["conv_in.bias"], unet2d.conv_in.bias)
    assert torch.equal(
        state["down_blocks.1.attentions.0.proj_in.weight"],
        unet2d.state_dict()["down_blocks.1.attentions.0.proj_in.weight"],
    )
    for key, value in adapter.state_dict().items():
        if "pos_embed" not in key:
            assert torch.equal(state[key], value), key
    assert torch.equal(model.image_encoder.visual_projection.weight, vision.visual_projection.weight)
    with torch.no_grad():
        emb = model.encode_instruction(["Remove the haze."], torch.rand(1, 3, 32, 32))
    assert emb.shape == (1, 81, 32)


def test_sd15_missing_path_is_one_line_error(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_model_preset("sd15", [f"paths.weights_dir={tmp_path}"])
    message = str(err.value)
    assert str(tmp_path / "stable-diffusion-v1-5") in message and "\n" not in message


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_are_loaded_without_unpickling_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        load_state_dict_file(path)
