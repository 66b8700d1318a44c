"""Operations from kubectl (ferry.control.operations), decided without an API server: the ferry.dev/restart and
ferry.dev/reset-offsets annotations, and what the scale subresource reads. Live, against the real control plane
and Kafka: tests/test_operations_live.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ferry.api.crd import crd_for
from ferry.control.operations import RESET_ANNOTATION, RESTART_ANNOTATION
from ferry.control.reconcile import Observed, Outcome, decide, rfc3339
from ferry.dataaccess.worker import PLUGIN as DATA_ACCESS
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.registry import PLUGINS
from ferry.resets import parse_target
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin
from ferry.topicsync.worker import PLUGIN as TOPIC_SYNC

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(heartbeat_timeout=60)
SECRETS: dict[str, set[str] | None] = {"dts": {"username", "password"}}
GROUP = "ferry.ns.mirror.uid-mirr"


def sync(annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None, **spec: Any) -> Any:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {
            "name": "mirror",
            "namespace": "ns",
            "uid": "uid-mirror",
            "generation": 1,
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "source": {"bootstrapServers": "eu:9092"},
            "target": {"bootstrapServers": "dr:9092"},
            "topics": ["orders"],
            "targetTopicName": "{source}.{topic}",
            **spec,
        },
        "status": dict(status or {}),
    }


def pull(annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None, **spec: Any) -> Any:
    body = sync(annotations, status)
    body["kind"] = "DataAccessTask"
    body["metadata"]["name"] = "pull"
    body["spec"] = {
        "source": {
            "type": "DTS",
            "dts": {
                "bootstrapServers": "dts:9092",
                "topic": "subs",
                "consumerGroup": "dts-grp",
                "credentialsSecretRef": {"name": "dts"},
            },
        },
        "target": {"bootstrapServers": "kafka:9092", "topic": "orders"},
        **spec,
    }
    return body


def dump(status: dict[str, Any] | None = None) -> Any:
    body = sync(None, status)
    body["kind"] = "ObsDumpTask"
    body["metadata"]["name"] = "dump"
    body["spec"] = {
        "source": {"bootstrapServers": "kafka:9092"},
        "topics": ["orders"],
        "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    return body


def run(body: dict[str, Any], plugin: KindPlugin = TOPIC_SYNC, **observed: Any) -> Outcome:
    observed.setdefault("secrets", SECRETS)
    return decide(plugin, body, Observed(now=NOW, **observed), SETTINGS)


def worker(epoch: int = 0, age: float = 5, phase: str = "Running") -> dict[str, Any]:
    return {"phase": phase, "heartbeatTime": rfc3339(NOW - timedelta(seconds=age)), "epoch": epoch, "lag": 0}


def running(epoch: int = 0, **status: Any) -> dict[str, Any]:
    return {"state": "Running", "offsetEpoch": epoch, "workers": {"pod-1": worker(epoch)}, **status}


def paused(epoch: int = 0, **status: Any) -> dict[str, Any]:
    return {"state": "Paused", "pausedAt": rfc3339(NOW - timedelta(minutes=5)), "offsetEpoch": epoch, **status}


def after(body: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The task once the operator's patch of this outcome has landed (status merged, annotations set or removed)."""
    stored = copy.deepcopy(body)
    for name, value in outcome.annotations.items():
        if value is None:
            stored["metadata"]["annotations"].pop(name, None)
        else:
            stored["metadata"]["annotations"][name] = value
    status = stored["status"]
    for key, value in outcome.status.items():
        if value is None:
            status.pop(key, None)
        elif key == "workers":
            status["workers"] = {k: v for k, v in {**status.get("workers", {}), **value}.items() if v is not None}
        else:
            status[key] = value
    return stored


def template_annotations(outcome: Outcome) -> dict[str, str]:
    assert outcome.deployment is not None
    result: dict[str, str] = outcome.deployment["spec"]["template"]["metadata"]["annotations"]
    return result


def env_of(outcome: Outcome) -> dict[str, str]:
    assert outcome.deployment is not None
    [container] = outcome.deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def reasons(outcome: Outcome) -> list[str]:
    return [e.reason for e in outcome.events]


def condition(outcome: Outcome) -> dict[str, Any] | None:
    return next((c for c in outcome.status["conditions"] if c["type"] == "OffsetReset"), None)


# -- ferry.dev/restart ------------------------------------------------------------------------------


def test_each_new_restart_value_rolls_the_workers_once_and_is_recorded() -> None:
    body = sync(status=running())
    first = run(body)
    assert RESTART_ANNOTATION not in template_annotations(first) and "restartedFor" not in first.status
    deployed = first.deployment

    body["metadata"]["annotations"][RESTART_ANNOTATION] = "1700000000"
    asked = run(body, deployment=deployed)
    assert template_annotations(asked)[RESTART_ANNOTATION] == "1700000000"  # a new pod template: the pods roll
    assert asked.deployment is not None and deployed is not None
    assert asked.deployment["metadata"]["annotations"] != deployed["metadata"]["annotations"]  # the spec hash
    assert asked.status["restartedFor"] == "1700000000"
    [event] = [e for e in asked.events if e.reason == "Restarted"]
    assert (event.type, event.message) == (
        "Normal",
        "ferry.dev/restart=1700000000: restarting the workers (the old ones flush and commit first, then new ones "
        "start)",
    )
    assert not [e for e in asked.events if e.reason == "SpecChanged"]

    # The same value again, once recorded and deployed: the same Deployment, no Event.
    again = run(after(body, asked), deployment=asked.deployment)
    assert again.deployment == asked.deployment and "Restarted" not in reasons(again)
    # Before the status patch landed (a reconcile on an older body): the Deployment has it already.
    assert "Restarted" not in reasons(run(body, deployment=asked.deployment))
    # Removing the annotation restarts nothing: the template keeps the value last applied.
    removed = after(body, asked)
    del removed["metadata"]["annotations"][RESTART_ANNOTATION]
    kept = run(removed, deployment=asked.deployment)
    assert kept.deployment == asked.deployment and kept.status["restartedFor"] == "1700000000"
    # A new value rolls them again.
    removed["metadata"]["annotations"][RESTART_ANNOTATION] = "1700000060"
    second = run(removed, deployment=asked.deployment)
    assert template_annotations(second)[RESTART_ANNOTATION] == "1700000060" and "Restarted" in reasons(second)


def test_a_restart_of_a_paused_task_is_noted_for_its_next_workers() -> None:
    body = sync(status=paused(), state="Paused")
    first = run(body)
    body["metadata"]["annotations"][RESTART_ANNOTATION] = "a"
    outcome = run(body, deployment=first.deployment)
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 0
    [event] = [e for e in outcome.events if e.reason == "Restarted"]
    assert event.message == "ferry.dev/restart=a: noted; no worker runs now, so the next ones start afresh"


def test_a_task_created_with_the_annotation_records_it_without_an_event() -> None:
    outcome = run(sync({RESTART_ANNOTATION: "x"}))
    assert template_annotations(outcome)[RESTART_ANNOTATION] == "x" and outcome.status["restartedFor"] == "x"
    assert "Restarted" not in reasons(outcome)


# -- ferry.dev/reset-offsets ------------------------------------------------------------------------


def test_a_reset_on_a_running_task_is_refused_once_and_the_annotation_stays() -> None:
    body = sync({RESET_ANNOTATION: "earliest"}, running())
    refused = run(body)
    found = condition(refused)
    assert found is not None and (found["status"], found["reason"]) == ("False", "OffsetResetRefused")
    assert found["message"] == (
        "ferry.dev/reset-offsets=earliest refused: the consumer group's offsets are moved only while the task is "
        "Paused, and it is Running; pause it (spec.state: Paused) and the reset is recorded once its workers have "
        "stopped, then resume it; or remove the annotation"
    )
    [event] = [e for e in refused.events if e.reason == "OffsetResetRefused"]
    assert (event.type, event.message) == ("Warning", found["message"])
    assert RESET_ANNOTATION not in refused.annotations  # left for the user, or for a later pause
    assert refused.status["offsetEpoch"] == 0 and "offsetReset" not in refused.status
    assert "FERRY_OFFSET_RESET" not in env_of(refused)
    assert "OffsetResetRefused" not in reasons(run(after(body, refused)))  # said once


@pytest.mark.parametrize("value", ["yesterday", "2026-05-01", "2026-05-01T12:00:00", "1700000000"])
def test_a_reset_to_something_else_than_earliest_latest_or_a_time_is_refused_with_what_is_allowed(value: str) -> None:
    outcome = run(sync({RESET_ANNOTATION: value}, paused(), state="Paused"))
    found = condition(outcome)
    assert found is not None and (found["status"], found["reason"]) == ("False", "InvalidOffsetReset")
    assert found["message"] == (
        f"ferry.dev/reset-offsets: {value!r} is not earliest, latest or an RFC 3339 time with its UTC offset, such "
        "as 2026-05-01T12:00:00Z: correct the annotation, or remove it"
    )
    assert [(e.type, e.reason) for e in outcome.events if "Offset" in e.reason] == [("Warning", "InvalidOffsetReset")]
    assert outcome.status["offsetEpoch"] == 0 and RESET_ANNOTATION not in outcome.annotations


def test_a_reset_on_a_paused_task_is_recorded_under_a_new_epoch_and_its_group_then_applied_once() -> None:
    body = sync({RESET_ANNOTATION: "2026-11-21T09:30:00+01:00"}, paused(), state="Paused")
    recorded = run(body)
    assert recorded.status["offsetEpoch"] == 1
    assert recorded.status["consumerGroup"] == f"{GROUP}.e1"  # TopicSync's group is the epoch's: a new one
    assert recorded.status["offsetReset"] == {
        "to": "2026-11-21T09:30:00+01:00",
        "epoch": 1,
        "requestedAt": "2026-11-21T12:00:00Z",
        "requestedBy": "annotation",
        "consumerGroup": f"{GROUP}.e1",
    }
    assert recorded.annotations[RESET_ANNOTATION] is None  # taken: removed
    env = env_of(recorded)
    assert (env["FERRY_OFFSET_EPOCH"], env["FERRY_OFFSET_RESET"]) == ("1", "2026-11-21T09:30:00+01:00")
    assert env["FERRY_CONSUMER_GROUP"] == f"{GROUP}.e1"
    found = condition(recorded)
    assert found is not None and (found["status"], found["reason"]) == ("False", "OffsetResetPending")
    assert found["message"] == (
        f"consumer group {GROUP}.e1 moves to 2026-11-21T09:30:00+01:00 when the workers of offset epoch 1 start, "
        "before they consume (when the task resumes)"
    )
    [event] = [e for e in recorded.events if e.reason == "OffsetResetPending"]
    assert (event.type, event.message) == ("Normal", found["message"])

    stored = after(body, recorded)
    assert run(stored).status["offsetEpoch"] == 1 and not [e for e in run(stored).events if "Offset" in e.reason]
    # Resumed, long after any window: the reset decides where the workers start, not the window.
    stored["spec"]["state"] = "Running"
    stored["status"]["pausedAt"] = rfc3339(NOW - timedelta(days=3))
    resumed = run(stored)
    assert resumed.status["offsetEpoch"] == 1 and resumed.status["resumedFrom"] == "offsetReset"
    [event] = [e for e in resumed.events if e.reason == "Resumed"]
    assert event.message == (
        f"resumed where ferry.dev/reset-offsets=2026-11-21T09:30:00+01:00 puts consumer group {GROUP}.e1: its first "
        "worker moves the group there before it consumes"
    )
    assert env_of(resumed)["FERRY_OFFSET_RESET"] == "2026-11-21T09:30:00+01:00"
    # The first worker moved the group and noted it: the condition turns True, with one Normal Event.
    done = after(stored, resumed)
    done["status"].update(
        offsetResetEpoch=1,
        lastOffsetReset={
            "to": "2026-11-21T09:30:00+01:00",
            "epoch": 1,
            "time": "2026-11-21T12:00:03Z",
            "consumerGroup": f"{GROUP}.e1",
            "partitions": 3,
        },
        workers={"pod-1": worker(epoch=1)},
    )
    applied = run(done)
    found = condition(applied)
    assert found is not None and (found["status"], found["reason"]) == ("True", "OffsetsReset")
    assert found["message"] == (
        f"consumer group {GROUP}.e1 moved to 2026-11-21T09:30:00+01:00 at 2026-11-21T12:00:03Z: 3 partitions"
    )
    assert [(e.type, e.reason) for e in applied.events if "Offset" in e.reason] == [("Normal", "OffsetsReset")]
    assert not [e for e in run(after(done, applied)).events if "Offset" in e.reason]
    assert env_of(applied)["FERRY_OFFSET_RESET"] == "2026-11-21T09:30:00+01:00"  # the same template: no roll


def test_a_reset_on_a_pausing_task_waits_for_its_workers_to_stop() -> None:
    body = sync({RESET_ANNOTATION: "latest"}, running(), state="Paused")
    pods = [{"metadata": {"name": "mirror-topicsync-abc"}}]
    waiting = run(body, pods=pods)
    found = condition(waiting)
    assert found is not None and found["reason"] == "OffsetResetPending"
    assert found["message"] == "ferry.dev/reset-offsets=latest: recorded once the workers have flushed and stopped"
    assert waiting.status["offsetEpoch"] == 0 and RESET_ANNOTATION not in waiting.annotations
    assert not [e for e in waiting.events if "Offset" in e.reason]
    assert run(body).status["offsetEpoch"] == 1  # once they are gone


def test_a_data_access_task_reset_moves_the_subscriptions_own_group() -> None:
    body = pull({RESET_ANNOTATION: "earliest"}, paused(epoch=2, offsetResetEpoch=2), state="Paused")
    outcome = run(body, DATA_ACCESS)
    assert outcome.status["consumerGroup"] == "dts-grp" and outcome.status["offsetEpoch"] == 3
    assert outcome.status["offsetReset"]["consumerGroup"] == "dts-grp"
    assert (env_of(outcome)["FERRY_OFFSET_EPOCH"], env_of(outcome)["FERRY_OFFSET_RESET"]) == ("3", "earliest")


def test_a_resume_after_the_window_records_a_reset_to_start_from_like_any_other() -> None:
    body = sync(status=paused(), startFrom="earliest", resumeWindow="1m")
    outcome = run(body)
    assert outcome.status["offsetEpoch"] == 1 and outcome.status["resumedFrom"] == "startFrom"
    record = outcome.status["offsetReset"]
    assert (record["to"], record["epoch"], record["requestedBy"]) == ("earliest", 1, "resumeWindow")
    assert record["consumerGroup"] == f"{GROUP}.e1"
    assert env_of(outcome)["FERRY_OFFSET_RESET"] == "earliest"
    assert "ResumedFromStartFrom" in reasons(outcome) and "OffsetResetPending" not in reasons(outcome)


@pytest.mark.parametrize(("hours", "resumed_from"), [(23.9, "savedOffsets"), (24.1, "startFrom")])
def test_a_topic_sync_without_a_window_set_has_the_connectors_24_hours(hours: float, resumed_from: str) -> None:
    """spec.resumeWindow unset: the Connector manual's 24 hours (the other kinds have none: any pause resumes)."""
    body = sync(status=paused(), startFrom="latest")
    assert "resumeWindow" not in body["spec"]
    body["status"]["pausedAt"] = rfc3339(NOW - timedelta(hours=hours))
    outcome = run(body)
    assert outcome.status["resumedFrom"] == resumed_from
    assert outcome.status["offsetEpoch"] == (1 if resumed_from == "startFrom" else 0)
    [event] = [e for e in outcome.events if e.reason in ("Resumed", "ResumedFromStartFrom")]
    if resumed_from == "startFrom":
        assert event.message == (
            f"paused for {hours:.1f}h, longer than the resume window 24h: starting a new consumer group from "
            "startFrom=latest"
        )
    else:
        assert event.message == "resumed within the resume window from the saved offsets"
    for plugin, other in ((DATA_ACCESS, pull(status=paused())), (OBS_DUMP, dump(status=paused()))):
        other["status"]["pausedAt"] = rfc3339(NOW - timedelta(days=365))
        outcome = run(other, plugin, secrets={**SECRETS, "obs": {"accessKey", "secretKey"}})
        assert (outcome.status["resumedFrom"], outcome.status["offsetEpoch"]) == ("savedOffsets", 0)


def test_a_reset_not_made_yet_is_not_recorded_again_by_the_next_resume() -> None:
    """Resumed after the window, paused again before any worker started, resumed late again: still the one reset."""
    record = {"to": "latest", "epoch": 1, "requestedAt": "x", "requestedBy": "resumeWindow", "consumerGroup": "g"}
    body = sync(status=paused(epoch=1, offsetReset=record), resumeWindow="1m")
    body["status"]["pausedAt"] = rfc3339(NOW - timedelta(hours=2))
    outcome = run(body)
    assert outcome.status["offsetEpoch"] == 1 and "offsetReset" not in outcome.status
    assert outcome.status["resumedFrom"] == "startFrom" and env_of(outcome)["FERRY_OFFSET_RESET"] == "latest"
    [event] = [e for e in outcome.events if e.reason == "Resumed"]
    assert event.message.startswith("resumed where startFrom=latest puts consumer group g: its first worker")


def test_an_epoch_without_a_recorded_reset_moves_nothing() -> None:
    """A TopicSync resumed late by an operator that did not record resets yet: its group is the epoch's own,
    and already holds the offsets committed since; no target is given to its workers."""
    outcome = run(sync(status=running(epoch=1)))
    assert "FERRY_OFFSET_RESET" not in env_of(outcome) and condition(outcome) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("earliest", "earliest"),
        ("latest", "latest"),
        ("2026-05-01T12:00:00Z", datetime(2026, 5, 1, 12, tzinfo=UTC)),
        ("2026-05-01T14:00:00.250+02:00", datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_reset_targets(value: str, expected: object) -> None:
    assert parse_target(value) == expected


# -- the scale subresource --------------------------------------------------------------------------


def test_the_copy_kinds_have_a_scale_subresource_reading_the_status_the_operator_fills() -> None:
    for plugin in PLUGINS.values():
        subresources = crd_for(plugin.definition)["spec"]["versions"][0]["subresources"]
        if plugin.definition.kind in ("ObsDumpTask", "ObsRestoreTask"):  # their specs cannot change but for spec.state
            assert subresources == {"status": {}}
            continue
        assert subresources["scale"] == {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.labelSelector",
        }
    status = running(workers={"pod-1": worker(), "pod-2": worker(age=600), "pod-3": worker(phase="Stopped")})
    outcome = run(sync(status=status, replicas=3))
    assert outcome.status["replicas"] == 1  # the live workers: not the silent one, nor the one that stopped
    assert outcome.status["labelSelector"] == "ferry.dev/kind=topicsync,ferry.dev/task=mirror"
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 3
    selector = outcome.deployment["spec"]["selector"]["matchLabels"]
    assert ",".join(f"{k}={v}" for k, v in selector.items()) == outcome.status["labelSelector"]
    assert run(sync(status=paused(), state="Paused")).status["replicas"] == 0
    assert OBS_DUMP.definition.scalable is False
