"""ObsRestoreTask's operator side: its Job and its states, decided without an API server, then live: the chart's
operator on a real control plane renders the Job, the Job controller and the process kubelet run it, the worker
restores a real dump into a real Kafka, and the task ends Succeeded."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ferry.control.reconcile import rfc3339
from ferry.obsrestore.control import BACKOFF_LIMIT, RestoreObserved, RestoreOutcome, decide_restore
from ferry.obsrestore.worker import PLUGIN
from ferry.settings import OperatorSettings
from kubernetes import client

from tests.conftest import BucketFactory, TopicFactory
from tests.support.admission import admission
from tests.support.cluster import Cluster, KubeEnv, running_cluster
from tests.support.dumps import wait_for
from tests.support.kafka import KafkaCluster
from tests.support.podsecurity import restricted_violations
from tests.support.restores import (
    dump,
    end_offsets,
    expected_partitions,
    produce_records,
    read_partitions,
    restore_spec,
)
from tests.support.servers import ObjectStore as SeaweedFS

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(heartbeat_timeout=60)
SECRETS: dict[str, set[str] | None] = {"obs": {"accessKey", "secretKey"}}
JOB = "restore-obsrestoretask"


def task(status: dict[str, Any] | None = None, name: str = "restore", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsRestoreTask",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-11-21T10:00:00Z",
            "annotations": {},
        },
        "spec": {
            "source": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
            "topics": ["orders"],
            "target": {"bootstrapServers": "kafka:9092", "topic": "orders-restored"},
            **spec,
        },
        "status": status or {},
    }


def run(body: dict[str, Any], **observed: Any) -> RestoreOutcome:
    observed.setdefault("secrets", SECRETS)
    return decide_restore(PLUGIN, body, RestoreObserved(now=NOW, **observed), SETTINGS)


def report(phase: str = "Running", age: float = 5, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "heartbeatTime": rfc3339(NOW - timedelta(seconds=age)), "epoch": 0, **extra}


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    found = [
        {"type": kind, "status": "True", "reason": reason, "message": f"{reason} happened"}
        for kind, reason in conditions
    ]
    return {"metadata": {"name": JOB}, "status": {"conditions": found}}


POD = {"metadata": {"name": f"{JOB}-x1"}, "status": {"phase": "Running"}}
POINT = {"records": 120, "bytes": 900, "skipped": 3, "objects": 4, "partitions": {}}


def test_the_job_runs_the_worker_pod_once_restarting_it_on_failure() -> None:
    outcome = run(task())
    rendered = outcome.job
    assert rendered is not None and not outcome.delete_job
    assert (rendered["apiVersion"], rendered["kind"], rendered["metadata"]["name"]) == ("batch/v1", "Job", JOB)
    assert rendered["metadata"]["ownerReferences"][0] | {"uid": "uid-restore", "controller": True} == {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsRestoreTask",
        "name": "restore",
        "uid": "uid-restore",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert rendered["spec"]["backoffLimit"] == BACKOFF_LIMIT == 10
    pod = rendered["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["spec"]["serviceAccountName"] == JOB  # its own identity: get/patch of this task's status only
    assert restricted_violations(pod) == []
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env["FERRY_TASK"]["value"])["kind"] == "ObsRestoreTask"
    assert env["FERRY_SECRET_SOURCE_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "obs", "key": "secretKey"}
    [role] = [a for a in outcome.access if a["kind"] == "Role"]
    assert role["rules"] == [
        {
            "apiGroups": ["ferry.dev"],
            "resources": ["obsrestoretasks/status"],
            "resourceNames": ["restore"],
            "verbs": ["get", "patch"],
        }
    ]
    assert outcome.status["state"] == "Unassigned" and outcome.status["reason"] == "WaitingForWorker"
    assert outcome.status["startTime"] == rfc3339(NOW) and outcome.status["jobName"] == JOB


def test_running_failed_and_succeeded_follow_the_worker_and_the_job() -> None:
    workers = {"pod-1": report(objectsTotal=10, objectsRestored=4, targetTopics={"orders": "orders-restored"})}
    running = run(task({"state": "Unassigned", "workers": workers, "resumePoint": POINT}), job=job(), pods=[POD])
    assert (running.status["state"], running.status["reason"]) == ("Running", "WorkerRunning")
    assert running.status["message"] == "restoring: 4 of 10 objects, 120 records restored"
    assert running.status["totals"] == {"records": 120, "bytes": 900} and running.status["objectsTotal"] == 10
    assert {c["type"]: c["status"] for c in running.status["conditions"]} == {
        "Ready": "True",
        "Paused": "False",
        "Complete": "False",
    }

    error = {"reason": "TargetTopicNotFound", "message": "target topics missing", "time": rfc3339(NOW)}
    failing = run(
        task({"state": "Running", "workers": {"pod-1": report("Failed", error=error)}}), job=job(), pods=[POD]
    )
    assert (failing.status["state"], failing.status["reason"]) == ("Failed", "TargetTopicNotFound")
    assert failing.status["lastError"] == error and failing.job is not None  # the worker retries in its Job
    assert [(e.type, e.reason) for e in failing.events] == [("Warning", "TargetTopicNotFound")]

    done = {
        "pod-1": report("Succeeded", objectsTotal=10, objectsRestored=10, targetTopics={"orders": "orders-restored"})
    }
    point = {**POINT, "objects": 10}
    completing = run(task({"state": "Running", "workers": done, "resumePoint": point}), job=job(), pods=[POD])
    assert (completing.status["state"], completing.status["reason"]) == ("Running", "Completing")

    status = {"state": "Running", "workers": done, "resumePoint": point, "valuesOnlyObjects": 2}
    succeeded = run(task(status), job=job(("Complete", "CompletionsReached")))
    assert (succeeded.status["state"], succeeded.status["reason"]) == ("Succeeded", "RestoreComplete")
    assert succeeded.status["message"] == (
        "restored 120 records from 10 objects into orders-restored (3 passed over); 2 values-only objects: their "
        "keys, headers and timestamps were not in the dump"
    )
    assert succeeded.status["completionTime"] == rfc3339(NOW)
    assert {c["type"]: c["status"] for c in succeeded.status["conditions"]}["Complete"] == "True"
    assert succeeded.job is None and not succeeded.delete_job  # kept, with its pod's log; never started again
    # For good: with the Job gone too (deleted by hand), nothing starts again.
    after = run(task({**status, **succeeded.status}))
    assert after.status["state"] == "Succeeded" and after.job is None and "completionTime" not in after.status


def test_a_job_that_gave_up_is_failed_and_kept() -> None:
    status = {"state": "Running", "lastError": {"reason": "KafkaUnreachable", "message": "no broker", "time": "t"}}
    outcome = run(task(status), job=job(("Failed", "BackoffLimitExceeded")))
    assert (outcome.status["state"], outcome.status["reason"]) == ("Failed", "JobFailed")
    assert outcome.status["message"].startswith(
        f"Job {JOB} gave up (BackoffLimitExceeded: BackoffLimitExceeded happened); the worker's last error: no broker"
    )
    assert outcome.job is None and not outcome.delete_job


def test_pausing_deletes_the_job_and_resuming_starts_a_new_one_from_the_resume_point() -> None:
    running = {"state": "Running", "resumePoint": POINT}
    pausing = run(task(running, state="Paused"), job=job(), pods=[POD])
    assert pausing.delete_job and pausing.job is None
    assert (pausing.status["state"], pausing.status["reason"]) == ("Running", "Pausing")
    stopping = run(task({**running, **pausing.status}, state="Paused"), pods=[POD])  # the Job is gone, its pod not
    assert stopping.status["reason"] == "Pausing" and not stopping.delete_job
    paused = run(task({**running, **stopping.status}, state="Paused"))
    assert (paused.status["state"], paused.status["reason"]) == ("Paused", "Paused")
    assert paused.status["pausedAt"] == rfc3339(NOW) and paused.job is None
    resumed = run(task({**running, **paused.status}))
    assert resumed.job is not None and resumed.status["pausedAt"] is None
    assert next((e.reason, e.message) for e in resumed.events) == (
        "Resumed",
        "resumed: a new Job continues from the resume point (120 records restored)",
    )
    # Running again while the old Job's pod still stops: no second Job until it is gone.
    early = run(task({**running, **paused.status}), pods=[POD])
    assert early.job is None and early.status["reason"] == "WaitingForWorker"


def test_a_name_in_use_or_a_missing_secret_stops_the_job() -> None:
    first = task(name="first", taskName="orders_restore")
    later = task(name="later", taskName="orders_restore")
    later["metadata"]["creationTimestamp"] = "2026-11-21T11:00:00Z"
    held = run(later, peers=[first, later], job=job())
    assert (held.status["state"], held.status["reason"]) == ("Failed", "TaskNameInUse")
    assert held.delete_job and held.job is None
    assert run(first, peers=[first, later]).job is not None
    missing = run(task(), secrets={}, job=job())
    assert (missing.status["state"], missing.status["reason"]) == ("Failed", "SecretNotFound") and missing.delete_job


# --------------------------------------------------------------------------- live


def test_the_api_server_refuses_what_the_model_refuses(kube: KubeEnv) -> None:
    """The CRD's own rules, on the real API server: from before to, target.topic for one topic, one replica, and
    only spec.state changes."""
    manifest = task()
    manifest["metadata"] = {"name": "restore"}
    del manifest["status"]
    with admission(kube.control_plane.api_client()) as server:
        assert server.errors(manifest) == []
        ranged = {
            **manifest,
            "spec": {**manifest["spec"], "from": "2026-11-26T13:00:00Z", "to": "2026-11-26T13:00:00Z"},
        }
        assert server.errors(ranged) == ["spec: Invalid value: from must be before to"]
        ok = {
            **manifest,
            "spec": {**manifest["spec"], "from": "2026-11-26T13:00:00+08:00", "to": "2026-11-26T06:00:00Z"},
        }
        assert server.errors(ok) == []
        two = {**manifest, "spec": {**manifest["spec"], "topics": ["orders", "payments"]}}
        assert server.errors(two) == [
            "spec: Invalid value: target.topic renames one topic: list exactly one topic in topics"
        ]
        assert server.errors({**manifest, "spec": {**manifest["spec"], "replicas": 2}})[0].startswith(
            "spec.replicas: Invalid value: 2: spec.replicas in body should be less than or equal to 1"
        )
        moved = {**manifest, "spec": {**manifest["spec"], "topics": ["payments"]}}
        assert server.update(manifest, moved).errors == [
            "spec: Invalid value: spec.topics cannot change after creation; only spec.state can. Create a new "
            "ObsRestoreTask to change it."
        ]
        assert server.update(manifest, {**manifest, "spec": {**manifest["spec"], "state": "Paused"}}).admitted


def apply_restore(
    cluster: Cluster, ns: str, name: str, store: SeaweedFS, spec: dict[str, Any]
) -> tuple[client.BatchV1Api, Callable[[], dict[str, Any] | None]]:
    """Apply the ObsRestoreTask `name` with the Secret of the store's keys; its Jobs' API, and a reader of its Job
    (None while there is none)."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "obs-credentials", "namespace": ns},
        "stringData": {"accessKey": store.access_key, "secretKey": store.secret_key},
    }
    manifest = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsRestoreTask",
        "metadata": {"name": name, "namespace": ns},
    }
    cluster.apply(secret, {**manifest, "spec": spec})
    batch = client.BatchV1Api(cluster.api_client)

    def read_job() -> dict[str, Any] | None:
        found = batch.list_namespaced_job(ns).items
        return cluster.api_client.sanitize_for_serialization(found[0]) if found else None

    return batch, read_job


@pytest.fixture(scope="module")
def cluster(kube: KubeEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(kube, tmp_path_factory.mktemp("cluster")) as running:
        yield running


def test_the_operator_runs_a_restore_as_a_job_to_succeeded(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    ns, source, target, bucket = cluster.namespace(), topic_factory(3), topic_factory(3), bucket_factory()
    records = produce_records(kafka.bootstrap, source, 300, 3)
    dumped = dump(kafka, object_store, bucket, source, 300, compression="gzip")
    spec = restore_spec(
        object_store,
        bucket,
        dumped,
        [source],
        state="Paused",
        target={"bootstrapServers": kafka.bootstrap, "topic": target},
    )
    name, plural = "restore", "obsrestoretasks"
    _, read_job = apply_restore(cluster, ns, name, object_store, spec)

    # Created paused: defined, no Job.
    wait_for(lambda: cluster.status(ns, name, plural).get("state") == "Paused", timeout=30, what="Paused")
    assert read_job() is None

    cluster.patch_spec(ns, name, {"state": "Running"}, plural)
    rendered = wait_for(read_job, timeout=30, what="the Job")
    task_uid = (cluster.task(ns, name, plural) or {})["metadata"]["uid"]
    assert rendered["metadata"]["name"] == JOB and rendered["metadata"]["ownerReferences"][0]["uid"] == task_uid
    assert rendered["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"

    def succeeded() -> dict[str, Any] | None:
        status = cluster.status(ns, name, plural)
        return status if status.get("state") == "Succeeded" else None

    status = wait_for(succeeded, timeout=90, what="Succeeded")
    assert status["reason"] == "RestoreComplete" and status["resumePoint"]["records"] == 300
    assert status["objectsTotal"] == status["objectsRestored"] == 6 and status["totals"]["records"] == 300
    assert {c["type"]: c["status"] for c in status["conditions"]}["Complete"] == "True"
    assert status["message"] == f"restored 300 records from 6 objects into {target} (0 passed over)"
    cluster.event(ns, name, "RestoreComplete")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in (read_job() or {})["status"]["conditions"])
    assert read_partitions(kafka.bootstrap, target, 3, 300) == expected_partitions(records, 3)
    listing = cluster.kubectl("get", "ferry", "-n", ns, "-o", "jsonpath={.items[*].status.state}").stdout
    assert listing == "Succeeded"

    # Deleting the task deletes its Job.
    cluster.kubectl("delete", "obsrestoretask", name, "-n", ns, "--wait=false")
    wait_for(lambda: cluster.task(ns, name, plural) is None, timeout=60, what="task deleted")
    wait_for(lambda: read_job() is None, timeout=30, what="Job deleted")
    assert uuid.UUID(task_uid)


def test_a_restore_paused_mid_way_and_one_whose_job_gave_up_both_continue_from_the_resume_point(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    """Live, through the states: Running; paused mid-way (the Job deleted, its worker saves its point on SIGTERM:
    the target holds exactly what the point says); resumed (a new Job goes on from the point); its worker killed
    with the Job's backoffLimit lowered to 0 (rather than waiting for 10 restarts with back-off), so the Job gives
    up: Failed/JobFailed, the point kept; paused and resumed again: a new Job continues and the task Succeeds. Every
    record is on the target in its partition's order, and only the kill's object was written twice."""
    ns, source, target, bucket = cluster.namespace(), topic_factory(3), topic_factory(3), bucket_factory()
    total, per_object = 6000, 500
    records = produce_records(kafka.bootstrap, source, total, 3)
    dumped = dump(
        kafka, object_store, bucket, source, total, maxRecordsPerObject=per_object, format="parquet", compression="gzip"
    )
    spec = restore_spec(
        object_store,
        bucket,
        dumped,
        [source],
        maxRecordsPerSecond=500,  # about 12 s of restoring, for the pause and the kill to land in
        target={"bootstrapServers": kafka.bootstrap, "topic": target},
    )
    name, plural = "restore", "obsrestoretasks"
    batch, read_job = apply_restore(cluster, ns, name, object_store, spec)

    def workers() -> list[Any]:
        return [c for p in cluster.kubelet.pods.values() if p.namespace == ns for c in p.containers if c.running]

    def restored() -> int:
        return int((cluster.status(ns, name, plural).get("resumePoint") or {}).get("records") or 0)

    def in_state(state: str, reason: str | None = None) -> dict[str, Any] | None:
        status = cluster.status(ns, name, plural)
        return status if status.get("state") == state and reason in (None, status.get("reason")) else None

    first_job = wait_for(read_job, timeout=30, what="the Job")
    running = wait_for(lambda: in_state("Running", "WorkerRunning"), timeout=60, what="Running")
    assert running["message"].startswith("restoring: ")
    wait_for(lambda: restored() >= 2 * per_object, timeout=60, what="two objects restored")

    # Paused mid-way: the Job is deleted, the worker saves its point and stops.
    cluster.patch_spec(ns, name, {"state": "Paused"}, plural)
    paused = wait_for(lambda: in_state("Paused", "Paused"), timeout=60, what="Paused")
    at_pause = paused["resumePoint"]["records"]
    assert 2 * per_object <= at_pause < total, paused["resumePoint"]
    assert read_job() is None and workers() == [] and paused["pausedAt"]
    assert {c["type"]: c["status"] for c in paused["conditions"]} == {
        "Ready": "False",
        "Paused": "True",
        "Complete": "False",
    }
    assert "a resume continues from the resume point" in paused["message"]
    # The worker waited for the target's acknowledgements before saving: the target has exactly what the point says.
    assert sum(end_offsets(kafka.bootstrap, target, 3)) == at_pause

    # Resumed: a new Job, which goes on from the point.
    cluster.patch_spec(ns, name, {"state": "Running"}, plural)
    second_job = wait_for(read_job, timeout=30, what="a new Job")
    assert second_job["metadata"]["uid"] != first_job["metadata"]["uid"]
    cluster.event(ns, name, "Resumed")
    wait_for(lambda: restored() >= at_pause + per_object, timeout=60, what="progress after the resume")
    assert in_state("Running") is not None

    # The Job gives up: its worker killed once, with no restart allowed.
    batch.patch_namespaced_job(second_job["metadata"]["name"], ns, {"spec": {"backoffLimit": 0}})
    [worker] = wait_for(workers, timeout=10, what="the worker process")
    before_kill = restored()
    worker.signal(signal.SIGKILL)
    failed = wait_for(lambda: in_state("Failed", "JobFailed"), timeout=90, what="Failed/JobFailed")
    assert failed["message"].startswith(f"Job {JOB} gave up (BackoffLimitExceeded"), failed["message"]
    assert "set spec.state to Paused and back to Running" in failed["message"]
    assert before_kill <= failed["resumePoint"]["records"] < total  # kept, not started over
    kept = read_job()
    assert kept is not None and kept["metadata"]["uid"] == second_job["metadata"]["uid"]  # kept for its logs
    cluster.event(ns, name, "JobFailed", type="Warning")

    # Paused and resumed: the failed Job is deleted, a third one continues from the point to the end.
    cluster.patch_spec(ns, name, {"state": "Paused"}, plural)
    wait_for(lambda: in_state("Paused", "Paused"), timeout=60, what="Paused again")
    assert read_job() is None
    cluster.patch_spec(ns, name, {"state": "Running"}, plural)
    done = wait_for(lambda: in_state("Succeeded", "RestoreComplete"), timeout=120, what="Succeeded")
    assert done["resumePoint"]["records"] == total and done["objectsRestored"] == done["objectsTotal"] == 12
    assert {c["type"]: c["status"] for c in done["conditions"]}["Complete"] == "True"

    writes = sum(end_offsets(kafka.bootstrap, target, 3))
    written = read_partitions(kafka.bootstrap, target, 3, writes)
    assert sum(len(p) for p in written) == writes
    for partition, expected in enumerate(expected_partitions(records, 3)):
        assert list(dict.fromkeys(written[partition])) == expected  # every record, in order, counting first copies
    print(f"paused at {at_pause} records, killed at {before_kill}: {writes} writes of {total} records")
    # Only the SIGKILL redid work: at most the object it interrupted (each object's records are saved at its end).
    assert total <= writes <= total + per_object, writes


def test_a_restore_deleted_mid_way_is_terminating_until_its_worker_stopped(
    cluster: Cluster,
    kafka: KafkaCluster,
    object_store: SeaweedFS,
    topic_factory: TopicFactory,
    bucket_factory: BucketFactory,
) -> None:
    """Deleted while it restores: Terminating (an Event says so), the Job deleted, its worker stopped by SIGTERM
    after the target acknowledged what it produced; then the task is gone. The target holds the start of each
    partition, in order, nothing twice."""
    ns, source, target, bucket = cluster.namespace(), topic_factory(3), topic_factory(3), bucket_factory()
    total = 1500
    records = produce_records(kafka.bootstrap, source, total, 3)
    dumped = dump(kafka, object_store, bucket, source, total, maxRecordsPerObject=250, compression="zstd")
    spec = restore_spec(
        object_store,
        bucket,
        dumped,
        [source],
        maxRecordsPerSecond=300,
        target={"bootstrapServers": kafka.bootstrap, "topic": target},
    )
    name, plural = "restore", "obsrestoretasks"
    batch, _ = apply_restore(cluster, ns, name, object_store, spec)

    def restored() -> int:
        return int((cluster.status(ns, name, plural).get("resumePoint") or {}).get("records") or 0)

    wait_for(lambda: restored() >= 250, timeout=60, what="an object restored")
    [worker] = [c for p in cluster.kubelet.pods.values() if p.namespace == ns for c in p.containers if c.running]
    cluster.kubectl("delete", "obsrestoretask", name, "-n", ns, "--wait=false")
    event = cluster.event(ns, name, "Terminating", timeout=30)
    assert event["message"] == "deletion requested: the worker is stopping"
    wait_for(lambda: cluster.task(ns, name, plural) is None, timeout=60, what="task deleted")
    assert not worker.running and worker.process is not None and worker.process.returncode == 3  # stopped, not done
    assert batch.list_namespaced_job(ns).items == []
    writes = sum(end_offsets(kafka.bootstrap, target, 3))
    assert 250 <= writes < total
    written = read_partitions(kafka.bootstrap, target, 3, writes)
    for partition, expected in enumerate(expected_partitions(records, 3)):
        assert written[partition] == expected[: len(written[partition])]
