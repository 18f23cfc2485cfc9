"""Stop requests from outside: Ctrl-C (SIGINT) and preemption (SIGTERM, as SLURM, Kubernetes
and spot instances send before killing). Both only set a flag; the loop checkpoints at the
next step boundary and stops there, so nothing since the last checkpoint is lost."""

from __future__ import annotations

import signal
import threading
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM set :attr:`received`."""

    def __init__(self) -> None:
        self.received: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class StopRequested(Exception):
    """Raised inside the epoch after the interrupt checkpoint was written."""
