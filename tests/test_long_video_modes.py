"""Long-video schemes for models that never learned reference frames, and the seam metric that compares them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics import build_metric
from vidiff.evaluation.metrics.temporal import clip_starts, seam_ratio
from vidiff.pipelines.long_video import edit_video, num_clips, resolve_carry


class RecordingPipe:
    """Delegates to a real pipeline and records each clip's condition, prompt, keyword arguments and result."""

    def __init__(self, pipe):
        self.pipe, self.model, self.calls = pipe, pipe.model, []
        self.size_multiple = pipe.size_multiple

    def __call__(self, video, instruction, **kwargs):
        result = self.pipe(video, instruction, **kwargs)
        self.calls.append((video.copy(), instruction, kwargs, result))
        return result


def test_latent_mode_continues_the_source_and_anchors_on_the_previous_latents(pipe, carphone_frames):
    frames = np.concatenate([carphone_frames] * 3)[:20, :32, :40]
    recorder = RecordingPipe(pipe)
    summary = edit_video(
        recorder, frames, "Recolor the gray video.", clip_length=8, overlap=2, progress=False,
        num_inference_steps=2, carry="latent", anchor_fraction=0.5,
    )  # fmt: skip
    assert summary.frames.shape == (20, 32, 40, 3)
    assert len(recorder.calls) == summary.num_clips == num_clips(20, 8, 2) == 3
    assert "anchor_latents" not in recorder.calls[0][2]
    for k in range(len(recorder.calls) - 1):
        previous_condition, _, _, previous = recorder.calls[k]
        condition, prompt, kwargs, _ = recorder.calls[k + 1]
        # the overlap frames are the previous clip's *source* frames, the prompt is not prefixed, and the anchor is
        # the previous clip's final latents of those frames
        assert np.array_equal(condition[:2], previous_condition[-2:])
        assert prompt == "Recolor the gray video."
        assert torch.equal(kwargs["anchor_latents"], previous.latents[:, :, -2:])
        assert kwargs["anchor_fraction"] == 0.5
    # the output is stitched from each clip's new frames
    assert np.array_equal(summary.frames[8:14], recorder.calls[1][3].frames[2:])


def test_none_mode_edits_independent_clips(pipe, carphone_frames):
    frames = np.concatenate([carphone_frames] * 3)[:20, :32, :40]
    recorder = RecordingPipe(pipe)
    summary = edit_video(
        recorder, frames, "Recolor.", clip_length=8, progress=False, num_inference_steps=1, carry="none"
    )
    assert [len(call[0]) for call in recorder.calls] == [8, 8, 4]
    assert all(call[1] == "Recolor." and "anchor_latents" not in call[2] for call in recorder.calls)
    assert summary.num_clips == 3 and len(summary.frames) == 20


def test_auto_reads_what_the_model_learned(tiny_model):
    saved = tiny_model.reference_frames
    try:
        tiny_model.reference_frames = ()  # never trained with reference frames (released InstructPix2Pix)
        assert resolve_carry("auto", tiny_model) == "latent"
        tiny_model.reference_frames = (1, 2)  # a V2V stage with long-video samples
        assert resolve_carry("auto", tiny_model) == "reference"
        tiny_model.reference_frames = None  # unknown (saved before this was recorded): VIDiff's scheme, as before
        assert resolve_carry("auto", tiny_model) == "reference"
        assert resolve_carry("none", tiny_model) == "none"
        with pytest.raises(VIDiffError, match="choose from auto, reference, latent, none"):
            resolve_carry("sideways", tiny_model)
    finally:
        tiny_model.reference_frames = saved


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_anchor_holds_the_overlap_frames(tiny_model, carphone_frames, sampler):
    """Anchored for every step, the overlap frames end at the anchor; unanchored, far from it."""
    from vidiff.pipelines import VIDiffPipeline

    pipe = VIDiffPipeline.from_model(tiny_model, scheduler=sampler)
    pipe.set_progress_bar_config(disable=True)
    clip = carphone_frames[:4, :32, :32]
    anchor = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))

    def distance(fraction):
        out = pipe(
            clip, "Recolor.", num_inference_steps=4, output_type="latent", anchor_latents=anchor,
            anchor_fraction=fraction, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        return (out.latents[:, :, :2] - anchor).abs().mean().item()

    held, free = distance(1.0), distance(0.0)
    assert held < 0.25 * free, (held, free)
    with pytest.raises(VIDiffError, match="anchor_latents must be"):
        pipe(clip, "Recolor.", num_inference_steps=1, anchor_latents=torch.zeros(1, 4, 2, 8, 8))


def test_seam_known_vectors():
    # 20 frames in clips of 8 with 2 carried over: new clips start at output frames 8 and 14
    assert clip_starts(20, 8, 2) == [8, 14]
    assert clip_starts(20, 8, 0) == [8, 16]
    assert clip_starts(8, 8, 2) == []
    # every frame brightens by 2 levels; at each boundary by 6: seams 3x as visible as any other change
    steps = np.full(19, 2.0)
    steps[[7, 13]] = 6.0
    levels = np.concatenate([[10.0], 10 + np.cumsum(steps)])
    video = np.broadcast_to(levels[:, None, None, None], (20, 4, 4, 3)).astype(np.uint8)
    assert seam_ratio(video, 8, 2) == pytest.approx(3.0)
    # the same video cut at other places: the jumps are inside clips and the boundaries are ordinary
    assert seam_ratio(video, 5, 0) == pytest.approx(2.0 / ((14 * 2 + 2 * 6) / 16))
    # through the metric interface, with a single-clip video counted as a skip rather than dropped silently
    metric = build_metric("seam", clip_length=8, overlap=2)
    metric.update(video)
    metric.update(video[:8])
    assert metric.compute()["seam"] == pytest.approx(3.0)
    assert metric.skips.count == 1


def test_seam_in_vidiff_score(tmp_path, capsys):
    import json

    from tests.conftest import encode_video
    from vidiff.cli import score

    steps = np.full(23, 3.0)
    steps[[7, 13, 19]] = 12.0
    levels = np.concatenate([[20.0], 20 + np.cumsum(steps)])
    video = np.broadcast_to(levels[:, None, None, None], (24, 16, 16, 3)).astype(np.uint8)
    path = tmp_path / "edited.mp4"
    encode_video(path, video, "libx264", "yuv444p")
    assert score.main([str(path), "--metrics", "seam", "--clip-length", "8", "--overlap", "2", "--json"]) == 0
    value = json.loads(capsys.readouterr().out)["seam"]
    assert value == pytest.approx(4.0, rel=0.1)  # lossy mp4: close to the exact 4.0
