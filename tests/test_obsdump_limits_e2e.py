"""The per-instance limit of ObsDumpTasks, enforced by the operator on a real control plane (no workers run:
the limit is the operator's alone, and 19 worker processes would only slow the test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import wait_for
from tests.support.servers import ObjectStore as SeaweedFS
from tests.test_obsdump_e2e import obsdump, secret


@pytest.fixture(scope="module")
def cluster_without_workers(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Workers never start here: enough for the operator-side limit, without 18 worker processes."""
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
