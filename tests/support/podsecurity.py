"""The Pod Security Standards' "restricted" profile (which includes "baseline"), as a checker of pod specs.

Mirrors the checks of Kubernetes' pod-security-admission for the ``latest`` policy version
(k8s.io/pod-security-admission/policy): every rule of the profile, each reported with the field that
breaks it. No API server runs in the tests, so this stands in for a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["pod_templates", "restricted_violations"]

# Restricted: the only volume types allowed (plus none of hostPath, which baseline already forbids).
ALLOWED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
# Baseline: the sysctls that are namespaced and safe.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")

_WORKLOAD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "PodTemplate": ("template",),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_templates(documents: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """("Kind/name", pod template {metadata, spec}) for every object that holds a pod."""
    for doc in documents:
        kind = doc.get("kind", "")
        name = f"{kind}/{doc.get('metadata', {}).get('name')}"
        if kind == "Pod":
            yield name, doc
            continue
        path = _WORKLOAD_TEMPLATE_PATHS.get(kind)
        if path is None:
            continue
        node: Any = doc
        for key in path:
            node = node.get(key, {})
        yield name, node


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """Every rule of "restricted" that the pod (or pod template: {metadata, spec}) breaks; [] if it passes."""
    spec: Mapping[str, Any] = pod.get("spec") or {}
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    pod_sc: Mapping[str, Any] = spec.get("securityContext") or {}
    containers = [(field, c) for field in CONTAINER_FIELDS for c in spec.get(field) or []]
    problems: list[str] = []
    problems += _host_namespaces(spec)
    problems += _volumes(spec)
    problems += _sysctls(pod_sc)
    problems += _apparmor_annotations(metadata)
    problems += _pod_level(pod_sc)
    for field, container in containers:
        where = f"spec.{field}[{container.get('name')}]"
        problems += [f"{where}: {p}" for p in _container(container, pod_sc)]
    if not containers:
        problems.append("spec.containers: no containers")
    return problems


def _host_namespaces(spec: Mapping[str, Any]) -> list[str]:
    return [f"spec.{field}: must not be true" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]


def _volumes(spec: Mapping[str, Any]) -> list[str]:
    problems = []
    for volume in spec.get("volumes") or []:
        types = set(volume) - {"name"}
        if "hostPath" in types:
            problems.append(f"spec.volumes[{volume.get('name')}]: hostPath volumes are forbidden")
        elif not types <= ALLOWED_VOLUME_TYPES:
            problems.append(f"spec.volumes[{volume.get('name')}]: volume type {sorted(types)} is not allowed")
    return problems


def _sysctls(pod_sc: Mapping[str, Any]) -> list[str]:
    return [
        f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl"
        for s in pod_sc.get("sysctls") or []
        if s.get("name") not in SAFE_SYSCTLS
    ]


def _apparmor_annotations(metadata: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            problems.append(f"metadata.annotations[{key}]: AppArmor profile {value!r} is not allowed")
    return problems


def _pod_level(pod_sc: Mapping[str, Any]) -> list[str]:
    problems = []
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess: must not be true")
    if pod_sc.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser: must not be 0")
    if pod_sc.get("runAsNonRoot") is False:
        problems.append("spec.securityContext.runAsNonRoot: must not be false")
    seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        problems.append(f"spec.securityContext.seccompProfile.type: {seccomp!r} is not RuntimeDefault or Localhost")
    apparmor = (pod_sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        problems.append(f"spec.securityContext.appArmorProfile.type: {apparmor!r} is not allowed")
    problems += _selinux("spec.securityContext", pod_sc)
    return problems


def _selinux(where: str, sc: Mapping[str, Any]) -> list[str]:
    options = sc.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type: {options.get('type')!r} is not allowed")
    problems += [f"{where}.seLinuxOptions.{f}: must not be set" for f in ("user", "role") if options.get(f)]
    return problems


def _container(container: Mapping[str, Any], pod_sc: Mapping[str, Any]) -> list[str]:
    sc: Mapping[str, Any] = container.get("securityContext") or {}
    problems = []
    # baseline
    if sc.get("privileged"):
        problems.append("securityContext.privileged: must not be true")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess: must not be true")
    if sc.get("procMount", "Default") != "Default":
        problems.append(f"securityContext.procMount: {sc.get('procMount')!r} is not Default")
    problems += [
        f"ports[{p.get('name') or p.get('containerPort')}].hostPort: must be unset or 0"
        for p in container.get("ports") or []
        if p.get("hostPort")
    ]
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        problems.append(f"securityContext.appArmorProfile.type: {apparmor!r} is not allowed")
    problems += _selinux("securityContext", sc)
    # restricted
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext.allowPrivilegeEscalation: must be false")
    run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if run_as_non_root is not True:
        problems.append("securityContext.runAsNonRoot: must be true (here or in the pod's securityContext)")
    if sc.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser: must not be 0")
    seccomp = (sc.get("seccompProfile") or {}).get("type") or (pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP_TYPES:
        problems.append(
            f"securityContext.seccompProfile.type: {seccomp!r} (here or in the pod) is not RuntimeDefault or Localhost"
        )
    capabilities = sc.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("securityContext.capabilities.drop: must include ALL")
    added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
    if added:
        problems.append(f"securityContext.capabilities.add: only NET_BIND_SERVICE is allowed, not {sorted(added)}")
    return problems
