"""Target topics kept like their source topics while a TopicSync runs (issue 11): changed configs follow, excluded
ones do not, a config back to its default is reset only where Ferry had set it, and what Ferry cannot change (a
config the target refuses, a target with more partitions) is reported, while copying goes on. Real brokers, and
the operator's side (status, condition and Events) as a pure function."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)
from ferry.control.reconcile import Observed, Outcome, decide, rfc3339
from ferry.settings import OperatorSettings
from ferry.tasks import Task
from ferry.topicsync.attributes import account_changes, topics_in_sync
from ferry.topicsync.model import TOPIC_SYNC, TopicSyncSpec
from ferry.topicsync.worker import PLUGIN

from tests.conftest import TopicFactory
from tests.support.copies import produce_on, read_all
from tests.support.dumps import Recorder, wait_for
from tests.support.kafka import KafkaCluster
from tests.test_topicsync_worker import sync_spec, syncing


def configs_of(broker: KafkaCluster, topic: str) -> dict[str, ConfigEntry]:
    admin = broker.admin()
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(15)  # type: ignore[no-any-return]


def on_topic(broker: KafkaCluster, topic: str) -> dict[str, str]:
    """The configs set on the topic itself (not inherited from the broker or the defaults)."""
    return {
        name: entry.value
        for name, entry in configs_of(broker, topic).items()
        if entry.source in (ConfigSource.DYNAMIC_TOPIC_CONFIG, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    }


def alter(broker: KafkaCluster, kind: ResourceType, name: str, **values: str | None) -> None:
    """Set (or, for None, delete) configs; keyword names use _ for ."""
    entries = [
        ConfigEntry(
            key.replace("_", "."),
            value,
            incremental_operation=AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE,
        )
        for key, value in values.items()
    ]
    resource = ConfigResource(kind, name, incremental_configs=entries)
    admin = broker.admin()  # must outlive the future: a collected client cancels it
    admin.incremental_alter_configs([resource])[resource].result(15)


def changes(recorder: Recorder) -> list[tuple[str, str | None, str | None]]:
    """(config or partitions, before, after) of each change the worker reported last, oldest first."""
    made = recorder.last.extra.get("topicChanges") or [] if recorder.reports else []
    return [(c["attribute"], c.get("before"), c.get("after")) for c in made]


def state_of(recorder: Recorder) -> dict[str, Any]:
    [state] = recorder.last.extra["topics"]
    return state  # type: ignore[no-any-return]


def condition_from(spec: dict[str, Any], report: dict[str, Any]) -> tuple[bool | None, str, str]:
    """TargetTopicsInSync as the operator judges it from a worker's report."""
    task = Task(TOPIC_SYNC, "sync", "ns", TopicSyncSpec.model_validate(spec))
    [condition] = topics_in_sync(task, {"topics": report["topics"], "topicCount": report["topicCount"]})
    return condition.active, condition.reason, condition.message


# -- real brokers ----------------------------------------------------------------------------------------


def test_changed_source_configs_follow_within_a_refresh_and_excluded_ones_do_not(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1, config={"retention.ms": "3600000"})
    spec = sync_spec(kafka, kafka2, topics=[topic], excludedTopicConfigs=["segment.*"])
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.extra["topics"], timeout=60, what="target created")
        assert on_topic(kafka2, topic) == {"retention.ms": "3600000"}  # created with it; not a change
        assert changes(recorder) == []
        alter(
            kafka,
            ResourceType.TOPIC,
            topic,
            retention_ms="7200000",
            cleanup_policy="compact",
            max_message_bytes="2000000",
            segment_ms="3600000",  # excluded by the spec
            min_insync_replicas="2",  # excluded always
        )
        wanted = {"retention.ms": "7200000", "cleanup.policy": "compact", "max.message.bytes": "2000000"}
        wait_for(lambda: on_topic(kafka2, topic) == wanted, timeout=30, what="the configs followed")
        wait_for(lambda: len(changes(recorder)) == 3, timeout=10, what="the changes reported")
        assert sorted(changes(recorder)) == [
            ("cleanup.policy", "delete", "compact"),
            ("max.message.bytes", "1048588", "2000000"),
            ("retention.ms", "3600000", "7200000"),
        ]
        [change] = [c for c in recorder.last.extra["topicChanges"] if c["attribute"] == "retention.ms"]
        assert change["topic"] == change["target"] == topic
        assert "outOfSync" not in state_of(recorder)
        active, reason, _ = condition_from(spec, recorder.last.extra)
        assert (active, reason) == (True, "TargetTopicsMatch")
    target = configs_of(kafka2, topic)
    assert target["segment.ms"].is_default
    assert target["min.insync.replicas"].value == "1"  # the target's own (its brokers'), not the source's 2


def test_a_config_back_to_default_on_the_source_is_reset_where_ferry_had_set_it(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """Ferry resets on the target what it had set there; the target topic's own settings are left alone."""
    topic = topic_factory(partitions=1, config={"retention.ms": "3600000", "max.message.bytes": "2000000"})
    topic_factory(partitions=1, broker=kafka2, name=topic, config={"retention.bytes": "50000000"})
    with syncing(sync_spec(kafka, kafka2, topics=[topic])) as recorder:
        wanted = {"retention.ms": "3600000", "max.message.bytes": "2000000", "retention.bytes": "50000000"}
        wait_for(lambda: on_topic(kafka2, topic) == wanted, timeout=60, what="the configs set on the target")
        wait_for(lambda: len(changes(recorder)) == 2, timeout=10, what="two changes reported")
        alter(kafka, ResourceType.TOPIC, topic, retention_ms=None)  # back to the default on the source
        left = {"max.message.bytes": "2000000", "retention.bytes": "50000000"}
        wait_for(lambda: on_topic(kafka2, topic) == left, timeout=30, what="retention.ms reset on the target")
        wait_for(lambda: len(changes(recorder)) == 3, timeout=10, what="the reset reported")
        assert changes(recorder)[-1] == ("retention.ms", "3600000", None)
    assert configs_of(kafka2, topic)["retention.ms"].value == "604800000"  # the target's default


def test_a_config_the_target_refuses_is_a_condition_and_everything_else_is_copied(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """The target broker caps max.compaction.lag.ms at 60 s, so a source topic's min.compaction.lag.ms of 120 s
    (fine on the source) is refused there: at creation (the topic is created with the target's defaults, then its
    configs are set one by one) and when the source changes it later."""
    broker = str(next(iter(kafka2.admin().list_topics(timeout=10).brokers)))  # its node id
    created = topic_factory(partitions=2, config={"min.compaction.lag.ms": "120000", "max.message.bytes": "2000000"})
    changed = topic_factory(partitions=1, prefix=f"later{uuid.uuid4().hex[:4]}")
    spec = sync_spec(kafka, kafka2, topics=[created, changed])
    alter(kafka2, ResourceType.BROKER, broker, log_cleaner_max_compaction_lag_ms="60000")
    try:
        with syncing(spec) as recorder:
            wait_for(lambda: recorder.reports and len(recorder.last.extra["topics"]) == 2, timeout=60, what="topics")
            alter(kafka, ResourceType.TOPIC, changed, min_compaction_lag_ms="120000", max_message_bytes="3000000")
            produce_on(kafka.bootstrap, created, 20, 2, "r")
            produce_on(kafka.bootstrap, changed, 10, 1, "c")

            def refused() -> dict[str, list[dict[str, Any]]]:
                return {t["source"]: t.get("outOfSync") or [] for t in recorder.last.extra["topics"]}

            wait_for(lambda: all(refused().values()), timeout=30, what="both refusals reported")
            wait_for(lambda: recorder.last.totals.records == 30, timeout=60, what="every record copied")
            for topic in (created, changed):
                [mismatch] = refused()[topic]
                assert mismatch["reason"] == "TargetConfigRefused"
                assert "refused min.compaction.lag.ms=120000" in mismatch["message"]
                assert "max.compaction.lag.ms (60000)" in mismatch["message"]  # the broker's own words
            assert on_topic(kafka2, created) == {"max.message.bytes": "2000000"}  # the rest followed
            assert on_topic(kafka2, changed) == {"max.message.bytes": "3000000"}
            assert ("max.message.bytes", "1048588", "3000000") in changes(recorder)
            assert recorder.last.error is None
            active, reason, message = condition_from(spec, recorder.last.extra)
    finally:
        alter(kafka2, ResourceType.BROKER, broker, log_cleaner_max_compaction_lag_ms=None)
    assert (active, reason) == (False, "TargetConfigRefused")
    assert f"{created}: the target refused min.compaction.lag.ms=120000" in message and changed in message
    assert "spec.excludedTopicConfigs" in message
    assert len(read_all(kafka2.bootstrap, created, 20)) == 20


def test_a_target_with_more_partitions_is_a_condition_and_every_source_partition_is_copied(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    topic_factory(partitions=4, broker=kafka2, name=topic)
    produce_on(kafka.bootstrap, topic, 20, 2, "m")
    spec = sync_spec(kafka, kafka2, topics=[topic])
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 20, timeout=60, what="20 copied")
        state = state_of(recorder)
    assert (state["partitions"], state["targetPartitions"]) == (2, 4)
    [mismatch] = state["outOfSync"]
    assert mismatch["reason"] == "TargetHasMorePartitions"
    assert "target partitions 2-3 get nothing from this sync" in mismatch["message"]
    active, reason, message = condition_from(spec, {"topics": [state], "topicCount": 1})
    assert (active, reason) == (False, "TargetHasMorePartitions")
    assert "Kafka cannot remove partitions" in message and "every source partition is still copied" in message
    copied = read_all(kafka2.bootstrap, topic, 20, timeout=20, linger=1)
    assert sorted((m.partition(), m.value()) for m in copied) == sorted((i % 2, f"m-v{i}".encode()) for i in range(20))


# -- the operator's side -------------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def body(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": "sync", "namespace": "ns", "uid": "uid-sync", "generation": 1, "annotations": {}},
        "spec": {
            "source": {"bootstrapServers": "a:9092", "instanceId": "a"},
            "target": {"bootstrapServers": "b:9092", "instanceId": "b"},
            "topics": ["orders"],
        },
        "status": status,
    }


def change(attribute: str, before: str | None, after: str | None, seconds_ago: float) -> dict[str, Any]:
    time = rfc3339(NOW - timedelta(seconds=seconds_ago))
    return {
        "time": time,
        "topic": "orders",
        "target": "orders",
        "attribute": attribute,
        "before": before,
        "after": after,
    }


def worker(*made: dict[str, Any], out_of_sync: list[dict[str, str]] | None = None) -> dict[str, Any]:
    topic: dict[str, Any] = {"source": "orders", "target": "orders", "partitions": 3, "targetPartitions": 3}
    if out_of_sync:
        topic["outOfSync"] = out_of_sync
    return {
        "phase": "Running",
        "heartbeatTime": rfc3339(NOW - timedelta(seconds=2)),
        "epoch": 0,
        "topics": [{**topic, "replicationFactor": 1}],
        "topicCount": 1,
        "topicChanges": list(made),
    }


def run(status: dict[str, Any]) -> Outcome:
    return decide(PLUGIN, body(status), Observed(now=NOW), OperatorSettings(heartbeat_timeout=60))


def events(outcome: Outcome, reason: str) -> list[tuple[str, str]]:
    return [(e.type, e.message) for e in outcome.events if e.reason == reason]


def in_sync(outcome: Outcome) -> dict[str, Any]:
    [condition] = [c for c in outcome.status["conditions"] if c["type"] == "TargetTopicsInSync"]
    return condition  # type: ignore[no-any-return]


def test_changes_are_added_to_the_status_and_announced_once() -> None:
    made = [change("retention.ms", "3600000", "7200000", 20), change("partitions", "3", "6", 10)]
    first = run({"workers": {"w-1": worker(*made)}})
    assert [(c["attribute"], c["after"]) for c in first.status["topicChanges"]] == [
        ("retention.ms", "7200000"),
        ("partitions", "6"),
    ]
    [(kind, message)] = events(first, "TargetTopicUpdated")
    assert kind == "Normal"
    assert "orders: retention.ms 3600000 -> 7200000; orders: partitions 3 -> 6" in message
    # Reported again, and by a second worker that made the same change moments later: nothing new.
    status = {**first.status, "conditions": first.status["conditions"]}
    again = run({**status, "workers": {"w-1": worker(*made), "w-2": worker(change("partitions", "3", "6", 5))}})
    assert "topicChanges" not in again.status and not events(again, "TargetTopicUpdated")
    # A config back to its default: a new change.
    reset = run({**status, "workers": {"w-1": worker(*made, change("retention.ms", "7200000", None, 1))}})
    assert len(reset.status["topicChanges"]) == 3
    [(_, message)] = events(reset, "TargetTopicUpdated")
    assert message.endswith("orders: retention.ms 7200000 -> the default")


def test_the_status_keeps_the_latest_twenty_changes_and_a_stale_report_adds_nothing() -> None:
    made = [change("retention.ms", str(i), str(i + 1), 100 - i) for i in range(25)]
    patch, notices = account_changes({}, {"w-1": worker(*made)})
    assert [c["after"] for c in patch["topicChanges"]] == [str(i + 1) for i in range(5, 25)]
    [notice] = notices
    assert "; and 20 more (status.topicChanges)" in notice.message
    stale = account_changes(patch, {"w-0": worker(change("max.message.bytes", "1", "2", 99))})
    assert stale == ({}, [])


def test_the_condition_warns_when_it_turns_false_and_says_when_it_matches_again() -> None:
    refused = {"reason": "TargetConfigRefused", "message": "the target refused min.compaction.lag.ms=120000 (...)"}
    starting = run({})  # no worker has compared the topics yet
    assert (in_sync(starting)["status"], in_sync(starting)["reason"]) == ("Unknown", "TopicsNotCompared")
    status = starting.status
    bad = run({**status, "workers": {"w-1": worker(out_of_sync=[refused])}})
    assert (in_sync(bad)["status"], in_sync(bad)["reason"]) == ("False", "TargetConfigRefused")
    [(kind, message)] = events(bad, "TargetConfigRefused")
    assert kind == "Warning" and "orders: the target refused min.compaction.lag.ms=120000" in message
    status = {**status, **bad.status}
    still = run({**status, "workers": {"w-1": worker(out_of_sync=[refused])}})
    assert in_sync(still)["status"] == "False" and not events(still, "TargetConfigRefused")
    # A worker that has just started lists no topics yet: the condition stays as last known, without an Event.
    restarted = run({**status, "topics": [], "workers": {"w-2": {**worker(), "topics": []}}})
    assert in_sync(restarted) == in_sync(bad)
    assert not events(restarted, "TargetConfigRefused") and not events(restarted, "TargetTopicsMatch")
    good = run({**status, "workers": {"w-1": worker()}})
    assert (in_sync(good)["status"], in_sync(good)["reason"]) == ("True", "TargetTopicsMatch")
    [(kind, message)] = events(good, "TargetTopicsMatch")
    assert kind == "Normal" and "the 1 target topics match their source topics" in message
