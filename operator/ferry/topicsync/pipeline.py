"""The TopicSync worker: the shared copy loop (ferry.copying) over the selected source topics, each to its
target topic, shaped like the source.

Loops: every copied record carries the header `ferry.origin` naming the instance where it was first
written (the source's, unless the record already has one). A record whose origin is the target instance
is never written back there, so two syncs A->B and B->A of the same topic converge.

Offsets: every copied record also carries `ferry.offset`, its offset in the source partition, by which consumer
groups' committed offsets are translated exactly to the target (spec.consumerGroups, ferry.topicsync.groups).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from ferry.copying import CopyPipeline, Headers, refuse_copy_onto_itself
from ferry.errors import TaskError
from ferry.kafka import admin_client, describe_kafka_error, look_up, require_topics
from ferry.metrics import WorkerMetrics
from ferry.reporting import Reporter, ResetLedger
from ferry.resets import ADMIN_TIMEOUT
from ferry.settings import WorkerSettings
from ferry.throttle import Throttle
from ferry.topicsync.groups import OFFSET_HEADER, PROBE_TIMEOUT, TP, GroupSync, stamp
from ferry.topicsync.model import TopicState, TopicSyncSpec
from ferry.topicsync.topics import TargetTopics, broker_count, describe, listed

log = logging.getLogger(__name__)

ORIGIN_HEADER = "ferry.origin"


def origin_of(headers: Headers) -> str | None:
    for name, value in headers:
        if name == ORIGIN_HEADER and value is not None:
            return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return None


class SyncPipeline(CopyPipeline):
    client_name = "ferry-topicsync"

    def __init__(
        self,
        spec: TopicSyncSpec,
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
            reset_to=reset_to,
            delivery=spec.delivery,
            worker_id=worker_id,
        )
        self.spec = spec
        # Until the brokers have said which clusters they are: the spelled identities.
        self.source_instance = spec.source.instance
        self.origin = self.source_instance.encode()  # the ferry.origin header of the records copied from it
        self.target_identities = {spec.target.instance}
        self.topics: dict[str, TopicState] = {}
        self.loop_skipped = 0
        self.group_sync = GroupSync(self, spec.consumer_groups, metrics) if spec.consumer_groups else None
        self.positions_admin: AdminClient | None = None
        self.target_topics = TargetTopics(spec)  # keeps the target topics like the source ones

    def _prepare(self) -> None:
        """Find the source topics and give each a target topic shaped like it."""
        source_admin, target_admin = admin_client(self.source_config), admin_client(self.target_config)
        source = look_up(source_admin, self.source_bootstrap)
        source_cluster, available = source.cluster_id, source.topics
        target_cluster = look_up(target_admin, self.target_bootstrap).cluster_id
        self.source_cluster, self.target_cluster = source_cluster, target_cluster
        # Provenance by cluster id unless the user named the instances: two spellings of one cluster agree.
        self.source_instance = self.spec.source.instance_id or source_cluster
        self.origin = self.source_instance.encode()
        self.target_identities = {self.spec.target.instance_id or target_cluster, self.spec.target.instance}
        if self.spec.topics is not None:
            require_topics(self.spec.topics, available, self.source_bootstrap, "SourceTopicNotFound")
        selected = sorted(t for t in available if self.spec.selects(t))
        if not selected:
            raise TaskError(
                "NoMatchingTopics", f"no topic on {self.source_bootstrap} matches {self.spec.topic_pattern!r}"
            )
        shapes = describe(source_admin, self.source_bootstrap, selected, self.spec.sync_topic_configs)
        targets = {t: self.spec.target_topic(t) for t in selected}
        refuse_copy_onto_itself(source_cluster, target_cluster, targets, self.source_bootstrap, self.target_bootstrap)
        existing = describe(target_admin, self.target_bootstrap, list(targets.values()), False)
        missing_targets = [t for t in targets.values() if t not in existing]
        if missing_targets and not self.spec.create_topics:
            raise TaskError(
                "TargetTopicNotFound",
                f"topics {', '.join(missing_targets)} do not exist on {self.target_bootstrap} and createTopics "
                "is false",
            )
        if self.checking:  # the missing targets would be created: nothing else to check
            return
        brokers = broker_count(target_admin, self.target_bootstrap)
        try:
            self.topics = self.target_topics.ensure(target_admin, targets, shapes, existing, brokers)
        except KafkaException as err:
            raise describe_kafka_error(err, self.target_bootstrap) from None

    def _topics(self) -> list[str]:
        return sorted(self.topics)

    def _reset_partitions(self) -> list[tuple[str, int]]:
        return [(topic, p) for topic, state in sorted(self.topics.items()) for p in range(state.partitions)]

    def _shape(self) -> object:
        """New matching topics and partition growth need a new subscription."""
        return tuple((t, s.target_partitions) for t, s in sorted(self.topics.items()))

    def _route(self, topic: str, partition: int) -> str | None:
        state = self.topics[topic]
        return state.target if partition < state.target_partitions else None

    def _outgoing_headers(self, headers: Headers, offset: int) -> Headers | None:
        for name, _ in headers:
            if name in (ORIGIN_HEADER, OFFSET_HEADER):
                break
        else:  # the common case, no provenance yet (per record: the loop below does the same, slower)
            headers.append((ORIGIN_HEADER, self.origin))
            headers.append((OFFSET_HEADER, b"%d" % offset))
            return headers
        if not self.copies(headers):
            self.loop_skipped += 1
            return None
        if origin_of(headers) is None:
            headers.append((ORIGIN_HEADER, self.origin))
        return stamp(headers, offset)  # ferry.offset: what consumer group offsets are translated by

    def copies(self, headers: Headers) -> bool:
        """Whether a source record with these headers is copied: not when it was first written to the target."""
        return origin_of(headers) not in self.target_identities

    # -- consumer group offset sync (ferry.topicsync.groups) -------------------------------------

    def run(self, stop: threading.Event) -> None:
        if self.group_sync is None:
            super().run(stop)
            return
        done = threading.Event()
        thread = threading.Thread(target=self.group_sync.run, args=(done,), name="consumer-groups", daemon=True)
        thread.start()
        try:
            super().run(stop)
        finally:
            done.set()
            thread.join(PROBE_TIMEOUT + ADMIN_TIMEOUT + 10)

    def copied_up_to(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """Where the copy has reached in each source partition: the next offset it reads, every record before it
        being on the target (acknowledged); partitions it has not started are left out. The sync's own consumer
        group's committed offsets (any worker's), or what this worker committed since, if that is further."""
        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        if self.positions_admin is None:
            self.positions_admin = admin_client(self.source_config)
        request = [ConsumerGroupTopicPartitions(self.group, [TopicPartition(t, p) for t, p in wanted])]
        future = self.positions_admin.list_consumer_group_offsets(request, request_timeout=ADMIN_TIMEOUT)[self.group]
        result = future.result(timeout=ADMIN_TIMEOUT + 5)
        found = {
            (tp.topic, tp.partition): int(tp.offset)
            for tp in result.topic_partitions or []
            if tp.error is None and tp.offset is not None and tp.offset >= 0
        }
        asked = set(wanted)
        for key, offset in dict(self.committed).items():
            if key in asked:
                found[key] = max(found.get(key, offset), offset)
        return found

    def _kind_fields(self) -> dict[str, Any]:
        return {
            "topics": listed(self.topics.values()),
            "topicChanges": [c.wire() for c in list(self.target_topics.changes)],
            "topicCount": len(self.topics),
            "loopRecordsSkipped": self.loop_skipped,
            **(self.group_sync.fields() if self.group_sync is not None else {}),
        }
