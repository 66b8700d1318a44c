"""The operator's decisions for ObsDumpTask, without an API server: spec and observations in, outcome out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ferry.control.identity import known_clusters
from ferry.control.reconcile import ACCEPTED_SPEC_ANNOTATION, Observed, Outcome, decide, rfc3339
from ferry.obsdump.admission import instance_of
from ferry.obsdump.model import ObsDumpTaskSpec
from ferry.obsdump.worker import PLUGIN
from ferry.settings import OperatorSettings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(heartbeat_timeout=60)
SECRETS: dict[str, set[str] | None] = {"obs": {"accessKey", "secretKey"}}


def task(
    name: str = "dump",
    namespace: str = "team-a",
    created: str = "2026-11-21T10:00:00Z",
    status: dict[str, Any] | None = None,
    bootstrap: str = "kafka:9092",
    **spec: Any,
) -> dict[str, Any]:
    body = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": 1,
            "creationTimestamp": created,
            "annotations": {},
        },
        "spec": {
            "source": {"bootstrapServers": bootstrap},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
            **spec,
        },
        "status": status or {},
    }
    return body


def run(body: dict[str, Any], now: datetime = NOW, **observed: Any) -> Outcome:
    observed.setdefault("secrets", SECRETS)
    return decide(PLUGIN, body, Observed(now=now, **observed), SETTINGS)


def report(phase: str = "Running", age: float = 5, epoch: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "heartbeatTime": rfc3339(NOW - timedelta(seconds=age)),
        "epoch": epoch,
        "lag": 3,
        "partitions": [{"topic": "orders", "partition": 0, "committedOffset": 10, "lag": 3}],
        "totals": {"records": 10, "bytes": 100},
        **extra,
    }


def deployed(replicas: int = 1, running: int = 1) -> dict[str, Any]:
    return {"metadata": {"annotations": {}}, "spec": {"replicas": replicas}, "status": {"replicas": running}}


def test_new_task_is_unassigned_gets_a_worker_and_its_spec_is_recorded() -> None:
    outcome = run(task())
    assert outcome.status["state"] == "Unassigned"
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 1
    assert outcome.status["consumerGroup"] == "ferry.team-a.dump.uid-team"
    assert json.loads(outcome.annotations[ACCEPTED_SPEC_ANNOTATION])["target"]["bucket"] == "dumps"
    assert outcome.status["observedGeneration"] == 1


def test_a_recent_running_worker_makes_the_task_running_and_ready() -> None:
    outcome = run(task(status={"workers": {"pod-1": report(lastDumpTime="2026-11-21T11:59:00Z")}}))
    assert outcome.status["state"] == "Running"
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "WorkerRunning"
    assert outcome.status["lag"] == 3 and outcome.status["totals"] == {"records": 10, "bytes": 100}
    assert outcome.status["lastDumpTime"] == "2026-11-21T11:59:00Z"


def test_a_worker_report_from_an_old_offset_epoch_does_not_count() -> None:
    outcome = run(task(status={"offsetEpoch": 1, "workers": {"pod-1": report(epoch=0)}}))
    assert outcome.status["state"] == "Unassigned"


def test_a_silent_worker_is_dropped_and_the_task_is_unassigned() -> None:
    outcome = run(task(status={"state": "Running", "workers": {"pod-1": report(age=600)}}))
    assert outcome.status["state"] == "Unassigned"
    assert outcome.status["workers"] == {"pod-1": None}
    assert any(e.reason == "WaitingForWorker" for e in outcome.events)


def test_a_worker_error_becomes_failed_with_its_reason_and_keeps_the_worker() -> None:
    error = {"reason": "BucketNotFound", "message": "bucket 'dumps' does not exist", "time": "x"}
    outcome = run(task(status={"workers": {"pod-1": report("Failed", error=error)}}))
    assert (outcome.status["state"], outcome.status["reason"]) == ("Failed", "BucketNotFound")
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 1
    assert any(e.type == "Warning" and e.reason == "BucketNotFound" for e in outcome.events)


def test_crash_looping_worker_is_failed() -> None:
    pod = {
        "metadata": {"name": "dump-obsdumptask-1"},
        "status": {
            "containerStatuses": [
                {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"message": "boom"}}}
            ]
        },
    }
    outcome = run(task(), pods=[pod])
    assert outcome.status["reason"] == "WorkerCrashLoop" and "boom" in outcome.status["message"]


def test_missing_secret_and_missing_key_fail_without_starting_a_worker() -> None:
    missing = run(task(), secrets={"obs": None})
    assert missing.status["reason"] == "SecretNotFound" and "'obs'" in missing.status["message"]
    assert missing.deployment is not None and missing.deployment["spec"]["replicas"] == 0
    no_key = run(task(), secrets={"obs": {"accessKey"}})
    assert no_key.status["reason"] == "SecretKeyNotFound" and "'secretKey'" in no_key.status["message"]


def test_pause_scales_to_zero_and_is_paused_once_workers_stopped() -> None:
    stopping = run(task(state="Paused", status={"state": "Running"}), deployment=deployed(1, 1))
    assert stopping.deployment is not None and stopping.deployment["spec"]["replicas"] == 0
    assert stopping.status["state"] == "Running" and stopping.status["reason"] == "Pausing"
    stopped = run(task(state="Paused", status={"state": "Running"}), deployment=deployed(0, 0))
    assert stopped.status["state"] == "Paused" and stopped.status["pausedAt"] == rfc3339(NOW)
    paused = next(c for c in stopped.status["conditions"] if c["type"] == "Paused")
    assert paused["status"] == "True"


def test_created_paused_never_starts_a_worker() -> None:
    outcome = run(task(state="Paused"))
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 0
    assert outcome.status["state"] == "Paused"


def test_resume_within_the_window_keeps_the_consumer_group() -> None:
    paused_at = rfc3339(NOW - timedelta(hours=23))
    outcome = run(task(resumeWindow="24h", status={"state": "Paused", "pausedAt": paused_at, "offsetEpoch": 0}))
    assert outcome.status["offsetEpoch"] == 0 and outcome.status["pausedAt"] is None
    assert outcome.status["consumerGroup"] == "ferry.team-a.dump.uid-team"
    assert outcome.status["resumedFrom"] == "savedOffsets"
    assert next(e.reason for e in outcome.events) == "Resumed"


def test_without_a_resume_window_any_pause_resumes_from_the_saved_offsets() -> None:
    paused_at = rfc3339(NOW - timedelta(days=30))
    outcome = run(task(startFrom="earliest", status={"state": "Paused", "pausedAt": paused_at, "offsetEpoch": 0}))
    assert outcome.status["offsetEpoch"] == 0 and outcome.status["pausedAt"] is None
    assert outcome.status["consumerGroup"] == "ferry.team-a.dump.uid-team"
    assert outcome.status["resumedFrom"] == "savedOffsets"
    [event] = [e for e in outcome.events if e.reason.startswith("Resumed")]
    assert (event.reason, event.message) == ("Resumed", "resumed (no resumeWindow set) from the saved offsets")


def test_resume_after_the_window_starts_from_start_from_in_a_new_group() -> None:
    paused_at = rfc3339(NOW - timedelta(hours=25))
    outcome = run(task(startFrom="earliest", resumeWindow="24h", status={"state": "Paused", "pausedAt": paused_at}))
    assert outcome.status["offsetEpoch"] == 1
    assert outcome.status["consumerGroup"].endswith(".e1")
    assert outcome.status["resumedFrom"] == "startFrom"
    event = next(e for e in outcome.events if e.reason == "ResumedFromStartFrom")
    assert "25.0h" in event.message and "startFrom=earliest" in event.message
    env = {e["name"]: e.get("value") for e in outcome.deployment["spec"]["template"]["spec"]["containers"][0]["env"]}  # type: ignore[index]
    assert env["FERRY_OFFSET_EPOCH"] == "1"


def test_a_custom_resume_window_is_honoured() -> None:
    paused_at = rfc3339(NOW - timedelta(minutes=10))
    outcome = run(task(resumeWindow="5m", status={"state": "Paused", "pausedAt": paused_at}))
    assert outcome.status["offsetEpoch"] == 1


def peers(count: int, bootstrap: str = "kafka:9092") -> list[dict[str, Any]]:
    return [task(name=f"t{i:02d}", created=f"2026-11-21T10:{i:02d}:00Z", bootstrap=bootstrap) for i in range(count)]


def test_the_nineteenth_task_on_an_instance_is_refused() -> None:
    everyone = peers(19)
    outcomes = [run(t, peers=everyone) for t in everyone]
    refused = [o for o in outcomes if o.status["reason"] == "TaskLimitExceeded"]
    assert len(refused) == 1 and refused[0] is outcomes[18]
    assert "18" in refused[0].status["message"] and "delete one" in refused[0].status["message"]
    assert refused[0].deployment is not None and refused[0].deployment["spec"]["replicas"] == 0


def test_the_limit_is_decided_by_creation_time_then_name_not_by_event_order() -> None:
    everyone = [*peers(18), task(name="a-early", created="2026-11-21T09:00:00Z")]
    late = everyone[17]  # t17, now the 19th by creation time
    assert run(late, peers=list(reversed(everyone))).status["reason"] == "TaskLimitExceeded"
    tie = [task(name=n, created="2026-11-21T10:00:00Z") for n in ("b", "a")] + peers(17)
    assert run(tie[0], peers=tie).status["reason"] != "TaskLimitExceeded"


def test_a_freed_slot_lets_the_refused_task_start() -> None:
    everyone = peers(19)
    everyone[3]["metadata"]["deletionTimestamp"] = "2026-11-21T11:00:00Z"
    outcome = run(everyone[18], peers=everyone)
    assert outcome.status["reason"] != "TaskLimitExceeded"
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 1


def test_tasks_on_other_instances_do_not_count() -> None:
    everyone = [*peers(18, bootstrap="other:9092"), task(name="mine")]
    assert run(everyone[-1], peers=everyone).status["reason"] != "TaskLimitExceeded"


def test_the_same_instance_written_differently_counts_once() -> None:
    everyone = [*peers(18, bootstrap="KAFKA"), task(name="z-mine", created="2026-11-21T11:00:00Z")]
    assert run(everyone[-1], peers=everyone).status["reason"] == "TaskLimitExceeded"


def test_a_changed_spec_is_refused_and_the_accepted_spec_keeps_running() -> None:
    body = task()
    body["metadata"]["annotations"][ACCEPTED_SPEC_ANNOTATION] = run(task()).annotations[ACCEPTED_SPEC_ANNOTATION]
    body["spec"]["target"]["bucket"] = "elsewhere"
    outcome = run(body)
    assert outcome.status["state"] == "Failed" and outcome.status["reason"] == "SpecImmutable"
    assert "spec.target" in outcome.status["message"]
    task_env = outcome.deployment["spec"]["template"]["spec"]["containers"][0]["env"][0]  # type: ignore[index]
    assert json.loads(task_env["value"])["spec"]["target"]["bucket"] == "dumps"


def test_changing_only_state_is_allowed() -> None:
    body = task(state="Paused")
    body["metadata"]["annotations"][ACCEPTED_SPEC_ANNOTATION] = run(task()).annotations[ACCEPTED_SPEC_ANNOTATION]
    assert run(body).status["reason"] != "SpecImmutable"


def test_an_invalid_spec_is_failed_without_a_worker() -> None:
    outcome = run(task(topicRegex="x.*"))
    assert outcome.status["reason"] == "InvalidSpec"
    assert "exactly one of topics and topicRegex" in outcome.status["message"]
    assert outcome.deployment is None


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = run(task(status={"workers": {"pod-1": report()}}))
    later = run(task(status={**first.status, "workers": {"pod-1": report()}}), now=NOW + timedelta(seconds=30))
    assert first.status["conditions"] == later.status["conditions"]
    assert not later.events


@pytest.mark.parametrize("state", ["Running", "Paused"])
def test_decide_is_idempotent(state: str) -> None:
    body = task(state=state, status={"workers": {"pod-1": report()}})
    assert run(body).status == run(body).status


def test_a_paused_task_over_the_limit_is_still_reported_failed() -> None:
    everyone = [*peers(18), task(name="z-late", created="2026-11-21T11:00:00Z", state="Paused")]
    outcome = run(everyone[-1], peers=everyone)
    assert outcome.status["reason"] == "TaskLimitExceeded"


def test_a_paused_task_does_not_need_its_secrets_yet() -> None:
    assert run(task(state="Paused"), secrets={"obs": None}).status["state"] == "Paused"


def test_status_lists_at_most_200_partitions_those_with_most_lag() -> None:
    many = [{"topic": "t", "partition": p, "committedOffset": 0, "lag": p} for p in range(300)]
    outcome = run(task(status={"workers": {"pod-1": {**report(), "partitions": many, "lag": sum(range(300))}}}))
    partitions = outcome.status["partitions"]
    assert len(partitions) == 200 and partitions[0]["partition"] == 100 and partitions[-1]["partition"] == 299
    assert outcome.status["lag"] == sum(range(300))


def test_a_rebalancing_group_makes_the_task_unassigned() -> None:
    outcome = run(task(status={"state": "Running", "workers": {"pod-1": report("Rebalancing")}}))
    assert (outcome.status["state"], outcome.status["reason"]) == ("Unassigned", "Rebalancing")


# ---------------------------------------------------------------------------------------------
# Identity by the cluster id the brokers report

CLUSTER = "Mk3OEYBSD34fcwNTJENDM2Qk"


def pod_running(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A worker pod of the Deployment the operator renders for body."""
    deployment = run(body).deployment
    assert deployment is not None
    return {"metadata": {"name": name}, "spec": deployment["spec"]["template"]["spec"]}


def without_workers(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "workers"}


def test_a_tasks_instance_is_its_instance_id_else_its_reported_cluster_id_else_its_spelling() -> None:
    spelled = task(bootstrap="Kafka-1:9092, kafka-0")
    assert instance_of(spelled) == "kafka-0:9092,kafka-1:9092"
    reported = task(bootstrap="kafka-0", status={"sourceClusterId": CLUSTER})
    assert instance_of(reported) == CLUSTER
    named = task(status={"sourceClusterId": CLUSTER})
    named["spec"]["source"]["instanceId"] = "eu"
    assert instance_of(named) == "eu"
    # What another task's workers reported for one of the same host:ports.
    known = known_clusters([reported], ObsDumpTaskSpec)
    assert instance_of(spelled, known) == CLUSTER
    assert instance_of(task(bootstrap="localhost:9092"), known) == "localhost:9092"  # never reached: its spelling


def test_the_host_port_map_leaves_out_what_tasks_disagree_on() -> None:
    a = task("a", bootstrap="k1:9092,k2:9092", status={"sourceClusterId": "A"})
    b = task("b", bootstrap="K2,k3:9092", status={"sourceClusterId": "B"})
    known = known_clusters([b, a], ObsDumpTaskSpec)
    assert {host: r.cluster_id for host, r in known.by_host.items()} == {"k1:9092": "A", "k3:9092": "B"}
    assert known.by_host["k1:9092"].by == "team-a/a"
    assert instance_of(task(bootstrap="k2"), known) == "k2:9092"
    assert instance_of(task(bootstrap="k1,k3"), known) == "k1:9092,k3:9092"  # two clusters: no guess
    assert instance_of(task(bootstrap="K1:9092"), known) == "A"


def test_the_cluster_id_a_worker_reports_is_kept_in_the_status_after_it_stops() -> None:
    body = task(bootstrap="127.0.0.1:39092")
    worker = pod_running("dump-obsdumptask-1", body)
    body["status"] = {"workers": {"dump-obsdumptask-1": report(sourceClusterId=CLUSTER)}}
    learned = run(body, pods=[worker])
    assert learned.status["sourceClusterId"] == CLUSTER
    body["status"] = {**body["status"], **learned.status}
    body["status"]["workers"] = {"dump-obsdumptask-1": report("Stopped", sourceClusterId=CLUSTER)}
    stopped = run(body)
    assert "sourceClusterId" not in stopped.status  # left out of the merge patch: the learned id stays


def test_only_reports_of_pods_running_the_spec_give_the_cluster_id() -> None:
    body = task(bootstrap="127.0.0.1:39092")
    body["status"] = {"workers": {"dump-obsdumptask-1": report(sourceClusterId=CLUSTER)}}
    assert "sourceClusterId" not in run(body).status  # no such pod (any more)
    elsewhere = pod_running("dump-obsdumptask-1", task(bootstrap="other:9092"))
    assert "sourceClusterId" not in run(body, pods=[elsewhere]).status


def test_two_spellings_of_one_cluster_count_as_one_instance_once_the_workers_reported() -> None:
    holders = peers(18, bootstrap="127.0.0.1:39092")
    for holder in holders:
        holder["status"] = {"sourceClusterId": CLUSTER}
    late = task("z-late", created="2026-11-21T11:00:00Z", bootstrap="localhost:39092")
    # Before its workers report, it is known by its spelling only: it gets a slot and a worker.
    first = run(late, peers=holders)
    assert first.status["reason"] != "TaskLimitExceeded"
    assert first.deployment is not None and first.deployment["spec"]["replicas"] == 1
    # Its worker reports the cluster id: over the limit in the same reconcile, the id named, scaled to zero.
    late["status"] = {**first.status, "workers": {"z-late-obsdumptask-1": report(sourceClusterId=CLUSTER)}}
    refused = run(late, peers=holders, pods=[pod_running("z-late-obsdumptask-1", late)])
    assert refused.status["sourceClusterId"] == CLUSTER
    assert (refused.status["state"], refused.status["reason"]) == ("Failed", "TaskLimitExceeded")
    assert f"Kafka instance localhost:39092 (cluster id {CLUSTER}) already has 18" in refused.status["message"]
    assert refused.deployment is not None and refused.deployment["spec"]["replicas"] == 0
    # Its worker gone, it keeps the id and stays refused: no flapping back to its spelling.
    late["status"] = without_workers({**late["status"], **refused.status})
    again = run(late, peers=holders)
    assert again.status["reason"] == "TaskLimitExceeded" and "sourceClusterId" not in again.status
    # A slot frees: it starts.
    holders[3]["metadata"]["deletionTimestamp"] = "2026-11-21T11:30:00Z"
    freed = run(late, peers=holders)
    assert freed.status["reason"] != "TaskLimitExceeded"
    assert freed.deployment is not None and freed.deployment["spec"]["replicas"] == 1


def test_a_task_sharing_a_host_port_with_a_reported_cluster_counts_under_its_id() -> None:
    holders = peers(18, bootstrap="kafka-0:9092,kafka-1:9092")
    holders[0]["status"] = {"sourceClusterId": CLUSTER}  # one worker reported, for everyone on those brokers
    late = task("z-late", created="2026-11-21T11:00:00Z", bootstrap="kafka-1:9092")
    outcome = run(late, peers=holders)
    assert outcome.status["reason"] == "TaskLimitExceeded"
    assert f"Kafka instance kafka-1:9092 (cluster id {CLUSTER}) already has 18" in outcome.status["message"]


def test_an_instance_id_overrides_the_reported_cluster_id() -> None:
    holders = peers(18, bootstrap="127.0.0.1:39092")
    for holder in holders:
        holder["status"] = {"sourceClusterId": CLUSTER}
    late = task(
        "z-late", created="2026-11-21T11:00:00Z", bootstrap="localhost:39092", status={"sourceClusterId": CLUSTER}
    )
    late["spec"]["source"]["instanceId"] = "dumps-eu"
    assert run(late, peers=holders).status["reason"] != "TaskLimitExceeded"
