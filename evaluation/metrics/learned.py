"""Metrics that need network weights: LPIPS, FID, CLIP score, frame consistency, PickScore.

Nothing here downloads. Each weight is a local path, given on the command line, in ``conf/eval.yaml``
(``weights.*``) or by an environment variable (``VIDIFF_*``, see :class:`MetricWeights`); a missing one fails with
a one-line error naming the file to provide and where it is published. Weight files are read with
``torch.load(weights_only=True)`` or safetensors — never by unpickling.

- LPIPS: torchmetrics' LPIPS network (v0.1 linear heads shipped inside torchmetrics) with the ImageNet backbone
  (AlexNet by default) loaded from the torchvision file the user provides. Inputs in [-1, 1]; mean over frames.
- FID: torchmetrics ``FrechetInceptionDistance`` on the TF-2015 InceptionV3 (torch-fidelity weights) with
  ``antialias=False`` (torch-fidelity / pytorch-fid resizing); pooled over all frames of all videos.
- CLIP score: ``100 · cos(image, text)`` per frame (no clamp), mean over frames then videos.
- Frame consistency: ``100 · cos`` of the CLIP image embeddings of consecutive frames (Gen-1's definition).
- PickScore: ``exp(logit_scale) · cos(image, text)`` of the PickScore model, mean over frames.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from vidiff.errors import VIDiffError
from vidiff.evaluation.metrics.base import MetricInfo, VideoMetric


@dataclass
class MetricWeights:
    """Local weights for the metrics that need them (``None`` = not provided)."""

    fid_inception: str | None = None
    lpips_backbone: str | None = None
    lpips_net: str = "alex"
    clip: str | None = None
    pickscore_model: str | None = None
    pickscore_processor: str | None = None

    ENV = {
        "fid_inception": "VIDIFF_FID_WEIGHTS",
        "lpips_backbone": "VIDIFF_LPIPS_WEIGHTS",
        "clip": "VIDIFF_CLIP_MODEL",
        "pickscore_model": "VIDIFF_PICKSCORE_MODEL",
        "pickscore_processor": "VIDIFF_PICKSCORE_PROCESSOR",
    }

    @classmethod
    def from_env(cls, **given) -> MetricWeights:
        """Explicit values win; unset ones come from the ``VIDIFF_*`` environment variables."""
        values = {}
        for f in fields(cls):
            value = given.get(f.name)
            if value is None and f.name in cls.ENV:
                value = os.environ.get(cls.ENV[f.name]) or None
            if value is not None:
                values[f.name] = str(value)
        return cls(**values)


WHAT_TO_PROVIDE = {
    "fid_inception": (
        "fid needs the FID InceptionV3 weights: pass --fid-weights PATH (or set VIDIFF_FID_WEIGHTS) to "
        "weights-inception-2015-12-05-6726825d.pth from github.com/toshas/torch-fidelity/releases/tag/v0.2.0"
    ),
    "lpips_backbone": (
        "lpips needs the ImageNet backbone of torchvision: pass --lpips-weights PATH (or set VIDIFF_LPIPS_WEIGHTS) "
        "to alexnet-owt-7be5be79.pth from download.pytorch.org/models/ (vgg16-397923af.pth or "
        "squeezenet1_1-b8a52dc0.pth with --lpips-net)"
    ),
    "clip": (
        "{metric} needs a CLIP model in Hugging Face format: pass --clip-model DIR (or set VIDIFF_CLIP_MODEL) to a "
        "local copy of openai/clip-vit-large-patch14 (config.json, model.safetensors, tokenizer and preprocessor "
        "files)"
    ),
    "pickscore_model": (
        "pickscore needs the PickScore model: pass --pickscore-model DIR (or set VIDIFF_PICKSCORE_MODEL) to a local "
        "copy of yuvalkirstain/PickScore_v1"
    ),
    "pickscore_processor": (
        "pickscore needs its processor: pass --pickscore-processor DIR (or set VIDIFF_PICKSCORE_PROCESSOR) to a "
        "local copy of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (tokenizer and preprocessor files)"
    ),
}


# the weights each metric reads (checked by check_weights before anything is loaded)
REQUIRED_WEIGHTS = {
    "lpips": ("lpips_backbone",),
    "fid": ("fid_inception",),
    "clip": ("clip",),
    "consistency": ("clip",),
    "pickscore": ("pickscore_model", "pickscore_processor"),
}


def check_weights(name: str, weights: MetricWeights) -> None:
    """Raise the one-line "provide this file" error if ``name`` lacks a weight; loads nothing."""
    for key in REQUIRED_WEIGHTS.get(name, ()):
        require(weights, key, name)


def require(weights: MetricWeights, key: str, metric: str = "") -> Path:
    value = getattr(weights, key)
    if value is None:
        raise VIDiffError(WHAT_TO_PROVIDE[key].format(metric=metric))
    path = Path(value).expanduser()
    if not path.exists():
        raise VIDiffError(f"{path}: not found ({WHAT_TO_PROVIDE[key].format(metric=metric).split(':')[0]})")
    return path


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a tensors-only torch file (no arbitrary unpickling)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise VIDiffError(f"{path}: not a readable weights file ({' '.join(str(err).split())[:160]})") from None
    if not isinstance(state, dict):
        raise VIDiffError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[f, h, w, 3]`` -> uint8 ``[f, 3, h, w]``."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


class LPIPS(VideoMetric):
    info = MetricInfo("lpips", "LPIPS", False, needs_weights=True, convention="LPIPS v0.1, ImageNet backbone")

    def __init__(self, weights: MetricWeights, device: str = "cpu", chunk: int = 16):
        super().__init__()
        # torchmetrics' own LPIPS network, built with a random backbone so that nothing is downloaded, then given
        # the user's torchvision backbone weights; its v0.1 linear heads ship inside torchmetrics. The public
        # LearnedPerceptualImagePatchSimilarity does not fit: it always builds its backbone with torchvision's
        # pretrained weights, i.e. downloads them at run time.
        from torchmetrics.functional.image.lpips import _LPIPS

        path = require(weights, "lpips_backbone")
        self.info = MetricInfo(**{**vars(self.info), "convention": f"LPIPS v0.1 {weights.lpips_net}"})
        net = _LPIPS(pretrained=True, net=weights.lpips_net, pnet_rand=True)
        state = load_weights_file(path)
        backbone = {}
        for key in net.net.state_dict():
            # the LPIPS slices re-number nothing: slice<k>.<i>.<param> is torchvision's features.<i>.<param>
            _, index, param = key.split(".", 2)
            source = f"features.{index}.{param}"
            if source not in state:
                raise VIDiffError(f"{path}: not a torchvision {weights.lpips_net} state dict (missing {source})")
            backbone[key] = state[source]
        net.net.load_state_dict(backbone)
        self.net = net.eval().to(device)
        self.device = device
        self.chunk = chunk

    @torch.no_grad()
    def score_video(self, pred, target, instruction):
        values = []
        for start in range(0, len(pred), self.chunk):
            p = _frames_to_tensor(pred[start : start + self.chunk]).float().to(self.device) / 127.5 - 1
            t = _frames_to_tensor(target[start : start + self.chunk]).float().to(self.device) / 127.5 - 1
            values.append(self.net(p, t).flatten().cpu())
        return float(torch.cat(values).mean())


class FID(VideoMetric):
    info = MetricInfo(
        "fid", "FID", False, needs_weights=True, convention="pooled frames, TF InceptionV3 pool3, antialias=False"
    )

    def __init__(self, weights: MetricWeights | None = None, device: str = "cpu", feature: torch.nn.Module = None):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance

        if feature is None:
            path = require(weights, "fid_inception")
            state = load_weights_file(path)
            # torch-fidelity reads the file with weights_only=False; hand it a copy holding only the tensors
            # just validated, so no user-supplied pickle is ever executed
            with tempfile.TemporaryDirectory() as tmp:
                clean = Path(tmp) / "inception.pth"
                torch.save(state, clean)
                self.fid = FrechetInceptionDistance(
                    feature=2048, feature_extractor_weights_path=str(clean), antialias=False
                )
        else:
            self.fid = FrechetInceptionDistance(feature=feature)
        self.fid = self.fid.to(device)
        self.device = device
        self.num_frames = 0

    @torch.no_grad()
    def update(self, pred, target=None, instruction=None) -> float:
        from vidiff.evaluation.metrics.base import check_video

        pred = check_video(pred, "prediction")
        if target is None:
            raise VIDiffError("fid compares with target videos: give TARGET")
        target = check_video(target, "target")
        for start in range(0, len(pred), 16):
            self.fid.update(_frames_to_tensor(pred[start : start + 16]).to(self.device), real=False)
            self.fid.update(_frames_to_tensor(target[start : start + 16]).to(self.device), real=True)
        self.num_frames += len(pred)
        self.values.append(float("nan"))  # pooled metric: no per-video value
        return float("nan")

    def compute(self) -> dict[str, float]:
        if self.num_frames < 2:
            self.skips.add("FID needs at least 2 frames in all")
            return {"fid": float("nan")}
        return {"fid": float(self.fid.compute())}

    def reset(self) -> None:
        super().reset()
        self.fid.reset()
        self.num_frames = 0


class _ClipFamily(VideoMetric):
    """Shared CLIP plumbing: normalised image/text embeddings of a transformers CLIP-like model."""

    def __init__(self, model_dir: Path, processor_dir: Path, device: str = "cpu", chunk: int = 16):
        super().__init__()
        from transformers import AutoModel, AutoProcessor

        try:
            self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval().to(device)
            self.processor = AutoProcessor.from_pretrained(processor_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise VIDiffError(f"{model_dir}: cannot load the model ({' '.join(str(err).split())[:200]})") from None
        self.device = device
        self.chunk = chunk

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        out = []
        for start in range(0, len(frames), self.chunk):
            inputs = self.processor(images=list(frames[start : start + self.chunk]), return_tensors="pt")
            features = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            features = getattr(features, "pooler_output", features)
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_embedding(self, text: str) -> torch.Tensor:
        inputs = self.processor(text=[text], padding=True, truncation=True, max_length=77, return_tensors="pt")
        features = self.model.get_text_features(
            input_ids=inputs["input_ids"].to(self.device), attention_mask=inputs["attention_mask"].to(self.device)
        )
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()[0]


class CLIPScore(_ClipFamily):
    info = MetricInfo(
        "clip", "CLIP score", True, needs_target=False, needs_instruction=True, needs_weights=True,
        convention="100·cos(frame, text), mean over frames",
    )  # fmt: skip

    def __init__(self, weights: MetricWeights, device: str = "cpu"):
        path = require(weights, "clip", "clip")
        super().__init__(path, path, device)

    def score_video(self, pred, target, instruction):
        return float(100 * (self.image_embeddings(pred) @ self.text_embedding(instruction)).mean())


class FrameConsistency(_ClipFamily):
    info = MetricInfo(
        "consistency", "Frame consistency", True, needs_target=False, needs_weights=True,
        convention="100·cos of CLIP image embeddings of consecutive frames",
    )  # fmt: skip

    def __init__(self, weights: MetricWeights, device: str = "cpu"):
        path = require(weights, "clip", "consistency")
        super().__init__(path, path, device)

    def score_video(self, pred, target, instruction):
        if len(pred) < 2:
            self.skips.add("single frame (no consecutive pairs)")
            return float("nan")
        embeddings = self.image_embeddings(pred)
        return float(100 * (embeddings[:-1] * embeddings[1:]).sum(-1).mean())


class PickScore(_ClipFamily):
    info = MetricInfo(
        "pickscore", "PickScore", True, needs_target=False, needs_instruction=True, needs_weights=True,
        convention="exp(logit_scale)·cos(frame, text), mean over frames",
    )  # fmt: skip

    def __init__(self, weights: MetricWeights, device: str = "cpu"):
        model = require(weights, "pickscore_model")
        processor = require(weights, "pickscore_processor")
        super().__init__(model, processor, device)

    def score_video(self, pred, target, instruction):
        scale = self.model.logit_scale.exp().item()
        return float(scale * (self.image_embeddings(pred) @ self.text_embedding(instruction)).mean())
