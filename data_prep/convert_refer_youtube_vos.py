"""``vidiff-prep refer-youtube-vos``: Refer-YouTube-VOS -> ``rvos``.

``--root`` holds ``train/JPEGImages/<vid>/``, ``train/Annotations/<vid>/`` (palette PNGs, pixel = object id)
and ``meta_expressions/train/meta_expressions.json``. Frames are every 5th frame of 30 fps video (6 fps).
Only ``train`` has masks (the valid/test masks are held by the challenge server), so only it can be converted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vidiff.data_prep.rvos_common import build_rvos, object_specs
from vidiff.data_prep.schema import Job, PrepOptions, Sample, Spec
from vidiff.errors import VIDiffError


SOURCE = "refer-youtube-vos"
HELP = "Refer-YouTube-VOS (train) -> rvos"
FPS = 6.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def read_categories(meta_path: Path) -> dict[tuple[str, int], str]:
    """``train/meta.json``: the object category of each (video, object id), kept in the sample metadata."""
    if not meta_path.exists():
        return {}
    try:
        videos = json.loads(meta_path.read_text())["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise VIDiffError(f"{meta_path}: not a Refer-YouTube-VOS meta.json ({err})") from None
    return {
        (vid, int(obj_id)): str(obj["category"])
        for vid, entry in videos.items()
        for obj_id, obj in entry.get("objects", {}).items()
        if str(obj_id).isdigit() and isinstance(obj, dict) and obj.get("category")
    }


def make_jobs(root: Path, args: argparse.Namespace, options: PrepOptions) -> list[Job]:
    split = args.split or "train"
    if split != "train":
        raise VIDiffError(f"--split {split}: Refer-YouTube-VOS publishes masks for train only; convert --split train")
    meta_path = root / "meta_expressions" / split / "meta_expressions.json"
    if not meta_path.exists():
        raise VIDiffError(f"{meta_path}: missing (expected the Refer-YouTube-VOS layout under {root})")
    try:
        videos = json.loads(meta_path.read_text())["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise VIDiffError(f"{meta_path}: not a meta_expressions.json ({err})") from None
    categories = read_categories(root / split / "meta.json")
    specs: list[Spec] = []
    for vid in sorted(videos):
        entry = videos[vid]
        by_object: dict[int, list[str]] = {}
        for exp_id in sorted(entry.get("expressions", {}), key=lambda k: int(k) if k.isdigit() else k):
            expression = entry["expressions"][exp_id]
            text = " ".join(str(expression.get("exp", "")).lower().split())
            if text:
                by_object.setdefault(int(expression["obj_id"]), []).append(text)
        # frame names are zero-padded frame numbers: sorted, as ReferFormer reads them, whatever the file order
        names = sorted(entry.get("frames", []))
        frames = [root / split / "JPEGImages" / vid / f"{n}.jpg" for n in names]
        masks = [root / split / "Annotations" / vid / f"{n}.png" for n in names]
        for obj_id, texts in sorted(by_object.items()):
            key = f"ytvos-{vid}-obj{obj_id}"
            if not names:
                specs.append(Spec(f"{key}-000", {"error": f"{vid}: no frames listed in {meta_path}"}))
                continue
            specs += object_specs(
                key,
                frames,
                masks,
                obj_id,
                texts,
                origin=f"ytvos/{vid}/obj{obj_id}",
                fps=FPS,
                max_frames=options.max_frames,
                **({"category": categories[(vid, obj_id)]} if (vid, obj_id) in categories else {}),
            )
    if not specs:
        raise VIDiffError(f"{meta_path}: no expressions")
    return [Job("rvos", split, specs)]


def build(job: Job, spec: Spec, options: PrepOptions) -> Sample:
    return build_rvos(job, spec, options)
