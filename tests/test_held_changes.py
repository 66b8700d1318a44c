"""A spec change the operator cannot honour leaves the last accepted spec running (every kind), without an API
server: spec and observations in, outcome out. Live: tests/test_topicsync_e2e.py."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION
from ferry.control.reconcile import Observed, Outcome, decide
from ferry.control.render import deployed_spec
from ferry.dataaccess.worker import PLUGIN as DATA_ACCESS
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin
from ferry.topicsync.worker import PLUGIN as TOPIC_SYNC
from ferry.webhook import review

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(heartbeat_timeout=60)
ACCOUNTS: dict[str, set[str] | None] = {"dr-user": {"username", "password"}, "dts": {"username", "password"}}


def sync(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": "mirror", "namespace": "ns", "uid": "uid-mirror", "generation": 1, "annotations": {}},
        "spec": {
            "source": {"bootstrapServers": "eu:9092"},
            "target": {"bootstrapServers": "dr:9092"},
            "topics": ["orders"],
            "targetTopicName": "{source}.{topic}",
            **spec,
        },
        "status": {},
    }


def pull(name: str = "pull", created: str = "2026-11-21T10:00:00Z", group: str = "grp-1") -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": created,
            "annotations": {},
        },
        "spec": {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": "dts:9092",
                    "topic": "subs",
                    "consumerGroup": group,
                    "credentialsSecretRef": {"name": "dts"},
                },
            },
            "target": {"bootstrapServers": "kafka:9092", "topic": "orders"},
        },
        "status": {},
    }


def run(plugin: KindPlugin, body: dict[str, Any], **observed: Any) -> Outcome:
    observed.setdefault("secrets", ACCOUNTS)
    return decide(plugin, body, Observed(now=NOW, **observed), SETTINGS)


def accepted(plugin: KindPlugin, body: dict[str, Any]) -> tuple[dict[str, Any], Outcome]:
    """The task as the operator leaves it after accepting its spec, and what it deployed."""
    first = run(plugin, body)
    stored = copy.deepcopy(body)
    stored["metadata"]["annotations"].update(first.annotations)
    return stored, first


def with_sasl_target(body: dict[str, Any], secret: str) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["spec"]["target"].update(
        bootstrapServers="dr-sasl:9093",
        securityProtocol="SASL_PLAINTEXT",
        saslMechanism="SCRAM-SHA-512",
        credentialsSecretRef={"name": secret},
    )
    return changed


def test_every_kind_records_the_spec_it_accepts_without_its_state() -> None:
    body, first = accepted(TOPIC_SYNC, sync(state="Running"))
    record = json.loads(first.annotations[ACCEPTED_SPEC_ANNOTATION])
    assert record == {k: v for k, v in body["spec"].items() if k != "state"}
    assert run(TOPIC_SYNC, body).annotations == {}  # recorded once: nothing to write while it is the same
    assert ACCEPTED_SPEC_ANNOTATION in run(DATA_ACCESS, pull()).annotations


def test_a_change_naming_a_missing_secret_keeps_the_old_spec_running_until_the_secret_exists() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    changed = with_sasl_target(body, "dr-new")
    held = run(TOPIC_SYNC, changed, deployment=first.deployment)
    assert (held.status["state"], held.status["reason"]) == ("Failed", "SecretNotFound")
    message = held.status["message"]
    assert "Secret 'dr-new' (for target_sasl_password) does not exist in this namespace: create it" in message
    assert "the workers keep running the last accepted spec" in message
    assert "spec.target.bootstrapServers: dr:9092 -> dr-sasl:9093" in message
    assert held.deployment is not None and held.deployment["spec"]["replicas"] == 1
    assert deployed_spec(held.deployment)["target"] == {"bootstrapServers": "dr:9092", "securityProtocol": "PLAINTEXT"}
    assert held.deployment == first.deployment  # nothing rolls
    assert not held.annotations and not [e for e in held.events if e.reason == "SpecChanged"]
    assert [(e.type, e.reason) for e in held.events] == [("Warning", "SecretNotFound")]
    # The Secret is created: the new target is checked against the brokers (tests/test_spec_checks.py), then,
    # once the check passed, accepted, recorded and rolled out.
    secrets = {**ACCOUNTS, "dr-new": {"username", "password"}}
    checking = run(TOPIC_SYNC, changed, deployment=first.deployment, secrets=secrets)
    assert checking.deployment == first.deployment and len(checking.jobs) == 1
    passed = {**checking.status["specCheck"], "result": "Passed", "checkedAt": "2026-11-21T12:00:05Z"}
    changed["status"]["specCheck"] = passed
    rolled = run(TOPIC_SYNC, changed, deployment=first.deployment, secrets=secrets)
    assert rolled.status["state"] == "Unassigned"
    assert deployed_spec(rolled.deployment)["target"]["credentialsSecretRef"]["name"] == "dr-new"  # type: ignore[index]
    assert json.loads(rolled.annotations[ACCEPTED_SPEC_ANNOTATION])["target"]["bootstrapServers"] == "dr-sasl:9093"
    [event] = [e for e in rolled.events if e.reason == "SpecChanged"]
    assert "spec.target.bootstrapServers: dr:9092 -> dr-sasl:9093" in event.message


def test_a_missing_key_is_held_back_the_same_way() -> None:
    body, first = accepted(TOPIC_SYNC, with_sasl_target(sync(), "dr-user"))
    changed = copy.deepcopy(body)
    changed["spec"]["target"]["credentialsSecretRef"]["passwordKey"] = "pass"
    held = run(TOPIC_SYNC, changed, deployment=first.deployment)
    assert held.status["reason"] == "SecretKeyNotFound" and "has no key 'pass'" in held.status["message"]
    assert held.deployment == first.deployment


def test_a_value_the_model_refuses_keeps_the_old_spec_running() -> None:
    body, first = accepted(DATA_ACCESS, pull())
    changed = copy.deepcopy(body)
    # The same instance spelled otherwise and the same topic: the CRD compares strings, the model instances.
    changed["spec"]["target"] = {"bootstrapServers": "DTS", "topic": "subs"}
    held = run(DATA_ACCESS, changed, deployment=first.deployment)
    assert (held.status["state"], held.status["reason"]) == ("Failed", "InvalidSpec")
    assert "records would be copied onto themselves" in held.status["message"]
    assert "the workers keep running the last accepted spec" in held.status["message"]
    assert held.deployment == first.deployment


def test_an_invalid_spec_never_accepted_has_nothing_to_keep_running() -> None:
    body = pull()
    body["spec"]["target"] = {"bootstrapServers": "DTS", "topic": "subs"}
    outcome = run(DATA_ACCESS, body)
    assert outcome.status["reason"] == "InvalidSpec" and outcome.deployment is None


def test_scaling_and_pausing_apply_to_the_old_spec_while_a_change_is_held_back() -> None:
    body, first = accepted(TOPIC_SYNC, sync())
    scaled = with_sasl_target(body, "dr-new")
    scaled["spec"]["replicas"] = 3
    held = run(TOPIC_SYNC, scaled, deployment=first.deployment)
    assert held.deployment is not None and held.deployment["spec"]["replicas"] == 3
    assert deployed_spec(held.deployment)["target"]["bootstrapServers"] == "dr:9092"  # type: ignore[index]
    scaled["spec"]["state"] = "Paused"
    paused = run(TOPIC_SYNC, scaled)  # the workers are gone
    assert (paused.status["state"], paused.status["reason"]) == ("Paused", "Paused")
    assert "a spec change is held back: SecretNotFound: Secret 'dr-new'" in paused.status["message"]


def test_when_the_old_spec_cannot_run_either_the_message_says_so() -> None:
    body, first = accepted(TOPIC_SYNC, with_sasl_target(sync(), "dr-user"))
    changed = copy.deepcopy(body)
    changed["spec"]["target"]["credentialsSecretRef"]["name"] = "dr-new"
    outcome = run(TOPIC_SYNC, changed, deployment=first.deployment, secrets={})  # both Secrets missing
    assert (outcome.status["state"], outcome.status["reason"]) == ("Failed", "SecretNotFound")
    assert "'dr-new'" in outcome.status["message"]
    assert "the last accepted spec does not run either (SecretNotFound: Secret 'dr-user'" in outcome.status["message"]
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 0


def test_the_obsdump_immutable_spec_is_the_same_mechanism() -> None:
    body = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": "dump", "namespace": "ns", "uid": "uid-dump", "generation": 1, "annotations": {}},
        "spec": {
            "source": {"bootstrapServers": "kafka:9092"},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
        },
    }
    secrets: dict[str, set[str] | None] = {"obs": {"accessKey", "secretKey"}}
    stored, first = copy.deepcopy(body), run(OBS_DUMP, body, secrets=secrets)
    stored["metadata"]["annotations"].update(first.annotations)
    stored["spec"]["target"]["bucket"] = "elsewhere"
    held = run(OBS_DUMP, stored, secrets=secrets, deployment=first.deployment)
    assert held.status["reason"] == "SpecImmutable"
    assert held.status["message"].startswith("spec.target changed after creation, but only spec.state may change")
    assert "the workers keep running the last accepted spec" in held.status["message"]
    assert deployed_spec(held.deployment)["target"]["bucket"] == "dumps"  # type: ignore[index]


def test_other_tasks_see_a_task_with_a_held_back_change_as_it_runs() -> None:
    """A DataAccessTask whose change to another consumer group is held back still reads through its old group:
    a later task in the old group is refused, one in the new group is not."""
    first, _ = accepted(DATA_ACCESS, pull("first"))
    first["spec"]["source"]["dts"].update(consumerGroup="grp-2", credentialsSecretRef={"name": "dts-new"})
    assert run(DATA_ACCESS, first, peers=[first]).status["reason"] == "SecretNotFound"  # held back
    old_group = pull("second", created="2026-11-21T11:00:00Z", group="grp-1")
    refused = run(DATA_ACCESS, old_group, peers=[first, old_group])
    assert refused.status["reason"] == "ConsumerGroupInUse" and "ns/first" in refused.status["message"]
    new_group = pull("third", created="2026-11-21T11:00:00Z", group="grp-2")
    assert run(DATA_ACCESS, new_group, peers=[first, new_group]).status["state"] != "Failed"
    # The webhook judges a new task the same way.
    message = review(DATA_ACCESS, "CREATE", old_group, None, lambda: [copy.deepcopy(first)])
    assert message is not None and "ns/first already reads through consumer group grp-1" in message
    assert review(DATA_ACCESS, "CREATE", new_group, None, lambda: [copy.deepcopy(first)]) is None


def dump() -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": "dump", "namespace": "ns", "uid": "uid-dump", "generation": 1, "annotations": {}},
        "spec": {
            "source": {"bootstrapServers": "kafka:9092"},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
        },
        "status": {},
    }


@pytest.mark.parametrize("kind", ["TopicSync", "DataAccessTask", "ObsDumpTask"])
def test_a_secret_deleted_under_running_workers_keeps_them_running_failed_until_it_is_back(kind: str) -> None:
    """No spec change: the Secret (or its key) goes while the workers run. They hold the values they started with,
    so they keep running, and the task is Failed with the reason until the Secret is back; nothing rolls."""
    plugin, body, secret, role = {
        "TopicSync": (TOPIC_SYNC, with_sasl_target(sync(), "dr-user"), "dr-user", "target_sasl_password"),
        "DataAccessTask": (DATA_ACCESS, pull(), "dts", "source_sasl_password"),
        "ObsDumpTask": (OBS_DUMP, dump(), "obs", "target_access_key"),
    }[kind]
    secrets: dict[str, set[str] | None] = {**ACCOUNTS, "obs": {"accessKey", "secretKey"}}
    stored, first = copy.deepcopy(body), run(plugin, body, secrets=secrets)
    stored["metadata"]["annotations"].update(first.annotations)
    assert first.deployment is not None and first.deployment["spec"]["replicas"] == 1
    workers = {"w-1": {"phase": "Running", "heartbeatTime": "2026-11-21T11:59:58Z", "epoch": 0}}
    stored["status"] = {"state": "Running", "reason": "WorkerRunning", "workers": workers}
    assert run(plugin, stored, secrets=secrets, deployment=first.deployment).status["state"] == "Running"

    gone = {k: v for k, v in secrets.items() if k != secret}
    kept = run(plugin, stored, secrets=gone, deployment=first.deployment)
    assert (kept.status["state"], kept.status["reason"]) == ("Failed", "SecretNotFound")
    message = kept.status["message"]
    assert message.startswith(f"Secret {secret!r} (for {role}) does not exist in this namespace: create it; "), message
    assert "until then the workers already running keep running this spec with the credentials they started" in message
    assert kept.deployment == first.deployment  # the same workers, at the same replicas: nothing rolls or stops
    assert ("Warning", "SecretNotFound") in [(e.type, e.reason) for e in kept.events]
    assert not [e for e in kept.events if e.reason == "SpecChanged"]
    keyless = {**secrets, secret: {"some-other-key"}}
    no_key = run(plugin, stored, secrets=keyless, deployment=first.deployment)
    assert no_key.status["reason"] == "SecretKeyNotFound" and no_key.deployment == first.deployment

    # Workers that stopped reporting (gone, or a restarted one cannot start without the Secret): nothing to keep.
    failed = copy.deepcopy(stored)
    failed["status"] = {**kept.status, "workers": {}}
    stopped = run(plugin, failed, secrets=gone, deployment=first.deployment)
    assert stopped.status["reason"] == "SecretNotFound" and "keep running" not in stopped.status["message"]
    assert stopped.deployment is not None and stopped.deployment["spec"]["replicas"] == 0
    # Nor for a task resuming from a pause (its Deployment at zero): it cannot start without the Secret.
    assert run(plugin, failed, secrets=gone, deployment=stopped.deployment).deployment == stopped.deployment

    # The Secret back: Running again, with the same workers.
    failed["status"] = {**kept.status, "workers": workers}
    back = run(plugin, failed, secrets=secrets, deployment=first.deployment)
    assert (back.status["state"], back.status["reason"]) == ("Running", "WorkerRunning")
    assert back.deployment == first.deployment


def test_a_secret_deleted_under_a_running_restore_keeps_its_job_failed_until_it_is_back() -> None:
    """ObsRestoreTask, the one-shot kind: its Job's worker holds the store's keys it started with."""
    from ferry.obsrestore.control import RestoreObserved, decide_restore
    from ferry.obsrestore.worker import PLUGIN as OBS_RESTORE

    body = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsRestoreTask",
        "metadata": {"name": "restore", "namespace": "ns", "uid": "uid-restore", "generation": 1, "annotations": {}},
        "spec": {
            "source": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
            "topics": ["orders"],
            "target": {"bootstrapServers": "kafka:9092", "topic": "orders-restored"},
        },
        "status": {
            "state": "Running",
            "reason": "WorkerRunning",
            "workers": {"restore-x1": {"phase": "Running", "heartbeatTime": "2026-11-21T11:59:58Z", "epoch": 0}},
        },
    }
    job = {"metadata": {"name": "restore-obsrestoretask"}, "status": {}}
    secrets: dict[str, set[str] | None] = {"obs": {"accessKey", "secretKey"}}

    def run_restore(body: dict[str, Any], secrets: dict[str, set[str] | None], **observed: Any) -> Any:
        return decide_restore(
            OBS_RESTORE, body, RestoreObserved(now=NOW, job=job, secrets=secrets, **observed), SETTINGS
        )

    kept = run_restore(body, {})
    assert (kept.status["state"], kept.status["reason"]) == ("Failed", "SecretNotFound")
    assert (
        "until then the worker already running goes on with the credentials it started with" in (kept.status["message"])
    )
    assert not kept.delete_job
    stopped = copy.deepcopy(body)
    stopped["status"]["workers"] = {}
    gone = run_restore(stopped, {})
    assert gone.status["reason"] == "SecretNotFound" and gone.delete_job  # no live worker: nothing to keep
    back = run_restore(body, secrets)
    assert back.status["state"] == "Running" and not back.delete_job
