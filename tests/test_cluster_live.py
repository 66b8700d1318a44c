"""Ferry against the real API server and controllers: what kubectl shows of the CRDs, garbage collection and
the finalizer, the status subresource, the workers' RBAC, Pod Security admission, server-side apply of the
children, and a `helm upgrade` of the running release.

One release of the chart serves the whole module (the `cluster` fixture); every test works in its own
namespace. Tasks that only need their Deployment, ServiceAccount and Role are created Paused, so no worker
runs for them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes import client

from tests.conftest import BucketFactory, TopicFactory
from tests.support.cluster import CRDS, Cluster, KubeEnv, running_cluster
from tests.support.controlplane import wait_for_default_service_account
from tests.support.dumps import spec_for, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.servers import ObjectStore as SeaweedFS

GROUP, VERSION = "ferry.dev", "v1alpha1"
FINALIZER = "ferry.dev/flush-worker"
WAIT = 90  # seconds: 2 cores, and other test runs may share them


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("live-cluster")) as running:
        yield running


# -- manifests ------------------------------------------------------------------------------------


def task(kind: str, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def obs_secret(namespace: str, store: SeaweedFS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "obs-credentials", "namespace": namespace},
        "stringData": {"accessKey": store.access_key, "secretKey": store.secret_key},
    }


def kafka_secret(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"username": "someone", "password": "not-a-real-password"},
    }


def topic_sync_spec(bootstrap: str, **fields: Any) -> dict[str, Any]:
    """A TopicSync within one instance (a renamed copy, so it is no loop); Paused unless told."""
    return {
        "source": {"bootstrapServers": bootstrap, "instanceId": "a"},
        "target": {"bootstrapServers": bootstrap, "instanceId": "a"},
        "topics": ["live-source"],
        "targetTopicName": "{source}.{topic}",
        "state": "Paused",
        **fields,
    }


def data_access_spec(bootstrap: str, **fields: Any) -> dict[str, Any]:
    """A DataAccessTask with a PLAINTEXT DTS endpoint; Paused unless told."""
    return {
        "source": {
            "type": "DTS",
            "dts": {
                "bootstrapServers": bootstrap,
                "securityProtocol": "PLAINTEXT",
                "topic": "live-dts",
                "consumerGroup": f"dts-{uuid.uuid4().hex[:8]}",
            },
        },
        "target": {"bootstrapServers": bootstrap, "topic": "live-target"},
        "startFrom": "earliest",
        "state": "Paused",
        **fields,
    }


# -- reading the cluster --------------------------------------------------------------------------


def custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client)


def state(cluster: Cluster, ns: str, name: str, plural: str) -> str | None:
    return cluster.status(ns, name, plural).get("state")


def wait_state(cluster: Cluster, ns: str, name: str, plural: str, wanted: str, timeout: float = WAIT) -> None:
    def reached() -> bool:
        return state(cluster, ns, name, plural) == wanted

    try:
        wait_for(reached, timeout=timeout, what=f"{plural}/{name} {wanted}")
    except AssertionError as err:
        status = json.dumps(cluster.status(ns, name, plural), indent=1)[:2000]
        raise AssertionError(f"{err}; status: {status}\noperator:\n{cluster.operator_output()[-2000:]}") from None


def pod_template(deployment: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    container = pod_template(deployment)["spec"]["containers"][0]
    return {item["name"]: item for item in container.get("env") or []}


def worker_pods(cluster: Cluster, ns: str, name: str, kind: str) -> list[Any]:
    selector = f"ferry.dev/kind={kind.lower()},ferry.dev/task={name}"
    return list(client.CoreV1Api(cluster.api_client).list_namespaced_pod(ns, label_selector=selector).items)


def exists(read: Callable[[str, str], Any], name: str, ns: str) -> bool:
    try:
        read(name, ns)
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def gone(read: Callable[[str, str], Any], name: str, ns: str) -> bool:
    return not exists(read, name, ns)


def denied(call: Callable[[], Any]) -> int:
    """The HTTP status of a call that must be refused."""
    try:
        call()
    except client.ApiException as err:
        return int(err.status)
    raise AssertionError("the call was allowed")


def crd(kind: str) -> dict[str, Any]:
    for path in CRDS:
        doc: dict[str, Any] = yaml.safe_load(path.read_text())
        if doc["spec"]["names"]["kind"] == kind:
            return doc
    raise KeyError(kind)


def printer_columns(kind: str, wide: bool = False) -> list[str]:
    columns = crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    return ["NAME"] + [c["name"].upper() for c in columns if wide or not c.get("priority")]


@dataclass
class Table:
    """One of kubectl's tables: its headers in order, and each row as {header: cell}."""

    headers: list[str]
    rows: list[dict[str, str]]


def tables(output: str) -> list[Table]:
    """kubectl's table output, one table per kind (separated by blank lines). Cells are cut at the columns'
    header positions: a header may hold one space (LAST DUMP), columns are padded with at least three."""
    result = []
    for block in re.split(r"\n\s*\n", output.strip()):
        first, *lines = block.splitlines()
        heads = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", first)]
        ends = [start for start, _ in heads[1:]] + [None]
        rows = [
            {head: line[start:end].strip() for (start, head), end in zip(heads, ends, strict=True)} for line in lines
        ]
        result.append(Table([head for _, head in heads], rows))
    return result


def table_of(output: str, kind: str) -> Table:
    prefix = f"{kind.lower()}.{GROUP}/"
    for table in tables(output):
        if table.rows and all(row["NAME"].startswith(prefix) for row in table.rows):
            return table
    raise AssertionError(f"no {kind} table in:\n{output}")


def start_obsdump(
    cluster: Cluster,
    ns: str,
    name: str,
    kafka: KafkaCluster,
    store: SeaweedFS,
    topic: str,
    bucket: str,
) -> None:
    """An ObsDumpTask with its Secret, applied with kubectl, and Running (its worker reports)."""
    spec = spec_for(kafka, store, bucket, topics=[topic], dumpPeriodSeconds=2)
    cluster.apply(obs_secret(ns, store), task("ObsDumpTask", ns, name, spec))
    wait_state(cluster, ns, name, "obsdumptasks", "Running")


# -- 1. kubectl and the CRDs ----------------------------------------------------------------------


def test_kubectl_get_ferry_lists_every_kind_with_its_printer_columns(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(), bucket_factory()
    cluster.apply(
        task("TopicSync", ns, "mirror", topic_sync_spec(kafka.bootstrap)),
        task("DataAccessTask", ns, "pull", data_access_spec(kafka.bootstrap)),
    )
    start_obsdump(cluster, ns, "orders", kafka, object_store, topic, bucket)
    wait_state(cluster, ns, "mirror", "topicsyncs", "Paused")
    wait_state(cluster, ns, "pull", "dataaccesstasks", "Paused")

    # One table per kind, each with the kind's own columns (the server's Table, from additionalPrinterColumns).
    listing = cluster.kubectl("get", "ferry", "-n", ns).stdout
    for kind, name, shown in (("ObsDumpTask", "orders", "Running"), ("TopicSync", "mirror", "Paused")):
        table = table_of(listing, kind)
        assert table.headers == printer_columns(kind), listing
        (row,) = table.rows
        assert row["NAME"] == f"{kind.lower()}.{GROUP}/{name}"
        assert row["STATE"] == shown, listing
    accesses = table_of(listing, "DataAccessTask")
    assert accesses.headers == printer_columns("DataAccessTask"), listing
    assert accesses.rows[0]["STATE"] == "Paused" and accesses.rows[0]["TARGET"] == "live-target", listing
    orders = table_of(listing, "ObsDumpTask").rows[0]
    assert orders["READY"] == "True" and orders["LAG"] == "0", listing

    # -o wide adds the priority-1 columns.
    wide = cluster.kubectl("get", "obsdumptasks", "-n", ns, "-o", "wide").stdout
    (table,) = tables(wide)
    expected = ["NAME", "TASK NAME", "STATE", "READY", "LAST DUMP", "LAG", "AGE", "REASON", "MESSAGE"]
    assert table.headers == printer_columns("ObsDumpTask", wide=True) == expected, wide
    status = cluster.status(ns, "orders")
    assert table.rows[0]["REASON"] == status["reason"] == "WorkerRunning"
    assert table.rows[0]["MESSAGE"] == status["message"]

    # Every short name works.
    names = {"ObsDumpTask": "orders", "TopicSync": "mirror", "DataAccessTask": "pull"}
    for kind, name in names.items():
        for short in crd(kind)["spec"]["names"]["shortNames"]:
            shown_names = cluster.kubectl("get", short, "-n", ns, "-o", "name").stdout.split()
            assert shown_names == [f"{kind.lower()}.{GROUP}/{name}"], (short, shown_names)

    # kubectl explain reads the field docs from the CRD's published schema.
    explained = cluster.kubectl("explain", "obsdumptask.spec.target").stdout
    flat = " ".join(explained.split())
    schema = crd("ObsDumpTask")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    target = schema["properties"]["spec"]["properties"]["target"]
    assert " ".join(target["description"].split()) in flat, explained
    for field, definition in target["properties"].items():
        assert re.search(rf"^\s+{re.escape(field)}\s+<", explained, re.MULTILINE), (field, explained)
        assert " ".join(definition["description"].split()) in flat, (field, explained)


# -- 2. garbage collection and the finalizer ------------------------------------------------------


def test_deleting_a_task_garbage_collects_its_deployment_service_account_role_and_binding(
    cluster: Cluster, kafka: KafkaCluster
) -> None:
    ns = cluster.namespace()
    cluster.apply(task("TopicSync", ns, "doomed", topic_sync_spec(kafka.bootstrap)))
    wait_state(cluster, ns, "doomed", "topicsyncs", "Paused")
    owner = cluster.task(ns, "doomed", "topicsyncs")
    assert owner is not None
    name = "doomed-topicsync"
    apps, core = client.AppsV1Api(cluster.api_client), client.CoreV1Api(cluster.api_client)
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    children: dict[str, Callable[[str, str], Any]] = {
        "Deployment": apps.read_namespaced_deployment,
        "ServiceAccount": core.read_namespaced_service_account,
        "Role": rbac.read_namespaced_role,
        "RoleBinding": rbac.read_namespaced_role_binding,
    }
    for kind, read in children.items():
        child = cluster.api_client.sanitize_for_serialization(read(name, ns))
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("TopicSync", "doomed", owner["metadata"]["uid"]), kind
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True, kind
    selector = "ferry.dev/kind=topicsync,ferry.dev/task=doomed"
    wait_for(
        lambda: apps.list_namespaced_replica_set(ns, label_selector=selector).items, timeout=WAIT, what="ReplicaSet"
    )

    cluster.kubectl("delete", "topicsync", "doomed", "-n", ns, "--wait=false")
    wait_for(lambda: cluster.task(ns, "doomed", "topicsyncs") is None, timeout=WAIT, what="task gone")
    for kind, read in children.items():
        wait_for(partial(gone, read, name, ns), timeout=WAIT, what=f"{kind} {name} collected")
    wait_for(
        lambda: not apps.list_namespaced_replica_set(ns, label_selector=selector).items,
        timeout=WAIT,
        what="ReplicaSet collected",
    )


def test_deleting_a_running_task_stays_terminating_with_the_finalizer_until_its_worker_pod_is_gone(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(), bucket_factory()
    start_obsdump(cluster, ns, "held", kafka, object_store, topic, bucket)
    (worker,) = cluster.kubelet.worker_processes("held-obsdumptask")
    assert worker.process is not None
    group = worker.process.pid  # the kubelet starts each container in its own session: pgid == pid
    # Hold the worker still, so that its pod cannot finish terminating until it is let go.
    os.killpg(group, signal.SIGSTOP)
    try:
        cluster.kubectl("delete", "obsdumptask", "held", "-n", ns, "--wait=false")

        def terminating_pod() -> bool:
            pods = worker_pods(cluster, ns, "held", "ObsDumpTask")
            return bool(pods) and all(p.metadata.deletion_timestamp is not None for p in pods)

        wait_for(terminating_pod, timeout=WAIT, what="the worker pod terminating")
        wait_state(cluster, ns, "held", "obsdumptasks", "Terminating")
        body = cluster.task(ns, "held")
        assert body is not None
        assert body["metadata"]["deletionTimestamp"]
        assert FINALIZER in body["metadata"]["finalizers"]
        assert body["status"]["reason"] == "Deleting"
        # Still there while the pod is: the finalizer waits for it, not for the Deployment's replica count.
        deployment = cluster.deployment(ns, "held-obsdumptask")
        assert deployment is not None and deployment["spec"]["replicas"] == 0
        assert worker_pods(cluster, ns, "held", "ObsDumpTask")
        body = cluster.task(ns, "held")
        assert body is not None and FINALIZER in body["metadata"]["finalizers"]
    finally:
        os.killpg(group, signal.SIGCONT)  # the pending SIGTERM is delivered: the worker flushes and exits

    def released() -> bool:
        body = cluster.task(ns, "held")  # read the task first: once it is gone, no worker pod may be left
        pods = worker_pods(cluster, ns, "held", "ObsDumpTask")
        assert body is not None or not pods, "the task was released while a worker pod still existed"
        return body is None

    wait_for(released, timeout=WAIT, what="the task released after its worker pod is gone")
    assert cluster.deployment(ns, "held-obsdumptask") is None


def test_a_pod_deleted_before_the_node_started_it_is_removed_and_never_started(cluster: Cluster) -> None:
    """The test node (tests/support/kubelet.py) confirms the removal of a pod it was given but never started, as a
    kubelet does. A Recreate Deployment whose replicas and template change in one update (`kubectl scale` of a
    task: the worker's share of the caps is in its template) scales its old ReplicaSet up, then at once to zero:
    a pod bound in between used to stay Terminating for good, and the new ReplicaSet waited for it."""
    ns = cluster.namespace()
    wait_for_default_service_account(cluster.api_client, ns)
    core = client.CoreV1Api(cluster.api_client)
    pod = {
        "metadata": {"name": "short-lived"},
        "spec": {
            "nodeName": cluster.kubelet.node_name,
            "containers": [{"name": "c", "image": "none", "command": ["sleep", "600"]}],
        },
    }
    with cluster.kubelet.paused():
        uid = core.create_namespaced_pod(ns, pod).metadata.uid
        core.delete_namespaced_pod("short-lived", ns)  # bound: a graceful deletion, left to the node
        assert core.read_namespaced_pod("short-lived", ns).metadata.deletion_timestamp is not None

    def removed() -> bool:
        return not core.list_namespaced_pod(ns, field_selector="metadata.name=short-lived").items

    wait_for(removed, timeout=30, what="the pod removed by the node")
    assert uid not in cluster.kubelet.pods


# -- 3. the status subresource --------------------------------------------------------------------


def test_status_and_spec_are_written_only_through_their_own_endpoints(cluster: Cluster, kafka: KafkaCluster) -> None:
    ns, api = cluster.namespace(), custom(cluster)
    cluster.apply(task("TopicSync", ns, "split", topic_sync_spec(kafka.bootstrap, startFrom="latest")))
    wait_state(cluster, ns, "split", "topicsyncs", "Paused")

    # A merge patch of the main resource: metadata changes, the status in the same patch is ignored.
    injected = {"state": "Failed", "reason": "Injected", "message": "written through the main resource"}
    patched = api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "topicsyncs",
        "split",
        {"metadata": {"labels": {"probe": "main"}}, "status": injected},
        _content_type="application/merge-patch+json",
    )
    assert patched["metadata"]["labels"]["probe"] == "main"
    assert patched["status"]["state"] == "Paused" and patched["status"]["reason"] != "Injected"
    assert cluster.status(ns, "split", "topicsyncs")["message"] != injected["message"]

    # An update through /status: the status changes, the spec in the same body is ignored.
    def update_status() -> dict[str, Any]:
        for _ in range(20):  # the operator writes the status too: retry on a conflict
            body = cluster.task(ns, "split", "topicsyncs")
            assert body is not None
            body["spec"]["startFrom"] = "earliest"
            body["spec"]["topics"] = ["other-topic"]
            body["status"]["message"] = "written through /status"
            try:
                result: dict[str, Any] = api.replace_namespaced_custom_object_status(
                    GROUP, VERSION, ns, "topicsyncs", "split", body
                )
                return result
            except client.ApiException as err:
                if err.status != 409:
                    raise
        raise AssertionError("the status update kept conflicting")

    generation = (cluster.task(ns, "split", "topicsyncs") or {})["metadata"]["generation"]
    updated = update_status()
    assert updated["status"]["message"] == "written through /status"
    assert updated["spec"]["startFrom"] == "latest" and updated["spec"]["topics"] == ["live-source"]
    assert updated["metadata"]["generation"] == generation
    stored = cluster.task(ns, "split", "topicsyncs")
    assert stored is not None
    assert stored["spec"]["startFrom"] == "latest" and stored["spec"]["topics"] == ["live-source"]


# -- 4. the workers' RBAC -------------------------------------------------------------------------


def test_a_worker_token_reads_and_patches_only_its_own_tasks_status(
    cluster: Cluster, kafka: KafkaCluster, tmp_path: Path
) -> None:
    ns, admin = cluster.namespace(), custom(cluster)
    cluster.apply(
        task("TopicSync", ns, "alpha", topic_sync_spec(kafka.bootstrap)),
        task("TopicSync", ns, "beta", topic_sync_spec(kafka.bootstrap)),
    )
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    for name in ("alpha", "beta"):
        wait_for(
            partial(exists, rbac.read_namespaced_role_binding, f"{name}-topicsync", ns),
            timeout=WAIT,
            what=f"RoleBinding {name}-topicsync",
        )
    request = {"spec": {"audiences": [], "expirationSeconds": 600}}
    token = client.CoreV1Api(cluster.api_client).create_namespaced_service_account_token("alpha-topicsync", ns, request)
    kubeconfig = cluster.kube.control_plane.kubeconfig_for_token(token.status.token, tmp_path / "worker.kubeconfig")
    worker_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    worker = client.CustomObjectsApi(worker_client)
    core = client.CoreV1Api(worker_client)

    def read_own_status() -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = worker.get_namespaced_custom_object_status(
                GROUP, VERSION, ns, "topicsyncs", "alpha"
            )
            return result
        except client.ApiException as err:
            if err.status == 403:  # the RBAC authorizer's cache may lag the new RoleBinding a moment
                return None
            raise

    own = wait_for(read_own_status, timeout=30, what="the worker reading its task's status")
    assert own["metadata"]["name"] == "alpha" and own["status"]["state"] == "Paused"
    patched = worker.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "topicsyncs", "alpha", {"status": {"message": "a worker was here"}}
    )
    assert patched["status"]["message"] == "a worker was here"

    refused = {
        "get alpha (the task itself)": lambda: worker.get_namespaced_custom_object(
            GROUP, VERSION, ns, "topicsyncs", "alpha"
        ),
        "get beta/status": lambda: worker.get_namespaced_custom_object_status(GROUP, VERSION, ns, "topicsyncs", "beta"),
        "patch beta/status": lambda: worker.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, "topicsyncs", "beta", {"status": {"message": "not mine"}}
        ),
        "patch alpha (spec)": lambda: worker.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "topicsyncs", "alpha", {"spec": {"state": "Running"}}
        ),
        "list pods": lambda: core.list_namespaced_pod(ns),
        "list secrets": lambda: core.list_namespaced_secret(ns),
    }
    assert {what: denied(call) for what, call in refused.items()} == dict.fromkeys(refused, 403)
    alpha = admin.get_namespaced_custom_object(GROUP, VERSION, ns, "topicsyncs", "alpha")
    assert alpha["spec"]["state"] == "Paused"


# -- 5. Pod Security admission --------------------------------------------------------------------


def test_a_worker_is_admitted_in_a_restricted_namespace_and_runs(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    ns, topic, bucket = cluster.namespace(labels=labels), topic_factory(), bucket_factory()
    start_obsdump(cluster, ns, "strict", kafka, object_store, topic, bucket)
    (pod,) = worker_pods(cluster, ns, "strict", "ObsDumpTask")
    assert pod.status.phase == "Running"
    replica_sets = client.AppsV1Api(cluster.api_client).list_namespaced_replica_set(ns).items
    refusals = [e for rs in replica_sets for e in cluster.events(ns, rs.metadata.name) if e["reason"] == "FailedCreate"]
    assert refusals == []


# -- 6. server-side apply of the children ---------------------------------------------------------


def test_a_worker_deployment_deleted_or_scaled_behind_the_operators_back_is_put_back_by_the_periodic_sweep(
    cluster: Cluster, kafka: KafkaCluster
) -> None:
    """No handler runs on a Deployment's events (the operator only indexes them): only the periodic sweep over
    every task (reconcile interval 1 s here) can notice that its Deployment was deleted or scaled."""
    ns = cluster.namespace()
    cluster.apply(task("TopicSync", ns, "kept", topic_sync_spec(kafka.bootstrap)))
    wait_state(cluster, ns, "kept", "topicsyncs", "Paused")
    wait_for(lambda: cluster.deployment(ns, "kept-topicsync"), timeout=WAIT, what="the Deployment")
    first = cluster.deployment(ns, "kept-topicsync") or {}
    assert first["spec"]["replicas"] == 0  # Paused

    cluster.kubectl("delete", "deployment", "kept-topicsync", "-n", ns)

    def uid() -> str | None:
        deployment = cluster.deployment(ns, "kept-topicsync")
        return None if deployment is None else str(deployment["metadata"]["uid"])

    def put_back(condition: Callable[[], bool], what: str) -> None:
        try:
            wait_for(condition, timeout=WAIT, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}\noperator:\n{cluster.operator_output()[-3000:]}") from None

    put_back(lambda: uid() not in (None, first["metadata"]["uid"]), "the Deployment again")
    cluster.kubectl("scale", "deployment", "kept-topicsync", "-n", ns, "--replicas=2")
    put_back(
        lambda: (cluster.deployment(ns, "kept-topicsync") or {}).get("spec", {}).get("replicas") == 0,
        "the Deployment scaled back to 0",
    )
    assert state(cluster, ns, "kept", "topicsyncs") == "Paused"


def test_a_node_selector_entry_dropped_from_the_spec_is_removed_from_the_deployment(
    cluster: Cluster, kafka: KafkaCluster
) -> None:
    ns = cluster.namespace()
    spec = topic_sync_spec(kafka.bootstrap, podTemplate={"nodeSelector": {"a": "1", "b": "2"}})
    cluster.apply(task("TopicSync", ns, "placed", spec))

    def node_selector() -> dict[str, str] | None:
        deployment = cluster.deployment(ns, "placed-topicsync")
        if deployment is None:
            return None
        selector: dict[str, str] = pod_template(deployment)["spec"].get("nodeSelector") or {}
        return selector

    wait_for(lambda: node_selector() == {"a": "1", "b": "2"}, timeout=WAIT, what="both node selector entries")
    cluster.patch_spec(ns, "placed", {"podTemplate": {"nodeSelector": {"a": "1", "b": None}}}, plural="topicsyncs")
    task_spec = (cluster.task(ns, "placed", "topicsyncs") or {})["spec"]
    assert task_spec["podTemplate"]["nodeSelector"] == {"a": "1"}
    wait_for(lambda: node_selector() == {"a": "1"}, timeout=WAIT, what=f"b removed: {node_selector()}")
    cluster.patch_spec(ns, "placed", {"podTemplate": None}, plural="topicsyncs")
    wait_for(lambda: node_selector() == {}, timeout=WAIT, what=f"the node selector removed: {node_selector()}")


def test_secret_env_entries_dropped_with_the_credentials_are_removed_from_the_deployment(
    cluster: Cluster, kafka: KafkaCluster, topic_factory: TopicFactory
) -> None:
    ns = cluster.namespace()
    spec = data_access_spec(kafka.bootstrap)
    # Topics that exist: the change below (to the source) is checked against the brokers before it rolls out.
    spec["source"]["dts"]["topic"], spec["target"]["topic"] = topic_factory(), topic_factory()
    dts = spec["source"]["dts"]
    dts.update(securityProtocol="SASL_PLAINTEXT", credentialsSecretRef={"name": "dts-account"})
    cluster.apply(kafka_secret(ns, "dts-account"), task("DataAccessTask", ns, "creds", spec))

    def secret_env() -> dict[str, dict[str, Any]] | None:
        deployment = cluster.deployment(ns, "creds-dataaccesstask")
        if deployment is None:
            return None
        return {k: v for k, v in env_of(deployment).items() if k.startswith("FERRY_SECRET_")}

    wait_for(lambda: secret_env(), timeout=WAIT, what="FERRY_SECRET_* env")
    refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in (secret_env() or {}).items()}
    assert refs == {
        "FERRY_SECRET_SOURCE_SASL_USERNAME": {"name": "dts-account", "key": "username"},
        "FERRY_SECRET_SOURCE_SASL_PASSWORD": {"name": "dts-account", "key": "password"},
    }

    plain = {"securityProtocol": "PLAINTEXT", "saslMechanism": None, "credentialsSecretRef": None}
    cluster.patch_spec(ns, "creds", {"source": {"dts": plain}}, plural="dataaccesstasks")
    wait_for(lambda: secret_env() == {}, timeout=WAIT, what=f"FERRY_SECRET_* env removed: {secret_env()}")
    deployment = cluster.deployment(ns, "creds-dataaccesstask")
    assert deployment is not None
    assert "FERRY_TASK" in env_of(deployment)
    assert "dts-account" not in json.dumps(pod_template(deployment))


# -- 7. helm upgrade --------------------------------------------------------------------------------


def test_helm_upgrade_replaces_the_operator_pod_and_tasks_stay_reconciled(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, topic, bucket = cluster.namespace(), topic_factory(), bucket_factory()
    start_obsdump(cluster, ns, "steady", kafka, object_store, topic, bucket)
    core, apps = client.CoreV1Api(cluster.api_client), client.AppsV1Api(cluster.api_client)
    release = cluster.release_namespace
    (before,) = core.list_namespaced_pod(release).items
    (operator,) = apps.list_namespaced_deployment(release).items

    def interval() -> str | None:
        current = apps.read_namespaced_deployment(operator.metadata.name, release)
        env = {e.name: e.value for e in current.spec.template.spec.containers[0].env}
        return env.get("FERRY_OPERATOR_RECONCILE_INTERVAL")

    assert interval() == "1"
    cluster.helm_upgrade({"operator": {"reconcileInterval": 2}})
    assert interval() == "2"

    def replaced_and_ready() -> bool:
        pods = core.list_namespaced_pod(release).items
        if len(pods) != 1 or pods[0].metadata.uid == before.metadata.uid:
            return False
        conditions = {c.type: c.status for c in pods[0].status.conditions or []}
        return conditions.get("Ready") == "True"

    wait_for(replaced_and_ready, timeout=WAIT, what="a new operator pod, Ready")
    (after,) = core.list_namespaced_pod(release).items
    env = {e.name: e.value for e in after.spec.containers[0].env}
    assert env["FERRY_OPERATOR_RECONCILE_INTERVAL"] == "2"
    assert env["FERRY_OPERATOR_HEARTBEAT_TIMEOUT"] == "15"  # --reuse-values kept the rest

    # The new operator picks the task up: a pause is honoured, the worker flushes and stops.
    cluster.patch_spec(ns, "steady", {"state": "Paused"})
    wait_state(cluster, ns, "steady", "obsdumptasks", "Paused")
    assert cluster.kubelet.worker_processes("steady-obsdumptask") == []
    deployment = cluster.deployment(ns, "steady-obsdumptask")
    assert deployment is not None and deployment["spec"]["replicas"] == 0
