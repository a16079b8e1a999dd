"""One task per training step, the same on every rank, from a sample stream that a resumed run replays exactly.

Every (rank, worker) reads each task from its own infinite :class:`TaskStream`: shards drawn with replacement and a
shuffle buffer, both seeded from ``(seed, task, rank, worker)``, batched inside the worker; a resumed stream finds
its place from the shard sizes and reads only its buffer back. The task of global micro-step ``s`` is a pure
function of ``(seed, s)``: every rank trains the same task at the same step (equal work per step, and per-task
``sync_dist`` logging never deadlocks), and a resumed run continues the exact schedule. PyTorch hands out an
iterable dataset's batches round-robin over workers, so worker ``w`` of ``W`` serves steps ``w, w + W, ...``.
``webdataset.RandomMix`` does not do this: it mixes tasks within a batch and draws from the process-global RNG.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import webdataset as wds

from vidiff.data.shards import count_samples, tar_samples
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
    """The raw batches of one task for one (rank, worker), as a pure function of the seed and the shard sizes.

    Shards are drawn with replacement (like open_clip's ``ResampledShards2(deterministic=True)``) and read one after
    the other; a buffer of ``shuffle_buffer`` samples shuffles them: each sample read takes the place of a buffered
    one drawn at random, which goes out. Both RNGs are seeded from ``(seed, task, rank, worker)``.

    ``iterate(start)`` resumes at batch ``start`` without reading what came before. Which stream positions the
    buffer holds after ``q`` samples went out depends on the shuffle RNG alone, so it is replayed on integers (no
    I/O); the shard draws and the shards' sizes (``sizes``, e.g. from prep's ``sizes.json``; a shard without one is
    counted from its tar headers) place each position in a shard. The ``shuffle_buffer`` buffered samples are then
    read from their shards, every other member is skipped unread, and the stream goes on from the next position:
    a resume reads one buffer and one batch, whatever the run's length.
    """

    def __init__(
        self,
        task: str,
        urls: Sequence[str],
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        sizes: Mapping[str, int] | None = None,
        handler: Callable[[Exception], bool] | None = None,
    ):
        self.task, self.urls = task, list(urls)
        self.batch_size, self.shuffle_buffer = int(batch_size), max(1, int(shuffle_buffer))
        self.seed = int(seed)
        self.sizes = dict(sizes or {})
        self.handler = handler or wds.reraise_exception
        self._warned: set[str] = set()

    def _rng(self, rank: int, worker: int, what: str) -> random.Random:
        # str seeds go through SHA-512: the same stream in every process, unlike hash() of a str
        return random.Random(f"vidiff/{what}/{self.seed}/{self.task}/{rank}/{worker}")

    def _draws(self, rank: int, worker: int) -> Iterator[str]:
        rng = self._rng(rank, worker, "shards")
        while True:
            yield self.urls[rng.randrange(len(self.urls))]

    def _size(self, url: str) -> int:
        if url not in self.sizes:
            self.sizes[url] = count_samples(url)
        return self.sizes[url]

    def _read(self, draws: Iterator[str], url: str, start: int) -> Iterator[dict]:
        """Samples from sample ``start`` of shard ``url`` on, then every sample of the next draws."""
        empty = 0
        while True:
            read = 0
            try:
                for index, sample in tar_samples(url, start):
                    read = index + 1
                    yield sample
            except VIDiffError:
                raise
            except Exception as exn:
                if not self.handler(exn):
                    raise
            if url in self.sizes and read not in (0, self.sizes[url]) and url not in self._warned:
                self._warned.add(url)
                log.warning("%s: %d samples read, its size says %d: a resumed run will not replay this stream "
                            "exactly (rewrite sizes.json)", url, read, self.sizes[url])  # fmt: skip
            empty = 0 if read > start else empty + 1
            if empty > 100 * len(self.urls):
                raise VIDiffError(f"data task {self.task!r}: its shards hold no samples ({self.urls[0]}, ...)")
            url, start = next(draws), 0

    def _place(self, draws: Iterator[str], positions: Sequence[int]) -> dict[int, tuple[int, str, int]]:
        """``{position: (draw, url, index in the shard)}`` for ascending ``positions`` of the stream; ``draws`` is
        left just after the shard of the last one."""
        placed, cum, targets = {}, 0, iter(positions)
        target = next(targets)
        for draw, url in enumerate(draws):
            size = self._size(url)
            while target is not None and target < cum + size:
                placed[target] = (draw, url, target - cum)
                target = next(targets, None)
            cum += size
            if target is None:
                return placed
            if draw > 100 * len(self.urls) and not cum:
                raise VIDiffError(f"data task {self.task!r}: its shards hold no samples ({self.urls[0]}, ...)")
        raise AssertionError("unreachable: draws never end")

    def _resume(self, draws: Iterator[str], rng: random.Random, emitted: int) -> tuple[list[dict], Iterator[dict]]:
        """The buffer after ``emitted`` samples went out, and the reader of the samples after it."""
        size = self.shuffle_buffer
        slots = list(range(size))  # the stream position each buffer slot holds
        for i in range(emitted):
            slots[rng.randrange(size)] = size + i
        nxt = size + emitted
        placed = self._place(draws, sorted(slots) + [nxt])
        wanted: dict[int, tuple[str, dict[int, int]]] = {}  # draw -> (its shard, {index in it: stream position})
        for position in slots:
            draw, url, index = placed[position]
            wanted.setdefault(draw, (url, {}))[1][index] = position
        samples: dict[int, dict] = {}
        for _, (url, indices) in sorted(wanted.items()):
            for index, sample in tar_samples(url, wanted=set(indices)):
                samples[indices[index]] = sample
        missing = [p for p in slots if p not in samples]
        if missing:
            draw, url, index = placed[missing[0]]
            raise VIDiffError(f"{url}: has no sample {index} (its size says {self._size(url)}); resuming needs the "
                              "shards the run was trained on")  # fmt: skip
        _, url, index = placed[nxt]
        return [samples[p] for p in slots], self._read(draws, url, index)

    def iterate(self, rank: int = 0, worker: int = 0, start: int = 0) -> Iterator[list[dict]]:
        draws = self._draws(rank, worker)
        rng = self._rng(rank, worker, "shuffle")
        if start:
            buffer, reader = self._resume(draws, rng, start * self.batch_size)
        else:
            reader = self._read(draws, next(draws), 0)
            buffer = [next(reader) for _ in range(self.shuffle_buffer)]
        batch = []
        while True:
            slot = rng.randrange(self.shuffle_buffer)
            batch.append(buffer[slot])
            buffer[slot] = next(reader)
            if len(batch) == self.batch_size:
                yield batch
                batch = []


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
