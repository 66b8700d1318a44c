"""Throughput caps (spec.maxRecordsPerSecond, spec.maxBytesPerSecond): the token buckets on a simulated clock,
the spec fields and their CRD schema, the status summary, and the workers' achieved rates against real Kafka
clusters and a real object store.

Rates are measured over windows of at least 5 s with tolerances that hold on a loaded 2-core machine: at most
the cap x 1.15 (the cap holds), at least the cap x 0.5 (the cap does not simply block everything).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Producer
from ferry.api.crd import crd_for
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.dataaccess.pipeline import AccessPipeline
from ferry.dataaccess.worker import summarize as summarize_access
from ferry.metrics import WorkerMetrics
from ferry.obsdump.model import ObsDumpTaskSpec
from ferry.obsdump.worker import summarize as summarize_dumps
from ferry.registry import KINDS
from ferry.reporting import Progress, sum_throttling
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle, TokenBucket, batch_cost
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.pipeline import SyncPipeline
from ferry.topicsync.worker import summarize as summarize_sync
from pydantic import BaseModel, ValidationError

from tests.conftest import BucketFactory, TopicFactory
from tests.support.copies import read_all
from tests.support.dumps import dumped_records, spec_for, start_pipeline, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.support.threads import join_or_explain

RATE_WINDOW = 5.0  # seconds: the shortest window a rate is judged over
OVER = 1.15  # the cap holds: at most this much of it over a window
UNDER = 0.5  # and it does not block everything: at least this much of it

SETTINGS = WorkerSettings(report_interval=0.5, topic_refresh_interval=1.0, session_timeout_ms=6000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- the buckets, on a simulated clock


def run_simulated(throttle: Throttle, clock: FakeClock, seconds: float, record_bytes: int) -> list[tuple[float, int]]:
    """The loop's use of a throttle over a backlog: wait, take a batch no larger than allowed, charge it.
    Returns (time, records) per batch."""
    batches = []
    end = clock.now + seconds
    while clock.now < end:
        wait = throttle.wait()
        if wait > 0:
            clock.now += min(wait, 0.5)  # slices, as the loop waits
            continue
        count = throttle.batch_limit(5000)
        throttle.take(count, count * record_bytes)
        batches.append((clock.now, count))
        clock.now += 0.01  # writing the batch takes a little while
    return batches


def busiest(events: list[tuple[float, int]], window: float) -> float:
    """The highest rate between two events at least `window` seconds apart: what came after the first one up
    to the second one, over the time between them (events at the same moment counted as one)."""
    moments: dict[float, int] = {}
    for t, n in events:
        moments[t] = moments.get(t, 0) + n
    times = sorted(moments)
    cumulative = list(itertools.accumulate(moments[t] for t in times))
    best = 0.0
    for i, start in enumerate(times):
        for j in range(i + 1, len(times)):
            if times[j] - start >= window:
                best = max(best, (cumulative[j] - cumulative[i]) / (times[j] - start))
    return best


def test_a_records_cap_holds_from_the_first_batch_and_over_any_window() -> None:
    clock = FakeClock()
    throttle = Throttle(200, None, clock)
    batches = run_simulated(throttle, clock, 20, 100)
    total = sum(n for _, n in batches)
    assert 200 * 20 * 0.97 <= total <= 200 * 20
    assert busiest(batches, 1.0) <= 200 * 1.1
    assert busiest(batches, RATE_WINDOW) <= 200 * 1.02
    assert batches[0][1] == 40  # the first batch waits for a fill (0.2 s worth), no burst at start


def test_a_bytes_cap_learns_the_record_size_and_keeps_its_debts() -> None:
    clock = FakeClock()
    throttle = Throttle(None, 10_000, clock)
    batches = run_simulated(throttle, clock, 20, 500)
    assert batches[0][1] == 1  # the first batch learns how large records are
    sent = sum(n for _, n in batches) * 500
    assert 10_000 * 20 * 0.95 <= sent <= 10_000 * 20 * 1.02
    assert busiest([(t, n * 500) for t, n in batches], RATE_WINDOW) <= 10_000 * 1.05


def test_a_record_larger_than_the_cap_is_a_debt_waited_off() -> None:
    clock = FakeClock()
    throttle = Throttle(None, 1000, clock)
    clock.now += throttle.wait()
    assert throttle.batch_limit(5000) == 1
    throttle.take(1, 30_000)  # 30 s worth of the cap in one record, taken with a fill (0.2 s) in the bucket
    assert throttle.wait() == pytest.approx(30.0)
    clock.now += 30.0
    assert throttle.wait() == 0


def test_an_idle_bucket_holds_at_most_half_a_seconds_worth() -> None:
    clock = FakeClock()
    bucket = TokenBucket(300, clock)
    clock.now += 3600
    assert bucket.level() == 150
    throttle = Throttle(300, None, clock)
    clock.now += 3600
    batches = run_simulated(throttle, clock, 5, 100)
    assert batches[0][1] == 150  # after a long idle time: half a second's worth at once, then the cap
    assert sum(n for _, n in batches) <= 300 * 5.5
    slow = TokenBucket(0.25, clock)  # below one record a second: a batch is still one record
    assert slow.ready == 1 and slow.capacity == 1
    assert slow.wait() == pytest.approx(4.0)


def test_each_worker_takes_its_share_of_the_caps() -> None:
    class Spec(BaseModel):
        replicas: int = 1
        max_records_per_second: int | None = None
        max_bytes_per_second: int | None = None

    assert Throttle.share_of(Spec()) is None
    share = Throttle.share_of(Spec(replicas=3, max_records_per_second=200, max_bytes_per_second=3_000_000))
    assert share is not None
    assert share.records_per_second == pytest.approx(200 / 3) and share.bytes_per_second == 1_000_000
    assert share.fields() == {"throttledSeconds": 0.0, "maxRecordsPerSecond": 66.667, "maxBytesPerSecond": 1e6}
    only_bytes = Throttle.share_of(Spec(replicas=2, max_bytes_per_second=1000))
    assert only_bytes is not None and only_bytes.records is None and only_bytes.fields()["maxRecordsPerSecond"] is None


def test_a_batch_costs_its_records_keys_and_values_not_its_error_events() -> None:
    class Message:
        def __init__(self, key: bytes | None, value: bytes | None, error: object = None) -> None:
            self._key, self._value, self._error = key, value, error

        def error(self) -> object:
            return self._error

        def key(self) -> bytes | None:
            return self._key

        def value(self) -> bytes | None:
            return self._value

    batch = [Message(b"k1", b"value"), Message(None, b"abc"), Message(b"k", None), Message(None, None, "EOF")]
    assert batch_cost(batch) == (3, 2 + 5 + 3 + 1)


# --------------------------------------------------------------------------- the spec fields, the CRDs, the status

SPECS: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "TopicSync": (
        TopicSyncSpec,
        {"source": {"bootstrapServers": "a:9092"}, "target": {"bootstrapServers": "b:9092"}, "topics": ["t"]},
    ),
    "DataAccessTask": (
        DataAccessTaskSpec,
        {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": "a:9092",
                    "securityProtocol": "PLAINTEXT",
                    "topic": "t",
                    "consumerGroup": "g",
                },
            },
            "target": {"bootstrapServers": "b:9092", "topic": "t"},
        },
    ),
    "ObsDumpTask": (
        ObsDumpTaskSpec,
        {
            "source": {"bootstrapServers": "a:9092"},
            "topics": ["t"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
        },
    ),
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_every_kind_takes_the_caps_as_positive_integers(kind: str) -> None:
    model, spec = SPECS[kind]
    parsed = model.model_validate({**spec, "replicas": 4, "maxRecordsPerSecond": 200, "maxBytesPerSecond": 4096})
    throttle = Throttle.share_of(parsed)
    assert throttle is not None and throttle.records_per_second == 50 and throttle.bytes_per_second == 1024
    assert Throttle.share_of(model.model_validate(spec)) is None
    for field in ("maxRecordsPerSecond", "maxBytesPerSecond"):
        for bad in (0, -5):
            with pytest.raises(ValidationError, match="greater than or equal to 1"):
                model.model_validate({**spec, field: bad})
        with pytest.raises(ValidationError, match="valid integer"):
            model.model_validate({**spec, field: 1.5})


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_the_crds_say_minimum_one_and_show_the_caps_in_status(kind: Any) -> None:
    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    for field in ("maxRecordsPerSecond", "maxBytesPerSecond"):
        assert {k: schema["spec"]["properties"][field][k] for k in ("type", "minimum")} == {
            "type": "integer",
            "minimum": 1,
        }
        assert schema["status"]["properties"][field]["type"] == "number"
    assert schema["status"]["properties"]["throttledSeconds"]["type"] == "number"


def test_the_status_adds_the_workers_waits_and_shares_up() -> None:
    reports = [
        {"heartbeatTime": "2030-01-01T00:00:01Z", "throttledSeconds": 3.25, "maxRecordsPerSecond": 66.667},
        {"heartbeatTime": "2030-01-01T00:00:02Z", "throttledSeconds": 1.0, "maxRecordsPerSecond": 66.667},
        {"heartbeatTime": "2030-01-01T00:00:03Z", "throttledSeconds": 0.0, "maxRecordsPerSecond": 66.667},
    ]
    expected = {"throttledSeconds": 4.2, "maxRecordsPerSecond": 200.0, "maxBytesPerSecond": None}
    assert sum_throttling(reports) == expected
    for summarize in (summarize_sync, summarize_access, summarize_dumps):
        assert {k: summarize(reports)[k] for k in expected} == expected
    uncapped = [{"heartbeatTime": "2030-01-01T00:00:01Z"}]
    assert sum_throttling(uncapped) == dict.fromkeys(expected)  # cleared when the caps go
    assert sum_throttling([]) == {}  # nobody reports: what was known stays


# --------------------------------------------------------------------------- the workers, on real servers


class TimedRecorder:
    """Every report, with when it came."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, Progress]] = []

    def report(self, progress: Progress) -> None:
        self.reports.append((time.monotonic(), progress))

    @property
    def last(self) -> Progress:
        return self.reports[-1][1]


@contextmanager
def running(pipeline: Any) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        join_or_explain(thread)


def produce_sized(bootstrap: str, topic: str, count: int, partitions: int, value_bytes: int = 20) -> int:
    """`count` records with a 6-byte key and a `value_bytes` value; returns their payload bytes."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(count):
        value = f"{i:08d}".encode().ljust(value_bytes, b"x")
        producer.produce(topic, key=f"k{i:05d}".encode(), value=value, partition=i % partitions)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return count * (6 + value_bytes)


def arrival_times(bootstrap: str, topic: str, count: int) -> list[tuple[float, int]]:
    """When each record reached a LogAppendTime topic, in seconds, as (time, 1) events in order."""
    records = read_all(bootstrap, topic, count, timeout=60)
    assert len(records) == count
    return sorted((m.timestamp()[1] / 1000, 1) for m in records)


def judge_rate(events: list[tuple[float, int]], cap: float, what: str) -> float:
    """The rate over the whole run (after its first event), with every window of RATE_WINDOW seconds or more
    within the cap x OVER."""
    span = events[-1][0] - events[0][0]
    assert span >= RATE_WINDOW, f"{what}: over in {span:.1f}s, too fast to judge a cap of {cap}/s"
    rate = (sum(n for _, n in events) - events[0][1]) / span
    peak = busiest(events, RATE_WINDOW)
    print(f"{what}: {rate:.1f}/s over {span:.1f}s, busiest window of {RATE_WINDOW:.0f}s+ {peak:.1f}/s, cap {cap}/s")
    assert peak <= cap * OVER, f"{what}: {peak:.1f}/s over {RATE_WINDOW}s against a cap of {cap}/s"
    assert rate >= cap * UNDER, f"{what}: only {rate:.1f}/s against a cap of {cap}/s"
    return rate


def report_gaps(recorder: TimedRecorder, since: float, until: float) -> float:
    times = [t for t, _ in recorder.reports if since <= t <= until]
    assert len(times) >= 2
    return max(b - a for a, b in itertools.pairwise(times))


def test_a_topic_sync_capped_at_200_records_a_second_copies_a_backlog_at_200_a_second(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    # the broker stamps each record as it arrives: the achieved rate, measured outside the worker
    topic_factory(partitions=2, broker=kafka2, name=topic, config={"message.timestamp.type": "LogAppendTime"})
    produce_sized(kafka.bootstrap, topic, 2000, 2)
    spec = TopicSyncSpec.model_validate(
        {
            "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "a"},
            "target": {"bootstrapServers": kafka2.bootstrap, "instanceId": "b"},
            "topics": [topic],
            "startFrom": "earliest",
            "maxRecordsPerSecond": 200,
        }
    )
    recorder = TimedRecorder()
    group = f"capped-{uuid.uuid4().hex[:8]}"
    metrics = WorkerMetrics("TopicSync", group)
    pipeline = SyncPipeline(
        spec,
        {"bootstrap.servers": kafka.bootstrap},
        {"bootstrap.servers": kafka2.bootstrap},
        group,
        recorder,
        metrics,
        SETTINGS,
    )
    with running(pipeline):
        wait_for(lambda: recorder.reports and recorder.last.totals.records > 0, timeout=60, what="copying")
        started = time.monotonic()
        wait_for(lambda: recorder.last.totals.records == 2000, timeout=60, what="2000 copied")
        finished = time.monotonic()
        time.sleep(1)  # a report after the last batch
    judge_rate(arrival_times(kafka2.bootstrap, topic, 2000), 200, "TopicSync maxRecordsPerSecond=200")
    # it kept reporting while it waited on the cap, and says how long it waited, in its reports and its metric
    assert report_gaps(recorder, started, finished) < 2.5
    waits = [p.extra["throttledSeconds"] for _, p in recorder.reports]
    assert waits == sorted(waits) and waits[-1] > 3
    assert recorder.last.extra["maxRecordsPerSecond"] == 200 and recorder.last.extra["maxBytesPerSecond"] is None
    labels = {**metrics.labels}
    assert metrics.registry.get_sample_value("ferry_throttled_seconds_total", labels) == pytest.approx(
        pipeline.throttle.waited if pipeline.throttle else -1
    )


def test_two_data_access_workers_share_the_cap_of_their_task(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    source = topic_factory(partitions=4)
    target = topic_factory(partitions=4, broker=kafka2, config={"message.timestamp.type": "LogAppendTime"})
    spec = DataAccessTaskSpec.model_validate(
        {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": kafka.bootstrap,
                    "securityProtocol": "PLAINTEXT",
                    "topic": source,
                    "consumerGroup": f"dts-{uuid.uuid4().hex[:8]}",
                },
            },
            "target": {"bootstrapServers": kafka2.bootstrap, "topic": target},
            "startFrom": "earliest",
            "replicas": 2,
            "maxRecordsPerSecond": 200,
        }
    )
    group = spec.source.consumer_group

    def worker(recorder: TimedRecorder) -> AccessPipeline:
        return AccessPipeline(
            spec,
            {"bootstrap.servers": kafka.bootstrap},
            {"bootstrap.servers": kafka2.bootstrap},
            group,
            recorder,
            WorkerMetrics("DataAccessTask", group),
            SETTINGS,
        )

    one, two = TimedRecorder(), TimedRecorder()
    with running(worker(one)), running(worker(two)):

        def split() -> bool:
            mine = {p.partition for p in one.last.partitions} if one.reports else set()
            theirs = {p.partition for p in two.last.partitions} if two.reports else set()
            return len(mine) == 2 and len(theirs) == 2 and not mine & theirs

        wait_for(split, timeout=60, what="the partitions split between the two workers")
        produce_sized(kafka.bootstrap, source, 2000, 4)
        wait_for(lambda: one.last.totals.records + two.last.totals.records == 2000, timeout=60, what="2000 copied")
        time.sleep(1)
    # each took half: together they hold the task's cap (each alone at the whole cap would make 400/s)
    judge_rate(arrival_times(kafka2.bootstrap, target, 2000), 200, "DataAccessTask 2 replicas, maxRecordsPerSecond=200")
    for recorder in (one, two):
        assert recorder.last.extra["maxRecordsPerSecond"] == 100
        assert recorder.last.totals.records > 0
    reports = [r.last.wire() for r in (one, two)]
    assert summarize_access(reports)["maxRecordsPerSecond"] == 200


def test_a_dump_capped_in_bytes_dumps_a_backlog_at_its_cap_exactly_once(
    kafka: KafkaCluster, object_store: SeaweedFS, topic_factory: TopicFactory, bucket_factory: BucketFactory
) -> None:
    topic = topic_factory(partitions=2)
    bucket = bucket_factory()
    total = produce_sized(kafka.bootstrap, topic, 2000, 2, value_bytes=100)  # 106 payload bytes a record
    cap = 20_000
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"storeKeys": True}, maxBytesPerSecond=cap)
    running_dump = start_pipeline(spec, object_store, f"dump-{uuid.uuid4().hex[:8]}")
    pipeline = running_dump.pipeline
    # the bytes dumped so far, as each object is cut (every second): when each cut happened, and what it held
    cuts: list[tuple[float, int]] = []
    try:
        deadline = time.monotonic() + 90
        while pipeline.totals.bytes < total and time.monotonic() < deadline:
            dumped = pipeline.totals.bytes
            if dumped > (cuts[-1][1] if cuts else 0):
                cuts.append((time.monotonic(), dumped))
            time.sleep(0.05)
        cuts.append((time.monotonic(), pipeline.totals.bytes))
    finally:
        running_dump.finish()
    assert pipeline.totals.bytes == total
    events = [(t, b - (cuts[i - 1][1] if i else 0)) for i, (t, b) in enumerate(cuts)]
    judge_rate(events, cap, "ObsDumpTask maxBytesPerSecond=20000")
    records = dumped_records(object_store.client(), bucket)
    assert {key: [r.offset for r in found] for key, found in records.items()} == {
        (topic, p): list(range(1000)) for p in (0, 1)
    }
    assert running_dump.recorder.last.extra["maxBytesPerSecond"] == cap
    assert running_dump.recorder.last.extra["throttledSeconds"] > 3


def test_a_long_wait_on_the_cap_pauses_the_partitions_keeps_polling_and_loses_nothing(
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records larger than the cap allows in PAUSE_AFTER (made short here) are a debt the worker waits off with
    its partitions paused, calling the consumer meanwhile; resumed, it goes on where it was."""
    monkeypatch.setattr("ferry.pipeline.PAUSE_AFTER", 0.2)
    caplog.set_level(logging.INFO, logger="ferry.pipeline")
    topic = topic_factory(partitions=2)
    bucket = bucket_factory()
    total = produce_sized(kafka.bootstrap, topic, 16, 2, value_bytes=994)  # 1000 bytes a record
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"storeKeys": True}, maxBytesPerSecond=2000)
    running_dump = start_pipeline(spec, object_store, f"dump-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(lambda: running_dump.pipeline.totals.bytes == total, timeout=60, what="16 records dumped")
        seconds = running_dump.pipeline.throttle.waited if running_dump.pipeline.throttle else 0
    finally:
        running_dump.finish()
    assert "partitions paused meanwhile" in caplog.text
    assert seconds > 3  # 16 kB at 2 kB/s
    records = dumped_records(object_store.client(), bucket)
    assert {key: [r.offset for r in found] for key, found in records.items()} == {
        (topic, p): list(range(8)) for p in (0, 1)
    }
    assert not any(p.phase == "Rebalancing" for p in running_dump.recorder.reports[-3:])
