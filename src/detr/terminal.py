"""Whether output goes to a person at a terminal: progress bars only then, lines otherwise."""

from __future__ import annotations

import sys


def progress_bars(asked: bool = True) -> bool:
    """Whether to draw progress bars: when ``asked`` and both stdout and stderr are terminals. A bar redraws
    itself with carriage returns, which a log file or a pipe (``detr eval ... > log.txt 2>&1``) keeps as
    clutter around the lines that matter."""
    return asked and all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))
