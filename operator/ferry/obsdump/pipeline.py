"""The ObsDumpTask worker: consume topics, cut one object per topic-partition per period, commit after upload.

Exactly once in the bucket: a batch's object key depends only on its first record, and the offset after
the batch is committed only once the object is complete. A worker that dies between the two re-reads
the batch from the committed offset and overwrites the same object. An object closed early by
maxRecordsPerObject or maxBytesPerObject is closed at a record that depends only on the records from its
first one (their count, their encoded size before compression, for Parquet their plain-encoded size), so a
rerun closes it at the same record, or later if the first run cut it by the period, and the next object
starts where it did.

Any failure while writing a batch (upload, completion or commit) drops the batch and seeks back to its
first offset, so the next attempt rebuilds the same object; nothing is skipped and nothing is written twice
under two keys. The retry pace is set by the store client's own backoff and by the period (a failed cut is
retried at the next).

With throughput caps (spec.maxRecordsPerSecond, spec.maxBytesPerSecond) a batch is admitted against this
worker's share of them when it is consumed, before any of it is written into objects (ferry.pipeline
`_consume`); a wait on them only delays the next batch, so objects and commits are as without caps.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from ferry.api.base import PartitionProgress
from ferry.errors import TaskError, retry_until_stopped
from ferry.kafka import (
    admin_client,
    as_bytes,
    close_within,
    describe_kafka_error,
    group_consumer_config,
    group_moved_on,
    look_up,
    message_headers,
    partition_progress,
    require_topics,
    watched,
)
from ferry.metrics import WorkerMetrics
from ferry.obsdump.model import ObjectFormat, ObsDumpTaskSpec
from ferry.obsdump.parquet import ParquetObject, record_size, require_pyarrow
from ferry.obsdump.records import Record, contains_separator, dump_batch_key, encode_record, object_key_pattern
from ferry.obsdump.storage import ObjectStore, ObjectUpload, unresponsive
from ferry.pipeline import KAFKA, WorkerPipeline
from ferry.reporting import Reporter, ResetLedger, utc_now
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle

log = logging.getLogger(__name__)

TP = tuple[str, int]
CONSUME_BATCH = 5000
STORE = "store"


@dataclass
class Batch:
    """The records of one topic-partition since its last object."""

    topic: str
    partition: int
    start_offset: int
    upload: ObjectUpload
    last_offset: int
    records: int = 0
    payload_bytes: int = 0
    encoded_bytes: int = 0  # the records and separators as written before compression (Parquet: record_size)
    separator_records: int = 0  # values-only records whose value contains the separator
    parquet: ParquetObject | None = None  # the Parquet writer in front of the upload, for format parquet

    def add(self, item: bytes | Record, size: int) -> None:
        """Write one encoded record (raw, jsonl), or hand one record to the Parquet writer."""
        if isinstance(item, Record):
            assert self.parquet is not None
            self.parquet.add(item, size)
        else:
            self.upload.write(item)

    def finish(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.upload.finish()

    def drop(self) -> None:
        if self.parquet is not None:
            self.parquet.discard()
        self.upload.abort()


@dataclass
class PartitionState:
    committed: int | None = None  # next offset to read, as committed by us or found in the group
    batch: Batch | None = None


class DumpPipeline(WorkerPipeline):
    sides = (STORE, KAFKA)

    def __init__(
        self,
        spec: ObsDumpTaskSpec,
        kafka_config: dict[str, Any],
        consumer_group: str,
        store: ObjectStore,
        reporter: Reporter,
        metrics: WorkerMetrics,
        settings: WorkerSettings | None = None,
        epoch: int = 0,
        clock: Callable[[], float] = time.time,
        *,
        resets: ResetLedger | None = None,
        reset_to: str | None = None,
    ) -> None:
        super().__init__(
            str(kafka_config["bootstrap.servers"]),
            reporter,
            metrics,
            settings or WorkerSettings(),
            epoch,
            Throttle.share_of(spec),
            resets=resets,
            reset_to=reset_to,
        )
        self.spec = spec
        self.target = spec.target
        self.kafka_config = kafka_config
        self.group = consumer_group
        self.store = store
        self.clock = clock
        self.metrics.dump_period.labels(**self.metrics.labels).set(spec.dump_period_seconds)
        self.metrics.last_dump.labels(**self.metrics.labels).set_to_current_time()
        self.format = spec.target.object_format
        self.separator = spec.target.record_separator.encode("utf-8")
        self.max_records = spec.max_records_per_object
        self.max_bytes = spec.max_bytes_per_object
        self.partitions: dict[TP, PartitionState] = {}
        self.subscribed: list[str] = []
        self.objects_written = 0
        self.separator_records = 0  # since the start, in objects written
        self.warned_separator = False
        self.last_dump_time: str | None = None
        self.last_object_key: str | None = None
        # Kafka trouble clears when Kafka works again, store trouble when an object is written.
        self.consumer: Consumer | None = None
        self.source_cluster: str | None = None  # what the brokers answered to "which cluster are you"
        self.topic_partitions: dict[str, int] = {}  # every topic of the source and its partitions, as looked up
        # Partitions sought back during the current consume() result: the rest of it is stale for them.
        self.sought_back: set[TP] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set, then write what was read, commit it and leave the group."""
        with self.heartbeat:
            self._run(stop)

    def _run(self, stop: threading.Event) -> None:
        if not retry_until_stopped(stop, self._workable, self.metrics.tick) or not retry_until_stopped(
            stop, lambda: self._reset_once(self.kafka_config, self.group, self._reset_partitions), self.metrics.tick
        ):
            return
        self.consumer = Consumer(self._consumer_config())
        try:
            self._refresh_subscription(force=True)
            self._loop(stop)
            self._cut_all()
        finally:
            self._report("Stopped")
            close_within(self.consumer, "the consumer")

    def _consumer_config(self) -> dict[str, Any]:
        config = group_consumer_config(
            self.kafka_config,
            self.group,
            self.spec.start_from,
            self.settings.session_timeout_ms,
            f"ferry-obsdump-{self.group}",
            self.settings.topic_refresh_interval,
        )
        return watched(config, self.liveness, self.settings.report_interval)

    def _workable(self) -> bool:
        """The bucket and the topics are there (otherwise reported Failed, and retried by the caller)."""
        return self._works(STORE, self._check_store) and self._works(KAFKA, self._check_topics)

    def _check_store(self) -> None:
        if self.format is ObjectFormat.PARQUET:
            require_pyarrow()
        with self._waiting_on_store("checking the bucket"):
            self.store.check()

    def _check_topics(self) -> None:
        bootstrap = self.bootstrap
        view = look_up(admin_client(self.kafka_config), bootstrap)
        self.source_cluster = view.cluster_id
        self.topic_partitions = dict(view.topics)
        if self.spec.topics is not None:
            require_topics(self.spec.topics, view.topics, bootstrap, "TopicNotFound")

    def _reset_partitions(self) -> list[tuple[str, int]]:
        """Every partition of the topics the task dumps, as last looked up: what an offset reset moves."""
        if self.spec.topics is not None:
            topics = sorted(set(self.spec.topics) & set(self.topic_partitions))
        else:
            assert self.spec.topic_regex is not None
            pattern = re.compile(self.spec.topic_regex)
            topics = sorted(t for t in self.topic_partitions if not t.startswith("__") and pattern.fullmatch(t))
        return [(topic, p) for topic in topics for p in range(self.topic_partitions[topic])]

    def _loop(self, stop: threading.Event) -> None:
        assert self.consumer is not None
        period = self.spec.dump_period_seconds
        next_cut = (self.clock() // period + 1) * period
        next_report = 0.0
        next_refresh = time.monotonic() + self.settings.topic_refresh_interval
        while not stop.is_set():
            self.metrics.tick()
            wait = max(0.05, min(0.5, next_cut - self.clock()))
            self.sought_back.clear()
            for message in self._consume(self.consumer, CONSUME_BATCH, wait):
                self._take(message)
            if self.clock() >= next_cut:
                self._cut_all()
                next_cut = (self.clock() // period + 1) * period
            if time.monotonic() >= next_refresh:
                self._refresh_subscription()
                next_refresh = time.monotonic() + self.settings.topic_refresh_interval
            if time.monotonic() >= next_report:
                self._periodic_report()
                next_report = time.monotonic() + self.settings.report_interval

    # -- topics and assignment -------------------------------------------------------------------

    def _matching_topics(self) -> list[str]:
        if self.spec.topics is not None:
            return sorted(self.spec.topics)
        assert self.consumer is not None and self.spec.topic_regex is not None
        pattern = re.compile(self.spec.topic_regex)
        metadata = self.consumer.list_topics(timeout=10)
        return sorted(t for t in metadata.topics if not t.startswith("__") and pattern.fullmatch(t))

    def _refresh_subscription(self, force: bool = False) -> None:
        assert self.consumer is not None
        try:
            topics = self._matching_topics()
        except KafkaException as err:
            self._fail(describe_kafka_error(err, self.bootstrap), KAFKA)
            return
        if topics and (force or topics != self.subscribed):
            log.info("subscribing to %d topics: %s", len(topics), ", ".join(topics))
            self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
            self.subscribed = topics
        elif not topics and self.spec.topic_regex is not None:
            self._fail(TaskError("NoMatchingTopics", f"no topic matches {self.spec.topic_regex!r} yet"), KAFKA)

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self.rebalancing = False
        # Where each partition starts: its committed offset, or the earliest one if the retention deleted that.
        starts = self._start_past_expired(consumer, assigned, self.kafka_config)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            if key in self.partitions:
                continue  # still ours (no revoke came): its open batch must not be lost
            self.partitions[key] = PartitionState(committed=starts.get(key))
            self.store.abort_stale_uploads(object_key_pattern(tp.topic, tp.partition))
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        self.rebalancing = True
        for tp in revoked:
            key = (tp.topic, tp.partition)
            if key in self.partitions:
                self._cut(key)
                self.partitions.pop(key, None)

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        for tp in lost:  # another member owns them now: drop, never commit
            state = self.partitions.pop((tp.topic, tp.partition), None)
            if state and state.batch:
                state.batch.drop()

    # -- records ---------------------------------------------------------------------------------

    def _take(self, message: Message) -> None:
        err = message.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                self._fail(TaskError("TopicNotFound", f"topic {message.topic()} no longer exists: {err.str()}"), KAFKA)
                return
            self._fail(describe_kafka_error(KafkaException(err), self.bootstrap), KAFKA)
            return
        if self.errors:
            self._clear(KAFKA)
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        key = (topic, partition)
        if key in self.sought_back:
            return
        state = self.partitions.get(key)
        if state is None:
            state = self.partitions[key] = PartitionState()
        _, timestamp = message.timestamp()
        value, record_key = as_bytes(message.value()), as_bytes(message.key())
        ambiguous = False
        item: bytes | Record
        if self.format is ObjectFormat.RAW:  # the hot path: value bytes and the separator, nothing else to build
            item = (value or b"") + self.separator
            size = len(item)
            ambiguous = value is not None and contains_separator(value, self.separator)
        else:
            item = Record(offset, timestamp, record_key, value, message_headers(message))
            if self.format is ObjectFormat.JSONL:
                item = encode_record(item, True, self.separator)
                size = len(item)
            else:
                size = record_size(topic, item)
        if (
            state.batch is not None
            and self.max_bytes is not None
            and state.batch.encoded_bytes + size > self.max_bytes
            and not self._cut(key)  # the record would take the object over the cap: it starts the next one
        ):
            return  # the batch was dropped and sought back to its first record: this one comes again
        if state.batch is None:
            state.batch = self._open_batch(topic, partition, offset, timestamp)
        batch = state.batch
        try:
            with self._waiting_on_store(f"uploading a part of {batch.upload.key}"):
                batch.add(item, size)
        except Exception as failure:
            self._redo(state, failure)
            return
        batch.last_offset = offset
        batch.records += 1
        batch.payload_bytes += len(value or b"") + len(record_key or b"")
        batch.encoded_bytes += size
        if ambiguous:
            self._ambiguous_record(batch, offset)
        if (self.max_records is not None and batch.records >= self.max_records) or (
            self.max_bytes is not None and batch.encoded_bytes >= self.max_bytes
        ):
            self._cut(key)

    def _open_batch(self, topic: str, partition: int, offset: int, timestamp: int) -> Batch:
        upload = self.store.open(dump_batch_key(self.target, topic, partition, offset, timestamp))
        parquet = None
        if self.format is ObjectFormat.PARQUET:
            parquet = ParquetObject(upload, topic, partition, self.target.compression)
        return Batch(topic, partition, offset, upload, offset, parquet=parquet)

    def _ambiguous_record(self, batch: Batch, offset: int) -> None:
        batch.separator_records += 1
        if not self.warned_separator:
            self.warned_separator = True
            log.warning(
                "the value of %s[%d] at offset %d contains the record separator %r: in the values-only format it "
                "reads back as more than one record (counted in recordsContainingSeparator; this is said once; "
                "format jsonl or parquet writes records that cannot be confused)",
                batch.topic,
                batch.partition,
                offset,
                self.target.record_separator,
            )

    # -- cutting objects -------------------------------------------------------------------------

    def _cut_all(self) -> bool:
        """Write every pending batch; True when all succeeded."""
        ok = True
        for key in list(self.partitions):
            ok = self._cut(key) and ok
        return ok

    def _cut(self, key: TP) -> bool:
        state = self.partitions.get(key)
        if state is None:
            return True
        if state.batch is None:
            self._advance_idle(key, state)
            return True
        batch = state.batch
        started = time.monotonic()
        try:
            with self._waiting_on_store(f"writing {batch.upload.key}"):
                batch.finish()
            self._commit(batch.topic, batch.partition, batch.last_offset + 1)
        except Exception as err:
            self._redo(state, err)
            return False
        self.metrics.dump_latency.labels(**self.metrics.labels).observe(time.monotonic() - started)
        self.metrics.partition(self.metrics.records, *key).inc(batch.records)
        self.metrics.partition(self.metrics.bytes, *key).inc(batch.payload_bytes)
        self.metrics.objects.labels(**self.metrics.labels, topic=batch.topic).inc()
        if batch.separator_records:
            self.metrics.separator_records.labels(**self.metrics.labels, topic=batch.topic).inc(batch.separator_records)
            self.separator_records += batch.separator_records
        self.totals.records += batch.records
        self.totals.bytes += batch.payload_bytes
        self.objects_written += 1
        self.metrics.last_dump.labels(**self.metrics.labels).set_to_current_time()
        self.last_dump_time = utc_now()
        self.last_object_key = batch.upload.key
        state.committed = batch.last_offset + 1
        state.batch = None
        self._clear(STORE)
        self._clear(KAFKA)
        return True

    def _commit(self, topic: str, partition: int, offset: int) -> None:
        assert self.consumer is not None
        with self._waiting_on_kafka("committing the dumped offsets"):
            result = self.consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        for tp in result or []:
            if tp.error is not None:
                raise KafkaException(tp.error)

    def _advance_idle(self, key: TP, state: PartitionState) -> None:
        """With nothing buffered, everything before the position is delivered (or was skipped by
        startFrom): commit it, so a restart before the first record does not re-resolve `latest`."""
        assert self.consumer is not None
        try:
            [position] = self.consumer.position([TopicPartition(*key)])
        except KafkaException:
            return
        if position.offset == OFFSET_INVALID or position.offset < 0:
            return
        if state.committed is None or position.offset > state.committed:
            try:
                self._commit(key[0], key[1], position.offset)
                state.committed = position.offset
                self._clear(KAFKA)
            except KafkaException as err:
                log.info("idle commit of %s[%d] failed: %s", key[0], key[1], err)

    def _redo(self, state: PartitionState, err: Exception) -> None:
        """Drop a batch that could not be written and seek back to its first record."""
        assert self.consumer is not None and state.batch is not None
        batch = state.batch
        with self._waiting_on_store(f"aborting the upload of {batch.upload.key}"):
            batch.drop()
        state.batch = None
        if isinstance(err, KafkaException) and group_moved_on(err):
            # the object is complete but the commit came too late: the new owner rewrites the same object
            log.info(
                "commit of %s refused, the group rebalanced (%s): its new owner writes it again", batch.upload.key, err
            )
            self.rebalancing = True
        elif isinstance(err, KafkaException):
            self._fail(describe_kafka_error(err, self.bootstrap), KAFKA)
        elif isinstance(err, TaskError) and err.reason == "BucketNotFound" and self.target.create_bucket:
            log.info("bucket %s is gone: creating it again (target.createBucket)", self.target.bucket)
            self._works(STORE, self._check_store)  # the batch is redone from Kafka, into the new bucket
        elif isinstance(err, TaskError):
            self._fail(err, STORE)
        else:
            self._fail(TaskError("ObjectStoreError", f"writing {batch.upload.key} failed: {type(err).__name__}"), STORE)
        self.sought_back.add((batch.topic, batch.partition))
        try:
            self.consumer.seek(TopicPartition(batch.topic, batch.partition, batch.start_offset))
        except KafkaException as seek_err:
            # Not assigned any more: the next owner starts from the committed offset, which is the same.
            log.info("seek back of %s[%d] failed: %s", batch.topic, batch.partition, seek_err)

    # -- reporting -------------------------------------------------------------------------------

    def _waiting_on_store(self, doing: str) -> AbstractContextManager[None]:
        return self.blocking.call(STORE, lambda seconds: unresponsive(self.target, doing, seconds))

    def _partition_progress(self, reachable: bool) -> list[PartitionProgress]:
        partitions = list(self.partitions.items())  # one copy: the heartbeat may report while the loop changes them
        delivered = {key: state.batch.start_offset if state.batch else state.committed for key, state in partitions}
        committed = {key: state.committed for key, state in partitions}
        return partition_progress(self.consumer, delivered, committed, self.metrics, reachable)

    def _extra(self) -> dict[str, Any]:
        return {
            "lastDumpTime": self.last_dump_time,
            "objectsWritten": self.objects_written,
            "lastObjectKey": self.last_object_key,
            "recordsContainingSeparator": self.separator_records if self.format is ObjectFormat.RAW else None,
            "sourceClusterId": self.source_cluster,
            **self._expired_fields(),
        }
