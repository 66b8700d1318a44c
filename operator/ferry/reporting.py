"""How a worker tells the world how it is doing: one interface, a Kubernetes and a console implementation.

The pipeline does not know Kubernetes exists; it hands a `Progress` to whatever reporter it was given.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from ferry.api.base import PartitionProgress, Totals, WorkerError
from ferry.errors import TaskError
from ferry.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# (connect, read) seconds for the worker's calls to the API server: a slow API server delays a report, never
# the data path for longer than this
API_TIMEOUT = (5.0, 10.0)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def worker_error(phase: str, error: TaskError | None) -> WorkerError | None:
    """The error a report carries: only when the worker reports Failed."""
    if error is None or phase != "Failed":
        return None
    return WorkerError(reason=error.reason, message=error.message, time=utc_now())


@dataclass
class Progress:
    """One worker's view: the partitions it owns, its totals, and the error stopping it, if any."""

    phase: str  # Running, Rebalancing, Failed or Stopped
    partitions: list[PartitionProgress] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    error: WorkerError | None = None
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    lag_known: bool = True  # False while the brokers cannot be reached: no lag is better than a wrong 0

    @property
    def lag(self) -> int | None:
        return sum(p.lag or 0 for p in self.partitions) if self.lag_known else None

    def wire(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "heartbeatTime": utc_now(),
            "epoch": self.epoch,
            "lag": self.lag,
            "partitions": [p.wire() for p in reportable(self.partitions)],
            "totals": self.totals.wire(),
            "error": self.error.wire() if self.error else None,
            **self.extra,
        }


# Status objects live in etcd (1.5 MiB each): report the partitions that matter most, all of them up to this.
MAX_REPORTED_PARTITIONS = 200


def reportable(partitions: list[PartitionProgress]) -> list[PartitionProgress]:
    """At most MAX_REPORTED_PARTITIONS, the ones with the highest lag, in topic-partition order."""
    if len(partitions) <= MAX_REPORTED_PARTITIONS:
        return partitions
    worst = sorted(partitions, key=lambda p: -(p.lag or 0))[:MAX_REPORTED_PARTITIONS]
    return sorted(worst, key=lambda p: (p.topic, p.partition))


def latest(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recent of the workers' reports (fields every worker sees alike, such as topic shapes)."""
    return max(reports, key=lambda r: r.get("heartbeatTime", ""), default=None)


def sum_rates(reports: list[dict[str, Any]]) -> dict[str, float]:
    """The workers' write rates added up (each worker reports its own share of the partitions)."""
    return {name: round(sum(r.get(name) or 0 for r in reports), 1) for name in ("recordsPerSecond", "bytesPerSecond")}


def sum_throttling(reports: list[dict[str, Any]]) -> dict[str, float | None]:
    """The time the workers waited on the throughput caps, and the caps they enforce, added up (each worker
    enforces its share); a field no worker reports is None (no such cap). Nothing without reports."""
    if not reports:
        return {}
    summary: dict[str, float | None] = {}
    for name in ("throttledSeconds", "maxRecordsPerSecond", "maxBytesPerSecond"):
        values = [r[name] for r in reports if isinstance(r.get(name), int | float)]
        summary[name] = round(sum(values), 1) if values else None
    return summary


class Reporter(Protocol):
    def report(self, progress: Progress) -> None: ...


def send_progress(
    reporter: Reporter,
    metrics: WorkerMetrics,
    phase: str,
    error: TaskError | None,
    partitions: list[PartitionProgress],
    totals: Totals,
    epoch: int,
    extra: dict[str, Any],
    lag_known: bool = True,
) -> None:
    """One report: the health gauge follows it (0 while the worker reports Failed)."""
    reported = worker_error(phase, error)
    metrics.up.labels(**metrics.labels).set(0 if reported else 1)
    reporter.report(
        Progress(
            phase=phase,
            partitions=partitions,
            totals=totals.model_copy(),
            error=reported,
            epoch=epoch,
            extra=extra,
            lag_known=lag_known,
        )
    )


@dataclass(frozen=True)
class Stuck:
    """A call that has lasted too long: on which side, what it means, and whether the lag is unknown meanwhile."""

    side: str
    error: TaskError
    blinds_lag: bool


class Blocking:
    """The call the data path is blocked in, if any, and since when, so that a report made on the side can say
    what the worker waits for (a store that accepts connections and answers nothing blocks an upload for as long
    as the client's timeouts allow)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._call: tuple[float, Stuck | Callable[[float], Stuck]] | None = None

    @contextmanager
    def call(self, side: str, problem: Callable[[float], TaskError], blinds_lag: bool = False) -> Iterator[None]:
        """Mark a blocking call to `side`; `problem(seconds)` describes it once it has lasted too long.
        `blinds_lag`: while it lasts, the lag cannot be known (a call to the brokers the lag comes from)."""
        with self._lock:
            self._call = (time.monotonic(), lambda seconds: Stuck(side, problem(seconds), blinds_lag))
        try:
            yield
        finally:
            with self._lock:
                self._call = None

    def stuck(self, longer_than: float) -> Stuck | None:
        """The current call, when it has lasted longer than `longer_than` seconds."""
        with self._lock:
            call = self._call
        if call is None:
            return None
        since, describe = call
        seconds = time.monotonic() - since
        return describe(seconds) if seconds > longer_than and callable(describe) else None


class Heartbeat:
    """Beats every half report interval on its own thread, so that no report waits behind a blocked call.

    The data path reports every interval itself and marks it (`reported`). Each beat calls `beat(late)`, late
    being True when the data path has not reported for 1.5 intervals: the beat checks what can change without
    the data path (broker liveness) and, when late, reports what the data path waits for. Reports of both
    threads go one at a time (`lock`).
    """

    def __init__(self, interval: float, beat: Callable[[bool], None]) -> None:
        self.interval = interval
        self.beat = beat
        self.lock = threading.RLock()
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def reported(self) -> None:
        self.last = time.monotonic()

    def late(self) -> bool:
        return time.monotonic() - self.last > 1.5 * self.interval

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval / 2):
            try:
                self.beat(self.late())
            except Exception as err:  # a report on the side must never end the heartbeat
                log.warning("status check on the side failed: %s", type(err).__name__)


class ConsoleReporter:
    """`ferry run`: a line per report, like Kafka Connect standalone's log."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream

    def report(self, progress: Progress) -> None:
        parts = ", ".join(f"{p.topic}[{p.partition}]@{p.committed_offset} lag {p.lag}" for p in progress.partitions)
        extra = " ".join(f"{k}={v}" for k, v in progress.extra.items() if v is not None)
        line = (
            f"{utc_now()} {progress.phase} records={progress.totals.records} bytes={progress.totals.bytes} "
            f"lag={'unknown' if progress.lag is None else progress.lag} {extra} [{parts}]"
        )
        if progress.error:
            line += f" error={progress.error.reason}: {progress.error.message}"
        print(line, file=self.stream, flush=True)


class KubernetesReporter:
    """Under the operator, the worker's own task's status (its Role allows get and patch on nothing else).

    Progress: merge-patch this worker's entry in the CR's `status.workers` map. Each pod writes only its
    own key, so replicas never overwrite each other; the operator aggregates the entries into the task's
    top-level status. It is also the task's ResetLedger, in `status.offsetResetEpoch` and `lastOffsetReset`.

    Progress is sent by a thread of its own, the latest report first and any older one not yet sent dropped, so
    that a slow API server never holds up the data path that reports (a patch may take its timeouts, 15 s).
    `close()` sends the last report before the worker exits.
    """

    def __init__(self, api: Any, plural: str, namespace: str, name: str, worker_id: str) -> None:
        self.api = api  # kubernetes.client.CustomObjectsApi
        self.plural = plural
        self.namespace = namespace
        self.name = name
        self.worker_id = worker_id
        self._pending: Progress | None = None
        self._closed = False
        self._sending = threading.Condition()
        self._sender: threading.Thread | None = None

    def _patch(self, status: dict[str, Any]) -> None:
        from ferry.api import GROUP, VERSION

        body = {"status": status}
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, self.plural, self.name, body, _request_timeout=API_TIMEOUT
        )

    def report(self, progress: Progress) -> None:
        with self._sending:
            self._pending = progress  # latest wins: an older report not sent yet says nothing the new one does not
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_reports, name="status-reports", daemon=True)
                self._sender.start()
            self._sending.notify()

    def close(self, timeout: float = 20.0) -> None:
        """Send the last report (a Stopped worker says so before it exits), waiting at most `timeout`."""
        with self._sending:
            self._closed = True
            self._sending.notify()
            sender = self._sender
        if sender is not None:
            sender.join(timeout)

    def _send_reports(self) -> None:
        while True:
            with self._sending:
                while self._pending is None and not self._closed:
                    self._sending.wait()
                progress, self._pending = self._pending, None
            if progress is None:  # closed, and everything sent
                return
            try:
                self._patch({"workers": {self.worker_id: progress.wire()}})
            except Exception as err:  # a missed heartbeat must never stop the worker
                log.warning("status report failed: %s", type(err).__name__)

    def applied_epoch(self) -> int:
        from ferry.api import GROUP, VERSION

        try:
            body = self.api.get_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, self.plural, self.name, _request_timeout=API_TIMEOUT
            )
        except Exception as err:
            raise TaskError(
                "StatusUnavailable",
                f"cannot read the task's status to see whether its offsets were reset ({type(err).__name__}): "
                "check the worker's ServiceAccount and the API server",
            ) from None
        return int((body.get("status") or {}).get("offsetResetEpoch") or 0)

    def record(self, epoch: int, applied: dict[str, Any] | None = None) -> None:
        try:
            self._patch({"offsetResetEpoch": epoch, **({"lastOffsetReset": applied} if applied else {})})
        except Exception as err:
            raise TaskError(
                "StatusUnavailable",
                f"cannot note in the task's status that its offsets were reset ({type(err).__name__}): "
                "check the worker's ServiceAccount and the API server",
            ) from None


class ResetLedger(Protocol):
    """Which offset epoch's reset (ferry.resets) has been applied. The workers move the consumer group once per
    epoch, and note it here (with what they did, `applied`) so that a restarted worker does not move it again."""

    def applied_epoch(self) -> int: ...

    def record(self, epoch: int, applied: dict[str, Any] | None = None) -> None: ...


class ResumeStore(Protocol):
    """Where a one-shot task (ObsRestoreTask) keeps how far it got, so that a restarted worker continues instead of
    starting over: the task's status.resumePoint under the operator, a state file under `ferry run`
    (ferry.obsrestore.resume). `save` takes a JSON merge patch of the point."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, patch: dict[str, Any]) -> None: ...


class MemoryLedger:
    """`ferry run` and tests: the epoch lives as long as the process."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch
        self.applied: dict[str, Any] | None = None

    def applied_epoch(self) -> int:
        return self.epoch

    def record(self, epoch: int, applied: dict[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.applied = applied
