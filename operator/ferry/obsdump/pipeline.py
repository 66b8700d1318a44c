"""The ObsDumpTask worker: consume topics, cut one object per topic-partition per period, commit after upload.

Exactly once in the bucket: a batch's object key depends only on its first record, and the offset after
the batch is committed only once the object is complete. A worker that dies between the two re-reads
the batch from the committed offset and overwrites the same object. An object closed early by
maxRecordsPerObject or maxBytesPerObject is closed at a record that depends only on the records from its
first one (their count, their encoded size before compression, for Parquet their plain-encoded size), so a
rerun closes it at the same record, or later if the first run cut it by the period, and the next object
starts where it did.

Parts and objects are sent by a few threads (storage.UploadPool) while the worker's thread goes on consuming;
it stops taking records while the bytes they hold are over the budget (WorkerSettings.upload_budget_bytes).
A batch closed by a cut waits in its partition's queue: its object is completed once every part is sent and
every earlier object of the partition is committed, and the offset after it is committed once its object is
complete (CompleteMultipartUpload, or the PUT of a small object, done), in offset order. So no object of a
partition becomes visible while an earlier one is uncommitted, and a rerun finds at most one object past the
committed offset: the one it rewrites.

Any failure while writing a batch (a part, the completion or the commit) drops it, and every later batch of
its partition, and seeks back to its first offset, so the next attempt rebuilds the same objects; nothing is
skipped and nothing is written twice under two keys. A pooled job's failure is handled by the worker's thread
exactly as the same error raised there would be. The retry pace is set by the store client's own backoff and
by the period (a failed cut is retried at the next). A revoked partition's batches are written and committed
before it is given up; a lost one's are dropped.

With throughput caps (spec.maxRecordsPerSecond, spec.maxBytesPerSecond) a batch is admitted against this
worker's share of them when it is consumed, before any of it is written into objects (ferry.pipeline
`_consume`); a wait on them only delays the next batch, so objects and commits are as without caps.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from ferry.api.base import PartitionProgress
from ferry.errors import TaskError, retry_until_stopped
from ferry.kafka import (
    admin_client,
    close_within,
    describe_kafka_error,
    group_consumer_config,
    group_moved_on,
    look_up,
    message_headers,
    partition_progress,
    require_topics,
    unreachable_after,
    watched,
)
from ferry.metrics import WorkerMetrics
from ferry.obsdump.model import ObjectFormat, ObsDumpTaskSpec
from ferry.obsdump.parquet import ParquetObject, record_size, require_pyarrow
from ferry.obsdump.records import Record, dump_batch_key, encode_record, object_key_pattern
from ferry.obsdump.storage import ObjectStore, ObjectUpload, UploadPool, unresponsive
from ferry.pipeline import KAFKA, PAUSE_AFTER, WorkerPipeline
from ferry.reporting import Reporter, ResetLedger, utc_now
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle, batch_cost

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
    completion: Future[None] | None = None  # the object's completion, once handed to the pool
    closed_at: float = 0.0

    def add(self, item: bytes | Record, size: int) -> None:
        """Write one encoded record (raw, jsonl), or hand one record to the Parquet writer."""
        if isinstance(item, Record):
            assert self.parquet is not None
            self.parquet.add(item, size)
        else:
            self.upload.write(item)

    def close(self) -> None:
        """No more records: the Parquet footer or the compressor's last bytes are written (to be sent)."""
        if self.parquet is not None:
            self.parquet.close()
        self.upload.close()
        self.closed_at = time.monotonic()

    def failure(self) -> BaseException | None:
        """Why a part or the completion failed in the pool, if one did."""
        if self.completion is not None and self.completion.done():
            return self.completion.exception()
        return self.upload.parts_failure()

    def drop(self) -> None:
        if self.completion is not None and not self.completion.done():
            # Its object may still appear: wait, so that it cannot land after the same object written again.
            self.completion.exception()
        if self.parquet is not None:
            self.parquet.discard()
        self.upload.abort()


@dataclass
class PartitionState:
    committed: int | None = None  # next offset to read, as committed by us or found in the group
    batch: Batch | None = None  # the open batch, taking records
    closing: deque[Batch] = field(default_factory=deque)  # closed, in offset order, until committed

    @property
    def first_uncommitted(self) -> Batch | None:
        try:  # also read by the heartbeat's reports, while the loop may pop it
            return self.closing[0]
        except IndexError:
            return self.batch


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
        self.separator_tail = self.separator[:-1]  # what contains_separator adds to a value
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
        self.uploads = UploadPool(self.settings.upload_threads, self.settings.upload_budget_bytes)
        self.budget_wait_since: float | None = None  # when the bytes in flight went over the budget
        self.budget_paused = False  # the partitions are paused for a long wait on the budget

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
            self.uploads.shutdown()

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
            if self._settle_all():  # objects being written: back soon, to complete and commit them
                wait = min(wait, 0.01)
            self.sought_back.clear()  # a seek back before the batch: all of it comes from the new position
            if self.uploads.over_budget():
                messages = self._wait_on_budget(self.consumer, wait)
            else:
                self._resume_after_budget(self.consumer)
                messages = self._consume(self.consumer, CONSUME_BATCH, wait)
            self._take_all(messages)
            if self.clock() >= next_cut:
                self._close_all()
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
        """Still ours until this returns: every batch of the revoked partitions is written and committed (or,
        failing, dropped), waiting for the pool meanwhile."""
        self.rebalancing = True
        keys = [(tp.topic, tp.partition) for tp in revoked if (tp.topic, tp.partition) in self.partitions]
        self._cut_all(keys)
        for key in keys:
            self.partitions.pop(key, None)

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        for tp in lost:  # another member owns them now: drop, never commit
            state = self.partitions.pop((tp.topic, tp.partition), None)
            if state is not None:
                self._drop_all(state)

    # -- records ---------------------------------------------------------------------------------

    def _take_all(self, messages: list[Message]) -> None:
        """A consumed batch, in order. Value-only objects with a one-byte separator take each run of one partition's
        records at once (_take_run); the rest, and a run _take_run leaves, go record by record (_take)."""
        if self.format is not ObjectFormat.RAW or len(self.separator) != 1:
            for message in messages:
                self._take(message)
            return
        # Grouped by C calls (groupby, map over the Message methods) rather than a Python loop over the records.
        for _, same_partition in groupby(messages, Message.partition):
            group = list(same_partition)
            runs = (
                [group]
                if len(set(map(Message.topic, group))) == 1
                else [list(r) for _, r in groupby(group, Message.topic)]
            )
            for run in runs:
                if any(map(Message.error, run)) or not self._take_run(run):
                    for message in run:
                        self._take(message)

    def _take_run(self, run: list[Message]) -> bool:
        """Consecutive records of one partition, none an error, appended as one write: the values joined by the
        separator. Exactly what _take does for each of them, when none of them needs it to do more: False (and
        nothing taken) when a value holds the separator (it is counted and warned about), a value or key is
        text, the run is larger than a part, or it would reach the object's record or byte cap (a cut inside)."""
        first = run[0]
        topic, partition = first.topic(), first.partition()
        assert topic is not None and partition is not None
        key = (topic, partition)
        if self.errors:
            self._clear(KAFKA)
        if key in self.sought_back:
            return True  # sought back during this consume() result: these records come again
        separator, count = self.separator, len(run)
        try:
            data = separator.join([message.value() or b"" for message in run]) + separator
            key_bytes = len(b"".join(filter(None, [message.key() for message in run])))
        except TypeError:  # a text value or key: _take encodes it
            return False
        if data.count(separator) != count:  # a value holds the separator
            return False
        if len(data) > self.store.part_bytes:  # large records (their bytes outweigh the per-record cost): one by one,
            return False  # so that no write fills more than one part and the parts in flight stay within the budget
        state = self.partitions.get(key)
        batch = state.batch if state is not None else None
        records = batch.records if batch is not None else 0
        encoded = batch.encoded_bytes if batch is not None else 0
        if (self.max_records is not None and records + count >= self.max_records) or (
            self.max_bytes is not None and encoded + len(data) >= self.max_bytes
        ):
            return False
        if state is None:
            state = self.partitions[key] = PartitionState()
        if batch is None:
            _, timestamp = first.timestamp()
            offset = first.offset()
            assert offset is not None
            batch = state.batch = self._open_batch(topic, partition, offset, timestamp)
        try:  # a full part is handed to the pool: this does not wait for the store
            batch.upload.write(data)
        except Exception as failure:
            self._redo(state, failure)
            return True
        last = run[-1].offset()
        assert last is not None
        self._appended(batch, last, count, len(data) - count + key_bytes, len(data))
        return True

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
        got_value: Any = message.value()
        got_key: Any = message.key()
        # as_bytes, inline on the hot path
        value: bytes | None = got_value.encode() if got_value.__class__ is str else got_value
        record_key: bytes | None = got_key.encode() if got_key.__class__ is str else got_key
        ambiguous = False
        item: bytes | Record
        raw = self.format is ObjectFormat.RAW
        if raw:  # the hot path: value bytes and the separator, nothing else to build
            item = (value or b"") + self.separator
            size = len(item)
            # contains_separator, inline: a one-byte separator cannot begin in the value and end after it
            tail = self.separator_tail
            ambiguous = value is not None and self.separator in (value + tail if tail else value)
            timestamp = 0  # read only when it opens a batch
        else:
            _, timestamp = message.timestamp()
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
            if raw:
                _, timestamp = message.timestamp()
            state.batch = self._open_batch(topic, partition, offset, timestamp)
        batch = state.batch
        try:  # a full part is handed to the pool: this does not wait for the store
            if raw:
                batch.upload.write(item)  # type: ignore[arg-type]
            else:
                batch.add(item, size)
        except Exception as failure:
            self._redo(state, failure)
            return
        self._appended(batch, offset, 1, len(value or b"") + len(record_key or b""), size)
        if ambiguous:
            self._ambiguous_record(batch, offset)
        if (self.max_records is not None and batch.records >= self.max_records) or (
            self.max_bytes is not None and batch.encoded_bytes >= self.max_bytes
        ):
            self._cut(key)

    def _appended(self, batch: Batch, last_offset: int, records: int, payload_bytes: int, encoded_bytes: int) -> None:
        """After records were written to the batch's object (_take, _take_run): wait while the part that write
        handed over took the pool over the budget, then count them in the batch."""
        if self.uploads.in_flight > self.uploads.budget_bytes:
            with self._waiting_on_store(f"uploading the parts in flight, {batch.upload.key} among them"):
                self.uploads.wait_for_parts()
        batch.last_offset = last_offset
        batch.records += records
        batch.payload_bytes += payload_bytes
        batch.encoded_bytes += encoded_bytes

    def _open_batch(self, topic: str, partition: int, offset: int, timestamp: int) -> Batch:
        upload = self.store.open(dump_batch_key(self.target, topic, partition, offset, timestamp), self.uploads)
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

    def _close_all(self) -> None:
        """The period's cut: every open batch closed, to be written and committed in the background."""
        for key in list(self.partitions):
            self._cut(key)

    def _cut(self, key: TP) -> bool:
        """Close the partition's open batch (its object then completed and committed by `_settle`); with none open
        and none closing, commit the position. False when the batch was dropped and sought back."""
        state = self.partitions.get(key)
        if state is None:
            return True
        if state.batch is None:
            if not state.closing:
                self._advance_idle(key, state)
            return True
        batch = state.batch
        try:
            batch.close()
        except Exception as err:
            self._redo(state, err)
            return False
        state.closing.append(batch)
        state.batch = None
        return self._settle(key, state)

    def _cut_all(self, keys: list[TP] | None = None) -> bool:
        """Close every open batch (of `keys`, or of all partitions) and wait until each is written and committed,
        or dropped; True when all succeeded."""
        keys = list(self.partitions) if keys is None else keys
        ok = True
        for key in keys:
            ok = self._cut(key) and ok
        pending = [key for key in keys if key in self.partitions and self.partitions[key].closing]
        if not pending:
            return ok
        with self._waiting_on_store(f"writing the last objects of {len(pending)} partitions"):
            while pending:
                self.uploads.wait(0.05)
                for key in pending:
                    state = self.partitions.get(key)
                    if state is not None:
                        ok = self._settle(key, state) and ok
                pending = [key for key in pending if key in self.partitions and self.partitions[key].closing]
        return ok

    def _settle_all(self) -> bool:
        """`_settle` every partition; True while some closed batch is not committed yet."""
        closing = False
        for key, state in list(self.partitions.items()):
            if state.closing or state.batch is not None:
                self._settle(key, state)
                closing = closing or bool(state.closing)
        return closing

    def _settle(self, key: TP, state: PartitionState) -> bool:
        """Move a partition's closed batches on, in order, as far as the pool has got: once every part of the
        first is sent, hand its completion to the pool; once that is done, commit the offset after it. A failure
        of the first batch's part or completion, or of the open batch's part (when it is the first), is handled
        as it was raised here: `_redo`. False when batches were dropped."""
        while state.closing:
            batch = state.closing[0]
            failure = batch.failure()
            if failure is not None:
                self._redo(state, failure)
                return False
            if batch.completion is None:
                if batch.upload.parts_pending():
                    return True
                batch.completion = self.uploads.submit(0, f"writing {batch.upload.key}", batch.upload.complete)
                return True
            if not batch.completion.done():
                return True
            try:
                self._commit(batch.topic, batch.partition, batch.last_offset + 1)
            except Exception as err:
                self._redo(state, err)
                return False
            state.closing.popleft()
            self._written(key, state, batch)
        if state.batch is not None:
            failure = state.batch.upload.parts_failure()
            if failure is not None:
                self._redo(state, failure)
                return False
        return True

    def _written(self, key: TP, state: PartitionState, batch: Batch) -> None:
        """A batch's object is complete and the offset after it committed."""
        self.metrics.dump_latency.labels(**self.metrics.labels).observe(time.monotonic() - batch.closed_at)
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
        if self.uploads.stuck(unreachable_after(self.settings)) is None:  # not while another upload hangs
            self._clear(STORE)
        self._clear(KAFKA)

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

    def _drop_all(self, state: PartitionState) -> None:
        batches = [*state.closing, *([state.batch] if state.batch is not None else [])]
        state.closing.clear()
        state.batch = None
        for batch in batches:
            with self._waiting_on_store(f"aborting the upload of {batch.upload.key}"):
                batch.drop()

    def _redo(self, state: PartitionState, err: BaseException) -> None:
        """Drop the first uncommitted batch, which could not be written, and every later one of its partition, and
        seek back to its first record."""
        assert self.consumer is not None
        batch = state.first_uncommitted
        assert batch is not None
        self._drop_all(state)
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

    def _check_liveness(self) -> None:
        """The brokers' liveness, and an upload the pool has been running for as long as makes an outage: named
        while it lasts, though the worker's thread is not blocked in it."""
        super()._check_liveness()
        stuck = self.uploads.stuck(unreachable_after(self.settings))
        if stuck is not None:
            seconds, doing = stuck
            with self.heartbeat.lock:
                self._fail(unresponsive(self.target, doing, seconds), STORE)

    # -- the upload budget -----------------------------------------------------------------------

    def _wait_on_budget(self, consumer: Consumer, wait: float) -> list[Message]:
        """One slice of a wait for the pool to send what it holds, while that is over the budget; a long wait
        pauses the partitions and calls the consumer meanwhile (rebalances, max.poll.interval.ms). What it returns
        anyway is a batch like any other: nothing is dropped."""
        now = time.monotonic()
        if self.budget_wait_since is None:
            self.budget_wait_since = now
        self.uploads.wait(min(wait, 0.05))
        self._settle_all()
        self.sought_back.clear()
        if self.budget_paused or now - self.budget_wait_since > PAUSE_AFTER:
            if not self.budget_paused:
                log.info("waiting on the object store: %d bytes in flight, over the budget", self.uploads.in_flight)
            assignment = consumer.assignment()
            if assignment:  # again each slice: partitions assigned meanwhile come unpaused
                consumer.pause(assignment)
            self.budget_paused = True
            messages = consumer.consume(CONSUME_BATCH, timeout=0)
            if messages and self.throttle is not None:  # read all the same: they count against the caps
                self.throttle.take(*batch_cost(messages))
            return list(messages)
        return []

    def _resume_after_budget(self, consumer: Consumer) -> None:
        self.budget_wait_since = None
        if not self.budget_paused:
            return
        self.budget_paused = False
        if not self.cap_paused:  # the caps resume them when their wait is over
            consumer.resume(consumer.assignment())

    def _resumable(self, topic: str, partition: int) -> bool:
        return not self.budget_paused

    def _partition_progress(self, reachable: bool) -> list[PartitionProgress]:
        partitions = list(self.partitions.items())  # one copy: the heartbeat may report while the loop changes them
        delivered = {}
        for key, state in partitions:
            batch = state.first_uncommitted
            delivered[key] = batch.start_offset if batch is not None else state.committed
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
