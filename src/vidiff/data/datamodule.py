"""``MultiTaskDataModule``: per-task WebDataset pipelines mixed one task per step (see ``mixing.py``)."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import lightning as L
import webdataset as wds
from lightning.fabric.utilities.seed import pl_worker_init_function

from vidiff.data.mixing import TaskSchedule, TaskScheduledMix, TaskStream
from vidiff.data.shards import (
    ClipOptions,
    collate,
    decode_sample,
    mean_sample_bytes,
    resolve_urls,
    shard_sizes,
    warn_and_count,
)
from vidiff.errors import VIDiffError


CLIP_FIELDS = set(ClipOptions.__dataclass_fields__)
TASK_FIELDS = {"urls", "weight", "batch_size", "split"} | CLIP_FIELDS
log = logging.getLogger(__name__)


def all_shards(urls: list[str]) -> list[str]:
    """Node splitter for validation: every rank reads every shard (samples are split by :func:`every_nth`)."""
    return list(urls)


def every_nth(samples: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """Sample ``i`` goes to rank ``i % world_size``: one validation shard still feeds every rank it can."""
    return itertools.islice(samples, rank, None, world_size)


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class _Decode:
    """Picklable per-task decoder: ``(raw sample, rng) -> tensors`` (validation passes no rng: no randomness)."""

    def __init__(self, task: str, options: ClipOptions):
        self.task, self.options = task, options

    def __call__(self, raw: dict[str, Any], rng: random.Random | None = None) -> dict[str, Any]:
        return decode_sample(raw, self.task, self.options, rng or random.Random(0))


class MultiTaskDataModule(L.LightningDataModule):
    """Training batches: one task per step, from resampled (infinite) shards. Validation: finite shards per task.

    Args:
        tasks: ``{task: {urls, weight, batch_size, split, <ClipOptions fields>}}``; ``urls`` is a brace pattern,
            glob, ``pipe:`` URL, list, or a folder (its ``*-<split>-NNNNNN.tar`` shards). ``latents`` chooses per task
            between cached latents (``true``: shards written by ``vidiff-prep latents``) and pixels encoded on the
            fly (``false``), so one run can mix both (``null``: whatever each sample holds).
        val: ``{task: {urls, batch_size, split, ...}}`` held-out shards, read once; sample ``i`` goes to rank
            ``i % world_size``, so a rank may get fewer batches (or none) and validation still completes.
        seed: seeds the task schedule, and with (task, rank, worker, epoch) each stream's shard draws and shuffle.
        num_workers: DataLoader workers per rank (a resumed run replays the sample stream exactly when it uses
            the same number of workers and ranks).
        shuffle_buffer_mib: what the shuffle buffers of one loader worker (all its task streams together) may hold,
            in MiB of raw samples as the shards store them: each task's stream gets an equal share, as many samples
            as fit at the task's mean sample size. A node holds ranks x workers x this (logged at start-up).
        shuffle_buffer: at most this many samples per task stream (None: as many as ``shuffle_buffer_mib`` allows).
        accumulate_grad_batches: keeps one task per optimizer step under gradient accumulation.
        select_tasks: train (and validate) only these tasks, e.g. the single-task ablations.
        defaults: ``ClipOptions`` fields applied to every task unless the task sets its own.
    """

    def __init__(
        self,
        tasks: Mapping[str, Mapping[str, Any]],
        val: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        num_workers: int = 2,
        shuffle_buffer_mib: float = 256.0,
        shuffle_buffer: int | None = None,
        accumulate_grad_batches: int = 1,
        pin_memory: bool = False,
        select_tasks: list[str] | None = None,
        **defaults: Any,
    ):
        super().__init__()
        if select_tasks:
            missing = [t for t in select_tasks if t not in tasks]
            if missing:
                raise VIDiffError(f"data.select_tasks: {missing} not among the configured tasks {sorted(tasks)}")
            tasks = {t: tasks[t] for t in select_tasks}
            val = {t: v for t, v in (val or {}).items() if t in select_tasks}
        unknown = set(defaults) - CLIP_FIELDS
        if unknown:
            raise VIDiffError(f"data: unknown option(s) {sorted(unknown)} (clip options: {sorted(CLIP_FIELDS)})")
        if not tasks:
            raise VIDiffError("data.tasks is empty: give at least one task with its shard urls")
        self.tasks = {name: self._task_config(name, cfg, defaults) for name, cfg in tasks.items()}
        self.val_tasks = {
            name: self._task_config(name, cfg, defaults, train=False) for name, cfg in (val or {}).items()
        }
        self.seed, self.num_workers = seed, num_workers
        if float(shuffle_buffer_mib) <= 0 or (shuffle_buffer is not None and int(shuffle_buffer) < 1):
            raise VIDiffError(
                f"data.shuffle_buffer_mib={shuffle_buffer_mib} and data.shuffle_buffer={shuffle_buffer}: both must "
                "be positive (shuffle_buffer may be null)"
            )
        self.shuffle_buffer_mib = float(shuffle_buffer_mib)
        self.shuffle_buffer = None if shuffle_buffer is None else int(shuffle_buffer)
        self._buffers: dict[str, dict[str, Any]] | None = None
        self.accumulate_grad_batches = accumulate_grad_batches
        self.pin_memory = pin_memory
        self.schedule = TaskSchedule({n: c["weight"] for n, c in self.tasks.items()}, seed, accumulate_grad_batches)
        self.decode_errors: dict[str, int] = {}

    @staticmethod
    def _task_config(
        name: str, cfg: Mapping[str, Any], defaults: Mapping[str, Any], train: bool = True
    ) -> dict[str, Any]:
        cfg = dict(cfg)
        unknown = set(cfg) - TASK_FIELDS
        if unknown:
            raise VIDiffError(
                f"data task {name!r}: unknown option(s) {sorted(unknown)} (allowed: {sorted(TASK_FIELDS)})"
            )
        if "urls" not in cfg or cfg["urls"] in (None, ""):
            raise VIDiffError(f"data task {name!r}: no shard urls")
        clip = {k: cfg[k] for k in CLIP_FIELDS if k in cfg}
        options = ClipOptions(**{**defaults, **clip, "train": train})
        if isinstance(options.crop_scale, list | tuple):
            options.crop_scale = tuple(float(x) for x in options.crop_scale)
        return {
            "urls": cfg["urls"],
            "split": cfg.get("split", "train" if train else "val"),
            "weight": float(cfg.get("weight", 1.0)),
            "batch_size": int(cfg.get("batch_size", 1)),
            "options": options,
        }

    # ------------------------------------------------------------------------------------------ pipelines
    def buffers(self) -> dict[str, dict[str, Any]]:
        """Per training task: its shards, their sizes, the mean raw sample size and the shuffle buffer's samples.

        A worker keeps every task's buffer, so each gets ``shuffle_buffer_mib / tasks``; measured once, from the
        shard files and prep's ``sizes.json`` (the first shards' tar headers when there is none)."""
        if self._buffers is None:
            share = self.shuffle_buffer_mib * 2**20 / len(self.tasks)
            self._buffers = {}
            for name, cfg in self.tasks.items():
                try:
                    urls = resolve_urls(cfg["urls"], cfg["split"])
                except VIDiffError as err:
                    if not cfg["options"].latents:
                        raise
                    raise VIDiffError(
                        f"{err} (data task {name!r} reads cached latents: write them with `vidiff-prep latents "
                        f"--tasks {name} --out <paths.latents_dir>`, or set its latents: false and urls to the pixel "
                        "shards)"
                    ) from None
                sizes = shard_sizes(urls)
                mean = mean_sample_bytes(urls, sizes)
                samples = max(1, int(share // mean))
                if self.shuffle_buffer is not None:
                    samples = min(samples, self.shuffle_buffer)
                self._buffers[name] = {"urls": urls, "sizes": sizes, "sample_bytes": mean, "samples": samples}
        return self._buffers

    def buffer_summary(self, ranks_per_node: int = 1) -> str:
        """One line: the per-worker bound, the per-node total, and each task stream's buffer."""
        workers = max(self.num_workers, 1)  # with no workers the main process holds the buffers
        bound = self.shuffle_buffer_mib * 2**20
        held = sum(b["samples"] * b["sample_bytes"] for b in self.buffers().values())
        streams = ", ".join(
            f"{name} {b['samples']} x {human_bytes(b['sample_bytes'])}" for name, b in self.buffers().items()
        )
        return (
            f"shuffle buffers: at most {human_bytes(bound)} per loader worker (data.shuffle_buffer_mib), "
            f"x {workers} worker(s) x {ranks_per_node} rank(s) = {human_bytes(ranks_per_node * workers * bound)} per "
            f"node; expected {human_bytes(held)} per worker, {human_bytes(ranks_per_node * workers * held)} per node "
            f"(samples x mean raw size per task stream: {streams})"
        )

    def task_pipeline(self, name: str) -> TaskStream:
        """Every (rank, worker) draws shards independently and forever (no rank runs dry), seeded so that a
        resumed run reads the same samples; raw samples are batched here and decoded by ``TaskScheduledMix``,
        which knows the step."""
        buffer = self.buffers()[name]
        return TaskStream(
            name,
            buffer["urls"],
            self.tasks[name]["batch_size"],
            buffer["samples"],
            self.seed,
            buffer["sizes"],
            warn_and_count(self.decode_errors),
        )

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def val_pipeline(self, name: str) -> wds.WebDataset:
        cfg = self.val_tasks[name]
        urls = resolve_urls(cfg["urls"], cfg["split"])
        handler = warn_and_count(self.decode_errors)
        return (
            wds.WebDataset(urls, shardshuffle=False, nodesplitter=all_shards, handler=handler, empty_check=False)
            .compose(partial(every_nth, rank=self._rank(), world_size=self._world_size()))
            .map(_Decode(name, cfg["options"]), handler=handler)
            .batched(cfg["batch_size"], collation_fn=collate, partial=True)
        )

    def _start_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_step * self.accumulate_grad_batches if trainer is not None else 0

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_rank if trainer is not None else 0

    def _loader(self, dataset, workers: int) -> wds.WebLoader:
        # WebLoader bypasses Lightning's worker seeding: seed each worker from (seed, rank, worker) ourselves,
        # otherwise every rank would draw the same augmentations
        return wds.WebLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=partial(pl_worker_init_function, rank=self._rank()) if workers > 0 else None,
        )

    def train_dataset(self, start_step: int = 0) -> TaskScheduledMix:
        """The infinite stream of single-task batches from global micro-step ``start_step`` on."""
        pipelines = {name: self.task_pipeline(name) for name in self.tasks}
        decoders = {name: _Decode(name, cfg["options"]) for name, cfg in self.tasks.items()}
        return TaskScheduledMix(
            pipelines, self.schedule, start_step, decoders=decoders, collate=collate, rank=self._rank()
        )

    def train_dataloader(self) -> wds.WebLoader:
        trainer = getattr(self, "trainer", None)
        if self._rank() == 0:
            log.info(self.buffer_summary(trainer.num_devices if trainer is not None else 1))
        mix = self.train_dataset(self._start_step())
        return self._loader(mix, self.num_workers)

    def val_dataloader(self) -> list[wds.WebLoader]:
        return [self._loader(self.val_pipeline(name), min(self.num_workers, 1)) for name in self.val_tasks]

    @property
    def val_task_names(self) -> list[str]:
        return list(self.val_tasks)

    def state_dict(self) -> dict[str, Any]:
        shuffle = {name: b["samples"] for name, b in self.buffers().items()}
        return {
            "seed": self.seed,
            "num_workers": self.num_workers,
            "world_size": self._world_size(),
            "shuffle_buffers": shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed") not in (None, self.seed):
            raise VIDiffError(
                f"data.seed={self.seed} differs from the checkpoint's {state['seed']}: the task schedule would change"
            )
        layout = {"num_workers": self.num_workers, "world_size": self._world_size()}
        if "shuffle_buffers" in state:
            layout["shuffle_buffers"] = {name: b["samples"] for name, b in self.buffers().items()}
        changed = {k: (state[k], v) for k, v in layout.items() if k in state and state[k] != v}
        if changed:
            log.warning(
                "resuming with %s different from the checkpoint's (was, now): the run continues with the same task "
                "schedule but other samples than the uninterrupted run would have drawn",
                ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
            )
