"""Target topics shaped like their source, and kept so: partitions, replication (capped at the target's brokers),
configs.

On every topic refresh (SyncPipeline._prepare) each source topic is compared with its target topic:

- a missing target topic is created like the source (partitions, replication factor, configs);
- a target topic with fewer partitions is grown; one with more cannot be shrunk (Kafka cannot remove
  partitions): records still go from partition N to partition N, and the extra ones get nothing;
- with syncTopicConfigs, the source topic's non-default, writable configs, less the excluded ones, are set on
  the target where its values differ: one batched DescribeConfigs per side and one IncrementalAlterConfigs per
  refresh. A config the source has returned to its default is reset (deleted) on the target only where Ferry
  had set it: the value this worker followed on the source before is still the target topic's own value.

Each change made is kept (`TargetTopics.changes`, reported as `topicChanges`); what cannot be made (a refused
config or growth, a target with more partitions) is a `TopicMismatch` on the topic's state, and the worker goes
on copying everything it can.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from ferry.kafka import describe_kafka_error
from ferry.reporting import utc_now
from ferry.topicsync.model import MAX_TOPICS, TopicChange, TopicMismatch, TopicState, TopicSyncSpec

log = logging.getLogger(__name__)

# Never copied, whatever spec.excludedTopicConfigs says: MirrorMaker 2's DefaultConfigPropertyFilter and more.
ALWAYS_EXCLUDED: dict[str, str] = {
    "min.insync.replicas": "it depends on the target's broker count and replication factor",
    "unclean.leader.election.enable": "durability is the target cluster's choice",
    "message.timestamp.type": "copied records keep their source timestamps: LogAppendTime would replace them",
    "message.timestamp.difference.max.ms": "copied records keep their source timestamps, older as the copy lags",
    "message.timestamp.before.max.ms": "copied records keep their source timestamps, older as the copy lags",
    "message.timestamp.after.max.ms": "copied records keep their source timestamps",
    "leader.replication.throttled.replicas": "it names the source's brokers",
    "follower.replication.throttled.replicas": "it names the source's brokers",
    "confluent.placement.constraints": "it names the source's racks and brokers",
}
# A value set on the topic itself (the client gives the source as the enum or its number).
_TOPIC_LEVEL = (ConfigSource.DYNAMIC_TOPIC_CONFIG, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
# The latest changes a worker reports (the operator keeps as many in status.topicChanges).
MAX_CHANGES = 20
ADMIN_TIMEOUT = 15.0
# Errors saying the target will not take a config value (not that it could not be asked): a topic's changes are
# then tried one by one, to find which.
_VALUE_REFUSED = (KafkaError.INVALID_CONFIG, KafkaError.POLICY_VIOLATION, KafkaError.INVALID_REQUEST)
_REFUSED = (
    *_VALUE_REFUSED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.UNSUPPORTED_VERSION,
)


@dataclass(frozen=True)
class TopicShape:
    partitions: int
    replication_factor: int
    # Non-default, writable configs; None: not read (not asked for, or not readable now).
    configs: dict[str, str] | None = None


@dataclass(frozen=True)
class ConfigChange:
    """One config to set (value) or reset to the target's default (value None) on a target topic."""

    name: str
    value: str | None
    before: str | None


def excluded(name: str, patterns: Sequence[str]) -> bool:
    return name in ALWAYS_EXCLUDED or any(fnmatchcase(name, pattern) for pattern in patterns)


def planned_replication(source_rf: int, target_brokers: int) -> tuple[int, str | None]:
    """The source's replication factor, capped at the target's broker count (and saying so)."""
    if source_rf <= target_brokers:
        return source_rf, None
    return target_brokers, (
        f"replication factor {source_rf} of the source capped at {target_brokers}, the target's broker count"
    )


def describe(admin: AdminClient, bootstrap: str, topics: list[str], with_configs: bool) -> dict[str, TopicShape]:
    """Partitions, replication factor and (one batched request) non-default configs of existing topics."""
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as err:
        raise describe_kafka_error(err, bootstrap) from None
    found = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is not None and topic.error is None:
            found[name] = topic
    configs = read_configs(admin, list(found)) if with_configs else {}
    shapes = {}
    for name, topic in found.items():
        replicas = max((len(p.replicas) for p in topic.partitions.values()), default=1)
        entries = configs.get(name)
        shapes[name] = TopicShape(len(topic.partitions), replicas, None if entries is None else set_configs(entries))
    return shapes


def broker_count(admin: AdminClient, bootstrap: str) -> int:
    try:
        return max(len(admin.list_topics(timeout=10).brokers), 1)
    except KafkaException as err:
        raise describe_kafka_error(err, bootstrap) from None


def read_configs(admin: AdminClient, topics: list[str]) -> dict[str, dict[str, ConfigEntry] | None]:
    """Every config entry of each topic, in one DescribeConfigs; None for a topic whose configs are not readable
    now (deleted meanwhile, no permission, a timeout): nothing is concluded from it."""
    if not topics:
        return {}
    try:
        futures = admin.describe_configs(
            [ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=ADMIN_TIMEOUT
        )
    except KafkaException as err:
        log.info("topic configs not readable: %s", err)
        return dict.fromkeys(topics)
    return {resource.name: entries for resource, entries in _results(futures, "configs of").items()}


def set_configs(entries: dict[str, ConfigEntry]) -> dict[str, str]:
    """The configs set for the topic, on it or by its brokers' own settings: not the built-in defaults."""
    return {
        name: entry.value
        for name, entry in entries.items()
        if not entry.is_default and not entry.is_read_only and not entry.is_sensitive and entry.value is not None
    }


def _results(futures: dict[ConfigResource, Any], doing: str) -> dict[ConfigResource, Any]:
    """Each admin future's result, or None where it failed or did not finish in time (logged)."""
    concurrent.futures.wait(list(futures.values()), timeout=ADMIN_TIMEOUT + 5)
    results: dict[ConfigResource, Any] = {}
    for resource, future in futures.items():
        results[resource] = None
        if not future.done():
            log.info("%s %s: no answer in time", doing, resource.name)
            continue
        try:
            results[resource] = future.result()
        except KafkaException as err:
            log.info("%s %s: %s", doing, resource.name, err)
    return results


def listed(states: Iterable[TopicState]) -> list[dict[str, Any]]:
    """The topics a report lists (at most MAX_TOPICS): those out of sync first, so none of them is left out."""
    ordered = list(states)
    shown = {id(s) for s in sorted(ordered, key=lambda s: not s.out_of_sync)[:MAX_TOPICS]}
    return [s.wire() for s in ordered if id(s) in shown]


class TargetTopics:
    """The target topics of one worker's sync, kept like their source topics refresh after refresh.

    It remembers, since the worker started, the source configs it followed (to reset on the target only what it
    had set there), the configs the target refused (tried again each refresh), and its latest changes."""

    def __init__(self, spec: TopicSyncSpec) -> None:
        self.spec = spec
        self.followed: dict[str, dict[str, str]] = {}  # source topic -> its configs as last followed
        self.refused: dict[str, list[TopicMismatch]] = {}  # source topic -> configs the target refused lately
        self.changes: deque[TopicChange] = deque(maxlen=MAX_CHANGES)

    def wanted(self, configs: dict[str, str] | None) -> dict[str, str] | None:
        """The source configs the target topic should have (None: the source's are not known now)."""
        if configs is None:
            return None
        patterns = self.spec.excluded_topic_configs or []
        return {name: value for name, value in configs.items() if not excluded(name, patterns)}

    def ensure(
        self,
        admin: AdminClient,
        targets: dict[str, str],
        shapes: dict[str, TopicShape],
        existing: dict[str, TopicShape],
        brokers: int,
    ) -> dict[str, TopicState]:
        """Create, grow and configure the target topics (source topic -> target topic in `targets`); their states."""
        sync = self.spec.sync_topic_configs
        states: dict[str, TopicState] = {}
        follow: dict[str, dict[str, str]] = {}
        for topic, target in targets.items():
            wanted = self.wanted(shapes[topic].configs) if sync else None
            states[topic], bare = self._shape(
                admin, topic, target, shapes[topic], existing.get(target), brokers, wanted
            )
            if wanted is not None and (target in existing or bare):
                follow[topic] = wanted
            elif wanted is not None:  # created with them
                self.followed[topic] = wanted
        if follow:
            self._follow(admin, targets, follow, existing)
        for gone in set(self.followed) - set(targets):
            del self.followed[gone]
        for gone in set(self.refused) - set(targets):
            del self.refused[gone]
        if not sync:
            self.refused.clear()
        return {
            topic: state.model_copy(
                update={"out_of_sync": [*(state.out_of_sync or []), *self.refused.get(topic, [])] or None}
            )
            for topic, state in states.items()
        }

    # -- partitions --------------------------------------------------------------------------------

    def _shape(
        self,
        admin: AdminClient,
        topic: str,
        target: str,
        shape: TopicShape,
        existing: TopicShape | None,
        brokers: int,
        configs: dict[str, str] | None,
    ) -> tuple[TopicState, bool]:
        """Create the target topic if missing, grow it if the source grew; its state, and whether it was created
        without the source's configs (the target refused them together: they are then set one by one)."""
        notes: list[str] = []
        mismatches: list[TopicMismatch] = []
        bare = False
        if existing is None:
            replication, capped = planned_replication(shape.replication_factor, brokers)
            if capped:
                notes.append(capped)
            try:
                _create(admin, target, shape.partitions, replication, configs or {})
            except KafkaException as err:
                if not configs or err.args[0].code() not in _VALUE_REFUSED:
                    raise
                log.warning(
                    "the target refused topic %s with the source's configs (%s): created with the target's "
                    "defaults, the configs are set one by one",
                    target,
                    err.args[0].str(),
                )
                _create(admin, target, shape.partitions, replication, {})
                bare = True
            existing = TopicShape(shape.partitions, replication)
        elif existing.partitions < shape.partitions:
            try:
                admin.create_partitions([NewPartitions(target, shape.partitions)])[target].result(timeout=30)
                self._record(topic, target, "partitions", str(existing.partitions), str(shape.partitions))
                existing = TopicShape(shape.partitions, existing.replication_factor)
            except KafkaException as err:
                mismatches.append(
                    TopicMismatch(
                        reason="TargetPartitionsNotAdded",
                        message=f"the source has {shape.partitions} partitions, the target {existing.partitions}, "
                        f"and the target broker refused to add partitions ({err.args[0].str()}): partitions "
                        f"{existing.partitions}-{shape.partitions - 1} are not copied until the target topic has "
                        "them",
                    )
                )
        elif existing.partitions > shape.partitions:
            extra = (
                f"partition {shape.partitions}"
                if existing.partitions == shape.partitions + 1
                else f"partitions {shape.partitions}-{existing.partitions - 1}"
            )
            mismatches.append(
                TopicMismatch(
                    reason="TargetHasMorePartitions",
                    message=f"the target has {existing.partitions} partitions, the source {shape.partitions}, and "
                    f"Kafka cannot remove partitions: each source partition is still copied to the same partition "
                    f"number, so target {extra} get nothing from this sync",
                )
            )
        state = TopicState(
            source=topic,
            target=target,
            partitions=shape.partitions,
            target_partitions=existing.partitions,
            replication_factor=existing.replication_factor,
            note="; ".join(notes) or None,
            out_of_sync=mismatches or None,
        )
        return state, bare

    # -- configs -----------------------------------------------------------------------------------

    def _follow(
        self, admin: AdminClient, targets: dict[str, str], follow: dict[str, dict[str, str]], existing: dict[str, Any]
    ) -> None:
        """Set the wanted configs where the target topics differ, reset those the source dropped (if Ferry set
        them), and note what the target refuses."""
        current = read_configs(admin, [targets[t] for t in follow if targets[t] in existing])
        plans: dict[str, list[ConfigChange]] = {}
        reported: set[str] = set()
        for topic, wanted in follow.items():
            target = targets[topic]
            entries = current.get(target) if target in existing else {}  # created bare: only defaults
            if entries is None:
                continue  # not readable now: compared again next refresh
            plans[topic] = self._plan(topic, wanted, entries)
            self.followed[topic] = wanted
            if target in existing:
                reported.add(topic)  # a created topic's configs are part of its creation, not changes
        pending = {topic: plan for topic, plan in plans.items() if plan}
        for topic in plans.keys() - pending.keys():
            self.refused.pop(topic, None)  # nothing differs, so nothing is refused
        if not pending:
            return
        errors = _alter(admin, {targets[topic]: plan for topic, plan in pending.items()})
        for topic, plan in pending.items():
            target = targets[topic]
            error = errors[target]
            outcome: list[tuple[ConfigChange, KafkaError | None]]
            if error is None:
                outcome = [(change, None) for change in plan]
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # deleted meanwhile: created again next refresh
            elif error.code() not in _REFUSED:
                log.info("configs of target topic %s not changed now (%s): tried again next refresh", target, error)
                continue
            elif error.code() in _VALUE_REFUSED and len(plan) > 1:
                outcome = [(change, _alter(admin, {target: [change]})[target]) for change in plan]
            else:
                outcome = [(change, error) for change in plan]
            refused = []
            for change, err in outcome:
                if err is None:
                    if topic in reported:
                        self._record(topic, target, change.name, change.before, change.value)
                elif err.code() in _REFUSED:
                    refused.append(_refusal(change, err))
            self.refused[topic] = refused

    def _plan(self, topic: str, wanted: dict[str, str], entries: dict[str, ConfigEntry]) -> list[ConfigChange]:
        plan = []
        for name, value in sorted(wanted.items()):
            entry = entries.get(name)
            if entry is not None and entry.is_sensitive:
                continue  # its value is not shown: cannot be compared
            if entry is None or entry.value != value:
                plan.append(ConfigChange(name, value, None if entry is None else entry.value))
        for name, value in sorted(self.followed.get(topic, {}).items()):
            entry = entries.get(name)
            if name in wanted or entry is None:
                continue
            # Back to its default on the source: reset on the target only the value Ferry set there.
            if entry.source in _TOPIC_LEVEL and entry.value == value:
                plan.append(ConfigChange(name, None, value))
        return plan

    def _record(self, topic: str, target: str, attribute: str, before: str | None, after: str | None) -> None:
        change = TopicChange(
            time=utc_now(), topic=topic, target=target, attribute=attribute, before=before, after=after
        )
        self.changes.append(change)
        log.info("target topic %s follows %s: %s %s -> %s", target, topic, attribute, before, after or "(the default)")


def _create(admin: AdminClient, target: str, partitions: int, replication: int, configs: dict[str, str]) -> None:
    new = NewTopic(target, num_partitions=partitions, replication_factor=replication, config=configs)
    try:
        admin.create_topics([new])[target].result(timeout=30)
    except KafkaException as err:
        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def _alter(admin: AdminClient, plans: dict[str, list[ConfigChange]]) -> dict[str, KafkaError | None]:
    """Apply each target topic's config changes (one request for all); the error of each topic, None if none."""
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            target,
            incremental_configs=[
                ConfigEntry(
                    change.name,
                    change.value,
                    incremental_operation=AlterConfigOpType.SET
                    if change.value is not None
                    else AlterConfigOpType.DELETE,
                )
                for change in plan
            ],
        )
        for target, plan in plans.items()
    ]
    unanswered = KafkaError(KafkaError._TIMED_OUT, "no answer in time")
    try:
        futures = admin.incremental_alter_configs(resources, request_timeout=ADMIN_TIMEOUT)
    except KafkaException as err:
        return dict.fromkeys(plans, err.args[0])
    concurrent.futures.wait(list(futures.values()), timeout=ADMIN_TIMEOUT + 5)
    errors: dict[str, KafkaError | None] = {}
    for resource, future in futures.items():
        if not future.done():
            errors[resource.name] = unanswered
            continue
        try:
            future.result()
            errors[resource.name] = None
        except KafkaException as err:
            errors[resource.name] = err.args[0]
    return errors


def _refusal(change: ConfigChange, error: KafkaError) -> TopicMismatch:
    asked = f"to reset {change.name} to its default" if change.value is None else f"{change.name}={change.value}"
    kept = f"{change.name}={change.before}" if change.before is not None else f"the default {change.name}"
    return TopicMismatch(
        reason="TargetConfigRefused",
        message=f"the target refused {asked} ({error.str()}): the target topic keeps {kept}",
    )
