"""V2V training steps per second from pixel shards against the same shards with cached latents (``vidiff-prep
latents``), through the real ``vidiff-train`` (data decoding, Lightning loop, optimizer and EMA included).

    .venv/bin/python benchmarks/latent_training.py [--shards outputs/demo/shards] [--model outputs/demo/runs/t2v/model]
        [--experiment demo/v2v] [--steps 200]

Each source is trained twice, for ``--warmup`` and ``--warmup + --steps`` steps, in its own process; the difference
of the two wall times over ``--steps`` is the time per step without start-up. ``--model`` is the model the stage
starts from (its autoencoder encodes the latents). Defaults are the demo's outputs (run ``make demo`` first).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_seconds(experiment: str, data_dir: Path, model: Path, steps: int, run_dir: Path) -> float:
    command = [
        sys.executable, "-m", "vidiff.cli.train", f"experiment={experiment}", f"paths.data_dir={data_dir}",
        f"stage.init_from={model}", f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=50",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="outputs/demo/shards")
    parser.add_argument("--model", default="outputs/demo/runs/t2v/model")
    parser.add_argument("--experiment", default="demo/v2v")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="vidiff-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vidiff.cli.prep", "latents", "--model", args.model, "--shards", args.shards,
             "--out", str(tmp / "latents"), "--quiet"],
            check=True, capture_output=True,
        )  # fmt: skip
        encode_s = time.perf_counter() - start
        rows = {}
        for name, data in (("pixel shards", Path(args.shards)), ("latent shards", tmp / "latents")):
            short = train_seconds(args.experiment, data, Path(args.model), args.warmup, tmp / f"{name}-a")
            long = train_seconds(args.experiment, data, Path(args.model), args.warmup + args.steps, tmp / f"{name}-b")
            per_step = (long - short) / args.steps
            rows[name] = {"s_per_step": round(per_step, 4), "steps_per_s": round(1 / per_step, 2)}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}",
        "experiment": args.experiment,
        "steps": args.steps,
        "vidiff_prep_latents_s": round(encode_s, 1),
        "rows": rows,
        "speed-up": round(rows["pixel shards"]["s_per_step"] / rows["latent shards"]["s_per_step"], 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
