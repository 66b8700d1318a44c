"""The status tells the truth while a broker is down: within two report intervals the worker reports Failed
with KafkaUnreachable and no lag (unknown, not 0), keeps running, and says nothing false meanwhile.

Each test runs its own Apache Kafka cluster, because it stops it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from tests.conftest import BucketFactory
from tests.support.copies import produce_on
from tests.support.dumps import Recorder, spec_for, start_pipeline, wait_for
from tests.support.kafka import KafkaCluster, start_kafka
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_topicsync_worker import sync_spec, syncing

REPORT_INTERVAL = 0.5
BOUND = 2 * 3.0 + 2 * REPORT_INTERVAL  # unreachable_after (3 s at this interval) and two more reports


@pytest.fixture
def doomed(tmp_path: Path, kafka: KafkaCluster) -> Iterator[KafkaCluster]:
    """A cluster of the test's own, which the test stops (asks for `kafka` so the jars exist)."""
    with start_kafka(tmp_path / "doomed", "doomed") as broker:
        yield broker


def make_topic(broker: KafkaCluster, partitions: int = 2) -> str:
    name = f"out-{time.monotonic_ns()}"
    admin = broker.admin()
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(15)
    return name


def assert_unreachable_within_bound(recorder: Recorder, bootstrap: str, stopped_at: float) -> None:
    def unreachable() -> bool:
        last = recorder.last
        return last.phase == "Failed" and last.error is not None and last.error.reason == "KafkaUnreachable"

    wait_for(unreachable, timeout=BOUND + 5, interval=0.1, what="KafkaUnreachable")
    took = time.monotonic() - stopped_at
    assert took <= BOUND + 1, f"KafkaUnreachable after {took:.1f}s"
    last = recorder.last
    assert last.lag is None and all(p.lag is None for p in last.partitions)
    assert last.error is not None and bootstrap in last.error.message


def test_an_obsdump_worker_whose_broker_stops_says_kafka_unreachable_with_unknown_lag(
    doomed: KafkaCluster, object_store: SeaweedFS, bucket_factory: BucketFactory
) -> None:
    topic, bucket = make_topic(doomed), bucket_factory()
    produce_on(doomed.bootstrap, topic, 50, 2, "o")
    spec = spec_for(doomed, object_store, bucket, topics=[topic], startFrom="earliest", dumpPeriodSeconds=60)
    running = start_pipeline(spec, object_store, "outage", report_interval=REPORT_INTERVAL)
    try:

        def settled() -> bool:
            last = running.recorder.last
            return last.phase == "Running" and bool(last.partitions) and last.lag == 0

        # Lag 0 needs the first object committed: its cut comes at the next multiple of the 60 s period on the
        # clock, up to 60 s after the start, then its upload, commit and a report.
        wait_for(lambda: running.recorder.reports and settled(), timeout=60 + 30, what="Running with lag 0")
        stopped_at = time.monotonic()
        doomed.stop()
        assert_unreachable_within_bound(running.recorder, doomed.bootstrap, stopped_at)
        assert running.thread.is_alive()  # waiting for the broker, not crashed
    finally:
        running.finish()


def test_a_topicsync_worker_whose_source_stops_says_kafka_unreachable_with_unknown_lag(
    doomed: KafkaCluster, kafka2: KafkaCluster
) -> None:
    topic = make_topic(doomed)
    produce_on(doomed.bootstrap, topic, 40, 2, "t")
    with syncing(sync_spec(doomed, kafka2, topics=[topic])) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 40, timeout=60, what="40 copied")
        wait_for(lambda: recorder.last.lag == 0 and recorder.last.phase == "Running", timeout=30, what="lag 0")
        stopped_at = time.monotonic()
        doomed.stop()
        assert_unreachable_within_bound(recorder, doomed.bootstrap, stopped_at)
    kafka2.admin().delete_topics([topic])
