"""ObsDumpTask: dump Kafka topics into S3-compatible object storage (SPEC §5)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
_JSONL_SEPARATOR = "with format jsonl the recordSeparator must be made of control characters such as a newline"
_RAW_KEYS = "format raw writes the values only: leave storeKeys out, or choose format jsonl or parquet"
TASKS_PER_INSTANCE = 18
MAX_OBJECT_BYTES = 5 * 1024**4  # S3's largest object


class TimeDirectoryFormat(StrEnum):
    """How many time levels (from the first record's timestamp, in timeZone) go under the directory."""

    YEAR = "yyyy"
    MONTH = "yyyy/MM"
    DAY = "yyyy/MM/dd"
    HOUR = "yyyy/MM/dd/HH"


class TimeDirectoryLayout(StrEnum):
    """How the time levels are spelled: `2026/11/26/13`, or Hive-style `year=2026/month=11/day=26/hour=13`."""

    SLASHES = "slashes"
    HIVE = "hive"


class ObjectFormat(StrEnum):
    """What an object holds: the values (.bin), one JSON line per record (.jsonl) or one Parquet row per record."""

    RAW = "raw"
    JSONL = "jsonl"
    PARQUET = "parquet"


class Compression(StrEnum):
    """How each object is compressed: whole, as one gzip member or one zstd frame; Parquet's column chunks inside."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def _applied_by_the_model(schema: dict[str, Any]) -> None:
    """No default in the CRD for a field added to a released kind: the API server would write it into the tasks
    stored before, whose accepted spec (ferry.control.accepted) would then differ from their spec as a change
    of spec.target would. The model applies the default instead, and the description states it."""
    schema.pop("default", None)


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
        description="Bucket the objects go to; it must exist, unless createBucket is true.",
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
        "yyyy, yyyy/MM, yyyy/MM/dd or yyyy/MM/dd/HH (in timeZone).",
    )
    time_directory_layout: TimeDirectoryLayout = Field(
        TimeDirectoryLayout.SLASHES,
        description="slashes: the levels as values, 2026/11/26/13; hive: as key=value directories, "
        "year=2026/month=11/day=26/hour=13 (the levels timeDirectoryFormat chooses). Default slashes.",
        json_schema_extra=_applied_by_the_model,
    )
    time_zone: str = Field(
        "UTC",
        description="IANA time zone the time directories are in, e.g. UTC (the default), Asia/Shanghai, Europe/Berlin.",
        pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
        max_length=64,
        json_schema_extra=_applied_by_the_model,
    )
    format: ObjectFormat | None = Field(
        None,
        description="raw: each record is its value bytes (.bin); jsonl: one JSON object per record with offset, "
        "timestamp, key, value and headers (.jsonl); parquet: one row per record with the same fields "
        "(.parquet; docs/obsdump.md, Parquet). Unset (default): storeKeys chooses, false raw, true jsonl.",
    )
    compression: Compression = Field(
        Compression.NONE,
        description="none (the default), gzip or zstd: each object is compressed whole while it is uploaded, "
        "and its name ends in .gz or .zst (e.g. .jsonl.gz); a parquet object's column chunks are compressed "
        "instead, and its name ends in .parquet.",
        json_schema_extra=_applied_by_the_model,
    )
    create_bucket: bool = Field(
        False,
        description="true: a worker that finds the bucket missing creates it (in region); the keys must be "
        "allowed to, or the task reports BucketCreationDenied. false (the default): a missing bucket is "
        "BucketNotFound.",
        json_schema_extra=_applied_by_the_model,
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
        description="Where format is unset: false, each record is its value bytes (format raw); true, each "
        "record is one JSON object with offset, timestamp, key, value and headers (format jsonl; docs/obsdump.md, "
        "Objects).",
    )
    path_style: bool = Field(
        True, description="Address the bucket in the path (MinIO, SeaweedFS, Ceph) rather than the host name."
    )
    credentials_secret_ref: ObjectStoreCredentialsRef = Field(
        description="Secret holding the access key and secret key."
    )

    @field_validator("time_zone")
    @classmethod
    def _time_zone_known(cls, name: str) -> str:
        # The system's zoneinfo files or, where an image has none, the pinned tzdata package.
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "America"
            raise ValueError(
                f"timeZone {name!r} is not a known IANA time zone: use a name such as UTC, Asia/Shanghai or "
                "Europe/Berlin"
            ) from None
        return name

    @property
    def object_format(self) -> ObjectFormat:
        """`format`, or what storeKeys chooses when it is unset."""
        if self.format is not None:
            return self.format
        return ObjectFormat.JSONL if self.store_keys else ObjectFormat.RAW


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
            rule(
                "!has(self.target.format) || self.target.format != 'jsonl' "
                "|| self.target.recordSeparator.matches('^[\\\\x00-\\\\x1f]+$')",
                _JSONL_SEPARATOR,
            ),
            rule("!has(self.target.format) || self.target.format != 'raw' || !self.target.storeKeys", _RAW_KEYS),
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
    max_records_per_object: int | None = Field(
        None,
        ge=1,
        description="An object is closed as soon as it holds this many records (also within a period); "
        "the next record starts the next object. Unset (default): no record limit.",
    )
    max_bytes_per_object: int | None = Field(
        None,
        ge=1,
        le=MAX_OBJECT_BYTES,
        description="An object is closed before a record would take it over this many bytes, counted as "
        "encoded before compression (records and separators); a record larger than this is an object of its "
        "own. Unset (default): no size limit.",
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
        control_separator = re.fullmatch(r"[\x00-\x1f]+", self.target.record_separator)
        if self.target.store_keys and not control_separator:
            raise ValueError("with storeKeys the recordSeparator must be made of control characters such as a newline")
        if self.target.format is ObjectFormat.JSONL and not control_separator:
            raise ValueError(_JSONL_SEPARATOR)
        if self.target.format is ObjectFormat.RAW and self.target.store_keys:
            raise ValueError(_RAW_KEYS)
        return self

    def cluster_endpoints(self) -> dict[str, KafkaEndpoint]:
        return {SOURCE_CLUSTER_ID: self.source}


class ObsDumpStatus(TaskStatus):
    last_dump_time: str | None = Field(None, description="When the last object was written.")
    objects_written: int | None = Field(None, description="Objects written since the worker started.")
    last_object_key: str | None = None
    records_containing_separator: int | None = Field(
        None,
        description="Format raw (values only): records written since the workers started whose value contains "
        "the recordSeparator, so that they read back as more than one record. Unset with the other formats.",
    )


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
