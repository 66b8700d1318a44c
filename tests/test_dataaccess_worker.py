"""The DataAccessTask worker between two real Apache Kafka clusters; the first plays the DTS subscription endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.dataaccess.pipeline import AccessPipeline
from ferry.metrics import WorkerMetrics
from ferry.reporting import MemoryLedger
from ferry.settings import WorkerSettings

from tests.conftest import TopicFactory
from tests.support.copies import copy_while_killing, produce_on, read_all
from tests.support.dumps import Recorder, produce, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import free_port
from tests.support.threads import join_or_explain


def access_spec(
    source: KafkaCluster | str, topic: str, target: KafkaCluster | str, target_topic: str, **fields: Any
) -> Any:
    """A DataAccessTask spec with a PLAINTEXT DTS endpoint (the SASL ones are below)."""
    source_bootstrap = source if isinstance(source, str) else source.bootstrap
    target_bootstrap = target if isinstance(target, str) else target.bootstrap
    group = fields.pop("consumerGroup", f"dts-{uuid.uuid4().hex[:8]}")
    return {
        "source": {
            "type": "DTS",
            "dts": {
                "bootstrapServers": source_bootstrap,
                "securityProtocol": "PLAINTEXT",
                "topic": topic,
                "consumerGroup": group,
            },
        },
        "target": {"bootstrapServers": target_bootstrap, "topic": target_topic},
        "startFrom": "earliest",
        **fields,
    }


@contextmanager
def accessing(
    spec: dict[str, Any], epoch: int = 0, ledger: MemoryLedger | None = None
) -> Iterator[tuple[Recorder, AccessPipeline]]:
    parsed = DataAccessTaskSpec.model_validate(spec)
    recorder = Recorder()
    pipeline = AccessPipeline(
        parsed,
        {"bootstrap.servers": parsed.source.endpoint.bootstrap_servers},
        {"bootstrap.servers": parsed.target.bootstrap_servers},
        parsed.source.consumer_group,
        recorder,
        WorkerMetrics("DataAccessTask", parsed.source.consumer_group),
        WorkerSettings(report_interval=0.5, topic_refresh_interval=1.0, session_timeout_ms=6000),
        epoch=epoch,
        resets=ledger,
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield recorder, pipeline
    finally:
        stop.set()
        join_or_explain(thread)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return [tp.offset for tp in sorted(found, key=lambda tp: tp.partition)]


def commit(bootstrap: str, group: str, topic: str, offsets: list[int]) -> None:
    """Commit offsets for a group the way a DTS consumer would have left them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in enumerate(offsets)], asynchronous=False)
    finally:
        consumer.close()


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {**metrics.labels, **labels})
    return value or 0.0


def test_records_go_partition_to_partition_keeping_key_value_headers_timestamp(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    source = topic_factory(partitions=4)
    target = topic_factory(broker=kafka2, partitions=4)
    produce_on(kafka.bootstrap, source, 400, 4, "d")
    spec = access_spec(kafka, source, kafka2, target)
    group = spec["source"]["dts"]["consumerGroup"]
    with accessing(spec) as (recorder, pipeline):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 400, timeout=60, what="400 copied")
        wait_for(lambda: recorder.last.lag == 0, timeout=30, what="lag 0")
        assert recorder.last.extra["sourcePartitions"] == recorder.last.extra["targetPartitions"] == 4
        metrics = pipeline.metrics
        assert sample(metrics, "ferry_target_records_total", topic=target) == 400
        read = sum(sample(metrics, "ferry_records_read_total", topic=source, partition=str(p)) for p in range(4))
        assert read == 400
    copied = read_all(kafka2.bootstrap, target, 400, linger=1)
    assert len(copied) == 400
    by_partition: dict[int, list[int]] = defaultdict(list)
    for m in copied:
        i = int(m.value().decode().split("v")[1])
        assert m.partition() == i % 4, "a record left its partition"
        assert m.key() == f"d-k{i}".encode()
        assert m.timestamp()[1] == 1_700_000_000_000 + i
        assert m.headers() == [("app", f"h{i}".encode())]  # exactly the source's headers
        by_partition[m.partition()].append(i)
    assert all(seq == sorted(seq) for seq in by_partition.values()), "order within a partition changed"
    assert committed(kafka.bootstrap, group, source, 4) == [100, 100, 100, 100]  # committed after the acks


def test_the_worker_joins_the_subscription_group_and_continues_from_its_offsets(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    source = topic_factory(partitions=2)
    target = topic_factory(broker=kafka2, partitions=2)
    produce_on(kafka.bootstrap, source, 20, 2, "g")  # offsets 0-9 in each partition
    spec = access_spec(kafka, source, kafka2, target)
    commit(kafka.bootstrap, spec["source"]["dts"]["consumerGroup"], source, [7, 4])
    with accessing(spec) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 9, timeout=60, what="the rest copied")
        time.sleep(1)
        assert recorder.last.totals.records == 9
    copied = read_all(kafka2.bootstrap, target, 9, linger=1)
    got = sorted((m.partition(), int(m.value().decode().split("v")[1])) for m in copied)
    expected = sorted([(0, i) for i in range(0, 20, 2)][7:] + [(1, i) for i in range(1, 20, 2)][4:])
    assert got == expected


def test_a_partition_count_mismatch_fails_with_both_counts_copies_nothing_and_heals(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    source = topic_factory(partitions=3)
    target = topic_factory(broker=kafka2, partitions=2)
    produce_on(kafka.bootstrap, source, 30, 3, "m")
    with accessing(access_spec(kafka, source, kafka2, target)) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="failure")
        error = recorder.last.error
        assert error is not None and error.reason == "PartitionCountMismatch"
        assert f"{source} has 3 partitions" in error.message and f"{target} has 2" in error.message
        assert "needs exactly 3 partitions" in error.message
        time.sleep(1.5)
        assert recorder.last.totals.records == 0
        assert read_all(kafka2.bootstrap, target, 1, timeout=2) == []
        # The owner fixes it by adding the missing partition to the target.
        from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

        admin = kafka2.admin()
        admin.create_partitions([NewPartitions(target, 3)])[target].result(15)
        wait_for(lambda: recorder.last.totals.records == 30, timeout=60, what="copied once fixed")
        assert recorder.last.error is None and recorder.last.phase == "Running"
    assert sorted(m.partition() for m in read_all(kafka2.bootstrap, target, 30)) == sorted(i % 3 for i in range(30))


@pytest.mark.parametrize("side", ["source", "target"])
def test_a_missing_topic_on_either_side_is_named(
    side: str, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    present_source = topic_factory(partitions=1)
    present_target = topic_factory(broker=kafka2, partitions=1)
    source = "no-such-source" if side == "source" else present_source
    target = "no-such-target" if side == "target" else present_target
    with accessing(access_spec(kafka, source, kafka2, target)) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="failure")
        error = recorder.last.error
    assert error is not None
    if side == "source":
        assert error.reason == "SourceTopicNotFound" and "no-such-source" in error.message
    else:
        assert error.reason == "TargetTopicNotFound" and "no-such-target" in error.message
        assert "create it with 1 partitions" in error.message


def test_an_unreachable_source_is_reported_and_the_worker_keeps_trying(kafka2: KafkaCluster) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    with accessing(access_spec(nowhere, "orders", kafka2, "orders")) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="failure")
        error = recorder.last.error
        assert error is not None and error.reason == "KafkaUnreachable" and nowhere in error.message


def test_a_sasl_source_against_a_broker_without_sasl_fails_clearly_and_keeps_trying(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """What a SASL misconfiguration looks like from the worker: a Failed report with a reason, no crash."""
    target = topic_factory(broker=kafka2, partitions=1)
    spec = access_spec(kafka, "orders", kafka2, target)
    spec["source"]["dts"].update(securityProtocol="SASL_PLAINTEXT", credentialsSecretRef={"name": "dts"})
    parsed = DataAccessTaskSpec.model_validate(spec)
    recorder = Recorder()
    pipeline = AccessPipeline(
        parsed,
        {
            "bootstrap.servers": kafka.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "dts-user",
            "sasl.password": "dts-password-never-shown",
        },
        {"bootstrap.servers": kafka2.bootstrap},
        "dts-group",
        recorder,
        WorkerMetrics("DataAccessTask", "sasl"),
        WorkerSettings(report_interval=0.5, session_timeout_ms=6000),
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=40, what="failure")
        error = recorder.last.error
        assert error is not None and error.reason == "KafkaAuthenticationFailed", error
        assert "dts-password-never-shown" not in error.message
        assert thread.is_alive()  # waiting for a fix, not crashing
    finally:
        stop.set()
        join_or_explain(thread)


def dts_manifest(
    kafka: KafkaCluster, listener: str, mechanism: str, topic: str, target: KafkaCluster, password: str
) -> list[dict[str, Any]]:
    """A DataAccessTask whose DTS endpoint is the test cluster's SASL listener, with its Secrets, for `ferry run`."""
    bootstrap = {"SASL_PLAINTEXT": kafka.sasl_plaintext_bootstrap, "SASL_SSL": kafka.sasl_ssl_bootstrap}[listener]
    user = kafka.plain_user if mechanism == "PLAIN" else kafka.scram_user
    dts: dict[str, Any] = {
        "bootstrapServers": bootstrap,
        "securityProtocol": listener,
        "saslMechanism": mechanism,
        "credentialsSecretRef": {"name": "dts-credentials"},
        "topic": topic,
        "consumerGroup": f"dts-{uuid.uuid4().hex[:8]}",
    }
    secrets: dict[str, str] = {"username": user, "password": password}
    if listener == "SASL_SSL":
        dts["tls"] = {"caSecretRef": {"name": "dts-credentials", "key": "ca.crt"}}
        secrets["ca.crt"] = kafka.ca_pem
    task = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {"name": "sasl", "namespace": "qa"},
        "spec": {
            "source": {"type": "DTS", "dts": dts},
            "target": {"bootstrapServers": target.bootstrap, "topic": topic},
            "startFrom": "earliest",
        },
    }
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dts-credentials"}, "stringData": secrets}
    return [task, secret]


def ferry_run(manifest: list[dict[str, Any]], tmp_path: Path, duration: float) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump_all(manifest))
    env = {**os.environ, "FERRY_REPORT_INTERVAL": "0.5"}
    command = [sys.executable, "-m", "ferry", "run", "-f", str(path), "--duration", str(duration)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration + 60)


@pytest.mark.parametrize(
    ("listener", "mechanism"),
    [("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "PLAIN"),
     ("SASL_SSL", "SCRAM-SHA-512")],
)  # fmt: skip
def test_a_dts_subscription_is_copied_over_sasl_from_the_secrets_of_the_manifest(
    listener: str, mechanism: str, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    topic = topic_factory(partitions=2)
    topic_factory(partitions=2, broker=kafka2, name=topic)
    produce_on(kafka.bootstrap, topic, 40, 2, "s")
    password = kafka.plain_password if mechanism == "PLAIN" else kafka.scram_password
    result = ferry_run(dts_manifest(kafka, listener, mechanism, topic, kafka2, password), tmp_path, duration=12)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "records=40" in result.stdout, result.stdout[-2000:]
    copied = read_all(kafka2.bootstrap, topic, 40, timeout=20, linger=1)
    assert sorted((m.partition(), m.value()) for m in copied) == sorted((i % 2, f"s-v{i}".encode()) for i in range(40))
    assert password not in result.stdout + result.stderr


def test_a_wrong_sasl_password_is_kafka_authentication_failed_and_never_shown(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=1)
    topic_factory(partitions=1, broker=kafka2, name=topic)
    wrong = f"wrong-{uuid.uuid4().hex}"
    result = ferry_run(dts_manifest(kafka, "SASL_PLAINTEXT", "SCRAM-SHA-512", topic, kafka2, wrong), tmp_path, 10)
    output = result.stdout + result.stderr
    assert "error=KafkaAuthenticationFailed" in result.stdout, output[-3000:]
    assert "records=0" in result.stdout
    assert wrong not in output


def test_a_target_switch_under_load_keeps_the_group_offsets_no_loss_no_duplicate(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """The worker is rolled (stopped, which flushes and commits, then started with the new target): the
    records before the switch are in the old target, the rest in the new one, each exactly once."""
    partitions = 3
    source = topic_factory(partitions=partitions)
    first, second = topic_factory(broker=kafka2, partitions=3), topic_factory(broker=kafka2, partitions=3)
    spec = access_spec(kafka, source, kafka2, first)
    enough = threading.Event()
    produced = [0]

    def produce_until_enough() -> None:
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5})
        while not enough.is_set():
            for _ in range(100):
                i = produced[0]
                producer.produce(source, value=f"v{i}".encode(), partition=i % partitions)
                produced[0] += 1
            producer.flush(10)
            time.sleep(0.05)
        assert producer.flush(30) == 0

    writer = threading.Thread(target=produce_until_enough)
    writer.start()
    try:
        with accessing(spec) as (recorder, _):
            wait_for(lambda: recorder.reports and recorder.last.totals.records > 500, timeout=60, what="copying")
        switched = {**spec, "target": {**spec["target"], "topic": second}}
        with accessing(switched) as (recorder, _):
            wait_for(lambda: recorder.reports and recorder.last.totals.records > 500, timeout=60, what="copying on")
            enough.set()
            writer.join()
            total = produced[0]
            wait_for(lambda: recorder.last.lag == 0, timeout=90, what="caught up")
            time.sleep(1)
    finally:
        enough.set()
        writer.join()
    before = read_all(kafka2.bootstrap, first, 1, timeout=10, linger=2)
    after = read_all(kafka2.bootstrap, second, total - len(before), timeout=60, linger=2)
    counts = Counter(m.value() for m in before + after)
    missing = [i for i in range(total) if f"v{i}".encode() not in counts]
    duplicates = sum(n - 1 for n in counts.values())
    print(f"target switch: {len(before)} records before, {len(after)} after, {duplicates} duplicates")
    assert not missing, f"lost {len(missing)} records, e.g. {missing[:5]}"
    assert duplicates == 0  # a graceful roll commits what it flushed
    assert before and after


def test_no_record_is_lost_when_the_worker_is_killed_at_random(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    source = topic_factory(partitions=3)
    target = topic_factory(broker=kafka2, partitions=3)
    manifest = tmp_path / "killed-access.yaml"
    body = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {"name": "killed"},
        "spec": access_spec(kafka, source, kafka2, target),
    }
    manifest.write_text(yaml.safe_dump(body))
    # No --group: `ferry run` joins the group the spec names, as the DTS subscription wants.
    result = copy_while_killing(manifest, kafka.bootstrap, source, kafka2.bootstrap, target, total=20_000, kills=5)
    print(result.summary("DataAccessTask", 5, 20_000))
    assert not result.missing, f"lost records {result.missing[:10]} (seed {result.seed})"
    assert not [m.value() for m in result.copies if int(m.value()[1:]) % 3 != m.partition()], "a record moved"
    group = body["spec"]["source"]["dts"]["consumerGroup"]
    assert f"consumer group {group}" in manifest.with_suffix(".log").read_text()


@pytest.mark.parametrize("start_from", ["latest", "earliest"])
def test_a_late_resume_moves_the_subscription_group_to_start_from_once(
    start_from: str, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    source = topic_factory(partitions=2)
    target = topic_factory(broker=kafka2, partitions=2)
    # Many records per batch: `latest` must be exact to the record, not to the batch.
    produce(kafka.bootstrap, source, 10, partitions=2)
    spec = access_spec(kafka, source, kafka2, target, startFrom=start_from)
    group = spec["source"]["dts"]["consumerGroup"]
    commit(kafka.bootstrap, group, source, [2, 3])  # saved before a pause longer than the window
    ledger = MemoryLedger(0)
    with accessing(spec, epoch=1, ledger=ledger) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.partitions, timeout=60, what="assigned")
        assert ledger.applied_epoch() == 1
        produce(kafka.bootstrap, source, 3, partitions=2, start=10)
        expected = 3 if start_from == "latest" else 13
        wait_for(lambda: recorder.last.totals.records == expected, timeout=60, what="copied from startFrom")
    values = sorted(int(m.value().decode().split("-")[1]) for m in read_all(kafka2.bootstrap, target, expected))
    assert values == ([10, 11, 12] if start_from == "latest" else list(range(13)))
    # A restart in the same epoch keeps the offsets it committed since: no second reset.
    produce(kafka.bootstrap, source, 2, partitions=2, start=13)
    with accessing(spec, epoch=1, ledger=ledger) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 2, timeout=60, what="the 2 new")
    assert committed(kafka.bootstrap, group, source, 2) == [8, 7]


def test_a_source_change_and_back_keeps_each_subscriptions_offsets(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """Switching to another subscription (its own topic and group) and back: each group resumes where it
    committed, so every record of both sources lands once, partition for partition."""
    one, two = topic_factory(partitions=2), topic_factory(partitions=2)
    target = topic_factory(broker=kafka2, partitions=2)
    first = access_spec(kafka, one, kafka2, target)
    second = access_spec(kafka, two, kafka2, target)
    produce_on(kafka.bootstrap, one, 100, 2, "one")
    produce_on(kafka.bootstrap, two, 60, 2, "two")
    with accessing(first) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 100, timeout=60, what="first source")
    produce_on(kafka.bootstrap, one, 40, 2, "one-more")  # arrives while the task reads the other source
    with accessing(second) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 60, timeout=60, what="second source")
    with accessing(first) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 40, timeout=60, what="back: the rest")
        time.sleep(1)
        assert recorder.last.totals.records == 40
    copied = read_all(kafka2.bootstrap, target, 200, linger=1)
    counts = Counter(m.value() for m in copied)
    expected = (
        [f"one-v{i}".encode() for i in range(100)]
        + [f"two-v{i}".encode() for i in range(60)]
        + [f"one-more-v{i}".encode() for i in range(40)]
    )
    assert sorted(counts) == sorted(expected) and set(counts.values()) == {1}
    assert all(int(m.value().decode().rsplit("v", 1)[1]) % 2 == m.partition() for m in copied)


def test_a_dts_topic_copied_to_the_same_cluster_spelled_otherwise_is_refused(
    kafka: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1)
    produce_on(kafka.bootstrap, topic, 50, 1, "x")
    other = kafka.bootstrap.replace("127.0.0.1", "localhost")
    with accessing(access_spec(kafka, topic, other, topic)) as (recorder, _):
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="refusal")
        time.sleep(2)
        error = recorder.last.error
        assert error is not None and error.reason == "CopyOntoItself", error
        assert recorder.last.totals.records == 0
    assert len(read_all(kafka.bootstrap, topic, 51, timeout=5)) == 50


def delete_records(broker: KafkaCluster, topic: str, before: dict[int, int]) -> None:
    """Move each partition's log start offset to `before[partition]`, as the topic's retention would (AdminClient
    DeleteRecords: deterministic and at once, where retention.ms waits for a segment to roll and be deleted)."""
    admin = broker.admin()  # must outlive the futures
    futures = admin.delete_records([TopicPartition(topic, p, offset) for p, offset in before.items()])
    for future in futures.values():
        future.result(timeout=15)


def test_saved_offsets_the_retention_deleted_are_skipped_exactly_and_reported_per_partition(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    source = topic_factory(partitions=2)
    target = topic_factory(broker=kafka2, partitions=2)
    produce(kafka.bootstrap, source, 40, partitions=2)  # 20 per partition: offsets 0-19
    spec = access_spec(kafka, source, kafka2, target, startFrom="latest")
    group = spec["source"]["dts"]["consumerGroup"]
    commit(kafka.bootstrap, group, source, [12, 5])  # where the task stopped: 8 and 15 records still unread
    delete_records(kafka, source, {0: 15, 1: 5})  # partition 0 lost 3 unread records; partition 1 none
    with accessing(spec) as (recorder, _):
        # Resumed exactly at the earliest offset still there (startFrom=latest would have jumped past them all).
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 20, timeout=60, what="the rest")
        time.sleep(1)
        last = recorder.last
        assert last.totals.records == 20
    [expired] = last.extra["expired"]
    assert {k: expired[k] for k in ("topic", "partition", "committedOffset", "earliestOffset", "records")} == {
        "topic": source,
        "partition": 0,
        "committedOffset": 12,
        "earliestOffset": 15,
        "records": 3,
    }
    copied = read_all(kafka2.bootstrap, target, 20, linger=1)
    values = sorted(int(m.value().decode().split("-")[1]) for m in copied)
    assert values == sorted([2 * i for i in range(15, 20)] + [2 * i + 1 for i in range(5, 20)])
    assert committed(kafka.bootstrap, group, source, 2) == [20, 20]
