"""Autoregressive editing of videos of any length, streaming clip by clip.

Clip 1 is translated normally. How clip k+1 continues clip k (``carry``):

- ``reference``: VIDiff's scheme. The first ``overlap`` source frames are replaced by the last ``overlap``
  translated frames of clip k and the instruction gets the "Based on the first n frames," prefix. Only a model
  trained with such samples (a V2V stage with ``data.long_video_prob > 0``) knows to keep those frames: any other
  edits them a second time.
- ``latent``: needs no such training. Clip k+1 starts with the last ``overlap`` *source* frames of clip k, and for
  the first part of the sampling steps their latents are held to clip k's final latents (noised to each step's
  level), so the new frames are denoised around, and continue, what clip k produced (in the spirit of InsV2V's
  long-video sampling correction). The default for models that never learned reference frames (released
  InstructPix2Pix weights).
- ``none``: independent clips, no carry-over (the baseline the seam metric compares with).
- ``auto``: ``latent`` when the model records that it was never trained with reference frames, else ``reference``.

Frames are decoded, translated and encoded one clip at a time, so peak memory does not grow with the length of the
video.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vidiff.errors import VIDiffError
from vidiff.overlay import color_in_instruction, color_rgb, overlay_to_mask
from vidiff.pipelines.checks import check_long_video
from vidiff.prompts import continuation_instruction
from vidiff.utils.files import publish
from vidiff.utils.frames import resize_frames, working_size


def resolve_carry(carry: str, model) -> str:
    """The long-video scheme ``carry`` names; ``auto`` reads what the model records about its training."""
    check_long_video(carry=carry)
    if carry != "auto":
        return carry
    return "latent" if getattr(model, "reference_frames", None) == () else "reference"


def num_clips(num_frames: int, clip_length: int, overlap: int) -> int:
    """Clips needed for ``num_frames``: the first covers ``clip_length`` frames, each later one ``clip_length - overlap`` new ones."""
    if num_frames <= 0:
        return 0
    if num_frames <= clip_length:
        return 1
    return 1 + math.ceil((num_frames - clip_length) / (clip_length - overlap))


class EditInterrupted(Exception):
    """A step callback set ``pipe.interrupt``: the edit stopped after that step, and nothing was written."""


@dataclass
class EditSummary:
    """What :meth:`VIDiffPipeline.edit_video` did."""

    num_frames: int = 0
    num_clips: int = 0
    size: tuple[int, int] | None = None  # output (h, w)
    output: Path | None = None
    masks_dir: Path | None = None
    audio_copied: bool = False
    decode_error: str | None = None  # set when the input's video stream ended in a decoding error
    frames: np.ndarray | None = field(default=None, repr=False)  # only when no output path was given


def iter_edited_clips(
    pipe,
    frames: Iterable[np.ndarray],
    instruction: str | None,
    image=None,
    clip_length: int = 16,
    overlap: int = 2,
    size: int | None = None,
    keep_size: bool = False,
    seed: int = 0,
    callback: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    carry: str = "auto",
    anchor_fraction: float = 0.5,
    **sample_kwargs,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(source_frames, edited_frames)`` per clip, both uint8 ``[n, h, w, 3]`` at the output size.

    ``callback(clip_index, condition_frames, output_frames)`` sees every clip at the working size: the frames
    the model was conditioned on (with the carried-over frames in front) and what it produced. ``carry`` and
    ``anchor_fraction``: see the module docstring and :meth:`VIDiffPipeline.__call__`.
    """
    import torch

    check_long_video(clip_length, overlap, carry, size)
    carry = resolve_carry(carry, getattr(pipe, "model", None))
    if carry == "none":
        overlap = 0
    generator = torch.Generator().manual_seed(seed)
    # carried into the next clip (working size): the last `overlap` translated frames (reference), or the last
    # `overlap` source frames and their final latents (latent)
    carried: np.ndarray | None = None
    carried_latents = None
    buffer: list[np.ndarray] = []
    work_size = out_size = None
    clip_index = 0

    def translate(batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        nonlocal carried, carried_latents, clip_index
        source = np.stack(batch)
        condition = resize_frames(source, work_size)
        prompt, extra = instruction, {}
        if carried is not None and overlap:
            condition = np.concatenate([carried, condition])
            if carry == "reference":
                prompt = continuation_instruction(instruction, len(carried))
            else:
                extra = {"anchor_latents": carried_latents, "anchor_fraction": anchor_fraction}
        result = pipe(condition, prompt, image=image, generator=generator, **extra, **sample_kwargs)
        if getattr(pipe, "interrupt", False):
            # the clip stopped part-way: a cancelled edit, not a result to write
            raise EditInterrupted()
        output = result.frames
        if callback is not None:
            callback(clip_index, condition, output)
        new = output[len(condition) - len(batch) :]
        if overlap:
            carried = output[-overlap:] if carry == "reference" else condition[-overlap:]
            carried_latents = result.latents[:, :, -overlap:] if carry == "latent" else None
        clip_index += 1
        return resize_frames(source, out_size), resize_frames(new, out_size)

    for frame in frames:
        if work_size is None:
            h, w = frame.shape[:2]
            work_size = working_size(h, w, size, pipe.size_multiple) if size else (h, w)
            out_size = work_size if keep_size else (h, w)
        buffer.append(frame)
        if len(buffer) == (clip_length if carried is None else clip_length - overlap):
            yield translate(buffer)
            buffer = []
    if buffer:
        yield translate(buffer)


def _save_masks(masks: np.ndarray, directory: Path, start: int) -> None:
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(directory / f"{start + i:06d}.png")


def edit_video(
    pipe,
    video,
    instruction: str | None = None,
    image=None,
    output: str | os.PathLike | None = None,
    clip_length: int = 16,
    overlap: int = 2,
    size: int | None = None,
    keep_size: bool = False,
    max_frames: int | None = None,
    fps: float | Fraction = 25,
    masks_out: str | os.PathLike | None = None,
    mask_color: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    callback=None,
    carry: str = "auto",
    anchor_fraction: float = 0.5,
    **sample_kwargs,
) -> EditSummary:
    """Edit a whole video (a file path or uint8 ``[f, h, w, 3]`` frames), streaming clip by clip.

    With ``output`` the result is encoded to that mp4 as it is produced (input audio copied when every frame is
    edited); without it the frames are returned in the summary. ``masks_out`` decodes the ``rvos`` overlay into one
    binary PNG per frame (colour from ``mask_color`` or named in the instruction). ``carry``: how each clip continues
    the previous one (``auto``, ``reference``, ``latent``, ``none``; see the module docstring).
    """
    from vidiff.io import VideoReader, VideoWriter

    if instruction is None and image is None:
        raise VIDiffError("give an instruction, an image instruction, or both")
    color = None
    if masks_out is not None:
        color = mask_color or color_in_instruction(instruction)
        if color is None:
            raise VIDiffError("masks_out needs the overlay colour: name one in the instruction or give mask_color")
        try:
            color_rgb(color)
        except ValueError as err:
            raise VIDiffError(str(err)) from None

    summary = EditSummary()
    reader = None
    source_path = None
    if isinstance(video, str | os.PathLike):
        source_path = Path(video)
        reader = VideoReader(source_path)
        fps = reader.info.fps
        total = reader.info.num_frames
        frames: Iterable[np.ndarray] = reader.iter_frames()
    else:
        frames = list(video) if not isinstance(video, np.ndarray) else video
        total = len(frames)
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
        frames = _take(frames, max_frames)

    writer = None
    masks_tmp = None
    collected: list[np.ndarray] = []
    try:
        if output is not None:
            output = Path(output)
            if source_path is not None and output.exists() and os.path.samefile(source_path, output):
                raise VIDiffError(f"{output}: refusing to overwrite the input video")
            copy_audio = source_path is not None and reader.info.has_audio and max_frames is None
            writer = VideoWriter(output, fps, audio_from=source_path if copy_audio else None, overwrite=overwrite)
            summary.audio_copied = copy_audio
        if masks_out is not None:
            masks_out = Path(masks_out)
            if masks_out.exists() and not overwrite:
                raise VIDiffError(f"{masks_out}: already exists (give overwrite=True to replace it)")
            masks_out.parent.mkdir(parents=True, exist_ok=True)
            masks_tmp = Path(tempfile.mkdtemp(prefix=f".{masks_out.name}.partial-", dir=masks_out.parent))

        carry = resolve_carry(carry, getattr(pipe, "model", None))
        bar = tqdm(
            total=num_clips(total, clip_length, 0 if carry == "none" else overlap) or None,
            desc="clips",
            unit="clip",
            disable=not progress,
        )
        clips = iter_edited_clips(
            pipe, frames, instruction, image, clip_length, overlap, size, keep_size, seed, callback,
            carry=carry, anchor_fraction=anchor_fraction, **sample_kwargs,
        )  # fmt: skip
        for source, edited in clips:
            if writer is not None:
                writer.write(edited)
            else:
                collected.append(edited)
            if masks_tmp is not None:
                _save_masks(overlay_to_mask(source, edited, color), masks_tmp, summary.num_frames)
            summary.num_frames += len(edited)
            summary.num_clips += 1
            summary.size = edited.shape[1:3]
            bar.update(1)
        bar.close()
        if reader is not None:
            summary.decode_error = reader.decode_error
        if summary.num_frames == 0:
            raise VIDiffError(f"{source_path or 'video'}: no frames to edit")
        if writer is not None:
            summary.output = writer.close()
        else:
            summary.frames = np.concatenate(collected)
        if masks_tmp is not None:
            publish(masks_tmp, masks_out)
            summary.masks_dir, masks_tmp = masks_out, None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if masks_tmp is not None:
            shutil.rmtree(masks_tmp, ignore_errors=True)
        if reader is not None:
            reader.close()
    return summary


def _take(frames: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    for i, frame in enumerate(frames):
        if i >= n:
            return
        yield frame
