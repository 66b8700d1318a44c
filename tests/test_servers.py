"""The local test servers behave like the real Kafka and S3 services the operator talks to."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from tests.support import servers
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore, ServerStartError, free_port

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
TopicFactory = Callable[..., str]
BucketFactory = Callable[..., str]
Headers = list[tuple[str, str | bytes | None]]


def _consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    # assign() rather than subscribe(): no group join, so no session-timeout wait.
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(msg)
    finally:
        consumer.close()
    return got


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, Headers]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(15) == 0


# ---------------------------------------------------------------------------------------------
# Apache Kafka (tests/support/kafka.py; its own tests are in test_kafka_server.py)


def test_kafka_roundtrip_keeps_keys_values_and_headers(kafka: KafkaCluster, topic_factory: TopicFactory) -> None:
    topic = topic_factory(3)
    headers: list[Headers] = [[("trace", f"t{i}".encode()), ("n", b"1")] for i in range(30)]
    records = [(f"k{i}".encode(), f"v{i}".encode(), headers[i]) for i in range(30)]
    _produce(kafka.bootstrap, topic, records)

    got = _consume_all(kafka.bootstrap, topic, 3, len(records))

    assert sorted((m.key(), m.value(), m.headers()) for m in got) == sorted(records)
    assert {m.partition() for m in got} == {0, 1, 2}  # keys spread over the partitions


def test_two_brokers_are_independent(kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory) -> None:
    topic = topic_factory(1, broker=kafka)

    assert kafka.bootstrap != kafka2.bootstrap
    assert topic in kafka.admin().list_topics(timeout=10).topics
    assert topic not in kafka2.admin().list_topics(timeout=10).topics
    assert kafka.admin().list_topics(timeout=10).cluster_id == kafka.cluster_id
    assert kafka2.admin().list_topics(timeout=10).cluster_id == kafka2.cluster_id
    assert kafka.cluster_id != kafka2.cluster_id

    other = topic_factory(1, broker=kafka2)
    _produce(kafka2.bootstrap, other, [(b"k", b"only-on-2", [])])
    assert [m.value() for m in _consume_all(kafka2.bootstrap, other, 1, 1)] == [b"only-on-2"]
    assert other not in kafka.admin().list_topics(timeout=10).topics


# ---------------------------------------------------------------------------------------------
# SeaweedFS


def test_object_put_get(object_store: ObjectStore, bucket_factory: BucketFactory) -> None:
    s3 = object_store.client()
    bucket = bucket_factory()

    s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello ferry", ContentType="text/plain")

    obj = s3.get_object(Bucket=bucket, Key="dir/hello.txt")
    assert obj["Body"].read() == b"hello ferry"
    assert obj["ContentType"] == "text/plain"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/hello.txt"]


def test_multipart_upload_of_12_mib_in_3_parts(object_store: ObjectStore, bucket_factory: BucketFactory) -> None:
    s3 = object_store.client()
    bucket = bucket_factory()
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(2 * MiB)]  # 5 MiB minimum but last
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")

    parts = [
        {"PartNumber": n, "ETag": s3.upload_part(
            Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], PartNumber=n, Body=data
        )["ETag"]}
        for n, data in enumerate(parts_data, start=1)
    ]  # fmt: skip
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )

    body = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert len(body) == 12 * MiB
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts_data)).digest()
    assert done["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: md5-of-part-md5s "-" part count


def _error_code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    code: str = info.value.response["Error"]["Code"]
    return code


def test_bad_credentials_are_refused(object_store: ObjectStore, bucket_factory: BucketFactory) -> None:
    bucket = bucket_factory()
    object_store.client().put_object(Bucket=bucket, Key="secret", Body=b"x")
    wrong_key = ObjectStore(**{**_fields(object_store), "access_key": "NOTAKEY0000000000000"})
    wrong_secret = ObjectStore(**{**_fields(object_store), "secret_key": "not-the-secret"})

    bad, bad_secret = wrong_key.client(), wrong_secret.client()

    assert _error_code(bad.list_buckets) == "InvalidAccessKeyId"
    assert _error_code(bad.get_object, Bucket=bucket, Key="secret") == "InvalidAccessKeyId"
    assert _error_code(bad.put_object, Bucket=bucket, Key="new", Body=b"x") == "InvalidAccessKeyId"
    assert _error_code(bad_secret.get_object, Bucket=bucket, Key="secret") == "SignatureDoesNotMatch"


def _fields(store: ObjectStore) -> dict[str, Any]:
    keys = ("pid", "log_path", "endpoint", "access_key", "secret_key", "region", "ports")
    return {k: getattr(store, k) for k in keys}


# ---------------------------------------------------------------------------------------------
# Process handling


def test_free_port_leaves_room_for_grpc_ports() -> None:
    base = free_port(5, grpc_offset=servers.WEED_GRPC_OFFSET)
    again = free_port(5, grpc_offset=servers.WEED_GRPC_OFFSET)

    used = {base + i + off for i in range(5) for off in (0, 10000)}
    assert all(servers._bindable(p) for p in used)
    assert used.isdisjoint({again + i + off for i in range(5) for off in (0, 10000)})
    assert base + 4 + 10000 <= 65535


def test_startup_failure_reports_exit_code_and_log_tail(tmp_path: Path) -> None:
    argv = ["sh", "-c", "echo 'bind: address already in use' >&2; exit 3"]

    with pytest.raises(ServerStartError, match=r"(?s)exited with code 3.*address already in use") as info:
        servers._start(argv, tmp_path, tmp_path / "x.log", dict(os.environ), lambda: "not yet")
    assert info.value.port_clash


def test_startup_timeout_kills_the_server(tmp_path: Path) -> None:
    argv = ["sh", "-c", "echo $$; exec sleep 60"]
    live_before = set(servers._LIVE)

    with pytest.raises(ServerStartError, match=r"not ready after 1s \(last check: nope\)"):
        servers._start(argv, tmp_path, tmp_path / "x.log", dict(os.environ), lambda: "nope", timeout=1)

    pid = int((tmp_path / "x.log").read_text())
    assert not servers._alive(pid)
    assert set(servers._LIVE) == live_before


def test_stop_ends_the_process_and_is_idempotent(tmp_path: Path) -> None:
    store = servers.start_seaweedfs(tmp_path, "ferry-stop", "ferry-stop-secret")
    assert store.running()

    store.stop()
    store.stop()

    assert not store.running()
    assert not servers._alive(store.pid)
    assert store.pid not in servers._LIVE


def test_cli_up_leaves_servers_running_and_down_stops_them(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tests.support.servers", *args, "--dir", str(tmp_path)]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90, check=True)

    printed = json.loads(cli("up").stdout)
    try:
        state = json.loads((tmp_path / "servers.json").read_text())
        assert printed == state
        assert state["access_key"] == "ferry-demo"
        assert servers._alive(state["kafka_pid"]) and servers._alive(state["s3_pid"])
        store = ObjectStore(pid=state["s3_pid"], log_path=Path(state["s3_log"]), endpoint=state["endpoint"],
                            access_key="ferry-demo", secret_key="ferry-demo-secret")  # fmt: skip
        store.client().list_buckets()
    finally:
        cli("down")

    assert not servers._alive(state["kafka_pid"])
    assert not servers._alive(state["s3_pid"])
    assert not (tmp_path / "servers.json").exists()
