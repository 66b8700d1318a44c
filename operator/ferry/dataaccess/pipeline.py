"""The DataAccessTask worker: the shared copy loop (ferry.copying) from the source topic, in the source's
own consumer group, to the same partition number of the target topic.

Before copying, both topics must exist with the same partition count (per-key order survives only if
partition N goes to partition N); the check runs at start and again every topic-refresh interval, and a
mismatch holds every partition (nothing copied, nothing committed) until it is fixed.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from ferry.api.base import StartFrom
from ferry.copying import CopyPipeline, refuse_copy_onto_itself
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.errors import TaskError
from ferry.kafka import admin_client, describe_kafka_error, look_up
from ferry.metrics import WorkerMetrics
from ferry.reporting import MemoryLedger, Reporter, ResetLedger
from ferry.settings import WorkerSettings

log = logging.getLogger(__name__)

ADMIN_TIMEOUT = 15.0  # seconds

# The group has live members (another worker of the task already resumed): its offsets are theirs now.
_GROUP_IN_USE = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION)


class AccessPipeline(CopyPipeline):
    client_name = "ferry-dataaccess"

    def __init__(
        self,
        spec: DataAccessTaskSpec,
        source_config: dict[str, Any],
        target_config: dict[str, Any],
        consumer_group: str,
        reporter: Reporter,
        metrics: WorkerMetrics,
        settings: WorkerSettings | None = None,
        epoch: int = 0,
        resets: ResetLedger | None = None,
    ) -> None:
        super().__init__(
            source_config, target_config, consumer_group, spec.start_from, reporter, metrics, settings, epoch
        )
        self.source_topic = spec.source.topic
        self.target_topic = spec.target.topic
        self.resets = resets or MemoryLedger()
        self.source_partitions: int | None = None
        self.target_partitions: int | None = None

    @property
    def matched(self) -> bool:
        return self.source_partitions is not None and self.source_partitions == self.target_partitions

    def _prepare(self) -> None:
        source_admin, target_admin = admin_client(self.source_config), admin_client(self.target_config)
        source_view = look_up(source_admin, self.source_bootstrap)
        target_view = look_up(target_admin, self.target_bootstrap)
        self.source_cluster, self.target_cluster = source_view.cluster_id, target_view.cluster_id
        refuse_copy_onto_itself(
            source_view.cluster_id,
            target_view.cluster_id,
            {self.source_topic: self.target_topic},
            self.source_bootstrap,
            self.target_bootstrap,
        )
        source, target = source_view.topics, target_view.topics
        if self.source_topic not in source:
            raise TaskError(
                "SourceTopicNotFound",
                f"topic {self.source_topic} does not exist on {self.source_bootstrap}: check "
                "spec.source.dts.topic against the subscription",
            )
        self.source_partitions = source[self.source_topic]
        if self.target_topic not in target:
            self.target_partitions = None
            raise TaskError(
                "TargetTopicNotFound",
                f"topic {self.target_topic} does not exist on {self.target_bootstrap}: create it with "
                f"{self.source_partitions} partitions (the source topic's count)",
            )
        self.target_partitions = target[self.target_topic]
        if not self.matched:
            raise TaskError(
                "PartitionCountMismatch",
                f"source topic {self.source_topic} has {self.source_partitions} partitions but target topic "
                f"{self.target_topic} has {self.target_partitions}: records go from partition N to partition N, "
                f"so the target topic needs exactly {self.source_partitions} partitions",
            )

    def _topics(self) -> list[str]:
        return [self.source_topic]

    def _shape(self) -> object:
        return (self.source_partitions, self.target_partitions)

    def _route(self, topic: str, partition: int) -> str | None:
        return self.target_topic if self.matched else None

    def _before_consuming(self) -> bool:
        """After a resume later than the window, move the group to startFrom once for this epoch."""
        try:
            if self.epoch == 0 or self.epoch <= self.resets.applied_epoch():  # epoch 0 never resets: no read
                return True
            self._reset_offsets()
            self.resets.record(self.epoch)
        except TaskError as err:
            self._fail(err)
            return False
        return True

    def _reset_offsets(self) -> None:
        assert self.source_partitions is not None
        admin = admin_client(self.source_config)
        earliest = self.start_from == StartFrom.EARLIEST
        where = OffsetSpec.earliest() if earliest else OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(self.source_topic, p): where for p in range(self.source_partitions)}
        try:
            # request_timeout: every admin future resolves (as a timeout error at worst) within ADMIN_TIMEOUT
            listed = admin.list_offsets(wanted, request_timeout=ADMIN_TIMEOUT)
            found = {tp: future.result().offset for tp, future in listed.items()}
            offsets = sorted(
                (TopicPartition(tp.topic, tp.partition, offset) for tp, offset in found.items()),
                key=lambda tp: tp.partition,
            )
            request = [ConsumerGroupTopicPartitions(self.group, offsets)]
            for future in admin.alter_consumer_group_offsets(request, request_timeout=ADMIN_TIMEOUT).values():
                future.result()
        except KafkaException as err:
            code = err.args[0].code() if err.args and isinstance(err.args[0], KafkaError) else None
            if code in _GROUP_IN_USE:
                log.info("consumer group %s is in use by another worker: it resumed the group already", self.group)
                return
            raise describe_kafka_error(err, self.source_bootstrap) from None
        log.info(
            "resumed after the resume window: consumer group %s moved to startFrom=%s (%s)",
            self.group,
            self.start_from.value,
            ", ".join(f"{tp.partition}@{tp.offset}" for tp in offsets),
        )

    def _kind_fields(self) -> dict[str, Any]:
        return {
            "sourcePartitions": self.source_partitions,
            "targetPartitions": self.target_partitions,
        }
