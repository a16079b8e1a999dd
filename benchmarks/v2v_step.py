"""Where a V2V training step's compute goes: the frozen autoencoder encoding source and target, against the
U-Net's forward and backward pass (the share that training from cached latents would save).

    .venv/bin/python benchmarks/v2v_step.py [--model DIR] [--batch 4] [--frames 8] [--sizes 48 96] [--repeats 5]

Without ``--model`` the tiny preset (random weights; the cost does not depend on the values) is measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vidiff.pipelines import load_model


def measure(model, batch: int, frames: int, size: int, repeats: int) -> dict[str, float]:
    video = torch.rand(batch, 3, frames, size, size) * 2 - 1
    instruction = model.encode_instruction(["Remove the haze."] * batch).detach()
    timesteps = torch.randint(0, 1000, (batch,))

    def encode():
        with torch.no_grad():
            return model.encode_video(video, sample=True), model.encode_video(video)

    target, source = encode()  # warm-up

    def unet_step():
        model.unet.zero_grad(set_to_none=True)
        model.predict_noise(target, source, timesteps, instruction).square().mean().backward()

    unet_step()
    timings = {}
    for name, fn in (("encode_s", encode), ("unet_fwd_bwd_s", unet_step)):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings[name] = (time.perf_counter() - start) / repeats
    timings["encode_share"] = timings["encode_s"] / (timings["encode_s"] + timings["unet_fwd_bwd_s"])
    timings["latent"] = list(target.shape)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a VIDiff model directory (default: the tiny preset)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model:
        model = load_model(args.model)
    else:
        from vidiff.config import load_model_preset

        model = load_model_preset("tiny")
    model.unet.train()
    rows = {size: measure(model, args.batch, args.frames, size, args.repeats) for size in args.sizes}
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| crop (px) | latents | encode source + target (s) | U-Net fwd + bwd (s) | encode share |")
    print("|---:|---|---:|---:|---:|")
    for size, row in rows.items():
        print(
            f"| {size} | {'x'.join(map(str, row['latent']))} | {row['encode_s']:.3f} | {row['unet_fwd_bwd_s']:.3f} "
            f"| {row['encode_share']:.0%} |"
        )
    print(json.dumps({str(k): v for k, v in rows.items()}))


if __name__ == "__main__":
    main()
