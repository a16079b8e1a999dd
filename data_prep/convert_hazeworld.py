"""``vidiff-prep hazeworld``: HazeWorld (MAP-Net) -> ``dehaze`` (hazy source, clear target).

Reads the extracted layout ``hazy/<Dataset>/<orig_split>/<video>_<light>_<beta>/`` with the clear frames in
``gt/<Dataset>/<orig_split>/<video>/`` (the hazy folder name without its last two fields). The HazeWorld split
of each clip comes from ``gt/<Dataset>/mapping_info_GT_{train,test}.txt`` (``<src_split> <dst_split> <folder>
<count>``, where ``<folder>`` may name the clip, ``bear``, or one hazy version, ``bear_239_0.005``: both are
read, since public sources do not settle which the release uses); without those files, source splits whose name starts with ``test`` count as test, others as train.
The symlinked layout made by MAP-Net's ``create_symlink_hazeworld.py`` (``<split>/{hazy,gt}/<Dataset>/<clip>``)
is read too. Every hazy version of a clip (4 betas) is one sample; ``beta`` and the light go in the metadata.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from vidiff.data.tasks import instruction_for
from vidiff.data_prep.pairs import build_frame_pair, paired_specs
from vidiff.data_prep.schema import Job, PrepOptions, Sample, SkipSample, Spec, rng_for
from vidiff.errors import VIDiffError


SOURCE = "hazeworld"
HELP = "HazeWorld -> dehaze"
FPS = Fraction(25)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", default="", help="only these source datasets, e.g. DAVIS,REDS (comma-separated)")


def parse_clip_name(folder: str) -> tuple[str, float, float]:
    """``bear_239_0.005`` -> (``bear``, light 239/255, beta 0.005)."""
    parts = folder.split("_")
    if len(parts) < 3:
        raise ValueError(folder)
    return "_".join(parts[:-2]), float(parts[-2]) / 255.0, float(parts[-1])


def read_mapping(gt_dataset_dir: Path) -> dict[tuple[str, str], str]:
    mapping = {}
    for file in sorted(gt_dataset_dir.glob("mapping_info_GT_*.txt")):
        for line in file.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                mapping[(fields[0], fields[2])] = fields[1]
                # a hazy folder name (bear_239_0.005) also stands for its clip (bear), and so for every version
                clip = _clip_of(fields[2])
                if clip is not None:
                    mapping.setdefault((fields[0], clip), fields[1])
    return mapping


def _clip_of(folder: str) -> str | None:
    try:
        return parse_clip_name(folder)[0]
    except ValueError:
        return None


def _clips_extracted(root: Path, wanted: set[str]):
    """(split, dataset, hazy dir, gt dir) for the extracted layout."""
    for dataset_dir in sorted(p for p in (root / "hazy").iterdir() if p.is_dir()):
        if wanted and dataset_dir.name not in wanted:
            continue
        mapping = read_mapping(root / "gt" / dataset_dir.name)
        for orig_split_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
            for hazy in sorted(p for p in orig_split_dir.iterdir() if p.is_dir()):
                try:
                    video, _, _ = parse_clip_name(hazy.name)
                except ValueError:
                    yield None, dataset_dir.name, hazy, None
                    continue
                if mapping:
                    split = mapping.get((orig_split_dir.name, hazy.name)) or mapping.get((orig_split_dir.name, video))
                else:
                    split = "test" if orig_split_dir.name.startswith("test") else "train"
                yield split, dataset_dir.name, hazy, root / "gt" / dataset_dir.name / orig_split_dir.name / video


def _clips_symlinked(root: Path, wanted: set[str]):
    for split_dir in sorted(p for p in root.iterdir() if (p / "hazy").is_dir()):
        for dataset_dir in sorted(p for p in (split_dir / "hazy").iterdir() if p.is_dir()):
            if wanted and dataset_dir.name not in wanted:
                continue
            for hazy in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
                yield split_dir.name, dataset_dir.name, hazy, split_dir / "gt" / dataset_dir.name / hazy.name


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    wanted = {d for d in args.datasets.split(",") if d}
    if (root / "hazy").is_dir():
        clips = _clips_extracted(root, wanted)
    elif any((p / "hazy").is_dir() for p in root.iterdir() if p.is_dir()):
        clips = _clips_symlinked(root, wanted)
    else:
        raise VIDiffError(f"{root}: not a HazeWorld folder (expected hazy/<Dataset>/<split>/<clip>/ and gt/)")
    by_split: dict[str, list[Spec]] = {}
    unassigned: list[Spec] = []
    for split, dataset, hazy, gt in clips:
        key = f"{dataset}-{hazy.name}".replace(".", "p")
        if gt is None:
            unassigned.append(Spec(key, {"error": f"{hazy}: folder name is not <video>_<light>_<beta>"}))
            continue
        if split is None:
            unassigned.append(
                Spec(key, {"error": f"{hazy}: clip not listed in {gt.parent.parent}/mapping_info_GT_*.txt"})
            )
            continue
        if args.split and split != args.split:
            continue
        _, light, beta = parse_clip_name(hazy.name)
        by_split.setdefault(split, []).extend(
            paired_specs(
                key, hazy, gt, origin=f"{dataset}/{hazy.name}", max_frames=options.max_frames, beta=beta, light=light
            )
        )
    if unassigned:
        # clips whose split cannot be known are still accounted for: they are reported under the first split
        first = args.split or (sorted(by_split)[0] if by_split else "train")
        by_split.setdefault(first, []).extend(unassigned)
    if not by_split:
        raise VIDiffError(f"{root}: no HazeWorld clips found" + (f" for split {args.split}" if args.split else ""))
    return [Job("dehaze", split, specs) for split, specs in sorted(by_split.items())]


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    if "error" in spec.data:
        raise SkipSample(spec.data["error"])
    instruction = instruction_for("dehaze", rng_for(options.seed, job.task, spec.key))
    meta = {"beta": spec.data["beta"], "light": round(spec.data["light"], 4)}
    return build_frame_pair(job, spec, options, instruction, FPS, meta)
