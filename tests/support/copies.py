"""Helpers for the Kafka-to-Kafka kinds' tests: produce recognisable records, read a topic back with an
independent consumer."""

from __future__ import annotations

import os
import random
import re
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


def read_all(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 30,
    linger: float = 0,
    isolation_level: str = "read_committed",
) -> list[Any]:
    """Every record of the topic (by an independent consumer), once `expected` arrived (and `linger` more
    seconds passed, to catch any beyond) or the time is up. read_committed (librdkafka's default) leaves out the
    records of aborted transactions; read_uncommitted shows them too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "isolation.level": isolation_level,
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


def worker_log(manifest: Path, replica: int = 0) -> Path:
    """Where copy_while_killing's worker (replica `replica`) writes its output: <manifest>.log for the first."""
    return manifest.with_suffix(".log" if replica == 0 else f".r{replica}.log")


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
    replicas: int = 1,
    pause: float = 0.3,
    kill_after: tuple[float, float] = (1.0, 4.0),
    env: dict[str, str] | None = None,
    when_copying: bool = False,
    copying_mark: bytes = rb" Running records=[1-9]",
) -> KillReport:
    """Produce `v0`..`v<total-1>` slowly into `topic` (1000 records every `pause` seconds), run `ferry run -f
    manifest` and SIGKILL it `kills` times at random moments (FERRY_TEST_SEED repeats a run), then let a last
    worker finish and read the target back (read_committed).

    With `replicas` > 1 that many workers run at once in the task's group, each with its own FERRY_WORKER_ID (r0,
    r1...) and log (`worker_log`); every `kill_after` seconds (a random time within) one of them, chosen at random,
    is killed and started again under its id, so partitions move between them. With one, each worker is killed
    `kill_after` seconds after it started. `env` is added to the workers' environment. `when_copying` counts
    `kill_after` from the moment the worker to kill has logged `copying_mark` (a regular expression; by default a
    report of records copied) since it (re)started, waiting at most 20 s for it, so that every kill lands while it
    copies, not while it starts or waits for its group."""
    seed = int(os.environ.get("FERRY_TEST_SEED", time.time()))
    rng = random.Random(seed)

    def produce_slowly() -> None:
        for start in range(0, total, 1000):
            producer = Producer({"bootstrap.servers": source})
            for i in range(start, start + 1000):
                producer.produce(topic, value=f"v{i}", partition=i % partitions)
            producer.flush(30)
            time.sleep(pause)

    def worker(replica: int) -> subprocess.Popen[bytes]:
        settings = {"FERRY_REPORT_INTERVAL": "0.5", "FERRY_SESSION_TIMEOUT_MS": "6000", **(env or {})}
        with worker_log(manifest, replica).open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ferry", "run", "-f", str(manifest), *extra_args],
                env={**os.environ, "FERRY_WORKER_ID": f"r{replica}", **settings},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def log_size(replica: int) -> int:
        path = worker_log(manifest, replica)
        return path.stat().st_size if path.exists() else 0

    def copying(replica: int, since: int) -> bool:
        with worker_log(manifest, replica).open("rb") as log:
            log.seek(since)
            return re.search(copying_mark, log.read()) is not None

    producer = threading.Thread(target=produce_slowly)
    producer.start()
    started = [log_size(replica) for replica in range(replicas)]
    processes = [worker(replica) for replica in range(replicas)]
    for _ in range(kills):
        replica = rng.randrange(replicas)
        deadline = time.monotonic() + 20
        while when_copying and not copying(replica, started[replica]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(*kill_after))
        kill(processes[replica])
        started[replica] = log_size(replica)
        processes[replica] = worker(replica)
    producer.join()
    try:
        copies = read_all(target, target_topic, total, timeout=120, linger=5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    values = Counter(m.value() for m in copies)
    missing = [i for i in range(total) if f"v{i}".encode() not in values]
    return KillReport(copies, missing, sum(n - 1 for n in values.values()), seed)
