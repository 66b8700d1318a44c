"""ObsDumpTask end to end: kubectl apply, the real operator, the worker process its Deployment describes,
a real Apache Kafka and a real SeaweedFS store, on a real control plane with the chart's operator."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BucketFactory, TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import dumped_records, list_objects, produce, spec_for, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("cluster")) as running:
        yield running


def obsdump(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def secret(
    namespace: str, store: SeaweedFS, name: str = "obs-credentials", access_key: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"accessKey": access_key or store.access_key, "secretKey": store.secret_key},
    }


def state_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    return cluster.status(namespace, name).get("state")


def test_apply_run_pause_resume_delete(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(partitions=3), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], dumpPeriodSeconds=2, target={"storeKeys": True})
    cluster.apply(secret(ns, object_store), obsdump(ns, "orders", spec))

    # The operator renders the worker Deployment, owned by the task, credentials only by reference.
    deployment = wait_for(lambda: cluster.deployment(ns, "orders-obsdumptask"), timeout=30, what="Deployment")
    task = cluster.task(ns, "orders")
    assert task is not None
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == task["metadata"]["uid"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FERRY_SECRET_TARGET_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "obs-credentials",
        "key": "secretKey",
    }
    assert object_store.secret_key not in json.dumps(deployment)

    produce(kafka.bootstrap, topic, 3000, partitions=3)
    wait_for(lambda: cluster.status(ns, "orders").get("state") == "Running", timeout=60, what="Running")
    wait_for(
        lambda: (
            cluster.status(ns, "orders").get("totals", {}).get("records") == 3000
            and cluster.status(ns, "orders").get("lag") == 0
        ),
        timeout=60,
        what="3000 records, lag 0",
    )
    status = cluster.status(ns, "orders")
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True", "Paused": "False"}
    assert status["observedGeneration"] == task["metadata"]["generation"]
    assert len(status["partitions"]) == 3 and all(p["lag"] == 0 for p in status["partitions"])
    assert status["lastDumpTime"]
    # The `ferry` category lists every task (its printed table: test_cluster_live).
    listing = cluster.kubectl("get", "ferry", "-n", ns, "-o", "jsonpath={.items[*].status.state}").stdout
    assert listing == "Running"

    # Pause: the worker flushes, commits and goes away; records produced meanwhile wait in Kafka.
    cluster.patch_spec(ns, "orders", {"state": "Paused"})
    wait_for(lambda: state_of(cluster, ns, "orders") == "Paused", timeout=60, what="Paused")
    assert cluster.status(ns, "orders")["pausedAt"]
    assert cluster.kubelet.worker_processes("orders-obsdumptask") == []
    before = list_objects(object_store.client(), bucket)
    produce(kafka.bootstrap, topic, 600, partitions=3, start=3000)
    time.sleep(5)  # more than two periods
    assert list_objects(object_store.client(), bucket) == before

    # Resume within the window: continues from the saved offsets, no gap, no duplicate.
    cluster.patch_spec(ns, "orders", {"state": "Running"})
    wait_for(lambda: state_of(cluster, ns, "orders") == "Running", timeout=60, what="Running again")
    assert cluster.status(ns, "orders").get("resumedFrom") == "savedOffsets"
    wait_for(
        lambda: sum(len(r) for r in dumped_records(object_store.client(), bucket).values()) == 3600,
        timeout=60,
        what="records after resume",
    )
    records = dumped_records(object_store.client(), bucket)
    for partition in range(3):
        assert [r.offset for r in records[(topic, partition)]] == list(range(1200))
    for reason in ("WorkerRunning", "Paused", "Resumed"):
        cluster.event(ns, "orders", reason)

    # Delete: Terminating while the worker flushes, then the task and its Deployment are gone.
    cluster.kubectl("delete", "obsdumptask", "orders", "-n", ns, "--wait=false")
    wait_for(
        lambda: state_of(cluster, ns, "orders") in ("Terminating", None), timeout=30, interval=0.05, what="Terminating"
    )
    wait_for(lambda: cluster.task(ns, "orders") is None, timeout=60, what="task deleted")
    assert cluster.deployment(ns, "orders-obsdumptask") is None
    cluster.event(ns, "orders", "Terminating")
    assert sum(len(r) for r in dumped_records(object_store.client(), bucket).values()) == 3600  # data stays


def failing(cluster: Cluster, ns: str, name: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = cluster.status(ns, name)
        return status if status.get("state") == "Failed" and status.get("reason") == reason else None

    result: dict[str, Any] = wait_for(check, timeout=60, what=f"{name} Failed with {reason}")
    return result


def test_unworkable_tasks_fail_with_a_reason_without_crash_loops_or_leaked_secrets(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(partitions=1), bucket_factory()
    wrong_key = "WRONG" + object_store.access_key[5:]
    cases = {
        "missing-secret": (
            spec_for(kafka, object_store, bucket, topics=[topic], target={"credentialsSecretRef": {"name": "absent"}}),
            "SecretNotFound",
            "absent",
        ),
        "missing-key": (
            spec_for(
                kafka,
                object_store,
                bucket,
                topics=[topic],
                target={"credentialsSecretRef": {"name": "obs-credentials", "secretKeyKey": "nope"}},
            ),
            "SecretKeyNotFound",
            "nope",
        ),
        "wrong-key": (
            spec_for(
                kafka,
                object_store,
                bucket,
                topics=[topic],
                target={"credentialsSecretRef": {"name": "wrong-credentials"}},
            ),
            "ObjectStoreAuthFailed",
            "credentialsSecretRef",
        ),
        "no-bucket": (
            spec_for(kafka, object_store, "missing-bucket", topics=[topic]),
            "BucketNotFound",
            "missing-bucket",
        ),
        "no-topic": (spec_for(kafka, object_store, bucket, topics=["not-a-topic"]), "TopicNotFound", "not-a-topic"),
        "no-broker": (
            spec_for(kafka, object_store, bucket, topics=[topic], source={"bootstrapServers": "127.0.0.1:9"}),
            "KafkaUnreachable",
            "127.0.0.1:9",
        ),
        "bad-regex": (
            spec_for(kafka, object_store, bucket, topicRegex="orders-(["),
            "InvalidSpec",
            "not a valid regular expression",
        ),
    }
    cluster.apply(
        secret(ns, object_store),
        secret(ns, object_store, "wrong-credentials", access_key=wrong_key),
        *[obsdump(ns, name, spec) for name, (spec, _, _) in cases.items()],
    )
    for name, (_, reason, hint) in cases.items():
        status = failing(cluster, ns, name, reason)
        assert hint in status["message"], status["message"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == reason
        cluster.event(ns, name, reason, "Warning")
    time.sleep(3)
    pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout
    assert all(
        cs.get("restartCount", 0) == 0
        for pod in json.loads(pods)["items"]
        for cs in pod.get("status", {}).get("containerStatuses", [])
    ), "a worker restarted"
    # No secret value anywhere a user or an operator of the cluster can read.
    leaks = [
        object_store.secret_key,
        object_store.access_key,
        wrong_key,
        base64.b64encode(object_store.secret_key.encode()).decode(),
    ]
    exposed = [
        cluster.operator_output(),
        json.dumps([cluster.events(ns, n) for n in cases]),
        json.dumps([cluster.status(ns, n) for n in cases]),
    ]
    exposed += [p.read_text(errors="replace") for p in cluster.kubelet.workdir.rglob("*.log")]
    for text in exposed:
        for value in leaks:
            assert value not in text


def test_resume_after_the_window_starts_from_start_from_and_says_so(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(partitions=1), bucket_factory()
    spec = spec_for(
        kafka, object_store, bucket, topics=[topic], startFrom="latest", resumeWindow="3s", target={"storeKeys": True}
    )
    cluster.apply(secret(ns, object_store), obsdump(ns, "late", spec))
    wait_for(lambda: cluster.status(ns, "late").get("partitions"), timeout=60, what="partitions assigned")
    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(lambda: cluster.status(ns, "late").get("totals", {}).get("records") == 10, timeout=30, what="first 10")
    group = cluster.status(ns, "late")["consumerGroup"]

    cluster.patch_spec(ns, "late", {"state": "Paused"})
    wait_for(lambda: state_of(cluster, ns, "late") == "Paused", timeout=60, what="Paused")
    # Skipped: the pause outlives the window.
    produce(kafka.bootstrap, topic, 10, partitions=1, start=10)
    time.sleep(4)
    cluster.patch_spec(ns, "late", {"state": "Running"})
    wait_for(lambda: cluster.status(ns, "late").get("resumedFrom") == "startFrom", timeout=30, what="late resume")
    status = cluster.status(ns, "late")
    assert status["offsetEpoch"] == 1 and status["consumerGroup"] == f"{group}.e1"
    event = cluster.event(ns, "late", "ResumedFromStartFrom")
    assert "longer than the resume window 3s" in event["message"] and "startFrom=latest" in event["message"]
    wait_for(
        lambda: state_of(cluster, ns, "late") == "Running" and cluster.status(ns, "late").get("partitions"),
        timeout=60,
        what="Running in the new group",
    )
    assert all(w["epoch"] == 1 for w in cluster.status(ns, "late")["workers"].values())
    produce(kafka.bootstrap, topic, 10, partitions=1, start=20)
    wait_for(
        lambda: sum(len(r) for r in dumped_records(object_store.client(), bucket).values()) == 20,
        timeout=30,
        what="records after the late resume",
    )
    offsets = [r.offset for r in dumped_records(object_store.client(), bucket)[(topic, 0)]]
    assert offsets == list(range(10)) + list(range(20, 30))


def test_a_long_pause_resumes_from_the_saved_offsets_and_says_how_many_records_expired(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    """No resumeWindow (the OBS-dump manual: a resume continues where the task paused): a pause longer than the
    3s window of the test above resumes in the same consumer group from the saved offsets, and the records the
    retention deleted meanwhile are counted exactly."""
    from tests.test_dataaccess_worker import delete_records

    ns, topic, bucket = cluster.namespace(), topic_factory(partitions=1), bucket_factory()
    spec = spec_for(kafka, object_store, bucket, topics=[topic], startFrom="latest", target={"storeKeys": True})
    cluster.apply(secret(ns, object_store), obsdump(ns, "paused", spec))
    wait_for(lambda: cluster.status(ns, "paused").get("partitions"), timeout=60, what="partitions assigned")
    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(lambda: cluster.status(ns, "paused").get("totals", {}).get("records") == 10, timeout=30, what="first 10")
    group = cluster.status(ns, "paused")["consumerGroup"]

    cluster.patch_spec(ns, "paused", {"state": "Paused"})
    wait_for(lambda: state_of(cluster, ns, "paused") == "Paused", timeout=60, what="Paused")
    produce(kafka.bootstrap, topic, 20, partitions=1, start=10)  # offsets 10-29, unread
    delete_records(kafka, topic, {0: 17})  # the retention takes 7 of them before the resume
    time.sleep(4)
    cluster.patch_spec(ns, "paused", {"state": "Running"})
    wait_for(lambda: cluster.status(ns, "paused").get("resumedFrom") == "savedOffsets", timeout=30, what="resumed")
    status = cluster.status(ns, "paused")
    assert status["offsetEpoch"] == 0 and status["consumerGroup"] == group
    assert cluster.event(ns, "paused", "Resumed")["message"].endswith(
        "resumed (no resumeWindow set) from the saved offsets"
    )
    wait_for(lambda: cluster.status(ns, "paused").get("recordsExpired") == 7, timeout=60, what="7 records expired")
    event = cluster.event(ns, "paused", "RecordsExpired", "Warning")
    skipped = "7 records were deleted by the topic's retention before the task read them, and are skipped"
    assert f"{skipped}: {topic}[0] 7 (saved offset 10, earliest 17)" in event["message"]
    wait_for(
        lambda: sum(len(r) for r in dumped_records(object_store.client(), bucket).values()) == 23,
        timeout=30,
        what="the records the retention left",
    )
    offsets = [r.offset for r in dumped_records(object_store.client(), bucket)[(topic, 0)]]
    assert offsets == list(range(10)) + list(range(17, 30))
