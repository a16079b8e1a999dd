"""Paired-frame datasets (degraded / clean folders, e.g. BSD and HazeWorld): specs and samples."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from vidiff.data_prep.frames import fit_frames, list_frames, read_frame_files, segments
from vidiff.data_prep.schema import Job, PrepOptions, Sample, SkipSample, Spec


def build_frame_pair(job: Job, spec: Spec, options: PrepOptions, instruction: str, fps: Fraction, meta=None) -> Sample:
    """A restoration sample from two equally long lists of frame files (``spec.data['src']``/``['tgt']``)."""
    src_paths, tgt_paths = spec.data["src"], spec.data["tgt"]
    if len(src_paths) != len(tgt_paths):
        raise SkipSample(f"frame-count mismatch: {len(src_paths)} source vs {len(tgt_paths)} target frames")
    if len(src_paths) < options.min_frames:
        raise SkipSample(f"{len(src_paths)} frame(s), fewer than --min-frames {options.min_frames}")
    source = read_frame_files([Path(p) for p in src_paths])
    target = read_frame_files([Path(p) for p in tgt_paths])
    if source.shape != target.shape:
        raise SkipSample(f"source frames {source.shape[1:3]} and target frames {target.shape[1:3]} differ in size")
    return Sample(
        key=spec.key,
        task=job.task,
        instruction=instruction,
        source=fit_frames(source, options.short_side),
        target=fit_frames(target, options.short_side),
        fps=fps,
        origin=spec.data["origin"],
        split=job.split,
        meta=dict(meta or {}),
    )


def paired_specs(key: str, src_dir: Path, tgt_dir: Path, origin: str, max_frames: int, **extra) -> list[Spec]:
    """Specs over the union of frame names in two folders; a name present on one side only becomes a skip."""
    src = {p.name: p for p in list_frames(src_dir)} if src_dir.is_dir() else {}
    tgt = {p.name: p for p in list_frames(tgt_dir)} if tgt_dir.is_dir() else {}
    if not src or not tgt:
        missing = src_dir if not src else tgt_dir
        return [Spec(f"{key}-000", {"error": f"missing pair: no frames in {missing}"})]
    names = sorted(set(src) | set(tgt))
    specs = []
    for i, (start, end) in enumerate(segments(len(names), max_frames)):
        window = names[start:end]
        unpaired = [n for n in window if n not in src or n not in tgt]
        if unpaired:
            side = tgt_dir if unpaired[0] not in tgt else src_dir
            data = {"error": f"missing pair: {side / unpaired[0]} does not exist ({len(unpaired)} unpaired frame(s))"}
        else:
            data = {
                "src": [str(src[n]) for n in window],
                "tgt": [str(tgt[n]) for n in window],
                "origin": f"{origin}#{start}-{end}",
                **extra,
            }
        specs.append(Spec(f"{key}-{i:03d}", data))
    return specs
