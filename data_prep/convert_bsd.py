"""``vidiff-prep bsd``: the Beam-Splitter Deblurring dataset -> ``deblur`` (blurry source, sharp target).

Layout (ESTRNN): ``BSD/BSD_<config>/<split>/<seq>/{Blur,Sharp}/RGB/<8-digit>.png``; ``--root`` may point at
``BSD/`` (every configuration, or ``--config``) or at one ``BSD_<config>/`` folder. Blur and sharp frames are
paired by file name; a frame present on one side only is reported as a missing pair.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from vidiff.data.tasks import instruction_for
from vidiff.data_prep.pairs import build_frame_pair, paired_specs
from vidiff.data_prep.schema import Job, PrepOptions, Sample, SkipSample, Spec, rng_for
from vidiff.errors import VIDiffError


SOURCE = "bsd"
HELP = "BSD (Beam-Splitter Deblurring) -> deblur"
SPLITS = ("train", "valid", "test")
FPS = Fraction(15)  # BSD is captured at 15 fps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="", help="only these configurations, e.g. 2ms16ms (comma-separated)")


def find_configs(root: Path, wanted: list[str]) -> dict[str, Path]:
    if any((root / s).is_dir() for s in SPLITS):
        name = root.name.removeprefix("BSD_") if root.name.startswith("BSD_") else root.name
        configs = {name: root}
    else:
        configs = {p.name.removeprefix("BSD_"): p for p in sorted(root.glob("BSD_*")) if p.is_dir()}
    if wanted:
        missing = [w for w in wanted if w not in configs]
        if missing:
            raise VIDiffError(f"{root}: no BSD_{missing[0]} folder (found: {', '.join(configs) or 'none'})")
        configs = {w: configs[w] for w in wanted}
    if not configs:
        raise VIDiffError(f"{root}: not a BSD folder (expected BSD_<config>/<split>/<seq>/Blur/RGB/)")
    return configs


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    configs = find_configs(root, [c for c in args.config.split(",") if c])
    splits = [args.split] if args.split else list(SPLITS)
    jobs = []
    for split in splits:
        specs = []
        for config, folder in configs.items():
            split_dir = folder / split
            if not split_dir.is_dir():
                continue
            for seq in sorted((p for p in split_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
                specs += paired_specs(
                    f"bsd_{config}-{seq.name}",
                    seq / "Blur" / "RGB",
                    seq / "Sharp" / "RGB",
                    origin=f"BSD_{config}/{split}/{seq.name}",
                    max_frames=options.max_frames,
                    config=config,
                )
        if specs:
            jobs.append(Job("deblur", split, specs))
    if not jobs:
        raise VIDiffError(f"{root}: no sequences for split(s) {', '.join(splits)}")
    return jobs


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    if "error" in spec.data:
        raise SkipSample(spec.data["error"])
    instruction = instruction_for("deblur", rng_for(options.seed, job.task, spec.key))
    return build_frame_pair(job, spec, options, instruction, FPS, {"config": spec.data["config"]})
