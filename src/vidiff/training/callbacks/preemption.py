"""Checkpoint and stop when the cluster says the job is about to end (preemption, time limit).

SLURM sends a signal before it kills a job: submitit asks for ``USR2`` ``signal_delay_s`` seconds before the time
limit (``conf/hydra/launcher/slurm.yaml``), Lightning's own SLURM environment listens for ``USR1``, and every task
gets ``SIGTERM`` when the job is preempted or ends. On any of :attr:`signals`, the run finishes the optimizer step
it is in, writes ``last.ckpt`` (the checkpoint writer renames a complete file into place) and stops without
exporting a model. The job is requeued by whoever handled the signal before (submitit's handler, chained here), or
else, in a SLURM job, by ``scontrol requeue`` from rank 0; the requeued job runs the same command in the same run
folder, and ``ckpt_path: auto`` resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L


class PreemptionCheckpoint(L.Callback):
    """Args:
    signals: signal names (``SIGUSR1``, ``SIGUSR2``, ``SIGTERM``) that mean "the job is about to be killed".
    requeue: in a SLURM job whose signal no earlier handler took, requeue it with ``scontrol requeue``.
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = ("SIGUSR1", "SIGUSR2", "SIGTERM"), requeue: bool = True):
        self.signals = [signal.Signals[name] for name in signals]
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self._requeued = False
        self._previous: dict[signal.Signals, Any] = {}

    # the handler only records the signal: the checkpoint is written between steps, where the state is consistent
    def _handle(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum)
        previous = self._previous.get(self.received)
        # a foreign handler (submitit's, which requeues the job) still runs; Lightning's own SIGTERM/USR1 handlers
        # (which stop without a checkpoint, or save one mid-step) are replaced by this one
        owner = getattr(previous, "__module__", None) or type(previous).__module__
        if callable(previous) and not owner.startswith("lightning"):
            previous(signum, frame)
            self._requeued = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its handlers (Trainer._run), so these take their place during fitting
        if threading.current_thread() is not threading.main_thread():
            return
        self._requeued = False
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        # every rank decides together (a signal may reach the ranks at different steps), at a step boundary
        at_boundary = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop or not at_boundary:
            return
        name = self.received.name if self.received is not None else "a signal on another rank"
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        if trainer.is_global_zero:
            print(f"vidiff-train: {name} at step {trainer.global_step}: checkpoint {path} written, stopping")
            self.requeue_job()
        self.received = None

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                return Path(callback.dirpath) / "last.ckpt"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def requeue_job(self) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if self._requeued or not self.requeue or job is None:
            return
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        status = "requeued" if result.returncode == 0 else f"requeue failed: {result.stderr.strip()[:200]}"
        print(f"vidiff-train: SLURM job {job} {status}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
