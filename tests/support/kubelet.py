"""A stand-in for the Deployment controller and the kubelet, for end-to-end tests against the API emulator.

For every Deployment labelled as a Ferry worker it keeps `spec.replicas` processes running the container's
command (`ferry` + args) with the container's env, resolved the way the kubelet resolves it (`secretKeyRef`
from the Secret through the API, `fieldRef: metadata.name` to the pod name). Surplus processes get SIGTERM
and, after the grace period, SIGKILL. It writes Pod objects (with CrashLoopBackOff when a worker keeps
exiting) and the Deployment's `status.replicas` / `readyReplicas`, as the real controllers do.

The one deliberate difference from a cluster: there is no pod network, so each process gets its own free
metrics port instead of the container port.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.servers import free_port

WORKER_LABEL = "app.kubernetes.io/name"


@dataclass
class PodProcess:
    name: str
    deployment: str
    namespace: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    grace: float
    process: subprocess.Popen[bytes] | None = None
    template_hash: str = ""
    restarts: int = 0
    backoff_until: float = 0.0
    last_exit: str = ""
    terminating: bool = False

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


@dataclass
class FakeKubelet:
    api_client: client.ApiClient
    kubeconfig: Path
    workdir: Path
    interval: float = 0.3
    pods: dict[str, PodProcess] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _counter: int = 0

    def __enter__(self) -> FakeKubelet:
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        for pod in self.pods.values():
            pod.signal(signal.SIGKILL)
            if pod.process:
                pod.process.wait(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as err:  # the emulator restarting or a race with deletion: try again
                print(f"fake kubelet: {type(err).__name__}: {err}")
            self._stop.wait(self.interval)

    # -- one pass -------------------------------------------------------------------------------

    def sync(self) -> None:
        apps = client.AppsV1Api(self.api_client)
        deployments = apps.list_deployment_for_all_namespaces().items
        wanted = set()
        for deployment in deployments:
            if (deployment.metadata.labels or {}).get(WORKER_LABEL) != "ferry-worker":
                continue
            wanted.add((deployment.metadata.namespace, deployment.metadata.name))
            self._sync_deployment(deployment)
        for pod in list(self.pods.values()):
            if (pod.namespace, pod.deployment) not in wanted:
                self._terminate(pod)
        self._reap()

    def _sync_deployment(self, deployment: Any) -> None:
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        mine = [p for p in self.pods.values() if p.deployment == name and p.namespace == namespace]
        alive = [p for p in mine if not p.terminating]
        desired = deployment.spec.replicas or 0
        template = self.api_client.sanitize_for_serialization(deployment.spec.template)
        current = _template_hash(template)
        outdated = [p for p in mine if p.template_hash != current]
        if outdated:  # strategy Recreate: every old pod is gone before a new one starts
            for pod in outdated:
                self._terminate(pod)
            alive = []
        else:
            for pod in alive[desired:]:
                self._terminate(pod)
            for _ in range(desired - len(alive)):
                self._create_pod(deployment, template)
            for pod in alive[:desired]:
                self._restart_if_exited(pod)
        running = [p for p in mine if p.running]
        ready = [p for p in running if not p.terminating]
        status = {
            "status": {
                "replicas": len(running),
                "readyReplicas": len(ready),
                "availableReplicas": len(ready),
                "observedGeneration": deployment.metadata.generation,
            }
        }
        current = deployment.status
        if current is None or (current.replicas or 0) != len(running) or (current.ready_replicas or 0) != len(ready):
            client.AppsV1Api(self.api_client).patch_namespaced_deployment_status(name, namespace, status)

    def _create_pod(self, deployment: Any, template: dict[str, Any]) -> None:
        self._counter += 1
        namespace = deployment.metadata.namespace
        pod_name = f"{deployment.metadata.name}-{self._counter:05d}"
        container = template["spec"]["containers"][0]
        env = self._resolve_env(namespace, pod_name, container.get("env") or [])
        command = [sys.executable, "-m", "ferry", *container.get("args", [])]
        pod = PodProcess(
            name=pod_name,
            deployment=deployment.metadata.name,
            namespace=namespace,
            command=command,
            env=env,
            log_path=self.workdir / f"{pod_name}.log",
            grace=float(template["spec"].get("terminationGracePeriodSeconds", 30)),
            template_hash=_template_hash(template),
        )
        pod.start()
        self.pods[pod_name] = pod
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }
        client.CoreV1Api(self.api_client).create_namespaced_pod(namespace, body)
        self._pod_status(pod, {"running": {"startedAt": _now()}})

    def _resolve_env(self, namespace: str, pod_name: str, env: list[dict[str, Any]]) -> dict[str, str]:
        core = client.CoreV1Api(self.api_client)
        resolved = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
        for item in env:
            source = item.get("valueFrom")
            if source is None:
                resolved[item["name"]] = item.get("value", "")
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = core.read_namespaced_secret(ref["name"], namespace)
                data = secret.data or {}
                resolved[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                resolved[item["name"]] = pod_name
        resolved["FERRY_METRICS_PORT"] = str(free_port())  # no pod network here: one port per process
        return resolved

    def _restart_if_exited(self, pod: PodProcess) -> None:
        if pod.running or time.monotonic() < pod.backoff_until:
            return
        if pod.process is not None and pod.backoff_until == 0.0:
            pod.restarts += 1
            pod.last_exit = _tail(pod.log_path)
            delay = min(2**pod.restarts, 20)
            pod.backoff_until = time.monotonic() + delay
            self._pod_status(
                pod,
                {"waiting": {"reason": "CrashLoopBackOff"}},
                {"terminated": {"exitCode": pod.process.returncode, "message": pod.last_exit}},
            )
            return
        pod.backoff_until = 0.0
        pod.start()
        self._pod_status(pod, {"running": {"startedAt": _now()}})

    def _terminate(self, pod: PodProcess) -> None:
        if not pod.terminating:
            pod.terminating = True
            pod.backoff_until = time.monotonic() + pod.grace  # reused as the kill deadline
            pod.signal(signal.SIGTERM)
        elif time.monotonic() > pod.backoff_until:
            pod.signal(signal.SIGKILL)

    def _reap(self) -> None:
        for name, pod in list(self.pods.items()):
            if pod.terminating and not pod.running:
                del self.pods[name]
                with contextlib.suppress(ApiException):
                    client.CoreV1Api(self.api_client).delete_namespaced_pod(name, pod.namespace)

    def _pod_status(self, pod: PodProcess, state: dict[str, Any], last: dict[str, Any] | None = None) -> None:
        status = {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "ready": "running" in state,
                        "restartCount": pod.restarts,
                        "state": state,
                        "lastState": last or {},
                        "image": "ferry",
                        "imageID": "",
                        "containerID": "",
                    }
                ],
            }
        }
        with contextlib.suppress(ApiException):
            client.CoreV1Api(self.api_client).patch_namespaced_pod_status(pod.name, pod.namespace, status)

    def worker_processes(self, deployment: str) -> list[PodProcess]:
        return [p for p in self.pods.values() if p.deployment == deployment and p.running]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
