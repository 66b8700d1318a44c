"""ObsDumpTask: dump Kafka topics into S3-compatible object storage (SPEC §5)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from ferry.api.base import (
    K8S_NAME,
    KAFKA_TOPIC,
    SECRET_KEY,
    SOURCE_CLUSTER_ID,
    ApiModel,
    KafkaEndpoint,
    StartFrom,
    TaskSpec,
    TaskStatus,
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

MATCH_EVERYTHING = (".*", "^.*", ".*$", "^.*$", ".+", "^.+", ".+$", "^.+$", "(.*)", "^(.*)$")
# Topic names that differ in every way Kafka allows (its characters, 1 to 249 of them): a pattern that fully
# matches all of them matches every topic, however it is written ("(?s).*", "[\\s\\S]*", ".{0,}", ...).
_PROBE_TOPICS = ("a", "Z", "0", "_", "-", ".", "orders", "__consumer_offsets", "x.y-z_0", "q" * 249, "9-.Ab_")


def matches_every_topic(regex: str) -> bool:
    """Whether the pattern (as the workers apply it, a full match) would select any topic at all."""
    try:
        pattern = re.compile(regex)
    except re.error:
        return False
    return all(pattern.fullmatch(topic) for topic in _PROBE_TOPICS)


MAX_TOPICS = 20
TASKS_PER_INSTANCE = 18


class TimeDirectoryFormat(StrEnum):
    """How many time levels (from the first record's timestamp, UTC) go under the directory."""

    YEAR = "yyyy"
    MONTH = "yyyy/MM"
    DAY = "yyyy/MM/dd"
    HOUR = "yyyy/MM/dd/HH"


class ObjectStoreCredentialsRef(ApiModel):
    """A Secret in the task's namespace holding the object store's access key and secret key."""

    name: str = Field(description="Name of the Secret.", pattern=K8S_NAME, max_length=253)
    access_key_key: str = Field("accessKey", description="Key of the access key ID.", pattern=SECRET_KEY)
    secret_key_key: str = Field("secretKey", description="Key of the secret access key.", pattern=SECRET_KEY)


class ObsDumpTarget(ApiModel):
    endpoint: str = Field(
        description="URL of the S3-compatible endpoint, e.g. https://obs.eu-west-101.myhuaweicloud.com.",
        pattern=r"^https?://[^\s/]+(/.*)?$",
        max_length=2048,
    )
    region: str = Field("us-east-1", description="Region sent in signatures.", pattern=r"^[a-z0-9-]{1,64}$")
    bucket: str = Field(
        description="Bucket the objects go to; it must exist.",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
    )
    directory: str = Field(
        "",
        description="Slash-separated prefix under the bucket, without leading or trailing slash.",
        pattern=r"^([A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*)?$",
        max_length=512,
    )
    time_directory_format: TimeDirectoryFormat = Field(
        TimeDirectoryFormat.HOUR,
        description="Time levels under the directory, from the first record of each object: "
        "yyyy, yyyy/MM, yyyy/MM/dd or yyyy/MM/dd/HH (UTC).",
    )
    record_separator: str = Field(
        "\n",
        description="Written after every record. With storeKeys it must be made of control characters "
        "(default newline), so that it cannot occur inside the JSON of a record.",
        min_length=1,
        max_length=8,
    )
    store_keys: bool = Field(
        False,
        description="false: each record is its value bytes. true: each record is one JSON object with "
        "offset, timestamp, key, value and headers (the format: docs/obsdump.md, Objects).",
    )
    path_style: bool = Field(
        True, description="Address the bucket in the path (MinIO, SeaweedFS, Ceph) rather than the host name."
    )
    credentials_secret_ref: ObjectStoreCredentialsRef = Field(
        description="Secret holding the access key and secret key."
    )


class ObsDumpTaskSpec(TaskSpec):
    model_config = TaskSpec.model_config | {
        "json_schema_extra": validations(
            rule(
                "has(self.topics) != has(self.topicRegex)",
                "set exactly one of topics and topicRegex",
            ),
            rule(
                "!self.target.storeKeys || self.target.recordSeparator.matches('^[\\\\x00-\\\\x1f]+$')",
                "with storeKeys the recordSeparator must be made of control characters such as a newline",
            ),
        )
    }

    source: KafkaEndpoint = Field(description="The Kafka instance whose topics are dumped.")
    topics: list[Annotated[str, Field(pattern=KAFKA_TOPIC, max_length=249)]] | None = Field(
        None,
        description=f"Topics to dump (at most {MAX_TOPICS}); exclusive with topicRegex.",
        min_length=1,
        max_length=MAX_TOPICS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    topic_regex: str | None = Field(
        None,
        description="Regular expression (full match) of the topics to dump; new matching topics are "
        "picked up periodically. Match-everything patterns such as .* are refused.",
        min_length=1,
        max_length=255,
        json_schema_extra=validations(
            rule(
                "!(self in [" + ", ".join(f"'{p}'" for p in MATCH_EVERYTHING) + "])",
                "topicRegex must not match every topic: list topics or narrow the pattern",
            )
        ),
    )
    start_from: StartFrom = Field(
        StartFrom.LATEST, description="Where a new task starts: earliest or latest (default) offset."
    )
    dump_period_seconds: int = Field(
        300,
        ge=1,
        le=86400,
        description="Each topic-partition's buffered records are written as one object every this many "
        "seconds of wall-clock time; a period without records writes nothing.",
    )
    target: ObsDumpTarget = Field(description="Where the objects go.")

    @field_validator("topics")
    @classmethod
    def _topics_valid(cls, topics: list[str] | None) -> list[str] | None:
        if topics is not None:
            bad = [t for t in topics if not re.fullmatch(KAFKA_TOPIC, t)]
            if bad:
                raise ValueError(f"invalid topic names {bad}: use letters, digits, '.', '_' and '-'")
            if len(set(topics)) != len(topics):
                raise ValueError("topics lists a topic twice")
        return topics

    @field_validator("topic_regex")
    @classmethod
    def _regex_valid(cls, regex: str | None) -> str | None:
        if regex is None:
            return None
        try:
            re.compile(regex)
        except re.error as err:
            raise ValueError(f"topicRegex {regex!r} is not a valid regular expression: {err}") from None
        if regex in MATCH_EVERYTHING or matches_every_topic(regex):
            raise ValueError("topicRegex must not match every topic: list topics or narrow the pattern")
        return regex

    @model_validator(mode="after")
    def _one_topic_selector(self) -> ObsDumpTaskSpec:
        if (self.topics is None) == (self.topic_regex is None):
            raise ValueError("set exactly one of topics and topicRegex")
        if self.target.store_keys and not re.fullmatch(r"[\x00-\x1f]+", self.target.record_separator):
            raise ValueError("with storeKeys the recordSeparator must be made of control characters such as a newline")
        return self

    def cluster_endpoints(self) -> dict[str, KafkaEndpoint]:
        return {SOURCE_CLUSTER_ID: self.source}


class ObsDumpStatus(TaskStatus):
    last_dump_time: str | None = Field(None, description="When the last object was written.")
    objects_written: int | None = Field(None, description="Objects written since the worker started.")
    last_object_key: str | None = None


OBS_DUMP_TASK = KindDef(
    kind="ObsDumpTask",
    plural="obsdumptasks",
    short_names=("odt", "obsdump"),
    spec_model=ObsDumpTaskSpec,
    status_model=ObsDumpStatus,
    description="Dumps Kafka topics into an S3-compatible bucket, one object per topic-partition and period.",
    printer_columns=(
        TASK_NAME_COLUMN,
        STATE_COLUMN,
        READY_COLUMN,
        PrinterColumn("Last Dump", ".status.lastDumpTime", "date", "When the last object was written."),
        LAG_COLUMN,
        AGE_COLUMN,
        REASON_COLUMN,
        MESSAGE_COLUMN,
    ),
    mutable_fields=frozenset({"state"}),
)
