"""A spec change checked by a pod before it rolls out: "a target that does not exist" keeps the old spec running.

The operator cannot ask the brokers itself: it holds no Kafka credentials and may have no route to them. So a change
to what a worker checks when it starts (the kind's `preflight_fields`: for TopicSync and DataAccessTask the source
and target, their credentials and the topics) is first run by a **check**: a Job of one pod, the worker's own pod
(its ServiceAccount, Secrets, network and pod overrides) running `ferry check`. The check makes the worker's start-up
checks against the brokers (reachable, credentials accepted, source topics there, target topics there or to be
created, not a copy onto itself, partition counts) without consuming or writing anything, and writes its outcome
into the task's `status.specCheck`. Meanwhile the workers keep running the last accepted spec.

- **Passed**: the spec is accepted and rolls out as any change does.
- **Failed**: the task is Failed with the check's reason and message, and the last accepted spec keeps running. The
  check runs again every retry interval (and at once for the next change of the spec): creating the missing topic
  is enough.
- **No outcome** within the timeout (the pod could not be scheduled or pulled, say): Failed `SpecCheckTimedOut`,
  retried the same way.

A task that never had a spec accepted has nothing to keep running: its first spec is not checked (its workers report
what is wrong, and retry). A change back to the accepted spec needs no check and clears a failed one. Pausing and
scaling never wait for a check (they are not checked fields).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ferry.control.render import Owner, fit, owner_reference, selector_labels, short_hash
from ferry.errors import TaskError
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin

# The Job's pod: `ferry check` with the job's name and the digest it checks, so it writes only its own outcome.
CHECK_JOB_ENV = "FERRY_SPEC_CHECK_JOB"
CHECK_DIGEST_ENV = "FERRY_SPEC_CHECK_DIGEST"
CHECK_LABEL = "ferry.dev/spec-check"  # on the Job and its pod: the digest checked
CHECK_NAME = "ferry-spec-check"  # app.kubernetes.io/name of the Job and its pod (not a worker: no worker selector)
# Finished check Jobs are removed by the TTL controller (their outcome is in the task's status by then).
JOB_TTL_SECONDS = 300

CHECKING, PASSED, FAILED = "Checking", "Passed", "Failed"


def checked_part(plugin: KindPlugin, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: spec[k] for k in sorted(plugin.preflight_fields) if k in spec}


def digest(plugin: KindPlugin, spec: Mapping[str, Any]) -> str:
    """What identifies the checked part of a spec (a check holds for every spec with the same part)."""
    return short_hash(json.dumps(checked_part(plugin, spec), sort_keys=True), 16)


def needs_check(plugin: KindPlugin, accepted: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """A change to a checked field of a spec accepted before (a first spec is never checked)."""
    if plugin.preflight is None or accepted is None:
        return False
    return checked_part(plugin, accepted) != checked_part(plugin, current)


@dataclass
class Verdict:
    """What the check of the current spec says now."""

    passed: bool = False
    error: TaskError | None = None  # the last attempt's failure: the change is held back (Failed)
    checking: str | None = None  # the Job of the attempt under way (the change is held back meanwhile)
    status: dict[str, Any] | None = None  # `status.specCheck` to write (None: leave it)
    start: bool = False  # an attempt to start now, as Job `checking`


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if isinstance(text, str) and text else None


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def job_name(owner_name: str, kind: str, wanted: str, started: str) -> str:
    """One name per attempt (a finished Job's name stays taken until the TTL controller removes it)."""
    return fit(f"{owner_name}-{kind.lower()}-check-{short_hash(wanted + started, 6)}")


def judge(
    plugin: KindPlugin,
    owner_name: str,
    spec: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    now: datetime,
    settings: OperatorSettings,
) -> Verdict:
    """The state of the current spec's check from `status.specCheck`, and the attempt to start, if one is due."""
    wanted = digest(plugin, spec)
    kind = plugin.definition.kind
    before = dict(previous or {})
    if before.get("digest") != wanted:  # never checked: the first attempt
        stamp = _stamp(now)
        name = job_name(owner_name, kind, wanted, stamp)
        status = {"digest": wanted, "result": CHECKING, "reason": None, "message": None, "checkedAt": None}
        return Verdict(checking=name, status={**status, "job": name, "startedAt": stamp}, start=True)
    result = before.get("result")
    if result == PASSED:
        return Verdict(passed=True)
    started, checked = _time(before.get("startedAt")), _time(before.get("checkedAt"))
    outstanding = started is not None and (checked is None or started > checked)
    failure = (
        TaskError(str(before.get("reason") or "SpecCheckFailed"), str(before.get("message") or ""))
        if result == FAILED
        else None
    )
    if outstanding:
        assert started is not None
        if now - started <= timedelta(seconds=settings.spec_check_timeout):
            return Verdict(error=failure, checking=str(before.get("job") or ""))
        timed_out = TaskError(
            "SpecCheckTimedOut",
            f"the check of the new spec (Job {before.get('job')}) gave no outcome within "
            f"{settings.spec_check_timeout:.0f} s: see the Job's pod (kubectl describe job {before.get('job')})",
        )
        status = {"result": FAILED, "reason": timed_out.reason, "message": timed_out.message, "checkedAt": _stamp(now)}
        return Verdict(error=timed_out, status={**before, **status})
    if failure is None:  # a result the check never writes: check again
        failure = TaskError("SpecCheckFailed", f"status.specCheck.result is {result!r}: checking again")
        checked = None
    if checked is not None and now - checked < timedelta(seconds=settings.spec_check_retry):
        return Verdict(error=failure)
    stamp = _stamp(now)
    name = job_name(owner_name, kind, wanted, stamp)
    return Verdict(error=failure, checking=name, status={**before, "job": name, "startedAt": stamp}, start=True)


def render_check_job(
    deployment: Mapping[str, Any], owner: Owner, name: str, wanted: str, settings: OperatorSettings
) -> dict[str, Any]:
    """The check's Job: the pod of the worker Deployment rendered for the new spec, running `ferry check` once.

    Its labels are not the workers' (no `ferry.dev/task` selector, `app.kubernetes.io/name` ferry-spec-check), so
    neither the Deployment, the operator's worker index nor the scale subresource counts it; the pod overrides'
    labels stay (network policies that let the workers reach the brokers select the check too)."""
    template = json.loads(json.dumps(deployment["spec"]["template"]))
    labels = {
        **{k: v for k, v in template["metadata"]["labels"].items() if k not in selector_labels(owner)},
        "app.kubernetes.io/name": CHECK_NAME,
        CHECK_LABEL: wanted,
    }
    template["metadata"] = {"labels": labels}
    pod = template["spec"]
    pod["restartPolicy"] = "Never"
    pod["terminationGracePeriodSeconds"] = 5
    container = pod["containers"][0]
    container["name"] = "check"
    container["args"] = ["check"]
    for key in ("ports", "livenessProbe", "readinessProbe"):
        container.pop(key, None)
    container["env"] = [e for e in container["env"] if e["name"] != "FERRY_METRICS_PORT"] + [
        {"name": "FERRY_METRICS_PORT", "value": "-1"},
        {"name": CHECK_JOB_ENV, "value": name},
        {"name": CHECK_DIGEST_ENV, "value": wanted},
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(settings.spec_check_timeout)),
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": template,
        },
    }


def record_outcome(api: Any, task: Any, job: str, wanted: str, outcome: dict[str, Any], attempts: int = 5) -> bool:
    """`ferry check`: write the outcome into `status.specCheck` if the task still waits for this Job's check (a
    later change or attempt has its own), guarded by the resourceVersion read; False when it no longer waits."""
    from ferry.api import GROUP, VERSION
    from kubernetes.client.exceptions import ApiException

    plural, namespace, name = task.definition.plural, task.namespace, task.name
    for _ in range(attempts):
        body = api.get_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name)
        waiting = (body.get("status") or {}).get("specCheck") or {}
        if waiting.get("job") != job or waiting.get("digest") != wanted:
            return False
        patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": {"specCheck": outcome}}
        try:
            api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, patch)
        except ApiException as err:
            if err.status == 409:  # the status changed since it was read: read it again
                continue
            raise
        return True
    return False
