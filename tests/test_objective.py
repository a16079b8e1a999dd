"""The diffusion objective: targets per ``prediction_type``, min-SNR-γ weights, zero-terminal-SNR betas, the
conditioning-dropout split and dual guidance, each checked against an oracle rather than against its own code."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from vidiff.config import load_model_preset
from vidiff.pipelines import VIDiffPipeline
from vidiff.training.module import VIDiffModule
from vidiff.training.objective import ConditionDropout, DiffusionObjective


PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def oracle(scheduler: DDPMScheduler, clean: torch.Tensor, kind: str):
    """A network that knows the clean latents: from ``x_t`` and ``t`` it returns the exact answer of each kind."""

    def predict(noisy, source, timesteps, instruction):
        t = torch.as_tensor(timesteps).reshape(-1)
        a = scheduler.alphas_cumprod[t].to(noisy.dtype).view(-1, 1, 1, 1, 1)
        x0 = clean.to(noisy.dtype).expand_as(noisy)
        eps = (noisy - a.sqrt() * x0) / (1 - a).sqrt().clamp_min(1e-12)
        if kind == "epsilon":
            return eps
        if kind == "v_prediction":
            return a.sqrt() * eps - (1 - a).sqrt() * x0
        return x0

    return predict


def tiny_model(kind: str, *extra: str):
    return load_model_preset("tiny", [f"model.noise_scheduler.prediction_type={kind}", *extra])


def one_batch(frames: int = 2, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, frames, size, size, generator=g)
    return {
        "task": "dehaze",
        "instruction": ["Remove the haze."],
        "target": video,
        "source": (video * 0.5 + 0.4).clamp(0, 1),
        "step": 3,
    }


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_the_loss_regresses_the_target_of_the_prediction_type(kind, monkeypatch):
    model = tiny_model(kind)
    module = VIDiffModule(
        model, stage="v2v", ema_decay=None, cond_dropout={"text_only": 0, "both": 0, "source_only": 0}
    )
    batch = one_batch()
    clean = {}
    encode = model.encode_video

    def encode_and_remember(video, *args, **kwargs):
        latents = encode(video, *args, **kwargs)
        clean.setdefault("target", latents)  # the first call encodes the target
        return latents

    monkeypatch.setattr(model, "encode_video", encode_and_remember)
    with torch.no_grad():
        untrained = float(module.shared_step(batch))
    # the oracle of the right kind has zero loss; the oracle of any other kind does not
    for other in PREDICTION_TYPES:
        monkeypatch.setattr(model, "predict_noise", oracle(model.noise_scheduler, clean["target"], other))
        with torch.no_grad():
            loss = float(module.shared_step(batch))
        assert (loss < 1e-8) == (other == kind), (kind, other, loss)
    monkeypatch.undo()

    # and a few steps on that one batch lower the loss of the real network
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-3)
    for _ in range(8):
        loss = module.shared_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(module.shared_step(batch)) < untrained


@pytest.mark.parametrize(
    "kind, zero_snr", [("epsilon", False), ("v_prediction", False), ("sample", False), ("v_prediction", True)]
)
def test_the_pipeline_samples_with_the_matching_parameterisation(kind, zero_snr, monkeypatch):
    """With an oracle network of the model's kind, DDIM sampling from pure noise lands on the clean latents."""
    extra = ["model.noise_scheduler.rescale_betas_zero_snr=true", "model.noise_scheduler.timestep_spacing=trailing"]
    model = tiny_model(kind, *(extra if zero_snr else []))
    pipe = VIDiffPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == kind
    if zero_snr:
        assert float(model.noise_scheduler.alphas_cumprod[-1]) < 1e-6
        assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.timestep_spacing == "trailing"
    video = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    clean = torch.randn(1, model.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(model, "predict_noise", oracle(model.noise_scheduler, clean, kind))
    out = pipe(video, "Remove the haze.", num_inference_steps=10, output_type="latent",
               generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert (out - clean).abs().max() < 1e-3, (out - clean).abs().max()


def test_min_snr_weights_follow_the_published_formula():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 100, 500, 900, 999])
    a = scheduler.alphas_cumprod[t]
    snr = a / (1 - a)
    objective = DiffusionObjective(min_snr_gamma=5.0)
    expected = {
        "epsilon": torch.minimum(snr, torch.tensor(5.0)) / snr,
        "v_prediction": torch.minimum(snr, torch.tensor(5.0)) / (snr + 1),
        "sample": torch.minimum(snr, torch.tensor(5.0)),
    }
    for kind, weights in expected.items():
        scheduler.register_to_config(prediction_type=kind)
        assert torch.allclose(objective.loss_weights(scheduler, t), weights.float(), rtol=1e-5)
    # high-noise steps keep full weight with ε, low-noise ones are cut to γ / SNR
    scheduler.register_to_config(prediction_type="epsilon")
    w = objective.loss_weights(scheduler, t)
    assert w[-1] == pytest.approx(1.0) and w[0] < 0.01
    assert DiffusionObjective().loss_weights(scheduler, t) is None


def test_logit_normal_timesteps_follow_their_distribution():
    """t/T = sigmoid(m + s·z): the sample quantiles match the logit-normal's; uniform stays torch.randint."""
    import math

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    n = 200_000
    for mean, std in ((0.0, 1.0), (1.0, 1.0), (0.5, 0.6)):
        objective = DiffusionObjective(timestep_sampling="logit_normal", logit_mean=mean, logit_std=std)
        t = objective.sample_timesteps(n, scheduler, torch.Generator().manual_seed(0), "cpu")
        assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
        for z, q in ((-1.2816, 0.1), (0.0, 0.5), (1.2816, 0.9)):  # normal quantiles
            expected = 1000 / (1 + math.exp(-(mean + std * z)))
            assert torch.quantile(t.float(), q).item() == pytest.approx(expected, abs=6), (mean, std, q)
    uniform = DiffusionObjective().sample_timesteps(64, scheduler, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(uniform, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="timestep_sampling"):
        DiffusionObjective(timestep_sampling="cosine")
    with pytest.raises(ValueError, match="logit_std"):
        DiffusionObjective(timestep_sampling="logit_normal", logit_std=0)


def test_dropout_split_is_five_five_five_eighty_five():
    dropout = ConditionDropout(text_only=0.05, both=0.05, source_only=0.05)
    drop_text, drop_source = dropout.sample(20_000, torch.Generator().manual_seed(0), "cpu")
    fractions = {
        "text_only": (drop_text & ~drop_source).float().mean().item(),
        "both": (drop_text & drop_source).float().mean().item(),
        "source_only": (~drop_text & drop_source).float().mean().item(),
        "none": (~drop_text & ~drop_source).float().mean().item(),
    }
    for name, share in {"text_only": 0.05, "both": 0.05, "source_only": 0.05, "none": 0.85}.items():
        assert abs(fractions[name] - share) <= 0.005, fractions
    # without a source only the text is dropped
    drop_text, drop_source = ConditionDropout(0.1, 0.0, 0.0).sample(
        20_000, torch.Generator().manual_seed(1), "cpu", False
    )
    assert not drop_source.any() and abs(drop_text.float().mean().item() - 0.1) <= 0.005


def test_module_dropout_reaches_the_network(monkeypatch):
    """Through the LightningModule: with ``both=1`` the network sees a null instruction and a zero source."""
    model = tiny_model("epsilon")
    seen = {}

    def record(noisy, source, timesteps, instruction):
        seen["source"], seen["instruction"] = source, instruction
        return torch.zeros_like(noisy)

    monkeypatch.setattr(model, "predict_noise", record)
    module = VIDiffModule(model, ema_decay=None, cond_dropout={"text_only": 0.0, "both": 1.0, "source_only": 0.0})
    with torch.no_grad():
        module.shared_step(one_batch())
        null = model.encode_instruction([None])
    assert not seen["source"].any() and torch.allclose(seen["instruction"], null)


@pytest.mark.parametrize(
    "s_text, s_video, expected",
    [
        (0.0, 1.0, "video"),  # eps(V, ∅)
        (1.0, 0.0, "text_swap"),  # eps(∅,∅) + eps(V,T) − eps(V,∅)
        (1.0, 1.0, "full"),  # eps(V, T)
        (0.0, 0.0, "uncond"),  # eps(∅, ∅)
    ],
)
def test_dual_guidance_terms_are_wired_to_the_right_conditions(s_text, s_video, expected, monkeypatch):
    """A network whose output encodes which conditions it saw: 1 per source present, 10 per instruction present;
    the prediction the sampler receives must combine them as InstructPix2Pix's formula says."""
    model = tiny_model("epsilon")
    null = model.encode_instruction([None])

    def conditions(noisy, source, timesteps, instruction):
        has_source = source.flatten(1).abs().sum(1) > 0
        has_text = (instruction - null).flatten(1).abs().sum(1) > 1e-6
        value = has_source.float() * 1.0 + has_text.float() * 10.0
        return value.view(-1, 1, 1, 1, 1).expand_as(noisy).clone()

    monkeypatch.setattr(model, "predict_noise", conditions)
    pipe = VIDiffPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    received = []
    step = pipe.scheduler.step

    def record(model_output, *args, **kwargs):
        received.append(model_output.clone())
        return step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", record)
    video = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    pipe(video, "Remove the haze.", num_inference_steps=2, text_guidance_scale=s_text, video_guidance_scale=s_video)
    uncond, with_video, full = 0.0, 1.0, 11.0  # what the network says for (∅,∅), (V,∅), (V,T)
    value = {"video": with_video, "text_swap": uncond + full - with_video, "full": full, "uncond": uncond}[expected]
    assert received and all(torch.allclose(r, torch.full_like(r, value)) for r in received), (
        expected,
        received[0].flatten()[0],
    )
