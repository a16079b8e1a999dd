import numpy as np
import pytest
import torch

from vidiff.errors import VIDiffError
from vidiff.pipelines import VIDiffPipeline, dual_guidance


def test_dual_guidance_formula():
    gen = torch.Generator().manual_seed(0)
    uu, vu, vt = (torch.randn(2, 4, 3, 4, 4, generator=gen) for _ in range(3))
    assert torch.allclose(dual_guidance(uu, vu, vt, 1.0, 1.0), vt, atol=1e-6)
    assert torch.allclose(dual_guidance(uu, vu, vt, 0.0, 1.0), vu, atol=1e-6)
    assert torch.allclose(dual_guidance(uu, vu, vt, 0.0, 0.0), uu, atol=1e-6)
    expected = uu + 1.5 * (vu - uu) + 7.5 * (vt - vu)
    assert torch.allclose(dual_guidance(uu, vu, vt, 7.5, 1.5), expected, atol=1e-5)


class CountingUNet(torch.nn.Module):
    """Wraps the U-Net to count calls and record batch sizes."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.batches = []

    def forward(self, sample, *args, **kwargs):
        self.batches.append(sample.shape[0])
        return self.unet(sample, *args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)


def _run(pipe, frames, instruction="Recolor the gray video.", seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(frames, instruction, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def test_one_batched_unet_call_per_step(tiny_model, carphone_frames):
    original = tiny_model.unet
    tiny_model.unet = CountingUNet(original)
    try:
        pipe = VIDiffPipeline.from_model(tiny_model)
        pipe.set_progress_bar_config(disable=True)
        _run(pipe, carphone_frames[:3, :32, :32], num_inference_steps=3)
        assert tiny_model.unet.batches == [3, 3, 3]
    finally:
        tiny_model.unet = original


def test_unit_scales_equal_fully_conditioned_prediction(pipe, tiny_model, carphone_frames):
    frames = carphone_frames[:3, :40, :48]
    guided = _run(pipe, frames, text_guidance_scale=1.0, video_guidance_scale=1.0, output_type="latent")

    # the same sampling loop using only eps(V, T)
    model, scheduler = tiny_model, pipe.scheduler
    from vidiff.utils.frames import video_to_tensor

    with torch.no_grad():
        source = model.encode_video(video_to_tensor(frames))
        instruction = model.encode_instruction(["Recolor the gray video."])
        scheduler.set_timesteps(2)
        latents = torch.randn(source.shape, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = model.predict_noise(scheduler.scale_model_input(latents, t), source, t, instruction)
            latents = scheduler.step(eps, t, latents).prev_sample
    assert (guided - latents).abs().max() < 1e-4
    # and the guidance does change things at the default scales
    default = _run(pipe, frames, output_type="latent")
    assert (default - latents).abs().max() > 1e-3


def test_zero_text_scale_ignores_the_instruction(pipe, carphone_frames):
    frames = carphone_frames[:3, :32, :48]
    a = _run(pipe, frames, "Recolor the gray video.", text_guidance_scale=0.0, output_type="latent")
    b = _run(pipe, frames, "Remove the haze from this video.", text_guidance_scale=0.0, output_type="latent")
    assert (a - b).abs().max() < 1e-5
    c = _run(pipe, frames, "Recolor the gray video.", text_guidance_scale=7.5, output_type="latent")
    d = _run(pipe, frames, "Remove the haze from this video.", text_guidance_scale=7.5, output_type="latent")
    assert (c - d).abs().max() > 1e-3


def test_any_size_is_padded_and_cropped_back(pipe, carphone_frames):
    frames = carphone_frames[:2, :37, :61]  # not multiples of 8
    out = _run(pipe, frames)
    assert out.shape == (2, 37, 61, 3) and out.dtype == np.uint8
    pt = _run(pipe, frames, output_type="pt")
    assert pt.shape == (2, 3, 37, 61) and pt.min() >= -1 and pt.max() <= 1


def test_same_seed_same_output_and_image_instruction(pipe, carphone_frames):
    frames = carphone_frames[:2, :32, :32]
    image = np.full((24, 24, 3), 200, np.uint8)
    a = _run(pipe, frames, None, image=image)
    b = _run(pipe, frames, None, image=image)
    c = _run(pipe, frames, None, image=image, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp"])
def test_schedulers(tiny_model, carphone_frames, scheduler):
    pipe = VIDiffPipeline.from_model(tiny_model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    out = _run(pipe, carphone_frames[:2, :32, :32], num_inference_steps=3)
    assert out.shape == (2, 32, 32, 3)


def test_needs_an_instruction(pipe, carphone_frames):
    with pytest.raises(VIDiffError, match="instruction"):
        pipe(carphone_frames[:2, :16, :16], None)


def test_strength_runs_the_tail_of_the_schedule_from_the_noised_source(tiny_model, carphone_frames):
    original = tiny_model.unet
    tiny_model.unet = CountingUNet(original)
    frames = carphone_frames[:3, :32, :32]
    try:
        pipe = VIDiffPipeline.from_model(tiny_model)
        pipe.set_progress_bar_config(disable=True)
        full = _run(pipe, frames, num_inference_steps=4, output_type="latent")
        assert len(tiny_model.unet.batches) == 4
        default = _run(pipe, frames, num_inference_steps=4, output_type="latent", strength=1.0)
        assert torch.equal(full, default)
        tiny_model.unet.batches.clear()
        _run(pipe, frames, num_inference_steps=4, strength=0.5)
        assert len(tiny_model.unet.batches) == 2  # only the last half of the steps run
        with pytest.raises(VIDiffError, match="strength"):
            _run(pipe, frames, strength=0.0)
    finally:
        tiny_model.unet = original


def test_callback_on_step_end_sees_every_step_and_can_change_the_latents(pipe, carphone_frames):
    frames = carphone_frames[:2, :32, :32]
    seen = []

    def record(p, index, t, tensors):
        seen.append((index, int(t), sorted(tensors), tuple(tensors["source_latents"].shape)))
        return {}

    plain = _run(pipe, frames, num_inference_steps=3, output_type="latent")
    same = _run(
        pipe, frames, num_inference_steps=3, output_type="latent", callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents", "instruction_embeds", "source_latents"],
    )  # fmt: skip
    assert torch.equal(plain, same)  # a callback that returns nothing changes nothing
    assert [s[0] for s in seen] == [0, 1, 2] and [s[1] for s in seen] == pipe.scheduler.timesteps.tolist()
    assert seen[0][2] == ["instruction_embeds", "latents", "source_latents"] and seen[0][3][0] == 3  # three terms

    zeroed = _run(
        pipe, frames, num_inference_steps=3, output_type="latent",
        callback_on_step_end=lambda p, i, t, tensors: {"latents": torch.zeros_like(tensors["latents"])},
    )  # fmt: skip
    assert not zeroed.any()  # what the callback returns after the last step is what comes out
    with pytest.raises(
        VIDiffError, match="callback tensor 'noise' is not one of latents, instruction_embeds, source_latents"
    ):
        _run(
            pipe,
            frames,
            num_inference_steps=1,
            callback_on_step_end=record,
            callback_on_step_end_tensor_inputs=["noise"],
        )


def test_interrupt_stops_after_the_current_step_and_returns(pipe, carphone_frames):
    frames = carphone_frames[:2, :32, :32]
    steps = []

    def stop_after_two(p, index, t, tensors):
        steps.append(index)
        p.interrupt = index == 1
        return {}

    interrupted = _run(pipe, frames, num_inference_steps=5, output_type="latent", callback_on_step_end=stop_after_two)
    assert steps == [0, 1]
    # the latents of step two are returned, as an uninterrupted run has them after its second step
    at_two = {}

    def keep(p, index, t, tensors):
        at_two.setdefault(index, tensors["latents"].clone())
        return {}

    _run(pipe, frames, num_inference_steps=5, output_type="latent", callback_on_step_end=keep)
    assert torch.equal(interrupted, at_two[1])
    assert _run(pipe, frames, num_inference_steps=1).shape == (2, 32, 32, 3)  # the flag resets per call
