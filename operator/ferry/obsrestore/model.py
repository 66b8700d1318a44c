"""ObsRestoreTask: produce the records of an ObsDumpTask's dump (objects in an S3-compatible bucket) back into
Kafka, once, as a Kubernetes Job (docs/obsrestore.md).

The spec says where the dump is (`source`: the bucket and the dump's `directory`), what of it to restore
(`topics`, `partitions`, `from`/`to`) and where to (`target`: a Kafka endpoint, optionally another topic name).
The status says how far it got: `resumePoint`, written by the worker after each acknowledged part of the work,
from which a restarted worker continues.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator

from ferry.api.base import (
    KAFKA_TOPIC,
    TARGET_CLUSTER_ID,
    ApiModel,
    KafkaEndpoint,
    TaskSpec,
    TaskStatus,
    rule,
    validations,
)
from ferry.api.kinds import (
    AGE_COLUMN,
    MESSAGE_COLUMN,
    REASON_COLUMN,
    TASK_NAME_COLUMN,
    KindDef,
    PrinterColumn,
)
from ferry.obsdump.model import ObjectStoreCredentialsRef

KIND = "ObsRestoreTask"
MAX_TOPICS = 20
MAX_PARTITIONS = 1000


class RestorePhase(StrEnum):
    """`status.state` of an ObsRestoreTask: the five states of every kind, and Succeeded once it is done."""

    UNASSIGNED = "Unassigned"
    RUNNING = "Running"
    PAUSED = "Paused"
    FAILED = "Failed"
    TERMINATING = "Terminating"
    SUCCEEDED = "Succeeded"


def _spec_schema(schema: dict[str, Any]) -> None:
    """The spec's CRD schema: its cross-field rules, and without `resumeWindow`, a TaskSpec field a one-shot Job has
    no use for (the API server prunes it; the model refuses it)."""
    schema["properties"].pop("resumeWindow", None)
    schema.update(
        validations(
            rule(
                "!has(self.target.topic) || size(self.topics) == 1",
                "target.topic renames one topic: list exactly one topic in topics",
            ),
            rule(
                "!has(self.from) || !has(self.to) || timestamp(self.from) < timestamp(self.to)",
                "from must be before to",
            ),
        )
    )


class ObsRestoreSource(ApiModel):
    """The bucket holding the dump, and how the dump was written (as its ObsDumpTask's target said)."""

    endpoint: str = Field(
        description="URL of the S3-compatible endpoint, e.g. https://obs.eu-west-101.myhuaweicloud.com.",
        pattern=r"^https?://[^\s/]+(/.*)?$",
        max_length=2048,
    )
    region: str = Field("us-east-1", description="Region sent in signatures.", pattern=r"^[a-z0-9-]{1,64}$")
    bucket: str = Field(description="Bucket holding the dump.", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    directory: str = Field(
        "",
        description="The dump's prefix under the bucket (its ObsDumpTask's target.directory), slash-separated, "
        "without leading or trailing slash. Objects are looked for at {directory}/{time levels}/{topic}+{partition}+"
        "{startOffset}.{ext}.",
        pattern=r"^([A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*)?$",
        max_length=512,
    )
    time_zone: str = Field(
        "UTC",
        description="The dump's target.timeZone (default UTC): the time zone its time directories are in. Used "
        "with from/to to skip objects that cannot hold records of the range.",
        pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
        max_length=64,
    )
    record_separator: str = Field(
        "\n",
        description="The dump's target.recordSeparator (default newline): what ends each record in the objects.",
        min_length=1,
        max_length=8,
    )
    path_style: bool = Field(
        True, description="Address the bucket in the path (MinIO, SeaweedFS, Ceph) rather than the host name."
    )
    credentials_secret_ref: ObjectStoreCredentialsRef = Field(
        description="Secret holding the access key and secret key (read and list permissions are enough)."
    )

    @field_validator("time_zone")
    @classmethod
    def _time_zone_known(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"timeZone {name!r} is not a known IANA time zone: use a name such as UTC, Asia/Shanghai or "
                "Europe/Berlin"
            ) from None
        return name


class ObsRestoreTarget(KafkaEndpoint):
    """The Kafka instance the records are produced to, and optionally the topic name to use."""

    topic: str | None = Field(
        None,
        description="Restore into this topic instead of the dumped topic's name (only with one topic in topics). "
        "Unset (the default): each dumped topic is restored into a topic of the same name.",
        pattern=KAFKA_TOPIC,
        max_length=249,
    )
    create_topics: bool = Field(
        False,
        description="true: a missing target topic is created with as many partitions as the dump's highest "
        "partition number + 1 and the brokers' default replication factor. false (the default): a missing target "
        "topic is TargetTopicNotFound.",
    )


class ObsRestoreTaskSpec(TaskSpec):
    model_config = ConfigDict(**TaskSpec.model_config, json_schema_extra=_spec_schema)

    replicas: int = Field(
        1,
        ge=1,
        le=1,
        description="Always 1: a restore runs as one Job pod, which produces each partition's records in order.",
    )
    source: ObsRestoreSource = Field(description="The bucket and prefix of the dump to restore.")
    topics: list[Annotated[str, Field(pattern=KAFKA_TOPIC, max_length=249)]] = Field(
        description=f"The dumped topics to restore (at most {MAX_TOPICS}); each must have objects in the dump.",
        min_length=1,
        max_length=MAX_TOPICS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    partitions: list[Annotated[int, Field(ge=0, le=1_000_000)]] | None = Field(
        None,
        description="Restore only these partition numbers of each topic. Unset (the default): every partition "
        "the dump has.",
        min_length=1,
        max_length=MAX_PARTITIONS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    from_: AwareDatetime | None = Field(
        None,
        alias="from",
        description="RFC 3339 time, e.g. 2026-11-26T13:00:00Z: restore only records whose Kafka timestamp is at or "
        "after it. Values-only (.bin) objects have no timestamps: they are restored whole when their time "
        "directory may hold records of the range (docs/obsrestore.md, Selecting by time).",
    )
    to: AwareDatetime | None = Field(
        None,
        description="RFC 3339 time: restore only records whose Kafka timestamp is before it (exclusive).",
    )
    target: ObsRestoreTarget = Field(description="Where the records go.")

    @field_validator("topics")
    @classmethod
    def _topics_unique(cls, topics: list[str]) -> list[str]:
        if len(set(topics)) != len(topics):
            raise ValueError("topics lists a topic twice")
        return topics

    @field_validator("partitions")
    @classmethod
    def _partitions_unique(cls, partitions: list[int] | None) -> list[int] | None:
        if partitions is not None and len(set(partitions)) != len(partitions):
            raise ValueError("partitions lists a partition twice")
        return partitions

    @model_validator(mode="after")
    def _consistent(self) -> ObsRestoreTaskSpec:
        if self.resume_window is not None:
            raise ValueError("resumeWindow has no meaning for an ObsRestoreTask: it resumes from status.resumePoint")
        if self.target.topic is not None and len(self.topics) != 1:
            raise ValueError("target.topic renames one topic: list exactly one topic in topics")
        if self.from_ is not None and self.to is not None and self.from_ >= self.to:
            raise ValueError("from must be before to")
        return self

    def target_topic(self, dumped: str) -> str:
        """The topic a dumped topic's records go to."""
        return self.target.topic or dumped

    def cluster_endpoints(self) -> dict[str, KafkaEndpoint]:
        return {TARGET_CLUSTER_ID: self.target}


class PartitionResumePoint(ApiModel):
    """How far one dumped topic-partition is restored: objects are restored in offset order, and the records of
    each in object order."""

    topic: str = Field(description="The dumped topic.")
    partition: int
    object_key: str = Field(description="The object being restored, or the last one restored.")
    start_offset: int = Field(description="The object's start offset (from its name): objects before it are done.")
    records_done: int = Field(
        description="Of the object's records, how many are done (acknowledged by the target, or passed over as "
        "outside from/to or already restored); a restarted worker skips them."
    )
    complete: bool = Field(description="The whole object is done.")
    last_offset: int | None = Field(
        None,
        description="The source offset of the last record done (formats that store offsets): records at or "
        "before it are not produced again, also from objects that overlap.",
    )


class ResumePoint(ApiModel):
    """Where a restarted restore continues: written by the worker after the target acknowledged each part of the
    work (each object, and every few thousand records within one)."""

    partitions: dict[str, PartitionResumePoint] = Field(
        default_factory=dict,
        description="Per dumped topic-partition, keyed topic+partition (as in the object names).",
        json_schema_extra={"maxProperties": 20 * MAX_PARTITIONS},
    )
    records: int = Field(0, description="Records restored (acknowledged by the target), each counted once.")
    bytes: int = Field(0, description="Their payload bytes (key plus value).")
    skipped: int = Field(0, description="Records passed over: outside from/to, or already restored (overlaps).")
    objects: int = Field(0, description="Objects completely restored.")
    updated_at: str | None = Field(None, description="When the worker saved it.")


class ObsRestoreStatus(TaskStatus):
    state: RestorePhase | None = Field(  # type: ignore[assignment]
        None, description="Unassigned, Running, Paused, Failed, Terminating, or Succeeded once everything is restored."
    )
    resume_point: ResumePoint | None = Field(
        None, description="How far the restore got; a restarted or resumed restore continues from here."
    )
    objects_total: int | None = Field(None, description="Objects of the dump the selection restores.")
    objects_restored: int | None = Field(None, description="Of them, those completely restored.")
    records_skipped: int | None = Field(None, description="Records passed over (outside from/to, or overlaps).")
    values_only_objects: int | None = Field(
        None,
        description="Objects in the values-only format (.bin): only their values can be restored, without keys, "
        "headers or timestamps (the target's time of the restore), to the partition their names give.",
    )
    current_object: str | None = Field(None, description="The object being restored.")
    target_topics: dict[str, str] | None = Field(
        None, description="Each dumped topic and the target topic its records go to."
    )
    target_cluster_id: str | None = Field(None, description="The cluster id the target's brokers reported.")
    job_name: str | None = Field(None, description="The Job running the restore.")
    start_time: str | None = Field(None, description="When the operator first started the restore.")
    completion_time: str | None = Field(None, description="When the restore succeeded.")


STATE_COLUMN = PrinterColumn(
    "State", ".status.state", description="Unassigned, Running, Paused, Failed, Terminating or Succeeded."
)

OBS_RESTORE_TASK = KindDef(
    kind=KIND,
    plural="obsrestoretasks",
    short_names=("ort", "obsrestore"),
    spec_model=ObsRestoreTaskSpec,
    status_model=ObsRestoreStatus,
    description="Restores an ObsDumpTask's dump from an S3-compatible bucket into Kafka, once, as a Job: same "
    "partition, key, value, headers and timestamp, in offset order per partition, resuming where it stopped.",
    printer_columns=(
        TASK_NAME_COLUMN,
        STATE_COLUMN,
        PrinterColumn("Objects", ".status.objectsTotal", "integer", "Objects of the dump to restore."),
        PrinterColumn("Restored", ".status.objectsRestored", "integer", "Objects completely restored."),
        PrinterColumn("Records", ".status.resumePoint.records", "integer", "Records restored."),
        AGE_COLUMN,
        REASON_COLUMN,
        MESSAGE_COLUMN,
    ),
    mutable_fields=frozenset({"state"}),
)
