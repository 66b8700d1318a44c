"""The failover drill of docs/topicsync.md#failover, unplanned, on two real Apache Kafka clusters: applications
consume in two groups on the source while records are written, an exactly-once sync with those groups runs, the
source is cut off (its broker killed), and the applications move to the target. Every record is accounted for: each
group reads on the target exactly the records there it had not read on the source, and what it never reads is what
the sync had not copied when the source went."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from tests.support.copies import read_all
from tests.support.dumps import wait_for
from tests.support.kafka import KafkaCluster, start_kafka
from tests.test_consumer_group_sync import (
    app_reads_on,
    committed_on,
    committed_records,
    condition_of,
    placed,
    running,
    waiting_for,
)
from tests.test_topicsync_worker import sync_spec

PARTITIONS = 3


def write(bootstrap: str, topic: str, start: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(start, start + count):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % PARTITIONS)
    assert producer.flush(30) == 0


def application(bootstrap: str, topic: str, group: str, stop_after: int, read: list[bytes]) -> None:
    """Consumes in `group`, committing after every batch it processed, and stops (without a further commit, as a
    process that dies) once it has read `stop_after` records."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while len(read) < stop_after and time.monotonic() < deadline:
        batch = [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
        if batch:
            read.extend(m.value() for m in batch)
            consumer.commit(asynchronous=False)
    consumer.close()


def test_an_unplanned_failover_accounts_for_every_record(kafka2: KafkaCluster, tmp_path: Path) -> None:
    source = start_kafka(tmp_path / "source", "drill-source")
    try:
        topic = f"drill-{uuid.uuid4().hex[:8]}"
        admin = source.admin()  # kept: a collected client never resolves its futures
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        groups = {"billing": 1500, "audit": 2600}  # group -> records its application reads before it goes
        apps = {f"{name}-{uuid.uuid4().hex[:6]}": stop for name, stop in groups.items()}
        spec: dict[str, Any] = sync_spec(
            source,
            kafka2,
            topics=[topic],
            delivery="exactlyOnce",
            consumerGroups={"names": sorted(apps), "intervalSeconds": 1},
        )
        read_on_source: dict[str, list[bytes]] = {group: [] for group in apps}
        with running(spec) as (recorder, _):
            writer = threading.Thread(target=write, args=(source.bootstrap, topic, 0, 3000))
            consumers = [
                threading.Thread(target=application, args=(source.bootstrap, topic, g, n, read_on_source[g]))
                for g, n in apps.items()
            ]
            for thread in [writer, *consumers]:
                thread.start()
            for thread in [writer, *consumers]:
                thread.join(90)
            assert {g: len(values) for g, values in read_on_source.items()} == apps
            # Everything copied, and each group's last commit translated: its offsets on the target are where a
            # scan of the target partitions (by the records' ferry.offset) says it reads on.
            waiting_for(
                recorder,
                lambda: (
                    recorder.last.totals.records == 3000
                    and (c := condition_of(recorder, spec)) is not None
                    and c.active
                ),
                "everything copied and FailoverReady",
                timeout=90,
            )
            scanned = [committed_records(kafka2, topic, p) for p in range(PARTITIONS)]
            expected = {
                group: {p: placed(*scanned[p], c) for p, c in committed_on(source, group, topic, PARTITIONS).items()}
                for group in apps
            }
            wait_for(
                lambda: all(committed_on(kafka2, g, topic, PARTITIONS) == expected[g] for g in apps),
                timeout=30,
                interval=1,
                what=f"the groups' offsets on the target to be {expected}",
            )
            # The last writes, then the cut: some of these may reach the target, the rest are stranded on the source.
            write(source.bootstrap, topic, 3000, 600)
            os.killpg(source.pid, signal.SIGKILL)  # cut off: no goodbye to the clients
            wait_for(
                lambda: (c := condition_of(recorder, spec)) is not None and c.active is False,
                timeout=60,
                what="FailoverReady False once the source is gone",
            )
            condition = condition_of(recorder, spec)
            assert condition is not None
            # not ready, and saying why: the source's brokers cannot be reached
            assert condition.reason in ("ConsumerGroupsNotReady", "ConsumerGroupSyncFailed"), condition
            assert source.bootstrap in condition.message, condition
            assert recorder.last.error is not None and recorder.last.error.reason == "KafkaUnreachable"
        produced = {f"v{i}".encode() for i in range(3600)}
        on_target = {m.value() for m in read_all(kafka2.bootstrap, topic, 3000, timeout=30, linger=2)}
        assert on_target <= produced and len(on_target) >= 3000
        stranded = produced - on_target
        for group, first in read_on_source.items():
            rest = app_reads_on(kafka2.bootstrap, topic, group, len(on_target) - len(first))
            assert len(rest) == len(set(rest)), f"{group}: read twice on the target"
            assert not set(first) & set(rest), f"{group}: read again on the target what it read on the source"
            assert set(first) | set(rest) == on_target, f"{group}: records on the target it never read"
            assert produced - set(first) - set(rest) == stranded
            print(
                f"{group}: {len(first)} read on the source, {len(rest)} on the target, {len(stranded)} stranded on "
                f"the source (not copied before the cut), 0 read twice"
            )
    finally:
        source.stop()
