"""Figures: Figure 5 (guidance grid: frames and a metric heat map), Figure 7 (bar charts comparing runs)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vidiff.errors import VIDiffError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write a figure atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def guidance_heatmap(values: np.ndarray, text_scales, video_scales, metric: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(video_scales) + 2, 1.0 * len(text_scales) + 1.5))
    image = ax.imshow(values, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(video_scales)), [f"{s:g}" for s in video_scales])
    ax.set_yticks(range(len(text_scales)), [f"{s:g}" for s in text_scales])
    ax.set_xlabel("video guidance $s_V$")
    ax.set_ylabel("text guidance $s_T$")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"Figure 5: {metric} over the guidance scales")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def guidance_image_grid(thumbs: Sequence[Sequence[np.ndarray]], text_scales, video_scales, path: Path) -> Path:
    """Frames laid out like the heat map: rows ``s_T`` (bottom = smallest), columns ``s_V``."""
    plt = _pyplot()
    rows, cols = len(text_scales), len(video_scales)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[rows - 1 - i][j]
            ax.imshow(thumbs[i][j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"$s_T$={text_scales[i]:g}")
            if i == 0:
                ax.set_xlabel(f"$s_V$={video_scales[j]:g}")
    fig.suptitle("Figure 5: guidance scales")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def load_run_metrics(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VIDiffError(f"{path}: no such metrics file (run vidiff-eval first)") from None
    except json.JSONDecodeError as err:
        raise VIDiffError(f"{path}: not valid JSON ({err})") from None
    if "rows" not in data:
        raise VIDiffError(f"{path}: not a vidiff-eval metrics.json (no 'rows')")
    return data


def compare_runs(runs: Mapping[str, str], metrics: Sequence[str] | None, path: Path, row: str | None = None) -> dict:
    """Figure 7: one bar group per metric, one bar per run (each run's model row, or ``row``).

    Returns ``{metric: {run: value}}`` (also what the bars show).
    """
    if len(runs) < 2:
        raise VIDiffError("compare needs at least two runs (label: metrics.json)")
    values: dict[str, dict[str, float]] = {}
    benchmarks = set()
    for label, file in runs.items():
        data = load_run_metrics(Path(file))
        benchmarks.add(data.get("benchmark"))
        rows = data["rows"]
        chosen = row or next((r for r in rows if r not in ("identity", "vae")), None)
        if chosen not in rows:
            raise VIDiffError(f"{file}: no row {chosen!r} (rows: {', '.join(rows)})")
        for metric in metrics or data.get("metrics", []):
            for key in ["jf"] if metric == "jf" else [metric]:
                if key in rows[chosen]:
                    values.setdefault(key, {})[label] = rows[chosen][key]
    if not values:
        raise VIDiffError("the runs share none of the requested metrics")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(values), figsize=(3 * len(values), 3), squeeze=False)
    for ax, (metric, per_run) in zip(axes[0], values.items()):
        labels = list(per_run)
        ax.bar(range(len(labels)), [per_run[k] for k in labels], color=plt.cm.tab10(np.arange(len(labels))))
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(metric)
    fig.suptitle(f"Figure 7: {', '.join(sorted(b for b in benchmarks if b))}")
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return values


def loss_curve(steps: Sequence[int], losses: Sequence[float], path: Path, title: str = "training loss") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="per step")
    if len(losses) >= 10:
        k = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
