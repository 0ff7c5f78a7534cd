"""Stopping a run when asked: the first Ctrl-C (SIGINT) or SIGTERM asks the training loop to stop at the end of
its step (which then checkpoints); a second Ctrl-C stops at once."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A context manager that, while active, turns SIGINT and SIGTERM into a request (``requested`` holds the
    signal's number); a second one raises ``KeyboardInterrupt`` where the program is.

    Signal handlers can only be set from the main thread: elsewhere (a run started from a worker thread)
    the signals keep their usual effect. ``announce``: write one line to stderr when a request arrives
    (the main process does; other DDP processes keep quiet).
    """

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        if self.announce:
            # os.write, not print: a handler that prints while the program is printing (a progress bar) fails
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            os.write(2, f"\n{name}: stopping at the end of this step (Ctrl-C again stops at once)\n".encode())

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: data-loading processes ignore Ctrl-C (a terminal sends it to them
    too), so that the main process decides when to stop, not a worker that died mid-batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
