"""vidiff-plan: its traced figures checked against real CPU steps of the tiny model (and a GPU, when there is one)."""

from __future__ import annotations

import json

import hydra
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from vidiff.config import compose_config, instantiate_model
from vidiff.training.plan import (
    build_fake_module,
    count_flops,
    make_plan,
    plan_latent_batches,
    saved_tensor_bytes,
    shuffle_buffer_bytes,
    synthetic_batch,
    trace_step,
)


BATCH = 2
pytestmark = pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")


@pytest.fixture(scope="module")
def cfg():
    return compose_config("plan", ["experiment=smoke", "gpu=24gb"])


@pytest.fixture(scope="module")
def fake(cfg):
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    return build_fake_module(cfg, mode), mode


@pytest.fixture(scope="module")
def real(cfg):
    model = instantiate_model(cfg.model)
    return hydra.utils.instantiate(cfg.stage, model=model, init_from=None, _convert_="all")


@pytest.fixture(scope="module")
def traces(cfg, fake):
    module, mode = fake
    return tuple(trace_step(module, synthetic_batch(cfg, module, b, mode), "32-true") for b in (1, BATCH))


def test_activations_agree_with_saved_tensors_of_the_real_step(cfg, real, traces):
    measured = saved_tensor_bytes(real, synthetic_batch(cfg, real, BATCH))
    planned = traces[1].activation_bytes
    print(f"tiny, batch {BATCH}: planned {planned} B, saved on the real CPU step {measured} B")
    assert abs(planned - measured) <= 0.10 * measured


def test_flops_equal_the_flop_counter_on_the_real_step(cfg, real, fake):
    module, mode = fake
    planned = count_flops(module, synthetic_batch(cfg, module, BATCH, mode))
    batch = synthetic_batch(cfg, real, BATCH)
    with FlopCounterMode(display=False) as counter:
        real.training_step(batch, 0).backward()
    real.zero_grad(set_to_none=True)
    print(f"tiny, batch {BATCH}: planned {planned} FLOPs, counted on the real CPU step {counter.get_total_flops()}")
    assert planned == counter.get_total_flops() > 0


def test_plan_parts_and_json(cfg, fake, traces, tmp_path, monkeypatch):
    plan = make_plan(cfg, traces=traces, module=fake[0], flops=1)
    data = plan.to_json()
    for key in ("gpu", "batch_per_gpu", "peak_bytes", "activation_bytes", "max_batch_per_gpu", "flops_per_step",
                "checkpoint_bytes", "host_bytes_per_node"):  # fmt: skip
        assert key in data
    assert data["gpu"] == "24gb" and data["batch_per_gpu"] == BATCH
    assert data["peak_bytes"] == sum(data["memory"].values())
    trainable = sum(p.numel() for p in fake[0].parameters() if p.requires_grad)
    assert data["memory"]["gradients"] == data["memory"]["trained weights"] == 4 * trainable
    assert data["memory"]["optimizer state"] == 8 * trainable  # AdamW's two fp32 moments
    assert data["max_batch_per_gpu"] > BATCH  # the tiny model fits many samples on 24 GB
    assert "activations" in plan.table()
    # the host figure uses the bound the datamodule sizes its shuffle buffers by
    workers = max(int(cfg.data.num_workers), 1)
    per_worker = shuffle_buffer_bytes(cfg.data, float(cfg.plan.raw_sample_mib))
    assert data["host"]["shuffle buffers"] == int(cfg.trainer.devices) * workers * per_worker > 0


def test_host_shuffle_buffers_are_the_data_configs_bound():
    tasks = {t: {} for t in "abcdef"}
    assert shuffle_buffer_bytes({"shuffle_buffer_mib": 1024, "shuffle_buffer": None, "tasks": tasks}, 1.0) == 2**30
    capped = {"shuffle_buffer_mib": 1024, "shuffle_buffer": 8, "tasks": tasks}
    assert shuffle_buffer_bytes(capped, 1.0) == 6 * 8 * 2**20  # 48 samples of 1 MiB: under the bound
    assert shuffle_buffer_bytes({**capped, "select_tasks": ["a"]}, 1.0) == 8 * 2**20
    paper = compose_config("train", ["experiment=paper/stage3_v2v"])
    node = int(paper.trainer.devices) * int(paper.data.num_workers) * shuffle_buffer_bytes(paper.data, 1.0)
    print(f"paper/stage3_v2v: shuffle buffers at most {node / 2**30:.0f} GiB per node")
    assert node == 8 * 8 * 2**30


def test_plan_splits_cached_latent_tasks_from_tasks_encoded_on_the_fly(cfg, real, fake, traces):
    """The FLOPs of a step from cached latents equal the flop counter on the real step with a latent batch; the plan
    of a run whose dehaze and deblur read cached latents (2 of 5 equally weighted tasks) names the split, and its
    mean step is 40 % steps without the encoder."""
    module, mode = fake
    plan_latent_batches(module)
    plan_latent_batches(real)
    planned = count_flops(module, synthetic_batch(cfg, module, BATCH, mode, latents=True))
    batch = synthetic_batch(cfg, real, BATCH, latents=True)
    with FlopCounterMode(display=False) as counter:
        real.training_step(batch, 0).backward()
    real.zero_grad(set_to_none=True)
    assert planned == counter.get_total_flops() > 0
    pixels = count_flops(module, synthetic_batch(cfg, module, BATCH, mode))
    assert planned < pixels

    mixed = compose_config(
        "plan", ["experiment=smoke", "gpu=24gb", "+data.tasks.dehaze.latents=true", "+data.tasks.deblur.latents=true"]
    )
    plan = make_plan(mixed, traces=traces, module=module, flops=pixels, other_flops=planned)
    e = plan.to_json()["encoding"]
    print(
        f"tiny, batch {BATCH}: {pixels} FLOPs from pixels, {planned} from latents ({e['encode_share']:.0%} encoding)"
    )
    assert e["cached_tasks"] == ["deblur", "dehaze"] and e["on_the_fly_tasks"] == ["edit", "inpaint", "recolor"]
    assert e["cached_step_share"] == pytest.approx(0.4)
    assert e["encode_share"] == pytest.approx(1 - planned / pixels)
    assert plan.flops_per_step == pixels and plan.mean_flops_per_step == pytest.approx(
        0.4 * planned + 0.6 * pixels, abs=2
    )
    assert e["saving"] == pytest.approx(0.4 * e["encode_share"])
    assert e["step_seconds_all_cached"] < plan.step_seconds == e["step_seconds"] < e["step_seconds_all_on_the_fly"]
    assert "cached latents: deblur, dehaze (40% of steps)" in plan.table()
    # the smoke run itself encodes every task on the fly: the mean step is the traced one
    plain = make_plan(cfg, traces=traces, module=module, flops=pixels, other_flops=planned)
    assert plain.encoding["cached_tasks"] == [] and plain.mean_flops_per_step == pytest.approx(pixels, abs=2)


def test_cli_writes_plan_json(tmp_path, monkeypatch):
    from vidiff.cli import plan as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["vidiff-plan", "experiment=smoke", "gpu=a100-40", "plan.out=p.json"])
    cli.main()
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["gpu"] == "a100-40" and data["flops_per_step"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_agrees_with_cuda_max_memory_allocated(cfg, traces):
    """Weights, gradients, activations and workspace of one step, planned vs what the CUDA allocator saw."""
    model = instantiate_model(cfg.model)
    module = hydra.utils.instantiate(cfg.stage, model=model, init_from=None, ema_decay=None, _convert_="all")
    module = module.cuda()
    batch = synthetic_batch(cfg, module, BATCH)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    module.training_step(batch, 0).backward()
    measured = torch.cuda.max_memory_allocated() - base
    t = traces[1]
    planned = max(t.peak_bytes, t.activation_bytes + t.gradient_bytes)
    print(f"tiny on CUDA, batch {BATCH}: planned {planned} B above the weights, allocator peak {measured} B")
    assert abs(planned - measured) <= 0.25 * measured
