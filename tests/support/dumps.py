"""Helpers for ObsDumpTask tests: produce records, read objects back with an independent client."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from ferry.credentials import Sensitive
from ferry.metrics import WorkerMetrics
from ferry.obsdump.compression import compression_of, decompress
from ferry.obsdump.model import ObsDumpTaskSpec
from ferry.obsdump.pipeline import DumpPipeline
from ferry.obsdump.records import Record, decode_records
from ferry.obsdump.storage import ACCESS_KEY_ROLE, SECRET_KEY_ROLE, ObjectStore, s3_client
from ferry.reporting import Progress
from ferry.settings import WorkerSettings

from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS

KEY_RE = re.compile(r"(?P<topic>[^/]+)\+(?P<partition>[0-9]+)\+(?P<start>[0-9]{19})\.(bin|jsonl|parquet)(\.gz|\.zst)?$")


def produce(bootstrap: str, topic: str, count: int, partitions: int, start: int = 0) -> None:
    """`count` records `value-<i>` with key `key-<i>` and a header, round-robin over partitions."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        producer.produce(
            topic,
            key=f"key-{i}".encode(),
            value=f"value-{i}".encode(),
            partition=i % partitions,
            headers=[("seq", str(i).encode())],
        )
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def spec_for(broker: KafkaCluster, store: SeaweedFS, bucket: str, **overrides: Any) -> dict[str, Any]:
    target = {
        "endpoint": store.endpoint,
        "bucket": bucket,
        "directory": "dumps/raw",
        "credentialsSecretRef": {"name": "obs-credentials"},
        **overrides.pop("target", {}),
    }
    return {
        "source": {"bootstrapServers": broker.bootstrap},
        "startFrom": "earliest",
        "dumpPeriodSeconds": 1,
        "target": target,
        **overrides,
    }


def write_manifest(path: Path, name: str, spec: dict[str, Any], store: SeaweedFS) -> Path:
    """The task and its Secret, as a user would write them for `ferry run -f`."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec["target"]["credentialsSecretRef"]["name"]},
        "stringData": {"accessKey": store.access_key, "secretKey": store.secret_key},
    }
    task = {"apiVersion": "ferry.dev/v1alpha1", "kind": "ObsDumpTask", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump_all([task, secret]))
    return path


class Recorder:
    """A reporter that keeps every report (the pipeline's interface is just `report(progress)`)."""

    def __init__(self) -> None:
        self.reports: list[Progress] = []

    def report(self, progress: Progress) -> None:
        self.reports.append(progress)

    @property
    def last(self) -> Progress:
        return self.reports[-1]


@dataclass
class RunningPipeline:
    pipeline: DumpPipeline
    recorder: Recorder
    stop: threading.Event
    thread: threading.Thread

    def finish(self, timeout: float = 60) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipeline did not stop"


def start_pipeline(
    spec: dict[str, Any], store: SeaweedFS, group: str, access_key: str | None = None, **settings: Any
) -> RunningPipeline:
    parsed = ObsDumpTaskSpec.model_validate(spec)
    secrets = {
        ACCESS_KEY_ROLE: Sensitive(access_key or store.access_key),
        SECRET_KEY_ROLE: Sensitive(store.secret_key),
    }
    worker_settings = WorkerSettings(
        **{"report_interval": 0.5, "topic_refresh_interval": 1.0, "session_timeout_ms": 6000, **settings}
    )
    object_store = ObjectStore(s3_client(parsed.target, secrets), parsed.target, worker_settings.part_bytes)
    recorder = Recorder()
    pipeline = DumpPipeline(
        parsed,
        {"bootstrap.servers": spec["source"]["bootstrapServers"]},
        group,
        object_store,
        recorder,
        WorkerMetrics("ObsDumpTask", group),
        worker_settings,
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    return RunningPipeline(pipeline, recorder, stop, thread)


def wait_for(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def list_objects(client: Any, bucket: str, prefix: str = "") -> dict[str, bytes]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


def dumped_records(client: Any, bucket: str, separator: bytes = b"\n") -> dict[tuple[str, int], list[Record]]:
    """Every record in the bucket (storeKeys objects, decompressed as their names say), per topic-partition,
    in key order, checking that each object starts at the offset its key names."""
    result: dict[tuple[str, int], list[Record]] = {}
    for key, data in sorted(list_objects(client, bucket).items(), key=lambda kv: KEY_RE.search(kv[0]).group("start")):  # type: ignore[union-attr]
        match = KEY_RE.search(key)
        assert match, f"unexpected object key {key}"
        data = decompress(data, compression_of(key))
        records = [r for r in decode_records(data, True, separator) if isinstance(r, Record)]
        assert records and records[0].offset == int(match["start"]), f"{key} does not start at its offset"
        result.setdefault((match["topic"], int(match["partition"])), []).extend(records)
    return result
