"""How the networks run: ``torch.compile`` of the U-Net and the channels-last memory format, for training and editing.

Neither changes what the model computes, only how (up to floating-point rounding of fused or reordered kernels):

- **channels-last** stores the 4-D weights of the U-Net and the VAE as NHWC, the layout tensor-core convolutions
  want; activations follow the weights. ``Module.to(device)`` preserves it, so it can be set before the trainer moves
  the model.
- **compile** is ``nn.Module.compile`` on the U-Net, *in place*: the U-Net keeps its class and parameter names, so
  checkpoints, the EMA, LoRA adapters and the exported model see the same network (``torch.compile(unet)`` would wrap
  it and prefix every key with ``_orig_mod.``). Each new input shape compiles on its first call (minutes on a CPU); the U-Net's forward traces as one graph with no graph break, gradient checkpointing of the
  motion modules included, and AOTAutograd compiles its backward as one graph (``tests/test_speed.py``).

``vidiff-train speed.compile=true speed.channels_last=true`` (``conf/train.yaml``) and ``vidiff-edit --compile
--channels-last`` apply :func:`apply_speed`; both are off by default.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from vidiff.errors import VIDiffError


CPU_NOTE = (
    "torch.compile on the CPU: each new input shape first compiles the U-Net (minutes on a few cores) before it runs "
    "faster; leave it off for short CPU runs"
)


def apply_speed(
    model: Any,
    compile: bool = False,
    channels_last: bool = False,
    compile_mode: str | None = None,
    compile_backend: str | Callable = "inductor",
    dynamic: bool | None = None,
    device: Any = None,
    prog: str | None = "vidiff",
) -> list[str]:
    """Apply the speed options to a :class:`~vidiff.models.VIDiffModel` in place; return what was applied.

    Args:
        model: the model (its ``unet`` is compiled; its ``unet`` and ``vae`` go channels-last).
        compile: ``torch.compile`` the U-Net in place.
        channels_last: NHWC weights for the U-Net and VAE convolutions.
        compile_mode: ``torch.compile``'s ``mode`` (``null``: its default; ``max-autotune-no-cudagraphs`` is what
            ``benchmarks/gpu.py`` uses).
        compile_backend: ``torch.compile``'s backend (``inductor``; ``aot_eager`` traces without generating kernels,
            for checks).
        dynamic: ``torch.compile``'s ``dynamic`` (``None``: a second input shape compiles a shape-generic graph;
            ``False``: every shape gets its own kernels, each compiled on first use).
        device: where the model will run; on a CPU, enabling ``compile`` prints a one-line note about the warm-up.
        prog: the command name that prefixes the note (``None``: no note, e.g. on every rank but the first).
    """
    import torch

    applied = []
    if channels_last:
        for net in (model.unet, model.vae):
            if net is not None:
                net.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    if compile:
        if not is_compiled(model.unet):
            options = {"backend": compile_backend, "dynamic": dynamic}
            if compile_mode is not None:
                options["mode"] = compile_mode
            try:
                model.unet.compile(**options)
            except RuntimeError as err:  # an unknown mode or backend: torch's message names the choices
                raise VIDiffError(f"torch.compile: {' '.join(str(err).split())}") from None
        applied.append(f"torch.compile ({compile_backend}{', ' + compile_mode if compile_mode else ''})")
        if prog and device is not None and torch.device(device).type == "cpu":
            print(f"{prog}: note: {CPU_NOTE}", file=sys.stderr)
    return applied


def is_compiled(module: Any) -> bool:
    """Whether ``module`` was compiled in place (``nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None
