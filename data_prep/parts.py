"""One conversion split into parts that separate processes or machines run, then merged.

``--num-parts N --part i`` (or, inside a SLURM array, ``--num-parts N`` alone: the part is the array index) runs
part ``i`` only: it writes its own shards, its own state and its own part report, never a file another part
writes, so parts may run at the same time into one ``--out`` and each resumes on its own. ``--merge`` then
combines the part reports (and ``vidiff-prep latents``' part manifests) into the run's report, ``sizes.json``
and manifests, and fails if a part is missing, unfinished or from another run.

``--launcher slurm`` (or ``local``: submitit's local executor, the same jobs as subprocesses of this machine)
submits the N parts as one array through submitit, waits with a progress bar over the parts, resubmits failed
parts up to ``--retries`` times and merges. Parts already finished by an earlier run are not resubmitted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from vidiff.errors import VIDiffError


ARRAY_INDEX_ENV = "SLURM_ARRAY_TASK_ID"
LAUNCHERS = ("none", "local", "slurm")
# flags that choose how and where a run executes, not what it writes (left out of the run's identity)
EXECUTION_FLAGS = (
    "part",
    "merge",
    "launcher",
    "partition",
    "time",
    "cpus_per_task",
    "gpus_per_task",
    "mem_gb",
    "retries",
    "max_parallel",
    "log_dir",
    "quiet",
    "workers",
    "device",
)


def add_arguments(parser, gpus_per_task: int = 0) -> None:
    group = parser.add_argument_group("parts and cluster submission")
    group.add_argument(
        "--num-parts", type=int, default=1, metavar="N", help="split the work into N parts (each resumable; default 1)"
    )
    group.add_argument(
        "--part",
        type=int,
        default=None,
        metavar="I",
        help=f"run only part i (0-based); default with --num-parts > 1: ${ARRAY_INDEX_ENV} (a SLURM array)",
    )
    group.add_argument(
        "--merge", action="store_true", help="only merge the finished parts' reports and manifests (checks them all)"
    )
    group.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="none",
        help="submit the N parts through submitit (slurm: an array job; local: subprocesses here), wait, "
        "resubmit failures, merge (default %(default)s: run here)",
    )
    group.add_argument("--partition", default=None, help="SLURM partition")
    group.add_argument(
        "--time", type=int, default=240, metavar="MINUTES", help="minutes per part (default %(default)s)"
    )
    group.add_argument(
        "--cpus-per-task", type=int, default=None, metavar="N", help="CPUs per part (default: --workers, else 1)"
    )
    group.add_argument(
        "--gpus-per-task", type=int, default=gpus_per_task, metavar="N", help="GPUs per part (default %(default)s)"
    )
    group.add_argument(
        "--mem-gb", type=int, default=None, metavar="GB", help="memory per part in GB (default: the cluster's)"
    )
    group.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="resubmissions of a failed part before giving up (default %(default)s)",
    )
    group.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="parts running at once (SLURM array throttle; default all)",
    )
    group.add_argument(
        "--log-dir",
        default=None,
        metavar="DIR",
        help="submitit's job files and logs (default <out>/.vidiff-prep/submitit)",
    )


def check_arguments(args) -> None:
    if args.num_parts < 1:
        raise VIDiffError(f"--num-parts must be at least 1 (got {args.num_parts})")
    if args.part is not None and not 0 <= args.part < args.num_parts:
        raise VIDiffError(f"--part {args.part}: must be in 0..{args.num_parts - 1} (--num-parts {args.num_parts})")
    if args.launcher != "none" and (args.merge or args.part is not None):
        raise VIDiffError(f"--launcher {args.launcher} runs and merges every part; drop --part/--merge")
    if args.retries < 0:
        raise VIDiffError(f"--retries must be 0 or more (got {args.retries})")


def resolve_part(args) -> int:
    """The part this process runs: ``--part``, else the array index, else 0 when there is one part."""
    if args.part is not None:
        return args.part
    if args.num_parts == 1:
        return 0
    index = os.environ.get(ARRAY_INDEX_ENV)
    if index is None:
        raise VIDiffError(
            f"--num-parts {args.num_parts}: say which part this is (--part i, or run in a SLURM array: "
            f"${ARRAY_INDEX_ENV}), or submit them all (--launcher slurm|local), or --merge finished parts"
        )
    if not index.isdigit() or int(index) >= args.num_parts:
        raise VIDiffError(f"${ARRAY_INDEX_ENV}={index}: not a part in 0..{args.num_parts - 1} (--num-parts)")
    return int(index)


def run_id(args) -> str:
    """What a run writes (every flag but the execution ones): parts of one run share it; the merge checks it."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in EXECUTION_FLAGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def part_tag(part: int, num_parts: int) -> str:
    return f"part-{part:05d}-of-{num_parts:05d}"


def missing_parts_error(what: str, problems: dict[int, str], num_parts: int) -> VIDiffError:
    """One line: which parts are missing/unfinished/stale and how to finish them."""
    listed = "; ".join(f"part {i} {why}" for i, why in sorted(problems.items())[:8])
    more = f"; ... {len(problems) - 8} more" if len(problems) > 8 else ""
    return VIDiffError(
        f"{what}: {len(problems)} of {num_parts} part(s) not finished ({listed}{more}); run them (--part i) "
        "with the same flags, then --merge"
    )


# ------------------------------------------------------------------------------------------------ submitit
def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def make_executor(args, folder: Path, label: str):
    """submitit's executor for ``--launcher`` with the per-part resources (one node, one task per part)."""
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=args.launcher)
    except RuntimeError as err:  # e.g. no srun on this machine
        raise VIDiffError(f"--launcher {args.launcher}: {err}") from None
    params = {
        "name": f"vidiff-prep-{label}",
        "timeout_min": args.time,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": args.cpus_per_task or getattr(args, "workers", 1),
        "gpus_per_node": args.gpus_per_task,
    }
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.launcher == "slurm":
        if args.partition:
            params["slurm_partition"] = args.partition
        if args.max_parallel:
            params["slurm_array_parallelism"] = args.max_parallel
    executor.update_parameters(**params)
    return executor


def launch(
    argv: list[str], args, out: Path, label: str, done: Callable[[int], bool], body: Callable[[list[str]], int]
) -> None:
    """Submit every unfinished part of ``argv``'s run through submitit and wait; raise when parts still fail.

    ``body(argv)`` is a submitted job: one part, in-process (errors propagate so the scheduler marks the part
    failed). The command layer passes its own entry point (``vidiff.cli.prep.run_prep``), importable by name in the
    job's process."""
    from tqdm.auto import tqdm

    num_parts = args.num_parts
    folder = Path(args.log_dir) if args.log_dir else out / ".vidiff-prep" / "submitit"
    executor = make_executor(args, folder, label)

    def submit(parts: list[int]) -> dict:
        # the parts run this very command line, each as one part, in its own process
        argvs = [[*argv, "--launcher", "none", "--part", str(i), "--quiet"] for i in parts]
        return dict(zip(parts, executor.map_array(body, argvs)))

    todo = [i for i in range(num_parts) if not done(i)]
    if len(todo) < num_parts:
        print(f"{label}: {num_parts - len(todo)} of {num_parts} part(s) already finished")
    if not todo:
        return
    jobs = submit(todo)
    attempts = dict.fromkeys(todo, 1)
    failed: dict[int, str] = {}
    bar = tqdm(total=num_parts, initial=num_parts - len(todo), desc=f"{label} parts", unit="part", disable=args.quiet)
    poll = 1.0 if args.launcher == "local" else 15.0
    try:
        while jobs:
            time.sleep(poll)
            retry = []
            for i, job in list(jobs.items()):
                if not job.done():
                    continue
                del jobs[i]
                try:
                    job.result()
                    bar.update(1)
                except Exception as err:  # the part's own error, or the scheduler's (killed, timed out, node lost)
                    reason = _reason(err)
                    if attempts[i] <= args.retries:
                        print(f"{label}: part {i} failed (attempt {attempts[i]}: {reason}); resubmitting")
                        attempts[i] += 1
                        retry.append(i)
                    else:
                        failed[i] = f"{reason} (after {attempts[i]} attempt(s); log {job.paths.stderr})"
            if retry:
                jobs.update(submit(retry))
            bar.set_postfix(running=len(jobs), failed=len(failed))
    except KeyboardInterrupt:
        for job in jobs.values():
            job.cancel(check=False)
        raise
    finally:
        bar.close()
    if failed:
        first = min(failed)
        raise VIDiffError(
            f"{label}: {len(failed)} of {num_parts} part(s) failed: part {first}: {failed[first]}; rerun the same "
            "command to retry them (finished parts are kept)"
        )
