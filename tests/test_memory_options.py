"""The memory options vidiff-plan measures, on the tiny model: each keeps what it should keep."""

from __future__ import annotations

import pytest
import torch

from vidiff.config import compose_config, load_model_preset
from vidiff.training.module import VIDiffModule
from vidiff.training.plan import optimizer_state_bytes, saved_tensor_bytes, synthetic_batch


pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")


@pytest.fixture(scope="module")
def cfg():
    return compose_config("plan", ["experiment=smoke"])


def module(**kwargs) -> VIDiffModule:
    """A fresh tiny v2v module (the preset is seeded: every call builds the same weights)."""
    kwargs.setdefault("ema_decay", None)
    m = VIDiffModule(load_model_preset("tiny"), stage="v2v", **kwargs)
    m.train(True)
    with torch.no_grad():  # give the zero-initialised motion outputs weights, so they shape the loss
        for name, p in m.model.unet.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return m


def loss_and_grads(m: VIDiffModule, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = m.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_checkpointing_covers_the_motion_modules_and_keeps_loss_and_gradients(cfg):
    from vidiff.models.unet import checkpoint_motion_modules

    plain, ckpt, diffusers_only = module(), module(gradient_checkpointing=True), module()
    diffusers_only.model.unet.enable_gradient_checkpointing()
    batch = synthetic_batch(cfg, plain, 1)
    loss, grads = loss_and_grads(plain, batch)
    loss_c, grads_c = loss_and_grads(ckpt, batch)
    assert torch.allclose(loss, loss_c, rtol=1e-5, atol=1e-7)
    assert grads.keys() == grads_c.keys() and any("motion_modules" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], grads_c[name], rtol=1e-4, atol=1e-6), name
    saved = {m: saved_tensor_bytes(x, batch) for m, x in (("plain", plain), ("diffusers", diffusers_only))}
    saved["ours"] = saved_tensor_bytes(ckpt, batch)
    # diffusers' own checkpointing keeps the down/up motion modules' activations; ours does not
    assert saved["ours"] < saved["diffusers"] < saved["plain"]
    assert checkpoint_motion_modules(ckpt.model.unet) == 0  # already wrapped: idempotent


def test_ddp_gradient_as_bucket_view_gives_the_same_gradients(cfg, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, batch):
            return self.m.training_step(batch, 0)

    plain, viewed = module(), module()
    batch = synthetic_batch(cfg, plain, 1)
    _, grads = loss_and_grads(plain, batch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DDP(Step(viewed), gradient_as_bucket_view=True, broadcast_buffers=False)
        ddp(batch).backward()
        for name, p in viewed.model.named_parameters():
            if p.requires_grad:
                assert torch.allclose(p.grad, grads[name], rtol=1e-5, atol=1e-7), name
    finally:
        dist.destroy_process_group()


def test_ema_on_the_host_equals_the_ema_on_the_device_and_foreach_agrees():
    modules = [
        module(ema_decay=0.9),
        module(ema_decay=0.9, ema_device="cpu"),
        module(ema_decay=0.9, ema_device="cpu", ema_foreach=True),
    ]
    for m in modules:
        for _ in range(2):  # EMAModel's first step copies (its decay starts at 0)
            with torch.no_grad():
                for p in m.trainable_parameters():
                    p.add_(0.5)
            m.ema.step(m._ema_inputs())
    device, host, foreach = (m.ema.shadow_params for m in modules)
    assert all(torch.equal(x, y) for x, y in zip(device, host))
    # foreach fuses (1 - decay) * (ema - w) into one op: the same average to rounding
    assert all(torch.allclose(x, y, rtol=1e-6, atol=1e-7) for x, y in zip(device, foreach))
    p0, s0 = modules[1].trainable_parameters()[0], host[0]
    assert not torch.equal(p0, s0) and s0.device.type == "cpu"  # averaged, not copied


def test_frozen_encoders_in_bf16_keep_the_loss_close_and_halve_their_weights(cfg):
    full, half = module(), module(frozen_dtype="bfloat16")
    assert half.model.vae.dtype == half.model.text_encoder.dtype == torch.bfloat16
    assert half.model.unet.dtype == torch.float32
    batch = synthetic_batch(cfg, full, 1)
    loss, _ = loss_and_grads(full, batch)
    loss_h, grads_h = loss_and_grads(half, batch)
    assert abs(loss_h - loss) <= 0.02 * loss and all(g.dtype == torch.float32 for g in grads_h.values())


def test_adamw8bit_steps_like_adamw_with_the_planned_state_bytes(monkeypatch):
    from vidiff.training.optim import make_adamw

    # torchao compiles its per-tensor step (one compile per shape, minutes of CPU here): the same code, eager
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    torch.manual_seed(0)
    params = {k: [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(100))] for k in "ab"}
    params["b"] = [torch.nn.Parameter(p.detach().clone()) for p in params["a"]]
    grads = [torch.randn_like(p) for p in params["a"]]
    start = [p.detach().clone() for p in params["a"]]
    optimizers = {
        k: make_adamw(params[k], 1e-2, 0.01, (0.9, 0.999), n) for k, n in (("a", "adamw"), ("b", "adamw8bit"))
    }
    for _ in range(3):
        for k in "ab":
            for p, g in zip(params[k], grads):
                p.grad = g.clone()
            optimizers[k].step()
    for a, b, a0 in zip(params["a"], params["b"], start):
        # the 8-bit moments move each weight as AdamW does, to quantisation error
        cosine = torch.nn.functional.cosine_similarity((a - a0).flatten(), (b - a0).flatten(), dim=0)
        assert cosine > 0.99 and (a - b).abs().mean() < 0.05 * (a - a0).abs().mean()
    state = optimizers["b"].state
    measured = 0
    for p in params["b"]:
        for key in ("exp_avg", "exp_avg_sq"):
            t = state[p][key]
            parts = [t.codes, t.scale, t.qmap] if hasattr(t, "codes") else [t]
            measured += sum(x.numel() * x.element_size() for x in parts)
    assert measured == optimizer_state_bytes("adamw8bit", [p.numel() for p in params["b"]])
    assert measured < optimizer_state_bytes("adamw", [p.numel() for p in params["b"]]) / 3
