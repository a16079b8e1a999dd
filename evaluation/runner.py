"""Run ``vidiff-eval``'s modes from a composed ``conf/eval.yaml`` (no Lightning): paper tables, the guidance
grid (Figure 5) and run comparisons (Figure 7). ``vidiff.cli.eval`` is the Hydra wrapper around :func:`evaluate`.

A table run writes ``metrics.json`` ({rows: {method: {metric: value}}, ...}), ``table.md``, ``table.csv``,
``table.tex`` and, with ``save_videos``, the edited videos under ``videos/<method>/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vidiff.config import to_plain as _plain
from vidiff.errors import VIDiffError
from vidiff.utils.device import pick_device, pick_dtype
from vidiff.utils.files import write_text_atomic


def load_models(cfg: DictConfig, device: str, dtype) -> dict[str, Any]:
    """``{row label: VIDiffPipeline}`` from ``checkpoint`` (a dir or {label: dir}) and ``presets``."""
    from vidiff.pipelines import load_pipeline

    checkpoints = _plain(cfg.checkpoint)
    if isinstance(checkpoints, str):
        path = Path(checkpoints)
        # vidiff-train exports <run>/model: label the row with the run's name
        checkpoints = {path.parent.name if path.name == "model" else path.name: checkpoints}
    models = {str(label): load_pipeline(path, None, device, dtype) for label, path in (checkpoints or {}).items()}
    for preset in cfg.presets or []:
        models[f"{preset} (random weights)"] = load_pipeline(None, preset, device, dtype)
    return models


def _sampling_note(sampling, models: dict, task: str) -> str:
    """How every model row sampled (a null setting is the model's recommendation for the task, see SamplingOptions)."""
    groups: dict[str, list[str]] = {}
    recommended = []
    for label, pipe in models.items():
        own, taken = sampling.filled(pipe.recommended(task))
        text = (
            f"{own.num_inference_steps} {own.scheduler} steps, s_T={own.text_guidance_scale}, "
            f"s_V={own.video_guidance_scale}"
        )
        groups.setdefault(text, []).append(label)
        if taken:
            recommended.append(label)
    clips = f"clips of {sampling.clip_length} with {sampling.overlap} reference frames"
    if len(groups) <= 1:
        note = f"sampling: {next(iter(groups), 'none')}, {clips}"
    else:
        note = (
            "sampling: " + "; ".join(f"{', '.join(labels)}: {text}" for text, labels in groups.items()) + f"; {clips}"
        )
    if recommended:
        note += f" ({', '.join(recommended)}: what the model records where the run gave no value)"
    return note


def metric_plan(cfg: DictConfig, weights) -> tuple[list[str], list[str]]:
    """The metrics to compute, and notes about those left out (missing weights with ``missing_weights=skip``)."""
    from vidiff.evaluation.metrics import parse_metric_names
    from vidiff.evaluation.metrics.learned import check_weights

    names = parse_metric_names(list(cfg.benchmark.metrics))
    kept, notes = [], []
    for name in names:
        try:
            check_weights(name, weights)  # before any work; the networks load once, in the benchmark run
            kept.append(name)
        except VIDiffError as err:
            if cfg.missing_weights != "skip" or "needs" not in str(err):
                raise
            notes.append(f"{name} not computed: {err}")
    if not kept:
        raise VIDiffError("no metric left to compute (every one needs weights that were not given)")
    return kept, notes


def run_table(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from vidiff.evaluation.benchmark import SamplingOptions, benchmark_shards, device_name, iter_videos, run_benchmark
    from vidiff.evaluation.metrics import MetricWeights, metric_info
    from vidiff.evaluation.tables import columns_of, to_csv, to_latex, to_markdown
    from vidiff.utils.frames import resize_frames, working_size

    bench = cfg.benchmark
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    weights = MetricWeights.from_env(**_plain(cfg.weights))
    metrics, notes = metric_plan(cfg, weights)
    models = load_models(cfg, device, dtype)
    if not models and "vae" in cfg.baselines:
        raise VIDiffError("no model to evaluate: give checkpoint=<model dir> (or presets=[tiny])")

    shards = benchmark_shards(bench, cfg.paths.data_dir)
    videos = list(iter_videos(shards, bench.split, bench.task, cfg.max_videos, cfg.max_frames, bench.get("source")))
    if not videos:
        raise VIDiffError(f"{shards}: no {bench.split} videos in these shards")
    if cfg.size:
        for video in videos:
            size = working_size(*video.source.shape[1:3], int(cfg.size))
            video.source, video.target = resize_frames(video.source, size), resize_frames(video.target, size)
            if video.mask is not None:
                resized = resize_frames(video.mask[..., None].repeat(3, -1).astype("uint8") * 255, size)
                video.mask = resized[..., 0] >= 128
    num_frames = sum(len(v.source) for v in videos)
    print(f"vidiff-eval: {bench.name}: {len(videos)} videos, {num_frames} frames; metrics: {', '.join(metrics)}")

    sampling = SamplingOptions(**_plain(cfg.sampling))
    rows = run_benchmark(
        videos,
        bench.task,
        models,
        metrics,
        weights,
        sampling,
        baselines=list(cfg.baselines),
        device=device,
        metric_options=_plain(cfg.metric_options),
        save_dir=out / "videos" if cfg.save_videos else None,
    )
    infos = {name: metric_info(name) for name in metrics}
    if "jf" in infos:
        from vidiff.evaluation.metrics import MetricInfo

        infos["j"] = MetricInfo("j", "J", True)
        infos["f"] = MetricInfo("f", "F", True)
    table_rows = {name: row.as_dict() for name, row in rows.items()}
    cols = columns_of(table_rows, metrics, infos)
    model_rows = list(models)
    where = device_name(device)
    notes = [
        f"{len(videos)} videos ({num_frames} frames) of `{shards}` split `{bench.split}`"
        + (f", source `{bench.source}`" if bench.get("source") else ""),
        _sampling_note(sampling, models, bench.task) + f"; times measured on {where}",
        *[f"{infos[m].label}: {infos[m].convention}" for m in metrics if infos[m].convention],
        *notes,
    ]
    for name, row in rows.items():
        for metric, reasons in row.skips.items():
            notes.append(f"{name}: {metric} skipped " + "; ".join(f"{n}x {r}" for r, n in reasons.items()))
    result = {
        "benchmark": bench.name,
        "title": bench.title,
        "task": bench.task,
        "split": bench.split,
        "metrics": metrics,
        "device": where,
        "num_videos": len(videos),
        "num_frames": num_frames,
        "sampling": vars(sampling),
        "rows": {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                 for name, row in table_rows.items()},
        "notes": notes,
    }  # fmt: skip
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(bench.title, table_rows, cols, infos, model_rows, notes)
    write_text_atomic(out / "table.md", markdown)
    write_text_atomic(out / "table.csv", to_csv(table_rows, cols))
    write_text_atomic(out / "table.tex", to_latex(bench.title, table_rows, cols, infos, model_rows))
    if cfg.wandb.enabled:
        log_wandb(cfg, out, bench, table_rows, cols)
    print(markdown)
    print(f"vidiff-eval: wrote {out}/metrics.json, table.md, table.csv, table.tex")
    return result


def log_wandb(cfg: DictConfig, out: Path, bench, rows, cols) -> None:
    from vidiff.utils.extras import require

    require("wandb", "wandb.enabled=true")
    import wandb

    run = wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=str(out), job_type="eval", name=bench.name,
                     config=OmegaConf.to_container(cfg, resolve=True))  # fmt: skip
    table = wandb.Table(columns=["method"] + [h for _, h in cols])
    for name, row in rows.items():
        table.add_data(name, *[row.get(k) for k, _ in cols])
    run.log({f"eval/{bench.name}": table})
    run.finish()


def run_guidance_grid(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from vidiff.evaluation.benchmark import SamplingOptions, benchmark_shards, guidance_grid, iter_videos
    from vidiff.evaluation.figures import guidance_heatmap, guidance_image_grid
    from vidiff.evaluation.metrics import MetricWeights

    bench = cfg.benchmark
    device = pick_device(cfg.device)
    weights = MetricWeights.from_env(**_plain(cfg.weights))
    models = load_models(cfg, device, pick_dtype(cfg.dtype, device))
    if len(models) != 1:
        raise VIDiffError(f"mode=guidance_grid takes one model (got {len(models)}): give checkpoint=<model dir>")
    label, model = next(iter(models.items()))
    shards = benchmark_shards(bench, cfg.paths.data_dir)
    videos = list(
        iter_videos(shards, bench.split, bench.task, cfg.grid.max_videos, cfg.max_frames, bench.get("source"))
    )
    if not videos:
        raise VIDiffError(f"{shards}: no {bench.split} videos in these shards")
    text_scales, video_scales = list(cfg.grid.text_scales), list(cfg.grid.video_scales)
    values, thumbs = guidance_grid(
        videos, bench.task, model, cfg.grid.metric, text_scales, video_scales, weights,
        SamplingOptions(**_plain(cfg.sampling)), device, _plain(cfg.metric_options),
    )  # fmt: skip
    guidance_heatmap(values, text_scales, video_scales, cfg.grid.metric, out / "figure5_heatmap.png")
    guidance_image_grid(thumbs, text_scales, video_scales, out / "figure5_frames.png")
    result = {
        "benchmark": bench.name,
        "model": label,
        "metric": cfg.grid.metric,
        "text_scales": text_scales,
        "video_scales": video_scales,
        "values": [[None if math.isnan(v) else float(v) for v in row] for row in values],
    }
    write_text_atomic(out / "guidance_grid.json", json.dumps(result, indent=2) + "\n")
    print(f"vidiff-eval: wrote {out}/figure5_heatmap.png, figure5_frames.png, guidance_grid.json")
    return result


def run_compare(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from vidiff.evaluation.figures import compare_runs

    runs = _plain(cfg.compare.runs) or {}
    metrics = _plain(cfg.compare.metrics)
    values = compare_runs(runs, metrics, out / "figure7.png", cfg.compare.row)
    write_text_atomic(out / "compare.json", json.dumps(values, indent=2) + "\n")
    print(f"vidiff-eval: wrote {out}/figure7.png, compare.json")
    return values


MODES = {"table": run_table, "guidance_grid": run_guidance_grid, "compare": run_compare}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if cfg.mode not in MODES:
        raise VIDiffError(f"mode={cfg.mode}: choose from {', '.join(MODES)}")
    if cfg.missing_weights not in ("error", "skip"):
        raise VIDiffError(f"missing_weights={cfg.missing_weights}: choose error or skip")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return MODES[cfg.mode](cfg, out)
