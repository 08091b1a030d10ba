"""The library's log lines on the command line's stderr, bare, while a command runs.

Library modules never print: they return summaries for the command line to print, or
log through `logging.getLogger(__name__)` (progress at INFO; notes and warnings at
WARNING, their text starting with `note:` / `warning:`). A Python caller configures
logging as it likes (without any configuration only warnings reach stderr); while a
command runs, `log_to_stderr` shows every line from INFO up exactly as it was logged,
so the command line reads as if the library had printed it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

LOGGER = "amygdala"  # the parent of every library module's logger


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # StreamHandler.__init__ sets it; the property always answers sys.stderr


@contextlib.contextmanager
def log_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """Show the library's log lines from `level` up on stderr for the `with` block, and
    only there: not also through handlers a dependency put on the root logger (the MCP
    server SDK installs one), which would print each line a second time."""
    logger = logging.getLogger(LOGGER)
    handler = _Stderr()
    level_before, propagate_before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level_before)
        logger.propagate = propagate_before
