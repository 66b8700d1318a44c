"""Helpers for ObsRestoreTask tests: records of every shape, a dump of them (by the real ObsDumpTask pipeline),
a restore (in a thread or by `ferry run`), and a topic read back partition by partition."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from ferry.credentials import Sensitive
from ferry.kafka import as_bytes, message_headers
from ferry.metrics import WorkerMetrics
from ferry.obsrestore.model import ObsRestoreTaskSpec
from ferry.obsrestore.pipeline import RestorePipeline
from ferry.obsrestore.resume import MemoryResume
from ferry.obsrestore.store import ACCESS_KEY_ROLE, SECRET_KEY_ROLE, DumpStore, s3_client
from ferry.settings import WorkerSettings

from tests.support.dumps import Recorder, spec_for, start_pipeline, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS

# The records' timestamps start at a whole hour half a day ago: in the past (as the brokers expect) and within
# any retention, with time directories the tests can compute.
BASE_TS = (int(time.time()) // 3600 - 12) * 3600 * 1000
Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class Seen:
    """A record as a consumer sees it: what a restore must keep."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int


def record_of(i: int, step_ms: int) -> Seen:
    """Record i: every 7th without a key, every 11th a tombstone, binary values and headers (and a header
    without a value) now and then, non-ASCII text, timestamps step_ms apart from BASE_TS."""
    key = None if i % 7 == 0 else f"key-{i}".encode()
    if i % 11 == 0:
        value: bytes | None = None
    elif i % 5 == 0:
        value = bytes([i % 256, 0, 255, 10]) + b"bin"  # not UTF-8, holds a newline
    else:
        value = f"välue-{i}".encode()
    headers: Headers = [("seq", str(i).encode())]
    if i % 3 == 0:
        headers += [("raw", b"\x00\xff"), ("empty", None)]
    return Seen(key, value, tuple(headers), BASE_TS + i * step_ms)


def produce_records(bootstrap: str, topic: str, count: int, partitions: int, step_ms: int = 1000) -> list[Seen]:
    """`count` records (record_of), record i to partition i % partitions; the records in production order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    made = []
    for i in range(count):
        record = record_of(i, step_ms)
        producer.produce(
            topic,
            key=record.key,
            value=record.value,
            partition=i % partitions,
            headers=list(record.headers),
            timestamp=record.timestamp,
        )
        made.append(record)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return made


def dump(kafka: KafkaCluster, store: SeaweedFS, bucket: str, topic: str, count: int, **target: Any) -> dict[str, Any]:
    """Dump a topic's `count` records with the ObsDumpTask pipeline (objects of at most 50 records unless said);
    the dump's target, as the restore's source needs it."""
    options = {"storeKeys": True, **target}
    max_records = options.pop("maxRecordsPerObject", 50)
    spec = spec_for(kafka, store, bucket, topics=[topic], maxRecordsPerObject=max_records, target=options)
    running = start_pipeline(spec, store, f"dump-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(
            lambda: running.recorder.reports and running.recorder.last.totals.records == count,
            timeout=60,
            what=f"{count} records dumped",
        )
    finally:
        running.finish()
    return dict(spec["target"])


def restore_spec(
    store: SeaweedFS, bucket: str, dumped: dict[str, Any], topics: list[str], **fields: Any
) -> dict[str, Any]:
    """An ObsRestoreTask spec reading the dump written to `dumped` (a dump's target)."""
    source = {
        "endpoint": store.endpoint,
        "bucket": bucket,
        "directory": dumped.get("directory", ""),
        "credentialsSecretRef": {"name": "obs-credentials"},
        **({"recordSeparator": dumped["recordSeparator"]} if "recordSeparator" in dumped else {}),
        **({"timeZone": dumped["timeZone"]} if "timeZone" in dumped else {}),
    }
    return {"source": source, "topics": topics, **fields}


def pipeline_for(
    spec: dict[str, Any], store: SeaweedFS, resume: MemoryResume | None = None, **settings: Any
) -> tuple[RestorePipeline, Recorder]:
    parsed = ObsRestoreTaskSpec.model_validate(spec)
    secrets = {ACCESS_KEY_ROLE: Sensitive(store.access_key), SECRET_KEY_ROLE: Sensitive(store.secret_key)}
    recorder = Recorder()
    pipeline = RestorePipeline(
        parsed,
        {"bootstrap.servers": spec["target"]["bootstrapServers"]},
        DumpStore(s3_client(parsed.source, secrets), parsed.source),
        resume if resume is not None else MemoryResume(),
        recorder,
        WorkerMetrics("ObsRestoreTask", f"test/{uuid.uuid4().hex[:6]}"),
        WorkerSettings(**{"report_interval": 0.5, **settings}),
    )
    return pipeline, recorder


def restore(
    spec: dict[str, Any], store: SeaweedFS, resume: MemoryResume | None = None, timeout: float = 60
) -> tuple[RestorePipeline, Recorder]:
    """Run a restore to completion in a thread (failing the test if it does not complete in time)."""
    pipeline, recorder = pipeline_for(spec, store, resume)
    stop = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(pipeline.restore(stop)), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stop.set()
        thread.join(30)
        last = recorder.reports[-1] if recorder.reports else None
        raise AssertionError(f"the restore did not complete within {timeout}s; last report: {last}")
    assert result == [True], recorder.reports[-1:]
    return pipeline, recorder


def read_partitions(
    bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 30
) -> list[list[Seen]]:
    """Every record of each partition, in offset order, once `expected` arrived over all of them (or time is up)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: list[list[Seen]] = [[] for _ in range(partitions)]
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(len(s) for s in seen) < expected:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                headers = tuple(message_headers(message))
                _, timestamp = message.timestamp()
                partition = message.partition()
                assert partition is not None
                seen[partition].append(Seen(as_bytes(message.key()), as_bytes(message.value()), headers, timestamp))
    finally:
        consumer.close()
    return seen


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """Each partition's high watermark: how many records were written to it (a new topic starts at 0), copies
    included, whatever a consumer reads."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


def expected_partitions(records: list[Seen], partitions: int, keep: Any = None) -> list[list[Seen]]:
    """The records each partition of the source holds, in order (record i went to partition i % partitions)."""
    result: list[list[Seen]] = [[] for _ in range(partitions)]
    for i, record in enumerate(records):
        if keep is None or keep(i, record):
            result[i % partitions].append(record)
    return result


def write_restore_manifest(path: Path, name: str, spec: dict[str, Any], store: SeaweedFS) -> Path:
    """The task and its Secret, as a user would write them for `ferry run -f`."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec["source"]["credentialsSecretRef"]["name"]},
        "stringData": {"accessKey": store.access_key, "secretKey": store.secret_key},
    }
    task = {"apiVersion": "ferry.dev/v1alpha1", "kind": "ObsRestoreTask", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump_all([task, secret]))
    return path
