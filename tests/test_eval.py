"""vidiff-eval: benchmarks run end to end on tiny shards and render the tables; Figures 5 and 7."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from vidiff.config import conf_dir
from vidiff.errors import VIDiffError
from vidiff.pipelines import save_model


BENCHMARKS = sorted(p.stem for p in (conf_dir() / "benchmark").glob("*.yaml"))
PIXEL_METRICS = "[psnr,ssim,cdc,colorfulness]"


def compose_eval(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("eval", overrides=overrides)


def evaluate(overrides: list[str]):
    from vidiff.cli.eval import evaluate

    return evaluate(compose_eval(overrides))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """A model directory as vidiff-train exports it (<run>/model)."""
    run = tmp_path_factory.mktemp("run-a")
    save_model(tiny_model, run / "model")
    return run / "model"


def base_overrides(shards: Path, out: Path, task: str = "dehaze") -> list[str]:
    return [
        f"paths.data_dir={shards}",
        "benchmark.source=video-folder",
        "benchmark.split=val",
        f"paths.output_dir={out}",
        "sampling.num_inference_steps=1",
        "sampling.clip_length=4",
        "sampling.overlap=1",
        "max_videos=3",
        "device=cpu",
    ]


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_every_benchmark_composes(benchmark):
    cfg = compose_eval([f"benchmark={benchmark}", "paths.output_dir=/tmp/x"])
    assert cfg.benchmark.name == benchmark and cfg.benchmark.metrics
    assert cfg.benchmark.task in ("recolor", "inpaint", "dehaze", "deblur", "edit", "rvos")


def test_eval_table_end_to_end(tiny_shards, tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(
        [
            "benchmark=table4_dehaze_hazeworld",
            f"benchmark.metrics={PIXEL_METRICS}",
            f"checkpoint={tiny_checkpoint}",
            "presets=[tiny]",
            *base_overrides(tiny_shards, out),
        ]
    )
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(result))
    rows = data["rows"]
    run_label = tiny_checkpoint.parent.name
    assert list(rows) == ["identity", "vae", run_label, "tiny (random weights)"]
    for name, row in rows.items():
        assert {"psnr", "ssim", "cdc", "colorfulness"} <= set(row)
        assert row["num_videos"] == data["num_videos"] >= 1 and row["num_frames"] == data["num_frames"] >= 8
        assert (name in ("identity", "vae")) == ("time_per_video_s" not in row)
    # the same weights saved and reloaded give the same outputs as the preset
    assert rows[run_label]["psnr"] == pytest.approx(rows["tiny (random weights)"]["psnr"], abs=1e-6)
    assert rows[run_label]["time_per_frame_s"] > 0 and "CPU" in data["device"]
    # the identity row scores the source itself: its PSNR is finite and the shards' haze makes it imperfect
    assert 5 < rows["identity"]["psnr"] < 60
    table = (out / "table.md").read_text()
    assert "Identity (source as output)" in table and "VAE reconstruction (upper bound)" in table
    assert "| Method | PSNR ↑ | SSIM ↑ | CDC ↓ | Colorfulness ↑ | s/video | s/frame |" in table
    with open(out / "table.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["method"] for r in csv_rows] == list(rows)
    assert float(csv_rows[0]["psnr"]) == pytest.approx(rows["identity"]["psnr"])
    tex = (out / "table.tex").read_text()
    assert r"\begin{tabular}{lrrrrrr}" in tex and r"$\uparrow$" in tex
    videos = sorted((out / "videos" / run_label).glob("*.mp4"))
    assert len(videos) == data["num_videos"]


def test_eval_missing_weights_error_or_skip(tiny_shards, tiny_checkpoint, tmp_path, monkeypatch):
    for variable in ("VIDIFF_FID_WEIGHTS", "VIDIFF_LPIPS_WEIGHTS"):
        monkeypatch.delenv(variable, raising=False)
    overrides = ["benchmark=table3_recolor_davis", f"checkpoint={tiny_checkpoint}"]
    with pytest.raises(VIDiffError, match="weights-inception"):
        evaluate([*overrides, *base_overrides(tiny_shards, tmp_path / "a", "recolor")])
    assert not (tmp_path / "a" / "metrics.json").exists()
    result = evaluate(
        [*overrides, "missing_weights=skip", "max_videos=2", *base_overrides(tiny_shards, tmp_path / "b", "recolor")]
    )
    assert result["metrics"] == ["colorfulness", "cdc", "psnr", "ssim"]
    assert any(note.startswith("fid not computed") for note in result["notes"])
    assert any(note.startswith("lpips not computed") for note in result["notes"])


def test_guidance_grid_and_compare_figures(tiny_shards, tiny_checkpoint, tmp_path):
    grid_out = tmp_path / "grid"
    result = evaluate(
        [
            "benchmark=table4_deblur_bsd",
            f"checkpoint={tiny_checkpoint}",
            "mode=guidance_grid",
            "grid.text_scales=[1,5]",
            "grid.video_scales=[1,2]",
            "grid.metric=psnr",
            "grid.max_videos=1",
            *base_overrides(tiny_shards, grid_out, "deblur"),
        ]
    )
    assert len(result["values"]) == 2 and all(len(r) == 2 for r in result["values"])
    assert all(v is not None and v > 0 for r in result["values"] for v in r)
    for name in ("figure5_heatmap.png", "figure5_frames.png"):
        assert (grid_out / name).stat().st_size > 1000

    runs = {}
    for label in ("multi-task", "single-task"):
        out = tmp_path / label
        evaluate(
            [
                "benchmark=table4_deblur_bsd",
                f"benchmark.metrics={PIXEL_METRICS}",
                f"checkpoint={tiny_checkpoint}",
                "baselines=[identity]",
                "max_videos=1",
                *base_overrides(tiny_shards, out, "deblur")[:-2],
            ]
        )
        runs[label] = str(out)
    fig_out = tmp_path / "fig7"
    values = evaluate(
        ["mode=compare", f"+compare.runs={{multi-task: {runs['multi-task']}, single-task: {runs['single-task']}}}",
         "compare.metrics=[psnr,ssim]", f"paths.output_dir={fig_out}"]
    )  # fmt: skip
    assert set(values) == {"psnr", "ssim"} and set(values["psnr"]) == {"multi-task", "single-task"}
    assert (fig_out / "figure7.png").stat().st_size > 1000


def test_eval_cli_user_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vidiff.cli.eval", f"benchmark.shards={tmp_path}/none", f"hydra.run.dir={tmp_path}/o",
         "benchmark.metrics=[psnr]", "presets=[tiny]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("vidiff-eval: error:") and "no such shard" in lines[-1]
    assert "Traceback" not in proc.stderr


def test_rvos_overlay_outputs_are_scored_as_masks(carphone_frames):
    """rvos: the model's overlay output is decoded into masks and scored with J&F against the ground truth."""
    import numpy as np

    from vidiff.evaluation.benchmark import BenchmarkVideo, RowScorer
    from vidiff.evaluation.metrics import MetricWeights
    from vidiff.overlay import render_overlay

    frames = carphone_frames[:4]
    mask = np.zeros(frames.shape[:3], bool)
    mask[:, 20:60, 30:90] = True
    video = BenchmarkVideo("k", frames, render_overlay(frames, mask, "red"), "Mark the car in red.", mask=mask,
                           color="red")  # fmt: skip
    perfect, identity = (RowScorer(["jf"], MetricWeights(), "cpu", {}) for _ in range(2))
    perfect.update(video, video.target, "rvos")  # the exact overlay decodes back to the mask
    identity.update(video, video.source, "rvos")  # no overlay at all: an empty mask
    assert perfect.result(1, 4, None).metrics["jf"] > 0.95
    result = identity.result(1, 4, None).metrics
    assert result["j"] == 0.0 and result["f"] == 0.0


def test_eval_logs_a_wandb_table_offline(tiny_shards, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    evaluate(
        ["benchmark=table4_deblur_bsd", "benchmark.metrics=[psnr]", f"checkpoint={tiny_checkpoint}",
         "baselines=[identity]", "wandb.enabled=true", *base_overrides(tiny_shards, out, "deblur")]
    )  # fmt: skip
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = list(runs[0].rglob("*.wandb"))
    assert logged and logged[0].stat().st_size > 0


def test_eval_uses_what_the_model_records_unless_told(tiny_shards, tiny_model, tmp_path, monkeypatch):
    from vidiff.evaluation import benchmark
    from vidiff.pipelines import record_sampling

    tuned = save_model(tiny_model, tmp_path / "tuned" / "model")
    record_sampling(tuned, {"tasks": {"dehaze": {"text_guidance_scale": 1.0, "video_guidance_scale": 2.0}}})
    used = []
    translate = benchmark.translate

    def spy(pipe, video, sampling):
        used.append((sampling.num_inference_steps, sampling.text_guidance_scale, sampling.video_guidance_scale))
        return translate(pipe, video, sampling)

    monkeypatch.setattr(benchmark, "translate", spy)
    common = ["benchmark=table4_dehaze_hazeworld", "benchmark.metrics=[psnr]", "baselines=[]", "max_videos=1"]
    evaluate([*common, f"checkpoint={tuned}", "presets=[tiny]", *base_overrides(tiny_shards, tmp_path / "a")])
    # the recorded scales for the tuned model; the fallback for the preset, which records none
    assert used == [(1, 1.0, 2.0), (1, 7.5, 1.5)]
    notes = (tmp_path / "a" / "table.md").read_text()
    assert "tuned: 1 ddim steps, s_T=1.0, s_V=2.0; tiny (random weights): 1 ddim steps, s_T=7.5, s_V=1.5" in notes
    assert "(tuned: what the model records where the run gave no value)" in notes
    # a value given on the command line wins
    used.clear()
    evaluate([*common, f"checkpoint={tuned}", "sampling.text_guidance_scale=3.0",
              *base_overrides(tiny_shards, tmp_path / "b")])  # fmt: skip
    assert used == [(1, 3.0, 2.0)]
