"""``vidiff-edit``: edit a video file with a VIDiff model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vidiff.cli.common import run_cli, with_flags
from vidiff.errors import VIDiffError
from vidiff.pipelines.checks import DEFAULT_SAMPLING
from vidiff.utils.device import pick_device, pick_dtype


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff-edit",
        description="Translate a video according to a text and/or image instruction with a VIDiff model.",
        epilog='example: vidiff-edit in.mp4 -o out.mp4 --instruction "Recolor the gray video." --checkpoint outputs/model',
    )
    parser.add_argument("input", help="source video (any container/codec ffmpeg decodes)")
    parser.add_argument("-o", "--output", required=True, help="output .mp4 (written atomically)")
    parser.add_argument("--instruction", "-i", default=None, help="text instruction")
    parser.add_argument("--image", default=None, help="image instruction (a reference picture), alone or with text")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None, help="VIDiff model directory (as exported by vidiff-train)")
    source.add_argument("--model", default=None, help="model preset from conf/model/ (e.g. tiny: random weights)")
    parser.add_argument(
        "--task",
        default=None,
        help="whose recommended sampler settings to use (recolor, inpaint, dehaze, deblur, rvos, edit; default: "
        "the task whose instruction template --instruction is)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampler steps (default: the model's, else {DEFAULT_SAMPLING['num_inference_steps']})",
    )
    parser.add_argument(
        "--text-scale",
        type=float,
        default=None,
        help=f"instruction guidance scale s_T (default: the model's, else {DEFAULT_SAMPLING['text_guidance_scale']})",
    )
    parser.add_argument(
        "--video-scale",
        type=float,
        default=None,
        help=f"source-video guidance scale s_V (default: the model's, else {DEFAULT_SAMPLING['video_guidance_scale']})",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=1.0,
        help="1.0 samples from pure noise (default); lower values start from the noised source and keep more of it",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        choices=["ddim", "euler_a", "dpmpp"],
        help=f"sampler (default: the model's, else {DEFAULT_SAMPLING['scheduler']})",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="short side the model works at, a multiple of 8 (default: the size the model was trained at, else "
        f"{DEFAULT_SAMPLING['size']})",
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="edit only the first N frames (default: the whole video)"
    )
    parser.add_argument("--clip-length", type=int, default=16, help="frames per clip the model sees (default: 16)")
    parser.add_argument(
        "--overlap", type=int, default=2, help="frames each clip carries over from the previous one (default: 2)"
    )
    parser.add_argument(
        "--long-video",
        default="auto",
        choices=["auto", "reference", "latent", "none"],
        help="how each clip continues the previous one: reference (VIDiff's: the previous clip's last translated "
        "frames lead the next clip, with 'Based on the first n frames,'; for models trained with such samples), "
        "latent (the overlap frames' latents are held to the previous clip's result for the first part of the "
        "steps; needs no such training, e.g. released InstructPix2Pix weights), none (independent clips), auto "
        "(latent if the model records it never learned reference frames, else reference; the default)",
    )
    parser.add_argument(
        "--anchor-fraction",
        type=float,
        default=0.5,
        help="latent mode: fraction of the steps the overlap frames are held (default: 0.5)",
    )
    parser.add_argument(
        "--masks-out", default=None, help="decode the segmentation overlay into one PNG mask per frame here"
    )
    parser.add_argument(
        "--mask-color", default=None, help="overlay colour for --masks-out (default: the one named in the instruction)"
    )
    parser.add_argument(
        "--keep-size", action="store_true", help="write the output at the working size instead of the input size"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the U-Net: the first clip (and a shorter last one) compiles it, minutes on a CPU; "
        "later clips run faster",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last U-Net and VAE weights (faster with bf16 on GPUs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    parser.add_argument("--dtype", default="auto", help="float32, bf16, fp16, or auto (bf16 on GPU, float32 on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def _validate(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.instruction is None and args.image is None:
        raise VIDiffError("give --instruction TEXT, --image PATH, or both")
    if args.checkpoint is None and args.model is None:
        raise VIDiffError("give --checkpoint DIR (a trained model) or --model tiny (random weights, for testing)")
    if args.frames is not None and args.frames < 1:
        raise VIDiffError(f"--frames {args.frames}: must be at least 1")
    # the library's checks (light imports), before any model is loaded; unset values are the model's, checked later
    from vidiff.pipelines.checks import check_long_video, check_sampling

    try:
        check_long_video(args.clip_length, args.overlap, args.long_video, args.size)
        check_sampling(
            20 if args.steps is None else args.steps,
            7.5 if args.text_scale is None else args.text_scale,
            1.5 if args.video_scale is None else args.video_scale,
            args.strength,
            args.anchor_fraction,
        )
    except VIDiffError as err:
        raise VIDiffError(with_flags(str(err), FLAGS)) from None
    source, output = Path(args.input), Path(args.output)
    if output.suffix.lower() != ".mp4":
        raise VIDiffError(f"{output}: output must be an .mp4 file")
    if output.exists() and source.exists() and os.path.samefile(source, output):
        raise VIDiffError(f"{output}: refusing to overwrite the input video")
    if output.exists() and not args.overwrite:
        raise VIDiffError(f"{output}: already exists (pass --overwrite to replace it)")
    if output.is_dir():
        raise VIDiffError(f"{output}: is a directory")
    if args.image is not None:
        _check_image(Path(args.image))
    return source, output


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise VIDiffError(f"{path}: image instruction not found")
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError) as err:
        raise VIDiffError(f"{path}: not a readable image ({' '.join(str(err).split())[:120]})") from None


# library argument names -> this command's flags (library messages name values, see check_inputs)
FLAGS = {
    "num_inference_steps": "--steps", "text_guidance_scale": "--text-scale", "video_guidance_scale": "--video-scale",
    "strength": "--strength", "anchor_fraction": "--anchor-fraction", "masks_out": "--masks-out",
    "mask_color": "--mask-color", "overwrite=True": "--overwrite", "clip_length": "--clip-length",
    "overlap": "--overlap", "size must": "--size must", "long-video mode": "--long-video",
}  # fmt: skip
# what vidiff-edit uses when neither the user nor the model says (the scheduler falls back to the model's own)
FALLBACK = {key: DEFAULT_SAMPLING[key] for key in ("size", "num_inference_steps", "text_guidance_scale",
                                                   "video_guidance_scale")}  # fmt: skip


def _settings(args: argparse.Namespace, pipe) -> tuple[dict, str]:
    """Sampling settings: the user's flags, else what the model records (for the instruction's task), else the
    fallbacks; and a description of those taken from the model ("" if none)."""
    from vidiff.data.tasks import task_of_instruction

    task = args.task or task_of_instruction(args.instruction)
    recommended = pipe.recommended(task)
    given = {"size": args.size, "num_inference_steps": args.steps, "text_guidance_scale": args.text_scale,
             "video_guidance_scale": args.video_scale}  # fmt: skip
    settings, taken = {}, []
    for key, value in given.items():
        if value is None and key in recommended:
            value = recommended[key]
            taken.append(f"{FLAGS.get(key, '--' + key)} {value}")
        settings[key] = FALLBACK[key] if value is None else value
    if args.scheduler is None and "scheduler" in recommended:
        from vidiff.pipelines import make_scheduler

        pipe.scheduler = make_scheduler(recommended["scheduler"], pipe.scheduler.config)
        taken.append(f"--scheduler {recommended['scheduler']}")
    where = f" for {task}" if task and task in (pipe.config.sampling or {}).get("tasks", {}) else ""
    return settings, (", ".join(taken) + where if taken else "")


@run_cli("vidiff-edit")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source, output = _validate(args)

    from vidiff.io import probe_video

    # read the input before the heavy imports, so a bad file is reported at once
    info = probe_video(source)

    from vidiff.pipelines import load_pipeline

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    pipe = load_pipeline(args.checkpoint, args.model, device, dtype, scheduler=args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    model = pipe.model
    settings, recommended = _settings(args, pipe)
    if args.compile or args.channels_last:
        from vidiff.utils.speed import apply_speed

        # in place, on the model the pipeline holds: the U-Net keeps its class and weights
        apply_speed(model, compile=args.compile, channels_last=args.channels_last, device=device, prog="vidiff-edit")

    from vidiff.pipelines.long_video import resolve_carry

    carry = resolve_carry(args.long_video, model)
    if not args.quiet:
        from vidiff.utils.frames import working_size

        carried = {
            "reference": f"{args.overlap} reference frames",
            "latent": f"{args.overlap} latent-anchored frames",
            "none": "no carry-over",
        }[carry if args.overlap else "none"]
        why = (
            " (auto: the model never learned reference frames)"
            if args.long_video == "auto" and carry == "latent"
            else ""
        )

        if recommended:
            print(f"vidiff-edit: the model's recommended settings: {recommended}", file=sys.stderr)
        size = working_size(info.height, info.width, settings["size"], multiple=model.vae_scale_factor)
        count = info.num_frames if args.frames is None else min(args.frames, info.num_frames)
        print(
            f"vidiff-edit: {source.name}: {count} frames, {info.width}x{info.height} @ {float(info.fps):.3g} fps"
            f"{', audio' if info.has_audio else ''} -> model size {size[1]}x{size[0]}, clips of {args.clip_length} "
            f"with {carried}{why}, on {device}",
            file=sys.stderr,
        )
    try:
        summary = pipe.edit_video(
            source,
            instruction=args.instruction,
            image=args.image,
            output=output,
            clip_length=args.clip_length,
            overlap=args.overlap,
            keep_size=args.keep_size,
            max_frames=args.frames,
            masks_out=args.masks_out,
            mask_color=args.mask_color,
            overwrite=args.overwrite,
            seed=args.seed,
            progress=not args.quiet,
            strength=args.strength,
            carry=carry,
            anchor_fraction=args.anchor_fraction,
            **settings,
        )
    except VIDiffError as err:  # the library names values; say it with this command's flags
        raise VIDiffError(with_flags(str(err), FLAGS)) from None
    if summary.decode_error:
        # a damaged tail is not silently dropped: say how far decoding got
        print(
            f"vidiff-edit: warning: {source}: decoding stopped after {summary.num_frames} frames "
            f"({summary.decode_error}); the output has those frames only",
            file=sys.stderr,
        )
    if not args.quiet:
        extra = f", masks in {summary.masks_dir}" if summary.masks_dir else ""
        print(
            f"vidiff-edit: wrote {output} ({summary.num_frames} frames in {summary.num_clips} clips, "
            f"{summary.size[1]}x{summary.size[0]}{', audio copied' if summary.audio_copied else ''}{extra})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
