"""The resumable, atomic shard runner every converter uses.

A converter lists *specs* (cheap descriptions of one potential sample each, in a fixed order) grouped into
*jobs* (one per task and split), and builds a :class:`Sample` from one spec, or raises :class:`SkipSample`
with the reason. :func:`run_converter` turns jobs into shards:

- deterministic: specs are processed in order, every random choice is seeded from the spec, tar members carry
  fixed metadata and x264 runs single-threaded, so the same input gives byte-identical shards;
- atomic: a shard is written under a hidden temporary name and renamed when complete;
- resumable: after each shard the job's progress (next spec, counts, skips) is committed to a state file, so
  a rerun after an interruption continues where the last committed shard ended and the result equals an
  uninterrupted run;
- accounted: every skip is recorded with its reason in the JSON report; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from vidiff.data_prep.encode import encode_sample
from vidiff.data_prep.schema import FORMAT_VERSION, Job, PrepOptions, Sample, SkipSample, Spec
from vidiff.utils.files import publish, write_json_atomic


STATE_DIR = ".vidiff-prep"


# ------------------------------------------------------------------------------------------------ runner
@dataclass
class JobState:
    """Committed progress of one job, saved after every published shard."""

    fingerprint: str
    next_spec: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)  # [{"name", "count"}]
    skips: list[dict[str, str]] = field(default_factory=list)  # [{"key", "reason"}]
    complete: bool = False

    @property
    def written(self) -> int:
        return sum(s["count"] for s in self.shards)


def _build_one(
    build: Callable[[Job, Spec, PrepOptions], Sample | list[Sample]], job: Job, options: PrepOptions, spec: Spec
):
    """Worker body: the encoded members of a spec's sample(s), or the skip reason. Never raises for a bad sample.

    ``build`` returns one sample, or a list when a spec only learns in the worker how many it makes (a WebVid
    video's segments: its frame count is probed there, not while listing the CSV)."""
    try:
        built = build(job, spec, options)
        samples = built if isinstance(built, list) else [built]
        if not samples:
            raise SkipSample("no sample")
        return [encode_sample(sample, options.crf) for sample in samples], None
    except SkipSample as skip:
        return None, str(skip)


class ShardFile:
    """A tar being filled under a hidden temporary name."""

    def __init__(self, folder: Path, name: str):
        self.final = folder / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        # fixed mtime/owner: tar headers do not depend on when or by whom the shard was written
        # encoder=False: members are written exactly as given (the default encoder would re-encode by extension)
        self._writer = wds.TarWriter(self._handle, encoder=False, mtime=0, user="vidiff", group="vidiff", mode=0o444)
        self.count = 0

    def write(self, members: dict[str, Any]) -> None:
        self._writer.write(members)
        self.count += 1

    def publish(self) -> None:
        self._writer.close()  # also closes the file handle
        publish(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


def shard_name(source: str, split: str, index: int, part: int | None = None) -> str:
    """``<source>-<split>-NNNNNN.tar``; a job that is one part of a long listing (a WebVid CSV read in chunks)
    numbers its shards ``<source>-<split>-PPPPP-NNNNNN.tar``, which sort in listing order and match the same glob."""
    if part is None:
        return f"{source}-{split}-{index:06d}.tar"
    return f"{source}-{split}-{part:05d}-{index:06d}.tar"


def _fingerprint(source: str, job: Job, options: PrepOptions, extra: dict[str, Any]) -> str:
    settings = {k: v for k, v in asdict(options).items() if k != "workers"}
    payload = json.dumps(
        [FORMAT_VERSION, source, job.task, job.split, settings, extra, [(s.key, s.data) for s in job.specs]],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def update_sizes(folder: Path, name: str, count: int) -> None:
    """``sizes.json`` (shard file -> samples), the open_clip convention for sizing epochs."""
    path = folder / "sizes.json"
    sizes = json.loads(path.read_text()) if path.exists() else {}
    sizes[name] = count
    write_json_atomic(path, sizes)


def run_converter(
    source: str,
    jobs: Sequence[Job],
    build: Callable[[Job, Spec, PrepOptions], Sample],
    out_dir: Path,
    options: PrepOptions,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every job's shards under ``out_dir/<task>/`` and return (and save) the run report."""
    out_dir = Path(out_dir)
    report: dict[str, Any] = {"source": source, "out": str(out_dir), "options": asdict(options), "jobs": []}
    pool = None
    if options.workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(options.workers)
    try:
        for job in jobs:
            report["jobs"].append(_run_job(source, job, build, out_dir, options, extra or {}, progress, pool))
    finally:
        if pool is not None:
            pool.terminate()
    report["written"] = sum(j["written"] for j in report["jobs"])
    report["skipped"] = sum(j["skipped"] for j in report["jobs"])
    write_json_atomic(out_dir / "reports" / f"{source}.json", report)
    return report


def _run_job(source, job, build, out_dir, options, extra, progress, pool) -> dict[str, Any]:
    folder = out_dir / job.task
    folder.mkdir(parents=True, exist_ok=True)
    part = getattr(job, "part", None)
    suffix = "" if part is None else f"-{part:05d}"
    state_path = out_dir / STATE_DIR / f"{source}-{job.task}-{job.split}{suffix}.json"
    fingerprint = _fingerprint(source, job, options, extra)
    prefix = f"{source}-{job.split}-" + ("" if part is None else f"{part:05d}-")
    # leftovers of an interrupted run are never published; clear them
    for stale in folder.glob(f".{prefix}*.partial"):
        stale.unlink(missing_ok=True)

    state = None
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("fingerprint") == fingerprint:
            state = JobState(**saved)
    resumed_from = state.next_spec if state is not None else 0
    if state is None:
        # a fresh job (or different inputs/options): shards from an older run of this job are replaced
        state = JobState(fingerprint=fingerprint)
        pattern = f"{prefix}[0-9]*.tar" if part is not None else f"{prefix}[0-9][0-9][0-9][0-9][0-9][0-9].tar"
        for old in folder.glob(pattern):
            old.unlink()

    if not state.complete:
        todo = job.specs[state.next_spec :]
        work = partial(_build_one, build, job, options)
        results: Iterator = pool.imap(work, todo) if pool is not None else map(work, todo)
        bar = tqdm(
            total=len(job.specs),
            initial=state.next_spec,
            desc=f"{source} {job.task}/{job.split}",
            unit="sample",
            disable=not progress,
        )
        shard = None
        try:
            for index, (encoded, reason) in enumerate(results, start=state.next_spec):
                spec = job.specs[index]
                if encoded is None:
                    state.skips.append({"key": spec.key, "reason": reason})
                for members in encoded or []:
                    if shard is None:
                        shard = ShardFile(folder, shard_name(source, job.split, len(state.shards), part))
                    shard.write(members)
                bar.update(1)
                bar.set_postfix(written=state.written + (shard.count if shard else 0), skipped=len(state.skips))
                if shard is not None and shard.count >= options.shard_size:
                    _commit(state, shard, index + 1, folder, state_path)
                    shard = None
            if shard is not None:
                _commit(state, shard, len(job.specs), folder, state_path)
                shard = None
            state.next_spec = len(job.specs)
            state.complete = True
            write_json_atomic(state_path, asdict(state))
        except BaseException:
            if shard is not None:
                shard.abort()
            raise
        finally:
            bar.close()

    return {
        "task": job.task,
        "split": job.split,
        "specs": len(job.specs),
        "written": state.written,
        "skipped": len(state.skips),
        "skips": state.skips,
        "shards": state.shards,
        "resumed_from_spec": resumed_from,
    }


def _commit(state: JobState, shard: ShardFile, next_spec: int, folder: Path, state_path: Path) -> None:
    shard.publish()
    state.shards.append({"name": shard.final.name, "count": shard.count})
    state.next_spec = next_spec
    update_sizes(folder, shard.final.name, shard.count)
    write_json_atomic(state_path, asdict(state))


def carve_val(jobs: Sequence[Job], every: int) -> list[Job]:
    """A ``val`` split carved from each task's ``train`` job when the source has none: every ``every``-th source
    video (its segments together, so no video is on both sides), the same ones on every run. Validation then never
    reads the ``test`` split the paper's tables are computed on."""
    jobs = list(jobs)
    have_val = {job.task for job in jobs if job.split == "val"}
    carved = []
    for job in jobs:
        if job.split != "train" or job.task in have_val or every < 2:
            carved.append(job)
            continue
        videos = sorted({video_of(spec) for spec in job.specs})
        held_out = set(videos[every // 2 :: every])
        carved.append(Job(job.task, "train", [s for s in job.specs if video_of(s) not in held_out], job.part))
        carved.append(Job(job.task, "val", [s for s in job.specs if video_of(s) in held_out], job.part))
    return carved


def video_of(spec: Spec) -> str:
    """The source video a spec was cut from (``origin`` up to its ``#start-end``; else the key)."""
    origin = spec.data.get("origin") if isinstance(spec.data, dict) else None
    return str(origin).split("#")[0] if origin else spec.key
