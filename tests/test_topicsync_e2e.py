"""TopicSync end to end: kubectl apply, the chart's operator on a real control plane, the worker its Deployment
describes, two Apache Kafka clusters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from ferry.control.render import deployed_spec

from tests.conftest import TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.copies import read_all
from tests.support.dumps import produce, wait_for
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
    # Records stamped now: the target topic's 7-day retention would delete a segment of records stamped in
    # 2023 (produce_on's) at the broker's next retention check, once the segment rolls.
    produce(kafka.bootstrap, topic, 100, partitions=2)
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
    produce(kafka.bootstrap, topic, 30, partitions=1)  # stamped now (see above)

    def status() -> dict[str, object]:
        return cluster.status(ns, "paused", plural="topicsyncs")

    wait_for(lambda: (status().get("totals") or {}).get("records") == 30, timeout=90, what="first 30")
    cluster.patch_spec(ns, "paused", {"state": "Paused"}, plural="topicsyncs")
    wait_for(lambda: status().get("state") == "Paused", timeout=60, what="Paused")
    produce(kafka.bootstrap, topic, 20, partitions=1, start=30)
    cluster.patch_spec(ns, "paused", {"state": "Running"}, plural="topicsyncs")
    wait_for(lambda: status().get("resumedFrom") == "savedOffsets", timeout=30, what="resumed")
    copied = read_all(kafka2.bootstrap, f"a.{topic}", 50, timeout=60, linger=2)
    assert sorted(int(m.value().decode().split("-")[1]) for m in copied) == list(range(50))


def test_resume_after_the_window_starts_from_start_from(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
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


def test_a_change_naming_a_missing_secret_keeps_the_old_sync_copying_until_the_secret_exists(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    target_topic = f"a.{topic}"
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    cluster.apply(manifest(ns, "switch", spec))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "switch", plural="topicsyncs")

    def copied() -> list[int]:
        """Every record in the target topic so far (read for 2 s)."""
        records = read_all(kafka2.bootstrap, target_topic, 10**6, timeout=2)
        return sorted(int(m.value().decode().split("-")[1]) for m in records)

    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(lambda: len(copied()) == 10 and status().get("state") == "Running", timeout=90, what="first 10")
    # The target moves to its SASL listener, with credentials from a Secret that does not exist yet.
    sasl_target = {
        "bootstrapServers": kafka2.sasl_plaintext_bootstrap,
        "instanceId": "b",
        "securityProtocol": "SASL_PLAINTEXT",
        "saslMechanism": "SCRAM-SHA-512",
        "credentialsSecretRef": {"name": "dr-account"},
    }
    cluster.patch_spec(ns, "switch", {"target": sasl_target}, plural="topicsyncs")
    wait_for(lambda: status().get("reason") == "SecretNotFound", timeout=30, what="SecretNotFound")
    held = status()
    assert held["state"] == "Failed"
    assert (
        "Secret 'dr-account' (for target_sasl_password) does not exist in this namespace: create it"
        in (held["message"])
    )
    assert "until then the workers keep running the last accepted spec" in held["message"]
    assert f"spec.target.bootstrapServers: {kafka2.bootstrap} -> {kafka2.sasl_plaintext_bootstrap}" in held["message"]
    assert cluster.event(ns, "switch", "SecretNotFound", "Warning")
    # The old spec keeps copying: records produced now arrive, through the old (PLAINTEXT) listener.
    produce(kafka.bootstrap, topic, 10, partitions=1, start=10)
    wait_for(lambda: len(copied()) == 20, timeout=60, what="copied by the old spec while Failed")
    assert status()["reason"] == "SecretNotFound"
    deployment = cluster.deployment(ns, "switch-topicsync")
    assert deployment is not None and deployment["spec"]["replicas"] == 1
    assert deployed_spec(deployment)["target"]["bootstrapServers"] == kafka2.bootstrap  # type: ignore[index]
    assert not [e for e in cluster.events(ns, "switch") if e["reason"] == "SpecChanged"]
    # The Secret is created: the new spec rolls out and copies through the SASL listener.
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "dr-account", "namespace": ns},
            "stringData": {"username": kafka2.scram_user, "password": kafka2.scram_password},
        }
    )
    changed = cluster.event(ns, "switch", "SpecChanged", timeout=60)
    assert (
        f"spec.target.bootstrapServers: {kafka2.bootstrap} -> {kafka2.sasl_plaintext_bootstrap}" in (changed["message"])
    )

    def rolled_out() -> bool:
        running = cluster.deployment(ns, "switch-topicsync")
        target = (deployed_spec(running) or {}).get("target") or {}
        return target.get("bootstrapServers") == kafka2.sasl_plaintext_bootstrap and status().get("state") == "Running"

    wait_for(rolled_out, timeout=90, what="the new spec running")
    produce(kafka.bootstrap, topic, 10, partitions=1, start=20)
    wait_for(lambda: len(copied()) >= 30, timeout=60, what="copied by the new spec")
    assert set(copied()) == set(range(30))
    # The cluster id learned again from the new spec's workers (cleared when the target moved to other brokers).
    wait_for(lambda: status().get("targetClusterId") == kafka2.cluster_id, timeout=30, what="the target's cluster id")
