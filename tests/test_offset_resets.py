"""Offset resets (ferry.resets) against a real Apache Kafka: where earliest, latest and a time put a consumer group,
as the group's committed offsets read back through the AdminClient say, and a worker that moves its group once
per offset epoch before it consumes. The operator's side: tests/test_operations.py; live: test_operations_live.py."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from ferry.errors import TaskError
from ferry.reporting import MemoryLedger
from ferry.resets import move_group

from tests.conftest import TopicFactory
from tests.support.copies import read_all
from tests.support.dumps import wait_for
from tests.support.kafka import KafkaCluster
from tests.test_dataaccess_worker import commit, delete_records
from tests.test_topicsync_worker import syncing

# Recent enough for the topics' retention (7 days by default) to keep what is stamped with it.
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
T0_MS = int(T0.timestamp() * 1000)


def at(seconds: float, hours: int = 0) -> str:
    """T0 + seconds as RFC 3339, written with a UTC offset of `hours` (0: Z)."""
    moment = (T0 + timedelta(seconds=seconds)).astimezone(timezone(timedelta(hours=hours)))
    text = moment.isoformat(timespec="milliseconds" if seconds % 1 else "seconds")
    return text.replace("+00:00", "Z")


def produce_timed(bootstrap: str, topic: str, partitions: int, count: int) -> None:
    """`count` records `p<partition>-v<i>` in each partition, record i stamped T0 + i seconds (CreateTime)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(count):
        for partition in range(partitions):
            producer.produce(
                topic, value=f"p{partition}-v{i}".encode(), partition=partition, timestamp=T0_MS + i * 1000
            )
    assert producer.flush(30) == 0


def group_offsets(broker: KafkaCluster, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets, as the AdminClient lists them (-1001: none)."""
    admin = broker.admin()  # must outlive the future
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=15)
    return [tp.offset for tp in sorted(result.topic_partitions, key=lambda tp: tp.partition)]


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("earliest", [3, 0]),  # partition 0's first three records are gone (deleted, as by retention)
        ("latest", [10, 10]),
        (at(4.5), [5, 5]),  # the first record at or after the time
        (at(5, hours=8), [5, 5]),  # T0 + 5 s, written with another UTC offset
        (at(-3600), [3, 0]),  # before every record: the first one still there
        (at(3600), [10, 10]),  # after every record: the end, as kafka-consumer-groups does
    ],
)
def test_a_reset_sets_the_committed_offset_of_every_partition(
    to: str, expected: list[int], kafka: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic, group = topic_factory(partitions=2), f"reset-{uuid.uuid4().hex[:8]}"
    produce_timed(kafka.bootstrap, topic, 2, 10)
    delete_records(kafka, topic, {0: 3})
    commit(kafka.bootstrap, group, topic, [7, 8])  # where the group was
    applied = move_group({"bootstrap.servers": kafka.bootstrap}, group, [(topic, 0), (topic, 1)], to, 4)
    assert applied is not None
    assert group_offsets(kafka, group, topic, 2) == expected
    assert (applied.to, applied.epoch, applied.consumer_group, applied.partitions) == (to, 4, group, 2)
    assert [(o.topic, o.partition, o.offset) for o in applied.offsets or []] == [
        (topic, 0, expected[0]),
        (topic, 1, expected[1]),
    ]


def test_a_reset_leaves_a_group_with_live_members_alone(kafka: KafkaCluster, topic_factory: TopicFactory) -> None:
    """Another worker of the task started first: the group is theirs, and so are its offsets."""
    topic, group = topic_factory(partitions=1), f"reset-{uuid.uuid4().hex[:8]}"
    produce_timed(kafka.bootstrap, topic, 1, 10)
    member = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "auto.offset.reset": "latest"})
    member.subscribe([topic])
    try:
        wait_for(lambda: member.poll(0.2) is None and member.assignment(), timeout=30, what="a member of the group")
        member.commit(offsets=[TopicPartition(topic, 0, 6)], asynchronous=False)
        assert move_group({"bootstrap.servers": kafka.bootstrap}, group, [(topic, 0)], "earliest", 1) is None
        assert group_offsets(kafka, group, topic, 1) == [6]
    finally:
        member.close()


def test_a_reset_of_a_topic_that_does_not_exist_says_so(kafka: KafkaCluster) -> None:
    with pytest.raises(TaskError) as failed:
        move_group({"bootstrap.servers": kafka.bootstrap}, "g", [(f"gone-{uuid.uuid4().hex[:8]}", 0)], "latest", 1)
    assert failed.value.reason == "KafkaError" and "partition" in failed.value.message.lower()


def test_a_worker_moves_its_group_once_per_epoch_before_it_consumes(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    group = f"sync-{uuid.uuid4().hex[:8]}"
    produce_timed(kafka.bootstrap, topic, 2, 10)
    commit(kafka.bootstrap, group, topic, [10, 10])  # everything was copied before the pause
    spec = {
        "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "a"},
        "target": {"bootstrapServers": kafka2.bootstrap, "instanceId": "b"},
        "topics": [topic],
        "targetTopicName": "{source}.{topic}",
        "startFrom": "latest",
    }
    ledger = MemoryLedger(0)
    with syncing(spec, group, epoch=1, resets=ledger, reset_to=at(6)) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 8, timeout=60, what="8 copied again")
        time.sleep(1)
        assert recorder.last.totals.records == 8
    assert ledger.epoch == 1 and ledger.applied is not None
    assert {k: ledger.applied[k] for k in ("to", "epoch", "consumerGroup", "partitions")} == {
        "to": at(6),
        "epoch": 1,
        "consumerGroup": group,
        "partitions": 2,
    }
    assert [o["offset"] for o in ledger.applied["offsets"]] == [6, 6]
    copied = sorted(m.value().decode() for m in read_all(kafka2.bootstrap, f"a.{topic}", 8, linger=1))
    assert copied == sorted(f"p{p}-v{i}" for p in range(2) for i in range(6, 10))
    assert group_offsets(kafka, group, topic, 2) == [10, 10]
    # A restarted worker of the same epoch finds the reset made: it continues from the group's offsets.
    produce_timed(kafka.bootstrap, topic, 2, 1)  # one more per partition, offset 10
    with syncing(spec, group, epoch=1, resets=ledger, reset_to=at(6)) as recorder:
        wait_for(lambda: recorder.reports and recorder.last.totals.records == 2, timeout=60, what="the 2 new")
        time.sleep(1)
        assert recorder.last.totals.records == 2
    assert group_offsets(kafka, group, topic, 2) == [11, 11]
