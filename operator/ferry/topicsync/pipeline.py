"""The TopicSync worker: consume the source topics, produce each record to the same partition of the target
topic, commit the source offsets only after the target acknowledged.

Loops: every copied record carries the header `ferry.origin` naming the instance where it was first
written (the source's, unless the record already has one). A record whose origin is the target instance
is never written back there, so two syncs A->B and B->A of the same topic converge.
Delivery is at least once: a worker killed after the target acknowledged and before the commit re-copies
that batch on restart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from ferry.api.base import PartitionProgress, Totals
from ferry.errors import TaskError, retry_until_stopped
from ferry.kafka import (
    describe_kafka_error,
    existing_topics,
    group_consumer_config,
    message_headers,
    missing_topics,
    partition_progress,
)
from ferry.metrics import WorkerMetrics
from ferry.reporting import Progress, Reporter, worker_error
from ferry.settings import WorkerSettings
from ferry.topicsync.model import TopicState, TopicSyncSpec
from ferry.topicsync.topics import broker_count, describe, ensure_target

log = logging.getLogger(__name__)

ORIGIN_HEADER = "ferry.origin"
CONSUME_BATCH = 5000
TP = tuple[str, int]


def origin_of(headers: list[tuple[str, str | bytes | None]]) -> str | None:
    for name, value in headers:
        if name == ORIGIN_HEADER and value is not None:
            return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return None


class SyncPipeline:
    def __init__(
        self,
        spec: TopicSyncSpec,
        source_config: dict[str, Any],
        target_config: dict[str, Any],
        consumer_group: str,
        reporter: Reporter,
        metrics: WorkerMetrics,
        settings: WorkerSettings | None = None,
        epoch: int = 0,
    ) -> None:
        self.spec = spec
        self.source_config = source_config
        self.target_config = target_config
        self.group = consumer_group
        self.reporter = reporter
        self.metrics = metrics
        self.settings = settings or WorkerSettings()
        self.epoch = epoch
        self.source_instance = spec.source.instance
        self.target_instance = spec.target.instance
        self.topics: dict[str, TopicState] = {}
        self.committed: dict[TP, int] = {}
        self.assigned: set[TP] = set()
        self.totals = Totals()
        self.loop_skipped = 0
        self.rate_mark = (time.monotonic(), 0)  # for records/s between reports
        self.error: TaskError | None = None
        self.consumer: Consumer | None = None
        self.rebalancing = True  # until the group gives this worker its partitions
        self.producer: Producer | None = None
        self.delivery_errors: list[KafkaError] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        if not retry_until_stopped(stop, self._topics_ready):
            return
        self.consumer = Consumer(self._consumer_config())
        self.producer = Producer(self._producer_config())
        try:
            self._subscribe()
            self._loop(stop)
        finally:
            self._report("Stopped")
            self.consumer.close()
            self.producer.flush(30)

    def _topics_ready(self) -> bool:
        try:
            self._prepare_topics()
        except TaskError as err:
            self._fail(err)
            return False
        return True

    def _consumer_config(self) -> dict[str, Any]:
        return group_consumer_config(
            self.source_config,
            self.group,
            self.spec.start_from,
            self.settings.session_timeout_ms,
            f"ferry-topicsync-{self.group}",
        )

    def _producer_config(self) -> dict[str, Any]:
        return {
            **self.target_config,
            "enable.idempotence": True,  # no duplicates from the producer's own retries
            "acks": "all",
            "linger.ms": 5,
            "client.id": f"ferry-topicsync-{self.group}",
        }

    def _prepare_topics(self) -> None:
        """Find the source topics and give each a target topic shaped like it."""
        source_admin, target_admin = AdminClient(self.source_config), AdminClient(self.target_config)
        source_bootstrap = self.source_config["bootstrap.servers"]
        target_bootstrap = self.target_config["bootstrap.servers"]
        available = existing_topics(source_admin, source_bootstrap)
        if self.spec.topics is not None:
            missing = missing_topics(self.spec.topics, available)
            if missing:
                raise TaskError(
                    "SourceTopicNotFound",
                    f"topics {', '.join(missing)} do not exist on {source_bootstrap}: create them or fix spec.topics",
                )
        selected = sorted(t for t in available if self.spec.selects(t))
        if not selected:
            raise TaskError("NoMatchingTopics", f"no topic on {source_bootstrap} matches {self.spec.topic_pattern!r}")
        shapes = describe(source_admin, source_bootstrap, selected, self.spec.sync_topic_configs)
        targets = {t: self.spec.target_topic(t) for t in selected}
        existing = describe(target_admin, target_bootstrap, list(targets.values()), False)
        missing_targets = [t for t in targets.values() if t not in existing]
        if missing_targets and not self.spec.create_topics:
            raise TaskError(
                "TargetTopicNotFound",
                f"topics {', '.join(missing_targets)} do not exist on {target_bootstrap} and createTopics is false",
            )
        brokers = broker_count(target_admin, target_bootstrap)
        try:
            self.topics = {
                t: ensure_target(target_admin, t, targets[t], shapes[t], existing.get(targets[t]), brokers)
                for t in selected
            }
        except KafkaException as err:
            raise describe_kafka_error(err, target_bootstrap) from None
        self.error = None

    def _subscribe(self) -> None:
        assert self.consumer is not None
        self.consumer.subscribe(sorted(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _loop(self, stop: threading.Event) -> None:
        assert self.consumer is not None
        next_report = 0.0
        next_refresh = time.monotonic() + self.settings.topic_refresh_interval
        while not stop.is_set():
            self.metrics.tick()
            messages = self.consumer.consume(CONSUME_BATCH, timeout=0.5)
            if messages:
                self._copy(messages)
            if time.monotonic() >= next_refresh:
                self._refresh()
                next_refresh = time.monotonic() + self.settings.topic_refresh_interval
            if time.monotonic() >= next_report:
                self._report("Failed" if self.error else "Rebalancing" if self.rebalancing else "Running")
                next_report = time.monotonic() + self.settings.report_interval

    def _refresh(self) -> None:
        """New matching topics and partition growth: re-shape the targets and resubscribe when needed."""
        before = dict(self.topics)
        if not self._topics_ready():
            return
        if sorted(self.topics) != sorted(before) or any(
            self.topics[t].target_partitions != before[t].target_partitions for t in before if t in self.topics
        ):
            log.info("topics changed: now %s", ", ".join(sorted(self.topics)))
            self._subscribe()

    # -- assignment ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self.rebalancing = False
        blocked = [tp for tp in assigned if tp.partition >= self.topics[tp.topic].target_partitions]
        if blocked:  # no partition to write them to yet: hold them, never skip them
            consumer.pause(blocked)
        self.assigned = {(tp.topic, tp.partition) for tp in assigned}
        log.info("assigned %d partitions (%d held for missing target partitions)", len(assigned), len(blocked))

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        self.rebalancing = True
        self.assigned -= {(tp.topic, tp.partition) for tp in revoked}

    # -- copying ---------------------------------------------------------------------------------

    def _copy(self, messages: list[Message]) -> None:
        """Produce a consumed batch, wait for the target's acknowledgements, then commit."""
        assert self.consumer is not None and self.producer is not None
        first: dict[TP, int] = {}
        last: dict[TP, int] = {}
        copied: dict[TP, tuple[int, int]] = {}
        held: dict[TP, int] = {}
        failed: KafkaException | None = None
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self._fail(describe_kafka_error(KafkaException(err), self.source_config["bootstrap.servers"]))
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            key = (topic, partition)
            if partition >= self.topics[topic].target_partitions or key in held:
                held.setdefault(key, offset)  # no target partition yet: neither copied nor committed
                continue
            first.setdefault(key, offset)
            last[key] = offset
            headers: list[tuple[str, str | bytes | None]] = list(message_headers(message))
            origin = origin_of(headers)
            if origin == self.target_instance:
                self.loop_skipped += 1
                continue
            if origin is None:
                headers.append((ORIGIN_HEADER, self.source_instance.encode()))
            try:
                self._produce(self.topics[topic].target, partition, message, headers)
            except KafkaException as err:
                failed = err
                break
            records, size = copied.get(key, (0, 0))
            copied[key] = (records + 1, size + len(message.value() or b"") + len(message.key() or b""))
        self._hold(held)
        remaining = self.producer.flush(60)
        if failed is not None or remaining or self.delivery_errors:
            if failed is not None:
                problem = failed.args[0].str()
            elif self.delivery_errors:
                problem = self.delivery_errors[0].str()
            else:
                problem = f"{remaining} records unacknowledged"
            self.delivery_errors.clear()
            self._fail(TaskError("TargetWriteFailed", f"the target did not take the records: {problem}"))
            for (topic, partition), offset in first.items():  # redo from the batch's first record
                self.consumer.seek(TopicPartition(topic, partition, offset))
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:
            self._fail(describe_kafka_error(err, self.source_config["bootstrap.servers"]))
            return
        for (topic, partition), offset in last.items():
            self.committed[(topic, partition)] = offset + 1
        for (topic, partition), (records, size) in copied.items():
            self.metrics.partition(self.metrics.records, topic, partition).inc(records)
            self.metrics.partition(self.metrics.bytes, topic, partition).inc(size)
            self.totals.records += records
            self.totals.bytes += size
        self.error = None

    def _hold(self, held: dict[TP, int]) -> None:
        """Rewind and pause partitions that have nowhere to go yet; a later resubscribe picks them up."""
        assert self.consumer is not None
        for (topic, partition), offset in held.items():
            tp = TopicPartition(topic, partition, offset)
            self.consumer.seek(tp)
            self.consumer.pause([tp])

    def _produce(
        self, topic: str, partition: int, message: Message, headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        assert self.producer is not None
        _, timestamp = message.timestamp()
        while True:
            try:
                self.producer.produce(
                    topic,
                    value=message.value(),
                    key=message.key(),
                    partition=partition,
                    headers=headers,
                    timestamp=timestamp,
                    on_delivery=self._delivered,
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.1)

    def _delivered(self, err: KafkaError | None, _: Message) -> None:
        if err is not None:
            self.delivery_errors.append(err)

    # -- reporting -------------------------------------------------------------------------------

    def _fail(self, err: TaskError) -> None:
        changed = self.error is None or self.error.reason != err.reason
        self.error = err
        self.metrics.error(err.reason)
        if changed:  # at once; repeats wait for the periodic report
            log.warning("%s", err)
            self._report("Failed")

    def _partition_progress(self) -> list[PartitionProgress]:
        delivered = {key: self.committed.get(key) for key in self.assigned}
        return partition_progress(self.consumer, delivered, delivered, self.metrics)

    def _rate(self) -> float:
        """Records copied per second since the previous report (the target topics' write rate)."""
        now, (then, records) = time.monotonic(), self.rate_mark
        self.rate_mark = (now, self.totals.records)
        return round((self.totals.records - records) / max(now - then, 1e-3), 1)

    def _report(self, phase: str) -> None:
        error = worker_error(phase, self.error)
        self.metrics.up.labels(**self.metrics.labels).set(0 if error else 1)
        self.reporter.report(
            Progress(
                phase=phase,
                partitions=self._partition_progress(),
                totals=self.totals.model_copy(),
                error=error,
                epoch=self.epoch,
                extra={
                    "topics": [t.wire() for t in list(self.topics.values())[:200]],
                    "topicCount": len(self.topics),
                    "loopRecordsSkipped": self.loop_skipped,
                    "recordsPerSecond": self._rate(),
                },
            )
        )
