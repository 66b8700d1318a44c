"""The ObsDumpTask worker against a real Apache Kafka and a real SeaweedFS store."""

from __future__ import annotations

import gzip
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition
from ferry.obsdump.reader import read_object
from ferry.obsdump.records import DumpedRecord, decode_records, parse_object_key

from tests.conftest import BucketFactory, TopicFactory
from tests.support.dumps import (
    dumped_records,
    list_objects,
    produce,
    spec_for,
    start_pipeline,
    wait_for,
    write_manifest,
)
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in offsets]
    finally:
        consumer.close()


def test_records_land_under_deterministic_keys_with_keys_headers_and_separator(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=3), bucket_factory()
    produce(kafka.bootstrap, topic, 300, partitions=3)
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"storeKeys": True})
    group = f"g-{uuid.uuid4().hex[:8]}"
    running = start_pipeline(spec, object_store, group)
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.totals.records == 300, what="300 records")
        wait_for(lambda: running.recorder.last.lag == 0 and len(running.recorder.last.partitions) == 3, what="lag 0")
    finally:
        running.finish()
    client = object_store.client()
    objects = list_objects(client, bucket)
    assert len(objects) == 3  # one per partition: everything arrived within one period
    for key in objects:
        assert key.startswith("dumps/raw/") and key.endswith("+0000000000000000000.jsonl")
        assert len(key.split("/")) == 2 + 4 + 1  # directory, yyyy/MM/dd/HH, name
    records = dumped_records(client, bucket)
    for partition in range(3):
        got = records[(topic, partition)]
        assert [r.offset for r in got] == list(range(100))
        for r in got:
            i = int(r.value.decode().split("-")[1])  # type: ignore[union-attr]
            assert i % 3 == partition and r.key == f"key-{i}".encode()
            assert list(r.headers) == [("seq", str(i).encode())]
    assert committed(kafka.bootstrap, group, topic, 3) == [100, 100, 100]


def test_values_only_objects_with_a_custom_separator(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    produce(kafka.bootstrap, topic, 50, partitions=1)
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        target={"recordSeparator": "|", "directory": "", "timeDirectoryFormat": "yyyy/MM/dd"},
    )
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.totals.records == 50, what="50 records")
    finally:
        running.finish()
    [(key, data)] = list_objects(object_store.client(), bucket).items()
    assert key.count("/") == 3 and key.endswith(f"{topic}+0+0000000000000000000.bin")
    assert list(decode_records(data, False, b"|")) == [f"value-{i}".encode() for i in range(50)]


def test_objects_are_cut_each_period_even_without_new_records_and_not_for_empty_periods(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=2, target={"storeKeys": True})
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    client = object_store.client()
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.partitions, what="assignment")
        produce(kafka.bootstrap, topic, 10, partitions=1)
        # No more records arrive, yet the buffered ones become an object at the next period boundary.
        wait_for(lambda: len(list_objects(client, bucket)) == 1, timeout=10, what="first object")
        time.sleep(5)  # two more periods without data: no new (empty) objects
        assert len(list_objects(client, bucket)) == 1
        produce(kafka.bootstrap, topic, 5, partitions=1, start=10)
        wait_for(lambda: len(list_objects(client, bucket)) == 2, timeout=10, what="second object")
    finally:
        running.finish()
    records = dumped_records(client, bucket)[(topic, 0)]
    assert [r.offset for r in records] == list(range(15))
    assert sorted(list_objects(client, bucket))[1].endswith("+0000000000000000010.jsonl")


def test_large_batches_use_multipart_upload_with_bounded_parts(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    value = os.urandom(6000).hex().encode()  # 12 KB, not valid to compress away
    producer_config = {"message.max.bytes": 1_000_000}
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka.bootstrap, **producer_config})
    for _ in range(1100):  # ~13 MB: three 5 MiB parts
        producer.produce(topic, value=value, partition=0)
    producer.flush(30)
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=30)
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", part_bytes=5 * 1024 * 1024)
    try:
        # Parts go out while the batch is still open, long before the 30 s period ends.
        client = object_store.client()
        wait_for(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"), timeout=20, what="upload")
    finally:
        running.finish()  # SIGTERM path: completes the upload and commits
    [(key, data)] = list_objects(client, bucket).items()
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # S3 marks multipart objects with -<parts>
    assert data == (value + b"\n") * 1100


def test_topic_regex_picks_up_topics_created_later(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    prefix = f"rx{uuid.uuid4().hex[:6]}"
    first, bucket = topic_factory(partitions=1, prefix=prefix), bucket_factory()
    topic_factory(partitions=1, prefix="other")
    spec = spec_for(kafka, object_store, bucket, topicRegex=f"{prefix}-.*", target={"storeKeys": True})
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    try:
        produce(kafka.bootstrap, first, 5, partitions=1)
        wait_for(lambda: running.recorder.reports and running.recorder.last.totals.records == 5, what="first topic")
        later = topic_factory(partitions=2, prefix=prefix)
        produce(kafka.bootstrap, later, 6, partitions=2)
        wait_for(lambda: running.recorder.last.totals.records == 11, timeout=30, what="later topic")
    finally:
        running.finish()
    records = dumped_records(object_store.client(), bucket)
    assert {t for t, _ in records} == {first, later}


def run_worker_process(manifest: Path, *args: str) -> subprocess.Popen[bytes]:
    """`ferry run` in its own process group; its output goes to <manifest>.log (a pipe nobody reads could fill)."""
    env = {**os.environ, "FERRY_REPORT_INTERVAL": "0.5", "FERRY_SESSION_TIMEOUT_MS": "6000"}
    with manifest.with_suffix(".log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ferry", "run", "-f", str(manifest), "--group", manifest.stem, *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def output_of(manifest: Path) -> str:
    return manifest.with_suffix(".log").read_text(errors="replace")


def test_sigterm_flushes_the_open_batch_and_commits(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    topic, bucket = topic_factory(partitions=2), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=3600)
    manifest = write_manifest(tmp_path / f"sigterm-{uuid.uuid4().hex[:6]}.yaml", "sigterm", spec, object_store)
    produce(kafka.bootstrap, topic, 40, partitions=2)
    worker = run_worker_process(manifest)
    try:
        wait_for(lambda: "lag=40" in output_of(manifest), timeout=30, what="records buffered")
        time.sleep(1)  # the records are buffered; the hour-long period is far away
        assert list_objects(object_store.client(), bucket) == {}
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, output_of(manifest)
    assert len(list_objects(object_store.client(), bucket)) == 2
    assert committed(kafka.bootstrap, manifest.stem, topic, 2) == [20, 20]


def test_worker_reports_actionable_failures_and_keeps_running(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    cases: list[tuple[dict[str, Any], dict[str, Any], str, str]] = [
        ({"topics": [topic], "target": {"bucket": "no-such-bucket"}}, {}, "BucketNotFound", "no-such-bucket"),
        ({"topics": [topic]}, {"access_key": "WRONGKEY"}, "ObjectStoreAuthFailed", "Secret"),
        ({"topics": ["never-created-topic"]}, {}, "TopicNotFound", "never-created-topic"),
    ]
    for overrides, extra, reason, hint in cases:
        spec = spec_for(kafka, object_store, bucket, **overrides)
        running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", **extra)
        try:
            recorder = running.recorder
            wait_for(lambda: recorder.reports and recorder.last.error, timeout=20, what=reason)  # noqa: B023
            error = recorder.last.error
            assert error is not None and error.reason == reason and hint in error.message
            assert object_store.secret_key not in error.message
            time.sleep(1.5)
            assert running.thread.is_alive()  # retries with backoff instead of exiting (no crash loop)
        finally:
            running.finish()


def test_unreachable_broker_is_reported(object_store: SeaweedFS, bucket_factory: BucketFactory) -> None:
    from tests.support.servers import free_port

    class Nowhere:
        bootstrap = f"127.0.0.1:{free_port()}"

    spec = spec_for(Nowhere(), object_store, bucket_factory(), topics=["t"])  # type: ignore[arg-type]
    running = start_pipeline(spec, object_store, "g-unreachable")
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.error, timeout=30, what="failure")
        error = running.recorder.last.error
        assert error is not None and error.reason == "KafkaUnreachable" and Nowhere.bootstrap in error.message
    finally:
        running.finish()


def dump_while_killing(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    spec: dict[str, Any],
    tmp_path: Path,
    before_kill: Callable[[], None],
    *,
    partitions: int,
    kills: int,
    chunk: int,
    total: int | None = None,
) -> int:
    """Produces records in chunks (`total` of them, or until the last kill) while `kills` `ferry run` workers
    each run until `before_kill()` returns and are SIGKILLed; then runs one until every offset is committed and
    stops it with SIGTERM. Returns how many records were produced."""
    topic = spec["topics"][0]
    manifest = write_manifest(tmp_path / f"kill-{uuid.uuid4().hex[:6]}.yaml", "killed", spec, object_store)
    killed = threading.Event()
    produced = 0

    def produce_slowly() -> None:  # records keep arriving while workers die
        nonlocal produced
        while not killed.is_set() if total is None else produced < total:
            count = chunk if total is None else min(chunk, total - produced)
            produce(kafka.bootstrap, topic, count, partitions, start=produced)
            produced += count
            time.sleep(0.4)

    producer = threading.Thread(target=produce_slowly)
    producer.start()
    try:
        for _ in range(kills):
            worker = run_worker_process(manifest)
            try:
                before_kill()
            finally:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    finally:
        killed.set()
        producer.join()
    worker = run_worker_process(manifest)
    try:
        wait_for(
            lambda: (
                committed(kafka.bootstrap, manifest.stem, topic, partitions)
                == [produced // partitions + (p < produced % partitions) for p in range(partitions)]
            ),
            timeout=120,
            interval=1,
            what="all offsets committed",
        )
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    return produced


def test_every_record_lands_exactly_once_although_the_worker_is_killed_at_random(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    total, partitions, kills = 50_000, 3, 6
    seed = int(os.environ.get("FERRY_TEST_SEED", time.time()))
    rng = random.Random(seed)
    topic, bucket = topic_factory(partitions=partitions), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"storeKeys": True})
    dump_while_killing(
        kafka,
        object_store,
        spec,
        tmp_path,
        lambda: time.sleep(rng.uniform(1.0, 4.0)),
        partitions=partitions,
        kills=kills,
        chunk=2500,
        total=total,
    )
    records = dumped_records(object_store.client(), bucket)
    values = []
    for partition in range(partitions):
        got = records[(topic, partition)]
        expected = total // partitions + (partition < total % partitions)
        assert [r.offset for r in got] == list(range(expected)), (
            f"gap or duplicate in partition {partition} (seed {seed})"
        )
        values += [r.value for r in got]
    assert sorted(values) == sorted(f"value-{i}".encode() for i in range(total)), f"seed {seed}"


MAX_RECORDS, MAX_BYTES = 40, 3000


@pytest.mark.parametrize(
    ("target", "caps", "suffix"),
    [
        ({"format": "parquet", "compression": "zstd"}, {"maxRecordsPerObject": MAX_RECORDS}, ".parquet"),
        ({"format": "jsonl", "compression": "gzip"}, {"maxBytesPerObject": MAX_BYTES}, ".jsonl.gz"),
    ],
    ids=["parquet-zstd-max-records", "jsonl-gzip-max-bytes"],
)
def test_capped_compressed_objects_hold_every_record_once_although_the_worker_is_killed(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
    target: dict[str, Any],
    caps: dict[str, int],
    suffix: str,
) -> None:
    partitions, kills = 3, 3
    seed = int(os.environ.get("FERRY_TEST_SEED", time.time()))
    rng = random.Random(seed)
    topic, bucket = topic_factory(partitions=partitions), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target=target, **caps)
    client = object_store.client()

    def object_count() -> int:
        return int(client.list_objects_v2(Bucket=bucket).get("KeyCount", 0))

    def until_it_dumps_then_a_little() -> None:  # each kill falls while the worker is writing objects
        before = object_count()
        wait_for(lambda: object_count() > before, timeout=30, interval=0.1, what="the worker writing an object")
        time.sleep(rng.uniform(0.0, 0.5))

    total = dump_while_killing(
        kafka, object_store, spec, tmp_path, until_it_dumps_then_a_little, partitions=partitions, kills=kills, chunk=100
    )
    # Every object read back with the product's reader, by what its key names.
    objects: dict[int, list[tuple[int, str, int, list[DumpedRecord]]]] = {p: [] for p in range(partitions)}
    for key, body in list_objects(client, bucket).items():
        assert key.endswith(suffix), key
        name = parse_object_key(key)
        assert name.topic == topic and name.partition < partitions, key
        records = list(read_object(key, body))
        offsets = [r.offset for r in records]
        assert offsets and offsets[0] == name.start_offset, f"{key} starts at offset {offsets[:1]} (seed {seed})"
        assert offsets == list(range(name.start_offset, name.start_offset + len(records))), f"{key} (seed {seed})"
        if target["format"] == "parquet":
            metadata = pq.ParquetFile(io.BytesIO(body)).metadata
            codecs = {
                metadata.row_group(g).column(c).compression
                for g in range(metadata.num_row_groups)
                for c in range(metadata.num_columns)
            }
            assert codecs == {"ZSTD"}, f"{key}: {codecs}"
            size = len(records)
        else:
            assert body[:2] == b"\x1f\x8b", f"{key} is not gzip"
            size = len(gzip.decompress(body))  # the encoded bytes maxBytesPerObject counts
        objects[name.partition].append((name.start_offset, key, size, records))
    cap = caps.get("maxRecordsPerObject") or caps["maxBytesPerObject"]
    values = []
    for partition, found in objects.items():
        found.sort()
        expected = total // partitions + (partition < total % partitions)
        offsets = [r.offset for *_, records in found for r in records]
        counts = Counter(offsets)
        assert offsets == list(range(expected)), (
            f"partition {partition}: lost {sorted(set(range(expected)) - set(counts))[:20]}, duplicated "
            f"{sorted(o for o, n in counts.items() if n > 1)[:20]}, objects {[(k, n) for _, k, n, _ in found]} "
            f"(seed {seed})"
        )
        values += [(r.key, r.value) for *_, records in found for r in records]
        assert all(size <= cap for _, _, size, _ in found), [(k, n) for _, k, n, _ in found]
        # Cut by the cap during the run, not only at period ends: most objects are (nearly) full.
        full = [k for _, k, size, _ in found if size > cap * 0.9]
        assert len(full) >= max(3, len(found) // 3), [(k, n) for _, k, n, _ in found]
    assert sorted(values) == sorted((f"key-{i}".encode(), f"value-{i}".encode()) for i in range(total)), seed


def test_metrics_and_health_are_served(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    from urllib.request import urlopen

    from tests.support.servers import free_port

    topic, bucket = topic_factory(partitions=2), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], taskName="orders_dump")
    manifest = write_manifest(tmp_path / f"metrics-{uuid.uuid4().hex[:6]}.yaml", "metrics", spec, object_store)
    port = free_port()
    produce(kafka.bootstrap, topic, 100, partitions=2)
    worker = run_worker_process(manifest, "--metrics-port", str(port))

    def metrics() -> str:
        try:
            with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    labels = [
        f'kind="ObsDumpTask",partition="{p}",task="default/metrics",task_name="orders_dump",topic="{topic}"'
        for p in (0, 1)
    ]
    try:
        wait_for(
            lambda: all(f"ferry_records_total{{{label}}} 50.0" in metrics() for label in labels),
            timeout=30,
            what="records counted",
        )
        wait_for(
            lambda: all(f"ferry_lag_records{{{label}}} 0.0" in metrics() for label in labels), timeout=10, what="lag 0"
        )
        text = metrics()
        with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            assert response.status == 200
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert f"ferry_committed_offset{{{labels[0]}}} 50.0" in text
    assert f"ferry_bytes_total{{{labels[0]}}} " in text
    assert "ferry_dump_latency_seconds_count" in text and "ferry_worker_healthy" in text


def test_a_failed_task_recovers_by_itself_once_the_user_fixes_the_cause(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic = topic_factory(partitions=1)
    bucket = f"later-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap, topic, 20, partitions=1)
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"storeKeys": True})
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    client = object_store.client()
    try:
        recorder = running.recorder
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=20, what="BucketNotFound")
        assert recorder.last.error is not None and recorder.last.error.reason == "BucketNotFound"
        client.create_bucket(Bucket=bucket)
        wait_for(
            lambda: recorder.last.phase == "Running" and recorder.last.totals.records == 20, timeout=60, what="recovery"
        )
    finally:
        running.finish()
    try:
        assert [r.offset for r in dumped_records(client, bucket)[(topic, 0)]] == list(range(20))
    finally:
        for key in list_objects(client, bucket):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)


def test_lag_counts_exactly_the_records_read_but_not_yet_in_the_bucket(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    """Lag comes from the broker's high watermark: records buffered for the next object are still lag."""
    topic, bucket = topic_factory(partitions=2), bucket_factory()
    produce(kafka.bootstrap, topic, 30, partitions=2)  # offsets 0-14 on each partition, in multi-record batches
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        startFrom="earliest",
        dumpPeriodSeconds=3600,
        target={"storeKeys": True},
    )
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(
            lambda: running.recorder.reports and {p.end_offset for p in running.recorder.last.partitions} == {15},
            what="both partitions read to their high watermark 15",
        )
        last = running.recorder.last
        assert [(p.partition, p.lag) for p in last.partitions] == [(0, 15), (1, 15)]
        assert last.lag == 30 and not list_objects(object_store.client(), bucket)
        produce(kafka.bootstrap, topic, 4, partitions=2, start=30)
        wait_for(lambda: running.recorder.last.lag == 34, what="lag 34 after 4 more records")
    finally:
        running.finish()  # stopping writes what was read: the lag is dumped, not lost
    assert sum(len(r) for r in dumped_records(object_store.client(), bucket).values()) == 34


def test_saved_offsets_the_retention_deleted_are_skipped_exactly_and_reported(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    from tests.test_dataaccess_worker import commit, delete_records

    topic, bucket = topic_factory(partitions=2), bucket_factory()
    produce(kafka.bootstrap, topic, 60, partitions=2)  # 30 per partition: offsets 0-29
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(kafka.bootstrap, group, topic, [10, 25])  # where a paused task stopped
    delete_records(kafka, topic, {0: 18, 1: 29})  # 8 and 4 unread records gone
    spec = spec_for(kafka, object_store, bucket, topics=[topic], startFrom="latest", target={"storeKeys": True})
    running = start_pipeline(spec, object_store, group)
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.totals.records == 13, what="the rest")
        wait_for(lambda: running.recorder.last.lag == 0, what="lag 0")
        last = running.recorder.last
    finally:
        running.finish()
    found = {(e["partition"], e["committedOffset"], e["earliestOffset"], e["records"]) for e in last.extra["expired"]}
    assert found == {(0, 10, 18, 8), (1, 25, 29, 4)}
    records = dumped_records(object_store.client(), bucket)
    assert [r.offset for r in records[(topic, 0)]] == list(range(18, 30))  # from the earliest, not from latest
    assert [r.offset for r in records[(topic, 1)]] == [29]
    assert committed(kafka.bootstrap, group, topic, 2) == [30, 30]
