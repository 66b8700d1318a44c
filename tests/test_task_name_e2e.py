"""Task names on a real control plane: the chart's operator keeps `spec.taskName` unique per namespace and kind,
`kubectl get` shows it, and once the admission webhook is on, kube-apiserver refuses a name in use.

The operator's rule is exercised first, without the webhook (the chart's default), as for tasks that predate
it; then `helm upgrade` turns the webhook on. No worker runs: the rule is the operator's and the webhook's alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import wait_for
from tests.test_cluster_live import tables

PLURAL = "dataaccesstasks"


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("task-names"), run_workers=False) as running:
        yield running


def access(namespace: str, name: str, task_name: str | None) -> dict[str, Any]:
    """A DataAccessTask reading its own consumer group (so only its name can collide), needing no Secret."""
    spec: dict[str, Any] = {
        "source": {
            "type": "DTS",
            "dts": {
                "bootstrapServers": "dts.example:9092",
                "securityProtocol": "PLAINTEXT",
                "topic": "subs",
                "consumerGroup": f"grp-{name}",
            },
        },
        "target": {"bootstrapServers": "kafka.example:9092", "topic": "orders"},
    }
    if task_name is not None:
        spec["taskName"] = task_name
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_a_task_name_in_use_is_failed_by_the_operator_and_refused_by_the_webhook(cluster: Cluster) -> None:
    ns = cluster.namespace()
    # One apply: the same creation second, so the tie-break by name decides (first < second), as it must.
    cluster.apply(access(ns, "first", "orders.cdc"), access(ns, "second", "orders.cdc"), access(ns, "plain", None))

    def reasons() -> dict[str, str] | None:
        found = {n: cluster.status(ns, n, PLURAL).get("reason", "") for n in ("first", "second", "plain")}
        return found if all(found.values()) else None

    wait_for(lambda: (reasons() or {}).get("second") == "TaskNameInUse", timeout=60, what="second refused")
    assert reasons() == {"first": "WaitingForWorker", "second": "TaskNameInUse", "plain": "WaitingForWorker"}
    status = cluster.status(ns, "second", PLURAL)
    assert status["state"] == "Failed"
    assert status["message"] == (
        "DataAccessTask first in this namespace already has taskName orders.cdc (task names are unique per "
        "namespace and kind; the earliest created keeps it): give this DataAccessTask another spec.taskName, or "
        "delete first; this task starts by itself once the name is its own"
    )
    held = cluster.deployment(ns, "second-dataaccesstask")
    assert held is not None and held["spec"]["replicas"] == 0
    running = cluster.deployment(ns, "first-dataaccesstask")
    assert running is not None and running["spec"]["replicas"] == 1
    event = cluster.event(ns, "second", "TaskNameInUse", "Warning")
    assert event["message"].startswith("[orders.cdc] Failed: DataAccessTask first in this namespace"), event

    # kubectl get: the name in the second column, nothing for a task without one.
    (table,) = tables(cluster.kubectl("get", PLURAL, "-n", ns).stdout)
    assert table.headers[:3] == ["NAME", "TASK NAME", "STATE"], table
    rows = {row["NAME"]: row for row in table.rows}
    assert {name: row["TASK NAME"] for name, row in rows.items()} == {
        "first": "orders.cdc",
        "second": "orders.cdc",
        "plain": "",
    }, table
    assert rows["second"]["STATE"] == "Failed"

    # The holder deleted, the name is the second's: it starts by itself.
    cluster.kubectl("delete", "dataaccesstask", "first", "-n", ns)
    wait_for(
        lambda: cluster.status(ns, "second", PLURAL).get("reason") == "WaitingForWorker",
        timeout=30,
        what="second takes the freed name",
    )
    started = cluster.deployment(ns, "second-dataaccesstask")
    assert started is not None and started["spec"]["replicas"] == 1

    # With the webhook on, kube-apiserver refuses the name in use at `kubectl apply`.
    cluster.helm_upgrade({"webhook": {"enabled": True}})

    third = yaml.safe_dump(access(ns, "third", "orders.cdc"))

    def denied() -> bool:
        # A server-side dry run stores nothing, whether or not the API server calls the webhook yet (it starts
        # to once it has seen the new configuration, and it gets an answer once the new operator pod serves).
        result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=third, check=False)
        return result.returncode != 0 and "denied the request" in result.stderr

    wait_for(denied, timeout=120, interval=1, what="the webhook answering")
    result = cluster.kubectl("apply", "-f", "-", stdin=third, check=False)
    assert result.returncode != 0 and "denied the request" in result.stderr, result.stdout
    assert (
        "DataAccessTask second in this namespace already has taskName orders.cdc (task names are unique per "
        "namespace and kind): give this DataAccessTask another spec.taskName, or delete second first"
    ) in result.stderr
    assert cluster.task(ns, "third", PLURAL) is None
    other = access(ns, "third", "orders.cdc.v2")
    assert cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other), check=False).returncode == 0
