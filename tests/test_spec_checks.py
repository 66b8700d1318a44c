"""A change to what workers check at start (source, target, topics) is checked by a Job before it rolls out
(ferry.control.preflight), decided by `decide()` alone: the Job it renders, what runs meanwhile, and what each
outcome in `status.specCheck` leads to. tests/test_spec_checks_live.py runs the same on the real servers."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import timedelta
from typing import Any

from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION
from ferry.control.preflight import CHECK_DIGEST_ENV, CHECK_JOB_ENV, CHECK_LABEL, digest, judge
from ferry.control.reconcile import Outcome
from ferry.control.render import deployed_spec
from ferry.dataaccess.worker import PLUGIN as DATA_ACCESS
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin
from ferry.topicsync.worker import PLUGIN as TOPIC_SYNC

from tests.test_held_changes import NOW, SETTINGS, accepted, dump, pull, run, sync


def stamp(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def changed(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    new = copy.deepcopy(body)
    new["spec"].update(spec)
    new["metadata"]["generation"] += 1
    return new


def after(body: dict[str, Any], outcome: Outcome, **status: Any) -> dict[str, Any]:
    """The task as the operator's patch leaves it, with `status` on top (what a check pod wrote)."""
    new = copy.deepcopy(body)
    new["status"] = {**new.get("status", {}), **{k: v for k, v in outcome.status.items() if v is not None}, **status}
    for name, value in outcome.annotations.items():
        if value is None:
            new["metadata"]["annotations"].pop(name, None)
        else:
            new["metadata"]["annotations"][name] = value
    return new


def outcome_of(plugin: KindPlugin, body: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    return {**(body["status"].get("specCheck") or {}), **check}


def test_a_new_target_is_checked_by_a_job_of_the_workers_pod_while_the_old_spec_keeps_running() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    moved = changed(body, topics=["payments"], createTopics=False)
    held = run(TOPIC_SYNC, moved, deployment=first.deployment)
    assert held.deployment == first.deployment  # nothing rolls while the check runs
    assert not held.annotations  # the new spec is not accepted yet
    assert held.status["state"] == "Unassigned"  # the state of what runs: not Failed
    assert "a spec change (spec.createTopics: (unset) -> false; spec.topics" in held.status["message"]
    assert "is being checked against the brokers (Job mirror-topicsync-check-" in held.status["message"]
    check = held.status["specCheck"]
    assert check["result"] == "Checking" and check["digest"] == digest(TOPIC_SYNC, moved["spec"])
    assert check["startedAt"] == stamp(NOW) and check["checkedAt"] is None
    [event] = [e for e in held.events if e.reason == "CheckingSpec"]
    assert event.type == "Normal" and check["job"] in event.message and "keep running" in event.message

    [job] = held.jobs
    assert job["kind"] == "Job" and job["metadata"]["name"] == check["job"]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 300
    assert job["spec"]["activeDeadlineSeconds"] == 180
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-mirror"
    pod = job["spec"]["template"]
    labels = pod["metadata"]["labels"]
    # Not a worker: neither the Deployment's selector, the worker index nor the scale subresource counts it.
    assert labels["app.kubernetes.io/name"] == "ferry-spec-check" and labels[CHECK_LABEL] == check["digest"]
    assert "ferry.dev/task" not in labels and "ferry.dev/kind" not in labels
    assert pod["spec"]["restartPolicy"] == "Never"
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["check"] and "livenessProbe" not in container and "ports" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env[CHECK_JOB_ENV], env[CHECK_DIGEST_ENV]) == (check["job"], check["digest"])
    assert json.loads(env["FERRY_TASK"])["spec"]["topics"] == ["payments"]  # the new spec, checked
    # The same identity, Secrets and pod settings as the workers it stands for.
    worker_pod = first.deployment["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["spec"]["serviceAccountName"] == worker_pod["serviceAccountName"]
    assert pod["spec"]["securityContext"] == worker_pod["securityContext"]

    # Reconciled again while the pod runs: no second Job, the same message.
    again = run(TOPIC_SYNC, after(moved, held), deployment=first.deployment)
    assert again.jobs == [] and again.deployment == first.deployment
    assert "specCheck" not in again.status or again.status["specCheck"] == check
    assert not [e for e in again.events if e.reason == "CheckingSpec"]


def test_a_check_that_passed_rolls_the_spec_out() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    moved = changed(body, topics=["payments"])
    held = run(TOPIC_SYNC, moved, deployment=first.deployment)
    check = {"result": "Passed", "checkedAt": stamp(NOW + timedelta(seconds=4))}
    done = after(moved, held, specCheck=outcome_of(TOPIC_SYNC, after(moved, held), check))
    rolled = run(TOPIC_SYNC, done, deployment=first.deployment)
    assert deployed_spec(rolled.deployment)["topics"] == ["payments"]  # type: ignore[index]
    assert json.loads(rolled.annotations[ACCEPTED_SPEC_ANNOTATION])["topics"] == ["payments"]
    reasons = [e.reason for e in rolled.events]
    assert "SpecCheckPassed" in reasons and "SpecChanged" in reasons
    assert rolled.jobs == []


def test_a_check_that_failed_holds_the_change_back_failed_and_checks_again_every_retry_interval() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    moved = changed(body, topics=["payments"], createTopics=False)
    held = run(TOPIC_SYNC, moved, deployment=first.deployment)
    found = "topics eu.payments do not exist on dr:9092 and createTopics is false"
    check = {"result": "Failed", "reason": "TargetTopicNotFound", "message": found, "checkedAt": stamp(NOW)}
    failed_body = after(moved, held, specCheck=outcome_of(TOPIC_SYNC, after(moved, held), check))
    failed = run(TOPIC_SYNC, failed_body, deployment=first.deployment)
    assert (failed.status["state"], failed.status["reason"]) == ("Failed", "TargetTopicNotFound")
    message = failed.status["message"]
    assert message.startswith(f"the new spec's check failed: {found}; it is checked again every 60 s")
    assert "until then the workers keep running the last accepted spec (not applied: spec.createTopics" in message
    assert failed.deployment == first.deployment and not failed.annotations and failed.jobs == []
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "TargetTopicNotFound")]

    # A retry interval later: a new Job, still Failed meanwhile (no flapping state, no new CheckingSpec Event).
    later = after(failed_body, failed)
    retried = decide_at(TOPIC_SYNC, later, first.deployment, NOW + timedelta(seconds=61))
    [job] = retried.jobs
    assert job["metadata"]["name"] != held.jobs[0]["metadata"]["name"]
    assert retried.status["specCheck"]["job"] == job["metadata"]["name"]
    assert retried.status["specCheck"]["result"] == "Failed"  # the last outcome, until the new one
    assert retried.status["reason"] == "TargetTopicNotFound" and retried.deployment == first.deployment
    assert not [e for e in retried.events if e.reason == "CheckingSpec"]
    # Before the interval: no new Job.
    assert decide_at(TOPIC_SYNC, later, first.deployment, NOW + timedelta(seconds=59)).jobs == []


def decide_at(plugin: KindPlugin, body: dict[str, Any], deployment: Any, now: Any) -> Outcome:
    from ferry.control.reconcile import Observed, decide

    from tests.test_held_changes import ACCOUNTS

    return decide(plugin, body, Observed(now=now, deployment=deployment, secrets=ACCOUNTS), SETTINGS)


def test_a_check_without_an_outcome_times_out_failed_and_is_retried() -> None:
    body, first = accepted(DATA_ACCESS, pull())
    target = {**body["spec"]["target"], "topic": "elsewhere"}
    moved = changed(body, target=target)
    held = run(DATA_ACCESS, moved, deployment=first.deployment)
    assert held.jobs and held.status["specCheck"]["result"] == "Checking"
    waiting = after(moved, held)
    still = decide_at(DATA_ACCESS, waiting, first.deployment, NOW + timedelta(seconds=179))
    assert still.status["state"] != "Failed" and still.jobs == []
    timed = decide_at(DATA_ACCESS, waiting, first.deployment, NOW + timedelta(seconds=181))
    assert (timed.status["state"], timed.status["reason"]) == ("Failed", "SpecCheckTimedOut")
    assert f"kubectl describe job {held.jobs[0]['metadata']['name']}" in timed.status["message"]
    assert timed.status["specCheck"]["result"] == "Failed" and timed.deployment == first.deployment
    retried = decide_at(DATA_ACCESS, after(waiting, timed), first.deployment, NOW + timedelta(seconds=245))
    assert len(retried.jobs) == 1 and retried.status["reason"] == "SpecCheckTimedOut"


def test_reverting_the_change_clears_the_check_and_a_new_change_gets_its_own() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    moved = changed(body, topics=["payments"], createTopics=False)
    held = run(TOPIC_SYNC, moved, deployment=first.deployment)
    pending = after(moved, held)
    again = changed(pending, topics=["refunds"])  # changed again while the first check runs
    second = run(TOPIC_SYNC, again, deployment=first.deployment)
    assert len(second.jobs) == 1
    new_digest = second.status["specCheck"]["digest"]
    assert new_digest == digest(TOPIC_SYNC, again["spec"]) != held.status["specCheck"]["digest"]
    reverted = changed(after(again, second), topics=["orders"], createTopics=None)
    del reverted["spec"]["createTopics"]
    back = run(TOPIC_SYNC, reverted, deployment=first.deployment)
    assert back.status["specCheck"] is None and back.jobs == [] and back.deployment == first.deployment
    assert back.status["state"] == "Unassigned" and "being checked" not in back.status["message"]


def test_changes_outside_the_checked_fields_and_first_specs_roll_out_unchecked() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    assert first.jobs == [] and "specCheck" not in first.status  # a first spec: nothing to keep running
    for change in ({"replicas": 2}, {"maxRecordsPerSecond": 100}, {"taskName": "mirror_1"}, {"state": "Paused"}):
        outcome = run(TOPIC_SYNC, changed(body, **change), deployment=first.deployment)
        assert outcome.jobs == [] and "specCheck" not in outcome.status, change
    # ObsDumpTask: its spec is immutable (SpecImmutable holds changes back); no check.
    dumped, first_dump = accepted(OBS_DUMP, dump())
    assert OBS_DUMP.preflight is None
    moved = copy.deepcopy(dumped)
    moved["spec"]["topics"] = ["other"]
    assert run(OBS_DUMP, moved, deployment=first_dump.deployment).jobs == []


def test_a_paused_task_is_checked_too_so_its_resume_runs_a_spec_that_passed() -> None:
    body, first = accepted(DATA_ACCESS, pull())
    moved = changed(body, state="Paused", target={**body["spec"]["target"], "bootstrapServers": "kafka-b:9092"})
    held = run(DATA_ACCESS, moved, deployment=first.deployment)
    assert len(held.jobs) == 1 and not held.annotations


def test_with_checks_turned_off_a_change_rolls_out_unchecked_and_a_pending_check_is_dropped() -> None:
    from ferry.control.reconcile import Observed, decide

    from tests.test_held_changes import ACCOUNTS

    unchecked = dataclasses.replace(SETTINGS, spec_check_enabled=False)
    assert OperatorSettings.from_env({"FERRY_OPERATOR_SPEC_CHECK_ENABLED": "false"}).spec_check_enabled is False
    assert OperatorSettings.from_env({}).spec_check_enabled is True
    body, first = accepted(TOPIC_SYNC, sync())
    moved = changed(body, topics=["payments"], createTopics=False)
    held = run(TOPIC_SYNC, moved, deployment=first.deployment)  # checked while the setting was on
    assert held.jobs and held.status["specCheck"]["result"] == "Checking"
    rolled = decide(
        TOPIC_SYNC, after(moved, held), Observed(now=NOW, deployment=first.deployment, secrets=ACCOUNTS), unchecked
    )
    assert rolled.jobs == [] and rolled.status["specCheck"] is None  # the pending check no longer holds it
    assert deployed_spec(rolled.deployment)["topics"] == ["payments"]  # type: ignore[index]
    assert json.loads(rolled.annotations[ACCEPTED_SPEC_ANNOTATION])["topics"] == ["payments"]
    assert "SpecChanged" in [e.reason for e in rolled.events]
    # A change with no check under way: straight out, with nothing written to status.specCheck.
    fresh = decide(
        TOPIC_SYNC,
        changed(body, topics=["refunds"]),
        Observed(now=NOW, deployment=first.deployment, secrets=ACCOUNTS),
        unchecked,
    )
    assert fresh.jobs == [] and "specCheck" not in fresh.status
    assert deployed_spec(fresh.deployment)["topics"] == ["refunds"]  # type: ignore[index]


def test_judge_needs_the_digest_of_the_current_spec() -> None:
    settings = OperatorSettings()
    spec = sync(topics=["payments"])["spec"]
    fresh = judge(TOPIC_SYNC, "mirror", spec, None, NOW, settings)
    assert fresh.start and fresh.status is not None and fresh.status["result"] == "Checking"
    stale = {**fresh.status, "digest": "0" * 16, "result": "Passed"}  # a pass of another spec
    assert not judge(TOPIC_SYNC, "mirror", spec, stale, NOW, settings).passed
    assert judge(TOPIC_SYNC, "mirror", spec, {**fresh.status, "result": "Passed"}, NOW, settings).passed
