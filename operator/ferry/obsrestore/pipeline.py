"""The ObsRestoreTask worker: list a dump's objects, produce their records back into Kafka in offset order per
partition, save how far it got, and end once everything is restored.

Order: the objects of a topic-partition are restored one after the other in the order of their start offsets
(their names), and the records of each in the order they were dumped, to the same partition number of the
target topic, with an idempotent producer (acks=all, one partition's records never reordered by retries).

At least once, resumable: every CHECKPOINT_RECORDS records of an object, and at its end, the worker waits for the
target to acknowledge everything produced so far and then saves the resume point (ferry.reporting.ResumeStore:
the task's status.resumePoint, or `ferry run`'s state file). A worker killed in between produces again, when it
restarts, only what came after the last saved point: at most CHECKPOINT_RECORDS records of one object, never
a loss. For formats that store offsets, records at or before a partition's last restored offset are passed over,
so overlapping objects (a dump run again from an earlier offset) do not restore a record twice either.

A problem the worker cannot fix (a missing bucket or topic, refused credentials, an unreadable object, with from/to
a source.timeZone that is not the dump's: TimeZoneMismatch) is
reported as Failed with its reason and retried with backoff, from the resume point, as long as the task exists;
`run` ends the process with EXIT_INTERRUPTED when it is stopped (SIGTERM) before the restore is complete, so a
Job never counts an interrupted restore as done, and returns normally once it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from pydantic import ValidationError

from ferry.api.base import PartitionProgress
from ferry.errors import TaskError, retry_until_stopped
from ferry.kafka import admin_client, describe_kafka_error, look_up, watched
from ferry.metrics import WorkerMetrics
from ferry.obsdump.records import DumpedRecord
from ferry.obsrestore.model import ObsRestoreTaskSpec, PartitionResumePoint, ResumePoint
from ferry.obsrestore.objects import DumpObject, parse_key, plan, read_records
from ferry.obsrestore.store import DumpStore, unresponsive
from ferry.pipeline import KAFKA, WorkerPipeline
from ferry.reporting import ResumeStore, utc_now
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle

log = logging.getLogger(__name__)


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


STORE = "store"
STATUS = "status"
# Within an object, the target acknowledges and the resume point is saved every this many records.
CHECKPOINT_RECORDS = 5000
# How long the target may take to acknowledge a record (librdkafka's message.timeout.ms).
DELIVERY_TIMEOUT = 60.0
# The exit code of a worker stopped before the restore was complete (a Job restarts it; it resumes).
EXIT_INTERRUPTED = 3


@dataclass
class Pending:
    """What was produced (or passed over) since the last saved point."""

    records: int = 0
    bytes: int = 0
    skipped: int = 0


class RestorePipeline(WorkerPipeline):
    sides = (STORE, KAFKA, STATUS)

    def __init__(
        self,
        spec: ObsRestoreTaskSpec,
        kafka_config: dict[str, Any],
        store: DumpStore,
        resume: ResumeStore,
        reporter: Any,
        metrics: WorkerMetrics,
        settings: WorkerSettings | None = None,
        *,
        client_name: str = "ferry-obsrestore",
    ) -> None:
        super().__init__(
            str(kafka_config["bootstrap.servers"]),
            reporter,
            metrics,
            settings or WorkerSettings(),
            0,
            Throttle.share_of(spec),
        )
        self.spec = spec
        self.kafka_config = kafka_config
        self.store = store
        self.resume = resume
        self.client_name = client_name
        self.separator = spec.source.record_separator.encode("utf-8")
        self.from_ms = None if spec.from_ is None else int(spec.from_.timestamp() * 1000)
        self.to_ms = None if spec.to is None else int(spec.to.timestamp() * 1000)
        self.rebalancing = False  # no consumer group: nothing to wait for
        self.objects: list[DumpObject] = []
        self.point = ResumePoint.model_validate({})
        self.objects_done = 0
        self.values_only = 0
        self.current: str | None = None
        self.target_topics: dict[str, str] = {}
        self.target_cluster: str | None = None
        self.producer: Producer | None = None
        self.delivery_errors: list[KafkaError] = []
        self.next_report = 0.0
        self.succeeded = False

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Restore until done (return) or stopped (exit with EXIT_INTERRUPTED: not done, resume point saved)."""
        if not self.restore(stop):
            log.info("stopped before the restore was complete: it continues from the saved resume point")
            raise SystemExit(EXIT_INTERRUPTED)

    def restore(self, stop: threading.Event) -> bool:
        """Everything selected, produced and acknowledged: True; stopped first: False."""
        with self.heartbeat:
            try:
                done = retry_until_stopped(stop, self._prepare, self.metrics.tick) and self._restore_all(stop)
            finally:
                if self.producer is not None:
                    self.producer.flush(30)
                    self.producer = None
        self.succeeded = done
        self.current = None
        self._report("Succeeded" if done else "Stopped")
        if done:
            log.info(
                "restore complete: %d records from %d objects (%d passed over)",
                self.point.records,
                self.point.objects,
                self.point.skipped,
            )
        return done

    def _prepare(self) -> bool:
        """The dump's objects, the target topics and the resume point (otherwise reported Failed, and retried)."""
        return (
            self._works(STORE, self._plan)
            and self._works(KAFKA, self._check_target)
            and self._works(STATUS, self._load)
        )

    # -- what to restore -------------------------------------------------------------------------

    def _plan(self) -> None:
        source = self.spec.source
        with self._waiting_on_store("listing the dump's objects"):
            listed = self.store.list()
        objects = [o for key, size in listed if (o := parse_key(key, source.directory, source.time_zone, size))]
        wanted = None if self.spec.partitions is None else set(self.spec.partitions)
        present = {o.topic for o in objects if wanted is None or o.partition in wanted}
        missing = [t for t in self.spec.topics if t not in present]
        if missing:
            where = f"s3://{source.bucket}/{self.store.prefix}"
            which = "" if wanted is None else f" (partitions {sorted(wanted)})"
            raise TaskError(
                "NoObjectsFound",
                f"no dump objects of {', '.join(missing)}{which} under {where} ({len(objects)} dump objects of "
                f"{len({o.topic for o in objects})} topics there): check topics, partitions, source.bucket and "
                "source.directory (the dump's target.directory)",
            )
        self.objects = plan(objects, self.spec.topics, self.spec.partitions, self.from_ms, self.to_ms)
        if self.ranged:
            selected = [o for o in objects if o.topic in self.spec.topics and (wanted is None or o.partition in wanted)]
            self._probe_time_zone(selected)
        self.values_only = sum(1 for o in self.objects if o.values_only)
        self.target_topics = {t: self.spec.target_topic(t) for t in self.spec.topics}
        if self.values_only:
            log.warning(
                "%d of the %d objects are values-only (.bin): only their values are restored, without keys, headers "
                "or timestamps",
                self.values_only,
                len(self.objects),
            )

    @property
    def ranged(self) -> bool:
        """from or to is set: the time directories decide which objects are read."""
        return self.from_ms is not None or self.to_ms is not None

    def _probe_time_zone(self, selected: list[DumpObject]) -> None:
        """For each selected partition of which the plan reads no object, check the first record of its first object
        against its time directory (`_check_directory`): a source.timeZone that is not the dump's could otherwise
        pass over a whole partition without a word. (The objects that are read are checked as they are.)"""
        planned = {o.partition_key for o in self.objects}
        firsts: dict[str, DumpObject] = {}
        for obj in selected:
            if obj.partition_key in planned or obj.values_only or obj.directory_start_ms is None:
                continue
            if obj.partition_key not in firsts or obj.order < firsts[obj.partition_key].order:
                firsts[obj.partition_key] = obj
        for obj in firsts.values():
            records = read_records(obj, self.store.read(obj.key), self.separator)
            try:
                with self._waiting_on_store(f"reading the first record of {obj.key}"):
                    first = next(records, None)
            finally:
                records.close()
            if first is not None:
                self._check_directory(obj, first)

    def _check_directory(self, obj: DumpObject, first: DumpedRecord) -> None:
        """With from/to: the object's first record is in its time directory, read in source.timeZone, as the dump
        put it there; otherwise the directories cannot tell which objects hold the range (TimeZoneMismatch)."""
        ts, start, end = first.timestamp_ms, obj.directory_start_ms, obj.directory_end_ms
        if ts is None or start is None or end is None or start <= ts < end:
            return
        zone = self.spec.source.time_zone
        raise TaskError(
            "TimeZoneMismatch",
            f"the first record of {obj.key} has the timestamp {_iso(ts)}, outside its time directory as "
            f"source.timeZone {zone} reads it ({_iso(start)} to {_iso(end)}): from/to choose the objects by their "
            "time directories, so the restore stops at this object rather than pass over records in silence. Create "
            "the task again with source.timeZone set to the dump's target.timeZone (or without from and to, if the "
            "objects were put under other directories by hand)",
        )

    def _check_target(self) -> None:
        """Every target topic exists (or is created, with target.createTopics) with the partitions the dump has."""
        needed: dict[str, int] = {}
        for obj in self.objects:
            topic = self.target_topics[obj.topic]
            needed[topic] = max(needed.get(topic, 0), obj.partition + 1)
        admin = admin_client(self.kafka_config)
        with self._waiting_on_kafka("looking up the target topics", source=False):
            view = look_up(admin, self.bootstrap)
        self.target_cluster = view.cluster_id
        missing = sorted(t for t in needed if t not in view.topics)
        if missing and self.spec.target.create_topics:
            self._create(admin, {t: needed[t] for t in missing})
            with self._waiting_on_kafka("looking up the created topics", source=False):
                view = look_up(admin, self.bootstrap)
            missing = sorted(t for t in needed if t not in view.topics)
        if missing:
            raise TaskError(
                "TargetTopicNotFound",
                "target topics missing on "
                + f"{self.bootstrap}: "
                + ", ".join(f"{t} (create it with at least {needed[t]} partitions)" for t in missing)
                + "; or set target.createTopics: true",
            )
        short = [(t, view.topics[t], n) for t, n in sorted(needed.items()) if view.topics[t] < n]
        if short:
            raise TaskError(
                "TooFewTargetPartitions",
                "each record goes to the partition of its number, and "
                + "; ".join(
                    f"target topic {t} has {have} partitions where the dump has partition {n - 1} ({n} needed)"
                    for t, have, n in short
                )
                + ": add partitions to the target topic, or restore only the partitions it has (spec.partitions)",
            )

    def _create(self, admin: Any, topics: dict[str, int]) -> None:
        new = [NewTopic(t, num_partitions=n, replication_factor=-1) for t, n in topics.items()]
        with self._waiting_on_kafka(f"creating {', '.join(topics)}", source=False):
            futures = admin.create_topics(new, operation_timeout=30)
            for topic, future in futures.items():
                try:
                    future.result(timeout=40)
                    log.info("created target topic %s with %d partitions (target.createTopics)", topic, topics[topic])
                except KafkaException as err:
                    if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise TaskError(
                            "TargetTopicNotFound",
                            f"target topic {topic} does not exist and creating it failed: {err.args[0].str()}",
                        ) from None

    def _load(self) -> None:
        with self._waiting_on_status("reading the resume point"):
            loaded = self.resume.load()
        try:
            self.point = ResumePoint.model_validate(loaded or {})
        except ValidationError as err:
            raise TaskError(
                "StatusUnavailable", f"the saved resume point is not valid ({err.error_count()} errors)"
            ) from None
        self.totals.records, self.totals.bytes = self.point.records, self.point.bytes
        self.objects_done = sum(1 for o in self.objects if self._done_before(o))
        if loaded:
            log.info(
                "resuming: %d of %d objects done, %d records restored so far",
                self.objects_done,
                len(self.objects),
                self.point.records,
            )

    def _done_before(self, obj: DumpObject) -> bool:
        """Whether the resume point says the whole object is restored."""
        entry = self.point.partitions.get(obj.partition_key)
        if entry is None:
            return False
        return obj.order < (entry.start_offset, entry.object_key) or (obj.key == entry.object_key and entry.complete)

    # -- restoring -------------------------------------------------------------------------------

    def _producer_config(self) -> dict[str, Any]:
        config = {
            **self.kafka_config,
            "enable.idempotence": True,  # no duplicates or reordering from the producer's own retries
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(DELIVERY_TIMEOUT * 1000),
            "client.id": self.client_name,
        }
        return watched(config, self.liveness, self.settings.report_interval)

    def _restore_all(self, stop: threading.Event) -> bool:
        self.producer = Producer(self._producer_config())
        for obj in self.objects:
            if self._done_before(obj):
                continue
            if not retry_until_stopped(stop, partial(self._restore_object, obj, stop), self.metrics.tick):
                return False
        return True

    def _restore_object(self, obj: DumpObject, stop: threading.Event) -> bool:
        """Produce the object's records from the resume point on; True once all are acknowledged and saved."""
        entry = self.point.partitions.get(obj.partition_key)
        skip = entry.records_done if entry is not None and entry.object_key == obj.key else 0
        last_offset = entry.last_offset if entry is not None else None
        target = self.target_topics[obj.topic]
        self.current = obj.key
        pending = Pending()
        done = saved = skip
        try:
            records = read_records(obj, self._chunks(obj), self.separator)
            for index, record in enumerate(records):
                if index == 0 and self.ranged:
                    self._check_directory(obj, record)
                if index < skip:
                    continue
                if stop.is_set():
                    self._checkpoint(obj, done, last_offset, pending, complete=False)
                    return False
                if record.offset is not None and last_offset is not None and record.offset <= last_offset:
                    pending.skipped += 1  # restored already, from an object that overlaps this one
                elif not self._in_range(record):
                    pending.skipped += 1
                else:
                    self._produce(target, obj.partition, record, stop)
                    pending.records += 1
                    pending.bytes += len(record.value or b"") + len(record.key or b"")
                done = index + 1
                if record.offset is not None and (last_offset is None or record.offset > last_offset):
                    last_offset = record.offset
                if done - saved >= CHECKPOINT_RECORDS:
                    if not self._checkpoint(obj, done, last_offset, pending, complete=False):
                        return False
                    saved, pending = done, Pending()
                self._tend(done)
        except TaskError as err:  # the object could not be read on: keep what the target has, then report
            self._checkpoint(obj, done, last_offset, pending, complete=False)
            self._fail(err, STORE)
            return False
        except KafkaException as err:  # the producer refused a record (e.g. larger than the target allows)
            self._checkpoint(obj, done, last_offset, pending, complete=False)
            problem = describe_kafka_error(err, self.bootstrap).message
            self._fail(TaskError("TargetWriteFailed", f"the target did not take a record of {obj.key}: {problem}"))
            return False
        return self._checkpoint(obj, done, last_offset, pending, complete=True)

    def _chunks(self, obj: DumpObject) -> Iterator[bytes]:
        """The object's bytes from the store, each read marked as a call the heartbeat may name."""
        chunks = self.store.read(obj.key)
        while True:
            with self._waiting_on_store(f"reading {obj.key}"):
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def _in_range(self, record: DumpedRecord) -> bool:
        """from <= timestamp < to; records without a timestamp (values-only) were chosen by their object."""
        ts = record.timestamp_ms
        if ts is None:
            return True
        return (self.from_ms is None or ts >= self.from_ms) and (self.to_ms is None or ts < self.to_ms)

    def _produce(self, topic: str, partition: int, record: DumpedRecord, stop: threading.Event) -> None:
        assert self.producer is not None
        if self.throttle is not None:
            self._wait_for_caps(stop)
            self.throttle.take(1, len(record.value or b"") + len(record.key or b""))
        extra: dict[str, Any] = {}
        if record.timestamp_ms is not None:
            extra["timestamp"] = record.timestamp_ms
        if record.headers:
            extra["headers"] = list(record.headers)
        while True:
            try:
                self.producer.produce(
                    topic,
                    value=record.value,
                    key=record.key,
                    partition=partition,
                    on_delivery=self._delivered,
                    **extra,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                self.producer.poll(0.1)

    def _wait_for_caps(self, stop: threading.Event) -> None:
        assert self.throttle is not None and self.producer is not None
        wait = self.throttle.wait()
        while wait > 0 and not stop.is_set():
            started = time.monotonic()
            self.producer.poll(min(wait, 0.5))  # deliveries and statistics are served meanwhile
            waited = time.monotonic() - started
            self.throttle.waited += waited
            self.metrics.throttled.labels(**self.metrics.labels).inc(waited)
            self._tend(0)
            wait = self.throttle.wait()

    def _delivered(self, err: KafkaError | None, _: Message) -> None:
        if err is not None:
            self.delivery_errors.append(err)

    def _tend(self, done: int) -> None:
        """Between records: the producer's callbacks, and the periodic report."""
        if done % 1000 == 0 and self.producer is not None:
            self.producer.poll(0)
        if time.monotonic() >= self.next_report:
            self.metrics.tick()
            self._periodic_report()
            self.next_report = time.monotonic() + self.settings.report_interval

    def _checkpoint(
        self, obj: DumpObject, done: int, last_offset: int | None, pending: Pending, *, complete: bool
    ) -> bool:
        """Wait until the target has acknowledged everything produced, then save the resume point there. False
        (reported) when the target did not take it all, or the point could not be saved: the object is then read
        again from the last saved point."""
        assert self.producer is not None
        with self._waiting_on_kafka(f"waiting for the target to acknowledge {obj.key}", source=False):
            remaining = self.producer.flush(DELIVERY_TIMEOUT + 15)
        if remaining or self.delivery_errors:
            problem = self.delivery_errors[0].str() if self.delivery_errors else f"{remaining} records unacknowledged"
            self.delivery_errors.clear()
            self._fail(TaskError("TargetWriteFailed", f"the target did not take the records: {problem}"), KAFKA)
            self.producer.purge()
            self.producer = Producer(self._producer_config())  # an idempotent producer's fatal error ends it
            return False
        entry = PartitionResumePoint(
            topic=obj.topic,
            partition=obj.partition,
            object_key=obj.key,
            start_offset=obj.start_offset,
            records_done=done,
            complete=complete,
            last_offset=last_offset,
        )
        point = self.point.model_copy(deep=True)
        point.partitions[obj.partition_key] = entry
        point.records += pending.records
        point.bytes += pending.bytes
        point.skipped += pending.skipped
        point.objects += 1 if complete else 0
        point.updated_at = utc_now()
        patch = {k: v for k, v in point.wire().items() if k != "partitions"}
        patch["partitions"] = {obj.partition_key: entry.wire()}
        try:
            with self._waiting_on_status("saving the resume point"):
                self.resume.save(patch)
        except TaskError as err:
            self._fail(err, STATUS)
            return False
        self.point = point
        self.totals.records, self.totals.bytes = point.records, point.bytes
        self.metrics.partition(self.metrics.records, obj.topic, obj.partition).inc(pending.records)
        self.metrics.partition(self.metrics.bytes, obj.topic, obj.partition).inc(pending.bytes)
        if complete:
            self.objects_done += 1
            self.metrics.objects.labels(**self.metrics.labels, topic=obj.topic).inc()
            self._clear(STORE)
        self._clear(KAFKA)
        self._clear(STATUS)
        return True

    # -- reporting -------------------------------------------------------------------------------

    def _waiting_on_store(self, doing: str) -> AbstractContextManager[None]:
        return self.blocking.call(STORE, lambda seconds: unresponsive(self.spec.source, doing, seconds))

    def _waiting_on_status(self, doing: str) -> AbstractContextManager[None]:
        def problem(seconds: float) -> TaskError:
            return TaskError("StatusUnavailable", f"{doing} has taken {seconds:.0f}s: check the API server")

        return self.blocking.call(STATUS, problem)

    def _partition_progress(self, reachable: bool) -> list[PartitionProgress]:
        return []  # no consumer, no lag: the progress is in objects and records (_extra)

    def _extra(self) -> dict[str, Any]:
        return {
            "objectsTotal": len(self.objects),
            "objectsRestored": self.objects_done,
            "recordsSkipped": self.point.skipped,
            "valuesOnlyObjects": self.values_only,
            "currentObject": self.current,
            "targetTopics": dict(self.target_topics),
            "targetClusterId": self.target_cluster,
        }
