from fractions import Fraction

import av
import numpy as np
import pytest

from vidiff.errors import VideoReadError
from vidiff.io import VideoReader, VideoWriter, count_frames, probe_video, read_video, write_video

from .conftest import gradient_video, write_audio_only


def test_probe_real_clip(bikes_path):
    info = probe_video(bikes_path)
    assert (info.width, info.height) == (640, 272)
    assert info.fps == Fraction(25)
    assert info.num_frames == 250 and info.num_frames_exact
    assert info.has_audio is False and info.rotation == 0


def test_chunks_stream_whole_video(carphone_path):
    with VideoReader(carphone_path) as reader:
        sizes = [chunk.shape for chunk in reader.iter_chunks(32)]
    assert [s[0] for s in sizes] == [32, 32, 32, 24]
    assert all(s[1:] == (144, 176, 3) for s in sizes)
    assert count_frames(carphone_path) == 120


def test_write_read_round_trip(tmp_path):
    frames = gradient_video(10, 64, 96)
    path = write_video(tmp_path / "v.mp4", frames, Fraction(30000, 1001))
    decoded, info = read_video(path)
    assert decoded.shape == frames.shape
    assert info.fps == Fraction(30000, 1001)
    # lossy H.264 at crf 17 on a smooth gradient: close, not equal
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3.0
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"


def test_odd_size_is_written_exactly(tmp_path):
    frames = gradient_video(3, 145, 177)
    path = write_video(tmp_path / "odd.mp4", frames, 25)
    decoded, _ = read_video(path)
    assert decoded.shape == (3, 145, 177, 3)
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 2.0
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_writer_abort_leaves_nothing(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 25) as writer:
            writer.write(gradient_video(4, 32, 32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rotation_metadata_is_applied(tmp_path):
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        img = np.zeros((32, 64, 3), np.uint8)
        img[:8, :8] = 255  # top-left marker
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    frames, info = read_video(path)
    assert info.rotation == 90 and (info.width, info.height) == (32, 64)
    # rotated 90° counter-clockwise for display: the top-left marker ends bottom-left
    assert frames[0, -4:, :4, 0].mean() > 200 and frames[0, :4, :4, 0].mean() < 50


def test_audio_is_copied(tmp_path):
    src = tmp_path / "with_audio.mp4"
    with av.open(str(src), "w") as c:
        video = c.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = c.add_stream("aac", rate=16000)
        for frame in gradient_video(25, 32, 32):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in video.encode(None):
            c.mux(packet)
        tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in audio.encode(frame):
            c.mux(packet)
        for packet in audio.encode(None):
            c.mux(packet)
    assert probe_video(src).has_audio
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, audio_from=src) as writer:
        writer.write(gradient_video(25, 32, 32))
    info = probe_video(out)
    assert info.has_audio and info.num_frames == 25
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty file"), (b"this is text, not a video\n" * 20, "not a video")],
)
def test_bad_inputs_raise_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoReadError, match=message) as err:
        probe_video(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_audio_only_file_is_rejected(tmp_path):
    path = tmp_path / "audio.m4a"
    write_audio_only(path)
    with pytest.raises(VideoReadError, match="no video stream"):
        probe_video(path)


def test_written_file_has_normal_permissions(tmp_path):
    import os
    import stat

    path = write_video(tmp_path / "perm.mp4", gradient_video(2, 16, 16), 25)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
