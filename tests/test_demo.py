"""make demo's loop (prep -> train vae/t2v/v2v -> long edit -> eval -> report) at the smallest settings.

The learning proof itself (trained beats untrained) is what `make demo` reports at full settings; here every step
runs for real but for a handful of steps, and the outputs are checked for shape and schema.
"""

from __future__ import annotations

import json
import subprocess
import sys

from vidiff.io import probe_video
from vidiff.pipelines import load_model


def test_demo_loop_end_to_end(tmp_path):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--vae-steps", "4", "--t2v-steps", "2", "--v2v-steps", "4", "--steps", "1,2",
            "--long-frames", "20", "--eval-videos", "1", "--stills", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "vidiff.demo", *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in proc.stderr
    data = json.loads((out / "results.json").read_text())
    results = data["tasks"]
    assert set(results) == {"recolor", "inpaint", "dehaze", "deblur", "edit", "rvos"}
    # sampler steps and guidance chosen on the tune split (training videos' last segments): the best cell over
    # every step count's grid (fewer steps on a tie), and used for the held-out rows
    chosen = json.loads((out / "tune" / "chosen.json").read_text())
    assert set(chosen) == set(results)
    for task, pick in chosen.items():
        cells = []
        for steps in (1, 2):
            grid = json.loads((out / "tune" / task / f"steps-{steps}" / "guidance_grid.json").read_text())
            cells += [
                (v, -steps, s_t, s_v)
                for row, s_t in zip(grid["values"], grid["text_scales"])
                for v, s_v in zip(row, grid["video_scales"])
            ]
        best = max(cells, key=lambda cell: cell[:2])
        assert (pick["num_inference_steps"], pick["text_guidance_scale"], pick["video_guidance_scale"]) == (
            -best[1],
            best[2],
            best[3],
        ), task
        table = (out / "eval" / task / "table.md").read_text()
        assert "split `val`" in table and f"s_T={pick['text_guidance_scale']}" in table
        assert f"sampling: {pick['num_inference_steps']} ddim steps" in table
    # the goal rows are computed from the numbers in the same file
    goals = {(g["task"], g["goal"]): g for g in data["goals"]}
    for task in ("dehaze", "inpaint"):
        goal = goals[(task, "trained PSNR > identity")]
        trained, identity = results[task]["trained"]["psnr"], results[task]["identity"]["psnr"]
        assert (goal["value"], goal["threshold"], goal["met"]) == (trained, identity, trained > identity)
    bound = results["deblur"]["VAE upper bound"]["psnr"]
    assert goals[("deblur", "trained PSNR within 1.5 dB of the VAE bound")]["met"] == (
        results["deblur"]["trained"]["psnr"] >= bound - 1.5
    )
    jf_goal = goals[("rvos", "J&F >= 0.5 on the held-out clip")]
    assert jf_goal["value"] == results["rvos"]["trained"]["jf"] and jf_goal["met"] == (jf_goal["value"] >= 0.5)
    assert not any(g["task"] == "rvos" and g["metric"] in ("psnr", "ssim") for g in data["goals"])
    page = (out / "index.html").read_text()
    assert all(f"long/{task}/side_by_side.mp4" in page for task in results) and "loss_curve.png" in page
    for task, rows in results.items():
        assert {"identity", "VAE upper bound", "target", "untrained", "trained", "trained, long clip"} <= set(rows)
        for metric in ("jf",) if task == "rvos" else ("psnr", "ssim", "cdc", "colorfulness", "niqe"):
            assert isinstance(rows["trained"][metric], float), (task, metric)
        side = probe_video(out / "long" / task / "side_by_side.mp4")
        edited = probe_video(out / "long" / task / "edited.mp4")
        assert side.num_frames == edited.num_frames == 20 and side.width == 3 * edited.width
    # the long clip is degraded with the draw of the first held-out segment (the one scored with --eval-videos 1)
    for task in ("inpaint", "dehaze", "edit"):
        segment, long = results[task]["identity"]["psnr"], results[task]["identity, long clip"]["psnr"]
        assert abs(segment - long) < 1.0, (task, segment, long)
    # the long rvos clip is scored as segmentation; its identity (the source unchanged) marks nothing
    assert results["rvos"]["identity, long clip"]["jf"] < 0.1
    report = (out / "results.md").read_text()
    assert "## Does it learn?" in report and "beats the identity baseline on" in report and "## Goals:" in report
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "vae_loss_curve.png").stat().st_size > 1000
    # the stages chain: t2v starts from the trained autoencoder, v2v from t2v
    assert "stage.init_from=" + str(out / "runs" / "vae" / "model") in proc.stderr
    assert "stage.init_from=" + str(out / "runs" / "t2v" / "model") in proc.stderr
    assert (out / "runs" / "v2v" / "model").is_dir()
    # a photograph panned into a training clip (48 frames: 2 training segments, 1 tune segment)
    assert probe_video(out / "clips" / "still-astronaut.mp4").num_frames == 48
    assert not (out / "clips" / "still-chelsea.mp4").exists()
    sizes = json.loads((out / "shards" / "dehaze" / "sizes.json").read_text())
    assert sum(n for name, n in sizes.items() if "-tune-" in name) == 3  # the last segment of each training clip
    # T2V and V2V train from latents the trained autoencoder wrote, and keep that autoencoder (scale included)
    assert f"paths.data_dir={out / 'latents'}" in proc.stderr
    from vidiff.models.autoencoder import autoencoder_fingerprint

    trained_vae = load_model(out / "runs" / "vae" / "model").vae
    final_vae = load_model(out / "runs" / "v2v" / "model").vae
    manifest = json.loads((out / "latents" / "dehaze" / "latents.json").read_text())
    assert manifest["autoencoder"] == autoencoder_fingerprint(trained_vae) == autoencoder_fingerprint(final_vae)
    assert final_vae.config.scaling_factor == trained_vae.config.scaling_factor != 0.18215
