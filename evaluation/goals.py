"""The goals ``make demo``'s trained model is held to, checked from the numbers of its results (never typed in).

``results`` is ``{task: {row: {metric: value}}}`` with the rows ``identity`` (the degraded source as output),
``VAE upper bound`` (the autoencoder's reconstruction of the target), ``target`` (the ground truth as output: the
reference for no-reference metrics), ``untrained`` and ``trained``. A goal whose numbers are missing (a task the
run did not cover) is not met, and says so. Goals for ``all`` apply to every task scored in pixels (not ``rvos``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass


Rows = Mapping[str, Mapping[str, float]]
# tasks scored on decoded masks (J&F), not pixels: the "all" goals on PSNR and SSIM do not apply to them
MASK_TASKS = ("rvos",)


@dataclass(frozen=True)
class Goal:
    task: str  # a task, or "all" (checked for every task present)
    metric: str
    text: str
    # (rows of one task) -> (value, threshold); met when value >= threshold (or >, see strict)
    measure: Callable[[Rows], tuple[float, float]]
    strict: bool = False


def _get(rows: Rows, row: str, metric: str) -> float:
    value = rows.get(row, {}).get(metric)
    return float("nan") if value is None else float(value)


GOALS: tuple[Goal, ...] = (
    Goal("dehaze", "psnr", "trained PSNR > identity", lambda r: (_get(r, "trained", "psnr"), _get(r, "identity", "psnr")), True),
    Goal("inpaint", "psnr", "trained PSNR > identity", lambda r: (_get(r, "trained", "psnr"), _get(r, "identity", "psnr")), True),
    Goal("recolor", "colorfulness", "trained colourfulness >= half the target's",
         lambda r: (_get(r, "trained", "colorfulness"), 0.5 * _get(r, "target", "colorfulness"))),
    # lower CDC is better: compare the negated values so that "met" stays value >= threshold
    Goal("recolor", "cdc", "trained CDC <= 2x the target's",
         lambda r: (-_get(r, "trained", "cdc"), -2.0 * _get(r, "target", "cdc"))),
    Goal("deblur", "psnr", "trained PSNR within 1.5 dB of the VAE bound",
         lambda r: (_get(r, "trained", "psnr"), _get(r, "VAE upper bound", "psnr") - 1.5)),
    Goal("rvos", "jf", "J&F >= 0.5 on the held-out clip", lambda r: (_get(r, "trained", "jf"), 0.5)),
    Goal("rvos", "jf", "trained J&F > untrained", lambda r: (_get(r, "trained", "jf"), _get(r, "untrained", "jf")), True),
    Goal("all", "psnr", "trained PSNR > untrained", lambda r: (_get(r, "trained", "psnr"), _get(r, "untrained", "psnr")), True),
    # (edit's own goal is this one)
    Goal("all", "psnr", "trained PSNR within 3 dB of the VAE bound",
         lambda r: (_get(r, "trained", "psnr"), _get(r, "VAE upper bound", "psnr") - 3.0)),
    Goal("all", "ssim", "trained SSIM >= 0.6 (follows the source's structure)", lambda r: (_get(r, "trained", "ssim"), 0.6)),
)  # fmt: skip


def evaluate_goals(results: Mapping[str, Rows], goals: tuple[Goal, ...] = GOALS) -> list[dict]:
    """One row per (goal, task): ``{task, goal, metric, value, threshold, met, note}``."""
    rows = []
    for goal in goals:
        tasks = [t for t in results if t not in MASK_TASKS] if goal.task == "all" else [goal.task]
        for task in tasks:
            if task not in results:
                rows.append({"task": task, "goal": goal.text, "metric": goal.metric, "value": None,
                             "threshold": None, "met": False, "note": "not measured: the run has no such task"})  # fmt: skip
                continue
            value, threshold = goal.measure(results[task])
            if math.isnan(value) or math.isnan(threshold):
                met, note = False, "a number it needs is missing"
            else:
                met, note = (value > threshold) if goal.strict else (value >= threshold), ""
            sign = -1.0 if goal.metric == "cdc" else 1.0  # report CDC as itself, not negated
            rows.append({
                "task": task, "goal": goal.text, "metric": goal.metric,
                "value": None if math.isnan(value) else sign * value,
                "threshold": None if math.isnan(threshold) else sign * threshold,
                "met": bool(met), "note": note,
            })  # fmt: skip
    return rows


def goals_markdown(rows: list[dict]) -> list[str]:
    lines = ["| task | goal | value | threshold | met |", "|---|---|---:|---:|:---:|"]
    for row in rows:
        value = "–" if row["value"] is None else f"{row['value']:.4g}"
        threshold = "–" if row["threshold"] is None else f"{row['threshold']:.4g}"
        mark = "✓" if row["met"] else "✗"
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"| {row['task']} | {row['goal']}{note} | {value} | {threshold} | {mark} |")
    return lines
