"""Plan a training run before launching it: per-GPU memory by part, FLOPs, the largest batch, step time, host RAM,
checkpoint size — for the exact config ``vidiff-train`` would compose, without a GPU and without weights.

How: the model is built from its configs on the meta device (no weight file is read), its tensors become
``FakeTensor``\\ s on the CPU (shapes, dtypes and devices, no storage), and the LightningModule's own
``training_step`` and ``backward`` run on a synthetic batch of the configured shape. Small control tensors
(timesteps, dropout masks, token ids) stay real, so the step takes the same branches as a real one. During that
trace:

- a dispatch mode follows every tensor storage the step creates (weak references, so a storage counts while it is
  alive): the bytes alive when the forward ends are the activations, the highest count is the step's peak;
- ``torch.utils.flop_counter.FlopCounterMode`` counts FLOPs (forward and backward);
- autocast runs on the CPU with bf16 for ``bf16-mixed``, standing in for CUDA autocast.

Weights, gradients, optimizer state, EMA and DDP buckets are counted from the trainable and frozen parameters and
the options the config names. Everything is per GPU; the result is a :class:`Plan` (``to_json``, ``table``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


GIB = 2**30


# ---------------------------------------------------------------------------------------------- building
def plan_model_config(model_cfg: DictConfig) -> DictConfig:
    """The model config with every ``pretrained``/weights path cleared: the same architecture from its configs."""
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=False))
    with open_dict(cfg):
        cfg.stable_diffusion = None
        for name in ("motion_adapter", "vae", "image_encoder"):
            node = cfg.get(name)
            if node is not None and "pretrained" in node:
                node.pretrained = None
        encoder = cfg.get("image_encoder")
        if encoder is not None and not encoder.get("config"):
            raise ValueError("model.image_encoder needs a `config` (its architecture) to be planned without weights")
    return cfg


def build_fake_module(cfg: DictConfig, fake_mode):
    """The stage's LightningModule over fake CPU tensors (no weights read, no memory used)."""
    import hydra
    from diffusers import DDPMScheduler

    from vidiff.config import instantiate_model
    from vidiff.training.engine import cast_frozen

    with torch.device("meta"):
        model = instantiate_model(plan_model_config(cfg.model))
        if cfg.stage.get("frozen_dtype"):
            # on meta, before the tensors turn fake (a fake parameter cannot change dtype in place)
            cast_frozen(model, getattr(torch, cfg.stage.frozen_dtype))
    with fake_mode:
        model.to_empty(device="cpu")
    # the schedule's tables are small: real ones, so timesteps index them as in a real run
    model.noise_scheduler = DDPMScheduler.from_config(model.noise_scheduler.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hydra.utils.instantiate(cfg.stage, model=model, init_from=None, _convert_="all")


def traced_task(cfg: DictConfig) -> tuple[str, Mapping]:
    """The heaviest training task of the data config (one with an image instruction if there is one)."""
    tasks = OmegaConf.to_container(cfg.data.tasks, resolve=False)
    select = cfg.data.get("select_tasks")
    if select:
        tasks = {k: v for k, v in tasks.items() if k in select}
    name = "edit" if "edit" in tasks else next(iter(tasks))
    return name, tasks[name]


def batch_per_gpu(cfg: DictConfig) -> int:
    _, task = traced_task(cfg)
    return int(task.get("batch_size", 1))


def task_reads_latents(cfg: DictConfig, task: Mapping) -> bool:
    """Whether a training task reads cached latents (its ``latents`` option, else the data config's); ``null``
    (whatever the shards hold) is planned as pixels encoded on the fly."""
    value = task.get("latents", cfg.data.get("latents"))
    return bool(value)


PLANNED_AUTOENCODER = "planned"


def synthetic_batch(cfg: DictConfig, module, size: int, fake_mode=None, latents: bool = False) -> dict[str, Any]:
    """A batch as the datamodule yields it (uint8 clips, an instruction image; with ``latents``, a latent shard's
    posterior means and deviations instead of the clips); tensors fake under ``fake_mode``, real zeros without it.

    A latent batch names the autoencoder :data:`PLANNED_AUTOENCODER`: the module must answer that fingerprint (see
    :func:`plan_latent_batches`)."""
    name, task = traced_task(cfg)
    frames = int(task.get("num_frames", cfg.data.get("num_frames", 16)))
    res = int(task.get("resolution", cfg.data.get("resolution", 256)))
    frames = min(frames, module.stage.frames_per_sample or frames)
    with fake_mode or contextlib.nullcontext():
        if latents:
            channels, side = module.model.latent_channels, res // module.model.vae_scale_factor
            batch = {
                "target_latents": torch.zeros(size, channels, frames, side, side),
                "target_latents_std": torch.ones(size, channels, frames, side, side),
                "autoencoder": [PLANNED_AUTOENCODER] * size,
            }
            if module.stage.source:
                batch["source_latents"] = torch.zeros(size, channels, frames, side, side)
        else:
            batch = {"target": torch.zeros(size, 3, frames, res, res, dtype=torch.uint8)}
            if module.stage.source:
                batch["source"] = torch.zeros(size, 3, frames, res, res, dtype=torch.uint8)
        if module.stage.source:
            batch["image"] = torch.zeros(size, 3, res, res)
    batch.update({"task": name, "step": 0, "instruction": ["a planned instruction"] * size})
    if module.stage.source:
        with_image = float(task.get("image_prob", 0.0)) > 0 and module.model.image_projector is not None
        batch["has_image"] = torch.full((size,), with_image, dtype=torch.bool)
    return batch


def plan_latent_batches(module) -> None:
    """Let ``module`` train on :func:`synthetic_batch`'s latent batches: its autoencoder (fake weights, no
    fingerprint) answers :data:`PLANNED_AUTOENCODER`."""
    module.autoencoder_fingerprint = lambda: PLANNED_AUTOENCODER


# ---------------------------------------------------------------------------------------------- tracing
class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode that are still alive, and their peak.

    A storage counts once (views and in-place results share it) and stops counting when Python frees it.
    Casts of ``nn.Parameter``\\ s (autocast's low-precision weight copies) are followed separately; the storages of
    ``existing`` tensors (weights, buffers) are never counted, also when an op returns a view of one.
    """

    def __init__(self, existing=()):
        super().__init__()
        self.existing = {t.untyped_storage()._cdata for t in existing}
        self.storages = WeakIdKeyDictionary()
        self.copies = WeakIdKeyDictionary()
        self.live = self.peak = 0
        self.live_copies = 0

    def _free(self, nbytes: int, copy: bool) -> None:
        self.live -= nbytes
        if copy:
            self.live_copies -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        copy = func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.nn.Parameter)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage in self.storages or storage._cdata in self.existing:
                    continue
                nbytes = storage.nbytes()
                self.storages[storage] = nbytes
                self.live += nbytes
                if copy:
                    self.live_copies += nbytes
                weakref.finalize(storage, self._free, nbytes, copy)
                self.peak = max(self.peak, self.live)
        return out


@dataclass
class Trace:
    batch: int
    activation_bytes: int  # alive when the forward ends (saved for backward), weight copies excluded
    weight_copy_bytes: int  # autocast's low-precision parameter copies alive when the forward ends
    peak_bytes: int  # highest bytes alive during forward + backward, gradients included
    gradient_bytes: int


def autocast_for(precision: str):
    if str(precision).startswith("bf16-mixed"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if str(precision).startswith("16-mixed"):
        return torch.autocast("cpu", dtype=torch.float16)
    return contextlib.nullcontext()


def count_flops(module, batch: dict[str, Any], precision: str = "32-true") -> int:
    """FLOPs of one ``training_step`` + ``backward`` (``FlopCounterMode``). A pass of its own: the counter's module
    hooks keep recomputed activations alive under checkpointing, which would distort the memory trace."""
    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FlopCounterMode(display=False) as flops:
            with autocast_for(precision):
                loss = module.training_step(batch, 0)
            loss.backward()
            del loss
    module.zero_grad(set_to_none=True)
    return flops.get_total_flops()


def trace_step(module, batch: dict[str, Any], precision: str = "32-true") -> Trace:
    """Run ``module.training_step`` and ``backward`` once under the tracker; gradients are cleared afterwards."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    tracker = LiveBytes([*module.parameters(), *module.buffers()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        with tracker:
            with autocast_for(precision):
                loss = module.training_step(batch, 0)
            activations = tracker.live - tracker.live_copies
            copies = tracker.live_copies
            loss.backward()
            del loss
    grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    for p in params:
        p.grad = None
    return Trace(len(batch["instruction"]), activations, copies, tracker.peak, grads)


def saved_tensor_bytes(module, batch: dict[str, Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward in one ``training_step`` (parameters
    excluded): the independent measurement the planner's activation figure is checked against on a real step."""
    params = WeakIdKeyDictionary({p.untyped_storage(): True for p in module.parameters()})
    seen = WeakIdKeyDictionary()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage not in params and storage not in seen:
            seen[storage] = storage.nbytes()
        return t

    with warnings.catch_warnings(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
    total = sum(seen.values())
    del loss
    return total


# ---------------------------------------------------------------------------------------------- the plan
def optimizer_state_bytes(name: str, numels: list[int]) -> int:
    """Optimizer state of trainable tensors with ``numels`` values. AdamW: two fp32 moments. ``adamw8bit``
    (torchao): two uint8 moments with an fp32 scale per 256 values and a 256-entry fp32 code map each, for tensors
    of at least 4096 values that split into whole blocks (like bitsandbytes); fp32 moments for the others."""
    if name == "adamw":
        return 8 * sum(numels)
    if name == "adamw8bit":
        total = 0
        for n in numels:
            total += 2 * (n + 4 * (n // 256) + 4 * 256) if n >= 4096 and n % 256 == 0 else 8 * n
        return total
    raise ValueError(f"unknown optimizer {name!r} (choose from adamw, adamw8bit)")


@dataclass
class Plan:
    experiment: str
    gpu: str
    gpu_bytes: int
    batch_per_gpu: int
    traced_task: str
    frames: int
    resolution: int
    precision: str
    gpus_per_node: int
    nodes: int
    accumulate_grad_batches: int
    options: dict[str, Any]
    parameters: dict[str, int]
    memory: dict[str, int]  # per GPU, by part
    peak_bytes: int
    activation_bytes: int
    activation_bytes_per_sample: float
    max_batch_per_gpu: int
    max_batch_by_gpu: dict[str, int]
    traced_batches: list[int]
    flops_per_step: int
    flops_per_sample: float
    mean_flops_per_step: int  # over the task schedule: tasks from cached latents skip the VAE encoder
    encoding: dict[str, Any]  # which tasks read cached latents, which encode on the fly, and the step time saved
    mfu: float
    step_seconds: float
    max_steps: int
    hours_to_max_steps: float
    checkpoint_bytes: int
    host_bytes_per_node: int
    host: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def encoding_rows(self) -> list[str]:
        e = self.encoding
        if not e:
            return []
        share = f"{e['cached_step_share']:.0%} of steps"
        per_sample = (
            f"{e['flops_per_sample_on_the_fly'] / 1e12:,.2f} vs {e['flops_per_sample_cached'] / 1e12:,.2f} TFLOP "
            "per sample"
        )
        return [
            f"  VAE encoding                 cached latents: {', '.join(e['cached_tasks']) or 'none'} ({share}); "
            f"on the fly: {', '.join(e['on_the_fly_tasks']) or 'none'}",
            f"                               encoding is {e['encode_share']:.0%} of an on-the-fly step ({per_sample})",
            f"  mean step over the schedule  {self.mean_flops_per_step / 1e12:,.1f} TFLOP per GPU: {e['step_seconds']:.2f} s "
            f"(-{e['saving']:.0%} against {e['step_seconds_all_on_the_fly']:.2f} s",
            f"                               with every task on the fly; {e['step_seconds_all_cached']:.2f} s with every "
            "task cached)",
        ]

    def table(self) -> str:
        gib = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
        rows = [
            f"vidiff-plan: {self.experiment} on {self.gpu} ({self.gpu_bytes / GIB:.0f} GiB), "
            f"{self.gpus_per_node} GPU(s)/node x {self.nodes} node(s), {self.precision}",
            f"  traced: task {self.traced_task}, {self.frames} frames at {self.resolution}^2, "
            f"batch {self.batch_per_gpu} per GPU (fake tensors on the CPU, no weights)",
            f"  options: {', '.join(f'{k}={v}' for k, v in self.options.items())}",
            f"  parameters: {', '.join(f'{k} {v / 1e6:,.1f} M' for k, v in self.parameters.items())}",
            "",
            "  memory per GPU                 bytes",
        ]
        rows += [f"    {name:<26} {gib(value)}" for name, value in self.memory.items()]
        fits = "fits" if self.peak_bytes <= self.gpu_bytes else "DOES NOT FIT"
        rows += [
            f"    {'peak':<26} {gib(self.peak_bytes)}   ({fits} {self.gpu})",
            "",
            f"  activations per sample       {gib(self.activation_bytes_per_sample)}",
            f"  largest batch per GPU        {self.max_batch_per_gpu} on {self.gpu}   ("
            + ", ".join(f"{g}: {b}" for g, b in self.max_batch_by_gpu.items())
            + ")",
            f"  FLOPs per optimizer step     {self.flops_per_step / 1e12:,.1f} TFLOP per GPU "
            f"({self.flops_per_sample / 1e12:,.2f} per sample; task {self.traced_task})",
            *self.encoding_rows(),
            f"  step time at {self.mfu:.0%} MFU        {self.step_seconds:.2f} s",
            f"  time to max_steps            {self.hours_to_max_steps:,.1f} h ({self.max_steps:,} steps)",
            f"  host RAM per node (data)     {gib(self.host_bytes_per_node)}",
            f"  checkpoint (.ckpt)           {gib(self.checkpoint_bytes)}",
        ]
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)


def encoding_split(
    cfg: DictConfig, traced_latents: bool, traced_per_sample: float, other_per_sample: float | None
) -> dict[str, Any]:
    """Which training tasks read cached latents and which encode their pixels with the VAE each step, and the mean
    FLOPs of a micro-step over the task schedule (each task's weight and batch size; FLOPs per sample of the traced
    task's step for either encoding). Empty for a stage that has no latent batches."""
    if other_per_sample is None:
        return {}
    per_sample = {traced_latents: traced_per_sample, not traced_latents: other_per_sample}
    tasks = OmegaConf.to_container(cfg.data.tasks, resolve=False)
    select = cfg.data.get("select_tasks")
    if select:
        tasks = {k: v for k, v in tasks.items() if k in select}
    weights = {name: float(task.get("weight", 1.0)) for name, task in tasks.items()}
    total = sum(weights.values())
    cached = sorted(name for name, task in tasks.items() if task_reads_latents(cfg, task))

    def mean_flops(reads_latents) -> float:
        return sum(
            weights[name] / total * int(task.get("batch_size", 1)) * per_sample[reads_latents(name)]
            for name, task in tasks.items()
        )

    mean = mean_flops(lambda name: name in cached)
    on_the_fly = mean_flops(lambda name: False)
    return {
        "cached_tasks": cached,
        "on_the_fly_tasks": sorted(set(tasks) - set(cached)),
        "cached_step_share": sum(weights[n] for n in cached) / total,
        "flops_per_sample_on_the_fly": per_sample[False],
        "flops_per_sample_cached": per_sample[True],
        "encode_share": 1 - per_sample[True] / per_sample[False],
        "mean_flops_per_step": mean,
        "flops_per_step_all_on_the_fly": on_the_fly,
        "flops_per_step_all_cached": mean_flops(lambda name: True),
        "saving": 1 - mean / on_the_fly,
    }


def _strategy_option(cfg: DictConfig, key: str, default: Any) -> Any:
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, DictConfig | Mapping):
        return strategy.get(key, default)
    return default


def _is_ddp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig | Mapping) else str(strategy or "")
    world = int(cfg.trainer.get("devices", 1) or 1) * int(cfg.trainer.get("num_nodes", 1) or 1)
    return "ddp" in name.lower() or (world > 1 and name in ("", "auto", "None"))


def shuffle_buffer_bytes(data: Mapping[str, Any], raw_sample_mib: float) -> int:
    """What one loader worker's shuffle buffers hold at most: ``data.shuffle_buffer_mib`` (the bound the datamodule
    sizes them by), or less when ``data.shuffle_buffer`` caps each task's stream at that many samples."""
    bound = float(data.get("shuffle_buffer_mib", 0) or 0) * 2**20
    cap = data.get("shuffle_buffer")
    if cap:
        tasks = len(data.get("select_tasks") or data.get("tasks") or {})
        bound = min(bound, tasks * int(cap) * raw_sample_mib * 2**20)
    return int(bound)


def make_plan(
    cfg: DictConfig,
    traces: tuple[Trace, Trace] | None = None,
    module=None,
    flops: int | None = None,
    other_flops: int | None = None,
) -> Plan:
    """The plan of the composed training config ``cfg`` (with a ``plan`` node and a ``gpu`` node).

    ``traces``, ``flops`` (the traced task's step) and ``other_flops`` (the same step with the other encoding: from
    cached latents when the traced task encodes pixels, and the reverse) are traced here unless given."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    pcfg, gpu_name = cfg.plan, str(cfg.gpu)
    if gpu_name not in pcfg.gpus:
        raise ValueError(f"unknown gpu {gpu_name!r} (choose from {', '.join(pcfg.gpus)}, or add it to plan.gpus)")
    gpu = pcfg.gpus[gpu_name]
    precision = str(cfg.trainer.get("precision", "32-true"))
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    if module is None:
        module = build_fake_module(cfg, fake_mode)
    batch = batch_per_gpu(cfg)
    traced_latents = task_reads_latents(cfg, traced_task(cfg)[1])
    # a stage without latent batches (the autoencoder's) has no encoding to plan
    encodes = hasattr(module, "batch_latents")
    if encodes:
        plan_latent_batches(module)

    def synthetic(size: int, latents: bool = traced_latents) -> dict[str, Any]:
        return synthetic_batch(cfg, module, size, fake_mode, latents=latents and encodes)

    if traces is None:
        small = trace_step(module, synthetic(1), precision)
        other = 2 if batch == 1 else batch
        big = trace_step(module, synthetic(other), precision)
        traces = (small, big)
    small, big = traces
    if flops is None:
        flops = count_flops(module, synthetic(batch), precision)
    if other_flops is None and encodes:
        other_flops = count_flops(module, synthetic(batch, not traced_latents), precision)

    fit = [small, big]

    def per_batch(attr: str, b: int) -> float:
        # linear in the batch, through the two traces nearest to b (activations and workspace grow per sample)
        lo, hi = sorted(fit, key=lambda t: (abs(t.batch - b), t.batch))[:2]
        lo, hi = sorted((lo, hi), key=lambda t: t.batch)
        slope = (getattr(hi, attr) - getattr(lo, attr)) / (hi.batch - lo.batch)
        return getattr(lo, attr) + slope * (b - lo.batch)

    named = list(module.model.named_parameters())
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    trained_bytes = sum(p.numel() * p.element_size() for _, p in named if p.requires_grad)
    frozen_bytes = sum(p.numel() * p.element_size() for _, p in named if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in module.model.buffers())
    grads = trained_bytes
    optimizer = cfg.stage.get("optimizer", "adamw")
    optimizer = str(optimizer if isinstance(optimizer, str) else optimizer.name)
    opt_bytes = optimizer_state_bytes(optimizer, [p.numel() for _, p in named if p.requires_grad])
    ema_on = bool(cfg.stage.get("ema_decay"))
    ema_device = cfg.stage.get("ema_device") or "gpu"
    ema_bytes = trained_bytes if ema_on else 0
    ddp = _is_ddp(cfg)
    bucket_view = bool(_strategy_option(cfg, "gradient_as_bucket_view", False))
    buckets = grads if ddp and not bucket_view else 0
    context = int(float(pcfg.cuda_context_gib) * GIB)

    def parts(b: int) -> dict[str, int]:
        acts = int(per_batch("activation_bytes", b))
        copies = int(per_batch("weight_copy_bytes", b))
        # the step's own peak above its start is activations + gradients + whatever else is alive then
        workspace = max(0, int(per_batch("peak_bytes", b)) - acts - small.gradient_bytes)
        return {
            "trained weights": trained_bytes,
            "frozen weights": frozen_bytes + buffers,
            "gradients": grads,
            "optimizer state": opt_bytes,
            "EMA": ema_bytes if ema_device != "cpu" else 0,
            "DDP buckets": buckets,
            "activations": acts,
            "workspace": max(workspace, copies),
            "CUDA context": context,
        }

    def peak(b: int) -> int:
        return sum(parts(b).values())

    def largest(capacity: int) -> int:
        per_sample = max(1.0, peak(2) - peak(1))
        if peak(1) > capacity:
            return 0
        return 1 + int((capacity - peak(1)) // per_sample)

    # the named GPU's largest batch is traced, not only extrapolated: step down until a traced batch fits
    capacity = int(float(gpu.memory_gib) * GIB)
    checked = largest(capacity)
    for _ in range(4):
        if checked in {t.batch for t in fit} or not 1 <= checked <= int(pcfg.get("check_batch_up_to", 256)):
            break
        fit.append(trace_step(module, synthetic(checked), precision))
        if peak(checked) <= capacity:
            break
        # step down by the overflow over the per-sample growth measured next to this batch
        per_sample = max(1.0, peak(checked) - peak(checked - 1))
        checked = max(0, checked - max(1, math.ceil((peak(checked) - capacity) / per_sample)))

    gpus = {name: int(float(spec.memory_gib) * GIB) for name, spec in pcfg.gpus.items()}
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    flops_step = flops * accumulate
    mfu = float(pcfg.mfu)
    flops_per_second = float(gpu.bf16_tflops) * 1e12 * mfu
    encoding = encoding_split(cfg, traced_latents, flops / batch, other_flops / batch if encodes else None)
    mean_flops_step = int(encoding.pop("mean_flops_per_step", flops) * accumulate)
    step_seconds = mean_flops_step / flops_per_second
    if encoding:
        for key in ("all_on_the_fly", "all_cached"):
            encoding[f"step_seconds_{key}"] = encoding.pop(f"flops_per_step_{key}") * accumulate / flops_per_second
        encoding["step_seconds"] = step_seconds
    max_steps = int(cfg.trainer.get("max_steps", -1) or 0)

    # host side: every rank's loader workers hold each task's shuffle buffer of raw samples and prefetched batches
    task_name, task = traced_task(cfg)
    frames = int(task.get("num_frames", cfg.data.get("num_frames", 16)))
    res = int(task.get("resolution", cfg.data.get("resolution", 256)))
    workers = int(cfg.data.get("num_workers", 0) or 0)
    gpus_per_node = int(cfg.trainer.get("devices", 1) or 1)
    nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    clips = 2 if module.stage.source else 1
    batch_bytes = batch * (clips * 3 * frames * res * res + (3 * res * res * 4 if module.stage.source else 0))
    shuffle = shuffle_buffer_bytes(cfg.data, float(pcfg.raw_sample_mib))
    prefetch = int(pcfg.prefetch_factor) * batch_bytes
    per_rank = max(workers, 1) * (shuffle + prefetch) + (batch_bytes if cfg.data.get("pin_memory") else 0)
    host = {
        "shuffle buffers": gpus_per_node * max(workers, 1) * shuffle,
        "prefetched batches": gpus_per_node * (max(workers, 1) * prefetch + batch_bytes),
        "EMA on the host": gpus_per_node * ema_bytes if ema_device == "cpu" else 0,
    }
    host_total = gpus_per_node * per_rank + host["EMA on the host"]

    all_param_bytes = sum(p.numel() * p.element_size() for _, p in named) + buffers
    checkpoint = all_param_bytes + opt_bytes + ema_bytes
    options = {
        "gradient_checkpointing": cfg.stage.get("gradient_checkpointing", False),
        "gradient_as_bucket_view": bucket_view if ddp else "n/a (no DDP)",
        "ema": f"{ema_device}" if ema_on else "off",
        "optimizer": optimizer,
        "frozen_dtype": cfg.stage.get("frozen_dtype") or "float32",
    }
    if cfg.stage.get("lora"):
        options["lora_rank"] = cfg.stage.lora.get("rank")
    trained_by = {}
    for part in ("unet", "vae", "text_encoder", "image_encoder", "image_projector"):
        count = sum(p.numel() for n, p in named if n.startswith(part + "."))
        if count:
            trained_by[part] = count
    trained_by["trained"] = trainable
    notes = [
        "figures from fake tensors on the CPU (CPU autocast stands in for CUDA's); CUDA kernels may keep "
        "other temporaries (cuDNN/SDPA workspaces) and the allocator fragments: keep some headroom",
        f"host RAM: each loader worker's shuffle buffers hold at most data.shuffle_buffer_mib "
        f"({float(cfg.data.get('shuffle_buffer_mib', 0) or 0):g} MiB)"
        + (
            f", capped at data.shuffle_buffer samples of {pcfg.raw_sample_mib} MiB (plan.raw_sample_mib) per task"
            if cfg.data.get("shuffle_buffer")
            else ""
        ),
        f"traced batches {sorted({t.batch for t in fit})}; other GPUs' largest batches are linear in the batch "
        "from the nearest two",
    ]
    if encoding:
        kind = "cached latents" if traced_latents else "pixels encoded on the fly"
        notes.append(
            f"memory is traced on task {task_name} ({kind}); the mean step weighs each task's batch by the FLOPs per "
            f"sample of {task_name}'s step from pixels or from latents (another task's image instruction may differ)"
        )
    return Plan(
        experiment=str(cfg.get("task_name", "")),
        gpu=gpu_name,
        gpu_bytes=capacity,
        batch_per_gpu=batch,
        traced_task=task_name,
        frames=frames,
        resolution=res,
        precision=precision,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        accumulate_grad_batches=accumulate,
        options=options,
        parameters=trained_by,
        memory=parts(batch),
        peak_bytes=peak(batch),
        activation_bytes=parts(batch)["activations"],
        activation_bytes_per_sample=per_batch("activation_bytes", 2) - per_batch("activation_bytes", 1),
        max_batch_per_gpu=checked,
        max_batch_by_gpu={name: checked if name == gpu_name else largest(cap) for name, cap in gpus.items()},
        traced_batches=sorted({t.batch for t in fit}),
        flops_per_step=flops_step,
        flops_per_sample=flops / batch,
        mean_flops_per_step=mean_flops_step,
        encoding=encoding,
        mfu=mfu,
        step_seconds=step_seconds,
        max_steps=max_steps,
        hours_to_max_steps=step_seconds * max(max_steps, 0) / 3600,
        checkpoint_bytes=checkpoint,
        host_bytes_per_node=host_total,
        host=host,
        notes=notes,
    )
