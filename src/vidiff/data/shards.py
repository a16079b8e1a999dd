"""Reading VIDiff shards: URL resolution and decoding one raw sample into tensors.

The sample format is written by ``data_prep`` (see ``data_prep/README.md``): ``src.mp4``/``tgt.mp4`` clips,
``txt`` instruction, ``json`` metadata, optional ``mask.npy.gz`` and ``style.png``. Decoding reads only the
frames of the chosen window, so a long stored clip costs little more than a short one.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from PIL import Image

from vidiff.data.tasks import redraw_instruction
from vidiff.errors import VIDiffError
from vidiff.prompts import continuation_instruction


log = logging.getLogger(__name__)


def resolve_urls(urls: str | Sequence[str], split: str | None = None, source: str | None = None) -> list[str]:
    """Shard URLs from a brace pattern, a glob, a ``pipe:``/remote URL, a folder, or a list of those.

    A folder expands to its ``<source>-<split>-NNNNNN.tar`` shards (any source when ``source`` is None; every
    ``.tar`` when no split is given either). Local patterns that match nothing raise a one-line error naming the
    pattern.
    """
    import braceexpand

    items = [str(urls)] if isinstance(urls, str | os.PathLike) else list(urls)
    resolved: list[str] = []
    for item in items:
        item = str(item)
        if re.match(r"^[a-z0-9+]+:", item) and not re.match(r"^[A-Za-z]:\\", item):  # pipe:, s3:, http(s):, file:
            resolved.extend(braceexpand.braceexpand(item))
            continue
        if os.path.isdir(item):
            prefix = source or "*"
            pattern = os.path.join(item, f"{prefix}-{split}-[0-9]*.tar" if split else f"{prefix}-*.tar")
            found = sorted(glob.glob(pattern))
            if not found:
                raise VIDiffError(f"{item}: no shards matching {os.path.basename(pattern)}")
            resolved.extend(found)
            continue
        for expanded in braceexpand.braceexpand(item):
            found = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            missing = [f for f in found if not os.path.exists(f)]
            if not found or missing:
                raise VIDiffError(f"{missing[0] if missing else expanded}: no such shard")
            resolved.extend(found)
    if not resolved:
        raise VIDiffError(f"no shards given ({urls!r})")
    return resolved


def local_path(url: str) -> str | None:
    """The file a shard URL names, or None for a ``pipe:``/remote URL (read as a stream)."""
    if url.startswith("file:"):
        return url[len("file:") :]
    if re.match(r"^[a-z0-9+]+:", url) and not re.match(r"^[A-Za-z]:\\", url):
        return None
    return url


def _sample_members(tar: tarfile.TarFile) -> Iterator[tuple[int, str, str, tarfile.TarInfo]]:
    """``(sample index, key, suffix, member)`` of a shard's files, grouped as webdataset groups them: a sample is a
    run of files whose names agree up to the first dot of the base name; ``__meta__`` files are not samples."""
    from webdataset.tariterators import base_plus_ext

    index, current = -1, None
    for member in tar:
        tar.members = []  # tarfile keeps every header it read otherwise
        name = member.name
        if not member.isreg() or re.match(r"__[^/]*__($|/)", name):
            continue
        key, suffix = base_plus_ext(name)
        if key is None:
            continue
        if key != current:
            index, current = index + 1, key
        yield index, key, suffix.lower(), member


def _open_tar(url: str):
    path = local_path(url)
    if path is not None:  # random access: members that are not wanted are seeked over, never read
        handle = open(path, "rb")
        return handle, tarfile.open(fileobj=handle, mode="r:*")
    import webdataset as wds

    handle = wds.gopen(url)
    return handle, tarfile.open(fileobj=handle, mode="r|*")


def tar_samples(url: str, start: int = 0, wanted: Collection[int] | None = None) -> Iterator[tuple[int, dict]]:
    """``(index, raw sample)`` of one shard from sample ``start`` on (only the ``wanted`` indices when given), as
    webdataset's ``tarfile_to_samples`` gives them (``__key__``, ``__url__``, one bytes entry per member suffix).

    The members of the samples passed over are skipped unread: a local shard seeks over them, a stream reads past
    them without keeping them. Reading stops after the last wanted sample.
    """
    stop = max(wanted) + 1 if wanted else None
    if wanted is not None and not wanted:
        return
    handle, tar = _open_tar(url)
    with handle, tar:
        index, sample = -1, None
        for index, key, suffix, member in _sample_members(tar):
            if sample is not None and key != sample["__key__"]:
                yield sample.pop("__index__"), sample
                sample = None
            if stop is not None and index >= stop:
                return
            if index < start or (wanted is not None and index not in wanted):
                continue
            if sample is None:
                sample = {"__key__": key, "__url__": url, "__index__": index}
            if suffix in sample:
                raise ValueError(f"{url}: sample {key} has two {suffix!r} members")
            sample[suffix] = tar.extractfile(member).read()
        if sample is not None:
            yield sample.pop("__index__"), sample


def count_samples(url: str) -> int:
    """How many samples a shard holds, from its tar headers alone (a local shard's member data is never read)."""
    handle, tar = _open_tar(url)
    with handle, tar:
        return 1 + max((index for index, *_ in _sample_members(tar)), default=-1)


def shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard as ``vidiff-prep`` records them in the ``sizes.json`` beside local shards (the open_clip
    convention); shards without an entry are left out (:class:`~vidiff.data.mixing.TaskStream` counts those)."""
    folders: dict[str, dict[str, int]] = {}
    sizes = {}
    for url in urls:
        path = local_path(url)
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in folders:
            try:
                with open(os.path.join(folder, "sizes.json")) as f:
                    folders[folder] = {str(k): int(v) for k, v in json.load(f).items()}
            except (OSError, ValueError, AttributeError):
                folders[folder] = {}
        count = folders[folder].get(os.path.basename(path))
        if count is not None:
            sizes[url] = count
    return sizes


def mean_sample_bytes(urls: Sequence[str], sizes: dict[str, int], probe: int = 4) -> float:
    """The mean size of a raw sample as a shard holds it (file bytes over samples): from every local shard with a
    known size, else from the headers of the first ``probe`` shards (a remote one is read through once)."""
    known = [u for u in urls if u in sizes and sizes[u] > 0 and local_path(u) is not None]
    if known:
        return sum(os.path.getsize(local_path(u)) for u in known) / sum(sizes[u] for u in known)
    total_bytes = total_samples = 0
    for url in list(urls)[:probe]:
        path = local_path(url)
        if path is not None:
            total_bytes, total_samples = total_bytes + os.path.getsize(path), total_samples + count_samples(url)
            continue
        for _, sample in tar_samples(url):
            total_bytes += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
            total_samples += 1
    if not total_samples:
        raise VIDiffError(f"{urls[0]}: no samples in the first {min(probe, len(urls))} shard(s)")
    return total_bytes / total_samples


def decode_frames(data: bytes, start: int, count: int, stride: int = 1) -> np.ndarray:
    """Frames ``start, start + stride, ...`` (``count`` of them) of an encoded clip as ``[f, h, w, 3]`` uint8."""
    wanted = set(range(start, start + count * stride, stride))
    last = max(wanted)
    frames = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if index >= last:
                break
    if not frames:
        raise ValueError("clip has no decodable frames")
    while len(frames) < count:  # clips shorter than the window repeat their last frame
        frames.append(frames[-1])
    return np.stack(frames)


def decode_mask(data: bytes, width: int) -> np.ndarray:
    packed = np.load(io.BytesIO(gzip.decompress(data)), allow_pickle=False)
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


@dataclass
class ClipOptions:
    """How a stored clip becomes a training example."""

    num_frames: int = 16
    frame_stride: int = 1
    resolution: int = 256
    crop_scale: tuple[float, float] = (0.8, 1.0)  # side of the random square crop, relative to the short side
    hflip: bool = False  # off by default: "the left dog" must stay on the left
    image_prob: float = 0.0  # probability of an image instruction drawn from a target frame
    long_video_prob: float = 0.0  # probability of the "Based on the first n frames," continuation sample
    long_video_frames: Sequence[int] = (1, 2, 4)
    paraphrase: bool = True  # re-draw the instruction among the task's templates
    train: bool = True  # False: first window, centre crop, stored instruction, no random image instruction
    # training reads a latent shard's cached latents (vidiff-prep latents): None when the sample has them, True
    # always (a sample without them is a configuration error), False never (its kept pixels are encoded on the fly)
    latents: bool | None = None


def _crop_resize(frames: torch.Tensor, box: tuple[int, int, int], size: int, nearest: bool = False) -> torch.Tensor:
    """uint8/bool ``[f, c, h, w]`` -> the square crop ``box = (top, left, side)`` resized to ``size``.

    Resizing stays in uint8: torchvision's uint8 antialiased kernel is about 3x faster than float on CPU, and
    the batch stays 4x smaller until the GPU converts it (see :func:`to_model_range`).
    """
    import torchvision.transforms.v2.functional as TF

    top, left, side = box
    crop = frames[..., top : top + side, left : left + side]
    if side == size:
        return crop.contiguous()
    if nearest:
        return TF.resize(crop, [size, size], interpolation=TF.InterpolationMode.NEAREST_EXACT)
    return TF.resize(crop, [size, size], antialias=True)


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 videos from the datamodule -> float in [-1, 1] (done on the training device)."""
    return video.float().div(127.5).sub(1.0)


def _augment_image(frame: torch.Tensor, rng: random.Random, size: int) -> torch.Tensor:
    """A target frame ``[3, h, w]`` in [0, 1] as an image instruction: random crop, flip and small rotation."""
    import torchvision.transforms.v2.functional as TF

    h, w = frame.shape[-2:]
    side = int(min(h, w) * rng.uniform(0.6, 1.0))
    top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    image = frame[:, top : top + side, left : left + side]
    if rng.random() < 0.5:
        image = image.flip(-1)
    image = TF.rotate(image, rng.uniform(-15.0, 15.0))
    return torch.nn.functional.interpolate(
        image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]


LATENT_SUFFIX = ".latent.npy"  # ``tgt.latent.npy`` / ``src.latent.npy``: written by ``vidiff-prep latents``


def is_latent_sample(raw: dict[str, Any]) -> bool:
    return "tgt" + LATENT_SUFFIX in raw


def reads_latents(raw: dict[str, Any], task: str, options: ClipOptions) -> bool:
    """Whether a training sample is read as latents, per the task's ``latents`` option (validation: never)."""
    if not options.train:
        return False
    has = is_latent_sample(raw)
    if options.latents is None:
        return has
    if options.latents and not has:
        raise VIDiffError(
            f"data task {task!r} has latents: true, but sample {raw.get('__key__', '?')} holds no latents: point its "
            "urls at the output of `vidiff-prep latents`, or set latents: false to encode its pixels on the fly"
        )
    return bool(options.latents)


def decode_sample(
    raw: dict[str, Any], task: str, options: ClipOptions, rng: random.Random | None = None
) -> dict[str, Any]:
    """A raw WebDataset sample (bytes per member) -> tensors for one training or validation example.

    Returns ``target`` ``[3, F, S, S]`` uint8 (see :func:`to_model_range`), ``source`` (absent for ``t2v``), ``instruction``,
    ``image`` ``[3, S, S]`` in [0, 1] with ``has_image``, ``mask`` ``[F, S, S]`` for ``rvos``, ``key``, ``task``.
    A latent sample (see :func:`decode_latent_sample`) gives latents instead of ``target`` and ``source`` when
    training, unless ``options.latents`` is false (:func:`reads_latents`); validation (``options.train`` false)
    reads the pixels it keeps beside them.
    """
    rng = rng or random.Random()
    if reads_latents(raw, task, options):
        return decode_latent_sample(raw, task, options, rng)
    meta = json.loads(raw["json"])
    options = fit_stride(options, int(meta["num_frames"]))
    start = _window_start(meta, options, rng)
    target = decode_frames(raw["tgt.mp4"], start, options.num_frames, options.frame_stride)
    source = (
        decode_frames(raw["src.mp4"], start, options.num_frames, options.frame_stride) if "src.mp4" in raw else None
    )
    mask = None
    if "mask.npy.gz" in raw:
        full = decode_mask(raw["mask.npy.gz"], int(meta["width"]))
        mask = full[_frame_indices(start, options, len(full))]

    h, w = target.shape[1:3]
    short = min(h, w)
    if options.train:
        side = max(8, int(short * rng.uniform(*options.crop_scale)))
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    else:
        side = short
        top, left = (h - side) // 2, (w - side) // 2
    box = (top, left, side)
    flip = options.train and options.hflip and rng.random() < 0.5

    def prepare(frames: np.ndarray) -> torch.Tensor:
        video = _crop_resize(rearrange(torch.from_numpy(frames), "f h w c -> f c h w"), box, options.resolution)
        video = rearrange(video, "f c h w -> c f h w")
        return video.flip(-1) if flip else video

    out: dict[str, Any] = {"key": raw["__key__"], "task": task, "target": prepare(target)}
    if source is not None:
        out["source"] = prepare(source)
    if mask is not None:
        m = (
            _crop_resize(torch.from_numpy(mask)[:, None].to(torch.uint8), box, options.resolution, nearest=True)[:, 0]
            > 0
        )
        out["mask"] = m.flip(-1) if flip else m

    def target_frame(index: int) -> torch.Tensor:
        return out["target"][:, index].float() / 255.0

    return _instruction_and_image(out, raw, meta, task, options, rng, target_frame)


def fit_stride(options: ClipOptions, stored: int) -> ClipOptions:
    """``options`` with the largest frame stride, up to ``frame_stride``, whose window fits in a clip of ``stored``
    frames: a clip too short for the asked stride is sampled more densely instead of ending in repeated frames (a
    clip shorter than ``num_frames`` still repeats its last frame)."""
    if options.frame_stride <= 1 or options.num_frames <= 1:
        return options
    fits = max(1, (stored - 1) // (options.num_frames - 1))
    return options if fits >= options.frame_stride else replace(options, frame_stride=fits)


def _window_start(meta: dict[str, Any], options: ClipOptions, rng: random.Random) -> int:
    span = (options.num_frames - 1) * options.frame_stride + 1
    return rng.randint(0, max(0, int(meta["num_frames"]) - span)) if options.train else 0


def _frame_indices(start: int, options: ClipOptions, stored: int) -> list[int]:
    """The window's frame indices; clips shorter than the window repeat their last frame."""
    return [min(start + i * options.frame_stride, stored - 1) for i in range(options.num_frames)]


def decode_latent_sample(raw: dict[str, Any], task: str, options: ClipOptions, rng: random.Random) -> dict[str, Any]:
    """A sample of a latent shard (``vidiff-prep latents``) -> the posterior of the chosen window and crop.

    Returns ``target_latents`` and ``target_latents_std`` ``[c, F, s, s]`` (unscaled posterior mean and standard
    deviation, ``s = resolution / k`` for the autoencoder's factor ``k``), ``source_latents`` (the mean, what
    ``encode_video`` gives a source), ``autoencoder`` (the fingerprint that wrote them) and the same instruction,
    image and long-video fields as :func:`decode_sample`.

    The latents were encoded once from the stored frames, so a crop is a window of whole latents at the stored
    scale: ``crop_scale``'s rescaling does not apply, and ``hflip`` is refused (a flipped latent is not the latent of
    the flipped frame).
    """
    if options.hflip and options.train:
        raise VIDiffError("data: hflip cannot be applied to latent shards (a flipped latent is not the latent of "
                          "the flipped frame); set hflip: false or train from the pixel shards")  # fmt: skip
    meta = json.loads(raw["json"])
    options = fit_stride(options, int(meta["num_frames"]))
    latent = meta.get("latent") or {}
    factor = int(latent.get("factor", 0))
    if factor < 1:
        raise ValueError("latent sample without its latent.factor in the json member")
    if options.resolution % factor:
        raise VIDiffError(
            f"data.resolution={options.resolution} is not a multiple of the latent shards' factor {factor}"
        )
    side = options.resolution // factor
    target_stats = np.load(io.BytesIO(raw["tgt" + LATENT_SUFFIX]), allow_pickle=False)  # [2, f, c, h, w]
    start = _window_start(meta, options, rng)
    index = _frame_indices(start, options, target_stats.shape[1])
    h, w = target_stats.shape[-2:]
    if side > min(h, w):
        raise ValueError(f"latent clip {h}x{w} is smaller than the {side}x{side} crop of data.resolution")
    if options.train:
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    else:
        top, left = (h - side) // 2, (w - side) // 2

    def window(stats: np.ndarray) -> torch.Tensor:
        crop = stats[:, index, :, top : top + side, left : left + side]
        return rearrange(torch.from_numpy(crop.astype(np.float32)), "two f c h w -> two c f h w")

    target_mean, target_std = window(target_stats)
    out: dict[str, Any] = {
        "key": raw["__key__"],
        "task": task,
        "target_latents": target_mean,
        "target_latents_std": target_std,
        "autoencoder": str(latent.get("autoencoder", "")),
    }
    source_member = "src" + LATENT_SUFFIX
    if source_member in raw:
        out["source_latents"] = window(np.load(io.BytesIO(raw[source_member]), allow_pickle=False))[0]
    if "mask.npy.gz" in raw:
        full = decode_mask(raw["mask.npy.gz"], int(meta["width"]))
        px = slice(top * factor, (top + side) * factor), slice(left * factor, (left + side) * factor)
        out["mask"] = torch.from_numpy(full[index][:, px[0], px[1]].copy())

    def target_frame(i: int) -> torch.Tensor:
        # only an image instruction drawn from the target needs pixels: one frame of the stored clip, same crop
        frame = decode_frames(raw["tgt.mp4"], index[i], 1)[0]
        crop = frame[top * factor : (top + side) * factor, left * factor : (left + side) * factor]
        return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0

    return _instruction_and_image(out, raw, meta, task, options, rng, target_frame)


def _instruction_and_image(
    out: dict[str, Any], raw: dict[str, Any], meta: dict[str, Any], task: str, options: ClipOptions,
    rng: random.Random, target_frame,
) -> dict[str, Any]:  # fmt: skip
    """The fields pixel and latent samples share: instruction (re-drawn), image instruction, long-video sample."""
    text = raw["txt"].decode("utf-8") if isinstance(raw["txt"], bytes) else str(raw["txt"])
    if options.train and options.paraphrase:
        text = redraw_instruction(task, text, meta, rng)

    # image instruction: the sample's style image, else (sometimes) an augmented target frame
    image, has_image = None, False
    if "style.png" in raw:
        style = np.array(Image.open(io.BytesIO(raw["style.png"])).convert("RGB"))
        image = torch.from_numpy(style).permute(2, 0, 1).float() / 255.0
        image = torch.nn.functional.interpolate(
            image[None], size=(options.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False
        )[0]
        has_image = True
    elif options.train and rng.random() < options.image_prob:
        frame = target_frame(rng.randrange(options.num_frames))
        image, has_image = _augment_image(frame, rng, options.resolution), True
    out["image"] = image if image is not None else torch.zeros(3, options.resolution, options.resolution)
    out["has_image"] = has_image

    # long-video training: the first n source frames become target frames, and the instruction says so
    source_key, target_key = ("source", "target") if "source" in out else ("source_latents", "target_latents")
    if options.train and source_key in out and rng.random() < options.long_video_prob:
        n = min(rng.choice(list(options.long_video_frames)), options.num_frames - 1)
        if n > 0:
            # a latent source is the posterior mean, which is exactly the target's mean for the same frame
            out[source_key] = out[source_key].clone()
            out[source_key][:, :n] = out[target_key][:, :n]
            text = continuation_instruction(text, n, template=rng.randrange(2))
            out["num_reference_frames"] = n
    out.setdefault("num_reference_frames", 0)
    out["instruction"] = text
    out["fps"] = meta.get("fps", "25")
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings and numbers as lists (every sample of a batch has the same task and keys)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    batch["task"] = samples[0]["task"]
    return batch


def warn_and_count(counter: dict[str, int]):
    """A WebDataset error handler that logs every bad sample (with its shard) and counts it; never silent."""

    def handler(exn: Exception) -> bool:
        if isinstance(exn, VIDiffError):  # a configuration the shards cannot serve, not one bad sample
            raise exn
        counter["errors"] = counter.get("errors", 0) + 1
        log.warning("skipping a bad sample (%d so far): %s", counter["errors"], " ".join(str(exn).split())[:200])
        return True

    return handler
