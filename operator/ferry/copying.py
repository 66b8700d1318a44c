"""The Kafka-to-Kafka copy loop shared by TopicSync and DataAccessTask.

Consume the source topics in a consumer group, produce each record to the same partition number of its
target topic (key, value, headers and timestamp kept), wait for the target's acknowledgements, and only
then commit the source offsets. Delivery is at least once: a worker killed after the target acknowledged
and before the commit re-copies that batch on restart; nothing is ever skipped. With `spec.delivery: exactlyOnce`
the same loop makes each batch one transaction on the target instead, records and source position together, and
a consumer group on the target decides who copies which partition (ferry.transactional): only how a batch is
made durable, and where the partitions and their positions come from, differ.

A subclass says which topics to read (`_prepare`, `_topics`), where a partition's records go (`_route`:
None holds the partition, paused and uncommitted, until it has somewhere to go), and what it reports.

With throughput caps (spec.maxRecordsPerSecond, spec.maxBytesPerSecond) a batch is admitted against this
worker's share of them when it is consumed, before any of it is produced (ferry.pipeline `_consume`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ferry.api.base import Delivery, PartitionProgress, StartFrom
from ferry.errors import TaskError, retry_until_stopped
from ferry.kafka import (
    close_within,
    describe_kafka_error,
    group_consumer_config,
    group_moved_on,
    message_headers,
    partition_progress,
    watched,
)
from ferry.metrics import WorkerMetrics
from ferry.pipeline import WorkerPipeline
from ferry.reporting import Reporter, ResetLedger
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle
from ferry.transactional import TransactionalCopy

log = logging.getLogger(__name__)

CONSUME_BATCH = 5000
# How long the target may take to acknowledge a record before the producer gives up on it (librdkafka's
# message.timeout.ms): a batch is flushed for a little longer, so nothing of it is still queued when it is redone.
DELIVERY_TIMEOUT = 60.0
TP = tuple[str, int]
Headers = list[tuple[str, str | bytes | None]]


@dataclass
class Batch:
    """A consumed batch once written to the producer: per source partition, the first offset read (where a redo
    reads again from), the last one (its successor is the position a commit stores), and the records and bytes
    written; `failed` is the error that stopped the writing, if any."""

    records: int
    first: dict[TP, int] = field(default_factory=dict)
    last: dict[TP, int] = field(default_factory=dict)
    copied: dict[TP, tuple[int, int]] = field(default_factory=dict)
    failed: KafkaException | None = None


class _Tally:
    """What a batch read from one source partition, and wrote of it, while it is written (CopyPipeline._write)."""

    __slots__ = ("copied", "copied_bytes", "first", "last", "read", "read_bytes", "target")

    def __init__(self, target: str, first: int) -> None:
        self.target = target
        self.first = first
        self.last = first
        self.read = self.read_bytes = self.copied = self.copied_bytes = 0


def refuse_copy_onto_itself(
    source_cluster: str, target_cluster: str, routes: Mapping[str, str], source: str, target: str
) -> None:
    """Source and target spelled differently may still be one cluster: then a topic routed to itself would be
    copied onto itself forever. The cluster ids decide, not the bootstrap lists."""
    if source_cluster != target_cluster:
        return
    looping = sorted(topic for topic, to in routes.items() if topic == to)
    if looping:
        raise TaskError(
            "CopyOntoItself",
            f"{source} and {target} are the same Kafka cluster (cluster id {source_cluster}), so topic"
            f"{'s' if len(looping) > 1 else ''} {', '.join(looping[:5])} would be copied onto "
            f"{'themselves' if len(looping) > 1 else 'itself'} without end: point the target at another cluster "
            "or another topic",
        )


class CopyPipeline(WorkerPipeline):
    client_name: ClassVar[str] = "ferry-copy"

    def __init__(
        self,
        source_config: dict[str, Any],
        target_config: dict[str, Any],
        consumer_group: str,
        start_from: StartFrom,
        reporter: Reporter,
        metrics: WorkerMetrics,
        settings: WorkerSettings | None = None,
        epoch: int = 0,
        throttle: Throttle | None = None,
        *,
        resets: ResetLedger | None = None,
        reset_to: str | None = None,
        delivery: Delivery = Delivery.AT_LEAST_ONCE,
        worker_id: str = "worker",
    ) -> None:
        self.source_bootstrap = str(source_config["bootstrap.servers"])
        self.target_bootstrap = str(target_config["bootstrap.servers"])
        super().__init__(
            self.source_bootstrap,
            reporter,
            metrics,
            settings or WorkerSettings(),
            epoch,
            throttle,
            resets=resets,
            reset_to=reset_to,
        )
        self.source_config = source_config
        self.target_config = target_config
        self.group = consumer_group
        self.start_from = start_from
        self.committed: dict[TP, int] = {}
        self.assigned: set[TP] = set()
        self.rate_mark = (time.monotonic(), 0, 0)  # for records/s and bytes/s between reports
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.delivery_errors: list[KafkaError] = []
        # What the brokers answered to "which cluster are you" (set by _prepare), shown in status.
        self.source_cluster: str | None = None
        self.target_cluster: str | None = None
        # exactlyOnce: the transactions and the target-side group that assigns the partitions; None: at least once.
        self.transactions = TransactionalCopy(self, worker_id) if delivery == Delivery.EXACTLY_ONCE else None
        self.checking = False  # `ferry check`: _prepare looks, and creates nothing

    def check(self) -> None:
        """`ferry check` (ferry.control.preflight): the start-up checks against the brokers, with nothing consumed,
        written or created; raises the TaskError a worker would report."""
        self.checking = True
        self._prepare()

    # -- what a kind decides ---------------------------------------------------------------------

    def _prepare(self) -> None:
        """Look the topics up (and set up the targets); raise TaskError when the task cannot run yet."""
        raise NotImplementedError

    def _topics(self) -> list[str]:
        """The source topics to subscribe to."""
        raise NotImplementedError

    def _route(self, topic: str, partition: int) -> str | None:
        """The target topic for a source partition's records, or None to hold the partition for now."""
        raise NotImplementedError

    def _shape(self) -> object:
        """What, when it changes on a refresh, needs a new subscription."""
        return tuple(self._topics())

    def _outgoing_headers(self, headers: Headers, offset: int) -> Headers | None:
        """The headers to write for the source record at `offset`, or None to skip it (it is still committed)."""
        return headers

    def _reset_partitions(self) -> list[tuple[str, int]]:
        """Every source partition the task reads now (after `_prepare`): what an offset reset moves."""
        raise NotImplementedError

    def _before_consuming(self) -> bool:
        """A last step once the topics are ready: exactlyOnce's transactions initialised (which fences this worker's
        predecessor), then this offset epoch's reset, once (ferry.resets); False to retry later."""
        if self.transactions is not None and not self.transactions.start():
            return False
        return self._reset_once(self.source_config, self.group, self._reset_partitions)

    def _kind_fields(self) -> dict[str, Any]:
        """Kind-specific fields of the worker's report."""
        return {}

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        with self.heartbeat:
            self._run(stop)

    def _run(self, stop: threading.Event) -> None:
        alive = self.metrics.tick
        if not retry_until_stopped(stop, self._ready, alive) or not retry_until_stopped(
            stop, self._before_consuming, alive
        ):
            self._report("Stopped")
            self.producer = None  # exactlyOnce may have made its producer: not kept past the worker
            return
        self.consumer = Consumer(self._consumer_config())
        if self.producer is None:  # exactlyOnce made its transactional one before consuming
            self.producer = Producer(self._producer_config())
        try:
            self._subscribe()
            self._loop(stop)
        finally:
            self._report("Stopped")
            if self.transactions is not None:
                self.transactions.close()
            close_within(self.consumer, "the source consumer")
            self.producer.flush(30)

    def _ready(self) -> bool:
        try:
            self._prepare()
        except TaskError as err:
            self._fail(err)
            return False
        self._clear()
        return True

    def _consumer_config(self) -> dict[str, Any]:
        config = group_consumer_config(
            self.source_config,
            self.group,
            self.start_from,
            self.settings.session_timeout_ms,
            f"{self.client_name}-{self.group}",
            self.settings.topic_refresh_interval,
        )
        # librdkafka's default, said here: the records of the source's aborted transactions are never copied, and
        # those of its open ones only once they commit.
        config["isolation.level"] = "read_committed"
        return watched(config, self.liveness, self.settings.report_interval)

    def _producer_config(self) -> dict[str, Any]:
        return {
            **self.target_config,
            "enable.idempotence": True,  # no duplicates from the producer's own retries
            "acks": "all",
            # Each batch ends with a flush, which sends at once whatever lingers: a longer linger only gathers the
            # records produced meanwhile into fewer, larger requests (with 50 ms instead of 5, about 8% more records
            # per CPU-second at 100 B, docs/benchmarks.md).
            "linger.ms": 50,
            "message.timeout.ms": int(DELIVERY_TIMEOUT * 1000),
            # One callback for the producer, called for failed records only: a Python call per acknowledged
            # record cost a tenth of the worker process's CPU at 100 B (docs/benchmarks.md).
            "on_delivery": self._delivered,
            "delivery.report.only.error": True,
            "client.id": f"{self.client_name}-{self.group}",
        }

    def _subscribe(self) -> None:
        assert self.consumer is not None
        if self.transactions is not None:  # the target-side group assigns the partitions
            self.transactions.subscribe()
            return
        self.consumer.subscribe(self._topics(), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _loop(self, stop: threading.Event) -> None:
        assert self.consumer is not None
        next_report = 0.0
        next_refresh = time.monotonic() + self.settings.topic_refresh_interval
        while not stop.is_set():
            self.metrics.tick()
            if self.transactions is not None:  # its rebalances, and the positions of partitions it was given
                self.transactions.serve()
            messages = self._consume(self.consumer, CONSUME_BATCH, 0.5)
            if messages:
                self._copy(messages)
            if time.monotonic() >= next_refresh:
                if not self.liveness.down_for():  # a look-up would only wait for its timeout
                    self._refresh()
                next_refresh = time.monotonic() + self.settings.topic_refresh_interval
            if time.monotonic() >= next_report:
                self._periodic_report()
                next_report = time.monotonic() + self.settings.report_interval

    def _refresh(self) -> None:
        """Look again (new topics, partition counts); resubscribe when the shape changed, so that every
        partition restarts from its committed offset under the new routing."""
        before = self._shape()
        with self._waiting_on_kafka("looking up the topics", f"{self.source_bootstrap} or {self.target_bootstrap}"):
            self._ready()
        if self._shape() != before:
            log.info("source or target topics changed: resubscribing")
            # A producer knows a topic's partitions from its own metadata, refreshed only every few minutes:
            # a new one sees the target's added partitions now. Nothing is in flight (each batch is acked).
            assert self.producer is not None
            self.producer.flush(30)
            if self.transactions is not None:
                self.transactions.renew_producer()
            else:
                self.producer = Producer(self._producer_config())
            self._subscribe()

    # -- assignment ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self.rebalancing = False
        self._start_past_expired(consumer, assigned, self.source_config)  # saved offsets the retention deleted
        held = [tp for tp in assigned if self._route(tp.topic, tp.partition) is None]
        if held:  # nowhere to write them yet: hold them, never skip them
            consumer.pause(held)
        routed = [tp for tp in assigned if self._route(tp.topic, tp.partition) is not None]
        if routed:  # a partition held before (paused) keeps librdkafka's pause across a resubscribe: go on with it
            consumer.resume(routed)
        self.assigned = {(tp.topic, tp.partition) for tp in assigned}
        log.info("assigned %d partitions (%d held)", len(assigned), len(held))

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        self.rebalancing = True
        self.assigned -= {(tp.topic, tp.partition) for tp in revoked}

    def _resumable(self, topic: str, partition: int) -> bool:
        """Held partitions stay paused after a wait on the caps."""
        try:
            return self._route(topic, partition) is not None
        except KeyError:  # a topic no longer looked up: the next resubscribe drops it
            return False

    # -- copying ---------------------------------------------------------------------------------

    def _copy(self, messages: list[Message]) -> None:
        """Write a consumed batch to the target and make it durable: at least once, wait for the target's
        acknowledgements, then commit; exactly once, one transaction holding the records and their positions."""
        if self.transactions is not None and not self.transactions.begin():
            return  # no transaction to write in: the partitions start again from their stored positions
        batch = self._write(messages)
        if self.transactions is not None:
            durable = self.transactions.commit(batch)
        else:
            durable = self._acknowledge_and_commit(batch)
        if durable:
            self._count(batch)

    def _write(self, messages: list[Message]) -> Batch:
        """Produce each record to its target (the part both deliveries share); hold the partitions that have
        nowhere to go yet.

        The hot loop of every copy: per record it does only what the record needs (its route and tallies are
        looked up once per partition and batch, its headers copied only when it has some, no per-record delivery
        callback); what is per partition is settled once at the end of the batch."""
        assert self.producer is not None
        produce = self.producer.produce
        outgoing = self._outgoing_headers
        batch = Batch(len(messages))
        held: dict[TP, int] = {}
        tallies: dict[TP, _Tally] = {}  # routing changes only between batches: looked up once per partition
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._fail(describe_kafka_error(KafkaException(err), self.source_bootstrap))
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            key = (topic, partition)
            tally = tallies.get(key)
            if tally is None:
                target = None if key in held else self._route(topic, partition)
                if target is None:
                    held.setdefault(key, offset)  # nowhere to go yet: neither copied nor committed
                    continue
                tally = tallies[key] = _Tally(target, offset)
            value, record_key = message.value(), message.key()
            size = (0 if value is None else len(value)) + (0 if record_key is None else len(record_key))
            tally.read += 1
            tally.read_bytes += size
            tally.last = offset
            raw = message.headers()  # the client's own list of (name, bytes) pairs (a copy is handed on), or None
            listed: Headers = [] if raw is None else list(raw) if type(raw) is list else list(message_headers(message))
            headers = outgoing(listed, offset)
            if headers is None:
                continue
            timestamp = message.timestamp()[1]
            try:
                try:
                    produce(tally.target, value, record_key, partition=partition, headers=headers, timestamp=timestamp)
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self._produce_when_room(tally.target, value, record_key, partition, headers, timestamp)
            except KafkaException as err:
                batch.failed = err
                break
            tally.copied += 1
            tally.copied_bytes += size
        self._hold(held)
        for key, tally in tallies.items():  # per batch: metric look-ups are not free
            batch.first[key] = tally.first
            batch.last[key] = tally.last
            if tally.copied:
                batch.copied[key] = (tally.copied, tally.copied_bytes)
            self.metrics.partition(self.metrics.records_read, *key).inc(tally.read)
            self.metrics.partition(self.metrics.bytes_read, *key).inc(tally.read_bytes)
        return batch

    def _acknowledge_and_commit(self, batch: Batch) -> bool:
        """At least once: wait for the target's acknowledgement of every record, then commit the source offsets.
        False when the batch is to be read again, or there was nothing to commit."""
        assert self.consumer is not None and self.producer is not None
        with self._waiting_on_kafka(
            f"waiting for the target to acknowledge {batch.records} records", self.target_bootstrap, source=False
        ):
            remaining = self.producer.flush(DELIVERY_TIMEOUT + 15)
        if batch.failed is not None or remaining or self.delivery_errors:
            self._redo(batch.first, batch.failed, remaining)
            return False
        if not batch.last:
            return False
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in batch.last.items()]
        try:
            with self._waiting_on_kafka("committing the copied offsets"):
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            if group_moved_on(err):  # their new owner copies them again from the last commit: duplicates, no loss
                log.info(
                    "commit refused, the group rebalanced (%s): %d records will be copied again", err, batch.records
                )
                self.rebalancing = True
            else:
                self._fail(describe_kafka_error(err, self.source_bootstrap))
            return False
        for (topic, partition), offset in batch.last.items():
            self.committed[(topic, partition)] = offset + 1
        return True

    def _count(self, batch: Batch) -> None:
        """A durable batch: into the totals and the metrics."""
        for (topic, partition), (records, nbytes) in batch.copied.items():
            self.metrics.partition(self.metrics.records, topic, partition).inc(records)
            self.metrics.partition(self.metrics.bytes, topic, partition).inc(nbytes)
            self.totals.records += records
            self.totals.bytes += nbytes
            target = self._route(topic, partition)  # as when copied: routing changes only between batches
            assert target is not None
            self.metrics.target_records.labels(**self.metrics.labels, topic=target).inc(records)
            self.metrics.target_bytes.labels(**self.metrics.labels, topic=target).inc(nbytes)
        self._clear()

    def _redo(self, first: dict[TP, int], failed: KafkaException | None, remaining: int) -> None:
        """The target did not take the whole batch: report it and read it again from its first record."""
        assert self.consumer is not None
        if failed is not None:
            problem = failed.args[0].str()
        elif self.delivery_errors:
            problem = self.delivery_errors[0].str()
        else:
            problem = f"{remaining} records unacknowledged"
        self.delivery_errors.clear()
        self._fail(TaskError("TargetWriteFailed", f"the target did not take the records: {problem}"))
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def _hold(self, held: dict[TP, int]) -> None:
        """Rewind and pause partitions that have nowhere to go yet; a later resubscribe picks them up."""
        assert self.consumer is not None
        for (topic, partition), offset in held.items():
            tp = TopicPartition(topic, partition, offset)
            self.consumer.seek(tp)
            self.consumer.pause([tp])

    def _produce_when_room(
        self, topic: str, value: bytes | None, key: bytes | None, partition: int, headers: Headers, timestamp: int
    ) -> None:
        """Produce once the producer's local queue has room again."""
        assert self.producer is not None
        while True:
            self.producer.poll(0.1)
            try:
                self.producer.produce(topic, value, key, partition=partition, headers=headers, timestamp=timestamp)
                return
            except BufferError:
                continue

    def _delivered(self, err: KafkaError | None, _: Message) -> None:
        if err is not None:
            self.delivery_errors.append(err)

    # -- reporting -------------------------------------------------------------------------------

    def _partition_progress(self, reachable: bool) -> list[PartitionProgress]:
        # list(): the heartbeat may report while the loop changes the assignment
        delivered = {key: self.committed.get(key) for key in list(self.assigned)}
        return partition_progress(self.consumer, delivered, delivered, self.metrics, reachable)

    def _rates(self) -> tuple[float, float]:
        """Records and bytes written to the target per second since the previous report."""
        now, (then, records, nbytes) = time.monotonic(), self.rate_mark
        self.rate_mark = (now, self.totals.records, self.totals.bytes)
        elapsed = max(now - then, 1e-3)
        return round((self.totals.records - records) / elapsed, 1), round((self.totals.bytes - nbytes) / elapsed, 1)

    def _extra(self) -> dict[str, Any]:
        records_per_second, bytes_per_second = self._rates()
        return {
            **self._kind_fields(),
            "recordsPerSecond": records_per_second,
            "bytesPerSecond": bytes_per_second,
            "sourceClusterId": self.source_cluster,
            "targetClusterId": self.target_cluster,
            **self._expired_fields(),
            **(self.transactions.fields() if self.transactions is not None else {}),
        }
