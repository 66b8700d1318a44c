"""Object keys and object contents of ObsDumpTask (SPEC §5)."""

from __future__ import annotations

import json

import pytest
from ferry.obsdump.model import ObsDumpTarget
from ferry.obsdump.records import Record, decode_records, dump_batch_key, encode_record, object_key_pattern

TS = 1_763_700_000_000  # 2025-11-21T04:40:00Z


def target(**overrides: object) -> ObsDumpTarget:
    fields = {"endpoint": "http://s3", "bucket": "dumps", "credentialsSecretRef": {"name": "c"}, **overrides}
    return ObsDumpTarget.model_validate(fields)


def test_key_uses_directory_time_levels_of_first_record_and_padded_offset() -> None:
    key = dump_batch_key(target(directory="kafka/raw"), "orders", 2, 1234, TS)
    assert key == "kafka/raw/2025/11/21/04/orders+2+0000000000000001234.bin"


@pytest.mark.parametrize(
    ("fmt", "levels"),
    [("yyyy", "2025"), ("yyyy/MM", "2025/11"), ("yyyy/MM/dd", "2025/11/21"), ("yyyy/MM/dd/HH", "2025/11/21/04")],
)
def test_time_directory_format_levels(fmt: str, levels: str) -> None:
    key = dump_batch_key(target(timeDirectoryFormat=fmt), "t", 0, 0, TS)
    assert key == f"{levels}/t+0+{0:019d}.bin"


def test_store_keys_objects_are_jsonl() -> None:
    assert dump_batch_key(target(storeKeys=True), "t", 0, 7, TS).endswith("t+0+0000000000000000007.jsonl")


def test_same_first_record_gives_same_key_whatever_follows() -> None:
    first = dump_batch_key(target(), "t", 1, 500, TS)
    again = dump_batch_key(target(), "t", 1, 500, TS)
    assert first == again


def test_keys_sort_by_offset() -> None:
    keys = [dump_batch_key(target(), "t", 0, off, TS) for off in (9, 10, 100, 99999)]
    assert keys == sorted(keys)


def test_key_pattern_matches_only_its_partition() -> None:
    import re

    key = dump_batch_key(target(directory="d"), "a.b", 1, 5, TS)
    assert re.search(object_key_pattern("a.b", 1), key)
    assert not re.search(object_key_pattern("a.b", 11), key)
    assert not re.search(object_key_pattern("axb", 1), key)


def test_values_only_format_is_value_then_separator() -> None:
    records = [Record(0, TS, b"k", b"v1"), Record(1, TS, None, None), Record(2, TS, b"k", b"v3")]
    data = b"".join(encode_record(r, False, b"\n") for r in records)
    assert data == b"v1\n\nv3\n"
    assert list(decode_records(data, False, b"\n")) == [b"v1", b"", b"v3"]


def test_store_keys_roundtrip_text_binary_null_and_headers() -> None:
    records = [
        Record(5, TS, b"user-1", b'{"a": "line\nbreak"}', [("trace", b"abc"), ("bin", b"\xff\x00"), ("n", None)]),
        Record(6, TS, b"\xff\xfe", b"\x00\x01", []),
        Record(7, TS, None, None, []),
    ]
    data = b"".join(encode_record(r, True, b"\n") for r in records)
    assert data.count(b"\n") == 3  # newlines inside values are escaped by JSON
    decoded = list(decode_records(data, True, b"\n"))
    assert decoded == [Record(r.offset, r.timestamp_ms, r.key, r.value, list(r.headers)) for r in records]
    first = json.loads(data.split(b"\n")[0])
    assert first["key"] == "user-1" and first["offset"] == 5 and first["timestamp"] == TS
    assert "keyBase64" in json.loads(data.split(b"\n")[1])


def test_store_keys_output_is_ascii_so_control_separators_cannot_collide() -> None:
    data = encode_record(Record(0, TS, "ключ".encode(), "значение\x1e".encode(), []), True, b"\x1e")
    assert data.count(b"\x1e") == 1 and data.endswith(b"\x1e")
    assert all(b < 0x80 for b in data)


def test_truncated_object_is_refused() -> None:
    with pytest.raises(ValueError, match="separator"):
        list(decode_records(b"v1\nv2", False, b"\n"))


def test_store_keys_roundtrip_of_random_bytes_and_text() -> None:
    import random

    rng = random.Random(7)
    alphabet = 'ab"\\\n\t\x00\x1f/é€😀'

    def data() -> bytes | None:
        choice = rng.random()
        if choice < 0.1:
            return None
        if choice < 0.5:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(20))).encode()

    records = [
        Record(i, rng.randrange(2**41), data(), data(), [(f'h{j}\n"', data()) for j in range(rng.randrange(3))])
        for i in range(500)
    ]
    blob = b"".join(encode_record(r, True, b"\n") for r in records)
    assert list(decode_records(blob, True, b"\n")) == [
        Record(r.offset, r.timestamp_ms, r.key, r.value, list(r.headers)) for r in records
    ]
