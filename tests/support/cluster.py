"""A test cluster: the API emulator with Ferry's CRDs, the real operator process, and optionally the fake kubelet."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.support.apiserver import ApiServer, start_apiserver
from tests.support.kubelet import FakeKubelet
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
OPERATOR_ENV = {
    "FERRY_OPERATOR_RECONCILE_INTERVAL": "1",
    "FERRY_OPERATOR_HEARTBEAT_TIMEOUT": "15",
    "FERRY_OPERATOR_FLUSH_TIMEOUT": "60",
    "FERRY_OPERATOR_WORKER_REPORT_INTERVAL": "0.5",
    "FERRY_OPERATOR_WORKER_TOPIC_REFRESH_INTERVAL": "2",
    "FERRY_OPERATOR_WORKER_SESSION_TIMEOUT_MS": "6000",
}


@dataclass
class Cluster:
    api: ApiServer
    api_client: client.ApiClient
    operator: subprocess.Popen[bytes]
    operator_log: Path
    workdir: Path
    kubelet: FakeKubelet | None

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            "kubectl",
            "--kubeconfig",
            str(self.api.kubeconfig),
            "--cache-dir",
            str(self.workdir / "kube"),
            *args,
        ]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def namespace(self) -> str:
        name = f"ns-{uuid.uuid4().hex[:8]}"
        client.CoreV1Api(self.api_client).create_namespace({"metadata": {"name": name}})
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

    def operator_output(self) -> str:
        return self.operator_log.read_text(errors="replace")


@contextlib.contextmanager
def running_cluster(
    workdir: Path, with_kubelet: bool = True, operator_env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    workdir.mkdir(parents=True, exist_ok=True)
    with start_apiserver(workdir / "api", CRDS) as api:
        api_client = api.api_client()
        log_path = workdir / "operator.log"
        env = {
            **os.environ,
            **OPERATOR_ENV,
            "FERRY_OPERATOR_METRICS_PORT": str(free_port()),
            **(operator_env or {}),
            "KUBECONFIG": str(api.kubeconfig),
        }
        command = [
            sys.executable,
            "-m",
            "ferry",
            "operator",
            "-A",
            "--liveness",
            f"http://127.0.0.1:{free_port()}/healthz",
        ]
        with log_path.open("wb") as log:
            operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        kubelet = FakeKubelet(api_client, api.kubeconfig, workdir) if with_kubelet else None
        try:
            if kubelet:
                kubelet.__enter__()
            yield Cluster(api, api_client, operator, log_path, workdir, kubelet)
        finally:
            if kubelet:
                kubelet.__exit__(None, None, None)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait(5)
