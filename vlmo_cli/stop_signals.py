"""The signals that ask a run to stop (clusters preempt jobs with SIGTERM, people press Ctrl-C), and what a helper
process does with them. The training loop (:mod:`vlmo_cli.train.signals`) catches them; data-loader workers
(:mod:`vlmo_cli.data.loader`) leave them to the training process, which stops its workers after its checkpoint."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals() -> None:
    """For data-loader worker processes: leave the stop signals to the training process, which stops them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
