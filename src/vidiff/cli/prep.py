"""``vidiff-prep``: convert a source dataset into WebDataset shards (one converter per source).

    vidiff-prep video-folder --root clips/ --out data/ --val-videos 'bikes*'
    vidiff-prep bsd --root BSD/ --out data/ --split test
    vidiff-prep latents --model outputs/vae/model --shards data/ --out data-latents/   (after the autoencoder is fixed)
    vidiff-prep webvid --root /data/webvid --out /data/shards --num-parts 100 --launcher slurm --partition cpu

Shards go to ``<out>/<task>/<source>-<split>-NNNNNN.tar``; the run report (samples written, every skip with
its reason) to ``<out>/reports/<source>.json``. Rerunning after an interruption resumes; rerunning a finished
job is a no-op. ``--num-parts N --part i`` runs one part (``--merge`` combines finished parts), ``--launcher
slurm|local`` submits all N through submitit (``vidiff.data_prep.parts``). The sample format is documented in
``data_prep/README.md``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from vidiff.cli.common import run_cli
from vidiff.errors import VIDiffError


CONVERTERS = {
    "video-folder": "vidiff.data_prep.convert_video_folder",
    "webvid": "vidiff.data_prep.convert_webvid",
    "hazeworld": "vidiff.data_prep.convert_hazeworld",
    "bsd": "vidiff.data_prep.convert_bsd",
    "ref-davis": "vidiff.data_prep.convert_ref_davis",
    "refer-youtube-vos": "vidiff.data_prep.convert_refer_youtube_vos",
    "edit-pairs": "vidiff.data_prep.convert_edit_pairs",
    "ip2p": "vidiff.data_prep.convert_ip2p",
}


def build_parser() -> argparse.ArgumentParser:
    from vidiff.data_prep import parts
    from vidiff.data_prep.schema import PrepOptions

    defaults = PrepOptions()
    parser = argparse.ArgumentParser(
        prog="vidiff-prep",
        description="Convert a source dataset into VIDiff WebDataset shards (<out>/<task>/<source>-<split>-NNNNNN.tar).",
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, module_name in CONVERTERS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--root", required=True, help="the dataset as downloaded/extracted")
        p.add_argument("--out", required=True, help="output folder (task subfolders are created)")
        p.add_argument("--split", default=None, help="convert only this split (default: every split found)")
        p.add_argument(
            "--short-side",
            type=int,
            default=defaults.short_side,
            help="stored short side in pixels; larger frames are downscaled (default %(default)s)",
        )
        p.add_argument(
            "--max-frames",
            type=int,
            default=defaults.max_frames,
            help="longer videos are cut into segments of at most this many frames (default %(default)s)",
        )
        p.add_argument(
            "--min-frames",
            type=int,
            default=defaults.min_frames,
            help="skip (and report) shorter segments (default %(default)s)",
        )
        p.add_argument(
            "--shard-size", type=int, default=defaults.shard_size, help="samples per shard (default %(default)s)"
        )
        p.add_argument(
            "--carve-val",
            type=int,
            default=0,
            metavar="N",
            help="a source without a 'val' split gets one: every N-th training video (with all its segments) moves "
            "there, so validation never reads the 'test' split (default: 0, off)",
        )
        p.add_argument(
            "--crf",
            type=int,
            default=defaults.crf,
            help="x264 quality of stored clips, lower is better (default %(default)s)",
        )
        p.add_argument(
            "--seed", type=int, default=defaults.seed, help="seed of the synthetic degradations (default %(default)s)"
        )
        p.add_argument(
            "--workers",
            type=int,
            default=defaults.workers,
            help="processes building samples; the output does not depend on it (default %(default)s)",
        )
        p.add_argument(
            "--name",
            default=None,
            help=f"shard name prefix (default: {name}); e.g. davis for video-folder shards of DAVIS, so several "
            "sources of one task share --out (the benchmarks' `source:` picks them)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        module.add_arguments(p)
        parts.add_arguments(p)
    latents = importlib.import_module("vidiff.data_prep.latents")
    p = sub.add_parser(
        "latents",
        help=latents.HELP,
        description=(latents.__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    latents.add_arguments(p)
    parts.add_arguments(p, gpus_per_task=1)
    return parser


def run_prep(argv: list[str] | None = None) -> int:
    """``vidiff-prep`` without the one-line error handling (a submitted part's errors reach the scheduler)."""
    from vidiff.data_prep import parts
    from vidiff.data_prep.runner import merge_parts, part_complete, run_converter
    from vidiff.data_prep.schema import PrepOptions

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    parts.check_arguments(args)
    if args.source == "latents":
        from vidiff.data_prep.latents import run

        return run(args, argv, body=run_prep)
    for flag in ("short_side", "max_frames", "shard_size", "workers", "min_frames"):
        if getattr(args, flag) < 1:
            raise VIDiffError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    root = Path(args.root)
    if not root.exists():
        raise VIDiffError(f"{root}: no such file or folder (--root)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VIDiffError(f"{out}: exists and is not a folder (--out)")
    module = importlib.import_module(CONVERTERS[args.source])
    options = PrepOptions(
        short_side=args.short_side,
        max_frames=args.max_frames,
        min_frames=args.min_frames,
        shard_size=args.shard_size,
        crf=args.crf,
        seed=args.seed,
        workers=args.workers,
    )
    name = args.name or args.source
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.]*(-[a-z0-9_.]+)*", name) or re.search(r"-(train|val|test)\b", name):
        raise VIDiffError(f"--name {name}: use lower-case letters, digits, '.', '_' and '-' (no split names)")
    run, num_parts = parts.run_id(args), args.num_parts
    if args.launcher != "none":
        parts.launch(argv, args, out, name, done=lambda i: part_complete(out, name, i, num_parts, run), body=run_prep)
        return _finish(merge_parts(name, out, num_parts, run), out, name, root)
    if args.merge:
        return _finish(merge_parts(name, out, num_parts, run), out, name, root)
    args.part = parts.resolve_part(args)  # converters with a long listing skip the other parts' chunks early
    jobs = module.make_jobs(root, args, options)
    if args.carve_val:
        from vidiff.data_prep.runner import carve_val

        if not isinstance(jobs, list):
            raise VIDiffError(f"--carve-val: {args.source} streams its listing in parts; it cannot carve a val split")
        jobs = carve_val(jobs, args.carve_val)
    report = run_converter(
        name, jobs, module.build, out, options, progress=not args.quiet, num_parts=num_parts, part=args.part, run=run
    )
    if num_parts == 1:
        return _finish(merge_parts(name, out, 1, run), out, name, root)
    _print_totals(report)
    print(f"part {args.part} of {num_parts} done; when every part is: the same command with --merge instead of --part")
    return 0


def _print_totals(report: dict) -> None:
    # one line per task and split (a long listing is converted in several parts)
    totals: dict[tuple[str, str], dict] = {}
    for job in report["jobs"]:
        total = totals.setdefault((job["task"], job["split"]), {"written": 0, "skipped": 0, "shards": 0, "skips": []})
        total["written"] += job["written"]
        total["skipped"] += job["skipped"]
        total["shards"] += len(job["shards"])
        total["skips"] += job["skips"][: 5 - len(total["skips"])]
        total["resumed"] = total.get("resumed") or bool(job["resumed_from_spec"])
    for (task, split), total in totals.items():
        resumed = ", resumed" if total["resumed"] else ""
        print(
            f"{task}/{split}: {total['written']} written, {total['skipped']} skipped, {total['shards']} shard(s){resumed}"
        )
        for skip in total["skips"]:
            print(f"  skipped {skip['key']}: {skip['reason']}")
        if total["skipped"] > len(total["skips"]):
            print(f"  ... {total['skipped'] - len(total['skips'])} more skip(s) in the report")


def _finish(report: dict, out: Path, name: str, root: Path) -> int:
    _print_totals(report)
    print(f"report: {out / 'reports' / (name + '.json')}")
    if report["written"] == 0:
        raise VIDiffError(f"{root}: no sample could be converted ({report['skipped']} skipped; see the report)")
    return 0


main = run_cli("vidiff-prep")(run_prep)


if __name__ == "__main__":
    raise SystemExit(main())
