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
    KafkaEndpoint,
    StartFrom,
    TaskSpec,
    TaskStatus,
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
IDENTITY = "{topic}"
SAME_TOPIC_MESSAGE = (
    "source and target are the same Kafka instance and targetTopicName is the identity: records would be "
    "copied onto themselves; use a targetTopicName such as '{source}.{topic}'"
)


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
    resume_window: str | None = resume_window_field(
        "24h",
        "After a pause shorter than this (default 24h) the sync resumes from its saved offsets; after a longer "
        "one it starts from startFrom in a new consumer group.",
    )
    create_topics: bool = Field(True, description="Create missing target topics like the source ones.")
    sync_topic_configs: bool = Field(True, description="Copy the source topics' non-default configs on creation.")

    @field_validator("topic_pattern", "exclude_pattern")
    @classmethod
    def _regex_valid(cls, regex: str | None) -> str | None:
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as err:
                raise ValueError(f"{regex!r} is not a valid regular expression: {err}") from None
        return regex

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


class TopicState(ApiModel):
    """One synced topic as the worker found and set it up."""

    source: str
    target: str
    partitions: int = Field(description="Partitions of the source topic.")
    target_partitions: int = Field(description="Partitions of the target topic.")
    replication_factor: int = Field(description="Replication factor of the target topic.")
    note: str | None = Field(None, description="What could not be replicated as asked, and why.")


class TopicSyncStatus(TaskStatus):
    topic_count: int | None = Field(None, description="Topics being synced.")
    topics: list[TopicState] | None = Field(None, description="Each synced topic (at most 200 listed).")
    records_per_second: float | None = Field(None, description="Records written to the target per second, lately.")
    bytes_per_second: float | None = Field(None, description="Bytes written to the target per second, lately.")
    loop_records_skipped: int | None = Field(
        None, description="Records not copied because they were first written to the target instance."
    )
    target_cluster_id: str | None = Field(None, description=CLUSTER_ID_DESCRIPTION.format(side="target"))


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
