"""What every worker's data path shares: the problem in the way on each side, and a status that tells the truth
on time.

A pipeline keeps its errors per side (Kafka, the object store...), so one side recovering does not hide the
other's failure. It reports every report interval from its own loop; when that loop is late, blocked in a call
to a broker or a store that does not answer, the heartbeat reports instead and names the call once it has
lasted as long as makes a broker outage (`unreachable_after`). Kafka outages the client keeps to itself
(refused or unanswered connections only ever give empty batches) come from librdkafka's statistics.

A task's throughput caps (ferry.throttle) are applied where a loop takes its next batch (`_consume`): a worker
waiting on them goes on looping (reports, refreshes, cuts) in short slices, and one that must wait long pauses
its partitions and keeps calling the consumer, so that the group keeps it and its rebalances are served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Message, TopicPartition

from ferry.api.base import ExpiredRecords, PartitionProgress, Totals
from ferry.errors import TaskError
from ferry.kafka import OFFSETS_TIMEOUT, BrokerLiveness, earliest_offsets, unanswered, unreachable_after
from ferry.metrics import WorkerMetrics
from ferry.reporting import (
    MAX_REPORTED_PARTITIONS,
    Blocking,
    Heartbeat,
    MemoryLedger,
    Reporter,
    ResetLedger,
    send_progress,
    utc_now,
)
from ferry.resets import move_group
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle, batch_cost

log = logging.getLogger(__name__)

KAFKA = "kafka"
# A wait on the caps longer than this (a debt: records much larger than the cap allows per second) pauses the
# partitions and keeps calling the consumer; shorter ones sleep, in slices no longer than a loop's consume.
PAUSE_AFTER = 5.0


class WorkerPipeline:
    # The sides a worker's problems come from, the first one's error shown first.
    sides: ClassVar[tuple[str, ...]] = (KAFKA,)

    def __init__(
        self,
        bootstrap: str,
        reporter: Reporter,
        metrics: WorkerMetrics,
        settings: WorkerSettings,
        epoch: int,
        throttle: Throttle | None = None,
        *,
        resets: ResetLedger | None = None,
        reset_to: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap  # of the Kafka cluster the worker consumes
        self.reporter = reporter
        self.metrics = metrics
        self.settings = settings
        self.epoch = epoch
        # This epoch's offset reset (ferry.resets): its target, None for none; the ledger says if it was made.
        self.reset_to = reset_to
        self.resets: ResetLedger = resets or MemoryLedger()
        self.totals = Totals()
        # Partitions whose saved offset the retention had deleted when they were assigned (the latest each).
        self.expired: dict[tuple[str, int], ExpiredRecords] = {}
        self.errors: dict[str, TaskError] = {}
        self.rebalancing = True  # until the group gives this worker its partitions
        self.liveness = BrokerLiveness()
        self.blocking = Blocking()
        self.heartbeat = Heartbeat(settings.report_interval, self._beat)
        self.throttle = throttle  # this worker's share of the task's caps, None without caps
        self.cap_paused = False  # the partitions are paused for a long wait on the caps
        if throttle is not None:
            metrics.throttled.labels(**metrics.labels)  # shown from the start, at 0

    # -- what a kind adds to a report ------------------------------------------------------------

    def _partition_progress(self, reachable: bool) -> list[PartitionProgress]:
        raise NotImplementedError

    def _extra(self) -> dict[str, Any]:
        return {}

    def _resumable(self, topic: str, partition: int) -> bool:
        """Whether a partition paused for the caps is resumed after them (not one held for another reason)."""
        return True

    # -- errors ----------------------------------------------------------------------------------

    @property
    def error(self) -> TaskError | None:
        return next((self.errors[side] for side in self.sides if side in self.errors), None)

    def _fail(self, err: TaskError, side: str = KAFKA) -> None:
        previous = self.errors.get(side)
        self.errors[side] = err
        self.metrics.error(err.reason)
        if previous is None or previous.reason != err.reason:  # at once; repeats wait for the periodic report
            log.warning("%s", err)
            self._report()

    def _clear(self, side: str = KAFKA) -> None:
        if self.errors.pop(side, None) is not None:
            log.info("recovered: the %s side works again", side)

    def _works(self, side: str, check: Callable[[], None]) -> bool:
        """Run a check of one side: its error reported (False), or the side's error cleared (True)."""
        try:
            check()
        except TaskError as err:
            self._fail(err, side)
            return False
        self._clear(side)
        return True

    def _waiting_on_kafka(
        self, doing: str, bootstrap: str | None = None, source: bool = True
    ) -> AbstractContextManager[None]:
        """Around a call to the brokers (the source's unless `source` is False: then the lag stays known)."""
        where = bootstrap or self.bootstrap
        return self.blocking.call(KAFKA, lambda seconds: unanswered(where, seconds, doing), blinds_lag=source)

    def _check_liveness(self) -> None:
        """KafkaUnreachable once the brokers have been out of reach for unreachable_after; cleared when back
        (unless a call to them is still blocked: that one clears when it returns)."""
        with self.heartbeat.lock:
            outage = self.liveness.outage(self.bootstrap, self.settings)
            current = self.errors.get(KAFKA)
            if outage is not None:
                self._fail(outage, KAFKA)
            elif (
                not self.liveness.down_for()
                and current is not None
                and current.reason == "KafkaUnreachable"
                and self.blocking.stuck(unreachable_after(self.settings)) is None
            ):
                self._clear(KAFKA)

    # -- offset resets ---------------------------------------------------------------------------

    def _reset_once(self, config: dict[str, Any], group: str, partitions: Callable[[], list[tuple[str, int]]]) -> bool:
        """Before consuming: move the consumer group to this offset epoch's reset target, unless a worker did
        already (the ledger says so); every kind's workers call this once their topics are known. False, with the
        reason reported, to be retried."""
        if self.reset_to is None or self.epoch == 0:  # epoch 0 never resets: no status read
            return True
        try:
            if self.epoch <= self.resets.applied_epoch():
                return True
            with self._waiting_on_kafka(f"moving consumer group {group} to {self.reset_to}"):
                applied = move_group(config, group, partitions(), self.reset_to, self.epoch)
            if applied is not None:  # None: another worker has the group, and moved it
                self.resets.record(self.epoch, applied.wire())
        except TaskError as err:
            self._fail(err)
            return False
        return True

    # -- saved offsets the retention deleted -----------------------------------------------------

    def _start_past_expired(
        self, consumer: Consumer, assigned: list[TopicPartition], kafka_config: dict[str, Any]
    ) -> dict[tuple[str, int], int | None]:
        """In a rebalance's assign callback: the partitions' committed offsets, except that a committed offset
        the topic's retention already deleted (below the partition's earliest offset) is replaced by that
        earliest offset. Those partitions are assigned to start there, exactly, not wherever the consumer's
        auto.offset.reset (startFrom) would jump, and reported in `expired` with the records skipped. None for a
        partition without a committed offset (startFrom applies). {} when the offsets cannot be read: the
        consumer starts from the committed offsets as usual."""
        try:
            committed = consumer.committed(assigned, timeout=OFFSETS_TIMEOUT)
            saved = {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
            moved = self._past_retention(saved, kafka_config)
        except KafkaException as err:
            log.warning("could not compare the committed offsets with the earliest ones: %s", err)
            return {}
        starts: dict[tuple[str, int], int | None] = {(tp.topic, tp.partition): tp.offset for tp in committed}
        starts.update(moved)
        if moved:
            consumer.assign(
                [
                    TopicPartition(tp.topic, tp.partition, moved.get((tp.topic, tp.partition), OFFSET_INVALID))
                    for tp in assigned
                ]
            )
        return {key: (offset if offset is not None and offset >= 0 else None) for key, offset in starts.items()}

    def _past_retention(
        self, saved: dict[tuple[str, int], int], kafka_config: dict[str, Any]
    ) -> dict[tuple[str, int], int]:
        """Of the saved offsets (the next to read per partition), those the topic's retention already deleted,
        each mapped to its partition's earliest offset, where reading goes on; each is reported in `expired` with
        the records skipped. Raises KafkaException when the earliest offsets cannot be looked up."""
        earliest = earliest_offsets(kafka_config, saved)
        moved = {}
        for key, offset in saved.items():
            first = earliest.get(key)
            if first is None or first <= offset:
                continue
            topic, partition = key
            self.expired[key] = ExpiredRecords(
                topic=topic,
                partition=partition,
                committed_offset=offset,
                earliest_offset=first,
                records=first - offset,
                time=utc_now(),
            )
            moved[key] = first
            log.warning(
                "%s[%d]: saved offset %d was deleted by the topic's retention (earliest offset %d): %d records "
                "skipped, reading on from %d",
                topic,
                partition,
                offset,
                first,
                first - offset,
                first,
            )
        return moved

    def _expired_fields(self) -> dict[str, Any]:
        """The report's `expired`: the latest finding per partition (the operator counts each once)."""
        if not self.expired:
            return {}
        latest = sorted(list(self.expired.values()), key=lambda e: e.time, reverse=True)[:MAX_REPORTED_PARTITIONS]
        return {"expired": [e.wire() for e in sorted(latest, key=lambda e: (e.topic, e.partition))]}

    # -- throughput caps -------------------------------------------------------------------------

    def _consume(self, consumer: Consumer, most: int, timeout: float) -> list[Message]:
        """The next batch, admitted against the caps before it is written: none while the worker waits on them
        (one slice of the wait, at most `timeout`), else no more records than they allow, charged to them."""
        throttle = self.throttle
        if throttle is None:
            return consumer.consume(most, timeout=timeout)
        wait = throttle.wait()
        if wait > 0:
            messages = self._wait_on_caps(consumer, wait, most, timeout)
        else:
            self._resume_after_caps(consumer)
            messages = consumer.consume(throttle.batch_limit(most), timeout=timeout)
        if messages:
            throttle.take(*batch_cost(messages))
        return messages

    def _wait_on_caps(self, consumer: Consumer, wait: float, most: int, timeout: float) -> list[Message]:
        """One slice of a wait on the caps. A short wait sleeps; a long one pauses the partitions and calls the
        consumer meanwhile (max.poll.interval.ms, rebalances). What it returns anyway (partitions assigned during
        the wait, before they are paused too) is a batch like any other: nothing is dropped."""
        assert self.throttle is not None
        seconds = max(0.0, min(wait, timeout))
        started = time.monotonic()
        messages: list[Message] = []
        if self.cap_paused or wait > PAUSE_AFTER:
            if not self.cap_paused:
                log.info("waiting %.1fs on the throughput caps: partitions paused meanwhile", wait)
            assignment = consumer.assignment()
            if assignment:  # again each slice: partitions assigned meanwhile come unpaused
                consumer.pause(assignment)
            self.cap_paused = True
            messages = consumer.consume(self.throttle.batch_limit(most), timeout=seconds)  # in debt: one at most
        else:
            time.sleep(seconds)
        waited = time.monotonic() - started
        self.throttle.waited += waited
        self.metrics.throttled.labels(**self.metrics.labels).inc(waited)
        return messages

    def _resume_after_caps(self, consumer: Consumer) -> None:
        if not self.cap_paused:
            return
        self.cap_paused = False
        resumed = [tp for tp in consumer.assignment() if self._resumable(tp.topic, tp.partition)]
        if resumed:
            consumer.resume(resumed)

    # -- reports ---------------------------------------------------------------------------------

    def _phase(self) -> str:
        return "Failed" if self.errors else "Rebalancing" if self.rebalancing else "Running"

    def _report(self, phase: str | None = None) -> None:
        """One report; by the data path's loop, or by the heartbeat while the loop is blocked."""
        with self.heartbeat.lock:
            stuck = self.blocking.stuck(unreachable_after(self.settings))
            # the lag is unknown while the source brokers are out of reach or a call to them hangs
            reachable = self.liveness.reachable(self.settings) and not (stuck is not None and stuck.blinds_lag)
            send_progress(
                self.reporter,
                self.metrics,
                phase or self._phase(),
                self.error,
                self._partition_progress(reachable),
                self.totals,
                self.epoch,
                {**self._extra(), **(self.throttle.fields() if self.throttle is not None else {})},
                lag_known=reachable,
            )
            self.heartbeat.reported()

    def _periodic_report(self) -> None:
        self._check_liveness()
        self._report()

    def _beat(self, late: bool) -> None:
        """The heartbeat's turn: an outage is reported as soon as it is one; a late loop is reported for, with
        what it waits for once it has waited as long as an outage takes."""
        if not late:
            self._check_liveness()  # reports at once if the brokers just became out of reach
            return
        stuck = self.blocking.stuck(unreachable_after(self.settings))
        if stuck is not None:
            self._fail(stuck.error, stuck.side)
        self._periodic_report()
