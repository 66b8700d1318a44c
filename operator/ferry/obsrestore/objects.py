"""The objects of a dump, as a restore sees them: which there are (from their keys), in which order, and the
records each holds (of every format and compression an ObsDumpTask writes).

A key is `{directory}/{time levels}/{topic}+{partition}+{startOffset:019d}.{format}[.gz|.zst]` (docs/obsdump.md,
Objects). Everything a restore needs to plan comes from the key: the topic and partition, the offset of the
object's first record (its order among the partition's objects), the format and compression, and the time
directory its first record's timestamp falls in.

The records come from the dump format's own reader (ferry.obsdump.reader.read_object), which knows what each
format stores:

- `bin` (values only, `storeKeys: false`): each record is its value bytes followed by the separator. Nothing
  else is stored: no key, no headers, no timestamp, no offset; a null value reads back as an empty one.
- `jsonl` (`storeKeys: true`): one JSON object per record with offset, timestamp, key, value and headers.
- `parquet`: one row per record with every field (read a row group at a time; needs pyarrow).

`read_records(obj, chunks, separator)` is the one interface the restore uses: an object's bytes, as an iterable
of chunks straight from the store, to records; its errors as the restore's reasons.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import zstandard

from ferry.errors import TaskError
from ferry.obsdump.reader import read_object
from ferry.obsdump.records import DumpedRecord

OFFSET_WIDTH = 19
KEY_NAME = re.compile(
    r"(?P<topic>[a-zA-Z0-9._-]{1,249})\+(?P<partition>[0-9]{1,9})\+(?P<start>[0-9]{19})"
    r"\.(?P<format>bin|jsonl|parquet)(?P<compression>\.gz|\.zst)?"
)
VALUES_ONLY = "bin"
_HIVE_NAMES = ("year", "month", "day", "hour")


@dataclass(frozen=True)
class DumpObject:
    """One object of the dump, as its key describes it."""

    key: str
    topic: str
    partition: int
    start_offset: int
    format: str  # bin, jsonl or parquet
    compression: str  # "", ".gz" or ".zst"
    size: int = 0
    # The time directory's span, in epoch milliseconds: the first record's timestamp is in [start, end).
    # None when the key's time levels cannot be read as such.
    directory_start_ms: int | None = None
    directory_end_ms: int | None = None
    order: tuple[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", (self.start_offset, self.key))

    @property
    def values_only(self) -> bool:
        return self.format == VALUES_ONLY

    @property
    def partition_key(self) -> str:
        """`topic+partition`, as in the object names and the resume point."""
        return f"{self.topic}+{self.partition}"


def parse_key(key: str, directory: str, time_zone: str, size: int = 0) -> DumpObject | None:
    """The object a key names, if it is one of a dump under `directory` (None for any other key)."""
    prefix = f"{directory}/" if directory else ""
    if not key.startswith(prefix):
        return None
    *levels, name = key[len(prefix) :].split("/")
    match = KEY_NAME.fullmatch(name)
    if match is None or not 1 <= len(levels) <= 4:
        return None
    span = directory_span(levels, time_zone)
    return DumpObject(
        key=key,
        topic=match["topic"],
        partition=int(match["partition"]),
        start_offset=int(match["start"]),
        format=match["format"],
        compression=match["compression"] or "",
        size=size,
        directory_start_ms=span[0] if span else None,
        directory_end_ms=span[1] if span else None,
    )


def directory_span(levels: list[str], time_zone: str) -> tuple[int, int] | None:
    """The time span, in epoch ms, of time directories such as `2026/11/26/13` or `year=2026/month=11`, read in
    the dump's time zone: from the first instant of the period to the first of the next. In a time zone with
    daylight saving time, the hour repeated in autumn spans both occurrences (the dump writes both into one
    directory). None when the levels are not a time directory."""
    numbers: list[int] = []
    for depth, level in enumerate(levels):
        name, sep, digits = level.rpartition("=")
        if sep and name != _HIVE_NAMES[depth]:
            return None
        if not digits.isdigit():
            return None
        numbers.append(int(digits))
    year, month, day, hour = numbers + [1, 1, 0][len(numbers) - 1 :]  # the levels not there: their first
    zone = ZoneInfo(time_zone)
    try:
        start = datetime(year, month, day, hour, tzinfo=zone)
        if len(numbers) == 1:
            end = datetime(year + 1, 1, 1, tzinfo=zone)
        elif len(numbers) == 2:
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
        else:
            naive = datetime(year, month, day, hour) + (timedelta(days=1) if len(numbers) == 3 else timedelta(hours=1))
            end = naive.replace(tzinfo=zone, fold=1)
    except (ValueError, OverflowError):
        return None
    return _epoch_ms(start), _epoch_ms(end)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


def plan(
    objects: Iterable[DumpObject],
    topics: Sequence[str],
    partitions: Sequence[int] | None,
    from_ms: int | None,
    to_ms: int | None,
) -> list[DumpObject]:
    """The objects a selection restores, in the order they are restored: by topic, partition and start offset.

    With from/to, an object is skipped when its records cannot be in [from, to), judged by time directories (a
    directory holds the objects whose *first* record's timestamp falls in its period): when its own first record
    is at or after `to`, or when the next object of its partition starts before `from` (its records come before
    that one's). This assumes timestamps grow with offsets within a partition, as they do with LogAppendTime or
    producers that stamp records when they send them; within the objects read, every record is judged by its own
    timestamp (values-only objects, which have none, are restored whole).
    """
    wanted_topics, wanted_partitions = set(topics), None if partitions is None else set(partitions)
    by_partition: dict[tuple[str, int], list[DumpObject]] = {}
    for obj in objects:
        if obj.topic in wanted_topics and (wanted_partitions is None or obj.partition in wanted_partitions):
            by_partition.setdefault((obj.topic, obj.partition), []).append(obj)
    chosen: list[DumpObject] = []
    for key in sorted(by_partition):
        ordered = sorted(by_partition[key], key=lambda o: o.order)
        for index, obj in enumerate(ordered):
            following = ordered[index + 1] if index + 1 < len(ordered) else None
            if to_ms is not None and obj.directory_start_ms is not None and obj.directory_start_ms >= to_ms:
                continue
            if (
                from_ms is not None
                and following is not None
                and following.directory_end_ms is not None
                and following.directory_end_ms <= from_ms
            ):
                continue
            chosen.append(obj)
    return chosen


# -- reading -------------------------------------------------------------------------------------


def read_records(obj: DumpObject, chunks: Iterable[bytes], separator: bytes) -> Generator[DumpedRecord, None, None]:
    """The records of one object, in the order they were dumped (its offsets' order), by the dump format's own
    reader (ferry.obsdump.reader: raw and jsonl as a stream, Parquet a row group at a time). Raises TaskError
    ObjectUnreadable (naming the object) when its bytes are not what its name says, ParquetUnavailable for a
    Parquet object where pyarrow is not installed."""
    try:
        for record in read_object(obj.key, chunks, separator):
            if record.timestamp_ms is not None and record.timestamp_ms < 0:  # no timestamp: the producer's own
                record = replace(record, timestamp_ms=None)
            yield record
    except ImportError as err:
        raise TaskError(
            "ParquetUnavailable",
            f"{obj.key} is a Parquet object and this worker cannot import pyarrow ({err}): run the Ferry image, "
            "which has it, or install ferry[parquet] where the worker runs",
        ) from None
    except (ValueError, KeyError, TypeError, zlib.error, zstandard.ZstdError) as err:
        raise TaskError(
            "ObjectUnreadable",
            f"{obj.key} cannot be read as a {obj.format}{obj.compression} dump object ({type(err).__name__}: "
            f"{str(err)[:200]}): check source.recordSeparator (the dump's target.recordSeparator), or replace or "
            "remove the object",
        ) from None
