"""``vidiff-score``: score predicted videos with VIDiff's metrics (prints a table, or JSON with ``--json``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from vidiff.cli.common import run_cli
from vidiff.errors import VIDiffError
from vidiff.utils.device import pick_device


DEFAULT_METRICS = "psnr,ssim,cdc,colorfulness"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff-score",
        description=(
            "Score videos with VIDiff's metrics. PRED and TARGET are video files, folders of frames (one video), or "
            "folders of videos / frame folders matched by name. Metrics without a reference (cdc, colorfulness, "
            "niqe, clip, pickscore, consistency) need no TARGET."
        ),
        epilog=(
            "metrics: psnr, ssim, ms_ssim, lpips, cdc, colorfulness, niqe, fid, clip, pickscore, consistency, jf, "
            "seam (clip-boundary visibility of a video edited clip by clip: give its --clip-length and --overlap). "
            "lpips, fid, clip, pickscore and consistency need local weights (flags below or VIDIFF_* variables); "
            "nothing is downloaded. Example: vidiff-score out.mp4 gt.mp4 --metrics psnr,ssim,niqe --json"
        ),
    )
    parser.add_argument("pred", type=Path, help="predicted video(s)")
    parser.add_argument("target", type=Path, nargs="?", help="ground-truth video(s), matched by name")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default: {DEFAULT_METRICS})")
    parser.add_argument("--instruction", help="text the clip/pickscore metrics compare frames with")
    parser.add_argument("--json", action="store_true", help="print a JSON object {metric: value}")
    parser.add_argument("--per-video", action="store_true", help="also print each video's values (table mode)")
    parser.add_argument("--frames", type=int, help="score only the first N frames of each video")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    parser.add_argument("--niqe-stride", type=int, default=1, help="NIQE on every k-th frame (default: 1)")
    parser.add_argument("--colorfulness-abs", action="store_true", help="the abs-opponent (pyimagesearch) variant")
    parser.add_argument(
        "--clip-length", type=int, default=16, help="seam: frames per clip the video was edited in (default: 16)"
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=2,
        help="seam: frames each clip carried over from the previous one (vidiff-edit --overlap; 0 for --long-video "
        "none) (default: 2)",
    )
    weights = parser.add_argument_group("local weights (never downloaded)")
    weights.add_argument("--fid-weights", help="weights-inception-2015-12-05-6726825d.pth (torch-fidelity)")
    weights.add_argument("--lpips-weights", help="torchvision backbone file, e.g. alexnet-owt-7be5be79.pth")
    weights.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"], help="LPIPS backbone")
    weights.add_argument("--clip-model", help="folder with a Hugging Face CLIP model (clip, consistency)")
    weights.add_argument("--pickscore-model", help="folder with yuvalkirstain/PickScore_v1")
    weights.add_argument("--pickscore-processor", help="folder with laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor")
    return parser


@run_cli("vidiff-score")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vidiff.evaluation.inputs import pair_videos, read_any
    from vidiff.evaluation.metrics import MetricWeights, parse_metric_names
    from vidiff.evaluation.scoring import Scorer
    from vidiff.evaluation.tables import format_number

    if args.frames is not None and args.frames < 1:
        raise VIDiffError(f"--frames must be at least 1, got {args.frames}")
    pairs = pair_videos(args.pred, args.target)
    weights = MetricWeights.from_env(
        fid_inception=args.fid_weights,
        lpips_backbone=args.lpips_weights,
        lpips_net=args.lpips_net,
        clip=args.clip_model,
        pickscore_model=args.pickscore_model,
        pickscore_processor=args.pickscore_processor,
    )
    if args.clip_length < 1 or not 0 <= args.overlap < args.clip_length:
        raise VIDiffError(f"--overlap {args.overlap}: must be >= 0 and smaller than --clip-length {args.clip_length}")
    options = {
        "niqe_stride": args.niqe_stride,
        "colorfulness_abs": args.colorfulness_abs,
        "clip_length": args.clip_length,
        "overlap": args.overlap,
    }
    scorer = Scorer(parse_metric_names(args.metrics), weights, pick_device(args.device), options)
    if scorer.needs_target and args.target is None:
        raise VIDiffError(f"{', '.join(scorer.needs_target)} compare with ground truth: give TARGET after PRED")

    per_video = []
    for name, pred_path, target_path in pairs:
        pred = read_any(pred_path, args.frames)
        target = read_any(target_path, args.frames) if target_path is not None else None
        if target is not None and len(pred) != len(target):
            raise VIDiffError(f"{pred_path}: {len(pred)} frames, but {target_path} has {len(target)}")
        per_video.append({"video": name, **scorer.score(pred, target, args.instruction)})

    results = scorer.values()
    for metric, reasons in scorer.skips().items():
        detail = "; ".join(f"{n}x {r}" for r, n in reasons.items())
        print(f"vidiff-score: note: {metric}: {sum(reasons.values())} video(s) not scored ({detail})", file=sys.stderr)

    if args.json:
        print(json.dumps({k: (None if math.isnan(v) else v) for k, v in results.items()}, indent=2))
        return 0
    labels = {m.name: m.info for m in scorer.metrics.values()}
    print(f"{len(pairs)} video(s) scored")
    width = max(len(k) for k in results) + 2
    for key, value in results.items():
        info = labels.get(key)
        arrow = "" if info is None else (" (higher is better)" if info.higher_is_better else " (lower is better)")
        print(f"  {key:<{width}}{format_number(value):>10}{arrow}")
    if args.per_video:
        columns = [m.name for m in scorer.metrics.values() if m.name != "fid"]
        print("\nvideo\t" + "\t".join(columns))
        for row in per_video:
            print(row["video"] + "\t" + "\t".join(format_number(row[c]) for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
