"""Shared console-script plumbing: one-line errors and exit codes."""

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
