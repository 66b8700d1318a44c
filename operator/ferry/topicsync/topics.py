"""Target topics shaped like their source: partitions, replication (capped at the target's brokers), configs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from ferry.kafka import describe_kafka_error
from ferry.topicsync.model import TopicState

log = logging.getLogger(__name__)
# Broker-managed or identity-bearing configs that must not be copied onto another cluster's topic.
NOT_COPIED = frozenset(
    {
        "confluent.placement.constraints",
        "leader.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
    }
)


@dataclass(frozen=True)
class TopicShape:
    partitions: int
    replication_factor: int
    configs: dict[str, str]


def planned_replication(source_rf: int, target_brokers: int) -> tuple[int, str | None]:
    """The source's replication factor, capped at the target's broker count (and saying so)."""
    if source_rf <= target_brokers:
        return source_rf, None
    return target_brokers, (
        f"replication factor {source_rf} of the source capped at {target_brokers}, the target's broker count"
    )


def describe(admin: AdminClient, bootstrap: str, topics: list[str], with_configs: bool) -> dict[str, TopicShape]:
    """Partitions, replication factor and non-default configs of existing topics."""
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as err:
        raise describe_kafka_error(err, bootstrap) from None
    shapes = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            continue
        replicas = max((len(p.replicas) for p in topic.partitions.values()), default=1)
        shapes[name] = TopicShape(len(topic.partitions), replicas, _configs(admin, name) if with_configs else {})
    return shapes


def broker_count(admin: AdminClient, bootstrap: str) -> int:
    try:
        return max(len(admin.list_topics(timeout=10).brokers), 1)
    except KafkaException as err:
        raise describe_kafka_error(err, bootstrap) from None


def _configs(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        entries = admin.describe_configs([resource])[resource].result(timeout=10)
    except KafkaException as err:
        log.info("configs of %s not readable: %s", topic, err)
        return {}
    return {
        name: entry.value
        for name, entry in entries.items()
        if not entry.is_default and not entry.is_read_only and entry.value is not None and name not in NOT_COPIED
    }


def ensure_target(
    admin: AdminClient, source: str, target: str, shape: TopicShape, existing: TopicShape | None, brokers: int
) -> TopicState:
    """Create the target topic if missing, grow its partitions if the source grew; report what could not be done."""
    notes: list[str] = []
    if existing is None:
        replication, capped = planned_replication(shape.replication_factor, brokers)
        if capped:
            notes.append(capped)
        new = NewTopic(target, num_partitions=shape.partitions, replication_factor=replication, config=shape.configs)
        try:
            admin.create_topics([new])[target].result(timeout=30)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        existing = TopicShape(shape.partitions, replication, shape.configs)
    elif existing.partitions < shape.partitions:
        try:
            admin.create_partitions([NewPartitions(target, shape.partitions)])[target].result(timeout=30)
            existing = TopicShape(shape.partitions, existing.replication_factor, existing.configs)
        except KafkaException as err:
            notes.append(
                f"the source has {shape.partitions} partitions, the target {existing.partitions}, and the target "
                f"broker refused to add partitions ({err.args[0].str()}): partitions {existing.partitions}-"
                f"{shape.partitions - 1} are not copied until the target topic has them"
            )
    return TopicState(
        source=source,
        target=target,
        partitions=shape.partitions,
        target_partitions=existing.partitions,
        replication_factor=existing.replication_factor,
        note="; ".join(notes) or None,
    )
