"""Video input/output (PyAV): streaming RGB readers and an atomic H.264 writer."""

from vidiff.io.video import (
    VideoInfo,
    VideoReader,
    VideoWriter,
    count_frames,
    probe_video,
    read_video,
    write_side_by_side,
    write_video,
)


__all__ = [
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "count_frames",
    "probe_video",
    "read_video",
    "write_side_by_side",
    "write_video",
]
