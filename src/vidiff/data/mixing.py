"""One task per training step, the same on every rank, from a sample stream that a resumed run replays exactly.

Every (rank, worker) reads each task from its own infinite :class:`TaskStream`: shards drawn with replacement and a
shuffle buffer, both seeded from ``(seed, task, rank, worker, epoch)``, batched inside the worker. The task of global micro-step ``s`` is a pure function of ``(seed, s)``: every rank trains the
same task at the same step (equal work per step, and per-task ``sync_dist`` logging never deadlocks), and a
resumed run continues the exact schedule. PyTorch hands out an iterable dataset's batches round-robin over
workers, so worker ``w`` of ``W`` serves steps ``w, w + W, ...``. ``webdataset.RandomMix`` does not do this: it
mixes tasks within a batch and draws from the process-global RNG.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import webdataset as wds

from vidiff.errors import VIDiffError


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


class TaskStream:
    """The raw batches of one task for one (rank, worker), as a pure function of the seed.

    An *epoch* here is ``epoch_batches`` batches: each epoch draws its shards (with replacement, like open_clip's
    ``ResampledShards2(deterministic=True)``) and shuffles samples in a buffer from an RNG seeded with
    ``(seed, task, rank, worker, epoch)``. ``iterate(start)`` resumes at batch ``start``: it opens epoch
    ``start // epoch_batches`` and skips the batches before ``start`` in it (read, never decoded), so the cost of
    resuming is bounded by one epoch whatever the run's length.
    """

    def __init__(
        self,
        task: str,
        urls: Sequence[str],
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        epoch_batches: int = 1000,
        handler: Callable[[Exception], bool] | None = None,
    ):
        self.task, self.urls = task, list(urls)
        self.batch_size, self.shuffle_buffer = int(batch_size), max(1, int(shuffle_buffer))
        self.seed, self.epoch_batches = int(seed), max(1, int(epoch_batches))
        self.handler = handler or wds.reraise_exception

    def _rng(self, rank: int, worker: int, epoch: int, what: str) -> random.Random:
        # str seeds go through SHA-512: the same stream in every process, unlike hash() of a str
        return random.Random(f"vidiff/{what}/{self.seed}/{self.task}/{rank}/{worker}/{epoch}")

    def _epoch(self, rank: int, worker: int, epoch: int) -> Iterator[list[dict]]:
        shard_rng = self._rng(rank, worker, epoch, "shards")
        shards = ({"url": shard_rng.choice(self.urls)} for _ in itertools.count())
        samples = wds.tarfile_to_samples(handler=self.handler)(shards)
        shuffle = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=self._rng(rank, worker, epoch, "shuffle"))
        batches = wds.batched(self.batch_size, collation_fn=list, partial=False)(shuffle(samples))
        return itertools.islice(batches, self.epoch_batches)

    def iterate(self, rank: int = 0, worker: int = 0, start: int = 0) -> Iterator[list[dict]]:
        epoch, skip = divmod(int(start), self.epoch_batches)
        for e in itertools.count(epoch):
            batches = self._epoch(rank, worker, e)
            if skip:
                batches = itertools.islice(batches, skip, None)
                skip = 0
            yield from batches


def batches_before(schedule: TaskSchedule, task: str, start_step: int, worker: int, num_workers: int) -> int:
    """How many batches of ``task`` worker ``worker`` served before global micro-step ``start_step``."""
    return sum(1 for s in range(worker, start_step, num_workers) if schedule.task_of(s) == task)


class TaskScheduledMix(torch.utils.data.IterableDataset):
    """Yield whole single-task batches following a :class:`TaskSchedule`, starting at ``start_step``.

    ``pipelines`` are :class:`TaskStream` objects (or any iterables; those cannot resume mid-stream) yielding
    lists of raw samples; on resume each worker starts every task's stream where that worker left it; ``decoders[task](raw, rng)`` turns one into tensors and
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
            except VIDiffError:  # a configuration the shards cannot serve: no later batch would decode either
                raise
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
                source = self.pipelines[name]
                if isinstance(source, TaskStream):
                    consumed = batches_before(self.schedule, name, self.start_step, worker, num_workers)
                    streams[name] = source.iterate(self.rank, worker, consumed)
                else:
                    streams[name] = iter(source)
            batch = next(streams[name])
            if self.decoders:
                batch = self._decode(name, batch, step, streams[name])
            batch["step"] = step
            yield batch
