"""Helpers for the Kafka-to-Kafka kinds' tests: produce recognisable records, read a topic back with an
independent consumer."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30, linger: float = 0) -> list[Any]:
    """Every record of the topic (by an independent consumer), once `expected` arrived (and `linger` more
    seconds passed, to catch any beyond) or the time is up."""
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
            records += [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
        end = time.monotonic() + linger
        while time.monotonic() < end:
            records += [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
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
