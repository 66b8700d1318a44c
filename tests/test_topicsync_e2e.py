"""TopicSync end to end: kubectl apply, the chart's operator on a real control plane, the worker its Deployment
describes, two Apache Kafka clusters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.copies import produce_on, read_all
from tests.support.dumps import wait_for
from tests.support.kafka import KafkaCluster
from tests.test_topicsync_worker import sync_spec


def manifest(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("sync-cluster")) as running:
        yield running


def test_apply_a_topic_sync_and_watch_it_copy(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=2)
    produce_on(kafka.bootstrap, topic, 100, 2, "e2e")
    sync = manifest(
        ns, "mirror", sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    )
    cluster.apply(sync)

    def status() -> dict[str, object]:
        return cluster.status(ns, "mirror", plural="topicsyncs")

    wait_for(
        lambda: (
            status().get("state") == "Running"
            and status().get("lag") == 0
            and (status().get("totals") or {}).get("records") == 100
        ),
        timeout=90,
        what="Running, all copied",
    )
    assert status()["topicCount"] == 1
    # The clusters as their brokers named themselves to the worker: what loop detection compares.
    assert (status()["sourceClusterId"], status()["targetClusterId"]) == (kafka.cluster_id, kafka2.cluster_id)
    assert len(read_all(kafka2.bootstrap, f"a.{topic}", 100)) == 100

    cluster.kubectl("delete", "topicsync", "mirror", "-n", ns)
    wait_for(lambda: cluster.task(ns, "mirror", plural="topicsyncs") is None, timeout=60, what="deleted")
    assert len(read_all(kafka2.bootstrap, f"a.{topic}", 100)) == 100  # the copied data stays


def test_pause_and_resume_within_the_window_continue_from_saved_offsets(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    sync = manifest(
        ns, "paused", sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    )
    cluster.apply(sync)
    produce_on(kafka.bootstrap, topic, 30, 1, "one")

    def status() -> dict[str, object]:
        return cluster.status(ns, "paused", plural="topicsyncs")

    wait_for(lambda: (status().get("totals") or {}).get("records") == 30, timeout=90, what="first 30")
    cluster.patch_spec(ns, "paused", {"state": "Paused"}, plural="topicsyncs")
    wait_for(lambda: status().get("state") == "Paused", timeout=60, what="Paused")
    produce_on(kafka.bootstrap, topic, 20, 1, "two")
    cluster.patch_spec(ns, "paused", {"state": "Running"}, plural="topicsyncs")
    wait_for(lambda: status().get("resumedFrom") == "savedOffsets", timeout=30, what="resumed")
    copied = read_all(kafka2.bootstrap, f"a.{topic}", 50, timeout=60, linger=2)
    values = sorted(m.value() for m in copied)
    assert values == sorted([f"one-v{i}".encode() for i in range(30)] + [f"two-v{i}".encode() for i in range(20)])


def test_resume_after_the_window_starts_from_start_from(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    from tests.support.dumps import produce

    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    sync = manifest(
        ns,
        "late",
        sync_spec(
            kafka, kafka2, topics=[topic], startFrom="latest", resumeWindow="2s", targetTopicName="{source}.{topic}"
        ),
    )
    cluster.apply(sync)

    def status() -> dict[str, Any]:
        return cluster.status(ns, "late", plural="topicsyncs")

    wait_for(lambda: status().get("state") == "Running" and status().get("partitions"), timeout=90, what="Running")
    produce(kafka.bootstrap, topic, 5, partitions=1)
    wait_for(lambda: (status().get("totals") or {}).get("records") == 5, timeout=60, what="first 5")
    cluster.patch_spec(ns, "late", {"state": "Paused"}, plural="topicsyncs")
    wait_for(lambda: status().get("state") == "Paused", timeout=60, what="Paused")
    # Many records per batch: `latest` must be exact to the record, not to the batch.
    produce(kafka.bootstrap, topic, 5, partitions=1, start=5)
    time.sleep(3)
    cluster.patch_spec(ns, "late", {"state": "Running"}, plural="topicsyncs")
    wait_for(lambda: status().get("resumedFrom") == "startFrom", timeout=30, what="late resume")
    assert status()["offsetEpoch"] == 1
    wait_for(
        lambda: (
            status().get("state") == "Running"
            and status().get("partitions")
            and all(w.get("epoch") == 1 for w in status()["workers"].values())
        ),
        timeout=90,
        what="new group",
    )
    time.sleep(1)
    produce(kafka.bootstrap, topic, 5, partitions=1, start=10)
    copied = read_all(kafka2.bootstrap, f"a.{topic}", 10, timeout=60, linger=2)
    assert sorted(int(m.value().decode().split("-")[1]) for m in copied) == [*range(5), *range(10, 15)]
