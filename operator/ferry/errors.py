"""Errors a user can act on: each carries the CamelCase reason that lands in status and Events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RETRY_BACKOFF_MAX = 60.0
ALIVE_INTERVAL = 5.0


class TaskError(Exception):
    """The task cannot make progress until something outside Ferry changes (or a retry succeeds)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def retry_until_stopped(
    stop: threading.Event, attempt: Callable[[], bool], alive: Callable[[], None] | None = None
) -> bool:
    """Call `attempt` until it succeeds, waiting 1, 2, 4... up to 60 s between tries; False if stopped first.

    A worker whose task cannot run yet waits here, reporting why, instead of exiting into a crash loop.
    `alive` is called at least every ALIVE_INTERVAL seconds while waiting: waiting for a fix is not a stall,
    so the liveness probe must keep passing.
    """
    backoff = 1.0
    while not stop.is_set():
        if alive is not None:
            alive()
        if attempt():
            return True
        deadline = time.monotonic() + backoff
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            if alive is not None:
                alive()
            stop.wait(min(remaining, ALIVE_INTERVAL))
        backoff = min(backoff * 2, RETRY_BACKOFF_MAX)
    return False
