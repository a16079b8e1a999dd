"""One task per training step, the same on every rank.

Every (rank, worker) reads each task from its own infinite, resampled WebDataset pipeline, batched inside
the worker. The task of global micro-step ``s`` is a pure function of ``(seed, s)``: every rank trains the
same task at the same step (equal work per step, and per-task ``sync_dist`` logging never deadlocks), and a
resumed run continues the exact schedule. PyTorch hands out an iterable dataset's batches round-robin over
workers, so worker ``w`` of ``W`` serves steps ``w, w + W, ...``. ``webdataset.RandomMix`` does not do this: it
mixes tasks within a batch and draws from the process-global RNG.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch


class TaskSchedule:
    """The task of each global micro-step: ``tasks`` drawn with probabilities ``weights`` from ``(seed, step)``."""

    def __init__(self, weights: Mapping[str, float], seed: int, accumulate_grad_batches: int = 1):
        self.names = list(weights)
        p = np.asarray([float(weights[n]) for n in self.names], dtype=float)
        if not len(p) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"task weights must be non-negative with a positive sum, got {dict(weights)}")
        self.probs = p / p.sum()
        self.seed = int(seed)
        self.accumulate = max(1, int(accumulate_grad_batches))

    def task_of(self, micro_step: int) -> str:
        # every micro-batch of one optimizer step has the same task
        step = micro_step // self.accumulate
        rng = np.random.default_rng([self.seed, step])
        return self.names[int(rng.choice(len(self.names), p=self.probs))]


log = logging.getLogger(__name__)


class TaskScheduledMix(torch.utils.data.IterableDataset):
    """Yield whole single-task batches following a :class:`TaskSchedule`, starting at ``start_step``.

    ``pipelines`` yield lists of raw samples; ``decoders[task](raw, rng)`` turns one into tensors and
    ``collate`` stacks them. Each sample's augmentation RNG is seeded from ``(seed, rank, step, index)``, so
    the random windows, crops and dropouts of a step are the same in a resumed run as in an uninterrupted one.
    """

    def __init__(
        self,
        pipelines: Mapping[str, Iterable],
        schedule: TaskSchedule,
        start_step: int = 0,
        decoders: Mapping[str, Callable] | None = None,
        collate: Callable | None = None,
        rank: int = 0,
    ):
        super().__init__()
        self.pipelines = dict(pipelines)
        self.schedule = schedule
        self.start_step = start_step
        self.decoders = dict(decoders or {})
        self.collate = collate
        self.rank = rank
        self.decode_errors = 0

    def _decode(self, name: str, raws: list, step: int, stream) -> dict:
        while True:
            try:
                samples = []
                for index, raw in enumerate(raws):
                    rng = random.Random(hash((self.schedule.seed, self.rank, step, index)) & 0xFFFFFFFFFFFF)
                    samples.append(self.decoders[name](raw, rng))
                return self.collate(samples)
            except Exception as err:  # a corrupt sample: say so, count it, take the next batch
                self.decode_errors += 1
                key = raws[index].get("__key__", "?") if isinstance(raws[index], dict) else "?"
                log.warning(
                    "skipping a batch of %s: sample %s failed to decode (%s); %d so far",
                    name,
                    key,
                    err,
                    self.decode_errors,
                )
                raws = next(stream)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        streams = {}
        for step in itertools.count(self.start_step + worker, num_workers):
            name = self.schedule.task_of(step)
            if name not in streams:
                streams[name] = iter(self.pipelines[name])
            batch = next(streams[name])
            if self.decoders:
                batch = self._decode(name, batch, step, streams[name])
            batch["step"] = step
            yield batch
