"""Run by tests/test_data.py in a subprocess: 2-process CPU DDP over the multi-task datamodule.

Each rank records, per training step, the task, the sample keys, and the step the batch was made for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from vidiff.data import MultiTaskDataModule


class Probe(L.LightningModule):
    def __init__(self, out: Path):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out, self.records = out, []

    def training_step(self, batch, batch_idx):
        self.records.append(
            {"global_step": self.global_step, "step": batch["step"], "task": batch["task"], "keys": batch["key"]}
        )
        loss = (self.weight - batch["target"].float().mean() / 255) ** 2
        self.log(f"train/{batch['task']}/loss", loss, sync_dist=True)  # deadlocks unless tasks agree
        return loss

    def on_train_end(self):
        path = self.out / f"rank{self.global_rank}.json"
        path.write_text(json.dumps(self.records))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    shards, out = Path(sys.argv[1]), Path(sys.argv[2])
    tasks = {t: {"urls": str(shards / t), "batch_size": 1} for t in ("recolor", "inpaint", "dehaze", "deblur", "edit")}
    dm = MultiTaskDataModule(tasks=tasks, seed=7, num_workers=2, num_frames=4, resolution=32, shuffle_buffer=4)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=12,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(out), datamodule=dm)


if __name__ == "__main__":
    main()
