"""Outages through a fault proxy (Toxiproxy) between the worker and its broker or store, while records flow:
refused, hung (connections accepted, nothing answered) and slow. During an outage the status names it within
two report intervals of the worker noticing, and reports keep coming; afterwards, without a restart, every
record is in the bucket exactly once (dumps) or on the target at least once, duplicates counted (copies).

The brokers and the store are real (Apache Kafka, SeaweedFS); only the network between them and the worker
is faulty. `proxied_kafka` is a cluster its clients reach only through a proxy (it advertises the proxy's
address); records are produced to it directly, through its INTERNAL listener, while its proxy is down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from ferry.reporting import Progress

from tests.conftest import BucketFactory, TopicFactory
from tests.support.copies import read_all
from tests.support.dumps import (
    Recorder,
    RunningPipeline,
    dumped_records,
    produce,
    spec_for,
    start_pipeline,
    wait_for,
    write_manifest,
)
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.support.toxiproxy import Proxy, Toxiproxy
from tests.test_obsdump_worker import output_of, run_worker_process
from tests.test_topicsync_worker import sync_spec, syncing

REPORT_INTERVAL = 0.5
NAMED_WITHIN = 3.0 + 2 * REPORT_INTERVAL  # unreachable_after (3 s at this interval), then two reports at most
PERIOD = 1  # dumpPeriodSeconds: a cut, and so an upload, at least every second


@pytest.fixture
def store_proxy(toxiproxy: Toxiproxy, object_store: SeaweedFS) -> Iterator[Proxy]:
    upstream = object_store.endpoint.removeprefix("http://")
    proxy = toxiproxy.proxy(f"s3-{uuid.uuid4().hex[:8]}", upstream=upstream)
    yield proxy
    proxy.delete()


@pytest.fixture
def broker(proxied_kafka: tuple[KafkaCluster, Proxy]) -> Iterator[tuple[KafkaCluster, Proxy]]:
    yield proxied_kafka
    proxied_kafka[1].heal()


def direct(broker: KafkaCluster) -> str:
    """The proxied cluster's own listener, for the test's producers and checks."""
    return broker.listeners["INTERNAL"]


def proxied_topic(broker: KafkaCluster, partitions: int = 2) -> str:
    name = f"fault-{uuid.uuid4().hex[:8]}"
    admin = broker.admin({"bootstrap.servers": direct(broker)})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(15)
    return name


def has_reason(reason: str) -> Callable[[Progress], bool]:
    return lambda p: p.phase == "Failed" and p.error is not None and p.error.reason == reason


def named_within(recorder: Recorder, reason: str, since: float, bound: float) -> Progress:
    """The first report naming `reason` after `since`, asserted to come within `bound` seconds."""
    wait_for(lambda: has_reason(reason)(recorder.last), timeout=bound + 20, interval=0.1, what=reason)
    took = time.monotonic() - since
    assert took <= bound, f"{reason} named {took:.1f}s after the outage began (bound {bound:.1f}s)"
    return recorder.last


def assert_reports_keep_coming(recorder: Recorder, seconds: float) -> None:
    """No gap longer than two report intervals between reports over the next `seconds` (the heartbeat's job)."""
    count = len(recorder.reports)
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(recorder.reports) != count:
            count = len(recorder.reports)
            times.append(time.monotonic())
        time.sleep(0.05)
    gaps = [b - a for a, b in zip([deadline - seconds, *times], [*times, deadline], strict=True)]
    assert max(gaps) <= 2 * REPORT_INTERVAL + 0.5, f"no report for {max(gaps):.1f}s during the outage"


def assert_only_reasons(recorder: Recorder, reasons: set[str]) -> None:
    """Every error reported on the way was one of `reasons` (no KafkaError, nothing undocumented)."""
    seen = {p.error.reason for p in recorder.reports if p.error is not None}
    assert seen <= reasons, seen


def assert_exactly_once(store: SeaweedFS, bucket: str, topic: str, per_partition: dict[int, int]) -> None:
    dumped = dumped_records(store.client(), bucket)
    for partition, count in per_partition.items():
        offsets = [r.offset for r in dumped.get((topic, partition), [])]
        assert offsets == list(range(count)), f"{topic}[{partition}]: {len(offsets)} records, not 0..{count - 1} once"


def dump_through(
    proxy: Proxy, kafka: KafkaCluster, store: SeaweedFS, topic: str, bucket: str, dumped: int
) -> RunningPipeline:
    """A dump worker writing through `proxy`, once it has dumped the `dumped` records already produced."""
    spec = spec_for(kafka, store, bucket, topics=[topic], dumpPeriodSeconds=PERIOD, target={"storeKeys": True})
    spec["target"]["endpoint"] = f"http://{proxy.listen}"
    running = start_pipeline(spec, store, f"dump-{uuid.uuid4().hex[:6]}", report_interval=REPORT_INTERVAL)
    recorder = running.recorder
    try:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == dumped, timeout=60, what="dumped")
    except AssertionError:
        running.finish()
        raise
    return running


# -- the object store ------------------------------------------------------------------------------------


def test_a_hung_store_is_named_within_two_intervals_and_every_record_lands_once_after(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    store_proxy: Proxy,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    topic, bucket = topic_factory(partitions=2), bucket_factory()
    produce(kafka.bootstrap, topic, 200, partitions=2)
    running = dump_through(store_proxy, kafka, object_store, topic, bucket, dumped=200)
    recorder = running.recorder
    try:
        store_proxy.hang()
        hung_at = time.monotonic()
        produce(kafka.bootstrap, topic, 200, partitions=2, start=200)  # the next cut's upload hangs
        failed = named_within(recorder, "ObjectStoreUnresponsive", hung_at, PERIOD + NAMED_WITHIN)
        assert failed.error is not None and store_proxy.listen in failed.error.message
        metrics = running.pipeline.metrics
        assert metrics.registry.get_sample_value("ferry_worker_healthy", metrics.labels) == 0
        assert_reports_keep_coming(recorder, 4.0)
        assert has_reason("ObjectStoreUnresponsive")(recorder.last)  # still hung: still said
        store_proxy.heal()
        wait_for(
            lambda: recorder.last.totals.records == 400 and recorder.last.phase == "Running",
            timeout=60,
            what="all 400 dumped and Running again",
        )
        assert running.thread.is_alive()
    finally:
        running.finish()
    assert_exactly_once(object_store, bucket, topic, {0: 200, 1: 200})


def test_a_refused_then_slow_store_is_named_and_loses_nothing(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    store_proxy: Proxy,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    topic, bucket = topic_factory(partitions=2), bucket_factory()
    produce(kafka.bootstrap, topic, 100, partitions=2)
    running = dump_through(store_proxy, kafka, object_store, topic, bucket, dumped=100)
    recorder = running.recorder
    try:
        store_proxy.refuse()
        refused_at = time.monotonic()
        produce(kafka.bootstrap, topic, 100, partitions=2, start=100)
        named_within(recorder, "ObjectStoreUnreachable", refused_at, PERIOD + NAMED_WITHIN)
        store_proxy.heal()
        store_proxy.slow(latency_ms=300)  # slow is not an outage: no error, just later objects
        slow_from = len(recorder.reports)
        produce(kafka.bootstrap, topic, 100, partitions=2, start=200)
        wait_for(
            lambda: recorder.last.totals.records == 300 and recorder.last.phase == "Running",
            timeout=60,
            what="all 300 dumped through the slow store",
        )
        settled = next(
            i for i, p in enumerate(recorder.reports) if i >= slow_from and p.phase == "Running" and p.error is None
        )
        later = recorder.reports[settled:]
        assert all(p.error is None for p in later), [p.error for p in later if p.error]
    finally:
        running.finish()
    assert_exactly_once(object_store, bucket, topic, {0: 150, 1: 150})


def test_ferry_run_prints_a_hung_store_while_it_lasts(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    store_proxy: Proxy,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    tmp_path: Path,
) -> None:
    """What a user sees: `ferry run` keeps printing status lines while its upload hangs, and names the hang."""
    topic, bucket = topic_factory(partitions=1), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=PERIOD)
    spec["target"]["endpoint"] = f"http://{store_proxy.listen}"
    manifest = write_manifest(tmp_path / "hung-store.yaml", "hung-store", spec, object_store)
    produce(kafka.bootstrap, topic, 20, partitions=1)
    worker = run_worker_process(manifest)
    try:
        wait_for(lambda: " Running records=20 " in output_of(manifest), timeout=60, what="20 dumped")
        store_proxy.hang()
        produce(kafka.bootstrap, topic, 20, partitions=1, start=20)
        wait_for(lambda: "ObjectStoreUnresponsive" in output_of(manifest), timeout=15, what="the hang named")
        before = output_of(manifest).count("error=ObjectStoreUnresponsive")
        time.sleep(3)
        assert output_of(manifest).count("error=ObjectStoreUnresponsive") >= before + 3  # a line every 0.5 s
        store_proxy.heal()
        wait_for(lambda: " Running records=40 " in output_of(manifest), timeout=60, what="all 40 dumped")
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
    assert "Traceback" not in output_of(manifest)
    dumped = sorted(store_bodies(object_store, bucket))
    assert dumped == sorted(f"value-{i}" for i in range(40))


def store_bodies(store: SeaweedFS, bucket: str) -> list[str]:
    from tests.support.dumps import list_objects

    return [line for body in list_objects(store.client(), bucket).values() for line in body.decode().splitlines()]


# -- the broker ------------------------------------------------------------------------------------------


def test_a_hung_broker_is_named_with_unknown_lag_and_the_dump_resumes_exactly_once(
    broker: tuple[KafkaCluster, Proxy], object_store: SeaweedFS, bucket_factory: BucketFactory
) -> None:
    cluster, proxy = broker
    topic, bucket = proxied_topic(cluster), bucket_factory()
    spec = spec_for(cluster, object_store, bucket, topics=[topic], dumpPeriodSeconds=PERIOD, target={"storeKeys": True})
    produce(direct(cluster), topic, 100, partitions=2)
    running = start_pipeline(spec, object_store, f"bhang-{uuid.uuid4().hex[:6]}", report_interval=REPORT_INTERVAL)
    recorder = running.recorder
    try:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 100, timeout=60, what="100 dumped")
        proxy.hang()
        hung_at = time.monotonic()
        produce(direct(cluster), topic, 100, partitions=2, start=100)
        # librdkafka's statistics come every report interval; two without an answer start the count
        failed = named_within(recorder, "KafkaUnreachable", hung_at, 2 * REPORT_INTERVAL + NAMED_WITHIN)
        assert failed.lag is None and all(p.lag is None for p in failed.partitions)
        assert_reports_keep_coming(recorder, 3.0)
        time.sleep(5)  # past the session timeout (6 s): the group drops the worker and takes it back after
        proxy.heal()
        wait_for(
            lambda: recorder.last.totals.records == 200 and recorder.last.phase == "Running",
            timeout=90,
            what="all 200 dumped and Running again",
        )
        assert recorder.last.lag == 0
        assert running.thread.is_alive()
    finally:
        running.finish()
    assert_only_reasons(recorder, {"KafkaUnreachable"})  # a commit refused after the hang is a rebalance
    assert_exactly_once(object_store, bucket, topic, {0: 100, 1: 100})


def test_a_slow_broker_is_not_an_outage_and_the_dump_stays_exact(
    broker: tuple[KafkaCluster, Proxy], object_store: SeaweedFS, bucket_factory: BucketFactory
) -> None:
    """300 ms more per round trip (more than the report interval): no false alarm, every record once."""
    cluster, proxy = broker
    topic, bucket = proxied_topic(cluster), bucket_factory()
    spec = spec_for(cluster, object_store, bucket, topics=[topic], dumpPeriodSeconds=PERIOD, target={"storeKeys": True})
    proxy.slow(latency_ms=300)
    produce(direct(cluster), topic, 300, partitions=2)
    running = start_pipeline(spec, object_store, f"slow-{uuid.uuid4().hex[:6]}", report_interval=REPORT_INTERVAL)
    recorder = running.recorder
    try:
        wait_for(
            lambda: recorder.reports and recorder.last.totals.records == 300 and recorder.last.lag == 0,
            timeout=90,
            what="all 300 dumped through the slow broker",
        )
    finally:
        running.finish()
    assert_only_reasons(recorder, set())
    assert_exactly_once(object_store, bucket, topic, {0: 150, 1: 150})


def copied_values(bootstrap: str, topic: str, expected: int) -> list[str]:
    return [m.value().decode() for m in read_all(bootstrap, topic, expected, timeout=60, linger=1)]


def test_a_hung_source_broker_is_named_and_the_copy_delivers_everything_after(
    broker: tuple[KafkaCluster, Proxy], kafka2: KafkaCluster
) -> None:
    cluster, proxy = broker
    topic = proxied_topic(cluster)
    produce(direct(cluster), topic, 100, partitions=2)
    with syncing(sync_spec(cluster, kafka2, topics=[topic], startFrom="earliest")) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 100, timeout=60, what="100 copied")
        proxy.hang()
        hung_at = time.monotonic()
        produce(direct(cluster), topic, 100, partitions=2, start=100)
        failed = named_within(recorder, "KafkaUnreachable", hung_at, 2 * REPORT_INTERVAL + NAMED_WITHIN)
        assert failed.lag is None
        assert_reports_keep_coming(recorder, 3.0)
        proxy.heal()
        wait_for(lambda: recorder.last.phase == "Running" and recorder.last.lag == 0, timeout=90, what="caught up")
    assert_only_reasons(recorder, {"KafkaUnreachable"})
    values = copied_values(kafka2.bootstrap, topic, 200)
    assert set(values) == {f"value-{i}" for i in range(200)}  # at least once: nothing missing
    duplicates = len(values) - len(set(values))
    print(f"source hang: {len(values)} copied for 200 records, {duplicates} duplicates")
    kafka2.admin().delete_topics([topic])


def test_a_hung_target_broker_is_named_and_the_copy_delivers_everything_after(
    kafka: KafkaCluster, broker: tuple[KafkaCluster, Proxy], topic_factory: TopicFactory
) -> None:
    cluster, proxy = broker
    topic = topic_factory(partitions=2)
    produce(kafka.bootstrap, topic, 100, partitions=2)
    with syncing(sync_spec(kafka, cluster, topics=[topic], startFrom="earliest")) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 100, timeout=60, what="100 copied")
        proxy.hang()
        hung_at = time.monotonic()
        produce(kafka.bootstrap, topic, 100, partitions=2, start=100)  # their acknowledgements never come
        failed = named_within(recorder, "KafkaUnreachable", hung_at, 2 * REPORT_INTERVAL + NAMED_WITHIN)
        assert failed.error is not None and proxy.listen in failed.error.message  # acknowledgements or look-ups
        assert_reports_keep_coming(recorder, 3.0)
        proxy.heal()
        wait_for(lambda: recorder.last.totals.records >= 200, timeout=120, what="all copied after the hang")
    values = copied_values(direct(cluster), topic, 200)
    assert set(values) == {f"value-{i}" for i in range(200)}
    duplicates = len(values) - len(set(values))
    print(f"target hang: {len(values)} copied for 200 records, {duplicates} duplicates")
