"""Lightning checkpoint size of a training stage, counted on the meta device (no weights, no GPU).

    python benchmarks/checkpoint_size.py [--model sd15] [--stage v2v] [--steps 100000] [--every 1000] [--keep 3]

"Before": every network in fp32 (the frozen VAE and CLIP encoders too), AdamW's two moments and the EMA of the
trained weights, and ``last.ckpt`` as a second full write. "After": the trained weights, their AdamW moments and
their EMA only (``VIDiffModule.on_save_checkpoint``), ``last.ckpt`` a link, the newest ``--keep`` kept.
"""

from __future__ import annotations

import argparse
import json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15")
    parser.add_argument("--stage", default="v2v", choices=["t2i", "t2v", "v2v"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--keep", type=int, default=3)
    args = parser.parse_args()
    import torch

    from vidiff.config import load_model_preset
    from vidiff.training.module import trainable_filter

    # the architecture from the preset's configs, without reading any weights file
    overrides = ["model.stable_diffusion=null", "model.motion_adapter.pretrained=null"]
    if args.model == "sd15":
        # the released files' layouts: AnimateDiff v1-5-2 (with its mid block) and CLIP ViT-L/14's vision tower
        overrides += [
            "model.motion_adapter.config.use_motion_mid_block=true",
            "model.image_encoder.pretrained=null",
            "+model.image_encoder.config={hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 24, "
            "num_attention_heads: 16, image_size: 224, patch_size: 14, projection_dim: 768}",
        ]
    with torch.device("meta"):
        model = load_model_preset(args.model, overrides)
    keep = trainable_filter(args.stage)
    trained = sum(p.numel() for n, p in model.named_parameters() if keep(n))
    every = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    frozen = every - 4 * trained
    # fp32: weights + Adam m + Adam v + EMA
    before = every + 3 * 4 * trained
    after = 4 * 4 * trained
    saves = args.steps // args.every
    gb = 1e9
    result = {
        "model": args.model,
        "stage": args.stage,
        "trained_parameters_M": round(trained / 1e6, 1),
        "frozen_state_GB": round(frozen / gb, 2),
        "checkpoint_GB": {"before": round(before / gb, 2), "after": round(after / gb, 2)},
        f"written_over_{args.steps}_steps_TB": {
            "before (step + last each time)": round(2 * saves * before / 1e12, 2),
            "after (step; last is a link)": round(saves * after / 1e12, 2),
        },
        "kept_on_disk_GB": {
            "before (all)": round(saves * before / gb),
            f"after (newest {args.keep})": round(args.keep * after / gb, 1),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
