"""Task names on a real control plane: the chart's operator keeps `spec.taskName` unique per namespace and kind
(for each kind, between tasks of different instances, and a rename into a name in use is held back), `kubectl get`
shows it, and once the admission webhook is on, kube-apiserver refuses a name in use, for each kind.

The operator's rule is exercised first, without the webhook (the chart's default), as for tasks that predate
it; then `helm upgrade` turns the webhook on. No worker runs: the rule is the operator's and the webhook's alone.
"""

from __future__ import annotations

import time
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


def sync(namespace: str, name: str, task_name: str, source: str) -> dict[str, Any]:
    """A TopicSync from its own source instance: only its name can collide with another's."""
    spec = {
        "taskName": task_name,
        "source": {"bootstrapServers": f"{source}.example:9092", "instanceId": source},
        "target": {"bootstrapServers": "dr.example:9092", "instanceId": "dr"},
        "topics": ["orders"],
        "targetTopicName": "{source}.{topic}",
    }
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def dump(namespace: str, name: str, task_name: str, source: str) -> dict[str, Any]:
    """An ObsDumpTask of its own Kafka instance: only its name can collide with another's."""
    spec = {
        "taskName": task_name,
        "source": {"bootstrapServers": f"{source}.example:9092"},
        "topics": ["orders"],
        "target": {"endpoint": "http://s3.example:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@pytest.mark.parametrize("kind", ["TopicSync", "ObsDumpTask"])
def test_the_later_task_with_a_name_in_use_on_another_instance_is_failed_by_the_operator(
    cluster: Cluster, kind: str
) -> None:
    """The webhook off (the chart's default): the operator alone keeps the name unique, across instances."""
    ns = cluster.namespace()
    make, plural = (sync, "topicsyncs") if kind == "TopicSync" else (dump, "obsdumptasks")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "obs", "namespace": ns}}
    keys = {"stringData": {"accessKey": "a", "secretKey": "s"}}
    cluster.apply({**secret, **keys}, make(ns, "first", "orders_copy", "eu"))
    wait_for(lambda: cluster.status(ns, "first", plural).get("reason") == "WaitingForWorker", 60, what="first")
    time.sleep(1.1)  # creation times have a resolution of a second: "first" is the earlier one
    cluster.apply(make(ns, "second", "orders_copy", "us"))
    wait_for(lambda: cluster.status(ns, "second", plural).get("reason") == "TaskNameInUse", 60, what="refused")
    assert cluster.status(ns, "second", plural)["state"] == "Failed"
    assert (cluster.deployment(ns, f"second-{kind.lower()}") or {})["spec"]["replicas"] == 0
    assert (cluster.deployment(ns, f"first-{kind.lower()}") or {})["spec"]["replicas"] == 1
    event = cluster.event(ns, "second", "TaskNameInUse", "Warning")
    assert event["message"].startswith(f"[orders_copy] Failed: {kind} first in this namespace already has taskName")
    if kind == "ObsDumpTask":
        return  # its spec, the name included, is fixed at creation
    # The later one renamed, it runs; then the earlier one renamed to that name does not take it back (which
    # would stop the later one): its rename is held back, and it keeps running under its old name.
    cluster.patch_spec(ns, "second", {"taskName": "second_copy"}, plural=plural)
    wait_for(lambda: cluster.status(ns, "second", plural).get("reason") == "WaitingForWorker", 60, what="renamed")
    cluster.patch_spec(ns, "first", {"taskName": "second_copy"}, plural=plural)
    wait_for(lambda: cluster.status(ns, "first", plural).get("reason") == "TaskNameInUse", 60, what="rename held")
    message = cluster.status(ns, "first", plural)["message"]
    assert message.startswith("TopicSync second in this namespace already has taskName second_copy"), message
    assert message.endswith("(not applied: spec.taskName: orders_copy -> second_copy)"), message
    assert (cluster.deployment(ns, "first-topicsync") or {})["spec"]["replicas"] == 1  # its workers keep running
    time.sleep(3)  # three reconciles at the tests' 1 s interval
    assert cluster.status(ns, "second", plural)["reason"] == "WaitingForWorker"
    assert (cluster.deployment(ns, "second-topicsync") or {})["spec"]["replicas"] == 1


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
    # A rename into a name in use, and the other kinds alike (each on an instance of its own).
    patch = '{"spec": {"taskName": "orders.cdc"}}'
    renamed = cluster.kubectl("patch", PLURAL, "third", "-n", ns, "--type=merge", "-p", patch, check=False)
    assert renamed.returncode != 0 and "denied the request" in renamed.stderr
    assert "DataAccessTask second in this namespace already has taskName orders.cdc" in renamed.stderr
    for make, kind in ((sync, "TopicSync"), (dump, "ObsDumpTask")):
        cluster.apply(make(ns, "holder", "orders_copy", "eu"))
        taken = yaml.safe_dump(make(ns, "taker", "orders_copy", "us"))
        result = cluster.kubectl("apply", "-f", "-", stdin=taken, check=False)
        assert result.returncode != 0 and "denied the request" in result.stderr, result.stdout
        assert f"{kind} holder in this namespace already has taskName orders_copy" in result.stderr
