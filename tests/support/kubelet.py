"""A process kubelet: the node of a real control plane, with local processes instead of containers.

No kubelet or container runtime can run on the test machines, so this stands in for the node only; the
Deployment, ReplicaSet and garbage-collector controllers, admission and RBAC are the real ones. It

- registers a Node and renews its Lease, as a kubelet does;
- binds every unscheduled pod to that Node (there is no scheduler either);
- runs each container of a bound pod as a local process group: the image's entrypoint is a local command
  (``ferry`` images run ``python -m ferry``), ``command``/``args`` as in the pod, the env resolved the way the
  kubelet resolves it (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``, ``envFrom``);
- gives the process a kubeconfig holding a TokenRequest token of the pod's own ServiceAccount, bound to the
  pod, so RBAC applies to it exactly as to a pod in a cluster;
- reports pod status (phase, conditions, container states, restart counts, CrashLoopBackOff with the last
  lines of the log as the termination message, CreateContainerConfigError for a missing Secret key), runs
  httpGet readiness and liveness probes, and restarts containers per ``restartPolicy`` with back-off;
- on deletion sends SIGTERM, SIGKILL after the grace period, then removes the pod, as a kubelet does.

The one deliberate difference from a node: there is no pod network, so all processes share the loopback
interface. Each ``containerPort`` a pod declares gets a free loopback port instead, and env values and args
that name the declared port (``8080`` or ``...:8080...``) are rewritten to it; probes use the same map. In the
same way, ``emptyDir``, ``secret`` and ``configMap`` volumes are folders of the pod, and env values and args
that start with a mount path are rewritten to the folder.
Services get what kube-proxy gives them: the control plane allocates ClusterIPs from a loopback range, and
:class:`ServiceProxy` listens on each ClusterIP:port whose selector matches a pod run here and forwards to
that pod's port, so the API server reaches a webhook Service exactly as in a cluster.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.servers import free_port

NODE_NAME = "ferry-process-node"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
MAX_BACKOFF = 20.0
TOKEN_SECONDS = 3600
_PASSTHROUGH_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "VIRTUAL_ENV")

KubeconfigMaker = Callable[[str, Path], Path]


class ContainerConfigError(Exception):
    """The pod's env cannot be resolved yet (a missing Secret or key): the kubelet waits and retries."""


@dataclass
class Probe:
    path: str
    port: int
    period: float
    failure_threshold: int
    initial_delay: float
    next_at: float = 0.0
    failures: int = 0

    @classmethod
    def parse(cls, spec: dict[str, Any] | None, ports: dict[str, int]) -> Probe | None:
        if not spec or "httpGet" not in spec:
            return None
        get = spec["httpGet"]
        port = get["port"]
        local = ports.get(str(port))
        if local is None:
            return None
        return cls(
            path=get.get("path", "/"),
            port=local,
            period=float(spec.get("periodSeconds", 10)),
            failure_threshold=int(spec.get("failureThreshold", 3)),
            initial_delay=float(spec.get("initialDelaySeconds", 0)),
        )

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def check(self, now: float) -> bool:
        """Probe once; True while the probe has not failed failureThreshold times in a row."""
        self.next_at = now + self.period
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.path}", timeout=1) as reply:
                ok = 200 <= reply.status < 400
        except (urllib.error.URLError, OSError):
            ok = False
        self.failures = 0 if ok else self.failures + 1
        return self.failures < self.failure_threshold


@dataclass
class Container:
    """One container of a pod as a local process group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    readiness: Probe | None
    liveness: Probe | None
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    backoff_until: float = 0.0
    last_state: dict[str, Any] = field(default_factory=dict)

    def start(self, cwd: Path) -> None:
        with self.log_path.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:  # as a runtime's StartError: the container exits at once, with the reason
                log.write(f"process kubelet: cannot start {self.argv[0]}: {err}\n".encode())
                self.process = subprocess.Popen(
                    ["sh", "-c", "exit 127"], stdin=subprocess.DEVNULL, start_new_session=True
                )
        self.started_at = _now()
        self.ready = False
        start = time.monotonic()
        for probe in (self.readiness, self.liveness):
            if probe is not None:
                probe.next_at, probe.failures = start + probe.initial_delay, 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


@dataclass
class PodProcesses:
    """A bound pod and the processes of its containers."""

    namespace: str
    name: str
    uid: str
    deployment: str
    restart_policy: str
    grace: float
    workdir: Path
    ports: dict[str, int]
    container_names: list[str]
    labels: dict[str, str]
    containers: list[Container] = field(default_factory=list)
    kill_at: float | None = None
    waiting: str = ""  # why the containers could not be created yet (CreateContainerConfigError)

    @property
    def running(self) -> bool:
        return any(c.running for c in self.containers)

    def signal(self, sig: signal.Signals) -> None:
        for container in self.containers:
            container.signal(sig)


@dataclass
class _Listener:
    sock: socket.socket
    namespace: str
    selector: dict[str, str]
    target_port: str


class ServiceProxy:
    """kube-proxy for the pods of one process kubelet: ClusterIP:port -> the ready pod's loopback port."""

    def __init__(self, kubelet: ProcessKubelet) -> None:
        self.kubelet = kubelet
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="service-proxy", daemon=True)
        self._thread.start()

    def sync(self, services: list[dict[str, Any]]) -> None:
        wanted: dict[tuple[str, int], _Listener] = {}
        for service in services:
            spec = service["spec"]
            ip, selector = spec.get("clusterIP"), spec.get("selector")
            if not ip or ip == "None" or not selector or not ip.startswith("127."):
                continue
            for port in spec.get("ports") or []:
                key = (ip, int(port["port"]))
                target = str(port.get("targetPort", port["port"]))
                current = self.listeners.get(key)
                if current is None:
                    sock = socket.create_server(key, reuse_port=False)
                    sock.setblocking(False)
                    self._selector.register(sock, selectors.EVENT_READ, key)
                    current = _Listener(sock, service["metadata"]["namespace"], selector, target)
                current.selector, current.target_port = selector, target
                wanted[key] = current
        for key, gone in self.listeners.items():
            if key not in wanted:
                self._selector.unregister(gone.sock)
                gone.sock.close()
        self.listeners = wanted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for listener in self.listeners.values():
            listener.sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not self._selector.get_map():
                self._stop.wait(0.2)
                continue
            for key, _ in self._selector.select(timeout=0.2):
                listener = self.listeners.get(key.data)
                if listener is None:
                    continue
                with contextlib.suppress(OSError):
                    conn, _ = listener.sock.accept()
                    threading.Thread(target=self._forward, args=(conn, listener), daemon=True).start()

    def _backend(self, listener: _Listener) -> int | None:
        for pod in list(self.kubelet.pods.values()):
            if pod.namespace != listener.namespace or not pod.containers or pod.kill_at is not None:
                continue
            labels = pod.labels
            if all(labels.get(k) == v for k, v in listener.selector.items()) and all(c.ready for c in pod.containers):
                return pod.ports.get(listener.target_port)
        return None

    def _forward(self, conn: socket.socket, listener: _Listener) -> None:
        port = self._backend(listener)
        if port is None:  # no ready endpoint: refuse, as kube-proxy's REJECT rule does
            conn.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        pumps = [
            threading.Thread(target=_pump, args=(a, b), daemon=True) for a, b in ((conn, upstream), (upstream, conn))
        ]
        for pump in pumps:
            pump.start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.close()


@dataclass
class ProcessKubelet:
    """Runs the pods of a real API server as local processes; see the module docstring."""

    api_client: client.ApiClient
    workdir: Path
    kubeconfig_for_token: KubeconfigMaker
    node_name: str = NODE_NAME
    interval: float = 0.3
    # Which bound pods to run; the others stay Pending, as on a node without room for them.
    runs: Callable[[dict[str, Any]], bool] = lambda pod: True
    pods: dict[str, PodProcesses] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _syncing: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _lease_renewed: float = 0.0
    errors: list[str] = field(default_factory=list)
    proxy: ServiceProxy | None = None

    def __enter__(self) -> ProcessKubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proxy = ServiceProxy(self)
        self._register_node()
        self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        if self.proxy is not None:
            self.proxy.close()
        for pod in self.pods.values():
            pod.signal(signal.SIGKILL)
            for container in pod.containers:
                if container.process is not None:
                    container.process.wait(10)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No sync pass while inside: what the API server does meanwhile is seen at once by the next pass."""
        with self._syncing:
            yield

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._syncing:
                    self.sync()
            except Exception as err:  # an API hiccup or a race with a deletion: the next pass retries
                self.errors.append(f"{type(err).__name__}: {err}")
                print(f"process kubelet: {type(err).__name__}: {err}", file=sys.stderr)
            self._stop.wait(self.interval)

    # -- the node -------------------------------------------------------------------------------

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
        }
        with contextlib.suppress(ApiException):  # 409: already registered
            self.core.create_node(body)
        self._node_status()
        self._renew_lease()

    def _node_status(self) -> None:
        now = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "process kubelet is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        capacity = {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "500"}
        status = {"status": {"conditions": [ready], "capacity": capacity, "allocatable": capacity}}
        self.core.patch_node_status(self.node_name, status)

    def _renew_lease(self) -> None:
        coordination = client.CoordinationV1Api(self.api_client)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
        try:
            coordination.patch_namespaced_lease(self.node_name, LEASE_NAMESPACE, {"spec": spec})
        except ApiException as err:
            if err.status != 404:
                raise
            body = {"metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE}, "spec": spec}
            coordination.create_namespaced_lease(LEASE_NAMESPACE, body)
        self._lease_renewed = time.monotonic()

    # -- one pass -------------------------------------------------------------------------------

    def sync(self) -> None:
        if time.monotonic() - self._lease_renewed > 10:
            self._renew_lease()
            self._node_status()
        serialize = self.api_client.sanitize_for_serialization
        for item in self.core.list_pod_for_all_namespaces(field_selector="spec.nodeName=").items:
            unbound = serialize(item)
            if unbound["metadata"].get("deletionTimestamp") is None and self.runs(unbound):
                self._bind(unbound["metadata"]["namespace"], unbound["metadata"]["name"])
        seen = set()
        for item in self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}").items:
            pod = serialize(item)
            key = pod["metadata"]["uid"]
            seen.add(key)
            if key not in self.pods and pod["metadata"].get("deletionTimestamp") is not None:
                # Deleted before it was started here (a Recreate Deployment whose replicas and template change at
                # once scales its old ReplicaSet up, then down at once): nothing runs, so the removal is confirmed
                # now, as a kubelet does. Left alone, the pod would stay Terminating and hold the rollout.
                self._remove(pod["metadata"]["namespace"], pod["metadata"]["name"], key)
                continue
            if key not in self.pods:
                phase = (pod.get("status") or {}).get("phase")
                if phase not in ("Succeeded", "Failed"):
                    self.pods[key] = self._admit(pod)
            if key in self.pods:
                self._sync_pod(self.pods[key], pod)
        if self.proxy is not None:
            services = self.core.list_service_for_all_namespaces().items
            self.proxy.sync([serialize(service) for service in services])
        for key, gone in list(self.pods.items()):
            if key not in seen:  # removed from the API (force-deleted): stop its processes now
                gone.signal(signal.SIGKILL)
                if not gone.running:
                    del self.pods[key]

    def _bind(self, namespace: str, name: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        with contextlib.suppress(ApiException):  # 409: bound meanwhile
            self.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)

    def _admit(self, pod: dict[str, Any]) -> PodProcesses:
        meta, spec = pod["metadata"], pod["spec"]
        owners = meta.get("ownerReferences") or [{}]
        declared = [str(p["containerPort"]) for c in spec["containers"] for p in c.get("ports") or []]
        ports = {port: free_port() for port in declared}
        for c in spec["containers"]:
            for p in c.get("ports") or []:
                if "name" in p:
                    ports[p["name"]] = ports[str(p["containerPort"])]
        workdir = self.workdir / f"{meta['namespace']}.{meta['name']}"
        workdir.mkdir(parents=True, exist_ok=True)
        return PodProcesses(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            deployment=_deployment_of(owners[0].get("name", "")),
            restart_policy=spec.get("restartPolicy", "Always"),
            grace=float(spec.get("terminationGracePeriodSeconds", 30)),
            workdir=workdir,
            ports=ports,
            container_names=[c["name"] for c in spec["containers"]],
            labels=dict(meta.get("labels") or {}),
        )

    def _sync_pod(self, pod: PodProcesses, body: dict[str, Any]) -> None:
        now = time.monotonic()
        if body["metadata"].get("deletionTimestamp") is not None:
            self._terminate(pod, body, now)
            return
        if not pod.containers:
            try:
                pod.containers = self._create_containers(pod, body)
            except ContainerConfigError as err:
                if pod.waiting != str(err):
                    pod.waiting = str(err)
                    self._report(pod, waiting=("CreateContainerConfigError", str(err)))
                return
            pod.waiting = ""
            for container in pod.containers:
                container.start(pod.workdir)
            self._report(pod)
            return
        changed = False
        for container in pod.containers:
            changed |= self._tend(pod, container, now)
        if changed:
            self._report(pod)

    def _tend(self, pod: PodProcesses, container: Container, now: float) -> bool:
        """Probe, restart or back off one container; True when its reported state changed."""
        if container.running:
            was_ready = container.ready
            if container.liveness is not None and container.liveness.due(now) and not container.liveness.check(now):
                container.signal(signal.SIGKILL)  # a failed liveness probe restarts the container
                if container.process is not None:
                    container.process.wait(10)
                return self._exited(pod, container, now, "liveness probe failed")
            if container.readiness is None:
                container.ready = True
            elif container.readiness.due(now):
                container.ready = container.readiness.check(now) and container.readiness.failures == 0
            return container.ready != was_ready
        if container.backoff_until == 0.0:
            return self._exited(pod, container, now, "")
        if now >= container.backoff_until and pod.restart_policy != "Never":
            container.backoff_until = 0.0
            container.start(pod.workdir)
            return True
        return False

    def _exited(self, pod: PodProcesses, container: Container, now: float, why: str) -> bool:
        assert container.process is not None
        code = container.process.returncode
        container.last_state = {
            "terminated": {
                "exitCode": code,
                "reason": "Error" if code else "Completed",
                "message": why or _tail(container.log_path),
                "startedAt": container.started_at,
                "finishedAt": _now(),
            }
        }
        container.ready = False
        restart = pod.restart_policy == "Always" or (pod.restart_policy == "OnFailure" and code != 0)
        if restart:
            container.restarts += 1
            container.backoff_until = now + min(2.0**container.restarts, MAX_BACKOFF)
        else:
            container.backoff_until = float("inf")
        return True

    def _terminate(self, pod: PodProcesses, body: dict[str, Any], now: float) -> None:
        if pod.kill_at is None:
            grace = body["metadata"].get("deletionGracePeriodSeconds")
            pod.kill_at = now + (pod.grace if grace is None else float(grace))
            pod.signal(signal.SIGTERM)
        elif now > pod.kill_at:
            pod.signal(signal.SIGKILL)
        if pod.running:
            return
        del self.pods[pod.uid]
        self._remove(pod.namespace, pod.name, pod.uid)

    def _remove(self, namespace: str, name: str, uid: str) -> None:
        """Confirm a deleted pod's removal: nothing of it runs here any more."""
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        with contextlib.suppress(ApiException):  # 404/409: gone already
            self.core.delete_namespaced_pod(name, namespace, body=options)

    # -- containers -----------------------------------------------------------------------------

    def _create_containers(self, pod: PodProcesses, body: dict[str, Any]) -> list[Container]:
        spec = body["spec"]
        kubeconfig = self._kubeconfig(pod, spec.get("serviceAccountName") or "default")
        volumes = self._volumes(pod, spec.get("volumes") or [])
        containers = []
        for c in spec["containers"]:
            mounts = {
                m["mountPath"]: volumes[m["name"]] / m.get("subPath", "")
                for m in c.get("volumeMounts") or []
                if m["name"] in volumes
            }
            declared = {k: _rewrite(v, pod.ports, mounts) for k, v in self._resolve_env(pod, body, c).items()}
            env = {**self._base_env(pod, kubeconfig), **declared}  # the kubelet's own paths are not rewritten
            containers.append(
                Container(
                    name=c["name"],
                    argv=_local_argv(c, pod.ports, mounts),
                    env=env,
                    log_path=pod.workdir / f"{c['name']}.log",
                    readiness=Probe.parse(c.get("readinessProbe"), pod.ports),
                    liveness=Probe.parse(c.get("livenessProbe"), pod.ports),
                )
            )
        return containers

    def _volumes(self, pod: PodProcesses, volumes: list[dict[str, Any]]) -> dict[str, Path]:
        """emptyDir, secret and configMap volumes as folders of the pod (others are not mounted)."""
        made = {}
        for volume in volumes:
            path = pod.workdir / "volumes" / volume["name"]
            if "emptyDir" in volume:
                data: dict[str, str] = {}
            elif "secret" in volume:
                ref = volume["secret"]
                data = self._secret(pod.namespace, ref["secretName"], ref.get("optional"))
            elif "configMap" in volume:
                ref = volume["configMap"]
                data = self._config_map(pod.namespace, ref["name"], ref.get("optional"))
            else:
                continue
            names = {item["key"]: item["path"] for item in ref.get("items") or []} if "emptyDir" not in volume else {}
            path.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                if names and key not in names:
                    continue
                target = path / names.get(key, key)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(value)
            made[volume["name"]] = path
        return made

    def _kubeconfig(self, pod: PodProcesses, service_account: str) -> Path:
        request = {
            "spec": {
                "audiences": [],
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid},
            }
        }
        try:
            token = self.core.create_namespaced_service_account_token(service_account, pod.namespace, request)
        except ApiException as err:
            raise ContainerConfigError(
                f"serviceaccount {service_account!r}: token request refused ({err.status})"
            ) from None
        return self.kubeconfig_for_token(token.status.token, pod.workdir / "kubeconfig")

    def _base_env(self, pod: PodProcesses, kubeconfig: Path) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSTHROUGH_ENV if name in os.environ}
        tmp = pod.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env.update(HOME=str(pod.workdir), TMPDIR=str(tmp), HOSTNAME=pod.name, KUBECONFIG=str(kubeconfig))
        return env

    def _resolve_env(self, pod: PodProcesses, body: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        resolved: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret(pod.namespace, source["secretRef"]["name"], source["secretRef"].get("optional"))
            else:
                ref = source["configMapRef"]
                data = self._config_map(pod.namespace, ref["name"], ref.get("optional"))
            resolved.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            value = self._env_value(pod, body, item)
            if value is not None:
                resolved[item["name"]] = _expand(value, resolved)
        return resolved

    def _env_value(self, pod: PodProcesses, body: dict[str, Any], item: dict[str, Any]) -> str | None:
        source = item.get("valueFrom")
        if source is None:
            return str(item.get("value", ""))
        for kind, read in (("secretKeyRef", self._secret), ("configMapKeyRef", self._config_map)):
            if kind in source:
                ref = source[kind]
                data = read(pod.namespace, ref["name"], ref.get("optional"))
                if ref["key"] in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind[:-6]} {ref['name']}")
        if "fieldRef" in source:
            return _field(body, source["fieldRef"]["fieldPath"])
        raise ContainerConfigError(f"unsupported env source {sorted(source)} for {item['name']}")

    def _secret(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise ContainerConfigError(f'secret "{name}" not found') from None
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _config_map(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            found = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise ContainerConfigError(f'configmap "{name}" not found') from None
        return dict(found.data or {})

    # -- status ---------------------------------------------------------------------------------

    def _report(self, pod: PodProcesses, waiting: tuple[str, str] | None = None) -> None:
        statuses = []
        for container in pod.containers:
            if container.running:
                state: dict[str, Any] = {"running": {"startedAt": container.started_at}}
            elif container.backoff_until == float("inf"):
                state = container.last_state
            else:
                state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}}
            statuses.append(
                {
                    "name": container.name,
                    "ready": container.ready,
                    "started": container.running,
                    "restartCount": container.restarts,
                    "state": state,
                    "lastState": container.last_state,
                    "image": "process",
                    "imageID": "",
                    "containerID": f"process://{container.process.pid if container.process else 0}",
                }
            )
        if waiting is not None:
            reason, message = waiting
            statuses = [
                {
                    "name": name,
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                    "image": "process",
                    "imageID": "",
                }
                for name in pod.container_names
            ]
        ready = bool(pod.containers) and all(c.ready for c in pod.containers)
        finished = bool(pod.containers) and all(c.backoff_until == float("inf") for c in pod.containers)
        phase = "Running" if pod.containers and not finished else "Pending"
        if finished:
            codes = [c.process.returncode if c.process else 1 for c in pod.containers]
            phase = "Succeeded" if not any(codes) else "Failed"
        now = _now()
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": now},
            {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
        ]
        status = {"phase": phase, "conditions": conditions, "containerStatuses": statuses, "startTime": now}
        with contextlib.suppress(ApiException):  # the pod may be gone meanwhile
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})

    # -- for tests ------------------------------------------------------------------------------

    def worker_processes(self, deployment: str) -> list[Container]:
        """The running containers of the pods of one Deployment."""
        return [c for p in self.pods.values() if p.deployment == deployment for c in p.containers if c.running]


def _deployment_of(replica_set: str) -> str:
    # A ReplicaSet of a Deployment is named <deployment>-<pod-template-hash>.
    return replica_set.rsplit("-", 1)[0] if "-" in replica_set else replica_set


def _local_argv(container: dict[str, Any], ports: dict[str, int], mounts: dict[str, Path]) -> list[str]:
    """What runs the container here: Ferry's image is `python -m ferry` of this environment. Only the pod's
    own command and args are rewritten for ports and mounts, never this machine's paths."""
    image = container.get("image", "")
    repository = image.rsplit("@", 1)[0].rsplit(":", 1)[0] if "/" in image or ":" in image else image
    command = [_rewrite(part, ports, mounts) for part in container.get("command") or []]
    args = [_rewrite(part, ports, mounts) for part in container.get("args") or []]
    if command[:1] == ["ferry"] or (not command and repository.rsplit("/", 1)[-1] == "ferry"):
        command = [sys.executable, "-m", "ferry", *command[1:]]
    if not command:
        raise ContainerConfigError(f"image {image!r} has no local entrypoint in the process kubelet")
    return command + args


def _rewrite(text: str, ports: dict[str, int], mounts: dict[str, Path]) -> str:
    """Point a declared containerPort at the loopback port this pod got (no pod network here), and a mount
    path at the folder that holds the volume (no mount namespace either)."""
    for mount_path, local_path in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
            return str(local_path) + text[len(mount_path.rstrip("/")) :]
    for declared, local in ports.items():
        if declared.isdigit():
            text = text if text != declared else str(local)
            text = re.sub(rf":{declared}(?=\D|$)", f":{local}", text)
    return text


def _expand(value: str, env: dict[str, str]) -> str:
    # $(VAR) references to variables defined earlier, as the kubelet expands them; $$ escapes.
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]) if m[1] else "$", value)


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match[1]) or {}).get(match[2], ""))
    raise ContainerConfigError(f"unsupported fieldRef {path}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
