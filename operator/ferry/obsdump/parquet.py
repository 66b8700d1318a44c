"""Parquet dump objects (`target.format: parquet`): one row per record, in offset order, written a row group at a
time into the object's upload, so an open object holds at most one row group of records and one part.

The schema (version 1, in the file's key-value metadata as `ferry.schema.version`; docs/obsdump.md, Parquet):

    topic      string, not null         the same in every row of an object
    partition  int32, not null          likewise
    offset     int64, not null
    timestamp  timestamp(ms, UTC), not null     the Kafka timestamp as stored
    key        binary, null for a null key
    value      binary, null for a null value (a tombstone)
    headers    list<struct<key: string not null, value: binary>>, not null (empty without headers), in order,
               a name repeated as often as the record repeats it

A later version may add columns at the end; it changes no column's name, type or meaning. The key-value metadata
also has `ferry.topic`, `ferry.partition`, `ferry.first_offset` and `ferry.last_offset`.

pyarrow is an optional dependency (`pip install ferry[parquet]`; the image has it): it is imported when a Parquet
object is written or read, and a worker without it reports `ParquetUnavailable`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from contextlib import suppress
from typing import IO, Any, Protocol

from ferry.errors import TaskError
from ferry.obsdump.compression import GZIP_LEVEL, ZSTD_LEVEL
from ferry.obsdump.model import Compression
from ferry.obsdump.records import DumpedRecord, Record

SCHEMA_VERSION = "1"
# A row group is written once it holds this many records or this many bytes (record_size): what an open object
# keeps in memory besides its part, and the unit query engines read (DuckDB's own row groups are 122,880 rows).
ROW_GROUP_RECORDS = 100_000
ROW_GROUP_BYTES = 8 * 1024 * 1024
CONTENT_TYPE = "application/vnd.apache.parquet"
# target.compression names the codec of the column chunks, at the levels of the other formats: none is none
# (uncompressed), not Parquet's usual snappy.
CODECS = {
    Compression.NONE: ("none", None),
    Compression.GZIP: ("gzip", GZIP_LEVEL),
    Compression.ZSTD: ("zstd", ZSTD_LEVEL),
}
# Min/max statistics where a reader can skip row groups by them; not for keys, values and headers (long, useless).
_STATISTICS = ["topic", "partition", "offset", "timestamp"]
_READ_BATCH = 4096


class Writable(Protocol):
    def write(self, data: bytes, /) -> None: ...


def _pyarrow() -> tuple[Any, Any]:
    import pyarrow
    import pyarrow.parquet

    return pyarrow, pyarrow.parquet


def require_pyarrow() -> None:
    """Fail, with a reason a user can act on, where pyarrow is not installed."""
    try:
        _pyarrow()
    except ImportError as err:
        raise TaskError(
            "ParquetUnavailable",
            f"target.format is parquet and this worker cannot import pyarrow ({err}): run the Ferry image, which "
            "has it, or install ferry[parquet] where the worker runs",
        ) from None


def schema() -> Any:
    """The pyarrow schema of version 1."""
    pa, _ = _pyarrow()
    header = pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())])
    return pa.schema(
        [
            pa.field("topic", pa.string(), nullable=False),
            pa.field("partition", pa.int32(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("key", pa.binary()),
            pa.field("value", pa.binary()),
            pa.field("headers", pa.list_(pa.field("element", header, nullable=False)), nullable=False),
        ]
    )


def record_size(topic: str, record: Record) -> int:
    """The row's size in Parquet's PLAIN encoding, without levels: 4 bytes of length before each string or
    binary, none for a null; what maxBytesPerObject and the row groups count (the same on every attempt)."""
    size = 4 + len(topic.encode()) + 4 + 8 + 8
    size += sum(4 + len(data) for data in (record.key, record.value) if data is not None)
    for name, value in record.headers:
        size += 4 + len(name.encode()) + (0 if value is None else 4 + len(value))
    return size


class _Sink:
    """The file pyarrow writes to: the object's upload, until the object is discarded."""

    def __init__(self, upload: Writable) -> None:
        self.upload: Writable | None = upload
        self.closed = False

    def write(self, data: bytes) -> int:
        if self.upload is not None:
            self.upload.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class ParquetObject:
    """One Parquet object being written: records are buffered as columns until a row group is full."""

    def __init__(self, upload: Writable, topic: str, partition: int, compression: Compression) -> None:
        self.pa, pq = _pyarrow()
        self.schema = schema()
        self.topic = topic
        self.partition = partition
        self.sink = _Sink(upload)
        codec, level = CODECS[compression]
        self.writer = pq.ParquetWriter(
            self.sink,
            self.schema,
            compression=codec,
            compression_level=level,
            write_statistics=_STATISTICS,
            sorting_columns=[pq.SortingColumn(self.schema.get_field_index("offset"))],
        )
        self.first_offset: int | None = None
        self.last_offset: int | None = None
        self._clear()

    def _clear(self) -> None:
        self.offsets = array("q")
        self.timestamps = array("q")
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.headers: list[Any] = []
        self.buffered_bytes = 0

    def add(self, record: Record, size: int) -> None:
        """Buffer one record (`size` is its record_size); a full row group is encoded and written."""
        if self.first_offset is None:
            self.first_offset = record.offset
        self.last_offset = record.offset
        self.offsets.append(record.offset)
        self.timestamps.append(record.timestamp_ms)
        self.keys.append(record.key)
        self.values.append(record.value)
        self.headers.append(record.headers or ())  # one shared empty tuple for the many records without headers
        self.buffered_bytes += size
        if len(self.offsets) >= ROW_GROUP_RECORDS or self.buffered_bytes >= ROW_GROUP_BYTES:
            self._write_row_group()

    def _write_row_group(self) -> None:
        pa, rows = self.pa, len(self.offsets)
        if not rows:
            return
        fields = {f.name: f.type for f in self.schema}
        columns = [
            pa.repeat(pa.scalar(self.topic, fields["topic"]), rows),
            pa.repeat(pa.scalar(self.partition, fields["partition"]), rows),
            # The int64 buffers as they are: no Python int per row.
            pa.Array.from_buffers(fields["offset"], rows, [None, pa.py_buffer(self.offsets)]),
            pa.Array.from_buffers(fields["timestamp"], rows, [None, pa.py_buffer(self.timestamps)]),
            pa.array(self.keys, fields["key"]),
            pa.array(self.values, fields["value"]),
            pa.array(self.headers, fields["headers"]),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self._clear()
        self.writer.write_batch(batch, row_group_size=ROW_GROUP_RECORDS)

    def close(self) -> None:
        """Write the last row group and the footer; all that is left of the upload is its complete()."""
        self._write_row_group()
        self.writer.add_key_value_metadata(
            {
                "ferry.schema.version": SCHEMA_VERSION,
                "ferry.topic": self.topic,
                "ferry.partition": str(self.partition),
                "ferry.first_offset": str(self.first_offset),
                "ferry.last_offset": str(self.last_offset),
            }
        )
        self.writer.close()

    def discard(self) -> None:
        """Drop the object (its upload is aborted): nothing more reaches the upload, not even a footer."""
        self.sink.upload = None
        self._clear()
        with suppress(Exception):  # a writer that failed mid-row-group may not close: it is dropped all the same
            self.writer.close()


def read_parquet(source: bytes | IO[bytes]) -> Iterator[DumpedRecord]:
    """The records of a Parquet dump object, a row group at a time: from its bytes, a seekable file in place, or
    a stream read whole first (Parquet's footer is at its end)."""
    pa, pq = _pyarrow()
    if not isinstance(source, bytes) and not source.seekable():
        source = source.read()
    file = pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source)
    metadata = file.metadata.metadata or {}
    version = metadata.get(b"ferry.schema.version", b"").decode()
    if version != SCHEMA_VERSION:
        raise ValueError(f"not a Ferry dump object of schema {SCHEMA_VERSION} (ferry.schema.version {version!r})")
    names = [f.name for f in schema()]
    for batch in file.iter_batches(batch_size=_READ_BATCH, columns=names):
        timestamps = batch.column("timestamp").cast(pa.int64()).to_pylist()
        columns = {name: batch.column(name).to_pylist() for name in names if name != "timestamp"}
        for i, timestamp in enumerate(timestamps):
            yield DumpedRecord(
                columns["topic"][i],
                columns["partition"][i],
                columns["offset"][i],
                timestamp,
                columns["key"][i],
                columns["value"][i],
                [(h["key"], h["value"]) for h in columns["headers"][i]],
            )
