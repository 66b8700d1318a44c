"""Running one task's worker: signals, metrics endpoint, and the pipeline, the same under a pod and `ferry run`."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from types import FrameType

from ferry.credentials import Sensitive
from ferry.metrics import MetricsServer, WorkerMetrics
from ferry.reporting import Reporter, ResetLedger, ResumeStore
from ferry.settings import WorkerSettings
from ferry.tasks import KindPlugin, Task, WorkerContext

log = logging.getLogger(__name__)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (pod deletion, scale to zero) and SIGINT flush and commit before exit."""

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: flushing and committing before exit", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_task(
    plugin: KindPlugin,
    task: Task,
    secrets: dict[str, Sensitive],
    consumer_group: str,
    reporter: Reporter,
    settings: WorkerSettings,
    stop: threading.Event,
    epoch: int = 0,
    resets: ResetLedger | None = None,
    reset_to: str | None = None,
    worker_id: str = "worker",
    resume: ResumeStore | None = None,
) -> None:
    metrics = WorkerMetrics(task.definition.kind, f"{task.namespace}/{task.name}", task.spec.task_name or "")
    server = None
    if settings.metrics_port >= 0:
        server = MetricsServer(metrics, settings.metrics_port, stall_seconds=settings.stall_seconds).start()
        log.info("metrics and health on port %d", server.port)
    context = WorkerContext(
        secrets,
        consumer_group,
        reporter,
        metrics,
        settings,
        epoch,
        reset_to=reset_to,
        worker_id=worker_id,
        resume=resume,
    )
    if resets is not None:
        context = replace(context, resets=resets)
    try:
        plugin.build_pipeline(task, context).run(stop)
    finally:
        if server is not None:
            server.stop()
