"""``vidiff-prep ref-davis``: Ref-DAVIS17 (DAVIS-2017 + Khoreva et al. expressions) -> ``rvos``.

``--root`` is ReferFormer's ``ref-davis/`` folder (``DAVIS/`` and ``davis_text_annotations/`` side by side) or
the ``DAVIS/`` folder itself: ``JPEGImages/480p/<seq>/``, ``Annotations_unsupervised/480p/<seq>/`` (the object
ids the expressions refer to; ``Annotations/480p`` is used, with a note, when it is missing),
``ImageSets/2017/{train,val}.txt``, and the four ``Davis17_annot{1,2}[_full_video].txt`` files in
``davis_text_annotations/`` beside or inside ``DAVIS/`` (or ``--text-dir``). Lines are ``<video> <obj_id> "<expression>"``; annotator 2's
files are latin-1; three misspelled video names are corrected as in ReferFormer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vidiff.data_prep.frames import list_frames
from vidiff.data_prep.rvos_common import build_rvos, object_specs
from vidiff.data_prep.schema import Job, PrepOptions, Sample, Spec
from vidiff.errors import VIDiffError


SOURCE = "ref-davis"
HELP = "Ref-DAVIS17 -> rvos (overlay targets, masks kept for J&F)"
TEXT_FILES = (
    ("Davis17_annot1.txt", "utf-8"),
    ("Davis17_annot1_full_video.txt", "utf-8"),
    ("Davis17_annot2.txt", "latin-1"),
    ("Davis17_annot2_full_video.txt", "latin-1"),
)
NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
SPLITS = {"train": "train", "val": "val"}
FPS = 24.0  # DAVIS sequences are 24 fps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text-dir",
        default=None,
        help="folder of the Davis17_annot*.txt files (default: davis_text_annotations/ beside or inside DAVIS/)",
    )
    parser.add_argument("--resolution", default="480p", help="480p or Full-Resolution")


def read_expressions(text_dir: Path) -> tuple[dict[tuple[str, int], list[str]], list[str]]:
    """{(video, obj_id): [expressions in file order]} and the list of files found."""
    expressions: dict[tuple[str, int], list[str]] = {}
    found = []
    for name, encoding in TEXT_FILES:
        path = text_dir / name
        if not path.exists():
            continue
        found.append(name)
        for line in path.read_text(encoding=encoding).splitlines():
            fields = line.split()
            if len(fields) < 3 or not fields[1].isdigit():
                continue
            video = NAME_FIXES.get(fields[0], fields[0])
            text = " ".join(fields[2:]).strip().strip('"').strip()
            if text:
                expressions.setdefault((video, int(fields[1])), []).append(" ".join(text.lower().split()))
    return expressions, found


LAYOUTS = (
    "ReferFormer's docs/data.md: ref-davis/{DAVIS/{JPEGImages,Annotations_unsupervised,ImageSets}, "
    "davis_text_annotations/} (--root ref-davis or --root ref-davis/DAVIS)",
    "one folder: DAVIS/{JPEGImages,Annotations_unsupervised,ImageSets,davis_text_annotations} (--root DAVIS)",
)


def locate(root: Path, resolution: str, text_dir: str | None) -> tuple[Path, Path]:
    """``(DAVIS folder, expression folder)`` from the folder a user would pass, in either known layout."""
    davis = next((d for d in (root, root / "DAVIS") if (d / "JPEGImages" / resolution).is_dir()), None)
    if davis is None:
        raise VIDiffError(
            f"{root}: no DAVIS frames (JPEGImages/{resolution}/ in it or in DAVIS/); expected one of: "
            + "; ".join(LAYOUTS)
        )
    if text_dir is not None:
        return davis, Path(text_dir)
    candidates = [davis / "davis_text_annotations", davis.parent / "davis_text_annotations"]
    for candidate in candidates:
        if any((candidate / name).exists() for name, _ in TEXT_FILES):
            return davis, candidate
    raise VIDiffError(
        f"{root}: no Davis17_annot*.txt expression files in {' or '.join(str(c) for c in candidates)} "
        f"(pass --text-dir); expected one of: " + "; ".join(LAYOUTS)
    )


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    root, text_dir = locate(root, args.resolution, args.text_dir)
    images_root = root / "JPEGImages" / args.resolution
    masks_root = root / "Annotations_unsupervised" / args.resolution
    if not masks_root.is_dir():
        # Ref-DAVIS17's object ids follow the unsupervised annotations; the semi-supervised ones number objects
        # differently for some videos, so falling back is said out loud
        print(
            f"vidiff-prep: note: {masks_root} not found; reading masks from Annotations/{args.resolution} "
            "(object ids may not match the expressions for some videos)",
            file=sys.stderr,
        )
        masks_root = root / "Annotations" / args.resolution
    expressions, found = read_expressions(text_dir)
    if not found:
        raise VIDiffError(f"{text_dir}: no Davis17_annot*.txt expression files (pass --text-dir)")
    jobs = []
    for split, list_name in SPLITS.items():
        if args.split and split != args.split:
            continue
        list_file = root / "ImageSets" / "2017" / f"{list_name}.txt"
        if not list_file.exists():
            continue
        specs: list[Spec] = []
        for video in [v.strip() for v in list_file.read_text().splitlines() if v.strip()]:
            objects = sorted(obj for (v, obj) in expressions if v == video)
            frames = list_frames(images_root / video) if (images_root / video).is_dir() else []
            for obj_id in objects:
                key = f"davis-{video}-obj{obj_id}"
                if not frames:
                    specs.append(Spec(f"{key}-000", {"error": f"missing frames: {images_root / video}"}))
                    continue
                masks = [masks_root / video / f"{p.stem}.png" for p in frames]
                specs += object_specs(
                    key,
                    frames,
                    masks,
                    obj_id,
                    expressions[(video, obj_id)],
                    origin=f"DAVIS/{video}/obj{obj_id}",
                    fps=FPS,
                    max_frames=options.max_frames,
                )
        if specs:
            jobs.append(Job("rvos", split, specs))
    if not jobs:
        raise VIDiffError(f"{root}: no videos with expressions in ImageSets/2017/{{train,val}}.txt")
    return jobs


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    return build_rvos(job, spec, options)
