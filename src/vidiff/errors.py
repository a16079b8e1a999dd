"""User-facing errors.

Anything a user can cause (a missing file, a file that is not a video, a bad flag value) raises
:class:`VIDiffError`. Console scripts print its message on one line and exit with status 2; every
other exception is a bug and keeps its traceback.
"""


class VIDiffError(Exception):
    """An error caused by user input. The message names the problem and the file, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class VideoReadError(VIDiffError):
    """A file could not be read as a video."""


class ModelLoadError(VIDiffError):
    """Model weights or configs could not be found or loaded."""
