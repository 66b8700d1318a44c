"""How the operator scales with the number of tasks, on a real control plane.

    python -m bench.operator_scale [--tasks N] [--interval S] [--window S] [--timeout S] [--source DIR]

Starts etcd, kube-apiserver and kube-controller-manager on free ports (tests/support/controlplane.py; no
kubelet, so no worker runs: the Deployments' pods stay Pending), applies Ferry's CRDs, creates the Secret the
tasks name in each namespace, starts the operator as `python -m ferry operator` (the chart's command) with the
admin kubeconfig, and creates N tasks at once from 8 threads: ObsDumpTasks (9 in 10) and TopicSyncs, spread
over namespaces (one per 200 tasks, at least 2) and Kafka instances (at most 15 dumps on one, under the
limit of 18), so every task gets a Deployment. Then it prints:

  time to all Deployments, and to all access objects (ServiceAccount, Role, RoleBinding per task);
  create -> Deployment p50/p95: from each create call's return to the Deployment's ADDED event on a watch;
  API requests per task while the tasks are created (the same counter's diff from before the first create to
      all access objects, divided by N; the controller manager's ReplicaSets, pods and Events included), and the
      operator's CPU seconds over that time;
  API requests per second by verb and resource in steady state: the diff of kube-apiserver's
      apiserver_request_total over --window seconds, after --settle seconds (at least two reconcile
      intervals) of quiet. The bench sends nothing in the window but the two metric scrapes (the "GET "
      row); the counter has no user-agent label, so kube-controller-manager's requests are in it too (its
      leases and endpoints are left out; the ReplicaSet and pod rows are its own);
  operator RSS and CPU seconds per minute (from /proc of the operator process, over the window);
  the oldest reconcile age: the operator's ferry_operator_oldest_reconcile_age_seconds gauge at the end of
      the window (n/a for an operator without it).

--other-pods N first creates N pods that are not Ferry's (a cluster's other workloads; Pending, as no kubelet
runs), before the operator starts, and --other-churn R changes R of them a second (a label) through the settle
time and the window, as kubelets and controllers change pods all the time; with them the bench also prints the
operator's RSS before the first task (after its start-up listing) and its CPU seconds per minute in the window.

--source runs the operator from another copy of the package (e.g. an older tree, for a baseline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from tests.support import controlplane
from tests.support.cluster import CRDS, kubectl
from tests.support.controlplane import ControlPlane, start_control_plane, wait_for_default_service_account
from tests.support.servers import stop_process

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
HOUSEKEEPING = {"leases", "endpointslices", "endpoints", "configmaps"}  # the control plane's own
QUIET_RESOURCES = HOUSEKEEPING | {"events"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def obsdump(namespace: str, name: str, instance: int) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"bootstrapServers": f"kafka-{instance}.kafka.svc:9092"},
            "topics": ["orders"],
            "target": {
                "endpoint": "http://store.storage.svc:8333",
                "bucket": "dumps",
                "directory": name,
                "credentialsSecretRef": {"name": "obs-credentials"},
            },
        },
    }


def topicsync(namespace: str, name: str, instance: int) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"bootstrapServers": f"kafka-{instance}.kafka.svc:9092"},
            "target": {"bootstrapServers": f"dr-{instance}.kafka.svc:9092"},
            "topicPattern": f"{name}-.*",
        },
    }


def plan(tasks: int) -> list[dict[str, Any]]:
    namespaces = max(2, math.ceil(tasks / 200))
    dumps = [i for i in range(tasks) if i % 10 != 9]
    instances = max(1, math.ceil(len(dumps) / 15))
    docs = []
    for i in range(tasks):
        namespace = f"bench-{i % namespaces}"
        if i % 10 == 9:
            docs.append(topicsync(namespace, f"sync-{i}", i % instances))
        else:
            docs.append(obsdump(namespace, f"dump-{i}", dumps.index(i) % instances if tasks <= 2000 else i % instances))
    return docs


def metrics(api: client.ApiClient) -> Counter[tuple[str, str]]:
    response = api.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False)
    raw = response[0] if isinstance(response, tuple) else response
    counts: Counter[tuple[str, str]] = Counter()
    for line in raw.data.decode().splitlines():
        match = LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        counts[(labels.get("verb", ""), labels.get("resource", ""))] += int(float(match["value"]))
    return counts


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a process and its children threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def operator_gauge(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class DeploymentWatch:
    """First sight of each worker Deployment (by its task), from a watch started before the tasks."""

    def __init__(self, api: client.ApiClient) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()
        self.api = api
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        apps = client.AppsV1Api(self.api)
        version = ""
        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    apps.list_deployment_for_all_namespaces,
                    label_selector="app.kubernetes.io/managed-by=ferry-operator",
                    resource_version=version,
                    timeout_seconds=30,
                ):
                    obj = event["object"]
                    version = obj.metadata.resource_version
                    for ref in obj.metadata.owner_references or []:
                        self.seen.setdefault((obj.metadata.namespace, ref.name), time.monotonic())
                    if self.stop.is_set():
                        return
            except client.ApiException:
                version = ""


def create_other_pods(core: client.CoreV1Api, count: int) -> list[tuple[str, str]]:
    """Pods of other workloads, 500 to a namespace (Pending: no kubelet runs)."""
    names = [(f"others-{i // 500}", f"other-{i}") for i in range(count)]
    for namespace in sorted({ns for ns, _ in names}):
        core.create_namespace({"metadata": {"name": namespace}})
        wait_for_default_service_account(core.api_client, namespace)

    def create(key: tuple[str, str]) -> None:
        namespace, name = key
        pod = {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "web", "app": name}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
        }
        core.create_namespaced_pod(namespace, pod)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, names))
    if names:
        print(f"created {len(names)} other pods", flush=True)
    return names


class Churn:
    """Changes `rate` of the other pods a second (a label), round robin, until stopped."""

    def __init__(self, core: client.CoreV1Api, pods: list[tuple[str, str]], rate: float) -> None:
        self.core, self.pods, self.rate = core, pods, rate
        self.stop = threading.Event()
        self.changes = 0
        self.start = time.monotonic()
        if pods and rate > 0:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            namespace, name = self.pods[self.changes % len(self.pods)]
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"generation": str(self.changes)}}})
            self.changes += 1
            self.stop.wait(max(0.0, self.start + self.changes / self.rate - time.monotonic()))


def count_access(api: client.ApiClient, namespaces: set[str]) -> int:
    rbac = client.RbacAuthorizationV1Api(api)
    return sum(
        len(rbac.list_namespaced_role_binding(ns, label_selector="app.kubernetes.io/managed-by=ferry-operator").items)
        for ns in namespaces
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run(args: argparse.Namespace, cp: ControlPlane, workdir: Path) -> dict[str, Any]:
    cache = workdir / "kubectl-cache"
    out = kubectl(cp.kubeconfig, cache, "apply", "--server-side", *[f"-f={p}" for p in CRDS])
    if out.returncode:
        raise SystemExit(out.stderr)
    for path in CRDS:
        kubectl(cp.kubeconfig, cache, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(path))
    api = cp.api_client()
    api.configuration.connection_pool_maxsize = 16
    api = client.ApiClient(api.configuration)
    core = client.CoreV1Api(api)
    docs = plan(args.tasks)
    namespaces = {d["metadata"]["namespace"] for d in docs}
    for ns in sorted(namespaces):
        core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(
            ns,
            {
                "metadata": {"name": "obs-credentials"},
                "stringData": {"accessKey": "bench", "secretKey": "bench-secret"},
            },
        )
    others = create_other_pods(core, args.other_pods)
    metrics_port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(cp.kubeconfig),
        "PYTHONPATH": str(Path(args.source).resolve() if args.source else ROOT / "operator"),
        "FERRY_OPERATOR_RECONCILE_INTERVAL": str(args.interval),
        "FERRY_OPERATOR_METRICS_PORT": str(metrics_port),
        "FERRY_OPERATOR_WORKER_IMAGE": "ferry:bench",
    }
    log_path = workdir / "operator.log"
    log = log_path.open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "ferry", "operator", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    try:
        time.sleep(5 + args.other_pods / 1000)  # Kopf lists what it serves before handling
        rss_at_start = proc_stats(operator.pid)[1]
        watcher = DeploymentWatch(api)
        custom = client.CustomObjectsApi(api)
        created: dict[tuple[str, str], float] = {}

        def create(doc: dict[str, Any]) -> None:
            plural = "obsdumptasks" if doc["kind"] == "ObsDumpTask" else "topicsyncs"
            custom.create_namespaced_custom_object("ferry.dev", "v1alpha1", doc["metadata"]["namespace"], plural, doc)
            created[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = time.monotonic()

        processes = {
            "operator": operator.pid,
            "kube-apiserver": cp.apiserver.pid,
            "etcd": cp.etcd.pid,
            "kube-controller-manager": cp.controller_manager.pid,
            "bench": os.getpid(),
        }
        cpu_before = {name: proc_stats(pid)[0] for name, pid in processes.items()}
        initial = metrics(api)
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, docs))
        creating = time.monotonic() - start
        print(f"created {len(docs)} tasks in {creating:.1f}s", flush=True)
        deadline = start + args.timeout
        while len(watcher.seen) < len(docs) and time.monotonic() < deadline:
            if operator.poll() is not None:
                raise SystemExit(f"the operator exited with {operator.returncode}: see {log_path}")
            time.sleep(0.5)
        all_deployments = max(watcher.seen.values(), default=start) - start
        complete = len(watcher.seen) >= len(docs)
        access = count_access(api, namespaces)
        while access < len(docs) and time.monotonic() < deadline:
            time.sleep(2)
            access = count_access(api, namespaces)
        all_access = time.monotonic() - start
        created_all = metrics(api)
        cpu_creating = {name: round(proc_stats(pid)[0] - cpu_before[name], 1) for name, pid in processes.items()}
        latencies = [watcher.seen[k] - created[k] for k in created if k in watcher.seen]
        events: Counter[str] = Counter()
        for ns in namespaces:
            for ev in core.list_namespaced_event(ns).items:
                events[f"{ev.source.component or ev.reporting_component} {ev.reason}"] += ev.count or 1
        watcher.stop.set()
        print(f"deployments {len(watcher.seen)}/{len(docs)} in {all_deployments:.1f}s", flush=True)
        churn = Churn(core, others, args.other_churn)
        time.sleep(max(2 * args.interval, args.settle))  # let the first timer rounds pass
        before, (cpu0, _) = metrics(api), proc_stats(operator.pid)
        t0 = time.monotonic()
        time.sleep(args.window)
        elapsed = time.monotonic() - t0
        after, (cpu1, rss) = metrics(api), proc_stats(operator.pid)
        churn.stop.set()
        oldest = operator_gauge(metrics_port, "ferry_operator_oldest_reconcile_age_seconds")
        rates = {
            f"{verb} {resource}": round((after[(verb, resource)] - before.get((verb, resource), 0)) / elapsed, 2)
            for verb, resource in after
            if after[(verb, resource)] > before.get((verb, resource), 0) and resource not in QUIET_RESOURCES
        }
        per_task = {
            f"{verb} {resource}": round(
                (created_all[(verb, resource)] - initial.get((verb, resource), 0)) / len(docs), 2
            )
            for verb, resource in created_all
            if created_all[(verb, resource)] > initial.get((verb, resource), 0) and resource not in HOUSEKEEPING
        }
        return {
            "tasks": len(docs),
            "namespaces": len(namespaces),
            "interval_s": args.interval,
            "create_calls_s": round(creating, 1),
            "deployments": len(watcher.seen),
            "all_deployments_s": round(all_deployments, 1) if complete else None,
            "access_objects": access,
            "all_access_s": round(all_access, 1) if access >= len(docs) else None,
            "create_to_deployment_p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "create_to_deployment_p95_s": round(percentile(latencies, 0.95), 2) if latencies else None,
            "creation_requests_per_task": dict(sorted(per_task.items(), key=lambda kv: -kv[1])),
            "creation_requests_per_task_total": round(sum(per_task.values()), 2),
            "creation_events_per_task": {k: round(v / len(docs), 2) for k, v in events.most_common()},
            "creation_operator_cpu_s": cpu_creating["operator"],
            "creation_cpu_s_by_process": cpu_creating,
            "steady_window_s": round(elapsed, 1),
            "steady_requests_per_s": dict(sorted(rates.items(), key=lambda kv: -kv[1])),
            "steady_requests_per_s_total": round(sum(rates.values()), 2),
            "other_pods": len(others),
            "other_pod_changes_per_s": round(churn.changes / (time.monotonic() - churn.start), 1),
            "operator_rss_mb_before_the_tasks": round(rss_at_start / 2**20),
            "operator_rss_mb": round(rss / 2**20),
            "operator_cpu_s_per_min": round((cpu1 - cpu0) / elapsed * 60, 1),
            "oldest_reconcile_age_s": oldest,
            "operator_running": operator.poll() is None,
        }
    finally:
        stop_process(operator)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--interval", type=float, default=15.0, help="the operator's reconcile interval (s)")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state measurement window (s)")
    parser.add_argument("--settle", type=float, default=60.0, help="quiet time before the window (s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for Deployments after (s)")
    parser.add_argument("--other-pods", type=int, default=0, help="pods not Ferry's, created first")
    parser.add_argument("--other-churn", type=float, default=0.0, help="changes of those pods a second")
    parser.add_argument("--source", help="run the operator from this directory's ferry package")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (operator.log)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ferry-scale-"))
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, work dir {workdir.name}", flush=True)
    # The tests' etcd quota (256 MiB) holds about 4,700 tasks with their children and Events: a 10,000-task run
    # hit it ("mvcc: database space exceeded") after 22 minutes. 8 GiB is etcd's largest recommended quota.
    controlplane.ETCD_QUOTA_BYTES = max(controlplane.ETCD_QUOTA_BYTES, 8 * 2**30)
    with start_control_plane(workdir / "control-plane") as cp:
        result = run(args, cp, workdir)
    print(json.dumps(result, indent=2))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
