"""Run a benchmark: translate every held-out video of a split and score it (no Lightning).

Rows of every table:

- ``identity``: the source video as the output (what doing nothing scores);
- ``vae``: the ground truth encoded and decoded by the model's VAE — the upper bound of any latent model;
- one row per model checkpoint: the VIDiff pipeline editing the whole video autoregressively (clips of
  ``clip_length`` frames, the last ``overlap`` edited frames of a clip conditioning the next), with its inference
  time per video and per frame.

For ``rvos`` the model's overlay output is decoded into masks and scored with J&F against the ground-truth masks.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics import MetricWeights
from vidiff.evaluation.scoring import Scorer
from vidiff.pipelines.checks import DEFAULT_SAMPLING


@dataclass
class BenchmarkVideo:
    key: str
    source: np.ndarray  # uint8 [f, h, w, 3]
    target: np.ndarray
    instruction: str | None
    image: np.ndarray | None = None
    mask: np.ndarray | None = None  # bool [f, h, w] (rvos)
    color: str | None = None
    fps: float = 25.0


# identity: the source as the output; vae: the target through the autoencoder (the latent upper bound);
# target: the ground truth as the output (the reference values of no-reference metrics: colourfulness, CDC, NIQE)
BASELINES = ("identity", "vae", "target")


def benchmark_shards(bench: Mapping, data_dir: str | Path) -> str:
    """Where a benchmark reads its shards: its own ``shards`` if it names them, else ``<data_dir>/<task>`` —
    the folder ``vidiff-prep <source> --out <data_dir>`` writes (the benchmark's ``source`` picks that converter's
    shards among others of the same task)."""
    shards = bench.get("shards")
    return str(shards) if shards else str(Path(data_dir) / str(bench["task"]))


def iter_videos(
    urls,
    split: str | None,
    task: str,
    max_videos: int | None = None,
    max_frames: int | None = None,
    source: str | None = None,
) -> Iterator[BenchmarkVideo]:
    """Whole held-out videos from WebDataset shards, in shard order (``source``: only that converter's shards)."""
    import webdataset as wds

    from vidiff.data.shards import decode_frames, decode_mask, resolve_urls

    shards = resolve_urls(urls, split=split, source=source)
    dataset = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, empty_check=False)
    count = 0
    for raw in dataset:
        if max_videos is not None and count >= max_videos:
            return
        key = raw["__key__"]
        try:
            meta = json.loads(raw["json"])
            if split is not None and meta.get("split", split) != split:
                continue
            n = int(meta["num_frames"]) if max_frames is None else min(int(meta["num_frames"]), max_frames)
            target = decode_frames(raw["tgt.mp4"], 0, n)
            source = decode_frames(raw["src.mp4"], 0, n) if "src.mp4" in raw else target
            mask = decode_mask(raw["mask.npy.gz"], int(meta["width"]))[:n] if "mask.npy.gz" in raw else None
            image = None
            if "style.png" in raw:
                with Image.open(io.BytesIO(raw["style.png"])) as img:
                    image = np.asarray(img.convert("RGB"))
            text = raw["txt"].decode() if "txt" in raw else None
        except (KeyError, ValueError, OSError) as err:
            raise VIDiffError(f"{raw.get('__url__', urls)}: sample {key} is unreadable ({err})") from None
        if not text and "style.png" not in raw:
            raise VIDiffError(f"{raw.get('__url__', urls)}: sample {key} has no instruction (txt) or style image")
        instruction = text or None
        fps = meta.get("fps", "25")
        num, _, den = str(fps).partition("/")
        yield BenchmarkVideo(
            key=key,
            source=source,
            target=target,
            instruction=instruction,
            image=image,
            mask=mask,
            color=meta.get("color"),
            fps=float(num) / float(den or 1),
        )
        count += 1


@dataclass
class SamplingOptions:
    """How models edit in a benchmark. ``None`` in the sampler fields: what the model records for the task
    (:meth:`VIDiffPipeline.recommended`), else :attr:`FALLBACK`."""

    num_inference_steps: int | None = DEFAULT_SAMPLING["num_inference_steps"]
    text_guidance_scale: float | None = DEFAULT_SAMPLING["text_guidance_scale"]
    video_guidance_scale: float | None = DEFAULT_SAMPLING["video_guidance_scale"]
    strength: float = 1.0
    scheduler: str | None = DEFAULT_SAMPLING["scheduler"]
    clip_length: int = 16
    overlap: int = 2
    seed: int = 0

    FALLBACK = {key: DEFAULT_SAMPLING[key] for key in ("num_inference_steps", "text_guidance_scale",
                                                       "video_guidance_scale", "scheduler")}  # fmt: skip

    def filled(self, recommended: Mapping) -> tuple[SamplingOptions, dict]:
        """These options with every ``None`` sampler field taken from ``recommended`` (else the fallback), and
        the values taken from ``recommended``."""
        import dataclasses

        values, taken = {}, {}
        for key, fallback in self.FALLBACK.items():
            if getattr(self, key) is None:
                taken.update({key: recommended[key]} if key in recommended else {})
                values[key] = recommended.get(key, fallback)
        return dataclasses.replace(self, **values), taken


@dataclass
class RowResult:
    metrics: dict[str, float]
    num_videos: int
    num_frames: int
    seconds: float | None = None
    skips: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        row = dict(self.metrics)
        if self.seconds is not None:
            row["time_per_video_s"] = self.seconds / max(1, self.num_videos)
            row["time_per_frame_s"] = self.seconds / max(1, self.num_frames)
        row["num_videos"] = self.num_videos
        row["num_frames"] = self.num_frames
        return row


def overlay_mask_frames(
    source: np.ndarray, output: np.ndarray, mask: np.ndarray | None, color: str
) -> tuple[np.ndarray, np.ndarray]:
    """An rvos output decoded into its mask, and the true mask (none: empty), as white-on-black frames: what J&F
    compares."""
    from vidiff.overlay import overlay_to_mask

    pred_mask = overlay_to_mask(source, output, color)
    as_frames = lambda m: np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=-1)  # noqa: E731
    target_mask = mask if mask is not None else np.zeros(output.shape[:3], bool)
    return as_frames(pred_mask), as_frames(target_mask)


def _as_metric_input(video: BenchmarkVideo, frames: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """What the metrics compare: frames, or for rvos the decoded masks as white-on-black frames."""
    if task != "rvos":
        return frames, video.target
    return overlay_mask_frames(video.source, frames, video.mask, video.color or "red")


def vae_reconstruction(model, frames: np.ndarray, chunk_size: int = 8) -> np.ndarray:
    """Encode and decode frames with the model's VAE (the latent upper bound)."""
    from vidiff.utils.frames import pad_to_multiple, tensor_to_frames, video_to_tensor

    video, (h, w) = pad_to_multiple(video_to_tensor(frames).to(model.device, model.vae.dtype), model.vae_scale_factor)
    with torch.no_grad():
        latents = model.encode_video(video, chunk_size=chunk_size)
        decoded = model.decode_latents(latents, chunk_size=chunk_size)
    return tensor_to_frames(decoded[0, :, :, :h, :w])


class RowScorer(Scorer):
    """The benchmark's view of a :class:`~vidiff.evaluation.scoring.Scorer`: a model's frames against a
    :class:`BenchmarkVideo` (rvos outputs are decoded into masks first), and a :class:`RowResult` per row."""

    def update(self, video: BenchmarkVideo, frames: np.ndarray, task: str) -> None:
        pred, target = _as_metric_input(video, frames, task)
        self.score(pred, target, video.instruction)

    def result(self, num_videos: int, num_frames: int, seconds: float | None) -> RowResult:
        return RowResult(self.values(), num_videos, num_frames, seconds, self.skips())


def translate(pipe, video: BenchmarkVideo, sampling: SamplingOptions, overrides: Mapping | None = None) -> np.ndarray:
    """The whole video edited by the pipeline (autoregressive clips), as uint8 frames."""
    guidance = {
        "num_inference_steps": sampling.num_inference_steps,
        "text_guidance_scale": sampling.text_guidance_scale,
        "video_guidance_scale": sampling.video_guidance_scale,
        "strength": sampling.strength,
        **(overrides or {}),
    }
    summary = pipe.edit_video(
        video.source,
        instruction=video.instruction,
        image=video.image,
        clip_length=sampling.clip_length,
        overlap=sampling.overlap,
        seed=sampling.seed,
        progress=False,
        **guidance,
    )
    return summary.frames


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_benchmark(
    videos: list[BenchmarkVideo],
    task: str,
    models: Mapping[str, Any],
    metric_names,
    weights: MetricWeights,
    sampling: SamplingOptions,
    baselines=("identity", "vae"),
    device: str = "cpu",
    metric_options: Mapping | None = None,
    save_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, RowResult]:
    """Score the baselines and every model (``{label: VIDiffModel}``) on the same videos."""
    from vidiff.io import write_video
    from vidiff.pipelines import VIDiffPipeline, make_scheduler

    metric_options = dict(metric_options or {})
    num_frames = sum(len(v.source) for v in videos)
    rows: dict[str, RowResult] = {}
    scorer = RowScorer(metric_names, weights, device, metric_options)
    pipes = {
        label: m if isinstance(m, VIDiffPipeline) else VIDiffPipeline.from_model(m) for label, m in models.items()
    }
    reference_model = next(iter(pipes.values())).model if pipes else None

    def save(label: str, video: BenchmarkVideo, frames: np.ndarray) -> None:
        if save_dir is not None:
            out = save_dir / label / f"{video.key}.mp4"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_video(out, frames, fps=video.fps, overwrite=True)

    for baseline in baselines:
        if baseline not in BASELINES:
            raise VIDiffError(f"unknown baseline {baseline!r} (choose from: {', '.join(BASELINES)})")
        if baseline == "vae" and reference_model is None:
            raise VIDiffError("the vae baseline needs a model (give checkpoint=...)")
        scorer.reset()
        for video in tqdm(videos, desc=baseline, unit="video", disable=not progress):
            if baseline == "vae":
                frames = vae_reconstruction(reference_model, video.target)
            else:
                frames = video.source if baseline == "identity" else video.target
            scorer.update(video, frames, task)
        rows[baseline] = scorer.result(len(videos), num_frames, None)

    for label, pipe in pipes.items():
        own, taken = sampling.filled(pipe.recommended(task))
        if taken:
            print(f"vidiff-eval: {label}: the model's recommended settings for {task}: {taken}")
        pipe.scheduler = make_scheduler(own.scheduler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        scorer.reset()
        seconds = 0.0
        for video in tqdm(videos, desc=label, unit="video", disable=not progress):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            frames = translate(pipe, video, own)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            save(label, video, frames)
            scorer.update(video, frames, task)
        rows[label] = scorer.result(len(videos), num_frames, seconds)
    return rows


def guidance_grid(
    videos: list[BenchmarkVideo],
    task: str,
    model,
    metric_name: str | None,
    text_scales,
    video_scales,
    weights: MetricWeights,
    sampling: SamplingOptions,
    device: str = "cpu",
    metric_options: Mapping | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Figure 5: the metric and a middle frame of the first video for every ``(s_T, s_V)`` pair (with
    ``metric_name=None`` only the frames: videos without a ground truth, as in the web app)."""
    from vidiff.pipelines import VIDiffPipeline, make_scheduler

    pipe = model if isinstance(model, VIDiffPipeline) else VIDiffPipeline.from_model(model)
    sampling, _ = sampling.filled(pipe.recommended(task))
    pipe.scheduler = make_scheduler(sampling.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    values = np.full((len(text_scales), len(video_scales)), math.nan)
    thumbs: list[list[np.ndarray]] = []
    cells = [(i, j) for i in range(len(text_scales)) for j in range(len(video_scales))]
    bar = tqdm(total=len(cells), desc="guidance grid", unit="cell", disable=not progress)
    scorer = RowScorer([metric_name], weights, device, metric_options or {}) if metric_name else None
    for i, s_t in enumerate(text_scales):
        thumbs.append([])
        for j, s_v in enumerate(video_scales):
            if scorer is not None:
                scorer.reset()
            for k, video in enumerate(videos):
                frames = translate(
                    pipe, video, sampling, {"text_guidance_scale": float(s_t), "video_guidance_scale": float(s_v)}
                )
                if k == 0:
                    thumbs[i].append(frames[len(frames) // 2])
                if scorer is not None:
                    scorer.update(video, frames, task)
            if scorer is not None:
                values[i, j] = scorer.result(len(videos), 0, None).metrics.get(metric_name, math.nan)
            bar.update(1)
    bar.close()
    return values, thumbs
