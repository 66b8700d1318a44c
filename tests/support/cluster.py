"""A test cluster: a real control plane with Ferry's CRDs, the process kubelet as its node, and the operator
installed by `helm install` of charts/ferry, running from the chart's Deployment under the chart's
ServiceAccount (so it has exactly the chart's RBAC, as in a cluster).

One control plane and one kubelet serve the whole session (:class:`KubeEnv`, the ``kube`` fixture); each
test module installs its own release in its own namespace and uninstalls it afterwards.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.support.chart import Helm
from tests.support.controlplane import ControlPlane
from tests.support.kubelet import PodProcesses, ProcessKubelet
from tests.support.tools import helm_binary

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
KUBECTL_TIMEOUT = 60
# Fast settings for tests, as chart values (the chart turns them into FERRY_OPERATOR_* env).
TEST_VALUES: dict[str, Any] = {
    "operator": {
        "reconcileInterval": 1,
        "heartbeatTimeout": 15,
        "flushTimeout": 60,
        "worker": {"reportInterval": 0.5, "topicRefreshInterval": 2, "sessionTimeoutMs": 10000},
        "specCheck": {"timeout": 60, "retry": 3},
    },
    "image": {"pullPolicy": "Never"},  # nothing is pulled: the process kubelet runs `python -m ferry`
}


def kubectl(kubeconfig: Path, cache: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT)


@dataclass
class KubeEnv:
    """The session's control plane, its node, and helm; Ferry's CRDs applied with server-side apply."""

    control_plane: ControlPlane
    kubelet: ProcessKubelet
    helm: Helm
    workdir: Path
    active: str | None = None  # the release namespace of the running Ferry, if one runs

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = kubectl(self.kubeconfig, self.workdir / "kubectl-cache", *args, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply_crds(self) -> None:
        self.kubectl("apply", "--server-side", "--field-manager=ferry-tests", *[f"-f={path}" for path in CRDS])
        for path in CRDS:
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            self.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}")


@contextlib.contextmanager
def kube_env(control_plane: ControlPlane, workdir: Path) -> Iterator[KubeEnv]:
    api_client = control_plane.api_client()
    with ProcessKubelet(api_client, workdir / "node", control_plane.kubeconfig_for_token) as kubelet:
        env = KubeEnv(control_plane, kubelet, Helm(helm_binary(), workdir / "helm"), workdir)
        env.helm.home.mkdir(parents=True, exist_ok=True)
        env.apply_crds()
        yield env


@dataclass
class Cluster:
    """One Helm release of Ferry on the session's control plane."""

    kube: KubeEnv
    api_client: client.ApiClient
    release_namespace: str
    workdir: Path

    @property
    def kubelet(self) -> ProcessKubelet:
        return self.kube.kubelet

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl(*args, stdin=stdin, check=check)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def namespace(self, labels: Mapping[str, str] | None = None) -> str:
        name = f"ns-{uuid.uuid4().hex[:8]}"
        metadata: dict[str, Any] = {"name": name, "labels": {"ferry.dev/test": "true", **(labels or {})}}
        client.CoreV1Api(self.api_client).create_namespace({"metadata": metadata})
        return name

    def task(self, namespace: str, name: str, plural: str = "obsdumptasks") -> dict[str, Any] | None:
        api = client.CustomObjectsApi(self.api_client)
        try:
            result: dict[str, Any] = api.get_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, plural, name)
            return result
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def status(self, namespace: str, name: str, plural: str = "obsdumptasks") -> dict[str, Any]:
        body = self.task(namespace, name, plural) or {}
        return dict(body.get("status") or {})

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any], plural: str = "obsdumptasks") -> None:
        client.CustomObjectsApi(self.api_client).patch_namespaced_custom_object(
            "ferry.dev", "v1alpha1", namespace, plural, name, {"spec": spec}
        )

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = client.AppsV1Api(self.api_client).read_namespaced_deployment(name, namespace)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise
        result: dict[str, Any] = self.api_client.sanitize_for_serialization(found)
        return result

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        events = client.CoreV1Api(self.api_client).list_namespaced_event(namespace).items
        return [self.api_client.sanitize_for_serialization(e) for e in events if e.involved_object.name == name]

    def event(
        self, namespace: str, name: str, reason: str, type: str | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        """The first Event with this reason (and type) about the object, once it is there: Kopf posts Events in
        the background, so one can land a moment after the status patch that goes with it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(namespace, name):
                if event["reason"] == reason and (type is None or event["type"] == type):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {type or ''} Event {reason} about {namespace}/{name} within {timeout}s")
            time.sleep(0.2)

    def operator_pod(self) -> PodProcesses | None:
        pods = [p for p in self.kubelet.pods.values() if p.namespace == self.release_namespace]
        return pods[0] if pods else None

    def operator_output(self) -> str:
        """Everything the operator printed, across its restarts."""
        logs = sorted((self.kubelet.workdir).glob(f"{self.release_namespace}.*/operator.log"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def helm_upgrade(self, values: Mapping[str, Any], *set_values: str) -> str:
        return self.kube.helm.upgrade(self.release_namespace, self.kube.kubeconfig, values, set_values)


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """base with extra merged in, nested mappings merged key by key."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@contextlib.contextmanager
def running_cluster(
    kube: KubeEnv,
    workdir: Path,
    *,
    run_workers: bool = True,
    values: Mapping[str, Any] | None = None,
    wait_ready: bool = True,
) -> Iterator[Cluster]:
    """helm install charts/ferry into a new namespace; wait for the operator pod to be Ready."""
    if kube.active is not None:  # two operators watching every namespace would both act on each task
        raise RuntimeError(f"Ferry already runs from namespace {kube.active}: one release at a time")
    workdir.mkdir(parents=True, exist_ok=True)
    api_client = kube.control_plane.api_client()
    release_namespace = f"ferry-{uuid.uuid4().hex[:6]}"
    kube.active = release_namespace
    cluster = Cluster(kube, api_client, release_namespace, workdir)
    if not run_workers:
        kube.kubelet.runs = _not_a_worker
    try:
        kube.helm.install(release_namespace, kube.kubeconfig, merged(TEST_VALUES, values or {}))
        if wait_ready:
            _wait_operator_ready(cluster)
        yield cluster
    finally:
        with contextlib.suppress(Exception):  # teardown: report the test's own failure, not this one
            kube.helm.uninstall(release_namespace, kube.kubeconfig)
        _delete_test_namespaces(cluster)
        kube.kubelet.runs = _everything
        with contextlib.suppress(client.ApiException):  # 404: never created
            client.CoreV1Api(api_client).delete_namespace(release_namespace)
        deadline = time.monotonic() + 60
        while cluster.operator_pod() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        kube.active = None


def _not_a_worker(pod: dict[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/name") != "ferry-worker"


def _everything(pod: dict[str, Any]) -> bool:
    return True


def _wait_operator_ready(cluster: Cluster, timeout: float = 90) -> None:
    core = client.CoreV1Api(cluster.api_client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(cluster.release_namespace).items:
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            if conditions.get("Ready") == "True":
                return
        time.sleep(0.3)
    raise AssertionError(
        f"the operator pod did not become Ready within {timeout}s:\n{cluster.operator_output()[-3000:]}"
    )


def _delete_test_namespaces(cluster: Cluster) -> None:
    # Tasks carry the operator's finalizer: delete their namespaces while the operator still runs would be
    # better, but the release is gone; drop the finalizers so the namespaces can go.
    core, custom = client.CoreV1Api(cluster.api_client), client.CustomObjectsApi(cluster.api_client)
    for ns in core.list_namespace(label_selector="ferry.dev/test=true").items:
        for plural in ("obsdumptasks", "obsrestoretasks", "topicsyncs", "dataaccesstasks"):
            with contextlib.suppress(client.ApiException):
                items = custom.list_namespaced_custom_object("ferry.dev", "v1alpha1", ns.metadata.name, plural)
                for item in items["items"]:
                    patch = {"metadata": {"finalizers": None}}
                    custom.patch_namespaced_custom_object(
                        "ferry.dev", "v1alpha1", ns.metadata.name, plural, item["metadata"]["name"], patch
                    )
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(ns.metadata.name)
