"""``vidiff-prep ip2p``: InstructPix2Pix's released edit data -> ``edit`` (1-frame samples: the image stage).

``--root`` is the extracted ``clip-filtered-dataset/`` (or ``random-sample-dataset/``) as InstructPix2Pix
publishes it: ``seeds.json`` (a list of ``[name, [seed, ...]]``: the prompts and, for the CLIP-filtered release, the
seeds that passed the CLIP filter) and one folder per prompt, ``<name>/prompt.json`` (``{"input": caption,
"edit": instruction, "output": caption}``) with ``<name>/<seed>_0.jpg`` (before) and ``<name>/<seed>_1.jpg`` (after).
Only the seeds ``seeds.json`` lists are converted; without ``seeds.json`` every ``<seed>_0.jpg`` with its
``_1.jpg`` is. One sample per (prompt, seed): the ``edit`` text is the instruction, the two captions are kept in the
metadata. Splits follow InstructPix2Pix's ``EditDataset``: the first 90 % of the prompts are ``train``, the next
5 % ``val``, the last 5 % ``test``.
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

from vidiff.data_prep.frames import fit_frames, read_image
from vidiff.data_prep.schema import Job, PrepOptions, Sample, SkipSample, Spec, safe_key
from vidiff.errors import VIDiffError


SOURCE = "ip2p"
HELP = "InstructPix2Pix edit data (seeds.json + <name>/prompt.json + <seed>_{0,1}.jpg) -> edit (1-frame samples)"
SPLITS = (("train", 0.0, 0.9), ("val", 0.9, 0.95), ("test", 0.95, 1.0))
FPS = Fraction(1)  # single images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-seeds", type=int, default=None, help="at most this many seeds per prompt")


def read_seeds(root: Path) -> list[tuple[str, list[str]]]:
    """``[(prompt folder, [seed, ...])]`` from ``seeds.json``, or from the image files when it is absent."""
    path = root / "seeds.json"
    if path.exists():
        try:
            entries = json.loads(path.read_text())
            return [(str(name), [str(s) for s in seeds]) for name, seeds in entries]
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise VIDiffError(
                f"{path}: not InstructPix2Pix's seeds.json ([[name, [seed, ...]], ...]): {err}"
            ) from None
    folders = sorted(p for p in root.iterdir() if (p / "prompt.json").exists())
    if not folders:
        raise VIDiffError(
            f"{root}: not an InstructPix2Pix data folder (expected seeds.json and <name>/prompt.json with "
            "<seed>_0.jpg / <seed>_1.jpg beside it)"
        )
    return [(p.name, sorted(f.name[: -len("_0.jpg")] for f in p.glob("*_0.jpg"))) for p in folders]


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    if root.is_file():
        raise VIDiffError(f"{root}: give the folder that holds seeds.json")
    entries = read_seeds(root)
    jobs = []
    for split, lo, hi in SPLITS:
        if args.split and split != args.split:
            continue
        chunk = entries[math.floor(lo * len(entries)) : math.floor(hi * len(entries))]
        specs = []
        for name, seeds in chunk:
            for seed in seeds[: args.max_seeds]:
                folder = root / name
                specs.append(
                    Spec(
                        safe_key(f"ip2p-{name}-{seed}"),
                        {
                            "prompt": str(folder / "prompt.json"),
                            "before": str(folder / f"{seed}_0.jpg"),
                            "after": str(folder / f"{seed}_1.jpg"),
                            "name": name,
                            "seed": seed,
                        },
                    )  # fmt: skip
                )
        if specs:
            jobs.append(Job("edit", split, specs))
    if not jobs:
        raise VIDiffError(f"{root}: no prompts with seeds for split {args.split or 'any'}")
    return jobs


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    data = spec.data
    for what in ("prompt", "before", "after"):
        if not Path(data[what]).exists():
            raise SkipSample(f"missing {Path(data[what]).relative_to(Path(data[what]).parents[1])}")
    try:
        prompt = json.loads(Path(data["prompt"]).read_text())
    except json.JSONDecodeError as err:
        raise SkipSample(f"{data['prompt']}: not JSON ({err})") from None
    instruction = " ".join(str(prompt.get("edit") or "").split())
    if not instruction:
        raise SkipSample(f"{data['prompt']}: no 'edit' instruction")
    before, after = read_image(Path(data["before"])), read_image(Path(data["after"]))
    if before.shape != after.shape:
        raise SkipSample(
            f"before {before.shape[1]}x{before.shape[0]} and after {after.shape[1]}x{after.shape[0]} differ"
        )
    source = fit_frames(before[None], options.short_side)
    target = fit_frames(after[None], options.short_side)
    return Sample(
        key=spec.key,
        task="edit",
        instruction=instruction,
        source=source,
        target=target,
        fps=FPS,
        origin=f"ip2p/{data['name']}/{data['seed']}",
        split=job.split,
        meta={"input_caption": prompt.get("input"), "output_caption": prompt.get("output"), "seed": data["seed"]},
    )
