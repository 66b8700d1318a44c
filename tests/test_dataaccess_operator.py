"""The operator's decisions for DataAccessTask (and the per-task worker access every kind gets), without an
API server: spec and observations in, outcome out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ferry.control.reconcile import Observed, Outcome, decide, rfc3339
from ferry.control.render import deployed_spec
from ferry.dataaccess.worker import PLUGIN
from ferry.metrics import TaskStateMetrics
from ferry.settings import OperatorSettings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(heartbeat_timeout=60)
SECRETS: dict[str, set[str] | None] = {"dts": {"username", "password"}}


def task(status: dict[str, Any] | None = None, target_topic: str = "orders", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {
            "name": "pull",
            "namespace": "team-a",
            "uid": "0123456789abcdef",
            "generation": 2,
            "creationTimestamp": "2026-11-22T10:00:00Z",
        },
        "spec": {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": "dts:9092",
                    "topic": "subs",
                    "consumerGroup": "dts-grp",
                    "credentialsSecretRef": {"name": "dts"},
                },
            },
            "target": {"bootstrapServers": "kafka:9092", "topic": target_topic},
            **spec,
        },
        "status": status or {},
    }


def run(body: dict[str, Any], now: datetime = NOW, **observed: Any) -> Outcome:
    observed.setdefault("secrets", SECRETS)
    return decide(PLUGIN, body, Observed(now=now, **observed), SETTINGS)


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_workers_join_the_subscription_group_with_secrets_by_reference_only() -> None:
    outcome = run(task())
    assert outcome.status["consumerGroup"] == "dts-grp"
    assert outcome.deployment is not None
    env = env_of(outcome.deployment)
    assert env["FERRY_CONSUMER_GROUP"] == "dts-grp"
    assert env["FERRY_SECRET_SOURCE_SASL_PASSWORD"] == {"secretKeyRef": {"name": "dts", "key": "password"}}
    assert "password" not in json.loads(env["FERRY_TASK"])["spec"]["source"]["dts"]


def test_a_missing_credentials_secret_fails_the_task_with_its_name() -> None:
    outcome = run(task(), secrets={})
    assert (outcome.status["state"], outcome.status["reason"]) == ("Failed", "SecretNotFound")
    assert "'dts'" in outcome.status["message"]


def test_a_target_change_rolls_the_workers_says_what_changed_and_keeps_the_group() -> None:
    before = run(task()).deployment
    after = run(task(target_topic="orders-v2"), deployment=before)
    assert after.deployment is not None and before is not None
    assert deployed_spec(after.deployment)["target"]["topic"] == "orders-v2"  # type: ignore[index]
    template = after.deployment["spec"]["template"]["metadata"]["annotations"]
    assert (
        template["ferry.dev/config-hash"]
        != before["spec"]["template"]["metadata"]["annotations"]["ferry.dev/config-hash"]
    )
    [event] = [e for e in after.events if e.reason == "SpecChanged"]
    assert "spec.target.topic: orders -> orders-v2" in event.message
    assert "consumer group dts-grp keeps its offsets" in event.message
    assert event.applied  # posted even if the status patch is refused: the next reconcile finds it rolled
    assert not [e for e in after.events if e.applied and e.reason != "SpecChanged"]
    assert env_of(after.deployment)["FERRY_CONSUMER_GROUP"] == "dts-grp"
    # Once the Deployment carries the new spec, nothing more is announced.
    assert not [
        e for e in run(task(target_topic="orders-v2"), deployment=after.deployment).events if e.reason == "SpecChanged"
    ]


def test_pausing_or_scaling_is_not_announced_as_a_spec_change() -> None:
    before = run(task()).deployment
    assert not [e for e in run(task(replicas=3), deployment=before).events if e.reason == "SpecChanged"]


def test_any_pause_resumes_from_the_subscription_groups_offsets_which_are_never_moved() -> None:
    paused_at = rfc3339(NOW - timedelta(days=30))
    outcome = run(task(status={"state": "Paused", "pausedAt": paused_at, "offsetEpoch": 0}))
    assert outcome.status["consumerGroup"] == "dts-grp" and outcome.status["offsetEpoch"] == 0
    assert outcome.status["resumedFrom"] == "savedOffsets"
    assert outcome.deployment is not None and env_of(outcome.deployment)["FERRY_OFFSET_EPOCH"] == "0"
    assert not [e for e in outcome.events if e.reason == "ResumedFromStartFrom"]


def test_a_late_resume_with_a_window_set_keeps_the_group_and_bumps_the_epoch_the_workers_reset_once() -> None:
    paused_at = rfc3339(NOW - timedelta(hours=30))
    outcome = run(task(resumeWindow="24h", status={"state": "Paused", "pausedAt": paused_at, "offsetEpoch": 0}))
    assert outcome.status["consumerGroup"] == "dts-grp" and outcome.status["offsetEpoch"] == 1
    assert outcome.deployment is not None and env_of(outcome.deployment)["FERRY_OFFSET_EPOCH"] == "1"
    [event] = [e for e in outcome.events if e.reason == "ResumedFromStartFrom"]
    assert "moving consumer group dts-grp to startFrom=latest" in event.message


def test_each_task_gets_a_service_account_and_a_role_over_its_own_status_only() -> None:
    outcome = run(task())
    assert outcome.deployment is not None
    account, role, binding = outcome.access
    name = outcome.deployment["metadata"]["name"]
    assert outcome.deployment["spec"]["template"]["spec"]["serviceAccountName"] == name
    assert (account["kind"], role["kind"], binding["kind"]) == ("ServiceAccount", "Role", "RoleBinding")
    assert {o["metadata"]["name"] for o in outcome.access} == {name}
    assert role["rules"] == [
        {
            "apiGroups": ["ferry.dev"],
            "resources": ["dataaccesstasks/status"],
            "resourceNames": ["pull"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "team-a"}]
    for obj in outcome.access:
        [ref] = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("DataAccessTask", "pull", "0123456789abcdef")


def test_the_operator_exports_one_state_per_task() -> None:
    states = TaskStateMetrics()
    states.set("DataAccessTask", "team-a", "pull", "Unassigned")
    states.set("DataAccessTask", "team-a", "pull", "Running")
    states.set("TopicSync", "team-a", "mirror", "Failed")

    def value(kind: str, task: str, state: str) -> float | None:
        labels = {"kind": kind, "namespace": "team-a", "task": f"team-a/{task}", "task_name": "", "state": state}
        return states.registry.get_sample_value("ferry_task_state", labels)

    assert value("DataAccessTask", "pull", "Running") == 1
    assert value("DataAccessTask", "pull", "Unassigned") is None  # not a stale second state
    assert value("TopicSync", "mirror", "Failed") == 1
    states.forget("DataAccessTask", "team-a", "pull")
    assert value("DataAccessTask", "pull", "Running") is None


def named(name: str, created: str, group: str = "dts-grp", bootstrap: str = "dts:9092") -> dict[str, Any]:
    body = task()
    body["metadata"].update(name=name, uid=f"uid-{name}", creationTimestamp=created)
    body["spec"]["source"]["dts"].update(consumerGroup=group, bootstrapServers=bootstrap)
    return body


def test_a_second_task_in_the_same_subscription_group_is_refused_until_the_first_is_gone() -> None:
    first, second = named("first", "2026-11-22T10:00:00Z"), named("second", "2026-11-22T11:00:00Z")
    held = run(second, peers=[first, second])
    assert (held.status["state"], held.status["reason"]) == ("Failed", "ConsumerGroupInUse")
    assert "team-a/first already reads through consumer group dts-grp on dts:9092" in held.status["message"]
    assert held.deployment is not None and held.deployment["spec"]["replicas"] == 0  # no worker joins the group
    assert run(first, peers=[first, second]).status["state"] != "Failed"
    # Another group, or the same group name on another instance, is another group.
    assert run(named("other", "2026-11-22T11:00:00Z", group="grp-2"), peers=[first]).status["state"] != "Failed"
    elsewhere = named("elsewhere", "2026-11-22T11:00:00Z", bootstrap="dts-2:9092")
    assert run(elsewhere, peers=[first]).status["state"] != "Failed"
    # The first one is being deleted: the group is free.
    first["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert run(second, peers=[first, second]).status["state"] != "Failed"


def test_the_webhook_refuses_creating_a_second_task_in_the_group() -> None:
    from ferry.webhook import review

    first, second = named("first", "2026-11-22T10:00:00Z"), named("second", "2026-11-22T11:00:00Z")
    message = review(PLUGIN, "CREATE", second, None, lambda: [first])
    assert message is not None and "give this task its own consumer group" in message
    assert (
        review(PLUGIN, "CREATE", named("other", "2026-11-22T11:00:00Z", group="grp-2"), None, lambda: [first]) is None
    )


def worker_of(deployment: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """A pod of the worker Deployment, as the operator lists it."""
    assert deployment is not None
    return {"metadata": {"name": name}, "spec": deployment["spec"]["template"]["spec"]}


def report(**ids: str) -> dict[str, Any]:
    return {"phase": "Running", "heartbeatTime": rfc3339(NOW - timedelta(seconds=5)), "epoch": 0, **ids}


def test_the_cluster_ids_follow_the_spec_to_other_brokers() -> None:
    first = run(task())
    old_pod = worker_of(first.deployment, "pull-1")
    reports = {"pull-1": report(sourceClusterId="DTS", targetClusterId="K1")}
    learned = run(task(status={"workers": reports}), deployment=first.deployment, pods=[old_pod])
    assert (learned.status["sourceClusterId"], learned.status["targetClusterId"]) == ("DTS", "K1")
    # The target moves to other brokers: its id is cleared at once; the old worker, still flushing, reports the
    # source it still shares with the new spec, and nothing about the target counts.
    moved = task(status={**learned.status, "workers": reports})
    moved["spec"]["target"]["bootstrapServers"] = "kafka-2:9092"
    after = run(moved, deployment=first.deployment, pods=[old_pod])
    assert after.status["targetClusterId"] is None and after.status["sourceClusterId"] == "DTS"
    moved["status"] = {k: v for k, v in {**moved["status"], **after.status}.items() if v is not None}
    later = run(moved, deployment=after.deployment, pods=[old_pod])
    assert "targetClusterId" not in later.status
    # The new spec's workers report: theirs is the id.
    moved["status"]["workers"] = {"pull-2": report(sourceClusterId="DTS", targetClusterId="K2")}
    newer = run(moved, deployment=after.deployment, pods=[worker_of(after.deployment, "pull-2")])
    assert newer.status["targetClusterId"] == "K2"


def test_the_webhook_refuses_a_copy_onto_the_same_topic_of_a_cluster_spelled_two_ways() -> None:
    from ferry.webhook import review

    # Another task's workers reported the cluster behind kafka:9092 (its target).
    reported = named("first", "2026-11-22T10:00:00Z")
    reported["status"] = {"sourceClusterId": "DTS", "targetClusterId": "K1"}
    onto_itself = named("second", "2026-11-22T11:00:00Z", group="grp-2", bootstrap="kafka-0:9092,kafka:9092")
    onto_itself["spec"]["source"]["dts"]["topic"] = "orders"
    message = review(PLUGIN, "CREATE", onto_itself, None, lambda: [reported])
    assert message == (
        "spec.source.dts.bootstrapServers kafka-0:9092,kafka:9092 and spec.target.bootstrapServers kafka:9092 are "
        "the same Kafka cluster (cluster id K1, as reported by the workers of team-a/first), and "
        "spec.target.topic is the source topic orders: records would be copied onto themselves; point "
        "spec.target at another topic or Kafka instance"
    )

    def not_needed() -> list[dict[str, Any]]:
        raise AssertionError("peers listed for a task that copies to another topic")

    onto_itself["spec"]["target"]["topic"] = "orders-copy"
    onto_itself["spec"]["source"]["dts"]["consumerGroup"] = "grp-3"
    assert review(PLUGIN, "UPDATE", onto_itself, named("second", "2026-11-22T11:00:00Z"), not_needed) is None
