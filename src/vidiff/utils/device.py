"""Device and dtype selection shared by the command lines, the evaluation runner and the demo."""

from __future__ import annotations

from vidiff.errors import VIDiffError


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VIDiffError(f"--device {name}: CUDA is not available on this machine")
    return name


def pick_dtype(name: str, device: str):
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in table:
        raise VIDiffError(f"--dtype {name}: choose from auto, {', '.join(sorted(table))}")
    return table[name]
