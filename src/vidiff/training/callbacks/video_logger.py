"""Every N steps, log ``source | output | target`` videos of the current training batch (rank zero only).

With the W&B logger the videos go to the run (``log_video``); with any other logger (CSV) they are written as
mp4 files under ``<dirpath>/step<N>_<task>.mp4``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_only

from vidiff.io import write_video
from vidiff.pipelines.vidiff_pipeline import tensor_to_frames


class VideoLogger(L.Callback):
    def __init__(self, every_n_steps: int = 500, num_videos: int = 2, fps: float = 8.0, dirpath: str | None = None):
        self.every_n_steps, self.num_videos, self.fps = every_n_steps, num_videos, fps
        self.dirpath = Path(dirpath) if dirpath else None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step % self.every_n_steps != 0 or not hasattr(pl_module, "log_videos"):
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            videos = pl_module.log_videos(batch, self.num_videos)
        finally:
            pl_module.train(was_training)
        for name, grid in videos.items():
            clips = [tensor_to_frames(v) for v in grid]
            logger = trainer.logger
            if logger is not None and type(logger).__name__ == "WandbLogger":
                arrays = [rearrange(c, "f h w c -> f c h w") for c in clips]
                logger.log_video(
                    f"videos/{name}",
                    videos=arrays,
                    step=step,
                    fps=[self.fps] * len(arrays),
                    format=["mp4"] * len(arrays),
                )
            else:
                folder = self.dirpath or Path(trainer.default_root_dir) / "videos"
                for i, clip in enumerate(clips):
                    write_video(folder / f"step{step:07d}_{name}_{i}.mp4", clip, self.fps)
