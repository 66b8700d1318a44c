"""Object keys and object contents of an ObsDumpTask, as pure functions.

Key: `{directory}/{time levels}/{topic}+{partition}+{startOffset:019d}.{bin|jsonl}`, the time levels taken
from the first record's timestamp (UTC), so a batch redone after a crash overwrites the same object.
Offsets are zero-padded to 19 digits (the width of the largest int64) so keys sort by offset.

Contents: each record followed by the separator. Without storeKeys a record is its value bytes (a null
value writes nothing before the separator). With storeKeys a record is one JSON object, ASCII-only
(`ensure_ascii`), so a control-character separator can never occur inside it:
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
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from ferry.obsdump.model import ObsDumpTarget, TimeDirectoryFormat

OFFSET_WIDTH = 19
_TIME_LEVELS = {
    TimeDirectoryFormat.YEAR: "%Y",
    TimeDirectoryFormat.MONTH: "%Y/%m",
    TimeDirectoryFormat.DAY: "%Y/%m/%d",
    TimeDirectoryFormat.HOUR: "%Y/%m/%d/%H",
}


@dataclass(frozen=True)
class Record:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


def extension(store_keys: bool) -> str:
    return "jsonl" if store_keys else "bin"


def dump_batch_key(target: ObsDumpTarget, topic: str, partition: int, start_offset: int, first_ts_ms: int) -> str:
    """The object key of the batch starting at `start_offset`; the same inputs always give the same key."""
    when = datetime.fromtimestamp(max(first_ts_ms, 0) / 1000, tz=UTC)
    levels = when.strftime(_TIME_LEVELS[target.time_directory_format])
    name = f"{topic}+{partition}+{start_offset:0{OFFSET_WIDTH}d}.{extension(target.store_keys)}"
    return "/".join(part for part in (target.directory, levels, name) if part)


def object_key_pattern(topic: str, partition: int) -> str:
    """A regex matching every object key this topic-partition can produce (for stale-upload clean-up)."""
    return rf"(^|/){re.escape(topic)}\+{partition}\+[0-9]{{{OFFSET_WIDTH}}}\.(bin|jsonl)$"


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
        doc = json.loads(chunk)
        headers = [(h["key"], _field(h, "value")) for h in doc.get("headers", [])]
        yield Record(doc["offset"], doc["timestamp"], _field(doc, "key"), _field(doc, "value"), headers)
