"""``torch.compile`` and channels-last (``vidiff.utils.speed``): the tiny U-Net compiles as one graph, forward and
backward, and trains and edits with the same results as eager."""

from __future__ import annotations

import pytest
import torch

from vidiff.config import load_model_preset
from vidiff.errors import VIDiffError
from vidiff.models.unet import checkpoint_motion_modules
from vidiff.training.module import VIDiffModule
from vidiff.utils.speed import CPU_NOTE, apply_speed, is_compiled


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def v2v_batch(b: int = 2, frames: int = 4, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 256, (b, 3, frames, size, size), generator=g, dtype=torch.uint8)
    return {
        "target": target,
        "source": target.flip(-1),
        "instruction": ["Remove the haze."] * b,
        "task": "dehaze",
        "step": 3,
        "has_image": torch.zeros(b, dtype=torch.bool),
        "image": torch.zeros(b, 3, size, size),
    }


def unet_inputs(b: int = 2, frames: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 8, frames, 4, 4, generator=g)
    states = torch.randn(b * frames, 77, 32, generator=g)
    return x, torch.tensor([10, 500][:b]), states


def eager_step(module: VIDiffModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The eager loss and the U-Net's gradients of one training step, the gradients cleared afterwards."""
    loss = module.shared_step(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.unet.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return loss, grads


def test_unet_forward_is_one_graph_with_checkpointing_and_channels_last():
    """``torch._dynamo.explain`` on the training forward (gradient checkpointing of the motion modules on, NHWC
    weights): one graph, no graph break."""
    model = load_model_preset("tiny")
    model.unet.enable_gradient_checkpointing()
    assert checkpoint_motion_modules(model.unet) > 0
    model.unet.train()
    apply_speed(model, channels_last=True)
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    def loss(x, t, states):
        return model.unet(x, t, encoder_hidden_states=states).sample.float().pow(2).mean()

    explained = torch._dynamo.explain(loss)(*unet_inputs())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_training_step_matches_eager_and_backward_is_one_graph():
    """The module's loss with the U-Net compiled in place (``fullgraph``: a graph break would raise) equals the eager
    loss; AOTAutograd compiles exactly one forward and one backward graph, and the gradients agree."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {"forward": 0, "backward": 0}

    def counting(kind):
        def compiler(gm, example_inputs):
            graphs[kind] += 1
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward"))
    module = VIDiffModule(load_model_preset("tiny"), stage="v2v", ema_decay=None)
    module.train()
    batch = v2v_batch()

    eager, eager_grads = eager_step(module, batch)

    names = list(module.model.unet.state_dict())
    module.model.unet.compile(backend=backend, fullgraph=True)  # as apply_speed does, refusing graph breaks
    assert is_compiled(module.model.unet) and list(module.model.unet.state_dict()) == names  # no _orig_mod.
    compiled = module.shared_step(batch)
    compiled.backward()
    assert graphs == {"forward": 1, "backward": 1}
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(dict(module.model.unet.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiled_loss_and_gradients_match_eager():
    """The real thing on the CPU (inductor's C++ kernels; about 2 minutes to compile on 2 cores): the loss of a
    compiled, channels-last V2V step equals eager within float32 tolerance, and so do the U-Net's gradients."""
    module = VIDiffModule(load_model_preset("tiny"), stage="v2v", ema_decay=None)
    module.train()
    batch = v2v_batch()
    eager, eager_grads = eager_step(module, batch)

    apply_speed(module.model, compile=True, channels_last=True, prog=None)
    compiled = module.shared_step(batch)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
    worst = max(
        float((p.grad - eager_grads[n]).abs().max() / eager_grads[n].abs().max().clamp_min(1e-12))
        for n, p in module.model.unet.named_parameters()
        if n in eager_grads
    )
    assert worst < 1e-3


def test_options_are_off_by_default_and_errors_are_one_line(capsys):
    model = load_model_preset("tiny")
    assert apply_speed(model) == []
    assert not is_compiled(model.unet) and model.unet.conv_in.weight.is_contiguous()
    with pytest.raises(VIDiffError, match="torch.compile: .*mode"):
        apply_speed(model, compile=True, compile_mode="fastest")
    applied = apply_speed(model, compile=True, compile_backend="aot_eager", device="cpu", prog="vidiff-edit")
    assert applied == ["torch.compile (aot_eager)"]
    err = capsys.readouterr().err
    assert err == f"vidiff-edit: note: {CPU_NOTE}\n"


def test_train_cli_applies_speed_options_and_checkpoints_keep_their_names(tiny_shards, tmp_path, capsys):
    """``vidiff-train speed.compile=true speed.channels_last=true``: the run trains (aot_eager here: no kernel
    compilation), the note is printed, the checkpoint's keys and the exported model are those of an eager run."""
    from .test_train import compose_train, run_train, tiny_overrides

    overrides = tiny_overrides(
        tiny_shards, tmp_path, "trainer.max_steps=2", "trainer.limit_val_batches=0", "callbacks.video_logger=null",
        "callbacks.model_checkpoint.every_n_train_steps=2", "speed.compile=true", "speed.compile_backend=aot_eager",
        "speed.channels_last=true",
    )  # fmt: skip
    metrics, objects = run_train(compose_train(overrides))
    out = capsys.readouterr()
    assert f"vidiff-train: note: {CPU_NOTE}" in out.err
    assert "U-Net with channels-last, torch.compile (aot_eager)" in out.out
    module = objects["module"]
    assert is_compiled(module.model.unet)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if "_orig_mod" in k]
    from vidiff.pipelines import load_model

    exported = load_model(tmp_path / "model")
    assert set(exported.unet.state_dict()) == set(module.model.unet.state_dict())


def test_edit_cli_compile_and_channels_last(bikes_path, tmp_path, monkeypatch, capsys):
    """``vidiff-edit --compile --channels-last`` writes the same video as an eager edit (aot_eager here)."""
    from functools import partial

    from vidiff.io import read_video
    from vidiff.utils import speed

    from .conftest import edit_tiny

    assert edit_tiny(bikes_path, tmp_path / "eager.mp4", "Remove the haze.", "--frames", "3") == 0
    monkeypatch.setattr(speed, "apply_speed", partial(speed.apply_speed, compile_backend="aot_eager"))
    out = tmp_path / "compiled.mp4"
    assert edit_tiny(bikes_path, out, "Remove the haze.", "--frames", "3", "--compile", "--channels-last") == 0
    assert capsys.readouterr().err.count(CPU_NOTE) == 1
    eager, _ = read_video(tmp_path / "eager.mp4")
    compiled, _ = read_video(out)
    assert eager.shape == compiled.shape
    assert abs(eager.astype(int) - compiled.astype(int)).max() <= 2
