"""Shared console-script plumbing: one-line errors and exit codes."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator

from vidiff.errors import user_error, with_flags  # noqa: F401 - the commands' translation of library words


def _report(prog: str, err: Exception) -> bool:
    """Print ``err`` on one line if it is the user's to fix (see :func:`vidiff.errors.user_error`)."""
    problem = user_error(err)
    if problem is None:
        return False
    print(f"{prog}: error: {problem}", file=sys.stderr)
    return True


def run_cli(prog: str) -> Callable:
    """Decorate a ``main(argv) -> int`` so user errors print one line and exit 2 (no traceback)."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                code = main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                code = 130
            except Exception as err:
                if not _report(prog, err):
                    raise
                code = 2
            return code

        return wrapper

    return decorate


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """:func:`run_cli` for the body of a Hydra task function: user errors print one line and exit 2 there,
    before Hydra's own handler would print its wrapper around them."""
    try:
        yield
    except Exception as err:
        if not _report(prog, err):
            raise
        sys.exit(2)
