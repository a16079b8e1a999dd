"""Shared console-script plumbing: one-line errors, device selection."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from vidiff.errors import VIDiffError


def run_cli(prog: str) -> Callable:
    """Decorate a ``main(argv) -> int`` so user errors print one line and exit 2 (no traceback)."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                code = main(argv)
            except VIDiffError as err:
                print(f"{prog}: error: {err}", file=sys.stderr)
                code = 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                code = 130
            return code

        return wrapper

    return decorate


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
