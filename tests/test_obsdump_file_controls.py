"""ObsDumpTask's dump file controls: objects closed by record count or size, gzip and zstd objects, time zones and
Hive-style time directories, createBucket, and the values-only format's separator warning. The model, keys and
CRD without servers; the objects against the real Kafka and SeaweedFS."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from ferry.api.crd import crd_for
from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION, accepted_spec
from ferry.metrics import WorkerMetrics
from ferry.obsdump.compression import Compression, compression_of, decompress
from ferry.obsdump.model import OBS_DUMP_TASK, TASKS_PER_INSTANCE, ObsDumpTarget, ObsDumpTaskSpec
from ferry.obsdump.pipeline import DumpPipeline
from ferry.obsdump.records import Record, contains_separator, decode_records, dump_batch_key, object_key_pattern
from ferry.obsdump.storage import ObjectStore, s3_client
from ferry.obsdump.worker import PLUGIN, summarize
from pydantic import ValidationError

from tests.conftest import BucketFactory, TopicFactory
from tests.support.dumps import KEY_RE, list_objects, spec_for, start_pipeline, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import LOOPBACK, _weed_binary
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_obsdump_worker import committed

# 2026-11-26 15:59:59 UTC is 23:59:59 in Shanghai (UTC+8); two seconds later it is the 27th there.
BEFORE_MIDNIGHT_SHANGHAI = int(datetime(2026, 11, 26, 15, 59, 59, tzinfo=UTC).timestamp() * 1000)
AFTER_MIDNIGHT_SHANGHAI = BEFORE_MIDNIGHT_SHANGHAI + 2000
HIVE_TYPES = "{'year': INTEGER, 'month': INTEGER, 'day': INTEGER, 'hour': INTEGER}"


def base_spec(target: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "source": {"bootstrapServers": "k:9092"},
        "topics": ["t"],
        "target": {"endpoint": "http://s3", "bucket": "dumps", "credentialsSecretRef": {"name": "c"}, **(target or {})},
        **fields,
    }


def target(**fields: Any) -> ObsDumpTarget:
    return ObsDumpTaskSpec.model_validate(base_spec(fields)).target


# -- the model, the keys and the CRD ---------------------------------------------------------------


def test_defaults_keep_todays_objects() -> None:
    spec = ObsDumpTaskSpec.model_validate(base_spec())
    assert spec.max_records_per_object is None and spec.max_bytes_per_object is None
    t = spec.target
    assert (t.compression, t.time_zone, t.time_directory_layout.value, t.create_bucket) == (
        "none",
        "UTC",
        "slashes",
        False,
    )
    assert (
        dump_batch_key(t, "orders", 2, 1234, BEFORE_MIDNIGHT_SHANGHAI)
        == "2026/11/26/15/orders+2+0000000000000001234.bin"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target": {"timeZone": "Mars/Olympus_Mons"}}, "timeZone 'Mars/Olympus_Mons' is not a known IANA time zone"),
        ({"target": {"timeZone": "America"}}, "timeZone 'America' is not a known IANA time zone"),
        ({"target": {"timeZone": "../etc/passwd"}}, "String should match pattern"),
        ({"target": {"compression": "brotli"}}, "'none', 'gzip' or 'zstd'"),
        ({"target": {"timeDirectoryLayout": "dots"}}, "'slashes' or 'hive'"),
        ({"maxRecordsPerObject": 0}, "greater than or equal to 1"),
        ({"maxBytesPerObject": 0}, "greater than or equal to 1"),
        ({"maxBytesPerObject": 6 * 1024**4}, "less than or equal to 5497558138880"),
    ],
)
def test_bad_file_controls_are_refused_with_a_clear_message(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ObsDumpTaskSpec.model_validate(base_spec(**fields))


def test_both_caps_zero_are_refused_each() -> None:
    with pytest.raises(ValidationError) as refused:
        ObsDumpTaskSpec.model_validate(base_spec(maxRecordsPerObject=0, maxBytesPerObject=0))
    assert {e["loc"][0] for e in refused.value.errors()} == {"maxRecordsPerObject", "maxBytesPerObject"}


def test_time_directories_in_a_time_zone_and_in_hive_layout() -> None:
    shanghai = target(timeZone="Asia/Shanghai")
    assert dump_batch_key(shanghai, "t", 0, 0, BEFORE_MIDNIGHT_SHANGHAI).startswith("2026/11/26/23/")
    assert dump_batch_key(shanghai, "t", 0, 0, AFTER_MIDNIGHT_SHANGHAI).startswith("2026/11/27/00/")
    assert dump_batch_key(target(), "t", 0, 0, AFTER_MIDNIGHT_SHANGHAI).startswith("2026/11/26/16/")  # UTC
    hive = target(timeZone="Asia/Shanghai", timeDirectoryLayout="hive", directory="raw")
    assert dump_batch_key(hive, "t", 0, 0, AFTER_MIDNIGHT_SHANGHAI) == (
        f"raw/year=2026/month=11/day=27/hour=00/t+0+{0:019d}.bin"
    )
    levels = {fmt: target(timeDirectoryLayout="hive", timeDirectoryFormat=fmt) for fmt in ("yyyy", "yyyy/MM/dd")}
    assert dump_batch_key(levels["yyyy"], "t", 0, 0, AFTER_MIDNIGHT_SHANGHAI).startswith("year=2026/t+0+")
    assert dump_batch_key(levels["yyyy/MM/dd"], "t", 0, 0, AFTER_MIDNIGHT_SHANGHAI).startswith(
        "year=2026/month=11/day=26/t+0+"
    )


def test_compressed_object_names_and_their_stale_uploads() -> None:
    names = {
        (keys, c): dump_batch_key(target(storeKeys=keys, compression=c), "a.b", 1, 5, 0)
        for keys in (False, True)
        for c in ("none", "gzip", "zstd")
    }
    assert [name.rsplit("+", 1)[1] for name in names.values()] == [
        f"{5:019d}.{ext}" for ext in ("bin", "bin.gz", "bin.zst", "jsonl", "jsonl.gz", "jsonl.zst")
    ]
    for (_, compression), name in names.items():
        assert compression_of(name) == compression
        assert KEY_RE.search(name)
        assert re.search(object_key_pattern("a.b", 1), name) and not re.search(object_key_pattern("a.b", 11), name)


@pytest.mark.parametrize(
    ("value", "separator", "ambiguous"),
    [
        (b"plain", b"\n", False),
        (b"two\nlines", b"\n", True),
        (b"ends with\n", b"\n", True),
        (b"", b"\n", False),
        (b"a|b", b"||", False),
        (b"a||b", b"||", True),
        (b"ends in |", b"||", True),  # "ends in |" + "||" + "last" reads back as "ends in " and "|last"
    ],
)
def test_which_values_read_back_as_more_than_one_record(value: bytes, separator: bytes, ambiguous: bool) -> None:
    assert contains_separator(value, separator) == ambiguous
    data = separator.join([b"first", value, b"last", b""])
    assert (list(decode_records(data, False, separator)) != [b"first", value, b"last"]) == ambiguous


def test_the_new_fields_are_immutable_and_have_no_server_side_default() -> None:
    spec = crd_for(OBS_DUMP_TASK)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert "self.target == oldSelf.target" in rules  # compression, timeZone, layout and createBucket with it
    for field in ("maxRecordsPerObject", "maxBytesPerObject"):
        assert (
            f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
            in rules
        )
    # A default the API server wrote into tasks stored before the upgrade would read as a change of spec.target.
    target_props = spec["properties"]["target"]["properties"]
    assert all(
        "default" not in target_props[f] for f in ("compression", "timeZone", "timeDirectoryLayout", "createBucket")
    )
    assert TASKS_PER_INSTANCE == 18


def test_the_operator_refuses_a_change_of_the_new_fields_and_accepts_a_spec_recorded_before_them() -> None:
    recorded_before = base_spec()  # a task accepted before these fields existed
    body = {"metadata": {"annotations": {ACCEPTED_SPEC_ANNOTATION: json.dumps(recorded_before)}}}
    assert accepted_spec(PLUGIN, {**body, "spec": {**recorded_before, "state": "Paused"}})[1] is None
    changes: list[dict[str, Any]] = [
        {"maxRecordsPerObject": 10},
        {"target": {"compression": "gzip"}},
        {"target": {"timeZone": "Asia/Shanghai"}},
    ]
    for change in changes:
        _, error = accepted_spec(PLUGIN, {**body, "spec": base_spec(**change)})
        assert error is not None and error.reason == "SpecImmutable", change


def test_status_adds_up_the_records_containing_the_separator() -> None:
    reports = [{"recordsContainingSeparator": 2}, {"recordsContainingSeparator": 0}, {}]
    assert summarize(reports)["recordsContainingSeparator"] == 2
    assert "recordsContainingSeparator" not in summarize([{"recordsContainingSeparator": None}])


class _Upload:
    """An object being written, in memory: what _take and _take_run hand it is all this compares."""

    def __init__(self, key: str) -> None:
        self.key, self.data = key, bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class _Uploads:
    part_bytes = 8 * 1024 * 1024

    def open(self, key: str, pool: object) -> _Upload:
        return _Upload(key)


def _taken(messages: list[Message], separator: str, by_runs: bool) -> tuple[dict[Any, Any], int]:
    spec = ObsDumpTaskSpec.model_validate(base_spec({"recordSeparator": separator}))
    pipeline = DumpPipeline(
        spec, {"bootstrap.servers": "k:9092"}, "g", _Uploads(), None, WorkerMetrics("ObsDumpTask", "g")
    )  # type: ignore[arg-type]
    if by_runs:
        pipeline._take_all(messages)
    else:
        for message in messages:
            pipeline._take(message)
    batches = {}
    for key, state in pipeline.partitions.items():
        b = state.batch
        assert b is not None
        upload: Any = b.upload
        batches[key] = (
            upload.key,
            bytes(upload.data),
            b.start_offset,
            b.last_offset,
            b.records,
            b.payload_bytes,
            b.encoded_bytes,
            b.separator_records,
        )
    return batches, len(pipeline.errors)


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_a_consumed_batch_taken_by_runs_writes_what_record_by_record_writes(separator: str) -> None:
    """Value-only objects take each run of one partition's records in one write (DumpPipeline._take_all): the
    bytes, offsets and counts must be the ones record by record gives, for runs that are interleaved, hold empty
    and missing values and keys, a value holding the separator (counted), and end-of-partition events. In memory
    (no broker or store can hand the pipeline this exact batch); the dump tests below run both paths for real."""
    eof = KafkaError(KafkaError._PARTITION_EOF)
    messages, offsets = [], {0: 100, 1: 7, 2: 0}
    for run, (partition, length) in enumerate([(0, 50), (1, 1), (0, 3), (2, 40), (1, 60), (0, 1)]):
        for i in range(length):
            n = offsets[partition]
            offsets[partition] += 1
            value = (
                None
                if n % 17 == 0
                else b""
                if n % 13 == 0
                else b"v-%d" % n + (b"\n-in-it" if (run, i) == (3, 5) else b"")
            )
            key = None if n % 5 == 0 else b"key-%d" % n
            messages.append(
                Message(topic="t", partition=partition, offset=n, key=key, value=value, timestamp=(1, 1000 + n))
            )
        if run == 2:
            messages.append(Message(topic="t", partition=0, offset=offsets[0], error=eof))
    by_record, by_runs = _taken(messages, separator, False), _taken(messages, separator, True)
    assert by_runs == by_record
    batches, errors = by_runs
    assert errors == 0 and sorted(batches) == [("t", 0), ("t", 1), ("t", 2)]
    assert [batches[("t", p)][4] for p in range(3)] == [54, 61, 40]
    assert batches[("t", 2)][7] == (1 if separator == "\n" else 0)  # the value with a newline in it


# -- against Kafka and SeaweedFS -------------------------------------------------------------------


def produce_values(bootstrap: str, topic: str, values: list[bytes | None], timestamps: list[int] | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, value in enumerate(values):
        extra = {} if timestamps is None else {"timestamp": timestamps[i]}
        producer.produce(topic, value=value, key=f"key-{i}".encode(), partition=0, **extra)
    assert producer.flush(30) == 0


def starts_of(objects: dict[str, bytes]) -> list[int]:
    return sorted(int(KEY_RE.search(key)["start"]) for key in objects)  # type: ignore[index]


def run_until(spec: dict[str, Any], store: SeaweedFS, group: str, records: int, **settings: Any) -> dict[str, Any]:
    """Dump until `records` are in objects, stop (writing what is buffered) and return the last report's extra."""
    running = start_pipeline(spec, store, group, **settings)
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.totals.records >= records, what="records")
        return running.recorder.last.extra
    finally:
        running.finish()


def test_a_record_cap_cuts_objects_at_fixed_offsets_and_a_rerun_rewrites_the_same_keys(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    produce_values(kafka.bootstrap, topic, [f"value-{i}".encode() for i in range(30)])
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        dumpPeriodSeconds=86400,  # only the cap closes objects
        maxRecordsPerObject=10,
        target={"storeKeys": True},
    )
    group = f"g-{uuid.uuid4().hex[:8]}"
    run_until(spec, object_store, group, 30)
    client = object_store.client()
    first = list_objects(client, bucket)
    assert starts_of(first) == [0, 10, 20]
    for key, data in first.items():
        start = int(KEY_RE.search(key)["start"])  # type: ignore[index]
        assert [r.offset for r in decode_records(data, True, b"\n") if isinstance(r, Record)] == list(
            range(start, start + 10)
        )
    # A worker killed after writing the objects from offset 10 on, before committing them, left the group at 10:
    # the next one writes them again, closed at the same records, under the same keys.
    rewind(kafka.bootstrap, group, topic, 10)
    extra = run_until(spec, object_store, group, 20)
    assert extra["objectsWritten"] == 2
    assert list_objects(client, bucket) == first
    assert committed(kafka.bootstrap, group, topic, 1) == [30]


def rewind(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Set the group's committed offset of partition 0 back, as if the later commits had been lost."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def expected_starts(sizes: list[int], cap: int) -> list[int]:
    """The documented rule: an object is closed before a record that would take it over the cap, and as soon as
    it reaches the cap; a record larger than the cap is an object of its own."""
    starts, size = [0], 0
    for offset, n in enumerate(sizes):
        if size and size + n > cap:
            starts.append(offset)
            size = 0
        size += n
        if size >= cap and offset + 1 < len(sizes):
            starts.append(offset + 1)
            size = 0
    return starts


def test_a_byte_cap_cuts_on_the_size_before_compression_the_same_on_every_pass(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket, cap = topic_factory(partitions=1), bucket_factory(), 100
    values = [b"v" * (5 + (i * 7) % 31) for i in range(40)]
    values[17] = values[39] = b"L" * 250  # larger than the cap: an object of its own (the last one too, at once)
    produce_values(kafka.bootstrap, topic, values)
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        dumpPeriodSeconds=86400,
        maxBytesPerObject=cap,
        target={"compression": "gzip"},
    )
    starts = expected_starts([len(v) + 1 for v in values], cap)
    assert {17, 18, 39} <= set(starts) and len(starts) > 8
    client = object_store.client()
    passes = []
    for _ in range(2):  # a second pass in a new group from the earliest offset writes the same objects again
        run_until(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", len(values))
        objects = list_objects(client, bucket)
        assert starts_of(objects) == starts
        passes.append(objects)
    assert passes[0] == passes[1]  # the same keys, and the same gzip bytes too (zlib, the same version)
    contents = [gzip.decompress(passes[0][key]) for key in sorted(passes[0])]
    assert b"".join(contents) == b"".join(v + b"\n" for v in values)
    assert all(len(c) <= cap for c in contents if not c.startswith(b"L"))


def read_with_tool(tool: str, data: bytes) -> bytes:
    """The object as the command-line tool (`gzip -dc`, `zstd -dc`) reads it: an independent reader, which these
    tests need on the PATH (a missing one fails them, rather than passing them unchecked)."""
    path = shutil.which(tool)
    assert path is not None, f"the {tool} command is not on the PATH: install it (package {tool}) to run this test"
    return subprocess.run([path, "-dc"], input=data, capture_output=True, check=True, timeout=60).stdout


def test_gzip_objects_under_hive_directories_of_the_task_time_zone(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    stamps = [
        BEFORE_MIDNIGHT_SHANGHAI,
        AFTER_MIDNIGHT_SHANGHAI,
        AFTER_MIDNIGHT_SHANGHAI + 1,
        AFTER_MIDNIGHT_SHANGHAI + 2,
    ]
    produce_values(kafka.bootstrap, topic, [f'{{"n":{i}}}'.encode() for i in range(4)], stamps)
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        dumpPeriodSeconds=86400,
        maxRecordsPerObject=2,
        target={
            "storeKeys": True,
            "compression": "gzip",
            "timeZone": "Asia/Shanghai",
            "timeDirectoryLayout": "hive",
        },
    )
    run_until(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", 4)
    client = object_store.client()
    objects = list_objects(client, bucket)
    # The first record's timestamp decides: offset 1 (00:00:01 on the 27th in Shanghai) is in the 26th's object.
    assert sorted(objects) == [
        f"dumps/raw/year=2026/month=11/day=26/hour=23/{topic}+0+{0:019d}.jsonl.gz",
        f"dumps/raw/year=2026/month=11/day=27/hour=00/{topic}+0+{2:019d}.jsonl.gz",
    ]
    for key, data in objects.items():
        text = gzip.decompress(data)
        assert read_with_tool("gzip", data) == text
        assert [r.timestamp_ms for r in decode_records(text, True, b"\n") if isinstance(r, Record)] == (
            stamps[:2] if "day=26" in key else stamps[2:]
        )
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/gzip" and "ContentEncoding" not in head
    # DuckDB, as docs/obsdump.md reads JSON lines: compressed, by their names, the Hive directories as columns.
    for key, data in objects.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    files = f"{tmp_path}/dumps/raw/*/*/*/*/*.jsonl.gz"
    found = duckdb.sql(
        f"""SELECT "offset", "timestamp", value, year, month, day, hour
        FROM read_json_auto('{files}', hive_partitioning = true, hive_types = {HIVE_TYPES})
        ORDER BY "offset" """
    ).fetchall()
    days = [26, 26, 27, 27]
    hours = [23, 23, 0, 0]
    assert found == [(i, stamps[i], f'{{"n":{i}}}', 2026, 11, days[i], hours[i]) for i in range(4)]


def test_zstd_objects_stream_through_the_multipart_upload(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    import zstandard

    topic, bucket = topic_factory(partitions=1), bucket_factory()
    values = [os.urandom(6000).hex().encode() for _ in range(900)]  # 10.8 MB, about 6 MB as zstd: two parts
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "message.max.bytes": 1_000_000})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(30) == 0
    spec = spec_for(
        kafka,
        object_store,
        bucket,
        topics=[topic],
        dumpPeriodSeconds=86400,
        maxRecordsPerObject=900,
        target={"compression": "zstd"},
    )
    run_until(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", 900, part_bytes=5 * 1024 * 1024)
    client = object_store.client()
    [(key, data)] = list_objects(client, bucket).items()
    assert key.endswith(f"{topic}+0+{0:019d}.bin.zst")
    head = client.head_object(Bucket=bucket, Key=key)
    assert int(head["ETag"].strip('"').rsplit("-", 1)[1]) >= 2  # S3 marks multipart objects with -<parts>
    expected = b"".join(v + b"\n" for v in values)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == expected
    assert decompress(data, Compression.ZSTD) == expected
    assert read_with_tool("zstd", data) == expected


def test_values_containing_the_separator_are_counted_and_warned_about_once(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    values: list[bytes | None] = [b"plain", b"two\nlines", None, b"ends\n", b"last"]
    produce_values(kafka.bootstrap, topic, values)
    spec = spec_for(kafka, object_store, bucket, topics=[topic])
    caplog.set_level(logging.WARNING, logger="ferry.obsdump.pipeline")
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(lambda: running.recorder.reports and running.recorder.last.totals.records == 5, what="5 records")
        wait_for(lambda: running.recorder.last.extra.get("recordsContainingSeparator") == 2, what="the count reported")
    finally:
        running.finish()
    metrics = running.pipeline.metrics
    labels = {**metrics.labels, "topic": topic}
    assert metrics.registry.get_sample_value("ferry_dump_separator_records_total", labels) == 2
    warnings = [r.getMessage() for r in caplog.records if "contains the record separator" in r.getMessage()]
    assert len(warnings) == 1 and f"{topic}[0] at offset 1" in warnings[0]
    [data] = list_objects(object_store.client(), bucket).values()
    assert list(decode_records(data, False, b"\n")) == [b"plain", b"two", b"lines", b"", b"ends", b"", b"last"]


def test_create_bucket_creates_a_missing_bucket_and_says_when_the_keys_may_not(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory
) -> None:
    topic, client = topic_factory(partitions=1), object_store.client()
    produce_values(kafka.bootstrap, topic, [b"a", b"b", b"c"])
    created = f"made-{uuid.uuid4().hex[:8]}"
    spec = spec_for(kafka, object_store, created, topics=[topic], target={"createBucket": True, "storeKeys": True})
    try:
        run_until(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", 3)
        assert len(list_objects(client, created)) == 1
        # Another worker (or a person) created it first: BucketAlreadyOwnedByYou is no error.
        parsed = ObsDumpTaskSpec.model_validate(spec).target
        store = ObjectStore(s3_client(parsed, store_secrets(object_store)), parsed)
        store._create_bucket()
    finally:
        for key in list_objects(client, created):
            client.delete_object(Bucket=created, Key=key)
        client.delete_bucket(Bucket=created)

    missing = f"none-{uuid.uuid4().hex[:8]}"
    writer = restricted_identity(object_store)
    cases = [
        ({"createBucket": False}, None, "BucketNotFound", "target.createBucket: true"),
        ({"createBucket": True}, writer, "BucketCreationDenied", "may not create it (AccessDenied)"),
    ]
    for fields, access_key, reason, hint in cases:
        spec = spec_for(kafka, object_store, missing, topics=[topic], target=fields)
        running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", access_key=access_key)
        try:
            wait_for(lambda: running.recorder.reports and running.recorder.last.error, timeout=20, what=reason)  # noqa: B023
            error = running.recorder.last.error
            assert error is not None and error.reason == reason and hint in error.message, error
        finally:
            running.finish()
    assert missing not in {b["Name"] for b in client.list_buckets()["Buckets"]}


def store_secrets(store: SeaweedFS) -> dict[str, Any]:
    from ferry.credentials import Sensitive
    from ferry.obsdump.storage import ACCESS_KEY_ROLE, SECRET_KEY_ROLE

    return {ACCESS_KEY_ROLE: Sensitive(store.access_key), SECRET_KEY_ROLE: Sensitive(store.secret_key)}


def restricted_identity(store: SeaweedFS) -> str:
    """An access key (with the store's secret key) that may read, write and list, but not create buckets."""
    access_key = "WRITER" + uuid.uuid4().hex[:10].upper()
    command = (
        f"s3.configure -user {access_key.lower()} -access_key {access_key} -secret_key {store.secret_key} "
        "-actions Read,Write,List -apply"
    )
    shell = [str(_weed_binary()), "shell", f"-master={LOOPBACK}:{store.ports['master']}"]
    shell.append(f"-filer={LOOPBACK}:{store.ports['filer']}")
    subprocess.run(shell, input=command + "\n", capture_output=True, text=True, check=True, timeout=60)
    return access_key
