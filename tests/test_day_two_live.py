"""Day two on the real control plane, with the chart's operator and real workers: a Secret deleted under a running
task (every kind: the workers keep running the configuration, the task is Failed with the reason until the Secret
is back), and long pauses (the pause's start moved back through the status subresource, as the clock would have
moved it): a TopicSync paused past its default 24 h window starts again from startFrom, one paused 23 h resumes
from its saved offsets and counts what the retention deleted meanwhile, and a DataAccessTask or ObsDumpTask paused
for 30 days resumes from its saved offsets (no window by default); and a throughput cap held by two worker pods
after `kubectl scale`, measured on the target."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import BucketFactory, TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.copies import read_all
from tests.support.dumps import dumped_records, produce, spec_for, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_dataaccess_worker import access_spec, delete_records
from tests.test_obsdump_e2e import secret as obs_secret
from tests.test_operations_live import task, worker_pods
from tests.test_topicsync_worker import sync_spec

WAIT = 90  # seconds: 2 cores, and other test runs may share them
PLURALS = {"TopicSync": "topicsyncs", "DataAccessTask": "dataaccesstasks", "ObsDumpTask": "obsdumptasks"}


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("day-two-cluster")) as running:
        yield running


def copied_values(bootstrap: str, topic: str) -> list[int]:
    """The numbers of the records `produce` wrote (`value-<i>`) found in a target topic, sorted (read for 2 s)."""
    return sorted(int(m.value().decode().split("-")[1]) for m in read_all(bootstrap, topic, 10**6, timeout=2))


def dumped_offsets(store: SeaweedFS, bucket: str, topic: str) -> list[int]:
    return [r.offset for r in dumped_records(store.client(), bucket).get((topic, 0), [])]


def pause_began(cluster: Cluster, ns: str, name: str, plural: str, ago: timedelta) -> None:
    """Move the paused task's `status.pausedAt` back by `ago`, as a pause that long would have left it."""
    moment = (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.CustomObjectsApi(cluster.api_client).patch_namespaced_custom_object_status(
        "ferry.dev", "v1alpha1", ns, plural, name, {"status": {"pausedAt": moment}}
    )
    wait_for(lambda: cluster.status(ns, name, plural).get("pausedAt") == moment, 10, what="pausedAt moved back")


# -- a Secret deleted under a running task ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["TopicSync", "DataAccessTask", "ObsDumpTask"])
def test_a_secret_deleted_under_a_running_task_keeps_it_running_failed_with_the_reason_until_it_is_back(
    kind: str,
    cluster: Cluster,
    kafka: KafkaCluster,
    kafka2: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, plural = cluster.namespace(), topic_factory(partitions=1), PLURALS[kind]
    account: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "account", "namespace": ns},
        "stringData": {"username": kafka.scram_user, "password": kafka.scram_password},
    }
    sasl = {
        "bootstrapServers": kafka.sasl_plaintext_bootstrap,
        "securityProtocol": "SASL_PLAINTEXT",
        "saslMechanism": "SCRAM-SHA-512",
        "credentialsSecretRef": {"name": "account"},
    }
    delivered: Callable[[], int]
    if kind == "TopicSync":  # the source's SASL credentials
        spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
        spec["source"].update(sasl)
        delivered = lambda: len(copied_values(kafka2.bootstrap, f"a.{topic}"))  # noqa: E731
    elif kind == "DataAccessTask":  # the DTS consumer group's account
        target = topic_factory(broker=kafka2, partitions=1)
        spec = access_spec(kafka, topic, kafka2, target)
        spec["source"]["dts"].update(sasl)
        delivered = lambda: len(copied_values(kafka2.bootstrap, target))  # noqa: E731
    else:  # the store's access key and secret key
        bucket = bucket_factory()
        account = obs_secret(ns, object_store, name="account")
        keys = {"storeKeys": True, "credentialsSecretRef": {"name": "account"}}
        spec = spec_for(kafka, object_store, bucket, topics=[topic], target=keys)
        delivered = lambda: len(dumped_offsets(object_store, bucket, topic))  # noqa: E731
    cluster.apply(account, task(kind, ns, "kept", spec))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "kept", plural)

    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(lambda: status().get("state") == "Running" and delivered() == 10, WAIT, what="the first 10 delivered")
    pods = worker_pods(cluster, ns, kind, "kept")
    assert len(pods) == 1

    cluster.kubectl("delete", "secret", "account", "-n", ns)
    # The operator reads the Secret again within its recheck interval (20 reconcile intervals: 20 s here).
    wait_for(lambda: status().get("reason") == "SecretNotFound", WAIT, what="SecretNotFound")
    failed = status()
    assert failed["state"] == "Failed"
    message = failed["message"]
    assert message.startswith("Secret 'account' (for "), message
    keeps = "does not exist in this namespace: create it; until then the workers already running keep running this"
    assert keeps in message, message
    ready = next(c for c in failed["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    event = cluster.event(ns, "kept", "SecretNotFound", "Warning")
    assert event["message"].startswith("Failed: Secret 'account' (for ") and "keep running" in event["message"]
    # The same workers go on with the values they started with: records produced now are delivered.
    produce(kafka.bootstrap, topic, 10, partitions=1, start=10)
    wait_for(lambda: delivered() == 20, WAIT, what="delivered while Failed")
    assert status()["reason"] == "SecretNotFound"
    assert worker_pods(cluster, ns, kind, "kept") == pods
    deployment = cluster.deployment(ns, f"kept-{kind.lower()}")
    assert deployment is not None and deployment["spec"]["replicas"] == 1

    # The Secret back: Running again, with the same workers.
    cluster.apply(account)
    wait_for(lambda: status().get("state") == "Running", WAIT, what="Running again")
    assert status()["reason"] == "WorkerRunning"
    assert worker_pods(cluster, ns, kind, "kept") == pods
    produce(kafka.bootstrap, topic, 5, partitions=1, start=20)
    wait_for(lambda: delivered() == 25, WAIT, what="every record delivered once")


# -- long pauses -----------------------------------------------------------------------------------------------


def test_a_topic_sync_paused_for_25_hours_without_a_window_set_starts_again_from_start_from(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """No spec.resumeWindow: the Connector manual's 24 hours."""
    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="latest", targetTopicName="{source}.{topic}")
    cluster.apply(task("TopicSync", ns, "late", spec))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "late", "topicsyncs")

    wait_for(lambda: status().get("state") == "Running" and status().get("partitions"), WAIT, what="Running")
    group = status()["consumerGroup"]
    produce(kafka.bootstrap, topic, 5, partitions=1)
    wait_for(lambda: (status().get("totals") or {}).get("records") == 5, WAIT, what="first 5")
    cluster.patch_spec(ns, "late", {"state": "Paused"}, plural="topicsyncs")
    wait_for(lambda: status().get("state") == "Paused" and status().get("pausedAt"), WAIT, what="Paused")
    produce(kafka.bootstrap, topic, 5, partitions=1, start=5)  # written during the pause: skipped
    pause_began(cluster, ns, "late", "topicsyncs", timedelta(hours=25))
    cluster.patch_spec(ns, "late", {"state": "Running"}, plural="topicsyncs")
    wait_for(lambda: status().get("resumedFrom") == "startFrom", WAIT, what="resumed from startFrom")
    assert status()["offsetEpoch"] == 1 and status()["consumerGroup"] == f"{group}.e1"
    event = cluster.event(ns, "late", "ResumedFromStartFrom", "Normal")
    assert event["message"] == (
        "paused for 25.0h, longer than the resume window 24h: starting a new consumer group from startFrom=latest"
    )
    wait_for(
        lambda: (
            status().get("state") == "Running"
            and status().get("partitions")
            and all(w.get("epoch") == 1 for w in status()["workers"].values())
        ),
        WAIT,
        what="Running in the new group",
    )
    time.sleep(1)
    produce(kafka.bootstrap, topic, 5, partitions=1, start=10)
    wait_for(lambda: len(copied_values(kafka2.bootstrap, f"a.{topic}")) >= 10, WAIT, what="copied after the resume")
    assert copied_values(kafka2.bootstrap, f"a.{topic}") == [*range(5), *range(10, 15)]


def test_a_topic_sync_paused_for_23_hours_resumes_from_its_saved_offsets_and_counts_what_expired(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=1)
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="latest", targetTopicName="{source}.{topic}")
    cluster.apply(task("TopicSync", ns, "within", spec))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "within", "topicsyncs")

    wait_for(lambda: status().get("state") == "Running" and status().get("partitions"), WAIT, what="Running")
    group = status()["consumerGroup"]
    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(lambda: (status().get("totals") or {}).get("records") == 10, WAIT, what="first 10")
    cluster.patch_spec(ns, "within", {"state": "Paused"}, plural="topicsyncs")
    wait_for(lambda: status().get("state") == "Paused" and status().get("pausedAt"), WAIT, what="Paused")
    produce(kafka.bootstrap, topic, 20, partitions=1, start=10)  # offsets 10-29, unread
    delete_records(kafka, topic, {0: 17})  # the retention takes 7 of them before the resume
    pause_began(cluster, ns, "within", "topicsyncs", timedelta(hours=23))
    cluster.patch_spec(ns, "within", {"state": "Running"}, plural="topicsyncs")
    wait_for(lambda: status().get("resumedFrom") == "savedOffsets", WAIT, what="resumed from the saved offsets")
    assert status()["offsetEpoch"] == 0 and status()["consumerGroup"] == group
    assert cluster.event(ns, "within", "Resumed", "Normal")["message"] == (
        "resumed within the resume window from the saved offsets"
    )
    wait_for(lambda: status().get("recordsExpired") == 7, WAIT, what="7 records expired")
    event = cluster.event(ns, "within", "RecordsExpired", "Warning")
    assert event["message"].startswith(
        f"7 records were deleted by the topic's retention before the task read them, and are skipped: {topic}[0] 7 "
        "(saved offset 10, earliest 17)"
    )
    wait_for(lambda: len(copied_values(kafka2.bootstrap, f"a.{topic}")) >= 23, WAIT, what="what the retention left")
    assert copied_values(kafka2.bootstrap, f"a.{topic}") == [*range(10), *range(17, 30)]


@pytest.mark.parametrize("kind", ["DataAccessTask", "ObsDumpTask"])
def test_a_pause_of_30_days_resumes_from_the_saved_offsets(
    kind: str,
    cluster: Cluster,
    kafka: KafkaCluster,
    kafka2: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    """No spec.resumeWindow, as the DataHub and Smart Connect manuals describe a resume: where the task paused,
    however long ago; startFrom=latest would have skipped what was written meanwhile."""
    ns, topic, plural = cluster.namespace(), topic_factory(partitions=1), PLURALS[kind]
    delivered: Callable[[], list[int]]
    if kind == "DataAccessTask":
        target = topic_factory(broker=kafka2, partitions=1)
        cluster.apply(task(kind, ns, "month", access_spec(kafka, topic, kafka2, target, startFrom="latest")))
        delivered = lambda: copied_values(kafka2.bootstrap, target)  # noqa: E731
    else:
        bucket = bucket_factory()
        spec = spec_for(kafka, object_store, bucket, topics=[topic], startFrom="latest", target={"storeKeys": True})
        cluster.apply(obs_secret(ns, object_store), task(kind, ns, "month", spec))
        delivered = lambda: dumped_offsets(object_store, bucket, topic)  # noqa: E731

    def status() -> dict[str, Any]:
        return cluster.status(ns, "month", plural)

    wait_for(lambda: status().get("state") == "Running" and status().get("partitions"), WAIT, what="Running")
    group = status()["consumerGroup"]
    produce(kafka.bootstrap, topic, 10, partitions=1)
    wait_for(lambda: len(delivered()) == 10, WAIT, what="first 10")
    cluster.patch_spec(ns, "month", {"state": "Paused"}, plural=plural)
    wait_for(lambda: status().get("state") == "Paused" and status().get("pausedAt"), WAIT, what="Paused")
    produce(kafka.bootstrap, topic, 10, partitions=1, start=10)  # written during the pause
    pause_began(cluster, ns, "month", plural, timedelta(days=30))
    cluster.patch_spec(ns, "month", {"state": "Running"}, plural=plural)
    wait_for(lambda: status().get("resumedFrom") == "savedOffsets", WAIT, what="resumed from the saved offsets")
    assert status()["offsetEpoch"] == 0 and status()["consumerGroup"] == group
    assert "offsetReset" not in status()  # the group (for a DataAccessTask, the subscription's own) is not moved
    assert cluster.event(ns, "month", "Resumed", "Normal")["message"] == (
        "resumed (no resumeWindow set) from the saved offsets"
    )
    assert not [e for e in cluster.events(ns, "month") if e["reason"] == "ResumedFromStartFrom"]
    wait_for(lambda: len(delivered()) >= 20, WAIT, what="the records written during the pause")
    assert delivered() == list(range(20))  # every record once: DataAccessTask values, ObsDumpTask offsets


# -- a throughput cap across worker pods -----------------------------------------------------------------------


def test_kubectl_scale_to_two_workers_holds_the_tasks_cap_measured_on_the_target(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """Each worker pod takes its share of the task's cap (here 100 of 200 records/s each): measured by the target
    broker's own clock (LogAppendTime) over a backlog both pods copy at once."""
    from tests.test_throughput_caps import judge_rate, produce_sized

    ns, topic = cluster.namespace(), topic_factory(partitions=4)
    topic_factory(partitions=4, broker=kafka2, name=topic, config={"message.timestamp.type": "LogAppendTime"})
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", maxRecordsPerSecond=200)
    cluster.apply(task("TopicSync", ns, "capped", spec))

    def status() -> dict[str, Any]:
        return cluster.status(ns, "capped", "topicsyncs")

    wait_for(lambda: status().get("state") == "Running", WAIT, what="Running")
    cluster.kubectl("scale", "topicsync", "capped", "-n", ns, "--replicas=2")

    def split() -> bool:
        workers = [w for w in (status().get("workers") or {}).values() if w and w.get("phase") == "Running"]
        owned = [{(p["topic"], p["partition"]) for p in w.get("partitions") or []} for w in workers]
        return len(owned) == 2 and all(len(o) == 2 for o in owned) and not owned[0] & owned[1]

    wait_for(split, WAIT, what="two worker pods, two partitions each")
    assert len(worker_pods(cluster, ns, "TopicSync", "capped")) == 2
    produce_sized(kafka.bootstrap, topic, 4, 4)  # one record a partition: both pods are reading
    wait_for(lambda: len(read_all(kafka2.bootstrap, topic, 4, timeout=2)) == 4, WAIT, what="the first 4 copied")
    produce_sized(kafka.bootstrap, topic, 2000, 4)
    records = read_all(kafka2.bootstrap, topic, 2004, timeout=90)
    assert len(records) == 2004
    arrivals = sorted((m.timestamp()[1] / 1000, 1) for m in records)[4:]
    judge_rate(arrivals, 200, "TopicSync 2 worker pods (kubectl scale), maxRecordsPerSecond=200")
    wait_for(lambda: (status().get("throttledSeconds") or 0) > 2, 30, what="the waits in the status")
    capped = status()
    assert capped["maxRecordsPerSecond"] == 200 and capped.get("maxBytesPerSecond") is None
    assert sorted(w.get("maxRecordsPerSecond") for w in capped["workers"].values()) == [100, 100]
