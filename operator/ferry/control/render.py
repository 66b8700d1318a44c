"""Desired child objects of a task, as pure functions of the task (no API calls here)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ferry.api import API_VERSION, GROUP
from ferry.api.base import TaskSpec
from ferry.control.operations import RESTART_ANNOTATION
from ferry.credentials import env_name
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin

METRICS_PORT = 8080
WORKER_UID = 10001
SPEC_HASH_ANNOTATION = "ferry.dev/spec-hash"
CONFIG_HASH_ANNOTATION = "ferry.dev/config-hash"
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


@dataclass(frozen=True)
class Owner:
    """The task object that owns the children (from its metadata)."""

    kind: str
    name: str
    namespace: str
    uid: str


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def fit(name: str, limit: int = 63) -> str:
    """Names and label values are bounded: keep short ones, shorten long ones with a stable hash."""
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9].rstrip('-.')}-{short_hash(name)}"


def selector_labels(owner: Owner) -> dict[str, str]:
    return {"ferry.dev/kind": owner.kind.lower(), "ferry.dev/task": fit(owner.name)}


def selector(labels: Mapping[str, str]) -> str:
    """Labels as a label selector string (equality only), as the API's labelSelector parameters take it."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def label_selector(owner: Owner) -> str:
    """The worker pods' selector as a string (status.labelSelector, for the scale subresource)."""
    return selector(selector_labels(owner))


def worker_labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "ferry-worker",
        "app.kubernetes.io/instance": fit(owner.name),
        "app.kubernetes.io/component": owner.kind.lower(),
        "app.kubernetes.io/part-of": "ferry",
        "app.kubernetes.io/managed-by": "ferry-operator",
        **selector_labels(owner),
    }


def worker_name(owner: Owner) -> str:
    return fit(f"{owner.name}-{owner.kind.lower()}", 58)  # room for the ReplicaSet and pod suffixes


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def task_document(owner: Owner, spec: TaskSpec) -> dict[str, Any]:
    """What the worker reads from FERRY_TASK: the spec holds Secret names and keys, never values."""
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid},
        "spec": spec.wire(),
    }


def deployed_spec(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The task spec a rendered worker Deployment carries in FERRY_TASK (None without one)."""
    if deployment is None:
        return None
    return running_spec((deployment.get("spec") or {}).get("template") or {})


def running_spec(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The task spec a worker pod (or a Deployment's pod template) runs, from its FERRY_TASK (None without one)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for item in container.get("env") or []:
            if item.get("name") == "FERRY_TASK" and "value" in item:
                spec: dict[str, Any] = json.loads(item["value"]).get("spec") or {}
                return spec
    return None


def worker_env(
    plugin: KindPlugin,
    owner: Owner,
    spec: TaskSpec,
    group: str,
    epoch: int,
    settings: OperatorSettings,
    reset_to: str | None = None,
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "FERRY_TASK", "value": json.dumps(task_document(owner, spec), sort_keys=True)},
        {"name": "FERRY_CONSUMER_GROUP", "value": group},
        {"name": "FERRY_OFFSET_EPOCH", "value": str(epoch)},
        # Where the first worker of the epoch moves the group before consuming (ferry.resets); absent: nowhere.
        *([{"name": "FERRY_OFFSET_RESET", "value": reset_to}] if reset_to is not None else []),
        {"name": "FERRY_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "FERRY_REPORT_INTERVAL", "value": str(settings.worker_report_interval)},
        {"name": "FERRY_TOPIC_REFRESH_INTERVAL", "value": str(settings.worker_topic_refresh_interval)},
        {"name": "FERRY_SESSION_TIMEOUT_MS", "value": str(settings.worker_session_timeout_ms)},
        {"name": "FERRY_WORKER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    for role, ref in sorted(plugin.secret_refs(spec).items()):
        env.append({"name": env_name(role), "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}})
    return env


def _container(env: list[dict[str, Any]], spec: TaskSpec, settings: OperatorSettings) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 5}
    resources = spec.resources.wire() if spec.resources else DEFAULT_RESOURCES
    return {
        "name": "worker",
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["worker"],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 6},
        "readinessProbe": {**probe, "initialDelaySeconds": 5, "failureThreshold": 3},
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def render_worker_deployment(
    plugin: KindPlugin,
    owner: Owner,
    spec: TaskSpec,
    *,
    group: str,
    epoch: int,
    replicas: int,
    settings: OperatorSettings,
    reset_to: str | None = None,
    restart: str | None = None,
) -> dict[str, Any]:
    """The worker Deployment: pausing is replicas 0 of the same object, so offsets and pods stay tied. `reset_to`
    is the epoch's offset reset, `restart` the ferry.dev/restart value the pods carry (a new one rolls them)."""
    env = worker_env(plugin, owner, spec, group, epoch, settings, reset_to)
    overrides = spec.pod_template
    pod_labels = {**(overrides.labels if overrides and overrides.labels else {}), **worker_labels(owner)}
    config_hash = short_hash(json.dumps(env, sort_keys=True), 16)
    pod_annotations = {
        **(overrides.annotations if overrides and overrides.annotations else {}),
        CONFIG_HASH_ANNOTATION: config_hash,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        **({RESTART_ANNOTATION: restart} if restart is not None else {}),
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": worker_name(owner),  # its own, bound to a Role over this task only
        "terminationGracePeriodSeconds": 120,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(env, spec, settings)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    if overrides:
        if overrides.node_selector:
            pod_spec["nodeSelector"] = overrides.node_selector
        if overrides.tolerations:
            pod_spec["tolerations"] = [t.wire() for t in overrides.tolerations]
        if overrides.priority_class_name:
            pod_spec["priorityClassName"] = overrides.priority_class_name
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": worker_name(owner),
            "namespace": owner.namespace,
            "labels": worker_labels(owner),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "replicas": replicas,
            # Never two generations of workers at once: the old one flushes and commits before the new starts.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }
    deployment["metadata"]["annotations"] = {
        SPEC_HASH_ANNOTATION: short_hash(json.dumps(deployment["spec"], sort_keys=True), 16)
    }
    return deployment


def render_worker_access(plugin: KindPlugin, owner: Owner) -> list[dict[str, Any]]:
    """The workers' identity: a ServiceAccount, and a Role bound to it that allows reading and patching the
    status of this one task (by resourceNames) and nothing else. All owned by the task, so they go with it."""
    name = worker_name(owner)
    metadata = {
        "name": name,
        "namespace": owner.namespace,
        "labels": worker_labels(owner),
        "ownerReferences": [owner_reference(owner)],
    }
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": metadata,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{plugin.definition.plural}/status"],
                    "resourceNames": [owner.name],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
        },
    ]
