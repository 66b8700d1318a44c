"""Replication loops between TopicSyncs are found from the specs and reported as a condition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ferry.control.reconcile import Observed, decide
from ferry.settings import OperatorSettings
from ferry.topicsync.worker import PLUGIN


def sync(name: str, source: str, target: str, topics: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    selection = {"topics": topics} if topics is not None else {"topicPattern": "orders.*"}
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-11-21T10:00:00Z",
        },
        "spec": {
            "source": {"bootstrapServers": f"{source}:9092", "instanceId": source},
            "target": {"bootstrapServers": f"{target}:9092", "instanceId": target},
            **selection,
            **spec,
        },
        "status": {},
    }


def loop_condition(me: dict[str, Any], peers: list[dict[str, Any]]) -> dict[str, Any]:
    outcome = decide(PLUGIN, me, Observed(peers=peers, now=datetime.now(UTC)), OperatorSettings())
    return next(c for c in outcome.status["conditions"] if c["type"] == "ReplicationLoop")


def test_two_syncs_in_opposite_directions_form_a_loop() -> None:
    a_to_b, b_to_a = sync("ab", "a", "b", ["orders"]), sync("ba", "b", "a", ["orders"])
    condition = loop_condition(a_to_b, [a_to_b, b_to_a])
    assert condition["status"] == "True" and condition["reason"] == "ReplicationLoop"
    assert "a -> b -> a" in condition["message"] and "ns/ba" in condition["message"]


def test_a_three_instance_cycle_is_found() -> None:
    syncs = [sync("ab", "a", "b", ["t"]), sync("bc", "b", "c", ["t", "u"]), sync("ca", "c", "a")]
    assert "a -> b -> c -> a" in loop_condition(syncs[0], syncs)["message"]


def test_no_loop_without_shared_topics_or_with_renaming() -> None:
    assert loop_condition(sync("ab", "a", "b", ["x"]), [sync("ba", "b", "a", ["y"])])["status"] == "False"
    renamed = sync("ba", "b", "a", ["orders"], targetTopicName="{source}.{topic}")
    assert loop_condition(sync("ab", "a", "b", ["orders"]), [renamed])["status"] == "False"


def test_a_new_loop_is_announced_by_a_warning_event_once() -> None:
    a_to_b, b_to_a = sync("ab", "a", "b", ["orders"]), sync("ba", "b", "a", ["orders"])
    first = decide(PLUGIN, a_to_b, Observed(peers=[a_to_b, b_to_a]), OperatorSettings())
    assert any(e.type == "Warning" and e.reason == "ReplicationLoop" for e in first.events)
    again = decide(PLUGIN, {**a_to_b, "status": first.status}, Observed(peers=[a_to_b, b_to_a]), OperatorSettings())
    assert not any(e.reason == "ReplicationLoop" for e in again.events)


def test_a_missing_credentials_secret_fails_the_sync_before_any_worker_starts() -> None:
    body = sync("sasl", "a", "b", ["orders"])
    body["spec"]["target"].update(
        securityProtocol="SASL_SSL", saslMechanism="SCRAM-SHA-512", credentialsSecretRef={"name": "dr-user"}
    )
    outcome = decide(PLUGIN, body, Observed(secrets={"dr-user": None}), OperatorSettings())
    assert (outcome.status["state"], outcome.status["reason"]) == ("Failed", "SecretNotFound")
    assert "'dr-user'" in outcome.status["message"]
    assert outcome.deployment is not None and outcome.deployment["spec"]["replicas"] == 0
    env = outcome.deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {
        "FERRY_SECRET_TARGET_SASL_PASSWORD": {"name": "dr-user", "key": "password"},
        "FERRY_SECRET_TARGET_SASL_USERNAME": {"name": "dr-user", "key": "username"},
    }


def test_a_topic_sync_spec_may_change_and_rolls_the_worker() -> None:
    before = decide(PLUGIN, sync("ab", "a", "b", ["orders"]), Observed(), OperatorSettings())
    after = decide(PLUGIN, sync("ab", "a", "b", ["orders", "payments"]), Observed(), OperatorSettings())
    assert after.status["reason"] != "SpecImmutable"
    hash_of = lambda d: d["spec"]["template"]["metadata"]["annotations"]["ferry.dev/config-hash"]  # noqa: E731
    assert hash_of(before.deployment) != hash_of(after.deployment)


# ---------------------------------------------------------------------------------------------
# Instances by the cluster ids the workers reported

A, B = "AAqOEYBSD34fcwNTJENDM2Qk", "BBqOEYBSD34fcwNTJENDM2Qk"


def spelled(name: str, source: str, target: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = sync(name, "x", "y", ["orders"])
    body["spec"]["source"] = {"bootstrapServers": source}
    body["spec"]["target"] = {"bootstrapServers": target}
    body["status"] = status or {}
    return body


def test_a_loop_through_two_spellings_of_each_cluster_is_found_by_the_reported_cluster_ids() -> None:
    a_to_b = spelled("ab", "127.0.0.1:39092", "127.0.0.1:39093", {"sourceClusterId": A, "targetClusterId": B})
    b_to_a = spelled("ba", "localhost:39093", "localhost:39092", {"sourceClusterId": B, "targetClusterId": A})
    condition = loop_condition(a_to_b, [a_to_b, b_to_a])
    assert condition["status"] == "True"
    assert (
        f"127.0.0.1:39092 (cluster id {A}) -> 127.0.0.1:39093 (cluster id {B}) -> localhost:39092 (cluster id {A})"
        in condition["message"]
    )
    # Before the workers have reported, the spellings are all there is: no loop can be seen.
    unknown = [spelled("ab", "127.0.0.1:39092", "127.0.0.1:39093"), spelled("ba", "localhost:39093", "localhost:39092")]
    assert loop_condition(unknown[0], unknown)["status"] == "False"


def test_the_workers_report_closes_the_loop_in_the_same_reconcile() -> None:
    a_to_b = spelled("ab", "127.0.0.1:39092", "127.0.0.1:39093", {"sourceClusterId": A, "targetClusterId": B})
    b_to_a = spelled("ba", "localhost:39093", "localhost:39092")
    deployment = decide(PLUGIN, b_to_a, Observed(), OperatorSettings()).deployment
    assert deployment is not None
    pod = {"metadata": {"name": "ba-1"}, "spec": deployment["spec"]["template"]["spec"]}
    heartbeat = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    b_to_a["status"] = {
        "workers": {
            "ba-1": {"phase": "Running", "heartbeatTime": heartbeat, "sourceClusterId": B, "targetClusterId": A}
        }
    }
    outcome = decide(PLUGIN, b_to_a, Observed(peers=[a_to_b, b_to_a], pods=[pod]), OperatorSettings())
    assert (outcome.status["sourceClusterId"], outcome.status["targetClusterId"]) == (B, A)
    condition = next(c for c in outcome.status["conditions"] if c["type"] == "ReplicationLoop")
    assert condition["status"] == "True" and "ns/ab" in condition["message"]


def test_an_instance_id_comes_before_the_reported_cluster_id() -> None:
    a_to_b = spelled("ab", "127.0.0.1:39092", "127.0.0.1:39093", {"sourceClusterId": A, "targetClusterId": B})
    a_to_b["spec"]["source"]["instanceId"], a_to_b["spec"]["target"]["instanceId"] = "a", "b"
    b_to_a = spelled("ba", "localhost:39093", "localhost:39092", {"sourceClusterId": B, "targetClusterId": A})
    assert loop_condition(b_to_a, [a_to_b, b_to_a])["status"] == "False"  # "a" and A are named apart
    b_to_a["spec"]["source"]["instanceId"], b_to_a["spec"]["target"]["instanceId"] = "b", "a"
    assert "b -> a -> b" in loop_condition(b_to_a, [a_to_b, b_to_a])["message"]
