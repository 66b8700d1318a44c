"""The per-instance limit of ObsDumpTasks, enforced by the operator on a real control plane. Workers run only
where the test needs what they report (the cluster id of a real Kafka): the limit is the operator's alone, and
19 worker processes would only slow the test."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.conftest import BucketFactory, TopicFactory
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import spec_for, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_obsdump_e2e import obsdump, secret


@pytest.fixture(scope="module")
def cluster_without_workers(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Workers start here only for the tasks a test lets run (`kubelet.runs`), not 18 worker processes."""
    with running_cluster(kube, tmp_path_factory.mktemp("quiet-cluster"), run_workers=False) as running:
        yield running


def test_the_nineteenth_task_on_an_instance_fails_and_starts_when_a_slot_frees(
    cluster_without_workers: Cluster,
    object_store: SeaweedFS,
) -> None:
    cluster = cluster_without_workers
    ns = cluster.namespace()
    spec = {
        "source": {"bootstrapServers": "shared-kafka:9092"},
        "topics": ["orders"],
        "target": {
            "endpoint": object_store.endpoint,
            "bucket": "dumps",
            "credentialsSecretRef": {"name": "obs-credentials"},
        },
    }
    names = [f"dump-{i:02d}" for i in range(19)]
    other = {**spec, "source": {"bootstrapServers": "other-kafka:9092"}}
    cluster.apply(secret(ns, object_store), *[obsdump(ns, n, spec) for n in names], obsdump(ns, "elsewhere", other))

    def settled() -> dict[str, str] | None:
        states = {n: cluster.status(ns, n).get("reason", "") for n in [*names, "elsewhere"]}
        return states if all(states.values()) else None

    reasons = wait_for(settled, timeout=60, what="every task reconciled")
    refused = [n for n, r in reasons.items() if r == "TaskLimitExceeded"]
    assert refused == ["dump-18"], reasons  # same creation second: the name breaks the tie
    status = cluster.status(ns, "dump-18")
    assert status["state"] == "Failed" and "already has 18 ObsDumpTasks" in status["message"]
    deployment = cluster.deployment(ns, "dump-18-obsdumptask")
    assert deployment is not None and deployment["spec"]["replicas"] == 0

    cluster.kubectl("delete", "obsdumptask", "dump-03", "-n", ns)
    wait_for(
        lambda: cluster.status(ns, "dump-18").get("reason") != "TaskLimitExceeded",
        timeout=30,
        what="dump-18 takes the freed slot",
    )
    assert cluster.status(ns, "dump-18")["state"] == "Unassigned"
    started = cluster.deployment(ns, "dump-18-obsdumptask")
    assert started is not None and started["spec"]["replicas"] == 1


def test_two_spellings_of_one_cluster_count_as_one_instance_once_a_worker_reported(
    cluster_without_workers: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    """18 tasks on 127.0.0.1:P, the first of which has a real worker that reports the cluster id (the other 17
    count under it through the host:port they share, without workers), and a 19th on localhost:P whose real
    worker reports the same id: it is Failed as TaskLimitExceeded, scaled to zero, and starts when a slot frees."""
    cluster = cluster_without_workers
    ns, topic = cluster.namespace(), topic_factory()
    port = kafka.bootstrap.rsplit(":", 1)[1]
    by_address, by_name = f"127.0.0.1:{port}", f"localhost:{port}"
    assert kafka.bootstrap == by_address
    reporters = {"addr-00", "zz-by-name"}
    quiet = cluster.kubelet.runs
    cluster.kubelet.runs = lambda pod: (
        quiet(pod) or (pod["metadata"].get("labels") or {}).get("ferry.dev/task") in reporters
    )
    try:
        spec = spec_for(kafka, object_store, bucket_factory(), topics=[topic])
        cluster.apply(
            secret(ns, object_store), obsdump(ns, "addr-00", {**spec, "source": {"bootstrapServers": by_address}})
        )
        wait_for(
            lambda: cluster.status(ns, "addr-00").get("sourceClusterId") == kafka.cluster_id,
            timeout=90,
            what="the first task's worker reports the cluster id",
        )
        names = [f"addr-{i:02d}" for i in range(1, 18)]
        cluster.apply(*[obsdump(ns, n, {**spec, "source": {"bootstrapServers": by_address}}) for n in names])
        reasons = wait_for(
            lambda: (lambda r: r if all(r.values()) else None)(
                {n: cluster.status(ns, n).get("reason", "") for n in names}
            ),
            timeout=60,
            what="the other 17 reconciled",
        )
        assert "TaskLimitExceeded" not in reasons.values(), reasons

        cluster.apply(obsdump(ns, "zz-by-name", {**spec, "source": {"bootstrapServers": by_name}}))
        wait_for(
            lambda: cluster.status(ns, "zz-by-name").get("reason") == "TaskLimitExceeded",
            timeout=90,
            what="the 19th, spelled localhost, refused once its worker reported",
        )
        status = cluster.status(ns, "zz-by-name")
        assert status["state"] == "Failed" and status["sourceClusterId"] == kafka.cluster_id
        assert (
            f"Kafka instance {by_name} (cluster id {kafka.cluster_id}) already has 18 ObsDumpTasks" in status["message"]
        )
        deployment = cluster.deployment(ns, "zz-by-name-obsdumptask")
        assert deployment is not None and deployment["spec"]["replicas"] == 0
        # Its worker gone, it keeps the cluster id it learned and stays refused: no flapping.
        pods = client.CoreV1Api(cluster.api_client)
        wait_for(
            lambda: not pods.list_namespaced_pod(ns, label_selector="ferry.dev/task=zz-by-name").items,
            timeout=60,
            what="the refused task's worker stopped",
        )
        for _ in range(5):
            time.sleep(1)
            status = cluster.status(ns, "zz-by-name")
            assert (status.get("reason"), status.get("sourceClusterId")) == ("TaskLimitExceeded", kafka.cluster_id)

        cluster.kubectl("delete", "obsdumptask", "addr-03", "-n", ns, "--wait=false")
        wait_for(
            lambda: cluster.status(ns, "zz-by-name").get("state") == "Running",
            timeout=90,
            what="the 19th takes the freed slot and runs",
        )
        started = cluster.deployment(ns, "zz-by-name-obsdumptask")
        assert started is not None and started["spec"]["replicas"] == 1
    finally:
        cluster.kubectl("delete", "obsdumptask", "--all", "-n", ns, "--wait=false", check=False)
        cluster.kubelet.runs = quiet
