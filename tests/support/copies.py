"""Helpers for the Kafka-to-Kafka kinds' tests: produce recognisable records, read a topic back with an
independent consumer."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class KillReport:
    """What a target topic holds after a worker was killed at random while records flowed."""

    copies: list[Any]
    missing: list[int]
    duplicates: int
    seed: int

    def summary(self, kind: str, kills: int, total: int) -> str:
        return (
            f"{kind} after {kills} SIGKILLs (seed {self.seed}): {len(self.copies)} copies of {total} records, "
            f"{self.duplicates} duplicates (at-least-once), {len(self.missing)} missing"
        )


def copy_while_killing(
    manifest: Path,
    source: str,
    topic: str,
    target: str,
    target_topic: str,
    *,
    total: int = 20_000,
    partitions: int = 3,
    kills: int = 5,
    extra_args: tuple[str, ...] = (),
) -> KillReport:
    """Produce `v0`..`v<total-1>` slowly into `topic`, run `ferry run -f manifest` and SIGKILL it `kills` times at
    random moments (FERRY_TEST_SEED repeats a run), then let a last worker finish and read the target back."""
    seed = int(os.environ.get("FERRY_TEST_SEED", time.time()))
    rng = random.Random(seed)
    log_path = manifest.with_suffix(".log")

    def produce_slowly() -> None:
        for start in range(0, total, 1000):
            producer = Producer({"bootstrap.servers": source})
            for i in range(start, start + 1000):
                producer.produce(topic, value=f"v{i}", partition=i % partitions)
            producer.flush(30)
            time.sleep(0.3)

    def worker() -> subprocess.Popen[bytes]:
        env = {**os.environ, "FERRY_REPORT_INTERVAL": "0.5", "FERRY_SESSION_TIMEOUT_MS": "6000"}
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ferry", "run", "-f", str(manifest), *extra_args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    producer = threading.Thread(target=produce_slowly)
    producer.start()
    for _ in range(kills):
        process = worker()
        time.sleep(rng.uniform(1.0, 4.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    producer.join()
    process = worker()
    try:
        copies = read_all(target, target_topic, total, timeout=120, linger=5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    values = Counter(m.value() for m in copies)
    missing = [i for i in range(total) if f"v{i}".encode() not in values]
    return KillReport(copies, missing, sum(n - 1 for n in values.values()), seed)
