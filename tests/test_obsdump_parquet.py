"""ObsDumpTask's Parquet objects (target.format: parquet) and reading dump objects of every format back: the names and
the model without servers; the objects against the real Kafka and SeaweedFS, read with pyarrow, DuckDB and
ferry.obsdump.reader.read_object."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from ferry.api.crd import crd_for
from ferry.errors import TaskError
from ferry.obsdump import parquet
from ferry.obsdump.compression import compressor
from ferry.obsdump.model import OBS_DUMP_TASK, Compression, ObjectFormat, ObsDumpTarget, ObsDumpTaskSpec
from ferry.obsdump.parquet import ParquetObject
from ferry.obsdump.reader import read_object
from ferry.obsdump.records import (
    DumpedRecord,
    Record,
    dump_batch_key,
    encode_record,
    extension,
    object_key_pattern,
    parse_object_key,
)
from ferry.obsdump.storage import ObjectUpload
from pydantic import ValidationError

from tests.conftest import BucketFactory, TopicFactory
from tests.support.dumps import KEY_RE, list_objects, spec_for, start_pipeline, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_obsdump_file_controls import expected_starts, read_with_tool, rewind, run_until, starts_of
from tests.test_obsdump_worker import committed

T0 = 1_763_700_000_000  # 2025-11-21T04:40:00Z
# The docs' DuckDB queries (docs/obsdump.md, How to read the objects).
HIVE_TYPES = "{'year': INTEGER, 'month': INTEGER, 'day': INTEGER, 'hour': INTEGER}"
DUCKDB_READS = {
    "raw": "SELECT value FROM read_csv('{files}.bin*', columns = {{'value': 'VARCHAR'}}, header = false, "
    "delim = '\\0', quote = '', escape = '')",
    "jsonl": """SELECT "offset", "timestamp" FROM read_json_auto('{files}.jsonl*')""",
    "parquet": """SELECT "offset", epoch_ms(timestamp) FROM read_parquet('{files}.parquet')""",
}
Source = tuple[int, int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]  # partition, offset, ...


def target(**fields: Any) -> ObsDumpTarget:
    spec = {"source": {"bootstrapServers": "k:9092"}, "topics": ["t"]}
    target = {"endpoint": "http://s3", "bucket": "dumps", "credentialsSecretRef": {"name": "c"}, **fields}
    return ObsDumpTaskSpec.model_validate({**spec, "target": target}).target


# -- names, the model and the CRD ------------------------------------------------------------------


def test_parquet_objects_are_named_dot_parquet_whatever_the_codec_and_every_name_parses_back() -> None:
    for fmt, keys, ext in (("raw", False, "bin"), ("jsonl", True, "jsonl"), ("parquet", False, "parquet")):
        for compression in Compression:
            key = dump_batch_key(target(format=fmt, compression=compression.value), "a.b", 1, 5, T0)
            suffix = {"none": "", "gzip": ".gz", "zstd": ".zst"}[compression.value] if fmt != "parquet" else ""
            assert key == f"2025/11/21/04/a.b+1+{5:019d}.{ext}{suffix}"
            assert KEY_RE.search(key) and re.search(object_key_pattern("a.b", 1), key)
            name = parse_object_key(key)
            expected_compression = Compression.NONE if fmt == "parquet" else compression
            assert (name.topic, name.partition, name.start_offset, name.format, name.compression) == (
                "a.b",
                1,
                5,
                ObjectFormat(fmt),
                expected_compression,
            )
        # Without format, storeKeys chooses between raw and jsonl, as before format existed.
        assert target(storeKeys=keys).object_format is (ObjectFormat.JSONL if keys else ObjectFormat.RAW)
    with pytest.raises(ValueError, match="not the key of a dump object"):
        parse_object_key("dumps/orders.csv")


def test_format_contradicting_store_keys_or_a_jsonl_separator_is_refused_by_the_model_and_the_crd() -> None:
    with pytest.raises(ValidationError, match="format raw writes the values only"):
        target(format="raw", storeKeys=True)
    with pytest.raises(ValidationError, match="with format jsonl the recordSeparator must be made of control"):
        target(format="jsonl", recordSeparator=",")
    with pytest.raises(ValidationError, match="'raw', 'jsonl' or 'parquet'"):
        target(format="csv")
    assert target(format="parquet", storeKeys=True).object_format is ObjectFormat.PARQUET
    assert target(format="parquet", recordSeparator=",").object_format is ObjectFormat.PARQUET  # not used
    spec = crd_for(OBS_DUMP_TASK)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"]: r["message"] for r in spec["x-kubernetes-validations"]}
    assert rules["!has(self.target.format) || self.target.format != 'raw' || !self.target.storeKeys"].startswith(
        "format raw writes the values only"
    )
    assert "default" not in spec["properties"]["target"]["properties"]["format"]  # unset: storeKeys chooses


def test_record_size_is_the_rows_plain_encoded_size() -> None:
    record = Record(7, T0, b"key", None, [("h", b"12"), ("h", None), ("\u00e9", b"")])
    # topic 4+6, partition 4, offset 8, timestamp 8, key 4+3, null value 0, headers (4+1+4+2) + (4+1) + (4+2+4+0)
    assert parquet.record_size("orders", record) == 10 + 4 + 8 + 8 + 7 + 0 + 11 + 5 + 10


def encoded_object(fmt: str, compression: Compression, records: list[Record], separator: bytes) -> bytes:
    """An object as the workers write it (their encoders and compressors), in memory."""

    class Buffer:
        data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    if fmt == "parquet":
        buffer = Buffer()
        writer = ParquetObject(buffer, "t", 0, compression)
        for record in records:
            writer.add(record, parquet.record_size("t", record))
        writer.close()
        return buffer.data
    data = b"".join(encode_record(r, fmt == "jsonl", separator) for r in records)
    stream = compressor(compression)
    return data if stream is None else stream.compress(data) + stream.flush()


def test_read_object_takes_bytes_in_any_pieces_and_refuses_truncated_or_foreign_objects() -> None:
    records = [Record(i, T0 + i, b"k%d" % i, b"v" * i, [("h", bytes([i]))]) for i in range(40)]
    separator = b"\r\n"  # two bytes: pieces of one byte split it too
    for fmt in ("raw", "jsonl", "parquet"):
        for compression in Compression:
            key = f"d/t+0+{0:019d}.{extension(ObjectFormat(fmt), compression)}"
            data = encoded_object(fmt, compression, records, separator)
            whole = list(read_object(key, data, separator))
            assert list(read_object(key, (data[i : i + 1] for i in range(len(data))), separator)) == whole
            assert list(read_object(key, io.BytesIO(data), separator)) == whole
            if fmt == "raw":
                assert [r.value for r in whole] == [r.value for r in records]
            else:
                assert [DumpedRecord("t", 0, r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in records] == [
                    DumpedRecord(r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value, list(r.headers))
                    for r in whole
                ]
            with pytest.raises(ValueError):
                list(read_object(key, data[:-3], separator))
    with pytest.raises(ValueError, match="not a record of a jsonl dump object"):
        list(read_object(f"t+0+{0:019d}.jsonl", b'{"n": 1}\n'))
    foreign = io.BytesIO()
    pq.write_table(pa.table({"n": [1]}), foreign)
    with pytest.raises(ValueError, match="not a Ferry dump object"):
        list(read_object(f"t+0+{0:019d}.parquet", foreign.getvalue()))


class FailingUpload:
    """An upload whose store fails after `good` writes, then takes nothing more."""

    def __init__(self, good: int) -> None:
        self.writes: list[bytes] = []
        self.good = good

    def write(self, data: bytes) -> None:
        if len(self.writes) >= self.good:
            raise TaskError("ObjectStoreUnresponsive", "the store has not answered")
        self.writes.append(data)


def test_a_failing_upload_keeps_its_reason_and_a_discarded_object_writes_nothing_more() -> None:
    records = [Record(i, T0, b"k", b"v" * 100, [("h", None)]) for i in range(50)]
    failing = ParquetObject(FailingUpload(good=2), "t", 0, Compression.ZSTD)
    with pytest.raises(TaskError, match="has not answered"):  # the store's reason, not pyarrow's wrapping of it
        for record in records:
            failing.add(record, parquet.ROW_GROUP_BYTES)  # each record a full row group
    upload = FailingUpload(good=1000)
    dropped = ParquetObject(upload, "t", 0, Compression.NONE)
    dropped.add(records[0], 10)
    written = len(upload.writes)
    dropped.discard()  # its upload is aborted: no row group, no footer, also when the writer is collected
    del dropped
    assert len(upload.writes) == written == 1  # the magic number only


def test_a_worker_without_pyarrow_reports_parquet_unavailable(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError, as where it is missing
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(TaskError) as refused:
        parquet.require_pyarrow()
    assert refused.value.reason == "ParquetUnavailable" and "ferry[parquet]" in refused.value.message
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"format": "parquet"})
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}")
    try:
        recorder = running.recorder
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=20, what="ParquetUnavailable")
        error = recorder.last.error
        assert error is not None and error.reason == "ParquetUnavailable" and "ferry[parquet]" in error.message
        assert running.thread.is_alive()  # waits for a fix with backoff, as for any other reason
    finally:
        running.finish()


# -- against Kafka and SeaweedFS -------------------------------------------------------------------


def produce(bootstrap: str, topic: str, partitions: int = 1) -> list[Source]:
    """Records with keys and null keys, values, empty and null values, text and binary bytes, headers with
    repeated names, binary and null values, and timestamps of their own; round-robin over the partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    source: list[Source] = []
    offsets = [0] * partitions
    for i in range(24):
        key = None if i % 4 == 1 else f"key-{i}".encode() if i % 4 else bytes([0xFF, 0x00, i])
        value = None if i % 6 == 5 else b"" if i % 6 == 4 else f'{{"n":{i},"text":"\u00e9\\n"}}'.encode()
        headers: list[tuple[str, bytes | None]] = []
        if i % 3 == 0:
            headers = [("trace", f"t-{i}".encode()), ("trace", bytes([0x80, i])), ("empty", b""), ("none", None)]
        partition, timestamp = i % partitions, T0 + i * 61_000  # across hours: several time directories
        producer.produce(topic, value=value, key=key, partition=partition, timestamp=timestamp, headers=headers)
        source.append((partition, offsets[partition], timestamp, key, value, headers))
        offsets[partition] += 1
    assert producer.flush(30) == 0
    return source


def as_source(record: DumpedRecord) -> Source:
    assert record.offset is not None and record.timestamp_ms is not None
    return (record.partition, record.offset, record.timestamp_ms, record.key, record.value, list(record.headers))


def field(doc: dict[str, Any], name: str) -> bytes | None:
    """A key or value of a JSON line as docs/obsdump.md says to read it: text, or base64 under `<name>Base64`."""
    if f"{name}Base64" in doc:
        return base64.b64decode(doc[f"{name}Base64"])
    return None if doc[name] is None else str(doc[name]).encode()


def parquet_spec(kafka: KafkaCluster, store: SeaweedFS, bucket: str, topic: str, **fields: Any) -> dict[str, Any]:
    target = {"format": "parquet", "timeDirectoryLayout": "hive", **fields.pop("target", {})}
    return spec_for(kafka, store, bucket, topics=[topic], dumpPeriodSeconds=86400, target=target, **fields)


def test_parquet_objects_hold_every_field_and_read_back_with_pyarrow_and_duckdb(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parquet, "ROW_GROUP_RECORDS", 5)  # several row groups in an object
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    source = produce(kafka.bootstrap, topic)
    spec = parquet_spec(kafka, object_store, bucket, topic, maxRecordsPerObject=12, target={"compression": "zstd"})
    run_until(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", len(source))
    objects = list_objects(object_store.client(), bucket)
    assert starts_of(objects) == [0, 12]
    rows: list[Source] = []
    for key, data in sorted(objects.items()):
        assert key.endswith(".parquet") and "/year=2025/month=11/day=21/hour=" in key
        file = pq.ParquetFile(pa.BufferReader(data))
        assert file.schema_arrow == parquet.schema()
        assert file.metadata.num_row_groups == 3  # 5 + 5 + 2 records
        assert file.metadata.row_group(0).column(0).compression == "ZSTD"
        start = parse_object_key(key).start_offset
        assert {k: v for k, v in file.metadata.metadata.items() if k.startswith(b"ferry.")} == {
            b"ferry.schema.version": b"1",
            b"ferry.topic": topic.encode(),
            b"ferry.partition": b"0",
            b"ferry.first_offset": str(start).encode(),
            b"ferry.last_offset": str(start + 11).encode(),
        }
        table = file.read()
        assert set(table.column("topic").to_pylist()) == {topic}
        for row in table.to_pylist():
            headers = [(h["key"], h["value"]) for h in row["headers"]]
            timestamp = int(row["timestamp"].timestamp() * 1000)
            rows.append((row["partition"], row["offset"], timestamp, row["key"], row["value"], headers))
        assert [as_source(r) for r in read_object(key, data)] == rows[-12:]
    assert rows == source

    # DuckDB, over local copies of the objects under their keys: the Hive directories become columns.
    for key, data in objects.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    query = f"""
        SELECT partition, "offset", epoch_ms(timestamp), key, value, headers, topic, year, hour
        FROM read_parquet('{tmp_path}/dumps/raw/*/*/*/*/*.parquet', hive_partitioning = true, hive_types = {HIVE_TYPES})
        ORDER BY "offset"
    """
    found = duckdb.sql(query).fetchall()
    assert [(p, o, t, k, v, [(h["key"], h["value"]) for h in hs]) for p, o, t, k, v, hs, *_ in found] == source
    assert {(row[6], row[7], row[8]) for row in found} == {(topic, 2025, 4)}
    texts = duckdb.sql(
        f"""SELECT decode(value), CAST(key AS VARCHAR), headers[1].key
        FROM read_parquet('{tmp_path}/**/*.parquet') WHERE "offset" = 3"""
    ).fetchall()
    assert texts == [('{"n":3,"text":"\u00e9\\n"}', "key-3", "trace")]


def test_caps_cut_parquet_objects_at_fixed_offsets_and_a_rerun_rewrites_the_same_objects(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    source = produce(kafka.bootstrap, topic)
    client = object_store.client()
    group = f"g-{uuid.uuid4().hex[:8]}"
    spec = parquet_spec(kafka, object_store, bucket, topic, maxRecordsPerObject=8)
    run_until(spec, object_store, group, 24)
    first = list_objects(client, bucket)
    assert starts_of(first) == [0, 8, 16]
    # A worker killed after writing the objects from offset 8 on, before committing them: the next one writes
    # them again, closed at the same records, under the same keys, with the same bytes.
    rewind(kafka.bootstrap, group, topic, 8)
    extra = run_until(spec, object_store, group, 16)
    assert extra["objectsWritten"] == 2 and list_objects(client, bucket) == first
    assert committed(kafka.bootstrap, group, topic, 1) == [24]

    # maxBytesPerObject counts each record's record_size, as documented.
    sized = bucket_factory()
    cap = 160
    spec = parquet_spec(kafka, object_store, sized, topic, maxBytesPerObject=cap)
    sizes = [parquet.record_size(topic, Record(o, t, k, v, h)) for _, o, t, k, v, h in source]
    starts = expected_starts(sizes, cap)
    run_until(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", starts[-1])  # the last object is closed on stopping
    objects = list_objects(client, sized)
    assert starts_of(objects) == starts and len(objects) > 4
    assert [as_source(r) for key in sorted(objects) for r in read_object(key, objects[key])] == source


@pytest.mark.parametrize("fmt", ["raw", "jsonl", "parquet"])
def test_read_object_reads_back_every_compression_from_bytes_and_from_a_stream(
    fmt: str,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    topic, bucket = topic_factory(partitions=2), bucket_factory()
    source = produce(kafka.bootstrap, topic, partitions=2)
    runs = [
        start_pipeline(
            spec_for(
                kafka,
                object_store,
                bucket,
                topics=[topic],
                dumpPeriodSeconds=86400,
                maxRecordsPerObject=5,
                target={"format": fmt, "compression": compression, "directory": compression},
            ),
            object_store,
            f"g-{uuid.uuid4().hex[:8]}",
        )
        for compression in ("none", "gzip", "zstd")
    ]
    try:
        for running in runs:
            recorder = running.recorder
            wait_for(lambda: recorder.reports and recorder.last.totals.records >= 20, what="records")  # noqa: B023
    finally:
        for running in runs:
            running.finish()
    client = object_store.client()
    for compression in ("none", "gzip", "zstd"):
        objects = list_objects(client, bucket, prefix=f"{compression}/")
        assert len(objects) == 6  # per partition: 5 + 5 + 2 records
        keys = sorted(objects, key=lambda k: (parse_object_key(k).partition, parse_object_key(k).start_offset))
        dumped = [r for key in keys for r in read_object(key, objects[key])]
        streamed = [r for key in keys for r in read_object(key, client.get_object(Bucket=bucket, Key=key)["Body"])]
        assert streamed == dumped
        assert {r.topic for r in dumped} == {topic}
        expected = sorted(source)
        if fmt == "raw":  # the values only: no offsets, timestamps, keys or headers, and a null value reads as b""
            assert [(r.partition, r.value) for r in dumped] == [(p, v or b"") for p, _, _, _, v, _ in expected]
            assert all(r.offset is r.timestamp_ms is r.key is None and not r.headers for r in dumped)
        else:
            assert [as_source(r) for r in dumped] == expected
        if fmt != "parquet" and compression != "none":  # the gzip and zstd commands read them too, record by record
            tool = {"gzip": "gzip", "zstd": "zstd"}[compression]
            lines = [line for key in keys for line in read_with_tool(tool, objects[key]).split(b"\n")[:-1]]
            if fmt == "raw":  # these values hold no newline
                assert lines == [r.value for r in dumped]
            else:
                docs = [json.loads(line) for line in lines]
                assert [(d["offset"], d["timestamp"], field(d, "key"), field(d, "value")) for d in docs] == [
                    (r.offset, r.timestamp_ms, r.key, r.value) for r in dumped
                ]
        # DuckDB reads each format by its name, compressed or not (values as text: these are all UTF-8).
        for key in keys:
            (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / key).write_bytes(objects[key])
        found = duckdb.sql(DUCKDB_READS[fmt].format(files=f"{tmp_path}/{compression}/*/*/*/*/*")).fetchall()
        if fmt == "raw":  # an empty value, or a null one, is NULL there
            values = [v.decode() if v else None for *_, v, _ in source]
            assert sorted(found, key=str) == sorted(((v,) for v in values), key=str)
        else:
            assert sorted(found) == sorted((o, t) for _, o, t, *_ in source)


def test_a_parquet_object_larger_than_a_part_is_uploaded_in_parts_a_row_group_at_a_time(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 1024 * 1024)
    parts: list[int] = []
    send_part = ObjectUpload._send_part

    def counted(upload: ObjectUpload, size: int) -> None:
        parts.append(min(len(upload.buffer), size))  # what goes out as the part
        send_part(upload, size)

    monkeypatch.setattr(ObjectUpload, "_send_part", counted)
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    values = [os.urandom(300_000) for _ in range(40)]  # 12 MB that no codec shrinks: more than two 5 MiB parts
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(30) == 0
    spec = parquet_spec(kafka, object_store, bucket, topic, target={"compression": "zstd"})
    running = start_pipeline(spec, object_store, f"g-{uuid.uuid4().hex[:8]}", part_bytes=5 * 1024 * 1024)
    try:
        states = running.pipeline.partitions.values
        wait_for(lambda: sum(s.batch.records for s in list(states()) if s.batch) == 40, what="40 records buffered")
    finally:
        running.finish()  # writes the object
    [(key, data)] = list_objects(object_store.client(), bucket).items()
    assert len(parts) >= 2 and all(size >= 5 * 1024 * 1024 for size in parts[:-1])  # S3's smallest, but the last
    file = pq.ParquetFile(pa.BufferReader(data))
    groups = [file.metadata.row_group(i) for i in range(file.metadata.num_row_groups)]
    assert len(groups) == 10 and all(g.num_rows == 4 for g in groups)  # 4 x 300 kB reach 1 MiB
    assert [r.value for r in read_object(key, data)] == values
