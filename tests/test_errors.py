"""The retry loop a worker waits in while its task cannot run: backoff, and liveness kept while waiting."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from ferry import errors
from ferry.errors import retry_until_stopped
from ferry.metrics import WorkerMetrics


def test_attempts_back_off_and_the_worker_stays_alive_while_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "ALIVE_INTERVAL", 0.2)
    stop = threading.Event()
    attempts: list[float] = []
    alive: list[float] = []
    start = time.monotonic()

    def attempt() -> bool:
        attempts.append(time.monotonic() - start)
        return len(attempts) == 4

    assert retry_until_stopped(stop, attempt, lambda: alive.append(time.monotonic() - start))
    # 1 s, 2 s, 4 s between the attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert [round(g) for g in gaps] == [1, 2, 4]
    # alive every ALIVE_INTERVAL (0.2 s) the whole time, never only around the attempts 1-4 s apart
    # (the bound leaves room for a loaded machine)
    assert max(b - a for a, b in itertools.pairwise(alive)) < 0.8


def test_a_worker_waiting_for_a_fix_keeps_its_health_check_passing(monkeypatch: pytest.MonkeyPatch) -> None:
    """/healthz fails when the main loop stalls; waiting for a user's fix must not look like a stall, or the
    liveness probe would restart the worker in a loop."""
    monkeypatch.setattr(errors, "ALIVE_INTERVAL", 0.2)
    metrics = WorkerMetrics("DataAccessTask", "ns/t")
    stop = threading.Event()
    thread = threading.Thread(target=retry_until_stopped, args=(stop, lambda: False, metrics.tick))
    thread.start()
    try:
        for _ in range(20):  # 4 s, through waits of 1 s and 2 s
            time.sleep(0.2)
            assert metrics.healthy(stall_seconds=1.0)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    time.sleep(1.2)
    assert not metrics.healthy(stall_seconds=1.0)  # and the check can fail: nothing ticks once it returned
