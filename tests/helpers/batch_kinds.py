"""A callback for in-process training tests: what each training batch held (task, latents or pixels) and its loss."""

from __future__ import annotations

import lightning as L


class BatchKinds(L.Callback):
    def __init__(self):
        self.records: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.records.append({"task": batch["task"], "latents": "target_latents" in batch, "loss": float(loss)})
