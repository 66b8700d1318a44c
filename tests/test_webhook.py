"""The validating admission webhook: `review` decided without Kopf (test_webhook_live.py has it called by a real
kube-apiserver through the chart's ValidatingWebhookConfiguration)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from ferry import webhook
from ferry.control.reconcile import ACCEPTED_SPEC_ANNOTATION
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.registry import PLUGINS
from ferry.settings import OperatorSettings
from ferry.topicsync.worker import PLUGIN as TOPIC_SYNC
from ferry.webhook import ALLOW_LOOP_ANNOTATION, review
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

Peers = Callable[[], list[dict[str, Any]]]


def obsdump(
    name: str = "dump",
    namespace: str = "team-a",
    created: str = "2026-11-21T10:00:00Z",
    bootstrap: str = "kafka:9092",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "creationTimestamp": created,
            "annotations": {},
        },
        "spec": {
            "source": {"bootstrapServers": bootstrap},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
            **spec,
        },
    }


def sync(name: str, source: str, target: str, topics: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "creationTimestamp": "2026-11-21T10:00:00Z",
        },
        "spec": {
            "source": {"bootstrapServers": f"{source}:9092", "instanceId": source},
            "target": {"bootstrapServers": f"{target}:9092", "instanceId": target},
            "topics": topics or ["orders"],
            **spec,
        },
    }


def peers_of(*bodies: dict[str, Any]) -> Peers:
    return lambda: [copy.deepcopy(b) for b in bodies]


def no_peers_needed() -> list[dict[str, Any]]:
    raise AssertionError("peers were listed for a request that does not need them")


def filled(count: int, bootstrap: str = "kafka:9092") -> list[dict[str, Any]]:
    return [obsdump(f"t{i:02d}", created=f"2026-11-21T10:{i:02d}:00Z", bootstrap=bootstrap) for i in range(count)]


def accepted(body: dict[str, Any]) -> dict[str, Any]:
    """The task as the operator leaves it: its spec at creation recorded (without the mutable state)."""
    stored = copy.deepcopy(body)
    spec = {k: v for k, v in body["spec"].items() if k != "state"}
    stored["metadata"]["annotations"][ACCEPTED_SPEC_ANNOTATION] = json.dumps(spec, sort_keys=True)
    return stored


# ---------------------------------------------------------------------------------------------
# Valid manifests


def test_valid_creates_are_admitted() -> None:
    assert review(OBS_DUMP, "CREATE", obsdump(), None, peers_of()) is None
    assert review(TOPIC_SYNC, "CREATE", sync("ab", "a", "b"), None, peers_of()) is None


def test_deletes_are_admitted_without_looking_at_anything() -> None:
    broken = obsdump(topicRegex="x.*")
    assert review(OBS_DUMP, "DELETE", None, broken, no_peers_needed) is None


# ---------------------------------------------------------------------------------------------
# 1. What the models reject


@pytest.mark.parametrize("plugin", list(PLUGINS.values()), ids=list(PLUGINS))
def test_every_kind_refuses_a_manifest_its_model_rejects(plugin: Any) -> None:
    body = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": plugin.definition.kind,
        "metadata": {"name": "empty", "namespace": "ns", "annotations": {}},
        "spec": {},
    }
    message = review(plugin, "CREATE", body, None, peers_of())
    assert message is not None and message.startswith(f"invalid {plugin.definition.kind}: spec.")
    assert "Field required" in message


def test_cross_field_rules_say_what_to_change() -> None:
    both = review(OBS_DUMP, "CREATE", obsdump(topicRegex="orders-.*"), None, peers_of())
    assert both is not None and "set exactly one of topics and topicRegex" in both
    regex = obsdump(topicRegex="orders-([")
    del regex["spec"]["topics"]
    bad = review(OBS_DUMP, "CREATE", regex, None, peers_of())
    assert bad is not None and "not a valid regular expression" in bad
    onto_itself = review(TOPIC_SYNC, "CREATE", sync("aa", "a", "a"), None, peers_of())
    assert onto_itself is not None and "'{source}.{topic}'" in onto_itself


def test_a_refusal_never_echoes_the_rejected_values() -> None:
    leaky = obsdump()
    leaky["spec"]["target"]["credentialsSecretRef"] = "AKIA-not-a-reference-s3cr3t"
    message = review(OBS_DUMP, "CREATE", leaky, None, peers_of())
    assert message is not None and "spec.target.credentialsSecretRef" in message
    assert "s3cr3t" not in message


# ---------------------------------------------------------------------------------------------
# 2. Immutable specs


def test_changing_an_obsdumptask_spec_other_than_state_is_refused() -> None:
    old = accepted(obsdump())
    new = copy.deepcopy(old)
    new["spec"]["target"]["bucket"] = "elsewhere"
    new["spec"]["topics"] = ["orders", "payments"]
    message = review(OBS_DUMP, "UPDATE", new, old, no_peers_needed)
    assert message is not None
    assert message.startswith("spec.target, spec.topics changed after creation, but only spec.state may change")
    assert "revert the change, or create a new ObsDumpTask" in message


def test_a_state_only_update_is_admitted_and_needs_no_peers() -> None:
    old = accepted(obsdump())
    paused = copy.deepcopy(old)
    paused["spec"]["state"] = "Paused"
    assert review(OBS_DUMP, "UPDATE", paused, old, no_peers_needed) is None


def test_before_the_operator_records_the_spec_the_stored_one_is_the_reference() -> None:
    old = obsdump()  # no accepted-spec annotation yet
    new = copy.deepcopy(old)
    new["spec"]["source"]["bootstrapServers"] = "other:9092"
    message = review(OBS_DUMP, "UPDATE", new, old, no_peers_needed)
    assert message is not None and message.startswith("spec.source changed after creation")


def test_a_mangled_accepted_spec_annotation_falls_back_to_the_stored_spec() -> None:
    old = obsdump()
    old["metadata"]["annotations"][ACCEPTED_SPEC_ANNOTATION] = "{not json"
    new = copy.deepcopy(old)
    new["spec"]["topics"] = ["payments"]
    message = review(OBS_DUMP, "UPDATE", new, old, no_peers_needed)
    assert message is not None and message.startswith("spec.topics changed after creation")
    new = copy.deepcopy(old)
    new["spec"]["state"] = "Paused"
    assert review(OBS_DUMP, "UPDATE", new, old, no_peers_needed) is None


def test_editing_the_accepted_spec_annotation_along_with_the_spec_does_not_get_a_change_through() -> None:
    old = accepted(obsdump())
    new = accepted(obsdump(topics=["payments"]))  # the request's own annotation agrees with its new spec
    message = review(OBS_DUMP, "UPDATE", new, old, no_peers_needed)
    assert message is not None and message.startswith("spec.topics changed after creation")


def test_a_task_changed_before_the_webhook_may_be_reverted_and_finalized() -> None:
    drifted = accepted(obsdump())
    drifted["spec"]["target"]["bucket"] = "changed-before-the-webhook"
    # The operator's own writes (finalizers, annotations) leave the spec alone: always admitted.
    released = copy.deepcopy(drifted)
    released["metadata"]["finalizers"] = []
    released["metadata"]["annotations"]["ferry.dev/last-handled-configuration"] = "{}"
    assert review(OBS_DUMP, "UPDATE", released, drifted, no_peers_needed) is None
    # Back to the accepted spec: a repair, admitted; anything else still refused.
    reverted = copy.deepcopy(drifted)
    reverted["spec"]["target"]["bucket"] = "dumps"
    assert review(OBS_DUMP, "UPDATE", reverted, drifted, no_peers_needed) is None
    again = copy.deepcopy(drifted)
    again["spec"]["target"]["bucket"] = "a-third-bucket"
    message = review(OBS_DUMP, "UPDATE", again, drifted, no_peers_needed)
    assert message is not None and message.startswith("spec.target changed after creation")


def test_a_kind_without_mutable_fields_may_change_its_spec() -> None:
    old = sync("ab", "a", "b", ["orders"])
    new = sync("ab", "a", "b", ["orders", "payments"], startFrom="earliest")
    assert review(TOPIC_SYNC, "UPDATE", new, old, peers_of(old)) is None


def test_an_invalid_spec_change_is_refused_by_the_model() -> None:
    old = sync("ab", "a", "b", ["orders"])
    new = sync("ab", "a", "b", ["orders"], topicPattern="orders.*")
    message = review(TOPIC_SYNC, "UPDATE", new, old, peers_of(old))
    assert message is not None and "set exactly one of topics and topicPattern" in message


# ---------------------------------------------------------------------------------------------
# 3. Per-instance limit


def test_the_eighteenth_obsdumptask_on_an_instance_is_admitted() -> None:
    assert (
        review(OBS_DUMP, "CREATE", obsdump("new", created="2026-11-21T11:00:00Z"), None, peers_of(*filled(17))) is None
    )


def test_the_nineteenth_obsdumptask_on_an_instance_is_refused_naming_the_instance_and_the_limit() -> None:
    message = review(OBS_DUMP, "CREATE", obsdump("new", created="2026-11-21T11:00:00Z"), None, peers_of(*filled(18)))
    assert message == (
        "Kafka instance kafka:9092 already has 18 ObsDumpTasks, the most allowed (the earliest created keep "
        "their slots): delete one of them first, then create this ObsDumpTask again"
    )


def test_the_limit_counts_only_live_tasks_on_the_same_instance() -> None:
    others = filled(18, bootstrap="other:9092")
    assert review(OBS_DUMP, "CREATE", obsdump("new"), None, peers_of(*others)) is None
    leaving = filled(18)
    leaving[5]["metadata"]["deletionTimestamp"] = "2026-11-21T10:30:00Z"
    assert review(OBS_DUMP, "CREATE", obsdump("new", created="2026-11-21T11:00:00Z"), None, peers_of(*leaving)) is None


def test_a_create_without_creation_time_is_ranked_now_not_first() -> None:
    new = obsdump("a-first-by-name")
    del new["metadata"]["creationTimestamp"]
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert review(OBS_DUMP, "CREATE", new, None, peers_of(*filled(18)), now=now) is not None


def test_the_limit_is_checked_on_create_only() -> None:
    everyone = filled(19)
    old = accepted(everyone[18])
    paused = copy.deepcopy(old)
    paused["spec"]["state"] = "Paused"
    assert review(OBS_DUMP, "UPDATE", paused, old, peers_of(*everyone)) is None


# ---------------------------------------------------------------------------------------------
# 4. Replication loops


def test_a_topicsync_closing_a_loop_with_identity_naming_is_refused_with_both_fixes() -> None:
    message = review(TOPIC_SYNC, "CREATE", sync("ba", "b", "a"), None, peers_of(sync("ab", "a", "b")))
    assert message is not None
    assert "TopicSyncs ns/ba, ns/ab replicate the same topics around b -> a -> b with identity naming" in message
    assert "set spec.targetTopicName" in message and "'{source}.{topic}'" in message
    assert f'annotate this TopicSync with {ALLOW_LOOP_ANNOTATION}: "true"' in message


def test_a_loop_with_the_opt_in_annotation_is_admitted() -> None:
    looping = sync("ba", "b", "a")
    looping["metadata"]["annotations"] = {ALLOW_LOOP_ANNOTATION: "true"}
    # The peers are still listed with identity naming: the annotation does not allow a copy onto itself.
    assert review(TOPIC_SYNC, "CREATE", looping, None, peers_of(sync("ab", "a", "b"))) is None
    looping["metadata"]["annotations"] = {ALLOW_LOOP_ANNOTATION: "yes please"}
    assert review(TOPIC_SYNC, "CREATE", looping, None, peers_of(sync("ab", "a", "b"))) is not None


def test_a_cycle_with_renaming_is_admitted() -> None:
    renamed = sync("ba", "b", "a", targetTopicName="{source}.{topic}")
    assert review(TOPIC_SYNC, "CREATE", renamed, None, peers_of(sync("ab", "a", "b"))) is None


def test_an_update_that_closes_a_loop_is_refused_against_the_new_spec() -> None:
    a_to_b = sync("ab", "a", "b")
    stored = sync("ba", "b", "a", targetTopicName="{source}.{topic}")
    identity = sync("ba", "b", "a")
    message = review(TOPIC_SYNC, "UPDATE", identity, stored, peers_of(a_to_b, stored))
    assert message is not None and "b -> a -> b" in message
    # The stored version of the task itself is not one of the syncs it could loop with.
    assert review(TOPIC_SYNC, "UPDATE", stored, identity, peers_of(a_to_b, identity)) is None


def test_a_three_instance_cycle_is_refused() -> None:
    peers = peers_of(sync("ab", "a", "b"), sync("bc", "b", "c"))
    message = review(TOPIC_SYNC, "CREATE", sync("ca", "c", "a"), None, peers)
    assert message is not None and "c -> a -> b -> c" in message


# ---------------------------------------------------------------------------------------------
# 5. One cluster, two spellings: the cluster ids the workers reported

EU, DR = "EUqOEYBSD34fcwNTJENDM2Qk", "DRqOEYBSD34fcwNTJENDM2Qk"


def spelled(name: str, source: str, target: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A TopicSync naming its clusters by bootstrap list only (no instanceId)."""
    body = sync(name, "x", "y", **spec)
    body["spec"]["source"] = {"bootstrapServers": source}
    body["spec"]["target"] = {"bootstrapServers": target}
    body["status"] = status or {}
    return body


def reporting_syncs() -> list[dict[str, Any]]:
    """eu -> dr and dr -> eu (renamed), whose workers reported both clusters, each spelled two ways."""
    return [
        spelled("eu-to-dr", "kafka-eu:9092", "kafka-dr:9092", {"sourceClusterId": EU, "targetClusterId": DR}),
        spelled(
            "dr-to-eu",
            "kafka-dr:9092",
            "kafka-eu.kafka.svc:9092",
            {"sourceClusterId": DR, "targetClusterId": EU},
            targetTopicName="{source}.{topic}",
        ),
    ]


def test_an_obsdumptask_sharing_a_host_port_with_a_reported_cluster_is_counted_under_its_id() -> None:
    holders = filled(18, bootstrap="kafka-0:9092,kafka-1:9092")
    holders[0]["status"] = {"sourceClusterId": EU}
    new = obsdump("new", created="2026-11-21T11:00:00Z", bootstrap="kafka-1:9092")
    new["status"] = {"sourceClusterId": "sent-along-with-the-request"}  # the status is not the request's to set
    message = review(OBS_DUMP, "CREATE", new, None, peers_of(*holders))
    assert message == (
        f"Kafka instance kafka-1:9092 (cluster id {EU}) already has 18 ObsDumpTasks, the most allowed (the "
        "earliest created keep their slots): delete one of them first, then create this ObsDumpTask again"
    )
    # A spelling no worker has reached cannot be known here: admitted (the operator counts it under the
    # cluster id once its own workers have reported, and then marks it Failed).
    unknown = obsdump("new", created="2026-11-21T11:00:00Z", bootstrap="localhost:9092")
    assert review(OBS_DUMP, "CREATE", unknown, None, peers_of(*holders)) is None


def test_a_topicsync_onto_its_own_cluster_spelled_another_way_is_refused_naming_both_spellings() -> None:
    onto_itself = spelled("mirror", "kafka-eu:9092", "kafka-eu.kafka.svc:9092")
    message = review(TOPIC_SYNC, "CREATE", onto_itself, None, peers_of(*reporting_syncs()))
    assert message == (
        "spec.source.bootstrapServers kafka-eu:9092 and spec.target.bootstrapServers kafka-eu.kafka.svc:9092 are "
        f"the same Kafka cluster (cluster id {EU}, as reported by the workers of ns/dr-to-eu and ns/eu-to-dr), "
        "and targetTopicName is the identity: records would be copied onto themselves; use a targetTopicName "
        "such as '{source}.{topic}'"
    )
    renamed = spelled("mirror", "kafka-eu:9092", "kafka-eu.kafka.svc:9092", targetTopicName="backup.{topic}")
    assert review(TOPIC_SYNC, "CREATE", renamed, None, peers_of(*reporting_syncs())) is None
    # A spelling no worker has reached: admitted here, refused by the worker (CopyOntoItself).
    unknown = spelled("mirror", "kafka-eu:9092", "10.0.0.7:9092")
    assert review(TOPIC_SYNC, "CREATE", unknown, None, peers_of(*reporting_syncs())) is None
    # instanceIds do not make two clusters of one.
    named = copy.deepcopy(onto_itself)
    named["spec"]["source"]["instanceId"], named["spec"]["target"]["instanceId"] = "eu", "eu-again"
    assert review(TOPIC_SYNC, "CREATE", named, None, peers_of(*reporting_syncs())) is not None


def test_an_update_is_checked_with_the_ids_of_the_sides_that_did_not_move() -> None:
    stored = spelled("s", "kafka-x:9092", "kafka-dr:9092", {"sourceClusterId": "X", "targetClusterId": DR})
    # The source moves to brokers known (by a shared host:port) as the target's cluster.
    onto_dr = copy.deepcopy(stored)
    onto_dr["spec"]["source"]["bootstrapServers"] = "kafka-dr-0:9092,kafka-dr:9092"
    message = review(TOPIC_SYNC, "UPDATE", onto_dr, stored, peers_of(*reporting_syncs(), stored))
    assert message is not None and f"the same Kafka cluster (cluster id {DR}" in message
    # A copy within one cluster, renamed; moving its source elsewhere with identity naming is fine: the old
    # source's id (the same cluster as the target) no longer holds.
    within = spelled(
        "w",
        "kafka-y:9092",
        "kafka-y-1:9092",
        {"sourceClusterId": "Y", "targetClusterId": "Y"},
        targetTopicName="{source}.{topic}",
    )
    moved = copy.deepcopy(within)
    moved["spec"]["source"]["bootstrapServers"] = "kafka-z:9092"
    moved["spec"]["targetTopicName"] = "{topic}"
    assert review(TOPIC_SYNC, "UPDATE", moved, within, peers_of(within)) is None


def test_a_loop_through_two_spellings_is_refused_once_both_clusters_are_known() -> None:
    eu_to_dr = reporting_syncs()[0]
    back = spelled("dr-to-eu-2", "kafka-dr:9092", "kafka-eu:9092,kafka-eu-1:9092")
    message = review(TOPIC_SYNC, "CREATE", back, None, peers_of(eu_to_dr))
    assert message is not None
    assert f"kafka-dr:9092 (cluster id {DR}) -> kafka-eu-1:9092,kafka-eu:9092 (cluster id {EU})" in message


# ---------------------------------------------------------------------------------------------
# 6. Task names: unique per namespace and kind


def test_a_task_name_in_use_in_the_namespace_is_refused_naming_the_task_that_has_it() -> None:
    holder = obsdump("first", taskName="orders_dump")
    message = review(OBS_DUMP, "CREATE", obsdump("second", taskName="orders_dump"), None, peers_of(holder))
    assert message == (
        "ObsDumpTask first in this namespace already has taskName orders_dump (task names are unique per "
        "namespace and kind): give this ObsDumpTask another spec.taskName, or delete first first"
    )
    # Whichever was created first: an earlier creation time (or a name first by the tie-break) takes nothing.
    early = obsdump("a-second", created="2026-11-21T09:00:00Z", taskName="orders_dump")
    assert review(OBS_DUMP, "CREATE", early, None, peers_of(holder)) is not None


def test_a_task_name_is_free_in_other_namespaces_once_its_holder_is_deleted_and_for_unnamed_tasks() -> None:
    elsewhere = obsdump("first", namespace="team-b", taskName="orders_dump")
    assert review(OBS_DUMP, "CREATE", obsdump("second", taskName="orders_dump"), None, peers_of(elsewhere)) is None
    leaving = obsdump("first", taskName="orders_dump")
    leaving["metadata"]["deletionTimestamp"] = "2026-11-21T10:30:00Z"
    assert review(OBS_DUMP, "CREATE", obsdump("second", taskName="orders_dump"), None, peers_of(leaving)) is None
    unnamed = obsdump("second")
    assert review(OBS_DUMP, "CREATE", unnamed, None, peers_of(obsdump("first"), obsdump("orders_dump"))) is None


def test_renaming_onto_a_name_in_use_is_refused_and_other_updates_of_a_duplicate_are_admitted() -> None:
    holder = sync("ab", "a", "b", taskName="orders_sync")
    stored = sync("cd", "c", "d", taskName="other_sync")
    renamed = sync("cd", "c", "d", taskName="orders_sync")
    message = review(TOPIC_SYNC, "UPDATE", renamed, stored, peers_of(holder, stored))
    assert message is not None and message.startswith("TopicSync ab in this namespace already has taskName orders")
    # A duplicate that predates the webhook may still be paused, edited otherwise, or renamed away.
    duplicate = sync("cd", "c", "d", taskName="orders_sync")
    paused = sync("cd", "c", "d", taskName="orders_sync", state="Paused")
    assert review(TOPIC_SYNC, "UPDATE", paused, duplicate, peers_of(holder, duplicate)) is None
    assert review(TOPIC_SYNC, "UPDATE", stored, duplicate, peers_of(holder, duplicate)) is None
    # The task's own stored version does not hold the name against it.
    assert review(TOPIC_SYNC, "UPDATE", renamed, stored, peers_of(stored)) is None


def test_a_bad_task_name_is_refused_in_the_words_of_the_rule() -> None:
    message = review(OBS_DUMP, "CREATE", obsdump(taskName="orders.dump"), None, no_peers_needed)
    assert message == (
        "invalid ObsDumpTask: spec.taskName: Value error, taskName must be 4-64 characters of letters, digits, "
        "'-' and '_'"
    )


# ---------------------------------------------------------------------------------------------
# Kopf wiring, in process


def test_handlers_are_registered_at_validate_plural_for_every_kind() -> None:
    registry = kopf.OperatorRegistry()
    webhook.register(OperatorSettings(webhook_port=9443), registry)
    handlers = registry._webhooks.get_all_handlers()
    assert sorted(h.id for h in handlers) == sorted(f"validate-{p.definition.plural}" for p in PLUGINS.values())
    assert {"validate-obsdumptasks", "validate-topicsyncs"} <= {h.id for h in handlers}
    assert all(h.reason == "validating" and h.subresource is None for h in handlers)


def test_the_webhook_is_off_by_default() -> None:
    assert OperatorSettings().webhook_port == 0
    assert OperatorSettings.from_env({"FERRY_OPERATOR_WEBHOOK_PORT": "9443"}).webhook_port == 9443
    cert_dir = OperatorSettings.from_env({"FERRY_OPERATOR_WEBHOOK_CERT_DIR": "/certs"}).webhook_cert_dir
    assert cert_dir == "/certs" and OperatorSettings().webhook_cert_dir == "/etc/ferry/webhook"


def test_missing_certificate_files_fail_the_startup_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("")
    settings = OperatorSettings(webhook_port=9443, webhook_cert_dir=str(tmp_path))
    with pytest.raises(kopf.PermanentError) as err:
        webhook.webhook_server(settings)
    assert "tls.key is missing in" in str(err.value) and "tls.crt" not in str(err.value)
    assert "FERRY_OPERATOR_WEBHOOK_PORT=0" in str(err.value)
    (tmp_path / "tls.key").write_text("")
    server = webhook.webhook_server(settings)
    assert (server.port, server.addr, server.path) == (9443, None, None)
    assert server.certfile == str(tmp_path / "tls.crt") and server.pkeyfile == str(tmp_path / "tls.key")


@pytest.mark.parametrize(
    ("failure", "why"),
    [
        (ApiException(status=403, reason="Forbidden"), "the API answered 403 Forbidden"),
        (MaxRetryError(None, "/apis"), "the API is unreachable (MaxRetryError)"),  # type: ignore[arg-type]
    ],
)
def test_peers_that_cannot_be_listed_refuse_the_request_saying_to_retry(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, why: str
) -> None:
    class Failing:
        def list_cluster_custom_object(self, *_: Any) -> dict[str, Any]:
            raise failure

    monkeypatch.setattr(client, "CustomObjectsApi", Failing)
    with pytest.raises(kopf.AdmissionError) as err:
        webhook._list_peers(OBS_DUMP)
    assert err.value.code == 503
    assert f"could not list the obsdumptasks it checks this request against ({why}): try again" in str(err.value)
    assert "RBAC" in str(err.value)


def test_refusals_are_logged_as_info_not_as_operator_errors() -> None:
    import logging

    from ferry.webhook import RefusalsAreNotErrors

    refusal = logging.LogRecord(
        "kopf.objects",
        logging.ERROR,
        __file__,
        1,
        "Webhook 'validate-obsdumptasks' failed permanently: %s",
        ("no",),
        None,
    )
    other = logging.LogRecord("kopf.objects", logging.ERROR, __file__, 1, "Handler 'reconcile' failed: boom", (), None)
    assert RefusalsAreNotErrors().filter(refusal) and RefusalsAreNotErrors().filter(other)
    assert (refusal.levelname, refusal.getMessage()) == ("INFO", "admission refused by 'validate-obsdumptasks': no")
    assert (other.levelname, other.getMessage()) == ("ERROR", "Handler 'reconcile' failed: boom")
