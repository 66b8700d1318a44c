"""The operator's decisions, as a pure function: task + what was observed in, desired children and status out.

Level-based: nothing here depends on which event woke the operator, so running it twice gives the same
answer, and a missed event is repaired by the next periodic run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ferry.api.base import ConditionStatus, Phase, TaskSpec, TaskState, normalise_bootstrap
from ferry.control.accepted import (
    ACCEPTED_SPEC_ANNOTATION,
    accepted_doc,
    check_secrets,
    choose,
    hold_back,
    running_body,
)
from ferry.control.expiry import account_expired
from ferry.control.identity import endpoints_of
from ferry.control.names import check_task_name, renamed_into_use
from ferry.control.operations import (
    BY_ANNOTATION,
    BY_RESUME_WINDOW,
    RESET_ANNOTATION,
    pending_reset,
    reset_condition,
    reset_record,
    reset_target,
    restart_notice,
    restart_value,
    take_reset,
)
from ferry.control.preflight import PASSED, judge, needs_check, render_check_job
from ferry.control.render import (
    Owner,
    deployed_spec,
    label_selector,
    render_worker_access,
    render_worker_deployment,
    running_spec,
)
from ferry.errors import TaskError
from ferry.reporting import MAX_REPORTED_PARTITIONS
from ferry.settings import OperatorSettings
from ferry.tasks import KindCondition, KindPlugin


@dataclass(frozen=True)
class Observed:
    """What the operator read from the API before deciding."""

    deployment: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    # Secret name to the keys it has (never the values); None when the Secret does not exist.
    secrets: dict[str, set[str] | None] = field(default_factory=dict)
    # Every task of the same kind in the cluster (for per-instance limits).
    peers: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str
    # About a change this reconcile makes to the workers (a rollout, a restart): a later reconcile finds it made
    # and does not say it again, so it is posted even when the status patch that goes with it is refused.
    applied: bool = False


@dataclass
class Outcome:
    deployment: dict[str, Any] | None
    status: dict[str, Any]
    annotations: dict[str, str | None] = field(default_factory=dict)  # None: remove it
    events: list[Event] = field(default_factory=list)
    # The workers' ServiceAccount, Role and RoleBinding (with the Deployment).
    access: list[dict[str, Any]] = field(default_factory=list)
    # The Job to create that checks a spec change before it rolls out (ferry.control.preflight).
    jobs: list[dict[str, Any]] = field(default_factory=list)


def named(message: str, task_name: str | None) -> str:
    """An Event's message, led by the task's display name (spec.taskName) when it has one: `[orders_dump] ...`."""
    return f"[{task_name}] {message}" if task_name else message


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def consumer_group(owner: Owner, epoch: int) -> str:
    """Unique per task object (uid), renewed when a late resume must forget the saved offsets."""
    group = f"ferry.{owner.namespace}.{owner.name}.{owner.uid[:8]}"
    return group if epoch == 0 else f"{group}.e{epoch}"


def owner_of(body: dict[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(body["kind"], meta["name"], meta.get("namespace") or "default", meta.get("uid") or "")


def crash_looping(pods: list[dict[str, Any]]) -> TaskError | None:
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CrashLoopBackOff":
                last = ((container.get("lastState") or {}).get("terminated") or {}).get("message", "")
                return TaskError(
                    "WorkerCrashLoop",
                    f"worker pod {pod['metadata']['name']} keeps crashing"
                    + (f": {last.strip()[-300:]}" if last else "; see its logs"),
                )
    return None


@dataclass
class _Verdict:
    phase: Phase
    reason: str
    message: str
    replicas: int


def _live_workers(status: dict[str, Any], now: datetime, timeout: float) -> tuple[dict[str, Any], list[str]]:
    live, stale = {}, []
    for worker_id, report in (status.get("workers") or {}).items():
        beat = parse_time((report or {}).get("heartbeatTime"))
        stopped = (report or {}).get("phase") == "Stopped"  # its partitions belong to someone else now
        if beat is not None and now - beat <= timedelta(seconds=timeout) and not stopped:
            live[worker_id] = report
        else:
            stale.append(worker_id)
    return live, stale


def summarize_workers(plugin: KindPlugin, live: dict[str, Any]) -> dict[str, Any]:
    """Top-level progress from each worker's own entry (kind-specific fields by the kind's summary)."""
    reports = list(live.values())
    partitions = sorted((p for r in reports for p in r.get("partitions") or []), key=lambda p: -(p.get("lag") or 0))[
        :MAX_REPORTED_PARTITIONS
    ]
    partitions.sort(key=lambda p: (p["topic"], p["partition"]))
    summary: dict[str, Any] = {
        "partitions": partitions,
        # Unknown while a worker cannot reach its brokers (it reports none), not the sum of the others.
        "lag": None
        if any("lag" in r and r["lag"] is None for r in reports)
        else sum(r.get("lag") or 0 for r in reports),
        "totals": {
            "records": sum((r.get("totals") or {}).get("records", 0) for r in reports),
            "bytes": sum((r.get("totals") or {}).get("bytes", 0) for r in reports),
        },
        "lastHeartbeatTime": max((r["heartbeatTime"] for r in reports), default=None),
    }
    if plugin.summarize is not None:
        summary.update(plugin.summarize(reports))
    return summary


def _spellings(plugin: KindPlugin, spec: dict[str, Any] | None) -> dict[str, str]:
    """A spec's normalised bootstrap lists by the status field holding their cluster id ({} without a spec)."""
    if spec is None:
        return {}
    endpoints = endpoints_of({"spec": spec}, plugin.definition.spec_model)
    return {field: normalise_bootstrap(endpoint.bootstrap_servers) for field, endpoint in endpoints.items()}


def cluster_ids(
    plugin: KindPlugin, spec: TaskSpec, status: dict[str, Any], live: dict[str, Any], observed: Observed
) -> dict[str, Any]:
    """The status patch for `sourceClusterId`/`targetClusterId`: what the brokers of the spec's endpoints told
    the workers now running it.

    A field is set from the latest live report of a worker whose pod runs the same bootstrap list as the spec
    (a pod still flushing the old spec after a change does not count, nor a report whose pod is gone). With
    no such report it is left out, so a merge patch keeps the value learned before: a task stopped by the
    limit, or paused, keeps its identity. It is cleared (None) when the workers were deployed with another
    bootstrap list for that side (the spec moved to other brokers): the old id would name the wrong cluster
    until the new workers report, if they ever do.
    """
    wanted = {side: normalise_bootstrap(e.bootstrap_servers) for side, e in spec.cluster_endpoints().items()}
    if not wanted:
        return {}
    deployed = _spellings(plugin, deployed_spec(observed.deployment))
    running = {(p.get("metadata") or {}).get("name"): _spellings(plugin, running_spec(p)) for p in observed.pods}
    patch: dict[str, Any] = {}
    for side, spelling in wanted.items():
        reports = [
            report
            for worker, report in live.items()
            if isinstance(report.get(side), str) and report[side] and running.get(worker, {}).get(side) == spelling
        ]
        if reports:
            patch[side] = max(reports, key=lambda r: r.get("heartbeatTime") or "")[side]
        elif side in deployed and deployed[side] != spelling and status.get(side) is not None:
            patch[side] = None
    return patch


def _running_verdict(spec: TaskSpec, live: dict[str, Any], epoch: int, observed: Observed) -> _Verdict:
    failed = [r for r in live.values() if r.get("phase") == "Failed" and r.get("error")]
    if failed:
        error = failed[0]["error"]
        return _Verdict(Phase.FAILED, error["reason"], error["message"], spec.replicas)
    crash = crash_looping(observed.pods)
    if crash:
        return _Verdict(Phase.FAILED, crash.reason, crash.message, spec.replicas)
    current = [r for r in live.values() if r.get("phase") == "Running" and r.get("epoch", 0) == epoch]
    if current:
        return _Verdict(
            Phase.RUNNING,
            "WorkerRunning",
            f"{len(current)} of {spec.replicas} workers reporting",
            spec.replicas,
        )
    if any(r.get("phase") == "Rebalancing" for r in live.values()):
        return _Verdict(Phase.UNASSIGNED, "Rebalancing", "the workers' consumer group is rebalancing", spec.replicas)
    return _Verdict(Phase.UNASSIGNED, "WaitingForWorker", "no worker has reported yet", spec.replicas)


def _stopped(deployment: dict[str, Any] | None, pods: list[dict[str, Any]]) -> bool:
    """No worker runs: none wanted, and no pod left, not even one still flushing after its deletion (the
    Deployment's status.replicas no longer counts terminating pods)."""
    if deployment is not None and (deployment.get("status") or {}).get("replicas"):
        return False
    return not pods


def decide(
    plugin: KindPlugin,
    body: dict[str, Any],
    observed: Observed,
    settings: OperatorSettings,
) -> Outcome:
    """Everything the operator does for one task, decided without touching the API."""
    owner = owner_of(body)
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    now = observed.now
    events: list[Event] = []
    annotations: dict[str, str | None] = {}
    patch: dict[str, Any] = {"observedGeneration": generation}

    # The current spec, or the last accepted one while a change cannot be honoured (ferry.control.accepted).
    choice = choose(plugin, body, observed.secrets)
    if choice.task is not None and choice.held is None and choice.record is not None:
        # A rename to a name another task runs with: held back like any change the operator refuses.
        runs = [running_body(plugin, p) for p in observed.peers]
        renamed = renamed_into_use(choice.task, accepted_doc(body), runs)
        choice = (hold_back(plugin, body, renamed) or choice) if renamed is not None else choice
    # A change to what workers check at start waits for a check Job's outcome (ferry.control.preflight).
    current_spec = dict(body.get("spec") or {})
    check, candidate = None, choice.task
    new_spec = choice.task is not None and choice.held is None and choice.record is not None
    if new_spec and settings.spec_check_enabled:
        if needs_check(plugin, accepted_doc(body), current_spec):
            check = judge(plugin, owner.name, current_spec, status.get("specCheck"), now, settings)
            if check.passed:
                message = "the new spec passed its check against the brokers: it rolls out"
                events.append(Event("Normal", "SpecCheckPassed", message))
            else:
                waiting = TaskError("CheckingSpec", "the new spec is being checked against the brokers")
                failed_check = check.error
                if failed_check is not None:
                    failed_check = TaskError(
                        failed_check.reason,
                        f"the new spec's check failed: {failed_check.message}; it is checked again every "
                        f"{settings.spec_check_retry:.0f} s and rolls out once it passes",
                    )
                choice = hold_back(plugin, body, failed_check or waiting) or choice
    elif (status.get("specCheck") or {}).get("result") not in (None, PASSED):
        # Reverted to the accepted spec, or checks turned off: the failed or pending check no longer matters.
        patch["specCheck"] = None
    if choice.task is None:
        assert choice.held is not None
        failed = _Verdict(Phase.FAILED, choice.held.reason, choice.held.message, 0)
        return _finish(body, status, patch, failed, None, events, {})
    task, held = choice.task, choice.held
    spec = task.spec
    if choice.record is not None:
        annotations[ACCEPTED_SPEC_ANNOTATION] = json.dumps(choice.record, sort_keys=True)

    epoch = int(status.get("offsetEpoch") or 0)
    paused_at = parse_time(status.get("pausedAt"))
    live, stale = _live_workers(status, now, settings.heartbeat_timeout)
    if stale:
        patch["workers"] = {w: None for w in stale}
    patch.update(summarize_workers(plugin, live))
    expired, expired_message = account_expired(status, live)
    patch.update(expired)
    if expired_message is not None:
        events.append(Event("Warning", "RecordsExpired", expired_message))
    if plugin.findings is not None:  # the kind's own findings, counted once (e.g. changes to target topics)
        found, notices = plugin.findings(status, live)
        patch.update(found)
        events.extend(Event(n.type, n.reason, n.message) for n in notices)
    ids = cluster_ids(plugin, spec, status, live, observed)
    patch.update(ids)
    # The task as it compares with its peers: with the cluster ids just learned (or cleared).
    me = {**body, "status": {k: v for k, v in {**status, **ids}.items() if v is not None}}
    if held is not None:
        me["spec"] = spec.wire()  # as it runs: the held-back change claims nothing yet
    others = [running_body(plugin, p) for p in observed.peers]  # each as its workers run it

    # A refused task is Failed even while paused, so its owner learns it before resuming it.
    peers = _with_self(others, me)
    admission = check_task_name(task, peers) or (plugin.admission(task, peers) if plugin.admission else None)
    blocking = None if spec.state == TaskState.PAUSED else check_secrets(plugin, spec, observed.secrets)
    if admission is not None:
        verdict = _Verdict(Phase.FAILED, admission.reason, admission.message, 0)
    elif spec.state == TaskState.PAUSED:
        if _stopped(observed.deployment, observed.pods):
            verdict = _Verdict(Phase.PAUSED, "Paused", "paused by spec.state; offsets are saved", 0)
            if paused_at is None:
                patch["pausedAt"] = rfc3339(now)
        else:
            verdict = _Verdict(
                Phase(status.get("state") or Phase.UNASSIGNED),
                "Pausing",
                "workers are flushing and stopping",
                0,
            )
    elif blocking is not None:
        verdict = _blocked(blocking, spec, live, observed.deployment)
    else:
        if paused_at is not None:
            window = spec.resume_window_delta  # None: any pause resumes from the saved offsets
            recorded = pending_reset(status, epoch)  # a reset not made yet decides, whatever the window says
            if recorded is not None:
                by_annotation = recorded.get("requestedBy") == BY_ANNOTATION
                asked = f"{RESET_ANNOTATION}={recorded['to']}" if by_annotation else f"startFrom={recorded['to']}"
                events.append(
                    Event(
                        "Normal",
                        "Resumed",
                        f"resumed where {asked} puts consumer group {recorded.get('consumerGroup')}: its first worker "
                        "moves the group there before it consumes",
                    )
                )
                patch["resumedFrom"] = "offsetReset" if by_annotation else "startFrom"
            elif window is not None and now - paused_at > window:
                epoch += 1
                start = getattr(spec, "start_from", None)
                target = start.value if start else "latest"
                patch["offsetReset"] = reset_record(target, epoch, rfc3339(now), BY_RESUME_WINDOW)
                how = (
                    f"moving consumer group {plugin.fixed_group(spec)} to"
                    if plugin.fixed_group
                    else "starting a new consumer group from"
                )
                events.append(
                    Event(
                        "Normal",
                        "ResumedFromStartFrom",
                        f"paused for {_human(now - paused_at)}, longer than the resume window {spec.resume_window}: "
                        f"{how} startFrom={target}",
                    )
                )
                patch["resumedFrom"] = "startFrom"
            else:
                within = "within the resume window" if window is not None else "(no resumeWindow set)"
                events.append(Event("Normal", "Resumed", f"resumed {within} from the saved offsets"))
                patch["resumedFrom"] = "savedOffsets"
            patch["pausedAt"] = None
        verdict = _running_verdict(spec, live, epoch, observed)
    if held is not None:
        pending = spec_changes(accepted_doc(body), current_spec)
        if check is not None and check.error is None:  # held only while its check runs
            verdict = _checking(verdict, check.checking or "", pending)
        else:
            verdict = _held_back(held, verdict, spec.state == TaskState.PAUSED, pending)

    # ferry.dev/reset-offsets on a paused task whose workers have stopped: recorded under a new offset epoch.
    stopped = spec.state == TaskState.PAUSED and _stopped(observed.deployment, observed.pods)
    epoch, requested = take_reset(body, epoch, stopped, rfc3339(now))
    if requested is not None:
        patch["offsetReset"] = requested
        annotations[RESET_ANNOTATION] = None  # taken: asking again is annotating again
    group = plugin.fixed_group(spec) if plugin.fixed_group else consumer_group(owner, epoch)
    patch["consumerGroup"] = group
    patch["offsetEpoch"] = epoch
    if "offsetReset" in patch:
        patch["offsetReset"]["consumerGroup"] = group  # the group of the new epoch: the one its workers use
    restart = restart_value(body, status)
    deployment = render_worker_deployment(
        plugin,
        owner,
        spec,
        group=group,
        epoch=epoch,
        replicas=verdict.replicas,
        settings=settings,
        reset_to=reset_target(status, patch, epoch),
        restart=restart,
    )
    # Operations from kubectl (ferry.control.operations): restarts, offset resets, and the scale subresource.
    if restart is not None:
        patch["restartedFor"] = restart
    restarting = restart_notice(body, status, observed.deployment, verdict.replicas > 0)
    reset_state, reset_notice = reset_condition(
        body, status, patch.get("offsetReset"), spec.state == TaskState.PAUSED, verdict.phase.value
    )
    for notice in (restarting, reset_notice):
        if notice is not None:
            events.append(Event(notice.type, notice.reason, notice.message, applied=notice is restarting))
    patch["replicas"] = len(live)
    patch["labelSelector"] = label_selector(owner)
    changed = spec_changes(deployed_spec(observed.deployment), spec.wire())
    if changed and verdict.replicas:
        events.append(
            Event(
                "Normal",
                "SpecChanged",
                f"{'; '.join(changed)}: rolling the workers (the old ones flush and commit first); "
                f"consumer group {group} keeps its offsets",
                applied=True,
            )
        )
    extra = plugin.conditions(task, _with_self(others, me)) if plugin.conditions else []
    if plugin.status_conditions is not None:
        extra = [*extra, *plugin.status_conditions(task, {**status, **patch})]
    outcome = _finish(body, status, patch, verdict, deployment, events, annotations, now, extra)
    if reset_state is not None:
        value = ConditionStatus.TRUE if reset_state.active else ConditionStatus.FALSE
        previous = status.get("conditions") or []
        entry = _condition(previous, reset_state.type, value, reset_state.reason, reset_state.message, generation, now)
        outcome.status["conditions"].append(entry)
    outcome.events = [replace(e, message=named(e.message, spec.task_name)) for e in outcome.events]
    outcome.access = render_worker_access(plugin, owner)
    if check is not None and check.status is not None:
        outcome.status["specCheck"] = check.status
    if check is not None and check.start and check.checking and candidate is not None:
        name = check.checking
        wanted = check.status["digest"] if check.status else ""
        checked = render_worker_deployment(
            plugin, owner, candidate.spec, group=group, epoch=epoch, replicas=1, settings=settings
        )
        outcome.jobs.append(render_check_job(checked, owner, name, wanted, settings))
        if check.error is None:
            changes = "; ".join(spec_changes(accepted_doc(body), current_spec)[:5])
            message = (
                f"checking the new spec against the brokers before it rolls out (Job {name}): {changes}; the "
                "workers keep running the last accepted spec meanwhile"
            )
            outcome.events.append(Event("Normal", "CheckingSpec", named(message, spec.task_name)))
    return outcome


def _blocked(blocking: TaskError, spec: TaskSpec, live: dict[str, Any], deployment: dict[str, Any] | None) -> _Verdict:
    """A Secret (or key) the spec to run names is missing. A task whose workers are not running this very spec
    (new, resuming, or changed) cannot start: Failed with no worker. One whose workers run it and report (the
    Secret was deleted, or the key removed, under them) keeps them at the replicas they run at: they hold the
    values they started with, so the configuration keeps running, Failed with the reason, until it is fixed."""
    running = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
    deployed = deployed_spec(deployment)
    if running and live and deployed is not None and not spec_changes(deployed, spec.wire()):
        message = (
            f"{blocking.message}; until then the workers already running keep running this spec with the "
            "credentials they started with (a worker that restarts cannot start until it is fixed)"
        )
        return _Verdict(Phase.FAILED, blocking.reason, message, running)
    return _Verdict(Phase.FAILED, blocking.reason, blocking.message, 0)


def _held_back(held: TaskError, verdict: _Verdict, paused: bool, pending: list[str]) -> _Verdict:
    """A change the operator cannot honour: Failed with its reason and what to fix, and what runs meanwhile.
    While paused the pause is the state, and its message mentions the change."""
    if paused:
        message = f"{verdict.message}; a spec change is held back: {held.reason}: {held.message}"
        return _Verdict(verdict.phase, verdict.reason, message, verdict.replicas)
    if verdict.replicas:
        not_applied = f" (not applied: {'; '.join(pending[:5])})" if pending else ""
        meanwhile = f"; until then the workers keep running the last accepted spec{not_applied}"
    else:
        meanwhile = f"; the last accepted spec does not run either ({verdict.reason}: {verdict.message})"
    return _Verdict(Phase.FAILED, held.reason, held.message + meanwhile, verdict.replicas)


def _checking(verdict: _Verdict, job: str, pending: list[str]) -> _Verdict:
    """A change being checked before it rolls out: the state is the running spec's, the message says what waits."""
    waits = f" ({'; '.join(pending[:5])})" if pending else ""
    message = (
        f"{verdict.message}; a spec change{waits} is being checked against the brokers (Job {job}) before it rolls out"
    )
    return _Verdict(verdict.phase, verdict.reason, message, verdict.replicas)


# Changes that do not roll the workers: pausing and scaling have their own events.
_NOT_ROLLING = frozenset({"state", "replicas"})


def spec_changes(before: dict[str, Any] | None, after: dict[str, Any], prefix: str = "spec") -> list[str]:
    """What changed between the spec the workers run and the new one, leaf by leaf, as `path: old -> new`
    (specs hold Secret names and keys, never values, so they can be shown)."""
    if before is None:
        return []
    changes = []
    for key in sorted(set(before) | set(after)):
        if prefix == "spec" and key in _NOT_ROLLING:
            continue
        old, new, path = before.get(key), after.get(key), f"{prefix}.{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            changes.extend(spec_changes(old, new, path))
        elif old != new:
            changes.append(f"{path}: {_shown(old)} -> {_shown(new)}")
    return changes


def _shown(value: Any) -> str:
    text = "(unset)" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _with_self(peers: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The peers with this task as decided now (the list the API returned may predate its creation, or its
    latest status): it always competes for a slot itself, with the cluster ids it has just learned."""
    me = (body["metadata"].get("namespace"), body["metadata"]["name"])
    return [p for p in peers if (p["metadata"].get("namespace"), p["metadata"]["name"]) != me] + [body]


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m" if seconds >= 60 else f"{seconds:.0f}s"


def _condition(
    previous: list[dict[str, Any]],
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    before = next((c for c in previous if c.get("type") == kind), None)
    changed = before is None or before.get("status") != status.value
    return {
        "type": kind,
        "status": status.value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": rfc3339(now) if changed else before["lastTransitionTime"],  # type: ignore[index]
    }


def _finish(
    body: dict[str, Any],
    status: dict[str, Any],
    patch: dict[str, Any],
    verdict: _Verdict,
    deployment: dict[str, Any] | None,
    events: list[Event],
    annotations: dict[str, str | None],
    now: datetime | None = None,
    extra: list[KindCondition] | None = None,
) -> Outcome:
    now = now or datetime.now(UTC)
    generation = body["metadata"].get("generation")
    previous = status.get("conditions") or []
    ready = verdict.phase == Phase.RUNNING
    paused = verdict.phase == Phase.PAUSED
    patch.update(
        state=verdict.phase.value,
        reason=verdict.reason,
        message=verdict.message,
        conditions=[
            _condition(
                previous,
                "Ready",
                ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
                verdict.reason,
                verdict.message,
                generation,
                now,
            ),
            _condition(
                previous,
                "Paused",
                ConditionStatus.TRUE if paused else ConditionStatus.FALSE,
                "Paused" if paused else "NotPaused",
                "spec.state is Paused" if paused else "",
                generation,
                now,
            ),
        ],
    )
    for condition in extra or []:
        was: dict[str, Any] = next((c for c in previous if c.get("type") == condition.type), {})
        if condition.active is None and was.get("status") in ("True", "False"):
            patch["conditions"].append(was)  # Unknown: nothing to judge by now, so as last known
            continue
        value = {None: ConditionStatus.UNKNOWN, True: ConditionStatus.TRUE, False: ConditionStatus.FALSE}[
            condition.active
        ]
        entry = _condition(previous, condition.type, value, condition.reason, condition.message, generation, now)
        patch["conditions"].append(entry)
        if condition.active and was.get("status") != "True" and condition.on_true:
            events.append(Event(condition.on_true, condition.reason, condition.message))
        elif condition.active is False and was.get("status") in ("True", "Unknown") and condition.on_false:
            events.append(Event(condition.on_false, condition.reason, condition.message))
    if status.get("state") != verdict.phase.value or status.get("reason") != verdict.reason:
        warning = verdict.phase == Phase.FAILED
        events.append(
            Event(
                "Warning" if warning else "Normal",
                verdict.reason,
                f"{verdict.phase.value}: {verdict.message}",
            )
        )
    return Outcome(deployment, patch, annotations, events)
