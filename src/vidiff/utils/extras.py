"""Optional dependencies: what ``pip install vidiff`` leaves out, and the one line that says how to add it.

The library, training and editing need none of them; the web app needs ``vidiff[app]`` (gradio) and W&B logging
``vidiff[wandb]``. ``make install`` installs every extra.
"""

from __future__ import annotations

import importlib

from vidiff.errors import VIDiffError


EXTRAS = {"gradio": "app", "wandb": "wandb"}


def require(module: str, what: str) -> None:
    """Raise a one-line :class:`VIDiffError` naming the extra to install when ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise VIDiffError(f"{what} needs {module}, which is not installed: pip install 'vidiff[{extra}]'") from None
