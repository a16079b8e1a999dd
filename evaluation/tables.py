"""Render a benchmark's rows as Markdown, CSV and LaTeX (the paper-table layout: methods down, metrics across)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

from vidiff.evaluation.metrics import MetricInfo


TIME_COLUMNS = {"time_per_video_s": "s/video", "time_per_frame_s": "s/frame"}
ROW_LABELS = {"identity": "Identity (source as output)", "vae": "VAE reconstruction (upper bound)"}


def format_number(value) -> str:
    """A table cell: 4 decimals below 1, 2 below 100, 1 above; – for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def columns_of(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str], infos: Mapping[str, MetricInfo]):
    """``[(key, header)]``: the metric columns in the requested order, then J/F when present, then timings."""
    cols = []
    present = set().union(*(r.keys() for r in rows.values())) if rows else set()
    for name in metrics:
        keys = ["jf", "j", "f"] if name == "jf" else [name]
        for key in keys:
            if key in present:
                info = infos.get(key)
                label = info.label if info else key.upper()
                arrow = "" if info is None else (" ↑" if info.higher_is_better else " ↓")
                cols.append((key, label + arrow))
    cols += [(k, v) for k, v in TIME_COLUMNS.items() if k in present]
    return cols


def best_per_column(rows, cols, infos, model_rows: Sequence[str]) -> dict[str, str]:
    """The best model row per metric (baselines are references, not contestants)."""
    best = {}
    for key, _ in cols:
        info = infos.get(key)
        if info is None:
            continue
        candidates = [(rows[r][key], r) for r in model_rows if not math.isnan(rows[r].get(key, math.nan))]
        if candidates:
            best[key] = (max if info.higher_is_better else min)(candidates)[1]
    return best


def to_markdown(title, rows, cols, infos, model_rows, notes: Sequence[str] = ()) -> str:
    best = best_per_column(rows, cols, infos, model_rows)
    lines = [f"### {title}", "", "| Method | " + " | ".join(h for _, h in cols) + " |"]
    lines.append("|---|" + "---:|" * len(cols))
    for name, row in rows.items():
        cells = []
        for key, _ in cols:
            text = format_number(row.get(key))
            cells.append(f"**{text}**" if best.get(key) == name and len(model_rows) > 1 else text)
        lines.append(f"| {ROW_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(rows, cols) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [key for key, _ in cols])
    for name, row in rows.items():
        writer.writerow(
            [name] + ["" if row.get(k) is None or _isnan(row.get(k)) else repr(row.get(k)) for k, _ in cols]
        )
    return buffer.getvalue()


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")


def to_latex(title, rows, cols, infos, model_rows) -> str:
    best = best_per_column(rows, cols, infos, model_rows)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(title)}}}",
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        "Method & " + " & ".join(_latex_escape(h) for _, h in cols) + r" \\",
        r"\midrule",
    ]
    for name, row in rows.items():
        cells = []
        for key, _ in cols:
            text = format_number(row.get(key)).replace("–", "--")
            cells.append(rf"\textbf{{{text}}}" if best.get(key) == name and len(model_rows) > 1 else text)
        lines.append(_latex_escape(ROW_LABELS.get(name, name)) + " & " + " & ".join(cells) + r" \\")
        if name == "vae":
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
