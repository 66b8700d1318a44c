"""The DataAccessTask worker: the shared copy loop (ferry.copying) from the source topic, in the source's
own consumer group, to the same partition number of the target topic.

Before copying, both topics must exist with the same partition count (per-key order survives only if
partition N goes to partition N); the check runs at start and again every topic-refresh interval, and a
mismatch holds every partition (nothing copied, nothing committed) until it is fixed.
"""

from __future__ import annotations

import logging
from typing import Any

from ferry.copying import CopyPipeline, refuse_copy_onto_itself
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.errors import TaskError
from ferry.kafka import admin_client, look_up
from ferry.metrics import WorkerMetrics
from ferry.reporting import Reporter, ResetLedger
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle

log = logging.getLogger(__name__)


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
        reset_to: str | None = None,
        worker_id: str = "worker",
    ) -> None:
        super().__init__(
            source_config,
            target_config,
            consumer_group,
            spec.start_from,
            reporter,
            metrics,
            settings,
            epoch,
            Throttle.share_of(spec),
            resets=resets,
            # Without a target (a Deployment an operator rendered before it named one) an epoch resets the
            # subscription's group to startFrom, as a resume after the window always did.
            reset_to=reset_to if reset_to is not None else spec.start_from.value,
            delivery=spec.delivery,
            worker_id=worker_id,
        )
        self.source_topic = spec.source.topic
        self.target_topic = spec.target.topic
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

    def _reset_partitions(self) -> list[tuple[str, int]]:
        assert self.source_partitions is not None
        return [(self.source_topic, partition) for partition in range(self.source_partitions)]

    def _kind_fields(self) -> dict[str, Any]:
        return {
            "sourcePartitions": self.source_partitions,
            "targetPartitions": self.target_partitions,
        }
