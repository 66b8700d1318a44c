"""The operator's decisions for an ObsRestoreTask, as a pure function: task + what was observed in, the Job and
the status out (the kopf handlers that read and apply are in ferry.obsrestore.handlers).

A restore runs once, as a `batch/v1` Job of one pod with `restartPolicy: OnFailure`: a killed worker restarts in
its pod (or a new pod) and continues from `status.resumePoint`. The state:

- Running while its worker reports progress; Failed with the worker's reason while it reports one (it retries);
- Succeeded once the Job is complete (the worker exits 0 only when everything is restored); for good: a
  Succeeded task keeps its Job (and its pod's log) and never starts another;
- Paused: `spec.state: Paused` deletes the Job (its worker saves its resume point and stops); back to Running, a
  new Job continues from the resume point;
- Failed/JobFailed when the Job gave up (its backoffLimit of pod failures): the Job is kept for its logs; pausing
  and resuming the task starts a new one, which continues from the resume point.

The task's name, the accepted spec (only spec.state may change) and its Secrets are checked as for every kind
(ferry.control.accepted, ferry.control.names); deleting the task deletes the Job (finalizer, and its owner
reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ferry.api.base import ConditionStatus, TaskState
from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION, check_secrets, choose, running_body
from ferry.control.names import check_task_name
from ferry.control.reconcile import Event, consumer_group, crash_looping, named, owner_of, parse_time, rfc3339
from ferry.control.render import (
    SPEC_HASH_ANNOTATION,
    Owner,
    owner_reference,
    render_worker_access,
    render_worker_deployment,
    short_hash,
    worker_labels,
    worker_name,
)
from ferry.obsrestore.model import ObsRestoreTaskSpec, RestorePhase
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin

# Pod failures (a killed or crashed worker, each resuming from the resume point) before the Job gives up.
BACKOFF_LIMIT = 10


@dataclass(frozen=True)
class RestoreObserved:
    """What the operator read from the API before deciding."""

    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    # Secret name to the keys it has (never the values); None when the Secret does not exist.
    secrets: dict[str, set[str] | None] = field(default_factory=dict)
    peers: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class RestoreOutcome:
    job: dict[str, Any] | None  # the Job to create when there is none (None: no Job wanted)
    delete_job: bool  # delete the Job there is
    status: dict[str, Any]
    annotations: dict[str, str | None] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    access: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    phase: RestorePhase
    reason: str
    message: str


def render_job(
    plugin: KindPlugin, owner: Owner, spec: ObsRestoreTaskSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """The restore's Job: the pod every kind's workers have (identity, security, probes, resources, overrides),
    run to completion. A Job's pod template cannot change; the spec cannot either (but for spec.state)."""
    deployment = render_worker_deployment(
        plugin, owner, spec, group=consumer_group(owner, 0), epoch=0, replicas=1, settings=settings
    )
    template = deployment["spec"]["template"]
    template["spec"]["restartPolicy"] = "OnFailure"  # a killed worker restarts and continues from its resume point
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": worker_name(owner),
            "namespace": owner.namespace,
            "labels": worker_labels(owner),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {"backoffLimit": BACKOFF_LIMIT, "template": template},
    }
    job["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: short_hash(json.dumps(job["spec"], sort_keys=True), 16)}
    return job


def job_condition(job: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The Job's condition of this type when it is True (Complete, Failed)."""
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def live_workers(status: dict[str, Any], now: datetime, timeout: float) -> tuple[dict[str, Any], list[str]]:
    """Reports with a recent heartbeat (a Succeeded one too, until it is old), and the stale ones."""
    live, stale = {}, []
    for worker_id, report in (status.get("workers") or {}).items():
        beat = parse_time((report or {}).get("heartbeatTime"))
        if beat is not None and now - beat <= timedelta(seconds=timeout) and report.get("phase") != "Stopped":
            live[worker_id] = report
        else:
            stale.append(worker_id)
    return live, stale


def _progress(status: dict[str, Any]) -> str:
    point = status.get("resumePoint") or {}
    total = status.get("objectsTotal")
    records = f"{point.get('records') or 0} records restored"
    return records if total is None else f"{status.get('objectsRestored') or 0} of {total} objects, {records}"


def _done_message(status: dict[str, Any]) -> str:
    point = status.get("resumePoint") or {}
    targets = ", ".join(sorted(set((status.get("targetTopics") or {}).values()))) or "the target"
    message = (
        f"restored {point.get('records') or 0} records from {point.get('objects') or 0} objects into {targets}"
        f" ({point.get('skipped') or 0} passed over)"
    )
    values_only = status.get("valuesOnlyObjects")
    if values_only:
        message += f"; {values_only} values-only objects: their keys, headers and timestamps were not in the dump"
    return message


def _running(live: dict[str, Any], pods: list[dict[str, Any]], status: dict[str, Any]) -> Verdict:
    failed = [r for r in live.values() if r.get("phase") == "Failed" and r.get("error")]
    if failed:
        error = failed[0]["error"]
        return Verdict(RestorePhase.FAILED, error["reason"], f"{error['message']} (the worker retries)")
    crash = crash_looping(pods)
    if crash is not None:
        return Verdict(RestorePhase.FAILED, crash.reason, crash.message)
    if any(r.get("phase") == "Succeeded" for r in live.values()):
        return Verdict(
            RestorePhase.RUNNING,
            reason="Completing",
            message=f"everything is restored ({_progress(status)}); the Job is finishing",
        )
    if any(r.get("phase") == "Running" for r in live.values()):
        return Verdict(RestorePhase.RUNNING, reason="WorkerRunning", message=f"restoring: {_progress(status)}")
    return Verdict(RestorePhase.UNASSIGNED, reason="WaitingForWorker", message="no worker has reported yet")


def decide_restore(
    plugin: KindPlugin, body: dict[str, Any], observed: RestoreObserved, settings: OperatorSettings
) -> RestoreOutcome:
    """Everything the operator does for one ObsRestoreTask, decided without touching the API."""
    owner = owner_of(body)
    status = dict(body.get("status") or {})
    now = observed.now
    events: list[Event] = []
    annotations: dict[str, str | None] = {}
    patch: dict[str, Any] = {"observedGeneration": body["metadata"].get("generation"), "jobName": worker_name(owner)}
    job = observed.job

    choice = choose(plugin, body, observed.secrets)
    if choice.task is None:
        assert choice.held is not None
        verdict = Verdict(RestorePhase.FAILED, choice.held.reason, choice.held.message)
        return _finish(body, status, patch, verdict, None, False, events, annotations, now)
    task, held = choice.task, choice.held
    spec = task.spec
    assert isinstance(spec, ObsRestoreTaskSpec)
    if choice.record is not None:
        annotations[ACCEPTED_SPEC_ANNOTATION] = json.dumps(choice.record, sort_keys=True)

    live, stale = live_workers(status, now, settings.heartbeat_timeout)
    if stale:
        patch["workers"] = {w: None for w in stale}
    if live:
        summary = plugin.summarize(list(live.values())) if plugin.summarize else {}
        patch.update(summary)
        patch["lastHeartbeatTime"] = max(r["heartbeatTime"] for r in live.values())
        cluster = max(live.values(), key=lambda r: r["heartbeatTime"]).get("targetClusterId")
        if cluster:
            patch["targetClusterId"] = cluster
    point = status.get("resumePoint") or {}
    patch["totals"] = {"records": point.get("records") or 0, "bytes": point.get("bytes") or 0}
    if point:
        patch["recordsSkipped"] = point.get("skipped") or 0
    current = {**status, **patch}

    me = (owner.namespace, owner.name)
    peers = [
        running_body(plugin, p)
        for p in observed.peers
        if ((p["metadata"].get("namespace") or "default"), p["metadata"]["name"]) != me
    ]
    peers.append({**body, "spec": spec.wire()} if held is not None else body)
    admission = check_task_name(task, peers)
    paused = spec.state == TaskState.PAUSED
    blocking = None if paused else check_secrets(plugin, spec, observed.secrets)
    complete, failed = job_condition(job, "Complete"), job_condition(job, "Failed")
    desired: dict[str, Any] | None = None
    delete = False

    if status.get("state") == RestorePhase.SUCCEEDED.value or complete is not None:
        verdict = Verdict(RestorePhase.SUCCEEDED, reason="RestoreComplete", message=_done_message(current))
        if status.get("state") != RestorePhase.SUCCEEDED.value:
            patch["completionTime"] = rfc3339(now)
            patch["currentObject"] = None
    elif admission is not None:
        verdict, delete = Verdict(RestorePhase.FAILED, admission.reason, admission.message), job is not None
    elif paused:
        delete = job is not None
        if job is None and not observed.pods:
            message = f"paused by spec.state; a resume continues from the resume point ({_progress(current)})"
            verdict = Verdict(RestorePhase.PAUSED, reason="Paused", message=message)
            if status.get("pausedAt") is None:
                patch["pausedAt"] = rfc3339(now)
        else:
            was = RestorePhase(status.get("state") or RestorePhase.UNASSIGNED.value)
            verdict = Verdict(
                was, reason="Pausing", message="the worker saves its resume point and stops; its Job is deleted"
            )
    elif blocking is not None:
        # A Secret deleted (or a key removed) under a running restore: its worker holds the values it started with,
        # so the restore goes on (Failed with the reason until it is fixed); without a live worker there is none.
        keeps = job is not None and failed is None and bool(live)
        running = (
            "; until then the worker already running goes on with the credentials it started with (a worker that "
            "restarts cannot start until it is fixed)"
        )
        message = blocking.message + (running if keeps else "")
        verdict, delete = Verdict(RestorePhase.FAILED, blocking.reason, message), job is not None and not keeps
    elif failed is not None:
        last = (status.get("lastError") or {}).get("message")
        verdict = Verdict(
            RestorePhase.FAILED,
            reason="JobFailed",
            message=f"Job {worker_name(owner)} gave up ({failed.get('reason')}: "
            + f"{failed.get('message') or 'no message'})"
            + (f"; the worker's last error: {last}" if last else "")
            + "; set spec.state to Paused and back to Running to start a new Job, which continues from the resume "
            "point",
        )
    elif job is None and observed.pods:
        verdict = Verdict(
            RestorePhase.UNASSIGNED, reason="WaitingForWorker", message="the previous Job's pod is still stopping"
        )
    else:
        desired = render_job(plugin, owner, spec, settings)
        if status.get("pausedAt") is not None:
            events.append(
                Event("Normal", "Resumed", f"resumed: a new Job continues from the resume point ({_progress(current)})")
            )
            patch["pausedAt"] = None
        verdict = _running(live, observed.pods, current)
        if status.get("startTime") is None:
            patch["startTime"] = rfc3339(now)
    failed_report = next((r["error"] for r in live.values() if r.get("phase") == "Failed" and r.get("error")), None)
    if failed_report is not None:
        patch["lastError"] = failed_report
    if held is not None and verdict.phase != RestorePhase.SUCCEEDED:
        if paused:
            verdict = Verdict(
                verdict.phase, verdict.reason, f"{verdict.message}; a spec change is held back: {held.message}"
            )
        else:
            verdict = Verdict(
                RestorePhase.FAILED,
                held.reason,
                f"{held.message}; until then the restore goes on with the last accepted spec",
            )
    outcome = _finish(body, status, patch, verdict, desired, delete, events, annotations, now)
    outcome.access = render_worker_access(plugin, owner)
    return outcome


def _condition(
    previous: list[dict[str, Any]], kind: str, active: bool, reason: str, message: str, generation: Any, now: datetime
) -> dict[str, Any]:
    value = ConditionStatus.TRUE if active else ConditionStatus.FALSE
    before = next((c for c in previous if c.get("type") == kind), None)
    changed = before is None or before.get("status") != value.value
    return {
        "type": kind,
        "status": value.value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": rfc3339(now) if changed or before is None else before.get("lastTransitionTime"),
    }


def _finish(
    body: dict[str, Any],
    status: dict[str, Any],
    patch: dict[str, Any],
    verdict: Verdict,
    job: dict[str, Any] | None,
    delete: bool,
    events: list[Event],
    annotations: dict[str, str | None],
    now: datetime,
) -> RestoreOutcome:
    generation = body["metadata"].get("generation")
    previous = status.get("conditions") or []
    phase = verdict.phase
    patch.update(
        state=phase.value,
        reason=verdict.reason,
        message=verdict.message,
        conditions=[
            _condition(
                previous, "Ready", phase == RestorePhase.RUNNING, verdict.reason, verdict.message, generation, now
            ),
            _condition(
                previous,
                "Paused",
                phase == RestorePhase.PAUSED,
                "Paused" if phase == RestorePhase.PAUSED else "NotPaused",
                "spec.state is Paused" if phase == RestorePhase.PAUSED else "",
                generation,
                now,
            ),
            _condition(
                previous,
                "Complete",
                phase == RestorePhase.SUCCEEDED,
                verdict.reason if phase == RestorePhase.SUCCEEDED else "NotComplete",
                verdict.message if phase == RestorePhase.SUCCEEDED else "",
                generation,
                now,
            ),
        ],
    )
    if status.get("state") != phase.value or status.get("reason") != verdict.reason:
        kind = "Warning" if phase == RestorePhase.FAILED else "Normal"
        events.append(Event(kind, verdict.reason, f"{phase.value}: {verdict.message}"))
    task_name = (body.get("spec") or {}).get("taskName")
    events = [Event(e.type, e.reason, named(e.message, task_name)) for e in events]
    return RestoreOutcome(job, delete, patch, annotations, events)
