"""Object keys and object contents of an ObsDumpTask, as pure functions.

Key: `{directory}/{time levels}/{topic}+{partition}+{startOffset:019d}.{ext}`, ext `bin` (raw) or `jsonl`, then
`.gz` or `.zst` when compressed, or `parquet` whatever its codec; the time levels taken from the first record's
timestamp (in the target's time zone, as `2026/11/26/13` or Hive-style `year=2026/month=11/day=26/hour=13`),
so a batch redone after a crash overwrites the same object. Offsets are zero-padded to 19 digits (the width of
the largest int64) so keys sort by offset.

Contents of raw and jsonl objects (Parquet's: ferry.obsdump.parquet): each record followed by the separator.
In raw objects a record is its value bytes (a null value writes nothing before the separator), so a value
containing the separator reads back as more than one record (`contains_separator` finds them). In jsonl
objects a record is one JSON object, ASCII-only (`ensure_ascii`), so a control-character separator can never
occur inside it:
    {"offset": 42, "timestamp": 1700000000000, "key": "k", "value": "v", "headers": [...]}
`key`, `value` and header values are text when they are valid UTF-8, otherwise the field is named
`keyBase64` / `valueBase64` and holds base64; null stays null.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any
from zoneinfo import ZoneInfo

from ferry.obsdump.compression import SUFFIXES
from ferry.obsdump.model import Compression, ObjectFormat, ObsDumpTarget, TimeDirectoryFormat, TimeDirectoryLayout

OFFSET_WIDTH = 19
# Each level's Hive name and strftime code, and how many levels each format has.
_LEVELS = (("year", "%Y"), ("month", "%m"), ("day", "%d"), ("hour", "%H"))
_DEPTH = {
    TimeDirectoryFormat.YEAR: 1,
    TimeDirectoryFormat.MONTH: 2,
    TimeDirectoryFormat.DAY: 3,
    TimeDirectoryFormat.HOUR: 4,
}


@dataclass(frozen=True)
class Record:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


@dataclass(frozen=True)
class DumpedRecord:
    """A record as read back from an object of any format. Raw objects hold the values only: their records have
    no offset, timestamp, key or headers (None, None, None, ()), and a null value reads back as b""."""

    topic: str
    partition: int
    offset: int | None
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


_EXTENSIONS = {ObjectFormat.RAW: "bin", ObjectFormat.JSONL: "jsonl", ObjectFormat.PARQUET: "parquet"}
_FORMATS = {ext: fmt for fmt, ext in _EXTENSIONS.items()}
_NAME = re.compile(
    rf"(?:^|/)(?P<topic>[^/+]+)\+(?P<partition>[0-9]+)\+(?P<start>[0-9]{{{OFFSET_WIDTH}}})"
    r"\.(?P<ext>bin|jsonl|parquet)(?P<suffix>\.gz|\.zst)?$"
)


@dataclass(frozen=True)
class ObjectName:
    """What an object's key says: whose records it holds, from which offset, and how they are written."""

    topic: str
    partition: int
    start_offset: int
    format: ObjectFormat
    compression: Compression  # of the object as a whole: a Parquet object's codec is inside it


def extension(fmt: ObjectFormat, compression: Compression = Compression.NONE) -> str:
    """A Parquet object compresses its column chunks and keeps its name: `.parquet` whatever the codec."""
    if fmt is ObjectFormat.PARQUET:
        return _EXTENSIONS[fmt]
    return _EXTENSIONS[fmt] + SUFFIXES[compression]


def parse_object_key(key: str) -> ObjectName:
    """The inverse of `dump_batch_key` for the object's name (the time directories are not needed)."""
    match = _NAME.search(key)
    if match is None:
        raise ValueError(f"{key!r} is not the key of a dump object (topic+partition+startOffset.ext)")
    compression = next(c for c, suffix in SUFFIXES.items() if suffix == (match["suffix"] or ""))
    return ObjectName(match["topic"], int(match["partition"]), int(match["start"]), _FORMATS[match["ext"]], compression)


def time_levels(target: ObsDumpTarget, first_ts_ms: int) -> str:
    """The time directories of an object whose first record has this timestamp."""
    when = datetime.fromtimestamp(max(first_ts_ms, 0) / 1000, tz=ZoneInfo(target.time_zone))
    levels = _LEVELS[: _DEPTH[target.time_directory_format]]
    if target.time_directory_layout is TimeDirectoryLayout.HIVE:
        return "/".join(f"{name}={when.strftime(code)}" for name, code in levels)
    return "/".join(when.strftime(code) for _, code in levels)


def dump_batch_key(target: ObsDumpTarget, topic: str, partition: int, start_offset: int, first_ts_ms: int) -> str:
    """The object key of the batch starting at `start_offset`; the same inputs always give the same key."""
    ext = extension(target.object_format, target.compression)
    name = f"{topic}+{partition}+{start_offset:0{OFFSET_WIDTH}d}.{ext}"
    return "/".join(part for part in (target.directory, time_levels(target, first_ts_ms), name) if part)


def object_key_pattern(topic: str, partition: int) -> str:
    """A regex matching every object key this topic-partition can produce (for stale-upload clean-up)."""
    return rf"(^|/){re.escape(topic)}\+{partition}\+[0-9]{{{OFFSET_WIDTH}}}\.(bin|jsonl|parquet)(\.gz|\.zst)?$"


def contains_separator(value: bytes, separator: bytes) -> bool:
    """Whether a value written in the values-only format reads back as more than one record: the separator
    occurs in it, or begins in it and ends in the separator written after it (`a` + `aa`)."""
    return separator in value + separator[:-1]


def _json_bytes(name: str, data: bytes | None) -> str:
    """`"name":"text"`, `"nameBase64":"..."` or `"name":null`, as JSON text."""
    if data is None:
        return f'"{name}":null'
    try:
        return f'"{name}":{_quote(data.decode("utf-8"))}'
    except UnicodeDecodeError:
        return f'"{name}Base64":"{base64.b64encode(data).decode("ascii")}"'


def encode_record(record: Record, store_keys: bool, separator: bytes) -> bytes:
    if not store_keys:
        return (record.value or b"") + separator
    # Formatted directly: a dict plus json.dumps per record cost five times as much (bench/).
    fields = [
        f'"offset":{record.offset}',
        f'"timestamp":{record.timestamp_ms}',
        _json_bytes("key", record.key),
        _json_bytes("value", record.value),
    ]
    if record.headers:
        entries = ",".join(f'{{"key":{_quote(k)},{_json_bytes("value", v)}}}' for k, v in record.headers)
        fields.append(f'"headers":[{entries}]')
    return ("{" + ",".join(fields) + "}").encode("ascii") + separator


def _field(doc: dict[str, Any], name: str) -> bytes | None:
    if f"{name}Base64" in doc:
        return base64.b64decode(doc[f"{name}Base64"])
    value = doc.get(name)
    return None if value is None else str(value).encode("utf-8")


def decode_records(data: bytes, store_keys: bool, separator: bytes) -> Iterator[Record | bytes]:
    """Read an object back: `Record`s with storeKeys, value bytes without (the inverse of encode_record)."""
    if not data:
        return
    if not data.endswith(separator):
        raise ValueError("object does not end with the record separator: truncated or not a dump object")
    for chunk in data[: -len(separator)].split(separator):
        if not store_keys:
            yield chunk
            continue
        yield decode_json_record(chunk)


def decode_json_record(line: bytes) -> Record:
    """One record of a jsonl object, without its separator (the inverse of encode_record with store_keys)."""
    doc = json.loads(line)
    headers = [(h["key"], _field(h, "value")) for h in doc.get("headers", [])]
    return Record(doc["offset"], doc["timestamp"], _field(doc, "key"), _field(doc, "value"), headers)
