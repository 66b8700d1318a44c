"""The TopicSync worker between two real Apache Kafka clusters."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from ferry.metrics import WorkerMetrics
from ferry.settings import WorkerSettings
from ferry.topicsync.groups import OFFSET_HEADER
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.pipeline import ORIGIN_HEADER, SyncPipeline

from tests.conftest import TopicFactory
from tests.support.copies import copy_while_killing, produce_on, read_all
from tests.support.dumps import Recorder, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.threads import join_or_explain


def sync_spec(source: KafkaCluster, target: KafkaCluster, **fields: Any) -> dict[str, Any]:
    """A TopicSync spec from one test broker (instance `a`) to the other (instance `b`)."""
    return {
        "source": {"bootstrapServers": source.bootstrap, "instanceId": "a"},
        "target": {"bootstrapServers": target.bootstrap, "instanceId": "b"},
        **fields,
    }


@contextmanager
def syncing(spec: dict[str, Any], group: str | None = None, **pipeline: Any) -> Iterator[Recorder]:
    """A TopicSync worker in a thread for the block; `pipeline` adds SyncPipeline arguments (epoch, resets...)."""
    parsed = TopicSyncSpec.model_validate({"startFrom": "earliest", **spec})
    recorder = Recorder()
    group = group or f"sync-{uuid.uuid4().hex[:8]}"
    pipeline = SyncPipeline(
        parsed,
        {"bootstrap.servers": spec["source"]["bootstrapServers"]},
        {"bootstrap.servers": spec["target"]["bootstrapServers"]},
        group,
        recorder,
        WorkerMetrics("TopicSync", group),
        WorkerSettings(report_interval=0.5, topic_refresh_interval=1.0, session_timeout_ms=6000),
        **pipeline,
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        join_or_explain(thread)


def test_records_keep_key_value_headers_timestamp_and_partition_in_a_created_target_topic(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    produce_on(kafka.bootstrap, topic, 300, 3, "a")
    spec = sync_spec(kafka, kafka2, topics=[topic])
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 300, timeout=60, what="300 copied")
        topics = recorder.last.extra["topics"]
    assert topics == [
        {"source": topic, "target": topic, "partitions": 3, "targetPartitions": 3, "replicationFactor": 1}
    ]
    copied = read_all(kafka2.bootstrap, topic, 300)
    assert len(copied) == 300
    for m in copied:
        i = int(m.value().decode().split("v")[1])
        assert m.key() == f"a-k{i}".encode() and m.partition() == i % 3
        assert m.timestamp()[1] == 1_700_000_000_000 + i
        assert m.headers() == [("app", f"h{i}".encode()), (ORIGIN_HEADER, b"a"), (OFFSET_HEADER, str(i // 3).encode())]


def test_prefix_naming_and_topics_created_later_are_picked_up(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    prefix = f"px{uuid.uuid4().hex[:6]}"
    first = topic_factory(partitions=1, prefix=prefix)
    produce_on(kafka.bootstrap, first, 5, 1, "f")
    spec = {
        "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "eu"},
        "target": {"bootstrapServers": kafka2.bootstrap},
        "topicPattern": f"{prefix}-.*",
        "excludePattern": f"{prefix}-skip.*",
        "targetTopicName": "{source}.{topic}",
    }
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 5, timeout=60, what="first topic")
        later = topic_factory(partitions=2, prefix=prefix)
        skipped = topic_factory(partitions=1, prefix=f"{prefix}-skip")
        produce_on(kafka.bootstrap, later, 6, 2, "l")
        produce_on(kafka.bootstrap, skipped, 3, 1, "s")
        wait_for(lambda: recorder.last.totals.records == 11, timeout=60, what="later topic copied")
        names = {t["target"] for t in recorder.last.extra["topics"]}
    assert names == {f"eu.{first}", f"eu.{later}"}
    assert len(read_all(kafka2.bootstrap, f"eu.{later}", 6)) == 6


def test_bidirectional_sync_converges_every_record_once_on_each_side(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    a = {"bootstrapServers": kafka.bootstrap, "instanceId": "a"}
    b = {"bootstrapServers": kafka2.bootstrap, "instanceId": "b"}
    with syncing({"source": a, "target": b, "topics": [topic]}) as forward:
        wait_for(lambda: forward.reports and forward.last.partitions, timeout=60, what="A->B assigned")
        # the same name on the other instance (created by the forward sync), back again
        with syncing({"source": b, "target": a, "topics": [topic]}) as backward:
            wait_for(lambda: backward.reports and backward.last.partitions, timeout=60, what="B->A assigned")
            produce_on(kafka.bootstrap, topic, 50, 2, "a")
            produce_on(kafka2.bootstrap, topic, 40, 2, "b")
            wait_for(
                lambda: forward.last.totals.records == 50 and backward.last.totals.records == 40,
                timeout=60,
                what="both directions copied",
            )
            time.sleep(3)  # nothing keeps copying
            assert (forward.last.totals.records, backward.last.totals.records) == (50, 40)
            assert forward.last.extra["loopRecordsSkipped"] == 40
            assert backward.last.extra["loopRecordsSkipped"] == 50
    for bootstrap in (kafka.bootstrap, kafka2.bootstrap):
        values = sorted(m.value() for m in read_all(bootstrap, topic, 91, timeout=10))
        expected = sorted([f"a-v{i}".encode() for i in range(50)] + [f"b-v{i}".encode() for i in range(40)])
        assert values == expected


def test_two_workers_share_the_partitions_as_one_group(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=4)
    spec = sync_spec(kafka, kafka2, topics=[topic])
    group = f"shared-{uuid.uuid4().hex[:8]}"
    with syncing(spec, group) as one, syncing(spec, group) as two:

        def split() -> bool:
            mine = {(p.topic, p.partition) for p in one.last.partitions} if one.reports else set()
            theirs = {(p.topic, p.partition) for p in two.last.partitions} if two.reports else set()
            return bool(mine) and bool(theirs) and not mine & theirs and len(mine | theirs) == 4

        wait_for(split, timeout=60, what="the partitions split between the two workers")
        produce_on(kafka.bootstrap, topic, 400, 4, "r")
        wait_for(lambda: one.last.totals.records + two.last.totals.records == 400, timeout=60, what="400 copied")
        assert one.last.totals.records > 0 and two.last.totals.records > 0
    values = sorted(m.value() for m in read_all(kafka2.bootstrap, topic, 401, timeout=8))
    assert values == sorted(f"r-v{i}".encode() for i in range(400))


def test_unreachable_source_is_reported_and_the_worker_keeps_trying(kafka2: KafkaCluster) -> None:
    from tests.support.servers import free_port

    nowhere = f"127.0.0.1:{free_port()}"
    spec = {
        "source": {"bootstrapServers": nowhere},
        "target": {"bootstrapServers": kafka2.bootstrap},
        "topics": ["orders"],
    }
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="failure")
        error = recorder.last.error
        assert error is not None and error.reason == "KafkaUnreachable" and nowhere in error.message


def test_a_missing_source_topic_is_named(kafka: KafkaCluster, kafka2: KafkaCluster) -> None:
    spec = {
        "source": {"bootstrapServers": kafka.bootstrap},
        "target": {"bootstrapServers": kafka2.bootstrap},
        "topics": ["no-such-topic"],
    }
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="failure")
        error = recorder.last.error
        assert error is not None and error.reason == "SourceTopicNotFound" and "no-such-topic" in error.message


def test_no_record_is_lost_when_the_worker_is_killed_at_random(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=3)
    manifest = tmp_path / "killed-sync.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "ferry.dev/v1alpha1",
                "kind": "TopicSync",
                "metadata": {"name": "killed"},
                "spec": sync_spec(kafka, kafka2, topics=[topic], startFrom="earliest"),
            }
        )
    )
    result = copy_while_killing(
        manifest,
        kafka.bootstrap,
        topic,
        kafka2.bootstrap,
        topic,
        total=20_000,
        kills=5,
        extra_args=("--group", "killed"),
    )
    print(result.summary("TopicSync", 5, 20_000))
    assert not result.missing, f"lost records {result.missing[:10]} (seed {result.seed})"


def test_a_target_topic_with_fewer_partitions_is_grown_and_every_partition_copied(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    topic_factory(partitions=1, broker=kafka2, name=topic)  # the target exists with 1 partition
    produce_on(kafka.bootstrap, topic, 30, 3, "g")
    with syncing(sync_spec(kafka, kafka2, topics=[topic])) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 30, timeout=60, what="30 copied")
        [state] = recorder.last.extra["topics"]
    assert state["partitions"] == 3 and state["targetPartitions"] == 3 and "note" not in state
    described = kafka2.admin().list_topics(topic, timeout=10).topics[topic]
    assert len(described.partitions) == 3
    copied = read_all(kafka2.bootstrap, topic, 30, timeout=20, linger=1)
    assert sorted((m.partition(), m.value()) for m in copied) == sorted((i % 3, f"g-v{i}".encode()) for i in range(30))


def test_when_the_source_grows_while_syncing_the_target_grows_and_new_partitions_are_copied(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    topic = topic_factory(partitions=2)
    produce_on(kafka.bootstrap, topic, 10, 2, "a")
    with syncing(sync_spec(kafka, kafka2, topics=[topic])) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 10, timeout=60, what="first 10")
        admin = kafka.admin()
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(15)
        wait_for(
            lambda: recorder.last.extra["topics"][0]["targetPartitions"] == 4, timeout=30, what="target grown to 4"
        )
        produce_on(kafka.bootstrap, topic, 40, 4, "b")
        wait_for(lambda: recorder.last.totals.records == 50, timeout=60, what="records on the new partitions")
    copied = read_all(kafka2.bootstrap, topic, 50, timeout=20, linger=1)
    assert sorted((m.partition(), m.value()) for m in copied) == sorted(
        [(i % 2, f"a-v{i}".encode()) for i in range(10)] + [(i % 4, f"b-v{i}".encode()) for i in range(40)]
    )


def test_a_created_target_topic_gets_the_source_topics_configs(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    configs = {"cleanup.policy": "compact", "retention.ms": "3600000", "max.message.bytes": "2000000"}
    topic = topic_factory(partitions=1, config=configs)
    produce_on(kafka.bootstrap, topic, 3, 1, "c")
    with syncing(sync_spec(kafka, kafka2, topics=[topic])) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 3, timeout=60, what="3 copied")
    admin = kafka2.admin()
    resource = ConfigResource(ResourceType.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(15)
    assert {name: described[name].value for name in configs} == configs
    assert described["segment.bytes"].is_default  # broker defaults are not copied as if the user had set them


def spelled_otherwise(broker: KafkaCluster) -> str:
    """The same broker, named by host name instead of address."""
    return broker.bootstrap.replace("127.0.0.1", "localhost")


@pytest.mark.parametrize("target_spelling", ["localhost", "both"])
def test_one_cluster_spelled_two_ways_is_never_copied_onto_itself(
    target_spelling: str, kafka: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1)
    produce_on(kafka.bootstrap, topic, 100, 1, "s")
    other = spelled_otherwise(kafka)
    target = other if target_spelling == "localhost" else f"{kafka.bootstrap},{other}"
    spec = {"source": {"bootstrapServers": kafka.bootstrap}, "target": {"bootstrapServers": target}, "topics": [topic]}
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.error, timeout=30, what="refusal")
        time.sleep(2)
        error = recorder.last.error
        assert error is not None and error.reason == "CopyOntoItself", error
        assert kafka.cluster_id in error.message and topic in error.message
        assert recorder.last.totals.records == 0
    assert len(read_all(kafka.bootstrap, topic, 101, timeout=5)) == 100  # nothing was added


def test_one_cluster_spelled_two_ways_may_copy_into_renamed_topics(
    kafka: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1)
    produce_on(kafka.bootstrap, topic, 20, 1, "r")
    spec = {
        "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "here"},
        "target": {"bootstrapServers": spelled_otherwise(kafka)},
        "topics": [topic],
        "targetTopicName": "{source}.{topic}",
    }
    with syncing(spec) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 20, timeout=60, what="20 copied")
    assert len(read_all(kafka.bootstrap, f"here.{topic}", 20, timeout=20, linger=1)) == 20
    kafka.admin().delete_topics([f"here.{topic}"])


def test_loops_are_detected_by_cluster_id_when_the_two_syncs_spell_the_clusters_differently(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """A->B names A by address, B->A names A by host name, and neither sets instanceId: the provenance header
    carries A's cluster id, so B->A still recognises A's own records."""
    topic = topic_factory(partitions=1)
    forward = {"source": {"bootstrapServers": kafka.bootstrap}, "target": {"bootstrapServers": kafka2.bootstrap}}
    backward = {
        "source": {"bootstrapServers": spelled_otherwise(kafka2)},
        "target": {"bootstrapServers": spelled_otherwise(kafka)},
    }
    with syncing({**forward, "topics": [topic]}) as ab:
        wait_for(lambda: ab.reports and ab.last.partitions, timeout=60, what="A->B assigned")
        with syncing({**backward, "topics": [topic]}) as ba:
            wait_for(lambda: ba.reports and ba.last.partitions, timeout=60, what="B->A assigned")
            produce_on(kafka.bootstrap, topic, 30, 1, "a")
            wait_for(lambda: ab.last.totals.records == 30, timeout=60, what="A->B copied")
            wait_for(lambda: ba.last.extra["loopRecordsSkipped"] == 30, timeout=60, what="B->A skipped them")
            time.sleep(3)
            assert (ab.last.totals.records, ba.last.totals.records) == (30, 0)
    assert len(read_all(kafka.bootstrap, topic, 31, timeout=5)) == 30
    copied = read_all(kafka2.bootstrap, topic, 30)
    assert {dict(m.headers())[ORIGIN_HEADER] for m in copied} == {kafka.cluster_id.encode()}
