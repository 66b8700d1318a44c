"""Operations from kubectl on the real control plane, with the chart's operator and real workers: the
ferry.dev/restart annotation (the worker pods roll once per value), ferry.dev/reset-offsets (refused on a running
task; recorded on a paused one and made by its first worker on resume: the group's committed offsets read back
through the AdminClient, and the records copied or dumped again from there), and `kubectl scale` through the scale
subresource of the copy kinds (with the rights the chart gives the default edit and view roles)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import BucketFactory, TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.copies import read_all
from tests.support.dumps import list_objects, spec_for, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_dataaccess_worker import access_spec
from tests.test_offset_resets import at, group_offsets, produce_timed
from tests.test_topicsync_worker import sync_spec

WAIT = 90  # seconds: 2 cores, and other test runs may share them
NO_OFFSET = -1001  # what the AdminClient lists for a partition the group has no committed offset for


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("operations-cluster")) as running:
        yield running


def scaled_workers(cluster: Cluster, ns: str, name: str, plural: str) -> str:
    """The task's state and worker reports, and each of its pods' containers with the end of their logs."""
    status = cluster.status(ns, name, plural)
    lines = [f"status: {status.get('state')} {status.get('reason')}: {status.get('message')}"]
    for worker, report in (status.get("workers") or {}).items():
        lines.append(f"  worker {worker}: {report.get('phase')} at {report.get('heartbeatTime')}")
    for key, pod in cluster.kubelet.pods.items():
        if pod.namespace != ns or not pod.name.startswith(name):
            continue
        for c in pod.containers:
            code = None if c.process is None else c.process.poll()
            tail = c.log_path.read_text(errors="replace")[-1500:] if c.log_path.exists() else ""
            lines.append(f"  pod {key} {c.name}: running={c.running} exit={code} restarts={c.restarts}\n{tail}")
    return "\n".join(lines)


def task(kind: str, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def annotations(cluster: Cluster, ns: str, name: str, plural: str) -> dict[str, str]:
    return dict(((cluster.task(ns, name, plural) or {}).get("metadata") or {}).get("annotations") or {})


def offset_reset(cluster: Cluster, ns: str, name: str, plural: str) -> dict[str, Any]:
    conditions = cluster.status(ns, name, plural).get("conditions") or []
    return next((c for c in conditions if c["type"] == "OffsetReset"), {})


def worker_pods(cluster: Cluster, ns: str, kind: str, name: str) -> dict[str, str]:
    """The task's worker pods that are not being deleted, by name: their uids."""
    selector = f"ferry.dev/kind={kind.lower()},ferry.dev/task={name}"
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(ns, label_selector=selector).items
    return {p.metadata.name: p.metadata.uid for p in pods if p.metadata.deletion_timestamp is None}


def reporting(cluster: Cluster, ns: str, name: str, plural: str, pods: dict[str, str]) -> bool:
    """The task is Running and each of these pods reports in its status."""
    status = cluster.status(ns, name, plural)
    live = {w for w, r in (status.get("workers") or {}).items() if r and r.get("phase") == "Running"}
    return status.get("state") == "Running" and bool(pods) and set(pods) <= live


def events(cluster: Cluster, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(ns, name) if e["reason"] == reason]


# -- ferry.dev/restart ------------------------------------------------------------------------------


def test_the_restart_annotation_rolls_the_workers_exactly_once_per_value(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=2)
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    cluster.apply(task("TopicSync", ns, "rolled", spec))
    produce_timed(kafka.bootstrap, topic, 2, 10)
    wait_for(lambda: (cluster.status(ns, "rolled", "topicsyncs").get("totals") or {}).get("records") == 20, WAIT)
    first = worker_pods(cluster, ns, "TopicSync", "rolled")
    assert len(first) == 1 and reporting(cluster, ns, "rolled", "topicsyncs", first)

    def rolled_from(before: dict[str, str]) -> dict[str, str] | None:
        pods = worker_pods(cluster, ns, "TopicSync", "rolled")
        fresh = pods and not set(pods.values()) & set(before.values())
        return pods if fresh and reporting(cluster, ns, "rolled", "topicsyncs", pods) else None

    cluster.kubectl("annotate", "topicsync", "rolled", "-n", ns, "ferry.dev/restart=1700000000", "--overwrite")
    second = wait_for(lambda: rolled_from(first), timeout=WAIT, what="new worker pods after the restart")
    assert cluster.status(ns, "rolled", "topicsyncs")["restartedFor"] == "1700000000"
    deployment = cluster.deployment(ns, "rolled-topicsync")
    assert deployment is not None
    assert deployment["spec"]["template"]["metadata"]["annotations"]["ferry.dev/restart"] == "1700000000"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    event = cluster.event(ns, "rolled", "Restarted", "Normal")
    assert event["message"] == (
        "ferry.dev/restart=1700000000: restarting the workers (the old ones flush and commit first, then new ones "
        "start)"
    )
    generation = deployment["metadata"]["generation"]

    # The same value again (and other changes of the task that wake the operator): nothing more rolls.
    cluster.kubectl("annotate", "topicsync", "rolled", "-n", ns, "ferry.dev/restart=1700000000", "--overwrite")
    cluster.kubectl("annotate", "topicsync", "rolled", "-n", ns, "example.com/note=unrelated", "--overwrite")
    produce_timed(kafka.bootstrap, topic, 2, 5)
    wait_for(lambda: (cluster.status(ns, "rolled", "topicsyncs").get("totals") or {}).get("records") == 10, WAIT)
    time.sleep(5)  # five reconciles at the tests' 1 s interval
    assert worker_pods(cluster, ns, "TopicSync", "rolled") == second
    assert (cluster.deployment(ns, "rolled-topicsync") or {})["metadata"]["generation"] == generation
    assert len(events(cluster, ns, "rolled", "Restarted")) == 1

    cluster.kubectl("annotate", "topicsync", "rolled", "-n", ns, "ferry.dev/restart=1700000060", "--overwrite")
    third = wait_for(lambda: rolled_from(second), timeout=WAIT, what="new worker pods after the second restart")
    assert cluster.status(ns, "rolled", "topicsyncs")["restartedFor"] == "1700000060"
    time.sleep(3)
    assert worker_pods(cluster, ns, "TopicSync", "rolled") == third
    assert sorted(e["message"].split(":")[0] for e in events(cluster, ns, "rolled", "Restarted")) == [
        "ferry.dev/restart=1700000000",
        "ferry.dev/restart=1700000060",
    ]
    # Each roll flushed and committed before the next workers started: every record once.
    copied = Counter(m.value() for m in read_all(kafka2.bootstrap, f"a.{topic}", 30, linger=1))
    assert copied == Counter({f"p{p}-v{i}".encode(): 2 if i < 5 else 1 for p in range(2) for i in range(10)})


# -- ferry.dev/reset-offsets ------------------------------------------------------------------------


def test_a_reset_is_refused_while_running_then_recorded_at_the_pause_and_made_on_resume(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=2)
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    cluster.apply(task("TopicSync", ns, "rewind", spec))
    produce_timed(kafka.bootstrap, topic, 2, 10)

    def status() -> dict[str, Any]:
        return cluster.status(ns, "rewind", "topicsyncs")

    wait_for(lambda: (status().get("totals") or {}).get("records") == 20 and status().get("lag") == 0, WAIT)
    first_group = status()["consumerGroup"]
    assert group_offsets(kafka, first_group, topic, 2) == [10, 10]

    cluster.kubectl("annotate", "topicsync", "rewind", "-n", ns, "ferry.dev/reset-offsets=earliest")
    refused = cluster.event(ns, "rewind", "OffsetResetRefused", "Warning", timeout=30)
    assert refused["message"].startswith(
        "ferry.dev/reset-offsets=earliest refused: the consumer group's offsets are moved only while the task is "
        "Paused, and it is Running; pause it (spec.state: Paused)"
    )
    condition = offset_reset(cluster, ns, "rewind", "topicsyncs")
    assert (condition["status"], condition["reason"]) == ("False", "OffsetResetRefused")
    assert annotations(cluster, ns, "rewind", "topicsyncs")["ferry.dev/reset-offsets"] == "earliest"  # left
    assert status()["offsetEpoch"] == 0 and group_offsets(kafka, first_group, topic, 2) == [10, 10]

    # Paused: the annotation left on it is recorded once the workers have stopped, and taken off.
    cluster.patch_spec(ns, "rewind", {"state": "Paused"}, plural="topicsyncs")
    wait_for(lambda: status().get("state") == "Paused" and status().get("offsetReset"), WAIT, what="recorded")
    record = status()["offsetReset"]
    group = status()["consumerGroup"]
    assert group == f"{first_group}.e1" and status()["offsetEpoch"] == 1
    assert {k: record[k] for k in ("to", "epoch", "requestedBy", "consumerGroup")} == {
        "to": "earliest",
        "epoch": 1,
        "requestedBy": "annotation",
        "consumerGroup": group,
    }
    wait_for(lambda: "ferry.dev/reset-offsets" not in annotations(cluster, ns, "rewind", "topicsyncs"), 30)
    pending = cluster.event(ns, "rewind", "OffsetResetPending", "Normal", timeout=30)
    assert pending["message"] == (
        f"consumer group {group} moves to earliest when the workers of offset epoch 1 start, before they consume "
        "(when the task resumes)"
    )
    # The operator has no credentials for Kafka: nothing has moved yet.
    assert group_offsets(kafka, group, topic, 2) == [NO_OFFSET, NO_OFFSET]

    cluster.patch_spec(ns, "rewind", {"state": "Running"}, plural="topicsyncs")
    wait_for(lambda: (status().get("lastOffsetReset") or {}).get("epoch") == 1, WAIT, what="the reset made")
    applied = status()["lastOffsetReset"]
    assert (applied["to"], applied["consumerGroup"], applied["partitions"]) == ("earliest", group, 2)
    assert [(o["partition"], o["offset"]) for o in applied["offsets"]] == [(0, 0), (1, 0)]
    assert status()["resumedFrom"] == "offsetReset" and status()["offsetResetEpoch"] == 1
    done = cluster.event(ns, "rewind", "OffsetsReset", "Normal", timeout=30)
    assert done["message"].startswith(f"consumer group {group} moved to earliest at ")
    assert done["message"].endswith(": 2 partitions")
    wait_for(lambda: offset_reset(cluster, ns, "rewind", "topicsyncs").get("status") == "True", 30)
    # Everything copied again, from the first record: each record twice in the target now.
    wait_for(lambda: (status().get("totals") or {}).get("records") == 20 and status().get("lag") == 0, WAIT)
    copied = Counter(m.value() for m in read_all(kafka2.bootstrap, f"a.{topic}", 40, linger=1))
    assert copied == Counter({f"p{p}-v{i}".encode(): 2 for p in range(2) for i in range(10)})
    assert group_offsets(kafka, group, topic, 2) == [10, 10]


def test_a_data_access_task_is_moved_to_a_time_in_the_subscriptions_own_group(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, source, target = cluster.namespace(), topic_factory(partitions=2), topic_factory(broker=kafka2, partitions=2)
    spec = access_spec(kafka, source, kafka2, target)
    group = spec["source"]["dts"]["consumerGroup"]
    cluster.apply(task("DataAccessTask", ns, "pull", spec))
    produce_timed(kafka.bootstrap, source, 2, 10)  # record i of each partition stamped T0 + i seconds

    def status() -> dict[str, Any]:
        return cluster.status(ns, "pull", "dataaccesstasks")

    wait_for(lambda: (status().get("totals") or {}).get("records") == 20, WAIT, what="20 copied")
    cluster.patch_spec(ns, "pull", {"state": "Paused"}, plural="dataaccesstasks")
    wait_for(lambda: status().get("state") == "Paused", WAIT, what="Paused")
    assert group_offsets(kafka, group, source, 2) == [10, 10]
    to = at(6, hours=8)  # T0 + 6 s, written with another UTC offset
    cluster.kubectl("annotate", "dataaccesstask", "pull", "-n", ns, f"ferry.dev/reset-offsets={to}")
    wait_for(lambda: (status().get("offsetReset") or {}).get("to") == to, 30, what="recorded")
    assert status()["consumerGroup"] == group and status()["offsetEpoch"] == 1
    assert group_offsets(kafka, group, source, 2) == [10, 10]  # moved by the first worker, not yet

    cluster.patch_spec(ns, "pull", {"state": "Running"}, plural="dataaccesstasks")
    wait_for(lambda: (status().get("lastOffsetReset") or {}).get("epoch") == 1, WAIT, what="the reset made")
    applied = status()["lastOffsetReset"]
    assert (applied["to"], applied["consumerGroup"]) == (to, group)
    assert [(o["partition"], o["offset"]) for o in applied["offsets"]] == [(0, 6), (1, 6)]
    wait_for(lambda: (status().get("totals") or {}).get("records") == 8 and status().get("lag") == 0, WAIT)
    copied = Counter(m.value() for m in read_all(kafka2.bootstrap, target, 28, linger=1))
    assert copied == Counter({f"p{p}-v{i}".encode(): 1 if i < 6 else 2 for p in range(2) for i in range(10)})
    assert group_offsets(kafka, group, source, 2) == [10, 10]
    assert cluster.event(ns, "pull", "OffsetsReset", "Normal")["message"].endswith(": 2 partitions")


def test_an_obs_dump_task_dumps_again_from_the_time_it_is_moved_to(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(partitions=1), bucket_factory()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "obs-credentials", "namespace": ns},
        "stringData": {"accessKey": object_store.access_key, "secretKey": object_store.secret_key},
    }
    spec = spec_for(kafka, object_store, bucket, topics=[topic], target={"storeKeys": True})
    cluster.apply(secret, task("ObsDumpTask", ns, "dump", spec))
    produce_timed(kafka.bootstrap, topic, 1, 10)

    def status() -> dict[str, Any]:
        return cluster.status(ns, "dump", "obsdumptasks")

    store = object_store.client()
    wait_for(lambda: (status().get("totals") or {}).get("records") == 10 and status().get("lag") == 0, WAIT)
    cluster.patch_spec(ns, "dump", {"state": "Paused"}, plural="obsdumptasks")
    wait_for(lambda: status().get("state") == "Paused", WAIT, what="Paused")
    cluster.kubectl("annotate", "obsdumptask", "dump", "-n", ns, f"ferry.dev/reset-offsets={at(5)}")
    wait_for(lambda: (status().get("offsetReset") or {}).get("epoch") == 1, 30, what="recorded")
    cluster.patch_spec(ns, "dump", {"state": "Running"}, plural="obsdumptasks")
    wait_for(lambda: (status().get("lastOffsetReset") or {}).get("epoch") == 1, WAIT, what="the reset made")
    assert [(o["partition"], o["offset"]) for o in status()["lastOffsetReset"]["offsets"]] == [(0, 5)]
    # The new workers dump the records from offset 5 again, into an object that starts there.
    wait_for(lambda: (status().get("totals") or {}).get("records") == 5 and status().get("lag") == 0, WAIT)
    key = status()["lastObjectKey"]
    assert re.search(rf"/{re.escape(topic)}\+0\+0*5\.jsonl$", key), key  # the object's start offset: 5
    offsets = [json.loads(line)["offset"] for line in list_objects(store, bucket)[key].decode().splitlines()]
    assert offsets == [5, 6, 7, 8, 9]


# -- kubectl scale ----------------------------------------------------------------------------------


def test_kubectl_scale_sets_the_replicas_of_the_copy_kinds_and_shows_the_workers_reporting(
    cluster: Cluster, kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=2)
    spec = sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest", targetTopicName="{source}.{topic}")
    cluster.apply(task("TopicSync", ns, "wide", spec))
    wait_for(lambda: cluster.status(ns, "wide", "topicsyncs").get("replicas") == 1, WAIT, what="1 worker")

    def scale(kind: str, name: str, field: str) -> str:
        result = cluster.kubectl("get", kind, name, "-n", ns, "--subresource=scale", "-o", f"jsonpath={{{field}}}")
        return result.stdout

    assert scale("topicsync", "wide", ".status.selector") == "ferry.dev/kind=topicsync,ferry.dev/task=wide"
    assert scale("topicsync", "wide", ".status.replicas") == "1"
    cluster.kubectl("scale", "topicsync", "wide", "-n", ns, "--replicas=2")
    assert (cluster.task(ns, "wide", "topicsyncs") or {})["spec"]["replicas"] == 2
    wait_for(lambda: (cluster.deployment(ns, "wide-topicsync") or {})["spec"]["replicas"] == 2, 30, what="Deployment")
    try:
        wait_for(lambda: scale("topicsync", "wide", ".status.replicas") == "2", WAIT, what="2 workers reporting")
    except AssertionError as timed_out:  # what the status and the pods show, for a failure seen only under CI
        raise AssertionError(f"{timed_out}\n{scaled_workers(cluster, ns, 'wide', 'topicsyncs')}") from None
    assert scale("topicsync", "wide", ".spec.replicas") == "2"
    selector = scale("topicsync", "wide", ".status.selector")
    pods = cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "name").stdout.split()
    assert len(pods) == 2 and all(p.startswith("pod/wide-topicsync-") for p in pods)
    assert len(worker_pods(cluster, ns, "TopicSync", "wide")) == 2
    # The CRD's bounds hold for the scale subresource too.
    refused = cluster.kubectl("scale", "topicsync", "wide", "-n", ns, "--replicas=0", check=False)
    assert refused.returncode != 0 and "spec.replicas" in refused.stderr
    assert "should be greater than or equal to 1" in refused.stderr

    # A DataAccessTask scales alike (paused here: the Deployment stays at zero until it resumes).
    paused = access_spec(kafka, topic, kafka2, topic_factory(broker=kafka2, partitions=2), state="Paused")
    cluster.apply(task("DataAccessTask", ns, "pull", paused))
    wait_for(lambda: cluster.status(ns, "pull", "dataaccesstasks").get("state") == "Paused", WAIT, what="Paused")
    cluster.kubectl("scale", "dataaccesstask", "pull", "-n", ns, "--replicas=3")
    assert (cluster.task(ns, "pull", "dataaccesstasks") or {})["spec"]["replicas"] == 3
    assert scale("dataaccesstask", "pull", ".status.replicas") == "0"
    # ObsDumpTask's spec cannot change but for spec.state: it has no scale subresource.
    dump = {
        "source": {"bootstrapServers": kafka.bootstrap},
        "topics": [topic],
        "state": "Paused",
        "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    cluster.apply(task("ObsDumpTask", ns, "dump", dump))
    assert cluster.kubectl("get", "obsdumptask", "dump", "-n", ns, "-o", "name").stdout.strip() == (
        "obsdumptask.ferry.dev/dump"
    )
    for command in (
        ("scale", "obsdumptask", "dump", "--replicas=2"),
        ("get", "obsdumptask/dump", "--subresource=scale"),
    ):
        no_scale = cluster.kubectl(*command, "-n", ns, check=False)
        assert no_scale.returncode != 0 and "(NotFound)" in no_scale.stderr, no_scale.stderr

    # Who may: the default edit role (the chart's ferry-edit is aggregated into it) scales, view only reads.
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    for user, role in (("alice", "edit"), ("bob", "view")):
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            },
        )

    def can(user: str, verb: str, resource: str) -> bool:
        answer = cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, f"--as={user}", check=False)
        return answer.stdout.strip() == "yes"

    wait_for(lambda: can("alice", "patch", "topicsyncs.ferry.dev/scale"), 30, what="edit may scale")
    assert can("alice", "update", "dataaccesstasks.ferry.dev/scale")
    assert can("bob", "get", "topicsyncs.ferry.dev/scale")
    assert not can("bob", "patch", "topicsyncs.ferry.dev/scale")
    cluster.kubectl("scale", "topicsync", "wide", "-n", ns, "--replicas=1", "--as=alice")
    wait_for(lambda: scale("topicsync", "wide", ".status.replicas") == "1", WAIT, what="back to 1 worker")
    denied = cluster.kubectl("scale", "topicsync", "wide", "-n", ns, "--replicas=2", "--as=bob", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
