"""Stopping a run on SIGTERM / SIGINT with a checkpoint (clusters preempt jobs with SIGTERM).

The first signal only sets a flag: the loop finishes the current optimizer step, writes a checkpoint, and raises
:class:`TrainingInterrupted` naming it; ``--resume auto`` then continues exactly from
there. A second signal exits at once (the default action of the signal is restored after the first one).
Exit codes follow the shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..stop_signals import STOP_SIGNALS


class TrainingInterrupted(Exception):
    """A run stopped by a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, checkpoint: Path | None, signum: int) -> None:
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"interrupted; last checkpoint: {checkpoint if checkpoint else 'none'}")


class StopRequest:
    """Context manager catching the stop signals while a run trains (a no-op outside the main thread).

    ``requested`` is the number of the first signal received (0: none).
    """

    def __init__(self) -> None:
        self.requested = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.requested = self.requested or signum
        for sig in STOP_SIGNALS:  # the next signal acts at once: SIGINT raises KeyboardInterrupt, SIGTERM kills
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
