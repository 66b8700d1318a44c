"""A change to a running task's target, checked by a Job before it rolls out, on the real control plane with the
chart's operator, real workers and two real Kafka clusters: a target topic that does not exist, refused credentials
and brokers that do not answer each leave the old configuration running (the same pods, still copying), the task
Failed with the reason; creating the topic rolls the change out by itself, and reverting it clears the failure."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import produce, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import free_port
from tests.test_dataaccess_worker import access_spec
from tests.test_day_two_live import copied_values
from tests.test_operations_live import reporting, task, worker_pods
from tests.test_topicsync_worker import sync_spec

WAIT = 90  # seconds: 2 cores, and other test runs may share them


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("spec-check-cluster")) as running:
        yield running


def deployed(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    """The spec the worker Deployment runs (its FERRY_TASK)."""
    from ferry.control.render import deployed_spec

    return deployed_spec(cluster.deployment(ns, name)) or {}


def check_jobs(cluster: Cluster, ns: str) -> list[Any]:
    return list(
        client.BatchV1Api(cluster.api_client)
        .list_namespaced_job(ns, label_selector="app.kubernetes.io/name=ferry-spec-check")
        .items
    )


def running_sync(cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic: str, ns: str) -> dict[str, str]:
    """A TopicSync `mirror` copying `topic` to `a.<topic>`, with its first 10 records copied: its worker pods."""
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    cluster.apply(task("TopicSync", ns, "mirror", spec))
    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(
        lambda: (
            cluster.status(ns, "mirror", "topicsyncs").get("state") == "Running"
            and len(copied_values(kafka2.bootstrap, f"a.{topic}")) == 10
        ),
        WAIT,
        what="the first 10 copied",
    )
    pods = worker_pods(cluster, ns, "TopicSync", "mirror")
    assert len(pods) == 1
    return pods


def test_a_target_topic_that_does_not_exist_keeps_the_old_target_until_it_is_created(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    pods = running_sync(cluster, kafka, kafka2, topic, ns)
    worker = "mirror-topicsync"

    def status() -> dict[str, Any]:
        return cluster.status(ns, "mirror", "topicsyncs")

    cluster.patch_spec(ns, "mirror", {"targetTopicName": "moved.{topic}", "createTopics": False}, "topicsyncs")
    wait_for(lambda: status().get("reason") == "TargetTopicNotFound", WAIT, what="the check's TargetTopicNotFound")
    failed = status()
    assert failed["state"] == "Failed"
    message = failed["message"]
    expected = f"the new spec's check failed: topics moved.{topic} do not exist on {kafka2.bootstrap} and createTopics"
    assert message.startswith(expected), message
    assert "until then the workers keep running the last accepted spec (not applied: " in message, message
    assert failed["specCheck"]["result"] == "Failed" and failed["specCheck"]["reason"] == "TargetTopicNotFound"
    cluster.event(ns, "mirror", "CheckingSpec", "Normal")
    cluster.event(ns, "mirror", "TargetTopicNotFound", "Warning")
    # The old configuration keeps running: the same pod, the old target, still copying.
    assert deployed(cluster, ns, worker)["targetTopicName"] == "{source}.{topic}"
    assert worker_pods(cluster, ns, "TopicSync", "mirror") == pods
    produce(kafka.bootstrap, topic, 10, partitions=1, start=10)
    wait_for(lambda: len(copied_values(kafka2.bootstrap, f"a.{topic}")) == 20, WAIT, what="20 copied the old way")
    jobs = check_jobs(cluster, ns)
    assert jobs and all(j.metadata.owner_references[0].name == "mirror" for j in jobs)

    # The missing topic created: the next attempt (every 3 s here) passes, and the change rolls out.
    topic_factory(broker=kafka2, partitions=1, name=f"moved.{topic}")

    def rolled_out() -> bool:
        """The new spec deployed, and its own worker (not the old one, still reporting while it flushes) reports."""
        new = worker_pods(cluster, ns, "TopicSync", "mirror")
        moved = deployed(cluster, ns, worker).get("targetTopicName") == "moved.{topic}"
        return moved and bool(new) and set(new).isdisjoint(pods) and reporting(cluster, ns, "mirror", "topicsyncs", new)

    wait_for(rolled_out, WAIT, what="the change rolled out and its worker reporting")
    assert status()["specCheck"]["result"] == "Passed"
    cluster.event(ns, "mirror", "SpecCheckPassed", "Normal")
    produce(kafka.bootstrap, topic, 10, partitions=1, start=20)
    wait_for(lambda: len(copied_values(kafka2.bootstrap, f"moved.{topic}")) >= 10, WAIT, what="10 in the new target")
    # The new workers went on from where the old ones committed: the next 10, once each, and nothing more.
    assert copied_values(kafka2.bootstrap, f"moved.{topic}") == list(range(20, 30))
    assert copied_values(kafka2.bootstrap, f"a.{topic}") == list(range(20))


def test_refused_credentials_and_silent_brokers_are_held_back_and_a_revert_clears_them(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    password = "not-the-password-4711"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "wrong", "namespace": ns},
            "stringData": {"username": kafka2.scram_user, "password": password},
        }
    )
    pods = running_sync(cluster, kafka, kafka2, topic, ns)
    original = copy.deepcopy((cluster.task(ns, "mirror", "topicsyncs") or {})["spec"]["target"])

    def status() -> dict[str, Any]:
        return cluster.status(ns, "mirror", "topicsyncs")

    sasl = {
        "bootstrapServers": kafka2.sasl_plaintext_bootstrap,
        "securityProtocol": "SASL_PLAINTEXT",
        "saslMechanism": "SCRAM-SHA-512",
        "credentialsSecretRef": {"name": "wrong"},
    }
    cluster.patch_spec(ns, "mirror", {"target": sasl}, "topicsyncs")
    wait_for(lambda: status().get("reason") == "KafkaAuthenticationFailed", WAIT, what="KafkaAuthenticationFailed")
    failed = status()
    assert failed["state"] == "Failed" and "the workers keep running the last accepted spec" in failed["message"]
    assert worker_pods(cluster, ns, "TopicSync", "mirror") == pods
    produce(kafka.bootstrap, topic, 5, partitions=1, start=10)
    wait_for(lambda: len(copied_values(kafka2.bootstrap, f"a.{topic}")) == 15, WAIT, what="15 copied the old way")
    # The password is in no status, Event or log line the operator or the check wrote.
    shown = str(failed) + str(cluster.events(ns, "mirror")) + cluster.operator_output()
    assert password not in shown

    # Brokers that do not answer: held back the same way (a free port nothing listens on).
    silent = {"bootstrapServers": f"127.0.0.1:{free_port()}", "instanceId": "b"}
    cluster.kubectl(
        "patch", "topicsync", "mirror", "-n", ns, "--type=json", "-p",
        f'[{{"op": "replace", "path": "/spec/target", "value": {json_of(silent)}}}]',
    )  # fmt: skip
    wait_for(lambda: status().get("reason") == "KafkaUnreachable", WAIT, what="KafkaUnreachable")
    assert worker_pods(cluster, ns, "TopicSync", "mirror") == pods
    assert deployed(cluster, ns, "mirror-topicsync")["target"]["bootstrapServers"] == kafka2.bootstrap

    # Reverted: no check, the failure cleared, Running with the same workers.
    cluster.kubectl(
        "patch", "topicsync", "mirror", "-n", ns, "--type=json", "-p",
        f'[{{"op": "replace", "path": "/spec/target", "value": {json_of(original)}}}]',
    )  # fmt: skip
    wait_for(lambda: status().get("state") == "Running", WAIT, what="Running again")
    assert "specCheck" not in status()
    assert worker_pods(cluster, ns, "TopicSync", "mirror") == pods


def json_of(value: Any) -> str:
    import json

    return json.dumps(value)


def test_a_data_access_task_keeps_its_target_until_the_new_one_exists(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, source = cluster.namespace(), topic_factory(partitions=2)
    target = topic_factory(broker=kafka2, partitions=2)
    cluster.apply(task("DataAccessTask", ns, "pull", access_spec(kafka, source, kafka2, target)))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "pull", "dataaccesstasks")

    produce(kafka.bootstrap, source, 10, partitions=2)
    wait_for(
        lambda: status().get("state") == "Running" and len(copied_values(kafka2.bootstrap, target)) == 10,
        WAIT,
        what="the first 10 copied",
    )
    pods = worker_pods(cluster, ns, "DataAccessTask", "pull")
    moved = f"{target}-new"
    cluster.patch_spec(
        ns, "pull", {"target": {"bootstrapServers": kafka2.bootstrap, "topic": moved}}, "dataaccesstasks"
    )
    wait_for(lambda: status().get("reason") == "TargetTopicNotFound", WAIT, what="TargetTopicNotFound")
    message = status()["message"]
    assert f"topic {moved} does not exist on {kafka2.bootstrap}: create it with 2 partitions" in message, message
    assert worker_pods(cluster, ns, "DataAccessTask", "pull") == pods
    produce(kafka.bootstrap, source, 10, partitions=2, start=10)
    wait_for(lambda: len(copied_values(kafka2.bootstrap, target)) == 20, WAIT, what="20 copied to the old target")

    # Created with the wrong partition count: still held back, now for that.
    topic_factory(broker=kafka2, partitions=1, name=moved)
    wait_for(lambda: status().get("reason") == "PartitionCountMismatch", WAIT, what="PartitionCountMismatch")
    assert worker_pods(cluster, ns, "DataAccessTask", "pull") == pods
    assert deployed(cluster, ns, "pull-dataaccesstask")["target"]["topic"] == target
