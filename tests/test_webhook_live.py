"""The admission webhook as a cluster runs it: `helm install` with webhook.enabled, the chart's certificate and
ValidatingWebhookConfiguration, the operator serving it from its pod, and kube-apiserver calling it over TLS
through the webhook Service when `kubectl` writes a task."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import wait_for

ALLOW_LOOP = "ferry.dev/allow-replication-loop"


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    values = {"webhook": {"enabled": True}}
    with running_cluster(kube, tmp_path_factory.mktemp("webhook"), run_workers=False, values=values) as running:
        yield running


def obsdump(name: str, namespace: str, bootstrap: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"bootstrapServers": bootstrap},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
            **spec,
        },
    }


def sync(name: str, namespace: str, source: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"bootstrapServers": f"{source}:9092", "instanceId": source},
            "target": {"bootstrapServers": f"{target}:9092", "instanceId": target},
            "topics": ["orders"],
        },
    }


def apply(cluster: Cluster, *docs: dict[str, Any]) -> tuple[int, str]:
    result = cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs), check=False)
    return result.returncode, result.stdout + result.stderr


def unique_instance() -> str:
    return f"kafka-{uuid.uuid4().hex[:8]}:9092"


def test_the_chart_registers_one_webhook_per_kind_with_its_ca(cluster: Cluster) -> None:
    config = json.loads(cluster.kubectl("get", "validatingwebhookconfigurations", "-o", "json").stdout)
    [ours] = [c for c in config["items"] if c["metadata"]["name"].startswith("ferry")]
    paths = sorted(w["clientConfig"]["service"]["path"] for w in ours["webhooks"])
    assert paths == [
        "/validate-dataaccesstasks",
        "/validate-obsdumptasks",
        "/validate-obsrestoretasks",
        "/validate-topicsyncs",
    ]
    assert all(w["clientConfig"]["service"]["namespace"] == cluster.release_namespace for w in ours["webhooks"])
    assert all(w["clientConfig"].get("caBundle") for w in ours["webhooks"])


def test_a_replication_loop_is_refused_by_the_api_server_unless_annotated(cluster: Cluster) -> None:
    ns = cluster.namespace()
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    code, output = apply(cluster, sync("ab", ns, a, b))
    assert code == 0, output
    code, output = apply(cluster, sync("ba", ns, b, a))
    assert code != 0
    assert "denied the request" in output
    assert f"{b} -> {a} -> {b}" in output and ALLOW_LOOP in output
    allowed = sync("ba", ns, b, a)
    allowed["metadata"]["annotations"] = {ALLOW_LOOP: "true"}
    code, output = apply(cluster, allowed)
    assert code == 0, output


def test_the_nineteenth_obsdumptask_on_an_instance_is_refused_by_the_api_server(cluster: Cluster) -> None:
    ns, instance = cluster.namespace(), unique_instance()
    code, output = apply(cluster, *[obsdump(f"dump-{i:02d}", ns, instance) for i in range(18)])
    assert code == 0, output
    code, output = apply(cluster, obsdump("dump-18", ns, instance))
    assert code != 0
    assert f"Kafka instance {instance} already has 18 ObsDumpTasks" in output
    assert "delete one of them first, then create this ObsDumpTask again" in output
    assert cluster.task(ns, "dump-18") is None
    code, output = apply(cluster, obsdump("elsewhere", ns, unique_instance()))
    assert code == 0, output


def spelled_sync(name: str, namespace: str, source: str, target: str) -> dict[str, Any]:
    """A TopicSync naming its clusters by bootstrap list only, as most do."""
    body = sync(name, namespace, "x", "y")
    body["spec"]["source"], body["spec"]["target"] = {"bootstrapServers": source}, {"bootstrapServers": target}
    return body


def test_a_copy_onto_one_cluster_spelled_two_ways_is_refused_once_a_worker_reported_its_id(cluster: Cluster) -> None:
    ns, eu, dr = cluster.namespace(), f"eu-{uuid.uuid4().hex[:6]}", f"dr-{uuid.uuid4().hex[:6]}"
    code, output = apply(cluster, spelled_sync("eu-to-dr", ns, f"{eu}:9092", f"{dr}:9092"))
    assert code == 0, output
    # No worker runs here: write what its workers report, through the status subresource as they do.
    reported = {
        "status": {"sourceClusterId": "EUqOEYBSD34fcwNTJENDM2Qk", "targetClusterId": "DRqOEYBSD34fcwNTJENDM2Qk"}
    }
    client.CustomObjectsApi(cluster.api_client).patch_namespaced_custom_object_status(
        "ferry.dev", "v1alpha1", ns, "topicsyncs", "eu-to-dr", reported
    )
    code, output = apply(cluster, spelled_sync("mirror", ns, f"{eu}:9092", f"{eu}-0:9092,{eu}:9092"))
    assert code != 0 and "denied the request" in output
    assert (
        f"spec.source.bootstrapServers {eu}:9092 and spec.target.bootstrapServers {eu}-0:9092,{eu}:9092 are the "
        f"same Kafka cluster (cluster id EUqOEYBSD34fcwNTJENDM2Qk, as reported by the workers of {ns}/eu-to-dr)"
    ) in output
    assert cluster.task(ns, "mirror", "topicsyncs") is None
    # A spelling no worker has reached cannot be known here: admitted (its worker refuses it, CopyOntoItself).
    code, output = apply(cluster, spelled_sync("mirror", ns, f"{eu}:9092", f"{eu}.elsewhere:9092"))
    assert code == 0, output


def test_only_state_may_change_on_a_live_obsdumptask(cluster: Cluster) -> None:
    ns = cluster.namespace()
    # with its Secret, so the operator accepts the spec (a spec it cannot honour is never recorded as accepted)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "obs", "namespace": ns},
        "stringData": {"accessKey": "a", "secretKey": "s"},
    }
    code, output = apply(cluster, secret, obsdump("orders", ns, unique_instance()))
    assert code == 0, output
    wait_for(
        lambda: "ferry.dev/accepted-spec" in ((cluster.task(ns, "orders") or {})["metadata"].get("annotations") or {}),
        timeout=30,
        what="the accepted spec recorded by the operator",
    )
    moved = cluster.kubectl(
        "patch", "obsdumptask", "orders", "-n", ns, "--type=merge", "-p", '{"spec":{"target":{"bucket":"elsewhere"}}}',
        check=False,
    )  # fmt: skip
    assert moved.returncode != 0  # the CRD's own transition rule refuses it before the webhook is asked
    assert "spec.target cannot change after creation; only spec.state can" in moved.stderr
    paused = cluster.kubectl(
        "patch", "obsdumptask", "orders", "-n", ns, "--type=merge", "-p", '{"spec":{"state":"Paused"}}', check=False
    )
    assert paused.returncode == 0, paused.stderr
    cluster.kubectl("delete", "obsdumptask", "orders", "-n", ns, "--wait=false")
