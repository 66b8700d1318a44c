"""`spec.delivery: exactlyOnce` (ferry.transactional) between real Apache Kafka clusters: SIGKILLs, rebalances
between replicas, a stalled "zombie" worker, an offset reset, and a target that cannot do transactions.

The target is a broker of this module's own whose groups may have sessions as short as 1 s (Kafka's default
minimum is 6 s): the workers here use 2 s, so a killed worker's partitions move within ~2 s and the kill tests
spend their time copying rather than waiting for dead members to time out. Every check reads the target with
isolation.level=read_committed, as the consumers of an exactly-once target must.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from ferry import transactional
from ferry.copying import Batch, CopyPipeline
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.dataaccess.pipeline import AccessPipeline
from ferry.metrics import WorkerMetrics
from ferry.reporting import MemoryLedger
from ferry.settings import WorkerSettings
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.pipeline import SyncPipeline

from tests.conftest import TopicFactory
from tests.support.copies import copy_while_killing, read_all, worker_log
from tests.support.dumps import Recorder, produce, wait_for
from tests.support.kafka import KafkaCluster, start_kafka
from tests.support.threads import join_or_explain
from tests.test_dataaccess_worker import access_spec, committed
from tests.test_topicsync_worker import sync_spec

SESSION_MS = 2000
FAST = {"FERRY_SESSION_TIMEOUT_MS": str(SESSION_MS)}
SETTINGS = WorkerSettings(report_interval=0.5, topic_refresh_interval=1.0, session_timeout_ms=SESSION_MS)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, kafka: KafkaCluster) -> Iterator[KafkaCluster]:
    """The target cluster, with short group sessions allowed; asks for `kafka` so the jars exist."""
    properties = {"group.min.session.timeout.ms": 1000}
    with start_kafka(tmp_path_factory.mktemp("eos-target"), "ferry-test-eos", properties=properties) as broker:
        yield broker


def manifest(path: Path, kind: str, spec: dict[str, Any]) -> Path:
    body = {"apiVersion": "ferry.dev/v1alpha1", "kind": kind, "metadata": {"name": path.stem}, "spec": spec}
    path.write_text(yaml.safe_dump(body))
    return path


@contextmanager
def running(pipeline: CopyPipeline) -> Iterator[CopyPipeline]:
    """The pipeline's worker in a thread for the block."""
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield pipeline
    finally:
        stop.set()
        join_or_explain(thread)


def sync_pipeline(spec: dict[str, Any], group: str, worker_id: str) -> tuple[SyncPipeline, Recorder]:
    parsed = TopicSyncSpec.model_validate({"startFrom": "earliest", "delivery": "exactlyOnce", **spec})
    recorder = Recorder()
    pipeline = SyncPipeline(
        parsed,
        {"bootstrap.servers": parsed.source.bootstrap_servers},
        {"bootstrap.servers": parsed.target.bootstrap_servers},
        group,
        recorder,
        WorkerMetrics("TopicSync", group),
        SETTINGS,
        worker_id=worker_id,
    )
    return pipeline, recorder


def access_pipeline(spec: dict[str, Any], **options: Any) -> tuple[AccessPipeline, Recorder]:
    parsed = DataAccessTaskSpec.model_validate({**spec, "delivery": "exactlyOnce"})
    recorder = Recorder()
    group = parsed.source.consumer_group
    pipeline = AccessPipeline(
        parsed,
        {"bootstrap.servers": parsed.source.endpoint.bootstrap_servers},
        {"bootstrap.servers": parsed.target.bootstrap_servers},
        group,
        recorder,
        WorkerMetrics("DataAccessTask", group),
        SETTINGS,
        **options,
    )
    return pipeline, recorder


def exactly_once(copies: list[Any], expected: list[bytes]) -> None:
    counts = Counter(m.value() for m in copies)
    missing = sorted(set(expected) - set(counts))
    duplicated = sorted(value for value, n in counts.items() if n > 1)
    assert not missing, f"{len(missing)} records missing, e.g. {missing[:5]}"
    assert not duplicated, f"{len(duplicated)} records more than once, e.g. {duplicated[:5]}"
    assert sorted(counts) == sorted(expected)


def test_a_stored_position_names_its_offset_epoch_and_the_transactional_id_that_wrote_it() -> None:
    tagged = f"{transactional.EPOCH_TAG}3;{transactional.WRITER_TAG}ferry.ns.sync.uid.eos.pod-7f9c"
    assert transactional.epoch_of(tagged) == 3
    assert transactional.writer_of(tagged) == "ferry.ns.sync.uid.eos.pod-7f9c"
    older = f"{transactional.EPOCH_TAG}2"  # written before positions named their writer
    assert transactional.epoch_of(older) == 2 and transactional.writer_of(older) is None
    assert transactional.epoch_of("moved by hand") is None and transactional.writer_of(None) is None


def kill_test(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path, replicas: int
) -> None:
    topic = topic_factory(partitions=3)
    total, kills = 100_000, 6
    spec = sync_spec(kafka, target, topics=[topic], startFrom="earliest", delivery="exactlyOnce")
    task = manifest(tmp_path / f"eos-{replicas}.yaml", "TopicSync", spec)
    result = copy_while_killing(
        task,
        kafka.bootstrap,
        topic,
        target.bootstrap,
        topic,
        total=total,
        kills=kills,
        replicas=replicas,
        pause=0.15,  # 100k records over ~20 s
        extra_args=("--group", f"eos-{uuid.uuid4().hex[:8]}"),
        env=FAST,
        # Soon after a worker starts reading its partitions from their positions: it catches up on what arrived
        # meanwhile in back-to-back batches, in a transaction most of the time.
        when_copying=True,
        copying_mark=rb"ferry.transactional: copying ",
        kill_after=(0.6, 1.6),
    )
    # What the kills left behind: the records of the transactions they cut short, aborted.
    everything = read_all(target.bootstrap, topic, total, timeout=30, linger=1, isolation_level="read_uncommitted")
    print(
        f"exactlyOnce, {replicas} replica(s), {kills} SIGKILLs (seed {result.seed}): {len(result.copies)} records "
        f"read_committed of {total}, {result.duplicates} duplicates, {len(result.missing)} missing; "
        f"{len(everything) - len(result.copies)} more read_uncommitted (aborted transactions)"
    )
    assert not result.missing, f"lost records {result.missing[:10]} (seed {result.seed})"
    assert result.duplicates == 0, f"{result.duplicates} duplicates (seed {result.seed})"
    assert len(result.copies) == total
    logs = [worker_log(task, replica).read_text() for replica in range(replicas)]
    assert all("initialised" in log for log in logs)  # every replica ran transactions


def test_every_record_lands_exactly_once_across_random_kills(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    kill_test(kafka, target, topic_factory, tmp_path, replicas=1)


def test_two_replicas_rebalancing_under_random_kills_copy_every_record_exactly_once(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    kill_test(kafka, target, topic_factory, tmp_path, replicas=2)


def test_a_data_access_task_copies_exactly_once_across_kills_and_keeps_its_subscription_group_current(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    source = topic_factory(partitions=3)
    target_topic = topic_factory(broker=target, partitions=3)
    spec = access_spec(kafka, source, target, target_topic, delivery="exactlyOnce")
    task = manifest(tmp_path / "eos-access.yaml", "DataAccessTask", spec)
    total, kills = 100_000, 6
    result = copy_while_killing(
        task,
        kafka.bootstrap,
        source,
        target.bootstrap,
        target_topic,
        total=total,
        kills=kills,
        pause=0.15,  # 100k records over ~20 s
        kill_after=(0.6, 1.6),
        env=FAST,
        when_copying=True,
        copying_mark=rb"ferry.transactional: copying ",
    )
    summary = (
        f"DataAccessTask exactlyOnce, {kills} SIGKILLs (seed {result.seed}): {len(result.copies)} records "
        f"read_committed of {total}, {result.duplicates} duplicates, {len(result.missing)} missing"
    )
    print(summary)
    assert not result.missing and result.duplicates == 0, summary
    assert all(int(m.value()[1:]) % 3 == m.partition() for m in result.copies), "a record moved partition"
    # The subscription's own group follows (best effort, after each transaction): its lag stays meaningful.
    group = spec["source"]["dts"]["consumerGroup"]
    assert sum(committed(kafka.bootstrap, group, source, 3)) == total


def test_a_stalled_worker_that_lost_its_partitions_has_its_transaction_refused(
    kafka: KafkaCluster,
    target: KafkaCluster,
    topic_factory: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A zombie: worker `a` stops in the middle of a batch (its records written in its open transaction) for longer
    than the group's poll interval, so the group gives its partitions to `b`, which copies them on from their
    stored positions. When `a` goes on, the group refuses its positions, the transaction aborts, and no record
    lands twice."""
    monkeypatch.setattr(transactional, "MAX_POLL_INTERVAL_MS", 3000)
    topic = topic_factory(partitions=4)
    spec = sync_spec(kafka, target, topics=[topic])
    group = f"zombie-{uuid.uuid4().hex[:8]}"
    a, a_reports = sync_pipeline(spec, group, "a")
    b, b_reports = sync_pipeline(spec, group, "b")
    assert a.transactions is not None
    stall, stalled, released = threading.Event(), threading.Event(), threading.Event()
    commit = a.transactions.commit

    def stalling_commit(batch: Batch) -> bool:
        if stall.is_set() and batch.last and not stalled.is_set():
            stalled.set()
            released.wait(60)
        return commit(batch)

    monkeypatch.setattr(a.transactions, "commit", stalling_commit)
    flowing, sent = threading.Event(), [0]

    def produce_steadily() -> None:
        producer = Producer({"bootstrap.servers": kafka.bootstrap})
        while not flowing.is_set():
            for _ in range(50):
                producer.produce(topic, value=f"v{sent[0]}", partition=sent[0] % 4)
                sent[0] += 1
            producer.flush(10)
            time.sleep(0.05)

    def owned(reports: Recorder) -> set[int]:
        return {p.partition for p in reports.last.partitions} if reports.reports else set()

    producer = threading.Thread(target=produce_steadily)
    producer.start()
    try:
        with running(a), running(b):
            wait_for(lambda: owned(a_reports) and owned(b_reports), timeout=60, what="the partitions split")
            stall.set()
            wait_for(stalled.is_set, timeout=30, what="a stalled in a transaction")
            wait_for(lambda: len(owned(b_reports)) == 4, timeout=30, what="b owning every partition")
            copied_by_b = b_reports.last.totals.records
            wait_for(lambda: b_reports.last.totals.records > copied_by_b, timeout=30, what="b copying a's partitions")
            released.set()
            # Refused by the group (a's generation is gone), or fenced by b, which found a gone from the group when it
            # took a's partitions over and aborted a's open transaction at once.
            wait_for(
                lambda: a.transactions is not None and (a.transactions.refused or a.transactions.fenced_out),
                timeout=30,
                what="a refused or fenced",
            )
            flowing.set()
            producer.join()
            total = sent[0]
            wait_for(
                lambda: a_reports.last.totals.records + b_reports.last.totals.records == total,
                timeout=60,
                what=f"all {total} records copied",
            )
    finally:
        released.set()
        flowing.set()
        producer.join()
    copies = read_all(target.bootstrap, topic, total, linger=1)
    everything = read_all(target.bootstrap, topic, total, linger=1, isolation_level="read_uncommitted")
    print(
        f"zombie: {total} records, {len(copies)} read_committed, {len(everything) - len(copies)} more "
        f"read_uncommitted (a's aborted transaction); a's transactions refused: {a.transactions.refused}, a fenced "
        f"by b: {b.transactions.fenced if b.transactions else None}"
    )
    exactly_once(copies, [f"v{i}".encode() for i in range(total)])
    assert len(everything) > len(copies)  # a's records were written, and aborted


def test_a_worker_replaced_under_another_name_fences_the_transaction_its_predecessor_left_open(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """A pod replaced by one of another name (deleted, evicted, its node lost) never initialises its transactional
    id again: a transaction it died in would hold the read_committed consumers of its partitions up until the
    target aborts it (60 s). The worker that takes its partitions over finds that id in the positions it wrote,
    sees it gone from the target-side group, and fences it at once."""
    topic = topic_factory(partitions=2)
    spec = sync_spec(kafka, target, topics=[topic])
    group = f"replaced-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap, topic, 10, partitions=2)
    old, old_reports = sync_pipeline(spec, group, "pod-a")
    with running(old):
        wait_for(lambda: old_reports.reports and old_reports.last.totals.records == 10, timeout=60, what="first 10")
    # pod-a again, dying in a transaction: its records written to both partitions, never committed nor aborted.
    dying = Producer({"bootstrap.servers": target.bootstrap, "transactional.id": f"{group}.eos.pod-a"})
    dying.init_transactions(30)
    dying.begin_transaction()
    for partition in (0, 1):
        dying.produce(topic, value=b"never-committed", partition=partition)
    assert dying.flush(10) == 0
    died = time.monotonic()
    produce(kafka.bootstrap, topic, 10, partitions=2, start=10)
    new, new_reports = sync_pipeline(spec, group, "pod-b")
    with running(new):
        wait_for(lambda: new_reports.reports and new_reports.last.totals.records == 10, timeout=30, what="the 10 new")
        # read_committed consumers see past pod-a's transaction long before the target's 60 s timeout
        copies = read_all(target.bootstrap, topic, 20, timeout=max(1.0, 25 - (time.monotonic() - died)))
        seen = time.monotonic() - died
    assert new.transactions is not None
    print(f"pod-a's transaction ended for read_committed consumers {seen:.1f}s after it died")
    exactly_once(copies, [f"value-{i}".encode() for i in range(20)])
    assert new.transactions.fenced >= 1  # pod-a, gone from the group
    everything = read_all(target.bootstrap, topic, 22, linger=1, isolation_level="read_uncommitted")
    assert sum(m.value() == b"never-committed" for m in everything) == 2  # written, and aborted
    del dying


def test_partitions_added_to_the_source_while_copying_exactly_once_are_copied_once_and_reported(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory
) -> None:
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    topic = topic_factory(partitions=2)
    spec = sync_spec(kafka, target, topics=[topic])
    pipeline, recorder = sync_pipeline(spec, f"grow-{uuid.uuid4().hex[:8]}", "w")
    produce(kafka.bootstrap, topic, 100, partitions=2)
    with running(pipeline):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 100, timeout=60, what="the first 100")
        admin = kafka.admin()
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(15)
        wait_for(lambda: recorder.last.extra["topics"][0]["targetPartitions"] == 4, timeout=30, what="target grown")
        produce(kafka.bootstrap, topic, 200, partitions=4, start=100)
        wait_for(lambda: recorder.last.totals.records == 300, timeout=60, what="all 300 copied")
        changes = [(c["attribute"], c["before"], c["after"]) for c in recorder.last.extra.get("topicChanges") or []]
    assert ("partitions", "2", "4") in changes
    copies = read_all(target.bootstrap, topic, 300, linger=1)
    exactly_once(copies, [f"value-{i}".encode() for i in range(300)])
    placed = {m.value(): m.partition() for m in copies}
    assert all(placed[f"value-{i}".encode()] == i % (2 if i < 100 else 4) for i in range(300)), "a record moved"


def test_an_offset_reset_in_exactly_once_moves_where_the_workers_start(
    kafka: KafkaCluster, target: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """Stored positions of an older offset epoch give way to the source group the epoch's reset moved."""
    source = topic_factory(partitions=2)
    target_topic = topic_factory(broker=target, partitions=2)
    spec = access_spec(kafka, source, target, target_topic)
    produce(kafka.bootstrap, source, 10, partitions=2)
    pipeline, recorder = access_pipeline(spec)
    with running(pipeline):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 10, timeout=60, what="first 10")
    produce(kafka.bootstrap, source, 5, partitions=2, start=10)  # while paused: skipped by the reset to latest
    ledger = MemoryLedger(0)
    pipeline, recorder = access_pipeline(spec, epoch=1, resets=ledger, reset_to="latest")
    with running(pipeline):
        wait_for(lambda: recorder.reports and recorder.last.partitions, timeout=60, what="assigned")
        assert ledger.applied_epoch() == 1
        produce(kafka.bootstrap, source, 3, partitions=2, start=15)
        wait_for(lambda: recorder.last.totals.records == 3, timeout=60, what="the 3 after the reset")
    # A restart in the same epoch goes on from its transactions' positions: no second reset.
    produce(kafka.bootstrap, source, 2, partitions=2, start=18)
    pipeline, recorder = access_pipeline(spec, epoch=1, resets=ledger, reset_to="latest")
    with running(pipeline):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 2, timeout=60, what="the 2 new")
        time.sleep(1)
        assert recorder.last.totals.records == 2
    copies = read_all(target.bootstrap, target_topic, 15, linger=1)
    expected = [*range(10), *range(15, 20)]
    assert sorted(int(m.value().decode().split("-")[1]) for m in copies) == expected


def test_a_target_that_cannot_do_transactions_fails_clearly_and_keeps_trying(
    kafka: KafkaCluster,
    topic_factory: TopicFactory,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactional, "INIT_TIMEOUT", 2.0)
    # One broker, and a transaction log that wants two replicas: no transaction coordinator, ever.
    properties = {"transaction.state.log.replication.factor": 2}
    with start_kafka(tmp_path_factory.mktemp("no-tx"), "ferry-test-no-tx", properties=properties) as broken:
        topic = topic_factory(partitions=1)
        produce(kafka.bootstrap, topic, 5, partitions=1)
        pipeline, recorder = sync_pipeline(sync_spec(kafka, broken, topics=[topic]), f"notx-{topic}", "w")

        def failures() -> float:
            labels = {**pipeline.metrics.labels, "reason": "TargetTransactionsUnavailable"}
            return pipeline.metrics.registry.get_sample_value("ferry_errors_total", labels) or 0.0

        with running(pipeline):
            wait_for(lambda: failures() >= 2, timeout=60, what="two failed attempts")
            last = recorder.last
        assert last.phase == "Failed" and last.error is not None
        assert last.error.reason == "TargetTransactionsUnavailable"
        message = last.error.message
        assert broken.bootstrap in message and f"notx-{topic}.eos.w" in message
        assert "transaction.state.log.replication.factor" in message and "spec.delivery: atLeastOnce" in message
        assert last.totals.records == 0
