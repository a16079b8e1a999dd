"""GPU benchmark: the SD-1.5-size VIDiff model (random weights, bf16), 16 frames at 256x256.

Measures, on one GPU:

- edit latency: one ``VIDiffPipeline`` call, 20 DDIM steps with the batched 3-way guidance, VAE encode and decode
  included (goal ≤ 1.0 s on an H100);
- a V2V training step (VAE encode of source and target, U-Net forward and backward, AdamW) and its model-FLOPs
  utilisation (goal ≥ 40 %).

FLOPs are counted with ``torch.utils.flop_counter`` on the very calls that are timed (conv, matmul and attention;
2 FLOPs per MAC), and each time is reported against its FLOP floor = FLOPs ÷ the device's dense bf16 peak.

    python benchmarks/gpu.py                       # defaults: --size 256 --frames 16 --steps 20 --compile
    python benchmarks/gpu.py --no-compile --json outputs/bench/gpu.json
    python benchmarks/gpu.py --model tiny --device cpu --dtype float32 --steps 2 --no-compile   # code-path check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch


# dense bf16 peak (TFLOP/s, no sparsity) by device name fragment
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}  # fmt: skip

SD15_RANDOM = [
    # the sd15 preset's architecture, every part built from its config with random weights
    "model.stable_diffusion=null",
    "model.motion_adapter.pretrained=null",
    "model.image_encoder.pretrained=null",
    "+model.image_encoder.config={hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 24, "
    "num_attention_heads: 16, image_size: 224, patch_size: 14, projection_dim: 768}",
]


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, value in PEAK_TFLOPS.items():
        if fragment in name:
            return value
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def eager_flops(fn) -> float:
    """FLOPs of ``fn`` with every compiled function run eagerly: compiled graphs hide their ops from the counter."""
    with torch.compiler.set_stance("force_eager"):
        return count_flops(fn)


def build_model(name: str, device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool):
    from vidiff.config import load_model_preset
    from vidiff.utils.speed import apply_speed

    overrides = SD15_RANDOM if name == "sd15" else []
    model = load_model_preset(name, overrides).to(device=device, dtype=dtype)
    # what vidiff-train speed.* and vidiff-edit --compile --channels-last apply; static shapes: the edit and the
    # training step each get kernels for their own shapes
    apply_speed(model, compile, channels_last, "max-autotune-no-cudagraphs", dynamic=False, device=device, prog=None)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15", choices=["sd15", "tiny"], help="architecture (random weights)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "float32"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the U-Net"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true", help="edit latency only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device here (use --device cpu --model tiny for a code-path check)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "float32": torch.float32}[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    from vidiff.pipelines import VIDiffPipeline

    model = build_model(args.model, device, dtype, args.channels_last, args.compile)
    pipe = VIDiffPipeline.from_model(model, scheduler="ddim")
    pipe.vae_batch_size = args.frames
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(args.frames, 3, args.size, args.size, generator=generator) * 2 - 1

    def edit():
        return pipe(video, instruction="Remove the haze.", num_inference_steps=args.steps, output_type="pt",
                    generator=torch.Generator().manual_seed(0))  # fmt: skip

    peak = peak_tflops(device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "peak_bf16_tflops": peak,
        "model": args.model,
        "dtype": args.dtype,
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "torch": torch.__version__,
        "date": str(date.today()),
        "command": " ".join(sys.argv),
    }
    edit_times = timed(edit, device, args.warmup, args.repeats)
    edit_flops = eager_flops(edit)
    results["edit"] = {
        "seconds_median": statistics.median(edit_times),
        "seconds_min": min(edit_times),
        "tflops": edit_flops / 1e12,
        "floor_seconds": edit_flops / (peak * 1e12) if peak else None,
        "mfu": edit_flops / min(edit_times) / (peak * 1e12) if peak else None,
    }
    print(json.dumps(results["edit"], indent=2), flush=True)

    if not args.skip_train:
        from vidiff.training.module import VIDiffModule

        train_model = model  # with --compile the compiled U-Net trains too
        module = VIDiffModule(train_model, stage="v2v", ema_decay=None).to(device)
        optimizer = torch.optim.AdamW([p for p in train_model.parameters() if p.requires_grad], lr=1e-5)
        target = torch.randint(0, 255, (1, 3, args.frames, args.size, args.size), dtype=torch.uint8, device=device)
        batch = {"target": target, "source": target.flip(-1), "instruction": ["Remove the haze."], "task": "dehaze",
                 "has_image": torch.zeros(1, dtype=torch.bool), "image": torch.zeros(1, 3, 224, 224)}  # fmt: skip
        # trainable weights stay in fp32 master precision under autocast (as Lightning's bf16-mixed does)
        train_model.unet.float()
        if train_model.image_projector is not None:
            train_model.image_projector.float()

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = module.shared_step(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step_times = timed(step, device, args.warmup, args.repeats)
        step_flops = eager_flops(step)
        results["train_step"] = {
            "seconds_median": statistics.median(step_times),
            "seconds_min": min(step_times),
            "tflops": step_flops / 1e12,
            "floor_seconds": step_flops / (peak * 1e12) if peak else None,
            "mfu": step_flops / statistics.median(step_times) / (peak * 1e12) if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        print(json.dumps(results["train_step"], indent=2), flush=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
