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
- accounted: every skip is recorded with its reason in the JSON report; nothing is dropped silently;
- partable: ``num_parts``/``part`` run one part of the jobs (a listing's chunks round-robin, other jobs' specs in
  contiguous slices); a part writes only its own shards, states and part report, so parts run at the same time
  into one folder, and :func:`merge_parts` combines them (the union equals one run over everything).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from vidiff.data_prep.encode import encode_sample
from vidiff.data_prep.parts import missing_parts_error, part_tag
from vidiff.data_prep.schema import FORMAT_VERSION, Job, PrepOptions, Sample, SkipSample, Spec
from vidiff.errors import VIDiffError, writing
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
        with writing(self.final):  # a full disk or read-only folder: one line naming the shard
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        # fixed mtime/owner: tar headers do not depend on when or by whom the shard was written
        # encoder=False: members are written exactly as given (the default encoder would re-encode by extension)
        self._writer = wds.TarWriter(self._handle, encoder=False, mtime=0, user="vidiff", group="vidiff", mode=0o444)
        self.count = 0

    def write(self, members: dict[str, Any]) -> None:
        with writing(self.final):
            self._writer.write(members)
        self.count += 1

    def publish(self) -> None:
        with writing(self.final):
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


def update_sizes(folder: Path, counts: dict[str, int], drop_prefixes: Iterable[str] = ()) -> None:
    """``sizes.json`` (shard file -> samples), the open_clip convention for sizing epochs: set ``counts``, after
    dropping the entries whose names start with one of ``drop_prefixes`` (a run's own, listed again in full).

    Only merges write it (never a part), under an exclusive lock, since several sources share a task folder."""
    import fcntl

    path = folder / "sizes.json"
    with open(folder / ".sizes.json.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): merges of one source never race
            pass
        sizes = json.loads(path.read_text()) if path.exists() else {}
        prefixes = tuple(drop_prefixes)
        sizes = {k: v for k, v in sizes.items() if not (prefixes and k.startswith(prefixes))}
        sizes.update(counts)
        write_json_atomic(path, dict(sorted(sizes.items())))


def select_part(jobs: Iterable[Job], num_parts: int, part: int) -> Iterator[tuple[Job, list[int] | None]]:
    """Part ``part``'s share of ``jobs``: a chunk of a long listing (``job.part`` set) whole, round-robin by chunk
    number (its shard names are those of a single run); any other job's specs in ``num_parts`` contiguous slices,
    slice ``part`` numbered ``part`` (shards ``<source>-<split>-PPPPP-NNNNNN.tar``), with its ``[start, stop)``."""
    for job in jobs:
        if num_parts == 1:
            yield job, None
        elif job.part is not None:
            if job.part % num_parts == part:
                yield job, None
        else:
            n = len(job.specs)
            start, stop = n * part // num_parts, n * (part + 1) // num_parts
            yield Job(job.task, job.split, job.specs[start:stop], part=part), [start, stop]


def part_report_path(out_dir: Path, source: str, part: int, num_parts: int) -> Path:
    return Path(out_dir) / "reports" / f"{source}.parts" / f"{part_tag(part, num_parts)}.json"


def part_complete(out_dir: Path, source: str, part: int, num_parts: int, run: str) -> bool:
    path = part_report_path(out_dir, source, part, num_parts)
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # absent, unreadable or half-written: not finished
        return False
    return bool(saved.get("complete")) and saved.get("run") == run


def run_converter(
    source: str,
    jobs: Iterable[Job],
    build: Callable[[Job, Spec, PrepOptions], Sample],
    out_dir: Path,
    options: PrepOptions,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    num_parts: int = 1,
    part: int = 0,
    run: str = "",
) -> dict[str, Any]:
    """Write part ``part`` of ``num_parts`` of the jobs' shards under ``out_dir/<task>/`` and return (and save, as
    ``reports/<source>.parts/part-PPPPP-of-NNNNN.json``) the part's report; :func:`merge_parts` combines parts."""
    out_dir = Path(out_dir)
    report: dict[str, Any] = {
        "source": source,
        "out": str(out_dir),
        "options": asdict(options),
        "run": run,
        "part": part,
        "num_parts": num_parts,
        "complete": False,
        "jobs": [],
    }
    report_path = part_report_path(out_dir, source, part, num_parts)
    write_json_atomic(report_path, report)  # an unfinished part is visible as such to the merge
    pool = None
    if options.workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(options.workers)
    try:
        for job, span in select_part(jobs, num_parts, part):
            entry = _run_job(source, job, build, out_dir, options, extra or {}, progress, pool)
            if span is not None:
                entry["slice"] = span
            report["jobs"].append(entry)
    finally:
        if pool is not None:
            pool.terminate()
    report["written"] = sum(j["written"] for j in report["jobs"])
    report["skipped"] = sum(j["skipped"] for j in report["jobs"])
    report["complete"] = True
    write_json_atomic(report_path, report)
    return report


def merge_parts(source: str, out_dir: Path, num_parts: int, run: str) -> dict[str, Any]:
    """Check that every part of the run finished and left its shards, then write the run's report
    (``reports/<source>.json``: a job cut into slices is one entry again) and every task folder's ``sizes.json``.

    Fails, naming them, when a part is missing, unfinished or from another run, when a listed shard is gone, or
    when a task folder holds shards of this source and split that no part wrote (left by a run with another
    ``--num-parts`` or other inputs: they would be read as data)."""
    out_dir = Path(out_dir)
    parts, problems = [], {}
    for part in range(num_parts):
        path = part_report_path(out_dir, source, part, num_parts)
        if not path.exists():
            problems[part] = "missing"
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            problems[part] = f"has an unreadable report ({err})"
            continue
        if saved.get("run") != run:
            problems[part] = "is from another run (other inputs or flags)"
        elif not saved.get("complete"):
            problems[part] = "unfinished"
        else:
            parts.append(saved)
    if problems:
        raise missing_parts_error(f"{source} in {out_dir}", problems, num_parts)

    merged: dict[tuple, dict[str, Any]] = {}
    for saved in parts:
        for job in saved["jobs"]:
            key = (job["task"], job["split"], -1 if "slice" in job or job.get("part") is None else job["part"])
            entry = merged.setdefault(
                key,
                {
                    "task": job["task"],
                    "split": job["split"],
                    "specs": 0,
                    "written": 0,
                    "skipped": 0,
                    "skips": [],
                    "shards": [],
                    "resumed_from_spec": 0,
                },
            )
            if key[2] >= 0:
                entry["part"] = key[2]
            for field_ in ("specs", "written", "skipped", "skips", "shards"):
                entry[field_] += job[field_]
            entry["resumed_from_spec"] += job["resumed_from_spec"]
    jobs = [merged[k] for k in sorted(merged)]
    for (task, split), listed in _shards_by_folder(jobs).items():
        folder = out_dir / task
        gone = sorted(set(listed) - {p.name for p in folder.glob(f"{source}-{split}-*.tar")})
        if gone:
            raise VIDiffError(f"{folder / gone[0]}: listed by a finished part but missing ({len(gone)} shard(s))")
        stray = sorted({p.name for p in folder.glob(f"{source}-{split}-*.tar")} - set(listed))
        if stray:
            raise VIDiffError(
                f"{folder / stray[0]}: {len(stray)} {source}/{split} shard(s) that no part of this run wrote (an "
                "earlier run with another --num-parts or other inputs?); delete them or use a fresh --out"
            )
    for task in sorted({j["task"] for j in jobs}):
        counts = {s["name"]: s["count"] for j in jobs if j["task"] == task for s in j["shards"]}
        splits = {j["split"] for j in jobs if j["task"] == task}
        update_sizes(out_dir / task, counts, drop_prefixes=[f"{source}-{split}-" for split in sorted(splits)])
    report = {k: v for k, v in parts[0].items() if k in ("source", "out", "options", "run")}
    report.update(
        num_parts=num_parts,
        jobs=jobs,
        written=sum(j["written"] for j in jobs),
        skipped=sum(j["skipped"] for j in jobs),
    )
    write_json_atomic(out_dir / "reports" / f"{source}.json", report)
    return report


def _shards_by_folder(jobs: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        found.setdefault((job["task"], job["split"]), []).extend(s["name"] for s in job["shards"])
    return found


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
        "part": part,
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
