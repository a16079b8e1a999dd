"""``vidiff-prep latents``: shards with the frozen autoencoder's latents of every clip, for U-Net-only training.

After the autoencoder is fixed (Stable Diffusion's as released, or the tiny preset's after its own stage), every
T2V and V2V step would encode the same stored clips again. This writes, beside each shard, a copy that also holds
the posterior (mean and standard deviation) of every frame of its target and source clips::

    vidiff-prep latents --model outputs/vae/model --shards data/ --out data-latents/

    <out>/<task>/<same shard name>      every member of the input sample, plus
        tgt.latent.npy, src.latent.npy  [2, frames, channels, h/k, w/k] (mean, std), unscaled, float16 by default
        json                            gains "latent": {"autoencoder": <fingerprint>, "factor": k, "dtype": ...}
    <out>/<task>/latents.json           the fingerprint and which input shard (size, mtime, SHA-256) each output came from
    <out>/reports/latents.json          samples written and every skip with its reason

Point training at ``<out>`` (``paths.data_dir=<out>``): training batches crop and window the latents and sample
the target posterior per step, and the training module refuses latents whose fingerprint is not its own
autoencoder's. Validation and evaluation read the pixels the latent shards keep, exactly as from ``--shards``.
Frames are encoded at their stored size (cropped to a multiple of ``k`` at the bottom and right), which is the
scale training then sees. Rerunning skips shards already converted from the same input by the same autoencoder
(an input whose size and mtime are unchanged is not read again; otherwise its SHA-256 decides).

``--num-parts N --part i`` converts every N-th input shard from the i-th (one GPU each with ``--launcher slurm``);
a part records what it wrote in its own manifest (``<out>/.vidiff-prep/latents/<run>-part-PPPPP-of-NNNNN.json``),
and the merge (``--merge``, or the end of a one-part or launched run) folds them into each ``latents.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vidiff.data_prep import parts
from vidiff.data_prep.runner import STATE_DIR, ShardFile, update_sizes
from vidiff.errors import VIDiffError
from vidiff.utils.files import write_json_atomic


# torch, diffusers and the model code are imported where used: a submitted part's process and `--help` start fast


log = logging.getLogger(__name__)
HELP = "add the frozen autoencoder's latents to prepared shards (U-Net-only training steps)"
DTYPES = {"float16": np.float16, "float32": np.float32}
MANIFEST = "latents.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a VIDiff model directory or Stable Diffusion folder (its vae/), or an AutoencoderKL folder",
    )
    parser.add_argument(
        "--shards", required=True, help="prepared shards: a data folder of task subfolders, or one task folder"
    )
    parser.add_argument("--out", required=True, help="output folder (task subfolders as in --shards)")
    parser.add_argument(
        "--split",
        default=None,
        help="convert only this split (default: every split; validation reads the pixels the latent shards keep)",
    )
    parser.add_argument("--tasks", default=None, help="comma-separated task folders (default: every one found)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float16", help="stored precision (default %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--chunk-frames", type=int, default=16, help="frames per encoder call (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace latents of another autoencoder in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


_LOAD_LOCK = threading.Lock()


def load_autoencoder(path: Path):
    """``AutoencoderKL`` from a model folder with a ``vae/`` subfolder, or from the autoencoder's own folder."""
    from diffusers import AutoencoderKL

    folder = path / "vae" if (path / "vae").is_dir() else path
    config = folder / "config.json"
    if not config.is_file():
        raise VIDiffError(f"{path}: no autoencoder here (neither vae/config.json nor config.json) (--model)")
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise VIDiffError(f"{config}: invalid JSON ({err})") from None
    if class_name != "AutoencoderKL":
        raise VIDiffError(f"{config}: not an AutoencoderKL (class {class_name!r}) (--model)")
    try:
        # one load at a time: diffusers builds the module inside accelerate's init_empty_weights, which patches
        # torch.nn.Module globally; two threads loading at once can restore each other's patch and leave every
        # later module of the process on the meta device
        with _LOAD_LOCK:
            return AutoencoderKL.from_pretrained(folder, use_safetensors=True, local_files_only=True).eval()
    except (OSError, ValueError) as err:
        raise VIDiffError(f"{folder}: cannot load the autoencoder ({' '.join(str(err).split())[:200]})") from None


def task_folders(shards: Path, split: str, tasks: list[str] | None) -> dict[str, list[Path]]:
    """``{task: [shard, ...]}`` of ``split``: ``shards`` is a folder of task folders, or one task folder."""

    pattern = f"*-{split}-[0-9]*.tar" if split else "*-*-[0-9]*.tar"

    def split_shards(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob(pattern) if p.is_file())

    if split_shards(shards):
        found = {shards.name: split_shards(shards)}
    else:
        found = {p.name: split_shards(p) for p in sorted(shards.iterdir()) if p.is_dir() and split_shards(p)}
    if tasks:
        missing = [t for t in tasks if t not in found]
        if missing:
            raise VIDiffError(f"{shards}: no {split or ''} shards for task(s) {', '.join(missing)} (--tasks)")
        found = {t: found[t] for t in tasks}
    if not found:
        raise VIDiffError(f"{shards}: no {pattern} shards here or in its task folders (--shards, --split)")
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_clip_latents(vae, data: bytes, num_frames: int, factor: int, chunk: int, dtype) -> np.ndarray:
    """An encoded clip -> ``[2, f, c, h/k, w/k]`` (posterior mean, std) of every frame at its stored size."""
    import torch
    from einops import rearrange

    from vidiff.data.shards import decode_frames, to_model_range
    from vidiff.models.autoencoder import latent_posterior

    frames = decode_frames(data, 0, num_frames)
    h, w = frames.shape[1] // factor * factor, frames.shape[2] // factor * factor
    if h == 0 or w == 0:
        raise ValueError(
            f"frames of {frames.shape[1]}x{frames.shape[2]} are smaller than the autoencoder's factor {factor}"
        )
    video = to_model_range(rearrange(torch.from_numpy(frames[:, :h, :w]), "f h w c -> f c h w"))
    mean, std = latent_posterior(vae, video, chunk)
    return torch.stack([mean, std]).cpu().numpy().astype(dtype)


def latent_members(raw: dict[str, Any], vae, info: dict[str, Any], chunk: int, dtype) -> dict[str, Any]:
    """One input sample's members with its latents added (``ValueError``/``KeyError`` for a bad sample)."""
    from vidiff.data.shards import LATENT_SUFFIX

    members = {k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"}
    meta = json.loads(members["json"])
    if "tgt.mp4" not in members:
        raise ValueError("no tgt.mp4 member")
    for name in ("tgt", "src"):
        if f"{name}.mp4" in members:
            stats = encode_clip_latents(
                vae, members[f"{name}.mp4"], int(meta["num_frames"]), info["factor"], chunk, dtype
            )
            members[name + LATENT_SUFFIX] = _npy(stats)
    meta["latent"] = {**info, "height": int(stats.shape[-2]), "width": int(stats.shape[-1])}
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return members


def convert_shard(src: Path, folder: Path, vae, info: dict[str, Any], chunk: int, dtype, bar=None):
    """Write ``folder/<src.name>`` (atomically); returns (samples written, [{"key", "reason"}] skips)."""
    import torch
    import webdataset as wds

    skips: list[dict[str, str]] = []

    def on_error(exn: Exception) -> bool:
        skips.append({"key": f"{src.name}", "reason": f"unreadable tar member ({' '.join(str(exn).split())[:160]})"})
        return True

    shard = ShardFile(folder, src.name)
    try:
        for raw in wds.tarfile_to_samples(handler=on_error)([{"url": str(src)}]):
            key = raw.get("__key__", "?")
            try:
                with torch.no_grad():
                    shard.write(latent_members(raw, vae, info, chunk, dtype))
            except (ValueError, KeyError, json.JSONDecodeError) as err:
                skips.append({"key": key, "reason": " ".join(str(err).split())[:200]})
            if bar is not None:
                bar.update(1)
        written = shard.count
        shard.publish()
    except BaseException:
        shard.abort()
        raise
    return written, skips


def input_fingerprint(src: Path, known: dict[str, Any] | None) -> dict[str, Any]:
    """``{"input_size", "input_mtime_ns", "input_sha256"}`` of ``src``; the SHA-256 is computed only when the size
    or mtime differ from ``known`` (the record of an earlier conversion), whose hash is otherwise taken as is."""
    stat = src.stat()
    found = {"input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}
    if known and all(known.get(k) == v for k, v in found.items()) and known.get("input_sha256"):
        return {**found, "input_sha256": known["input_sha256"]}
    return {**found, "input_sha256": file_sha256(src)}


def _part_path(out: Path, run: str, part: int, num_parts: int) -> Path:
    return out / STATE_DIR / "latents" / f"{run}-{parts.part_tag(part, num_parts)}.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise VIDiffError(f"{path}: invalid JSON ({err}); delete it to convert again") from None


def latest_records(out: Path, tasks) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest record of every output shard of ``tasks`` in ``out``, from the merged manifests and every part
    manifest (a part whose merge never ran counts too), each with the ``autoencoder`` and ``dtype`` it was written
    with. Keyed by (task, shard name); a record read later (by file mtime) replaces an earlier one."""
    sources = [(p.stat().st_mtime_ns, p, t) for t in tasks if (p := out / t / MANIFEST).exists()]
    sources += [(p.stat().st_mtime_ns, p, None) for p in (out / STATE_DIR / "latents").glob("*.json")]
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for _, path, task in sorted(sources, key=lambda source: source[0]):
        saved = _read_json(path)
        tag = {"autoencoder": saved.get("autoencoder"), "dtype": saved.get("dtype")}
        shards = (
            {task: saved.get("shards", {})}
            if task
            else {t: e.get("shards", {}) for t, e in saved.get("tasks", {}).items()}
        )
        for t, entries in shards.items():
            for name, record in entries.items():
                if t in tasks:
                    records[(t, name)] = {**record, **tag}
    return records


def _matching(records: dict, info: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        key: {k: v for k, v in r.items() if k not in ("autoencoder", "dtype")}
        for key, r in records.items()
        if r["autoencoder"] == info["autoencoder"] and r["dtype"] == info["dtype"]
    }


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` while the block runs (none where the file system has no locks)."""
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def run(args, argv: list[str], body=None) -> int:
    """`vidiff-prep latents`; ``body``: the command layer's entry point a submitted part runs (``--launcher``)."""
    if args.chunk_frames < 1:
        raise VIDiffError(f"--chunk-frames must be at least 1 (got {args.chunk_frames})")
    shards_root, out = Path(args.shards), Path(args.out)
    if not shards_root.is_dir():
        raise VIDiffError(f"{shards_root}: no such folder (--shards)")
    if out.resolve() == shards_root.resolve():
        raise VIDiffError(f"{out}: --out must differ from --shards (the latent shards keep the input's names)")
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    found = task_folders(shards_root, args.split, tasks)
    run_id, num_parts = parts.run_id(args), args.num_parts
    if args.launcher != "none":

        def done(part: int) -> bool:
            path = _part_path(out, run_id, part, num_parts)
            return path.exists() and bool(_read_json(path).get("complete"))

        parts.launch(argv, args, out, "latents", done, body)
        return merge(out, found, run_id, num_parts, args)
    if args.merge:
        return merge(out, found, run_id, num_parts, args)
    part = parts.resolve_part(args)
    convert_part(args, out, found, run_id, part, num_parts)
    if num_parts == 1:
        return merge(out, found, run_id, num_parts, args)
    print(f"part {part} of {num_parts} done; when every part is: the same command with --merge instead of --part")
    return 0


def convert_part(args, out: Path, found: dict[str, list[Path]], run_id: str, part: int, num_parts: int) -> None:
    """Convert every ``num_parts``-th input shard from the ``part``-th, recording each in the part's manifest."""
    import torch
    from tqdm.auto import tqdm

    from vidiff.models.autoencoder import autoencoder_fingerprint, downsample_factor
    from vidiff.utils.device import pick_device

    device = pick_device(args.device)
    vae = load_autoencoder(Path(args.model)).to(device)
    info = {
        "autoencoder": autoencoder_fingerprint(vae),
        "factor": downsample_factor(vae),
        "dtype": args.dtype,
        "scaling_factor": float(vae.config.scaling_factor),
    }
    for task in found:
        manifest_path = out / task / MANIFEST
        manifest = _read_json(manifest_path) if manifest_path.exists() else {}
        if manifest and manifest.get("autoencoder") != info["autoencoder"] and not args.overwrite:
            raise VIDiffError(
                f"{out / task}: holds latents of autoencoder {manifest.get('autoencoder')}, not of this model's "
                f"{info['autoencoder']}; pass --overwrite to replace them, or choose another --out"
            )
    earlier = _matching(latest_records(out, found), info)
    mine = [(task, src) for task, inputs in found.items() for src in inputs][part::num_parts]
    part_path = _part_path(out, run_id, part, num_parts)
    state: dict[str, Any] = {
        **info,
        "run": run_id,
        "part": part,
        "num_parts": num_parts,
        "complete": False,
        "tasks": {task: {"shards": {}, "written": 0, "skipped": 0, "reused": 0, "skips": []} for task in found},
    }
    write_json_atomic(part_path, state)
    dtype = DTYPES[args.dtype]
    bar = tqdm(desc=f"latents part {part}/{num_parts}", unit="clip", disable=args.quiet)
    with torch.no_grad():
        for task, src in mine:
            folder = out / task
            folder.mkdir(parents=True, exist_ok=True)
            entry = state["tasks"][task]
            known = earlier.get((task, src.name))
            source = input_fingerprint(src, known)
            if known and known.get("input_sha256") == source["input_sha256"] and (folder / src.name).exists():
                entry["shards"][src.name] = {**known, **source}
                entry["reused"] += 1
            else:
                written, skips = convert_shard(src, folder, vae, info, args.chunk_frames, dtype, bar)
                entry["shards"][src.name] = {**source, "samples": written, "skipped": len(skips)}
                entry["written"] += written
                entry["skipped"] += len(skips)
                entry["skips"] += skips
            write_json_atomic(part_path, state)  # this shard is done whatever happens next
    bar.close()
    state["complete"] = True
    write_json_atomic(part_path, state)


def merge(out: Path, found: dict[str, list[Path]], run_id: str, num_parts: int, args) -> int:
    """Fold the run's part manifests into each task's ``latents.json`` and ``sizes.json``; write the report."""
    saved, problems = [], {}
    for part in range(num_parts):
        path = _part_path(out, run_id, part, num_parts)
        state = _read_json(path) if path.exists() else None
        if state is None:
            problems[part] = "missing"
        elif not state.get("complete"):
            problems[part] = "unfinished"
        else:
            saved.append(state)
    if problems:
        raise parts.missing_parts_error(f"latents in {out}", problems, num_parts)
    info = {k: saved[0][k] for k in ("autoencoder", "factor", "dtype", "scaling_factor")}
    report: dict[str, Any] = {"autoencoder": info["autoencoder"], "split": args.split or "all", "tasks": {}}
    total = 0
    for task, inputs in found.items():
        folder = out / task
        manifest_path = folder / MANIFEST
        names = {src.name for src in inputs}
        # one merge at a time per folder: runs of other splits or tasks may merge into it at the same moment
        with _locked(folder / ".latents.json.lock"):
            old = _read_json(manifest_path) if manifest_path.exists() else {}
            if old and old.get("autoencoder") != info["autoencoder"]:  # --overwrite: the other autoencoder's go
                for stale in set(old.get("shards", {})) - names:
                    (folder / stale).unlink(missing_ok=True)
            records = {
                name: record
                for (t, name), record in _matching(latest_records(out, [task]), info).items()
                if t == task and (folder / name).exists()
            }
            absent = sorted(n for n in names if n not in records)
            if absent:
                raise VIDiffError(f"{folder / absent[0]}: no part of this run converted it ({len(absent)} shard(s))")
            write_json_atomic(manifest_path, {**info, "shards": dict(sorted(records.items()))})
        update_sizes(folder, {n: records[n]["samples"] for n in sorted(names)})
        entry = {"written": 0, "skipped": 0, "reused": 0, "skips": []}
        for state in saved:
            part_entry = state["tasks"].get(task, {})
            for key in ("written", "skipped", "reused", "skips"):
                entry[key] += part_entry.get(key, 0 if key != "skips" else [])
        total += sum(records[n]["samples"] for n in names)
        report["tasks"][task] = entry
        reused = f", {entry['reused']} shard(s) already converted" if entry["reused"] else ""
        print(f"{task}: {entry['written']} written, {entry['skipped']} skipped{reused}")
        for skip in entry["skips"][:5]:
            print(f"  skipped {skip['key']}: {skip['reason']}")
        if entry["skipped"] > 5:
            print(f"  ... {entry['skipped'] - 5} more skip(s) in the report")
    report["num_parts"] = num_parts
    report_path = write_json_atomic(out / "reports" / "latents.json", report)
    print(f"autoencoder {info['autoencoder']} (factor {info['factor']}); report: {report_path}")
    if total == 0:
        raise VIDiffError(f"{args.shards}: no sample could be encoded (see {report_path})")
    return 0
