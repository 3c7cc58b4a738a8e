"""The one exception type for a user's bad input.

Raise :class:`InputError` when the problem is in what the user gave us (a file, a flag, a checkpoint) and
the message tells them what to fix. The command line turns it into a one-line message and exit code 2,
without a traceback. Everything else is a bug or an environment failure (exit code 1).
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input. The message names the file or argument and the problem."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
