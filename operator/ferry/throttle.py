"""Throughput caps: a worker's share of its task's `maxRecordsPerSecond` and `maxBytesPerSecond`, as token buckets.

A task's caps hold over all its workers: each worker takes an equal share, the cap divided by `spec.replicas`
(every worker runs the same spec, so the shares add up to the cap when all of them run). A byte is a byte of
record payload, key plus value, as `status.totals.bytes` and `ferry_bytes_total` count them; headers and framing
are not counted. A record is a record read from the source and handled (copied, dumped, or skipped as a loop).

Batches are admitted before they are written: the loop consumes the next batch only once the buckets hold at
least FILL_SECONDS' worth of the share, and no more records than they allow (exactly for records; for bytes by
the mean record size seen so far). What a batch costs beyond that (records larger than the mean) is a debt,
waited off before the next batch. Buckets start empty, so a backlog goes at the share from the first batch,
and hold at most BURST_SECONDS' worth: a window of W seconds sees at most the share x W plus that much (plus
what the record size estimate missed), e.g. 10% over the share in 5 s; a loop late by less than the
difference between BURST_SECONDS and FILL_SECONDS loses nothing of the share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

# What a bucket holds at most: an idle worker sends at most this long's worth at once when records arrive.
BURST_SECONDS = 0.5
# A batch is consumed once the buckets hold this long's worth: batches of about this much of the share.
FILL_SECONDS = 0.2


class Caps(Protocol):
    """The spec fields a throttle is made from (every kind's TaskSpec)."""

    replicas: int
    max_records_per_second: int | None
    max_bytes_per_second: int | None


class Payload(Protocol):
    """What a consumed message offers (confluent_kafka.Message)."""

    def error(self) -> Any: ...

    def value(self) -> Any: ...

    def key(self) -> Any: ...


class TokenBucket:
    """`rate` tokens a second, up to `capacity`; a take may overdraw it (a debt that refills first)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"a token bucket needs a positive rate, not {rate}")
        self.rate = rate
        self.ready = max(1.0, rate * FILL_SECONDS)  # the level at which a batch may go (at least one token)
        self.capacity = max(self.ready, rate * BURST_SECONDS)
        self.clock = clock
        self.tokens = 0.0
        self.stamp = clock()

    def level(self) -> float:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def wait(self) -> float:
        """Seconds until the bucket is ready for a batch (0: now; a millionth of a token short is ready)."""
        missing = self.ready - self.level()
        return missing / self.rate if missing > 1e-6 else 0.0

    def take(self, amount: float) -> None:
        self.level()
        self.tokens -= amount


def batch_cost(messages: Iterable[Payload]) -> tuple[int, int]:
    """Records and payload bytes (key + value) of a consumed batch; error events cost nothing."""
    records = nbytes = 0
    for message in messages:
        if message.error() is None:
            records += 1
            nbytes += len(message.value() or b"") + len(message.key() or b"")
    return records, nbytes


class Throttle:
    """One worker's share of its task's caps (either may be None: not capped)."""

    def __init__(
        self,
        records_per_second: float | None,
        bytes_per_second: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records_per_second = records_per_second
        self.bytes_per_second = bytes_per_second
        self.records = TokenBucket(records_per_second, clock) if records_per_second else None
        self.bytes = TokenBucket(bytes_per_second, clock) if bytes_per_second else None
        self.record_size: float | None = None  # mean payload bytes per record, lately
        self.waited = 0.0  # seconds spent waiting on the caps (throttledSeconds)

    @classmethod
    def share_of(cls, spec: Caps) -> Throttle | None:
        """This worker's share of the spec's caps: each cap divided by spec.replicas; None without caps."""
        if spec.max_records_per_second is None and spec.max_bytes_per_second is None:
            return None
        replicas = max(1, spec.replicas)
        records, nbytes = spec.max_records_per_second, spec.max_bytes_per_second
        return cls(
            records / replicas if records is not None else None,
            nbytes / replicas if nbytes is not None else None,
        )

    def wait(self) -> float:
        """Seconds before the next batch may be consumed (0: now)."""
        return max((bucket.wait() for bucket in (self.records, self.bytes) if bucket is not None), default=0.0)

    def batch_limit(self, most: int) -> int:
        """How many records the next batch may hold (at least one)."""
        limit = most
        if self.records is not None:
            limit = min(limit, int(self.records.level()))
        if self.bytes is not None and self.record_size is None:
            limit = 1  # the first batch learns the record size
        elif self.bytes is not None and self.record_size is not None:
            limit = min(limit, int(self.bytes.level() / max(self.record_size, 1.0)))
        return max(1, limit)

    def take(self, records: int, nbytes: int) -> None:
        """Charge a batch to the buckets, before it is written."""
        if self.records is not None:
            self.records.take(records)
        if self.bytes is not None:
            self.bytes.take(nbytes)
        if records:
            size = nbytes / records
            self.record_size = size if self.record_size is None else 0.7 * self.record_size + 0.3 * size

    def fields(self) -> dict[str, Any]:
        """What a worker's report says about its caps: its share of each, and how long it waited on them."""
        return {
            "throttledSeconds": round(self.waited, 1),
            "maxRecordsPerSecond": _shown(self.records_per_second),
            "maxBytesPerSecond": _shown(self.bytes_per_second),
        }


def _shown(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 3)
