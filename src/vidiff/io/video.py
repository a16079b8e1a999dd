"""Streaming video I/O on PyAV.

Reading yields RGB uint8 chunks ``[f, h, w, 3]`` so memory never depends on the length of the video; any
container, codec and pixel format that ffmpeg decodes is accepted (gray, 10-bit and alpha inputs are
converted to 8-bit RGB), and display-rotation metadata is applied. Writing encodes H.264 mp4 (yuv420p; yuv444p
at odd sizes, which are kept exactly) incrementally into a temporary file that is renamed into place only when the video is complete, so a crash
never leaves a half-written output behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidiff.errors import VideoReadError, VIDiffError, writing
from vidiff.utils.files import publish


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file.

    ``width``/``height`` are the displayed size, i.e. after the rotation metadata is applied.
    ``num_frames`` comes from the container header when it has one, otherwise it is estimated from the
    duration (``num_frames_exact`` tells which).
    """

    path: str
    width: int
    height: int
    fps: Fraction
    num_frames: int
    num_frames_exact: bool
    duration: float | None
    rotation: int
    has_audio: bool
    codec: str
    pix_fmt: str


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    if path.is_dir():
        raise VideoReadError(f"{path}: is a directory, expected a video file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes), not a video")


def _open_input(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoReadError(f"{path}: not a video ffmpeg can read ({_short(err)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoReadError(f"{path}: has no video stream (found: {', '.join(kinds)})")
    return container


def _short(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:160]


def _frame_to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    # to_ndarray(format="rgb24") lets swscale convert gray, 10-bit, alpha and every YUV layout to 8-bit RGB
    array = frame.to_ndarray(format="rgb24")
    k = (rotation // 90) % 4
    if k:
        # the display matrix rotation is counter-clockwise; np.rot90 with k > 0 rotates counter-clockwise too
        array = np.ascontiguousarray(np.rot90(array, k=k))
    return array


def _rotation_of(frame: av.VideoFrame) -> int:
    try:
        rotation = int(round(frame.rotation / 90.0)) * 90
    except (AttributeError, TypeError, ValueError):
        return 0
    return rotation % 360


class VideoReader:
    """Decode a video file as a stream of RGB uint8 frames.

    Use as a context manager::

        with VideoReader("in.mp4") as reader:
            for chunk in reader.iter_chunks(16):  # [<=16, h, w, 3] uint8
                ...
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._container = _open_input(self.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._first: np.ndarray | None = None
        self._rotation = 0
        # set when decoding stops on an error after some frames (a damaged tail); callers report it
        self.decode_error: str | None = None
        self._frames = self._decode()
        try:
            first = next(self._frames)
        except StopIteration:
            self.close()
            raise VideoReadError(f"{self.path}: contains no decodable video frames") from None
        self._first = first
        self.info = self._make_info(first)

    def _decode(self) -> Iterator[np.ndarray]:
        rotation = None
        try:
            for frame in self._container.decode(self._stream):
                if rotation is None:
                    rotation = _rotation_of(frame)
                    self._rotation = rotation
                yield _frame_to_rgb(frame, rotation)
        except av.error.FFmpegError as err:
            # a damaged tail: if we already produced frames this ends the stream; the caller sees fewer frames
            if rotation is None:
                raise VideoReadError(f"{self.path}: cannot decode video ({_short(err)})") from None
            self.decode_error = _short(err)

    def _make_info(self, first: np.ndarray) -> VideoInfo:
        stream = self._stream
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        fps = Fraction(fps)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        exact = bool(stream.frames)
        if exact:
            num_frames = int(stream.frames)
        elif duration is not None:
            num_frames = max(1, int(round(duration * float(fps))))
        else:
            num_frames = 0
        return VideoInfo(
            path=str(self.path),
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            fps=fps,
            num_frames=num_frames,
            num_frames_exact=exact,
            duration=duration,
            rotation=self._rotation,
            has_audio=bool(self._container.streams.audio),
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt or "unknown",
        )

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Yield every frame as ``[h, w, 3]`` uint8 (each frame once; the reader is single-pass)."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._frames

    def iter_chunks(self, chunk_size: int, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Yield ``[n, h, w, 3]`` uint8 chunks of at most ``chunk_size`` frames, up to ``max_frames`` in all."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        buffer: list[np.ndarray] = []
        count = 0
        for frame in self.iter_frames():
            if max_frames is not None and count >= max_frames:
                break
            buffer.append(frame)
            count += 1
            if len(buffer) == chunk_size:
                yield np.stack(buffer)
                buffer = []
        if buffer:
            yield np.stack(buffer)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read the header and decode the first frame; raises :class:`VideoReadError` for anything unreadable."""
    with VideoReader(path) as reader:
        return reader.info


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Decode a whole video (or its first ``max_frames`` frames) into one ``[f, h, w, 3]`` uint8 array."""
    with VideoReader(path) as reader:
        chunks = list(reader.iter_chunks(64, max_frames=max_frames))
        return np.concatenate(chunks), reader.info


def count_frames(path: str | os.PathLike) -> int:
    """Exact frame count by decoding (streams, constant memory)."""
    with VideoReader(path) as reader:
        return sum(1 for _ in reader.iter_frames())


class VideoWriter:
    """Encode RGB uint8 frames into an H.264 mp4, incrementally.

    Frames go into a temporary file beside ``path`` which is renamed to ``path`` by :meth:`close`; on an
    exception inside ``with`` (or :meth:`abort`) the temporary file is removed and ``path`` is untouched.
    Frames keep their exact size: even sizes are encoded as yuv420p, and odd sizes, which 4:2:0 chroma cannot
    represent, as yuv444p (H.264 High 4:4:4: decoded by FFmpeg and played by Chromium, checked; not by players
    limited to H.264's 4:2:0 profiles).

    Args:
        path: output file (``.mp4``).
        fps: frame rate, kept exact as a fraction (e.g. ``30000/1001``).
        crf: x264 constant rate factor (lower is better quality; 17 is visually lossless).
        audio_from: copy the audio streams of this file unchanged into the output.
        overwrite: allow replacing an existing ``path``.
        codec_options: extra libx264 options; ``{"deterministic": "1"}`` makes the bytes depend only on the
            frames (one encoder thread, no macroblock-tree rate control), for reproducible dataset shards.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | Fraction,
        crf: int = 17,
        preset: str = "medium",
        audio_from: str | os.PathLike | None = None,
        overwrite: bool = True,
        codec_options: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.codec_options = dict(codec_options or {})
        if self.path.exists() and not overwrite:
            raise VIDiffError(f"{self.path}: output exists (pass --overwrite to replace it)")
        self.fps = Fraction(fps).limit_denominator(1001 * 1000) if not isinstance(fps, Fraction) else fps
        self.crf, self.preset = crf, preset
        self.audio_from = Path(audio_from) if audio_from is not None else None
        # a full disk, a read-only or forbidden folder: one line naming the output (not its temporary file)
        with writing(self.path):
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".partial.mp4", dir=self.path.parent)
            os.close(fd)
            self._tmp = Path(tmp)
            try:
                self._container = av.open(str(self._tmp), mode="w", format="mp4")
            except BaseException:
                self._tmp.unlink(missing_ok=True)
                raise
        self._stream = None
        self.size: tuple[int, int] | None = None  # (height, width) as given by the first frame
        self.frames_written = 0

    def _open_stream(self, height: int, width: int) -> None:
        self.size = (height, width)
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        options = {"crf": str(self.crf), "preset": self.preset, **self.codec_options}
        if options.pop("deterministic", None):
            # measured: x264's output varied from run to run with several threads, and with macroblock-tree
            # rate control even on one thread; one thread without mbtree gives the same bytes every time
            stream.codec_context.thread_count = 1
            options["x264-params"] = "mbtree=0"
        stream.options = options
        self._stream = stream
        # every stream must exist before the first packet is muxed (that writes the header)
        self._audio_map = {}
        if self.audio_from is not None:
            with av.open(str(self.audio_from)) as source:
                for audio in source.streams.audio:
                    self._audio_map[audio.index] = self._container.add_stream_from_template(audio)

    def write(self, frames: np.ndarray) -> None:
        """Append ``[h, w, 3]`` or ``[n, h, w, 3]`` uint8 RGB frames."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [n, h, w, 3], got {frames.dtype} {tuple(frames.shape)}")
        if self._stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        if frames.shape[1:3] != self.size:
            raise ValueError(f"frame size {frames.shape[1:3]} differs from the first frame's {self.size}")
        with writing(self.path):
            for array in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_written += 1

    def _copy_audio(self) -> None:
        if not self._audio_map:
            return
        with av.open(str(self.audio_from)) as source:
            in_streams = [s for s in source.streams.audio if s.index in self._audio_map]
            for packet in source.demux(in_streams):
                if packet.dts is None:  # demux ends each stream with an empty flush packet
                    continue
                packet.stream = self._audio_map[packet.stream.index]
                self._container.mux(packet)

    def close(self) -> Path:
        """Flush the encoder, copy audio, and move the finished file into place."""
        if self._container is None:
            return self.path
        try:
            if self._stream is None:
                raise VIDiffError(f"{self.path}: no frames to write")
            with writing(self.path):
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._copy_audio()
                self._container.close()
                self._container = None
                publish(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float | Fraction, **kwargs) -> Path:
    """Write ``[f, h, w, 3]`` uint8 frames as an H.264 mp4 in one call."""
    with VideoWriter(path, fps, **kwargs) as writer:
        writer.write(frames)
    return Path(path)


def write_side_by_side(
    inputs: list[str | os.PathLike], path: str | os.PathLike, chunk_size: int = 16, overwrite: bool = True
) -> Path:
    """Stream videos into one mp4 of them side by side (left to right), at the first one's height and fps.

    Memory stays at one chunk of each input whatever their length; the output ends with the shortest input.
    """
    from vidiff.utils.frames import resize_frames

    readers = [VideoReader(p) for p in inputs]
    try:
        height = readers[0].info.height
        sizes = [(height, max(2, round(r.info.width * height / r.info.height))) for r in readers]
        with VideoWriter(path, readers[0].info.fps, overwrite=overwrite) as writer:
            for chunks in zip(*(r.iter_chunks(chunk_size) for r in readers)):
                n = min(len(c) for c in chunks)
                writer.write(np.concatenate([resize_frames(c[:n], s) for c, s in zip(chunks, sizes)], axis=2))
        return Path(path)
    finally:
        for reader in readers:
            reader.close()
