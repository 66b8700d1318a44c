"""The worker Deployment, rendered by a pure function from the task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferry.control.render import Owner, fit, render_worker_deployment
from ferry.obsdump.model import ObsDumpTaskSpec
from ferry.obsdump.worker import PLUGIN
from ferry.settings import OperatorSettings

OWNER = Owner("ObsDumpTask", "orders", "team-a", "0b1c2d3e-0000-4000-8000-000000000000")


def render(replicas: int = 1, **spec: Any) -> dict[str, Any]:
    body = {
        "source": {
            "bootstrapServers": "kafka:9093",
            "securityProtocol": "SASL_SSL",
            "saslMechanism": "SCRAM-SHA-512",
            "credentialsSecretRef": {"name": "kafka-user"},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
        },
        "topics": ["orders"],
        "target": {"endpoint": "https://obs.example", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
        **spec,
    }
    return render_worker_deployment(
        PLUGIN,
        OWNER,
        ObsDumpTaskSpec.model_validate(body),
        group="ferry.team-a.orders.0b1c2d3e",
        epoch=0,
        replicas=replicas,
        settings=OperatorSettings(worker_image="registry.example/ferry:1.2.3"),
    )


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def test_owned_by_the_task_and_selected_by_stable_labels() -> None:
    deployment = render()
    assert deployment["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "ObsDumpTask",
            "name": "orders",
            "uid": OWNER.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"ferry.dev/kind": "obsdumptask", "ferry.dev/task": "orders"}
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_credentials_only_by_secret_reference_and_config_without_secrets() -> None:
    env = {e["name"]: e for e in container(render())["env"]}
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {
        "FERRY_SECRET_SOURCE_SASL_USERNAME": {"name": "kafka-user", "key": "username"},
        "FERRY_SECRET_SOURCE_SASL_PASSWORD": {"name": "kafka-user", "key": "password"},
        "FERRY_SECRET_SOURCE_TLS_CA": {"name": "ca", "key": "ca.crt"},
        "FERRY_SECRET_TARGET_ACCESS_KEY": {"name": "obs", "key": "accessKey"},
        "FERRY_SECRET_TARGET_SECRET_KEY": {"name": "obs", "key": "secretKey"},
    }
    task = json.loads(env["FERRY_TASK"]["value"])
    assert task["spec"]["target"]["credentialsSecretRef"] == {
        "name": "obs",
        "accessKeyKey": "accessKey",
        "secretKeyKey": "secretKey",
    }
    assert env["FERRY_CONSUMER_GROUP"]["value"] == "ferry.team-a.orders.0b1c2d3e"
    assert env["FERRY_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_probes_metrics_port_and_restricted_security_context() -> None:
    deployment = render()
    pod = deployment["spec"]["template"]["spec"]
    worker = container(deployment)
    assert worker["image"] == "registry.example/ferry:1.2.3" and worker["args"] == ["worker"]
    assert worker["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in worker["volumeMounts"]  # the only writable path
    assert worker["resources"]["limits"]["memory"] == "512Mi"


def test_resources_replicas_and_pod_overrides_come_from_the_spec() -> None:
    deployment = render(
        replicas=0,
        resources={"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}},
        podTemplate={
            "nodeSelector": {"pool": "kafka"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "annotations": {"team": "data"},
            "labels": {"ferry.dev/task": "spoofed", "cost": "x"},
            "priorityClassName": "batch",
        },
    )
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 0
    assert container(deployment)["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "kafka"} and pod["spec"]["priorityClassName"] == "batch"
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["metadata"]["annotations"]["team"] == "data"
    assert pod["metadata"]["labels"]["cost"] == "x"
    assert pod["metadata"]["labels"]["ferry.dev/task"] == "orders"  # the selector cannot be overridden


def test_rendering_is_deterministic_and_the_hash_follows_changes() -> None:
    assert render() == render()
    annotation = "ferry.dev/spec-hash"
    assert render()["metadata"]["annotations"][annotation] != render(replicas=0)["metadata"]["annotations"][annotation]


def test_long_names_are_shortened_stably_within_limits() -> None:
    name = "a" * 100
    assert len(fit(name)) == 63 and fit(name) == fit(name) and fit(name) != fit("a" * 99 + "b")
    assert fit("short") == "short"


def test_every_kinds_worker_passes_pod_security_restricted_even_with_pod_overrides() -> None:
    """The operator renders the worker pods itself (the chart cannot): they must pass "restricted" as well."""
    import yaml
    from ferry.registry import PLUGINS
    from ferry.tasks import parse_task

    from tests.support.podsecurity import pod_templates, restricted_violations

    examples = Path(__file__).resolve().parents[1] / "examples"
    docs = [d for path in sorted(examples.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    tasks = [parse_task(d, PLUGINS) for d in docs if d.get("kind") in PLUGINS]
    assert {t.definition.kind for t in tasks} == set(PLUGINS)
    for task in tasks:
        overrides = {"podTemplate": {"nodeSelector": {"pool": "ferry"}, "annotations": {"a": "b"}}}
        spec = task.definition.spec_model.model_validate({**task.spec.wire(), **overrides})
        owner = Owner(task.definition.kind, task.name, "team-a", "0b1c2d3e-0000-4000-8000-000000000000")
        deployment = render_worker_deployment(
            PLUGINS[task.definition.kind], owner, spec, group="g", epoch=0, replicas=1, settings=OperatorSettings()
        )
        [(_, template)] = list(pod_templates([deployment]))
        assert restricted_violations(template) == [], task.definition.kind
