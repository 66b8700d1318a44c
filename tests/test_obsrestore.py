"""ObsRestoreTask: a dump (written by the real ObsDumpTask pipeline into SeaweedFS) restored into a real Apache
Kafka, compared record by record with the source; selections; resuming after SIGKILLs."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Producer
from ferry.errors import TaskError
from ferry.obsdump.records import Record, encode_record
from ferry.obsrestore.resume import MemoryResume

from tests.conftest import BucketFactory, TopicFactory
from tests.support.dumps import wait_for
from tests.support.kafka import KafkaCluster
from tests.support.restores import (
    BASE_TS,
    dump,
    end_offsets,
    expected_partitions,
    pipeline_for,
    produce_records,
    read_partitions,
    restore,
    restore_spec,
    write_restore_manifest,
)
from tests.support.servers import ObjectStore as SeaweedFS

PARTITIONS = 3
SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def dumped_keys(store: SeaweedFS, bucket: str) -> list[str]:
    return [o["Key"] for o in store.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("format", ["jsonl", "parquet"])
def test_a_dump_restored_into_another_topic_is_the_source_record_by_record(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    format: str,
    compression: str,
) -> None:
    source, target, bucket = topic_factory(PARTITIONS), topic_factory(PARTITIONS), bucket_factory()
    records = produce_records(kafka.bootstrap, source, 600, PARTITIONS)
    dumped = dump(kafka, object_store, bucket, source, 600, format=format, compression=compression)
    ext = ".parquet" if format == "parquet" else f".jsonl{SUFFIXES[compression]}"
    keys = dumped_keys(object_store, bucket)
    assert len(keys) == 12 and all(key.endswith(ext) for key in keys), keys
    spec = restore_spec(
        object_store, bucket, dumped, [source], target={"bootstrapServers": kafka.bootstrap, "topic": target}
    )
    pipeline, recorder = restore(spec, object_store)
    restored = read_partitions(kafka.bootstrap, target, PARTITIONS, 600)
    assert restored == expected_partitions(records, PARTITIONS)  # key, value, headers, timestamp, order
    # Written once each, so at the same offsets as in the source (a new topic, as the source was).
    assert end_offsets(kafka.bootstrap, target, PARTITIONS) == [200, 200, 200]
    last = recorder.last
    assert last.phase == "Succeeded" and last.totals.records == 600
    assert last.extra["objectsTotal"] == last.extra["objectsRestored"] == 12  # 200 records a partition, 50 an object
    assert pipeline.point.records == 600 and pipeline.point.skipped == 0
    assert all(entry.complete for entry in pipeline.point.partitions.values())


def test_the_dumped_topic_name_on_another_cluster_created_with_the_dumps_partitions(
    kafka: KafkaCluster,
    kafka2: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    source, bucket = topic_factory(PARTITIONS), bucket_factory()
    records = produce_records(kafka.bootstrap, source, 150, PARTITIONS)
    dumped = dump(kafka, object_store, bucket, source, 150, directory="dumps/orders", timeDirectoryLayout="hive")
    spec = restore_spec(
        object_store, bucket, dumped, [source], target={"bootstrapServers": kafka2.bootstrap, "createTopics": True}
    )
    try:
        restore(spec, object_store)
        assert len(kafka2.admin().list_topics(source, timeout=10).topics[source].partitions) == PARTITIONS
        assert read_partitions(kafka2.bootstrap, source, PARTITIONS, 150) == expected_partitions(records, PARTITIONS)
    finally:
        admin = kafka2.admin()  # must outlive the future
        admin.delete_topics([source])[source].result(timeout=15)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_values_only_objects_restore_their_values_in_order_to_their_partitions(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    compression: str,
) -> None:
    """The values-only format stores nothing but values: they come back in order, to the partition the object's
    name gives, without keys or headers, stamped at the time of the restore; a tombstone comes back empty."""
    source, target, bucket = topic_factory(PARTITIONS), topic_factory(PARTITIONS), bucket_factory()
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(90):
        value = None if i == 4 else f"v{i}".encode()
        producer.produce(source, key=f"k{i}", value=value, partition=i % PARTITIONS, headers=[("h", b"x")])
    assert producer.flush(30) == 0
    dumped = dump(
        kafka, object_store, bucket, source, 90, storeKeys=False, recordSeparator="|", compression=compression
    )
    keys = dumped_keys(object_store, bucket)
    assert len(keys) == 3 and all(key.endswith(f".bin{SUFFIXES[compression]}") for key in keys), keys
    spec = restore_spec(
        object_store, bucket, dumped, [source], target={"bootstrapServers": kafka.bootstrap, "topic": target}
    )
    started = int(time.time() * 1000)
    _, recorder = restore(spec, object_store)
    restored = read_partitions(kafka.bootstrap, target, PARTITIONS, 90)
    for partition in range(PARTITIONS):
        values = [b"" if i == 4 else f"v{i}".encode() for i in range(partition, 90, PARTITIONS)]
        assert [r.value for r in restored[partition]] == values
        assert all(r.key is None and r.headers == () and r.timestamp >= started - 1000 for r in restored[partition])
    assert recorder.last.extra["valuesOnlyObjects"] == recorder.last.extra["objectsTotal"] == 3


def test_a_time_range_and_partitions_select_records_by_timestamp_and_skip_objects_outside(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    """from <= timestamp < to, on the records' own timestamps; objects whose time directories show they cannot
    hold such records are not read at all."""
    source = topic_factory(PARTITIONS, config={"retention.ms": "-1"})
    target, bucket = topic_factory(PARTITIONS), bucket_factory()
    # 60 records 10 minutes apart, so 30 minutes apart in each partition: objects of 5 span 2.5 hours each.
    records = produce_records(kafka.bootstrap, source, 60, PARTITIONS, step_ms=600_000)
    dumped = dump(kafka, object_store, bucket, source, 60, maxRecordsPerObject=5)
    hours = [datetime.fromtimestamp((BASE_TS + h * 3_600_000) / 1000, UTC).isoformat() for h in (3, 6)]
    spec = restore_spec(
        object_store,
        bucket,
        dumped,
        [source],
        partitions=[0, 2],
        **{"from": hours[0], "to": hours[1]},
        target={"bootstrapServers": kafka.bootstrap, "topic": target},
    )
    pipeline, recorder = restore(spec, object_store)
    restored = read_partitions(kafka.bootstrap, target, PARTITIONS, 12, timeout=10)
    wanted = expected_partitions(records, PARTITIONS, keep=lambda i, r: 18 <= i < 36 and i % PARTITIONS != 1)
    assert restored == wanted and sum(len(p) for p in restored) == 12
    # Of each partition's 4 objects (first records at 0 h, 2.5 h, 5 h, 7.5 h), the first ends before the range
    # (the next starts at 2.5 h) and the last starts after it: 2 of 4 are read.
    assert recorder.last.extra["objectsTotal"] == 4
    assert pipeline.point.records == 12 and pipeline.point.skipped == 2 * 10 - 12


def test_one_topic_and_partition_of_a_two_topic_dump_in_another_time_zone_are_restored_by_a_range_in_utc(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    """Two topics dumped as Parquet under one directory, in Hive-style time directories of Asia/Shanghai (UTC+8,
    the dump's target.timeZone, which source.timeZone names): a restore of one topic and one partition with from/to
    in UTC restores exactly that topic's, that partition's records of the range, in order, into another topic name,
    reading only the objects whose directories (read in Shanghai time) can hold them; the other topic is untouched."""
    wanted = topic_factory(PARTITIONS, config={"retention.ms": "-1"})
    other = topic_factory(PARTITIONS, config={"retention.ms": "-1"})
    target, bucket = topic_factory(PARTITIONS), bucket_factory()
    records = produce_records(kafka.bootstrap, wanted, 60, PARTITIONS, step_ms=600_000)
    produce_records(kafka.bootstrap, other, 60, PARTITIONS, step_ms=600_000)
    options = {
        "maxRecordsPerObject": 5,
        "format": "parquet",
        "timeZone": "Asia/Shanghai",
        "timeDirectoryLayout": "hive",
    }
    dumped = dump(kafka, object_store, bucket, wanted, 60, **options)
    dump(kafka, object_store, bucket, other, 60, **options)
    keys = dumped_keys(object_store, bucket)
    assert len(keys) == 2 * PARTITIONS * 4  # 20 records a partition, 5 an object
    shanghai = datetime.fromtimestamp(BASE_TS / 1000, ZoneInfo("Asia/Shanghai"))
    hive = shanghai.strftime("year=%Y/month=%m/day=%d/hour=%H")
    assert f"dumps/raw/{hive}/{wanted}+0+{0:019d}.parquet" in keys, keys
    hours = [datetime.fromtimestamp((BASE_TS + h * 3_600_000) / 1000, UTC).isoformat() for h in (3, 6)]
    spec = restore_spec(
        object_store,
        bucket,
        dumped,
        [wanted],
        partitions=[1],
        **{"from": hours[0], "to": hours[1]},
        target={"bootstrapServers": kafka.bootstrap, "topic": target},
    )
    assert spec["source"]["timeZone"] == "Asia/Shanghai"
    pipeline, recorder = restore(spec, object_store)
    restored = read_partitions(kafka.bootstrap, target, PARTITIONS, 6, timeout=10)
    assert restored == expected_partitions(records, PARTITIONS, keep=lambda i, r: 18 <= i < 36 and i % PARTITIONS == 1)
    assert end_offsets(kafka.bootstrap, target, PARTITIONS) == [0, 6, 0]
    # Partition 1's objects start at 0:10, 2:40, 5:10 and 7:40 after BASE_TS, in the hours 0, 2, 5 and 7: the first
    # ends before 3:00 (the next one starts in hour 2) and the last starts after 6:00. Two objects are read.
    extra = recorder.last.extra
    assert extra["objectsTotal"] == extra["objectsRestored"] == 2 and extra["targetTopics"] == {wanted: target}
    assert pipeline.point.records == 6 and pipeline.point.skipped == 10 - 6
    assert list(pipeline.point.partitions) == [f"{wanted}+1"]

    # A source.timeZone that is not the dump's loses nothing in silence. Read in UTC, every directory is 8 hours
    # late and the plan reads no object of partition 1: the first record of its first object is checked instead.
    late, _ = pipeline_for({**spec, "source": {**spec["source"], "timeZone": "UTC"}}, object_store)
    assert not late._prepare()
    assert late.error is not None and late.error.reason == "TimeZoneMismatch", late.error
    assert f"{wanted}+1+{0:019d}.parquet" in late.error.message and "source.timeZone UTC" in late.error.message
    # Read in Asia/Tokyo (UTC+9), an hour early: the plan reads partition 1's second object (offsets 5 to 9, first
    # record at 2:40 in a directory read as 1:00 to 2:00), which is refused before any of it is produced.
    wrong = topic_factory(PARTITIONS)
    tokyo = {**spec, "source": {**spec["source"], "timeZone": "Asia/Tokyo"}}
    early, recorder = pipeline_for({**tokyo, "target": {**spec["target"], "topic": wrong}}, object_store)
    stop = threading.Event()
    thread = threading.Thread(target=early.restore, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(r.error for r in recorder.reports), timeout=20, what="a Failed report")
    finally:
        stop.set()
        thread.join(30)
    error = next(r.error for r in recorder.reports if r.error)
    assert error.reason == "TimeZoneMismatch" and f"{wanted}+1+{5:019d}.parquet" in error.message, error
    assert not early.succeeded and end_offsets(kafka.bootstrap, wrong, PARTITIONS) == [0, 0, 0]


def test_what_is_missing_on_the_target_or_in_the_dump_is_reported_and_retried(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    source, bucket = topic_factory(PARTITIONS), bucket_factory()
    records = produce_records(kafka.bootstrap, source, 30, PARTITIONS)
    dumped = dump(kafka, object_store, bucket, source, 30)
    target = {"bootstrapServers": kafka.bootstrap}

    def problem(**fields: Any) -> TaskError | None:
        pipeline, _ = pipeline_for(restore_spec(object_store, bucket, dumped, **fields), object_store)
        assert not pipeline._prepare()
        return pipeline.error

    nothing = problem(topics=["nothing-like-it"], target=target)
    assert nothing is not None and nothing.reason == "NoObjectsFound" and "nothing-like-it" in nothing.message
    nowhere = problem(topics=[source], partitions=[7], target=target)
    assert nowhere is not None and nowhere.reason == "NoObjectsFound" and "partitions [7]" in nowhere.message
    small = topic_factory(2)
    short = problem(topics=[source], target={**target, "topic": small})
    assert short is not None and short.reason == "TooFewTargetPartitions"
    assert f"target topic {small} has 2 partitions where the dump has partition 2 (3 needed)" in short.message

    # A missing topic: Failed with the reason, retried; created meanwhile, the restore goes on and completes.
    missing = f"restored-{uuid.uuid4().hex[:8]}"
    pipeline, recorder = pipeline_for(
        restore_spec(object_store, bucket, dumped, [source], target={**target, "topic": missing}), object_store
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.restore, args=(stop,), daemon=True)
    thread.start()
    try:
        failed = wait_for(lambda: any(r.error for r in recorder.reports), timeout=20, what="a Failed report")
        assert failed
        error = next(r.error for r in recorder.reports if r.error)
        assert (
            error.reason == "TargetTopicNotFound"
            and f"{missing} (create it with at least 3 partitions)" in error.message
        )
        topic_factory(PARTITIONS, name=missing)
        thread.join(30)
        assert not thread.is_alive() and pipeline.succeeded
    finally:
        stop.set()
    assert read_partitions(kafka.bootstrap, missing, PARTITIONS, 30) == expected_partitions(records, PARTITIONS)


def test_a_restore_killed_at_random_delivers_every_record_and_resumes_instead_of_starting_over(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    """`ferry run` SIGKILLed at random moments while it restores (FERRY_TEST_SEED repeats a run), then run to the
    end: every record is on the target in its partition's order (duplicates allowed: at least once), and each
    run continued from the saved resume point, so far fewer records were written than kills x total."""
    total, kills, per_object = 9000, 4, 500
    seed = int(os.environ.get("FERRY_TEST_SEED", time.time()))
    rng = random.Random(seed)
    source, target, bucket = topic_factory(PARTITIONS), topic_factory(PARTITIONS), bucket_factory()
    records = produce_records(kafka.bootstrap, source, total, PARTITIONS)
    dumped = dump(kafka, object_store, bucket, source, total, maxRecordsPerObject=per_object, compression="zstd")
    spec = restore_spec(
        object_store,
        bucket,
        dumped,
        [source],
        maxRecordsPerSecond=2500,  # a few seconds of restoring, for the kills to land in
        target={"bootstrapServers": kafka.bootstrap, "topic": target},
    )
    manifest = write_restore_manifest(tmp_path / "restore.yaml", "restore", spec, object_store)
    state = tmp_path / "restore.yaml.state.json"
    log = tmp_path / "restore.log"

    def run() -> tuple[subprocess.Popen[bytes], int]:
        since = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ferry", "run", "-f", str(manifest)],
                env={**os.environ, "FERRY_REPORT_INTERVAL": "0.2"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return process, since

    def restoring(since: int) -> bool:
        with log.open("rb") as text:
            text.seek(since)
            return re.search(rb" Running records=[0-9]", text.read()) is not None

    saved = []
    for _ in range(kills):
        process, since = run()
        wait_for(lambda since=since: restoring(since), timeout=30, what="the restore to run")  # type: ignore[misc]
        time.sleep(rng.uniform(0.1, 1.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        point = json.loads(state.read_text())["resumePoint"] if state.exists() else {}
        saved.append(point.get("records", 0))
    assert 0 < saved[-1] < total, f"every kill should land mid-restore (seed {seed}): saved points {saved}"
    assert saved == sorted(saved), f"a restart continued from the saved point, never from zero: {saved}"
    process, _ = run()
    assert process.wait(60) == 0, log.read_text()[-3000:]
    assert json.loads(state.read_text())["resumePoint"]["records"] == total

    written = read_partitions(kafka.bootstrap, target, PARTITIONS, total + kills * per_object, timeout=15)
    writes = sum(len(p) for p in written)
    duplicates = writes - total
    print(f"{kills} SIGKILLs (seed {seed}): {writes} writes of {total} records, {duplicates} duplicates, saved {saved}")
    for partition, expected in enumerate(expected_partitions(records, PARTITIONS)):
        assert list(dict.fromkeys(written[partition])) == expected  # every record, in order, counting first copies
    assert 0 <= duplicates <= kills * per_object  # a kill redoes at most what followed the last saved point
    assert writes < kills * total


def test_overlapping_objects_restore_each_offset_once_and_a_saved_point_is_where_a_restore_continues(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    """Two objects of one partition that overlap (a dump run again from an earlier offset writes such): each
    offset is restored once. Given a saved point in the middle of an object, a restore produces only what follows."""
    bucket, client = bucket_factory(), object_store.client()

    def put(start: int, end: int) -> None:
        lines = b"".join(
            encode_record(Record(o, BASE_TS + o, f"k{o}".encode(), f"v{o}".encode()), True, b"\n")
            for o in range(start, end)
        )
        client.put_object(Bucket=bucket, Key=f"d/2026/01/01/00/t+0+{start:019d}.jsonl", Body=lines)

    put(0, 10)
    put(5, 15)
    dumped = {"directory": "d"}
    first, second = topic_factory(1), topic_factory(1)
    pipeline, _ = restore(
        restore_spec(object_store, bucket, dumped, ["t"], target={"bootstrapServers": kafka.bootstrap, "topic": first}),
        object_store,
    )
    [restored] = read_partitions(kafka.bootstrap, first, 1, 15, timeout=10)
    assert [r.value for r in restored] == [f"v{o}".encode() for o in range(15)]
    assert pipeline.point.records == 15 and pipeline.point.skipped == 5

    # Saved after 7 records of the second object (offsets 5 to 11): only 12, 13 and 14 are produced.
    key = "d/2026/01/01/00/t+0+0000000000000000005.jsonl"
    entry = {"topic": "t", "partition": 0, "objectKey": key, "startOffset": 5, "recordsDone": 7, "complete": False}
    saved = MemoryResume({"partitions": {"t+0": {**entry, "lastOffset": 11}}, "records": 12, "objects": 1})
    spec = restore_spec(
        object_store, bucket, dumped, ["t"], target={"bootstrapServers": kafka.bootstrap, "topic": second}
    )
    pipeline, recorder = restore(spec, object_store, saved)
    [restored] = read_partitions(kafka.bootstrap, second, 1, 3, timeout=10)
    assert [r.value for r in restored] == [b"v12", b"v13", b"v14"]
    assert recorder.last.totals.records == 15 and pipeline.point.objects == 2 and saved.point is not None
    assert saved.point["partitions"]["t+0"] == {**entry, "recordsDone": 10, "complete": True, "lastOffset": 14}
