"""Offset resets: where a reset moves a task's consumer group, and moving it there, once.

Every kind resets the same way. A reset belongs to an offset epoch (`status.offsetEpoch`), which the operator
increments when it records one in `status.offsetReset`: a `ferry.dev/reset-offsets` annotation on a paused task
(to its value), or a resume after a pause longer than `spec.resumeWindow` (to `startFrom`). The workers get the
epoch and its target (FERRY_OFFSET_EPOCH, FERRY_OFFSET_RESET); the first one to start moves the group with the
admin API before anything is consumed, for every partition of the task's topics, and notes it in the task's
status (its ResetLedger: `offsetResetEpoch`, `lastOffsetReset`), so a restarted worker does not move it again.
TopicSync and ObsDumpTask name their group after the epoch (a new epoch is a new group, which the reset fills);
DataAccessTask reads the DTS subscription's own group, which the reset moves in place.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from ferry.api.base import AppliedOffsetReset, PartitionOffset
from ferry.kafka import admin_client, describe_kafka_error, unanswered
from ferry.reporting import MAX_REPORTED_PARTITIONS, utc_now

log = logging.getLogger(__name__)

EARLIEST, LATEST = "earliest", "latest"
ADMIN_TIMEOUT = 15.0  # seconds: every admin future resolves (as a timeout error at worst) within this
RESET_VALUES = "earliest, latest or an RFC 3339 time with its UTC offset, such as 2026-05-01T12:00:00Z"
# The group has live members (another worker of the task already started): its offsets are theirs now.
_GROUP_IN_USE = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION)


def parse_target(value: str) -> str | datetime:
    """`earliest`, `latest`, or the time of an RFC 3339 timestamp (its offset required: a time without one names
    no instant). ValueError saying what is allowed otherwise."""
    text = value.strip()
    if text in (EARLIEST, LATEST):
        return text
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{value!r} is not {RESET_VALUES}") from None
    if "T" not in text.upper() or moment.tzinfo is None:
        raise ValueError(f"{value!r} is not {RESET_VALUES}")
    return moment.astimezone(UTC)


def move_group(
    config: dict[str, Any], group: str, partitions: list[tuple[str, int]], to: str, epoch: int
) -> AppliedOffsetReset | None:
    """Set the group's committed offset of every partition to the target's offset in it (a time: the first record
    at or after it, else the end, as kafka-consumer-groups --to-datetime does). None when the group has live
    members: another worker of the task started first and moved it. A TaskError saying what failed otherwise."""
    target = parse_target(to)
    bootstrap = str(config.get("bootstrap.servers"))
    admin = admin_client(config)  # must outlive the futures: a collected client never resolves them
    try:
        offsets = _look_up(admin, partitions, target)
        request = [ConsumerGroupTopicPartitions(group, offsets)]
        for future in admin.alter_consumer_group_offsets(request, request_timeout=ADMIN_TIMEOUT).values():
            result = future.result(timeout=ADMIN_TIMEOUT + 5)
            failed = [tp for tp in result.topic_partitions or [] if tp.error is not None]
            if failed:
                raise KafkaException(failed[0].error)
    except KafkaException as err:
        code = err.args[0].code() if err.args and isinstance(err.args[0], KafkaError) else None
        if code in _GROUP_IN_USE:
            log.info("consumer group %s is in use by another worker: it moved the group already", group)
            return None
        raise describe_kafka_error(err, bootstrap) from None
    except TimeoutError:
        raise unanswered(bootstrap, ADMIN_TIMEOUT, f"moving consumer group {group} to {to}") from None
    log.info(
        "consumer group %s moved to %s (offset epoch %d): %s",
        group,
        to,
        epoch,
        ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in offsets),
    )
    return AppliedOffsetReset(
        to=to,
        epoch=epoch,
        time=utc_now(),
        consumer_group=group,
        partitions=len(offsets),
        offsets=[
            PartitionOffset(topic=tp.topic, partition=tp.partition, offset=tp.offset)
            for tp in offsets[:MAX_REPORTED_PARTITIONS]
        ],
    )


def _look_up(admin: Any, partitions: list[tuple[str, int]], target: str | datetime) -> list[Any]:
    """Each partition's offset for the target, sorted by topic and partition."""
    if isinstance(target, datetime):
        at = OffsetSpec.for_timestamp(int(target.timestamp() * 1000))
        found = _list(admin, partitions, at)
        past_the_end = [key for key, offset in found.items() if offset < 0]  # no record at or after the time
        found.update(_list(admin, past_the_end, OffsetSpec.latest()))  # type: ignore[no-untyped-call]
    else:
        spec = OffsetSpec.earliest() if target == EARLIEST else OffsetSpec.latest()  # type: ignore[no-untyped-call]
        found = _list(admin, partitions, spec)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in sorted(found.items())]


def _list(admin: Any, partitions: list[tuple[str, int]], spec: Any) -> dict[tuple[str, int], int]:
    if not partitions:
        return {}
    wanted = {TopicPartition(topic, partition): spec for topic, partition in partitions}
    listed = admin.list_offsets(wanted, request_timeout=ADMIN_TIMEOUT)
    return {(tp.topic, tp.partition): int(f.result(timeout=ADMIN_TIMEOUT + 5).offset) for tp, f in listed.items()}
