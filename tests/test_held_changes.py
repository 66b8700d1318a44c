"""A spec change the operator cannot honour leaves the last accepted spec running (every kind), without an API
server: spec and observations in, outcome out. Live: tests/test_topicsync_e2e.py."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

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
    # The Secret is created: the new spec is accepted, recorded and rolled out.
    rolled = run(
        TOPIC_SYNC, changed, deployment=first.deployment, secrets={**ACCOUNTS, "dr-new": {"username", "password"}}
    )
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
