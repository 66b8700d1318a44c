"""TopicSync: keep topics in sync between two Kafka instances (SPEC §4)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from ferry.api.base import (
    CLUSTER_ID_DESCRIPTION,
    KAFKA_TOPIC,
    SOURCE_CLUSTER_ID,
    TARGET_CLUSTER_ID,
    ApiModel,
    Delivery,
    KafkaEndpoint,
    StartFrom,
    TaskSpec,
    TaskStatus,
    delivery_field,
    resume_window_field,
    rule,
    validations,
)
from ferry.api.kinds import (
    AGE_COLUMN,
    LAG_COLUMN,
    MESSAGE_COLUMN,
    READY_COLUMN,
    REASON_COLUMN,
    STATE_COLUMN,
    TASK_NAME_COLUMN,
    KindDef,
    PrinterColumn,
)

MAX_TOPICS = 200
MAX_GROUPS = 200
IDENTITY = "{topic}"
# A topic config name, or a glob of them (* and ?).
CONFIG_GLOB = r"^[A-Za-z0-9._*?-]+$"
SAME_TOPIC_MESSAGE = (
    "source and target are the same Kafka instance and targetTopicName is the identity: records would be "
    "copied onto themselves; use a targetTopicName such as '{source}.{topic}'"
)


def valid_regex(regex: str | None) -> str | None:
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as err:
            raise ValueError(f"{regex!r} is not a valid regular expression: {err}") from None
    return regex


class ConsumerGroupSync(ApiModel):
    """Which consumer groups' committed offsets the sync translates to the target, and how often."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            rule("has(self.names) != has(self.pattern)", "set exactly one of names and pattern"),
            rule("!has(self.excludePattern) || has(self.pattern)", "excludePattern needs pattern"),
        )
    }

    names: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = Field(
        None,
        description=f"Consumer groups of the source to translate (at most {MAX_GROUPS}); exclusive with pattern.",
        min_length=1,
        max_length=MAX_GROUPS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    pattern: str | None = Field(
        None,
        description="Regular expression (full match) of the source's consumer groups to translate; groups that "
        "appear later are picked up, groups without committed offsets of the synced topics are left out.",
        min_length=1,
        max_length=255,
    )
    exclude_pattern: str | None = Field(
        None, description="With pattern: groups matching this (full match) are left out.", min_length=1, max_length=255
    )
    interval_seconds: int = Field(
        10, ge=1, le=3600, description="How often the groups' offsets are translated and committed (default 10)."
    )

    @field_validator("pattern", "exclude_pattern")
    @classmethod
    def _regex_valid(cls, regex: str | None) -> str | None:
        return valid_regex(regex)

    @model_validator(mode="after")
    def _coherent(self) -> ConsumerGroupSync:
        if (self.names is None) == (self.pattern is None):
            raise ValueError("set exactly one of names and pattern")
        if self.exclude_pattern is not None and self.pattern is None:
            raise ValueError("excludePattern needs pattern")
        return self

    def selects(self, group: str) -> bool:
        if self.names is not None:
            return group in self.names
        assert self.pattern is not None
        if not re.fullmatch(self.pattern, group):
            return False
        return self.exclude_pattern is None or not re.fullmatch(self.exclude_pattern, group)


class TopicSyncSpec(TaskSpec):
    model_config = TaskSpec.model_config | {
        "json_schema_extra": validations(
            rule("has(self.topics) != has(self.topicPattern)", "set exactly one of topics and topicPattern"),
            rule("!has(self.excludePattern) || has(self.topicPattern)", "excludePattern needs topicPattern"),
            rule(
                "!(self.source.bootstrapServers == self.target.bootstrapServers && self.targetTopicName == '{topic}')",
                SAME_TOPIC_MESSAGE,
            ),
        )
    }

    source: KafkaEndpoint = Field(description="The instance records are read from.")
    target: KafkaEndpoint = Field(description="The instance records are written to.")
    topics: list[Annotated[str, Field(pattern=KAFKA_TOPIC, max_length=249)]] | None = Field(
        None,
        description=f"Topics to sync (at most {MAX_TOPICS}); exclusive with topicPattern.",
        min_length=1,
        max_length=MAX_TOPICS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    topic_pattern: str | None = Field(
        None,
        description="Regular expression (full match) of the topics to sync; topics created later are picked up.",
        min_length=1,
        max_length=255,
    )
    exclude_pattern: str | None = Field(
        None, description="Topics matching this (full match) are left out.", min_length=1, max_length=255
    )
    target_topic_name: str = Field(
        IDENTITY,
        description="Name of each target topic: {topic} is the source topic, {source} the source instanceId "
        "(default: the same name).",
        max_length=255,
        pattern=r"^[A-Za-z0-9._{}-]*\{topic\}[A-Za-z0-9._{}-]*$",
    )
    start_from: StartFrom = Field(StartFrom.LATEST, description="Where a new sync starts: earliest or latest.")
    delivery: Delivery = delivery_field()
    resume_window: str | None = resume_window_field(
        "24h",
        "After a pause shorter than this (default 24h) the sync resumes from its saved offsets; after a longer "
        "one it starts from startFrom in a new consumer group.",
    )
    create_topics: bool = Field(True, description="Create missing target topics like the source ones.")
    sync_topic_configs: bool = Field(
        True,
        description="Give the target topics the source topics' non-default, writable configs, on creation and "
        "then on every topic refresh (a changed config follows; one the source resets to its default is reset "
        "on the target if Ferry had set it), except the excluded ones (excludedTopicConfigs).",
    )
    excluded_topic_configs: list[Annotated[str, Field(pattern=CONFIG_GLOB, max_length=255)]] | None = Field(
        None,
        description="Topic configs never copied to the target topics, added to the built-in exclusions: names, "
        "or globs where * matches any characters (e.g. local.retention.*). Always excluded: min.insync.replicas "
        "(it depends on the target's broker count and replication factor: the source's value can leave a target "
        "topic unwritable or less safe), unclean.leader.election.enable (the target's durability choice), "
        "message.timestamp.type and message.timestamp.difference.max.ms, .before.max.ms and .after.max.ms "
        "(copied records keep their source timestamps, which the target must neither replace nor refuse as "
        "too old), leader.replication.throttled.replicas, follower.replication.throttled.replicas and "
        "confluent.placement.constraints (they name the source's brokers).",
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    consumer_groups: ConsumerGroupSync | None = Field(
        None,
        description="Consumer groups of the source whose committed offsets are translated exactly to the target "
        "and committed there while the group has no active members on the target, never moving it backwards "
        "(status.consumerGroups, condition FailoverReady). Unset (the default): none.",
    )

    @field_validator("topic_pattern", "exclude_pattern")
    @classmethod
    def _regex_valid(cls, regex: str | None) -> str | None:
        return valid_regex(regex)

    @model_validator(mode="after")
    def _coherent(self) -> TopicSyncSpec:
        if (self.topics is None) == (self.topic_pattern is None):
            raise ValueError("set exactly one of topics and topicPattern")
        if self.exclude_pattern is not None and self.topic_pattern is None:
            raise ValueError("excludePattern needs topicPattern")
        if self.source.instance == self.target.instance and self.target_topic_name == IDENTITY:
            raise ValueError(SAME_TOPIC_MESSAGE)
        return self

    def cluster_endpoints(self) -> dict[str, KafkaEndpoint]:
        return {SOURCE_CLUSTER_ID: self.source, TARGET_CLUSTER_ID: self.target}

    def target_topic(self, topic: str) -> str:
        return self.target_topic_name.replace("{source}", self.source.instance_slug).replace("{topic}", topic)

    def selects(self, topic: str) -> bool:
        if topic.startswith("__"):
            return False
        if self.topics is not None:
            return topic in self.topics
        assert self.topic_pattern is not None
        if not re.fullmatch(self.topic_pattern, topic):
            return False
        return self.exclude_pattern is None or not re.fullmatch(self.exclude_pattern, topic)


class TopicMismatch(ApiModel):
    """A difference between a source topic and its target topic that Ferry cannot remove."""

    reason: str = Field(description="TargetPartitionsNotAdded, TargetHasMorePartitions or TargetConfigRefused.")
    message: str = Field(description="What differs, why, and what it means for the copy.")


class TopicChange(ApiModel):
    """A change Ferry made to a target topic so that it follows its source topic."""

    time: str = Field(description="When the worker made it.")
    topic: str = Field(description="The source topic.")
    target: str = Field(description="The target topic changed.")
    attribute: str = Field(description="partitions, or the name of the topic config.")
    before: str | None = Field(None, description="The target topic's value before (a config: its default too).")
    after: str | None = Field(None, description="The value after; unset: the config was reset to the target's default.")


class TopicState(ApiModel):
    """One synced topic as the worker found and set it up."""

    source: str
    target: str
    partitions: int = Field(description="Partitions of the source topic.")
    target_partitions: int = Field(description="Partitions of the target topic.")
    replication_factor: int = Field(description="Replication factor of the target topic.")
    note: str | None = Field(None, description="What could not be replicated as asked, and why.")
    out_of_sync: list[TopicMismatch] | None = Field(
        None,
        description="How the target topic differs from its source topic where Ferry cannot make them match "
        "(the TargetTopicsInSync condition sums these up).",
    )


class ConsumerGroupState(ApiModel):
    """One consumer group the sync translates: how far its offsets are translated to the target."""

    group: str
    state: str = Field(
        description="Ready (every partition's offset translated and committed on the target), NotReady (see "
        "message), ActiveOnTarget (the group has members on the target: its offsets there are left alone), "
        "NoOffsets (a named group without committed offsets of the synced topics) or Failed (see message)."
    )
    ready: bool = Field(description="The application can move to the target in this group and read on exactly.")
    translated_lag: int | None = Field(
        None,
        description="Records the group would still read on the target from its translated offsets (the target's "
        "end offsets minus them, over the partitions translated).",
    )
    partitions: int | None = Field(
        None, description="Partitions of the synced topics the group has committed offsets for on the source."
    )
    ready_partitions: int | None = Field(None, description="Of those, the ones translated and committed.")
    message: str | None = Field(None, description="Why the group is not ready.")


class TopicSyncStatus(TaskStatus):
    topic_count: int | None = Field(None, description="Topics being synced.")
    topics: list[TopicState] | None = Field(None, description="Each synced topic (at most 200 listed).")
    records_per_second: float | None = Field(None, description="Records written to the target per second, lately.")
    bytes_per_second: float | None = Field(None, description="Bytes written to the target per second, lately.")
    loop_records_skipped: int | None = Field(
        None, description="Records not copied because they were first written to the target instance."
    )
    target_cluster_id: str | None = Field(None, description=CLUSTER_ID_DESCRIPTION.format(side="target"))
    consumer_groups: list[ConsumerGroupState] | None = Field(
        None,
        description="With spec.consumerGroups: each selected consumer group's translation to the target (at most "
        "200 listed); the FailoverReady condition sums them up.",
    )
    consumer_groups_error: str | None = Field(
        None, description="Why the workers could not check the consumer groups lately, if they could not."
    )
    topic_changes: list[TopicChange] | None = Field(
        None,
        description="The latest changes made to target topics to follow their source topics (partitions grown, "
        "configs set or reset), oldest first, at most 20; each batch is also a TargetTopicUpdated Event.",
    )


TOPIC_SYNC = KindDef(
    kind="TopicSync",
    plural="topicsyncs",
    short_names=("ts", "tsync"),
    spec_model=TopicSyncSpec,
    status_model=TopicSyncStatus,
    description="Replicates topics from one Kafka instance to another, keeping partitions, keys, headers "
    "and timestamps, and never copying a record back to the instance it came from.",
    printer_columns=(
        TASK_NAME_COLUMN,
        STATE_COLUMN,
        READY_COLUMN,
        LAG_COLUMN,
        PrinterColumn("Topics", ".status.topicCount", "integer", "Topics being synced."),
        AGE_COLUMN,
        REASON_COLUMN,
        MESSAGE_COLUMN,
    ),
    scalable=True,
)
