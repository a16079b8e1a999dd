"""Every N steps, log ``source | output | target`` videos of the current training batch (rank zero only).

The videos are written as mp4 files by our own writer under ``<dirpath>/step<N>_<task>_<i>.mp4`` (default
``<run>/videos``); with the W&B logger each file is also logged to the run as a ``wandb.Video`` of that file (W&B
copies it into the run's media folder, so an offline run syncs it later; no moviepy needed). The module's own
``train()`` keeps its frozen networks in eval mode when training resumes.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from vidiff.io import write_video
from vidiff.utils.frames import tensor_to_frames


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
        folder = self.dirpath or Path(trainer.default_root_dir) / "videos"
        wandb_loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        for name, grid in videos.items():
            paths = [
                write_video(folder / f"step{step:07d}_{name}_{i}.mp4", tensor_to_frames(v), self.fps)
                for i, v in enumerate(grid)
            ]
            for logger in wandb_loggers:
                import wandb

                logger.experiment.log(
                    {f"videos/{name}": [wandb.Video(str(p), format="mp4") for p in paths], "trainer/global_step": step}
                )
