"""Prometheus metrics every worker exposes, and the small HTTP server for /metrics and /healthz."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class WorkerMetrics:
    """One registry per worker so tests and `ferry run` can hold several side by side."""

    def __init__(self, kind: str, task: str, task_name: str = "") -> None:
        self.registry = CollectorRegistry()
        # task is namespace/name; task_name the display name (spec.taskName), empty when the task has none.
        self.labels = {"kind": kind, "task": task, "task_name": task_name}
        base = ["kind", "task", "task_name"]
        tp = [*base, "topic", "partition"]
        self.records = Counter("ferry_records_total", "Records delivered to the target.", tp, registry=self.registry)
        self.bytes = Counter(
            "ferry_bytes_total",
            "Bytes of record payload delivered to the target.",
            tp,
            registry=self.registry,
        )
        self.records_read = Counter(
            "ferry_records_read_total", "Records read from the source.", tp, registry=self.registry
        )
        self.bytes_read = Counter(
            "ferry_bytes_read_total", "Bytes of record payload read from the source.", tp, registry=self.registry
        )
        self.target_records = Counter(
            "ferry_target_records_total",
            "Records written to each target topic (acknowledged): the target topic's throughput.",
            [*base, "topic"],
            registry=self.registry,
        )
        self.target_bytes = Counter(
            "ferry_target_bytes_total",
            "Bytes of record payload written to each target topic (acknowledged).",
            [*base, "topic"],
            registry=self.registry,
        )
        self.lag = Gauge("ferry_lag_records", "Records not yet delivered, per partition.", tp, registry=self.registry)
        self.committed = Gauge(
            "ferry_committed_offset", "Next offset to read, as committed.", tp, registry=self.registry
        )
        self.errors = Counter("ferry_errors_total", "Errors by reason.", [*base, "reason"], registry=self.registry)
        self.dump_latency = Histogram(
            "ferry_dump_latency_seconds",
            "Time to write one object to the object store.",
            base,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.objects = Counter(
            "ferry_objects_total",
            "Objects written to the object store.",
            [*base, "topic"],
            registry=self.registry,
        )
        self.separator_records = Counter(
            "ferry_dump_separator_records_total",
            "Records written in the values-only format (storeKeys false) whose value contains the record "
            "separator, so that they read back as more than one record.",
            [*base, "topic"],
            registry=self.registry,
        )
        self.up = Gauge("ferry_worker_healthy", "1 while the worker makes progress.", base, registry=self.registry)
        # For the FerryNoDump alert: no object for two periods (ObsDumpTask only; set at start, then per object).
        self.last_dump = Gauge(
            "ferry_last_dump_timestamp_seconds",
            "When the worker last wrote an object (or started, before its first).",
            base,
            registry=self.registry,
        )
        self.dump_period = Gauge(
            "ferry_dump_period_seconds", "The task's dumpPeriodSeconds.", base, registry=self.registry
        )
        self.throttled = Counter(
            "ferry_throttled_seconds_total",
            "Seconds the worker waited to stay within its share of the task's maxRecordsPerSecond and "
            "maxBytesPerSecond (only for tasks with a cap).",
            base,
            registry=self.registry,
        )
        # TopicSync with spec.consumerGroups: each worker for the partitions the copy gave it (ferry.topicsync.groups).
        group = [*base, "group"]
        self.group_ready = Gauge(
            "ferry_consumer_group_failover_ready",
            "1 while the consumer group's offsets of this worker's partitions are translated and committed on the "
            "target (min over the workers: the group's), 0 otherwise.",
            group,
            registry=self.registry,
        )
        self.group_lag = Gauge(
            "ferry_consumer_group_translated_lag",
            "Records the consumer group would still read on the target from its translated offsets, over this "
            "worker's partitions (sum over the workers: the group's).",
            group,
            registry=self.registry,
        )
        self.group_commits = Counter(
            "ferry_consumer_group_offsets_translated_total",
            "Partition offsets of the consumer group translated and committed on the target.",
            group,
            registry=self.registry,
        )
        self.last_progress = time.monotonic()

    def partition(self, metric: Counter | Gauge, topic: str, partition: int) -> Counter | Gauge:
        return metric.labels(**self.labels, topic=topic, partition=str(partition))

    def error(self, reason: str) -> None:
        self.errors.labels(**self.labels, reason=reason).inc()

    def tick(self) -> None:
        """The main loop is alive; /healthz reads this."""
        self.last_progress = time.monotonic()

    def healthy(self, stall_seconds: float) -> bool:
        return time.monotonic() - self.last_progress < stall_seconds


class MetricsServer:
    """Serves /metrics and /healthz; /healthz fails only when the main loop has stalled, not on a
    Failed task, so that a worker waiting for a user's fix is not restarted in a crash loop."""

    def __init__(self, metrics: WorkerMetrics, port: int, host: str = "0.0.0.0", stall_seconds: float = 120) -> None:
        handler = _handler(metrics, stall_seconds)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(metrics: WorkerMetrics, stall_seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok = metrics.healthy(stall_seconds)
                self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds would drown the worker's log

    return Handler


class TaskStateMetrics:
    """The operator's view for dashboards: `ferry_task_state{kind,namespace,task,task_name,state} 1` per task, `task`
    being `namespace/name` and `task_name` the display name (spec.taskName, empty when unset) as in the workers'
    metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.state = Gauge(
            "ferry_task_state",
            "1 for each task's current status.state (Unassigned, Running, Paused, Failed, Terminating).",
            ["kind", "namespace", "task", "task_name", "state"],
            registry=self.registry,
        )
        # (kind, namespace, task) to the (task_name, state) labels of its one series.
        self.current: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.lock = threading.Lock()

    def set(self, kind: str, namespace: str, name: str, state: str, task_name: str = "") -> None:
        task = f"{namespace}/{name}"
        key = (kind, namespace, task)
        with self.lock:
            previous = self.current.get(key)
            if previous is not None and previous != (task_name, state):
                self.state.remove(kind, namespace, task, *previous)
            self.state.labels(kind, namespace, task, task_name, state).set(1)
            self.current[key] = (task_name, state)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        task = f"{namespace}/{name}"
        with self.lock:
            previous = self.current.pop((kind, namespace, task), None)
            if previous is not None:
                self.state.remove(kind, namespace, task, *previous)
