"""The benchmark scripts stay runnable (their numbers are recorded in BENCHMARKS.md, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vidiff.pipelines import save_model


ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_code_path_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--model", "tiny", "--device", "cpu", "--dtype",
           "float32", "--steps", "2", "--frames", "4", "--size", "64", "--no-compile", "--repeats", "1", "--warmup",
           "0", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for section in ("edit", "train_step"):
        assert result[section]["seconds_median"] > 0 and result[section]["tflops"] > 0
    # the FLOP floor needs a known GPU peak: on a CPU it is absent, never made up
    assert result["peak_bf16_tflops"] is None and result["edit"]["mfu"] is None


@pytest.mark.slow
def test_cpu_suite_runs(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_suite.py"), "--frames", "4", "--size", "64", "--steps", "2",
           "--repeats", "1", "--lengths", "8", "16", "--train-steps", "2", "--skip-data", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "cpu_suite.json").read_text())
    assert results["overhead"]["ratio"] >= 1.0 and results["guidance"]["speedup"] > 0
    assert "edit wall time" in (tmp_path / "cpu_suite.md").read_text()


@pytest.mark.slow
def test_latent_training_benchmark_runs(tiny_shards, tmp_path):
    from vidiff.config import load_model_preset

    model = save_model(load_model_preset("tiny"), tmp_path / "model")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latent_training.py"), "--shards", str(tiny_shards),
           "--model", str(model), "--experiment", "smoke", "--steps", "2", "--warmup", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result["rows"]) == {"pixel shards", "latent shards"} and result["speed-up"] > 0
