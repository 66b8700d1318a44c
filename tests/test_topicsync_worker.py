"""The TopicSync worker between two real Tansu brokers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, Producer
from ferry.metrics import WorkerMetrics
from ferry.settings import WorkerSettings
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.pipeline import ORIGIN_HEADER, SyncPipeline

from tests.conftest import TopicFactory
from tests.support.dumps import Recorder, wait_for
from tests.support.servers import KafkaBroker


@contextmanager
def syncing(spec: dict[str, Any]) -> Iterator[Recorder]:
    parsed = TopicSyncSpec.model_validate({"startFrom": "earliest", **spec})
    recorder = Recorder()
    group = f"sync-{uuid.uuid4().hex[:8]}"
    pipeline = SyncPipeline(
        parsed,
        {"bootstrap.servers": spec["source"]["bootstrapServers"]},
        {"bootstrap.servers": spec["target"]["bootstrapServers"]},
        group,
        recorder,
        WorkerMetrics("TopicSync", group),
        WorkerSettings(report_interval=0.5, topic_refresh_interval=1.0, session_timeout_ms=6000),
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    """Every record of the topic (by an independent consumer), once `expected` arrived or the time is up."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(records) < expected:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is None:
                    records.append(m)
    finally:
        consumer.close()
    return records


def produce_on(bootstrap: str, topic: str, count: int, partitions: int, tag: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(
            topic,
            key=f"{tag}-k{i}",
            value=f"{tag}-v{i}",
            partition=i % partitions,
            headers=[("app", f"h{i}".encode())],
            timestamp=1_700_000_000_000 + i,
        )
    assert producer.flush(30) == 0


def test_records_keep_key_value_headers_timestamp_and_partition_in_a_created_target_topic(
    kafka: KafkaBroker, kafka2: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    produce_on(kafka.bootstrap, topic, 300, 3, "a")
    spec = {
        "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "kafka-a"},
        "target": {"bootstrapServers": kafka2.bootstrap, "instanceId": "kafka-b"},
        "topics": [topic],
    }
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 300, timeout=60, what="300 copied")
        topics = recorder.last.extra["topics"]
    assert topics == [
        {"source": topic, "target": topic, "partitions": 3, "targetPartitions": 3, "replicationFactor": 1}
    ]
    copied = read_all(kafka2.bootstrap, topic, 300)
    assert len(copied) == 300
    for m in copied:
        i = int(m.value().decode().split("v")[1])
        assert m.key() == f"a-k{i}".encode() and m.partition() == i % 3
        assert m.timestamp()[1] == 1_700_000_000_000 + i
        assert m.headers() == [("app", f"h{i}".encode()), (ORIGIN_HEADER, b"kafka-a")]


def test_prefix_naming_and_topics_created_later_are_picked_up(
    kafka: KafkaBroker, kafka2: KafkaBroker, topic_factory: TopicFactory
) -> None:
    prefix = f"px{uuid.uuid4().hex[:6]}"
    first = topic_factory(partitions=1, prefix=prefix)
    produce_on(kafka.bootstrap, first, 5, 1, "f")
    spec = {
        "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "eu"},
        "target": {"bootstrapServers": kafka2.bootstrap},
        "topicPattern": f"{prefix}-.*",
        "excludePattern": f"{prefix}-skip.*",
        "targetTopicName": "{source}.{topic}",
    }
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 5, timeout=60, what="first topic")
        later = topic_factory(partitions=2, prefix=prefix)
        skipped = topic_factory(partitions=1, prefix=f"{prefix}-skip")
        produce_on(kafka.bootstrap, later, 6, 2, "l")
        produce_on(kafka.bootstrap, skipped, 3, 1, "s")
        wait_for(lambda: recorder.last.totals.records == 11, timeout=60, what="later topic copied")
        names = {t["target"] for t in recorder.last.extra["topics"]}
    assert names == {f"eu.{first}", f"eu.{later}"}
    assert len(read_all(kafka2.bootstrap, f"eu.{later}", 6)) == 6


def test_bidirectional_sync_converges_every_record_once_on_each_side(
    kafka: KafkaBroker, kafka2: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    topic_factory_b = f"{topic}"  # the same name on the other instance, created by the sync
    a = {"bootstrapServers": kafka.bootstrap, "instanceId": "kafka-a"}
    b = {"bootstrapServers": kafka2.bootstrap, "instanceId": "kafka-b"}
    with syncing({"source": a, "target": b, "topics": [topic]}) as forward:
        wait_for(lambda: forward.reports and forward.last.partitions, timeout=60, what="A->B assigned")
        with syncing({"source": b, "target": a, "topics": [topic_factory_b]}) as backward:
            wait_for(lambda: backward.reports and backward.last.partitions, timeout=60, what="B->A assigned")
            produce_on(kafka.bootstrap, topic, 50, 2, "a")
            produce_on(kafka2.bootstrap, topic, 40, 2, "b")
            wait_for(
                lambda: forward.last.totals.records == 50 and backward.last.totals.records == 40,
                timeout=60,
                what="both directions copied",
            )
            time.sleep(3)  # nothing keeps copying
            assert (forward.last.totals.records, backward.last.totals.records) == (50, 40)
            assert forward.last.extra["loopRecordsSkipped"] == 40
            assert backward.last.extra["loopRecordsSkipped"] == 50
    for bootstrap in (kafka.bootstrap, kafka2.bootstrap):
        values = sorted(m.value() for m in read_all(bootstrap, topic, 91, timeout=10))
        expected = sorted([f"a-v{i}".encode() for i in range(50)] + [f"b-v{i}".encode() for i in range(40)])
        assert values == expected
