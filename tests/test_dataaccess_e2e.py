"""DataAccessTask end to end: kubectl apply, the chart's operator on a real control plane, the worker its
Deployment describes (run by the process kubelet with the Secrets resolved), one Apache Kafka playing the DTS
endpoint over its default SASL_PLAINTEXT with SCRAM-SHA-512, another the target instance."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.conftest import TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.copies import read_all
from tests.support.dumps import wait_for
from tests.support.kafka import KafkaCluster
from tests.test_dataaccess_worker import access_spec


def manifests(namespace: str, name: str, spec: dict[str, Any], kafka: KafkaCluster) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "dts-account", "namespace": namespace},
            "stringData": {"username": kafka.scram_user, "password": kafka.scram_password},
        },
        {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "DataAccessTask",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
    ]


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("access-cluster")) as running:
        yield running


def test_apply_switch_the_target_under_load_pause_resume_and_delete(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns = cluster.namespace()
    source = topic_factory(partitions=2)
    first, second = topic_factory(broker=kafka2, partitions=2), topic_factory(broker=kafka2, partitions=2)
    spec = access_spec(kafka, source, kafka2, first)
    # The DTS defaults: SASL_PLAINTEXT with SCRAM-SHA-512, the credentials from the Secret by secretKeyRef.
    dts = spec["source"]["dts"]
    del dts["securityProtocol"]
    dts.update(bootstrapServers=kafka.sasl_plaintext_bootstrap, credentialsSecretRef={"name": "dts-account"})
    group = dts["consumerGroup"]
    cluster.apply(*manifests(ns, "pull", spec, kafka))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "pull", plural="dataaccesstasks")

    wait_for(lambda: status().get("state") == "Running", timeout=90, what="Running")
    assert status()["consumerGroup"] == group
    assert (status()["sourcePartitions"], status()["targetPartitions"]) == (2, 2)
    assert (status()["sourceClusterId"], status()["targetClusterId"]) == (kafka.cluster_id, kafka2.cluster_id)

    enough, produced = threading.Event(), [0]

    def produce_until_enough() -> None:
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5})
        while not enough.is_set():
            for _ in range(50):
                producer.produce(source, value=f"v{produced[0]}".encode(), partition=produced[0] % 2)
                produced[0] += 1
            producer.flush(10)
            time.sleep(0.1)
        assert producer.flush(30) == 0

    writer = threading.Thread(target=produce_until_enough)
    writer.start()
    try:
        wait_for(lambda: (status().get("totals") or {}).get("records", 0) > 300, timeout=60, what="copying")
        cluster.kubectl("patch", "dataaccesstask", "pull", "-n", ns, "--type", "merge", "-p", _target(second))
        cluster.event(ns, "pull", "SpecChanged", timeout=30)
        wait_for(lambda: read_all(kafka2.bootstrap, second, 200, timeout=5), timeout=120, what="into the new target")
    finally:
        enough.set()
        writer.join()
    total = produced[0]
    [changed] = [e for e in cluster.events(ns, "pull") if e["reason"] == "SpecChanged"]
    assert f"spec.target.topic: {first} -> {second}" in changed["message"] and group in changed["message"]

    def delivered() -> Counter[bytes]:
        before = read_all(kafka2.bootstrap, first, 1, timeout=5, linger=1)
        after = read_all(kafka2.bootstrap, second, 1, timeout=5, linger=1)
        return Counter(m.value() for m in before + after)

    wait_for(lambda: len(delivered()) == total, timeout=120, what="every record delivered")
    counts = delivered()
    duplicates = sum(n - 1 for n in counts.values())
    print(f"e2e target switch: {total} records, {duplicates} duplicates")
    assert set(counts) == {f"v{i}".encode() for i in range(total)}
    assert duplicates == 0  # the old worker flushed and committed before the new one started (Recreate)

    cluster.patch_spec(ns, "pull", {"state": "Paused"}, plural="dataaccesstasks")
    wait_for(lambda: status().get("state") == "Paused" and status().get("pausedAt"), timeout=60, what="Paused")
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for i in range(total, total + 20):
        producer.produce(source, value=f"v{i}".encode(), partition=i % 2)
    assert producer.flush(10) == 0
    cluster.patch_spec(ns, "pull", {"state": "Running"}, plural="dataaccesstasks")
    wait_for(lambda: status().get("resumedFrom") == "savedOffsets", timeout=30, what="resumed")
    wait_for(lambda: len(delivered()) == total + 20, timeout=90, what="the 20 sent while paused")

    # The worker's identity: its own ServiceAccount, bound to a Role over this task's status only.
    deployment = cluster.deployment(ns, "pull-dataaccesstask")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "pull-dataaccesstask"
    from kubernetes import client

    role = client.RbacAuthorizationV1Api(cluster.api_client).read_namespaced_role("pull-dataaccesstask", ns)
    assert [(r.resources, r.resource_names, r.verbs) for r in role.rules] == [
        (["dataaccesstasks/status"], ["pull"], ["get", "patch"])
    ]

    # The password went to the worker by secretKeyRef only: not in status, Events or either log.
    password = kafka.scram_password
    assert password not in str(cluster.task(ns, "pull", plural="dataaccesstasks"))
    assert password not in str(cluster.events(ns, "pull"))
    assert password not in cluster.operator_output()
    assert password not in "".join(p.read_text(errors="replace") for p in cluster.kubelet.workdir.rglob("*.log"))

    cluster.kubectl("delete", "dataaccesstask", "pull", "-n", ns)
    wait_for(lambda: cluster.task(ns, "pull", plural="dataaccesstasks") is None, timeout=60, what="deleted")
    assert cluster.deployment(ns, "pull-dataaccesstask") is None
    assert len(delivered()) == total + 20  # delivered data stays


def _target(topic: str) -> str:
    import json

    return json.dumps({"spec": {"target": {"topic": topic}}})


def test_a_partition_mismatch_is_failed_with_both_counts(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns = cluster.namespace()
    source, target = topic_factory(partitions=3), topic_factory(broker=kafka2, partitions=1)
    cluster.apply(*manifests(ns, "mismatch", access_spec(kafka, source, kafka2, target), kafka))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "mismatch", plural="dataaccesstasks")

    wait_for(lambda: status().get("reason") == "PartitionCountMismatch", timeout=90, what="PartitionCountMismatch")
    assert status()["state"] == "Failed"
    assert "has 3 partitions" in status()["message"] and "has 1" in status()["message"]
    ready = next(c for c in status()["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PartitionCountMismatch")
    cluster.event(ns, "mismatch", "PartitionCountMismatch", "Warning")
    time.sleep(2)
    assert cluster.kubelet is not None
    restarts = [p.restarts for p in cluster.kubelet.worker_processes("mismatch-dataaccesstask")]
    assert restarts and all(r == 0 for r in restarts), "a Failed task waits for a fix instead of crash-looping"


def test_a_long_pause_resumes_from_the_saved_offsets_and_says_how_many_records_expired(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """No resumeWindow (the DataHub manual: a resume continues where the task paused, whatever the pause length):
    a pause longer than TopicSync's shortened window in tests/test_topicsync_e2e.py resumes from the saved offsets,
    the subscription group's offsets untouched, and records the retention deleted meanwhile are counted exactly."""
    from tests.support.dumps import produce
    from tests.test_dataaccess_worker import committed, delete_records

    ns = cluster.namespace()
    source, target = topic_factory(partitions=2), topic_factory(broker=kafka2, partitions=2)
    spec = access_spec(kafka, source, kafka2, target, startFrom="latest")
    group = spec["source"]["dts"]["consumerGroup"]
    cluster.apply(*manifests(ns, "resume", spec, kafka))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "resume", plural="dataaccesstasks")

    def values() -> list[int]:
        records = read_all(kafka2.bootstrap, target, 10**6, timeout=2)
        return sorted(int(m.value().decode().split("-")[1]) for m in records)

    wait_for(lambda: status().get("state") == "Running" and status().get("partitions"), timeout=90, what="Running")
    produce(kafka.bootstrap, source, 40, partitions=2)  # offsets 0-19 in each partition
    wait_for(lambda: (status().get("totals") or {}).get("records") == 40, timeout=60, what="first 40")
    cluster.patch_spec(ns, "resume", {"state": "Paused"}, plural="dataaccesstasks")
    wait_for(lambda: status().get("state") == "Paused", timeout=60, what="Paused")
    assert committed(kafka.bootstrap, group, source, 2) == [20, 20]
    produce(kafka.bootstrap, source, 40, partitions=2, start=40)  # offsets 20-39, unread
    delete_records(kafka, source, {0: 30, 1: 23})  # retention takes 10 and 3 of them before the resume
    time.sleep(3)  # longer than the 2s window the TopicSync test sets
    cluster.patch_spec(ns, "resume", {"state": "Running"}, plural="dataaccesstasks")
    wait_for(lambda: status().get("resumedFrom") == "savedOffsets", timeout=30, what="resumed")
    assert status()["offsetEpoch"] == 0 and "offsetResetEpoch" not in status()  # the group was not moved
    wait_for(lambda: status().get("recordsExpired") == 13, timeout=60, what="13 records expired")
    event = cluster.event(ns, "resume", "RecordsExpired", "Warning")
    assert event["message"].startswith("13 records were deleted by the topic's retention before the task read them")
    assert f"{source}[0] 10 (saved offset 20, earliest 30)" in event["message"]
    assert f"{source}[1] 3 (saved offset 20, earliest 23)" in event["message"]
    assert sorted((e["partition"], e["records"]) for e in status()["expired"]) == [(0, 10), (1, 3)]
    # From the earliest offsets still there, not from startFrom=latest: every record left is copied, once.
    expected = sorted([*range(40), *(2 * i for i in range(30, 40)), *(2 * i + 1 for i in range(23, 40))])
    wait_for(lambda: values() == expected, timeout=60, what="the records the retention left")
    time.sleep(2)
    assert [e["reason"] for e in cluster.events(ns, "resume")].count("RecordsExpired") == 1
    assert status()["recordsExpired"] == 13
