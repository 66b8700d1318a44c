"""The schedule of the periodic safety net: which tasks to reconcile now.

The operator reconciles a task when it changes (Kopf's handlers) and, level-based, at least once per reconcile
interval. One loop over every task (ferry.operator._Sweep) asks this schedule, every tick, which tasks were not
reconciled for an interval, instead of a Kopf timer per task: each timer is a daemon with its own asyncio tasks,
body and memories, and at 10,000 tasks they took a third of the operator's time. No API call here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, MutableMapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Schedule(Generic[K]):
    """A task is due when neither its last reconcile nor the time it was held (first seen, or a sweep that
    must be retried) is within the interval, less one tick so that the loop's tick never makes a task wait
    longer than the interval. A task the sweep is reconciling now is not due again until that ends."""

    def __init__(self, interval: float, tick: float) -> None:
        self.interval = interval
        self.tick = tick
        self.held: dict[K, float] = {}
        self.running: set[K] = set()

    def due(self, now: float, present: Iterable[K], reconciled: Mapping[K, float]) -> list[K]:
        """The present tasks due now, the longest waiting first. A task seen for the first time is held for
        an interval: its create or resume handler reconciles it first."""
        found: list[tuple[float, K]] = []
        for key in present:
            last = max(reconciled.get(key, -math.inf), self.held.get(key, -math.inf))
            if last == -math.inf:
                self.held[key] = now
            elif key not in self.running and now - last >= self.interval - self.tick:
                found.append((last, key))
        found.sort(key=lambda pair: pair[0])
        return [key for _, key in found]

    def retry(self, key: K, now: float, after: float) -> None:
        """Take the task again `after` seconds from now (not at the next tick)."""
        self.held[key] = now - self.interval + self.tick + after

    def forget_absent(self, present: Iterable[K], reconciled: MutableMapping[K, float], before: float) -> None:
        """Drop what is kept of tasks that are gone: not present now, and not reconciled since `before` (a
        task reconciled after the presence was taken is not gone)."""
        here = set(present)
        for key in [k for k in self.held if k not in here]:
            del self.held[key]
        for key in [k for k, at in list(reconciled.items()) if k not in here and at < before]:
            reconciled.pop(key, None)
