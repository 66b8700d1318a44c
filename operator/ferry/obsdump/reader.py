"""Reading dump objects back, whatever their format and compression: what a restore replays.

The object's key says what it holds (`parse_object_key`): its topic, partition, first offset, format and
compression. Raw and jsonl objects are read as a stream, a piece at a time, so memory stays one piece and one
record however large the object; a Parquet object a row group at a time, from a seekable file in place, or from a
stream read whole first (its footer is at its end).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, TypeGuard

from ferry.obsdump.compression import decompressing
from ferry.obsdump.model import ObjectFormat
from ferry.obsdump.parquet import read_parquet
from ferry.obsdump.records import DumpedRecord, decode_json_record, parse_object_key

Body = bytes | IO[bytes] | Iterable[bytes]
CHUNK_BYTES = 64 * 1024  # read at a time from a stream: a gzip piece inflates to at most about 1000 times that


def read_object(key: str, body: Body, separator: bytes = b"\n") -> Iterator[DumpedRecord]:
    """The records of the object named `key`, in offset order. `body` is its bytes, a binary stream of them (an
    S3 response's Body, an open file) or its bytes in pieces (`iter_chunks()`); `separator` is the task's
    recordSeparator as UTF-8 (raw and jsonl).

    - parquet: every field, topic and partition from the rows.
    - jsonl: every field; topic and partition from the key.
    - raw: the values only, topic and partition from the key; offset, timestamp and key are None and headers
      empty, and a null value reads back as b"". A value containing the separator reads back as more than one
      record (split from the left).
    Raises ValueError for an object that is truncated or not of the format its name says (pyarrow's
    ArrowInvalid, for a Parquet one, is a ValueError)."""
    name = parse_object_key(key)
    if name.format is ObjectFormat.PARQUET:
        whole = body if isinstance(body, bytes) or _is_stream(body) else b"".join(body)
        yield from read_parquet(whole)
        return
    pieces = decompressing(_pieces(body), name.compression)
    for chunk in _split(pieces, separator):
        if name.format is ObjectFormat.JSONL:
            try:
                record = decode_json_record(chunk)
            except (KeyError, TypeError) as err:  # JSON, but not a record's
                raise ValueError(f"not a record of a jsonl dump object: {type(err).__name__} {err}") from None
            yield DumpedRecord(
                name.topic, name.partition, record.offset, record.timestamp_ms, record.key, record.value, record.headers
            )
        else:
            yield DumpedRecord(name.topic, name.partition, None, None, None, chunk)


def _is_stream(body: Body) -> TypeGuard[IO[bytes]]:
    return hasattr(body, "read")  # asked first: a file is an Iterable too, of lines


def _pieces(body: Body) -> Iterator[bytes]:
    if isinstance(body, bytes):
        yield body
    elif _is_stream(body):
        while piece := body.read(CHUNK_BYTES):
            yield piece
    else:
        yield from body


def _split(pieces: Iterable[bytes], separator: bytes) -> Iterator[bytes]:
    """The records between separators, as `bytes.split` finds them from the left; the object must end with one."""
    pending = bytearray()
    for piece in pieces:
        # Only a separator that ends in the new piece can be new: no quadratic rescans of a long record.
        start = max(0, len(pending) - len(separator) + 1)
        pending += piece
        if pending.find(separator, start) < 0:
            continue
        *records, rest = pending.split(separator)
        yield from (bytes(record) for record in records)
        pending = rest
    if pending:
        raise ValueError("object does not end with the record separator: truncated or not a dump object")
