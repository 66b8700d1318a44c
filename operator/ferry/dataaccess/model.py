"""DataAccessTask: pull a source into a Kafka topic (SPEC §3).

The source is a tagged union: `source.type` names the kind of source and the field of the same name (in
lower case) describes it. DTS (a Tencent DTS data subscription, which serves change data as a Kafka topic
with its own consumer group and SASL account) is the first; another source type adds an enum value, a
field and a rule, without changing this one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from ferry.api.base import (
    CLUSTER_ID_DESCRIPTION,
    KAFKA_TOPIC,
    SOURCE_CLUSTER_ID,
    TARGET_CLUSTER_ID,
    TASK_NAME_DESCRIPTION,
    ApiModel,
    Delivery,
    KafkaEndpoint,
    SaslMechanism,
    SecurityProtocol,
    StartFrom,
    TaskSpec,
    TaskStatus,
    delivery_field,
    name_check,
    name_rule,
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

# Kafka's own limit for group ids is the protocol's string length; these characters are safe everywhere.
CONSUMER_GROUP = r"^[A-Za-z0-9._-]{1,255}$"
DEFAULT_DTS_MECHANISM = SaslMechanism.SCRAM_SHA_512
# DataHub's task names: letters, digits, '_', '-' and '.'. Ferry's sources give no length for them; 64 is the
# other kinds' limit, and keeps the name short enough for a printer column and a metrics label.
TASK_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
TASK_NAME_MESSAGE = "taskName must be 1-64 characters of letters, digits, '_', '-' and '.'"
DataAccessTaskName = Annotated[
    str,
    Field(max_length=64, json_schema_extra=name_rule(TASK_NAME, TASK_NAME_MESSAGE)),
    AfterValidator(name_check(TASK_NAME, TASK_NAME_MESSAGE)),
]
SAME_TOPIC_MESSAGE = (
    "spec.target names the source topic itself (same bootstrapServers and topic): records would be copied "
    "onto themselves; point spec.target at another topic or Kafka instance"
)


class SourceType(StrEnum):
    DTS = "DTS"


class DtsSource(KafkaEndpoint):
    """A DTS data subscription: a Kafka endpoint, its topic, and the consumer group created for it in DTS.

    DTS serves SASL_PLAINTEXT with SCRAM-SHA-512 by default; the account and password come from a Secret.
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!self.securityProtocol.startsWith('SASL') || has(self.credentialsSecretRef)",
                "securityProtocol SASL_PLAINTEXT and SASL_SSL need credentialsSecretRef (the DTS account and password)",
            ),
            rule(
                "self.securityProtocol.startsWith('SASL') || !has(self.saslMechanism)",
                "saslMechanism is only used with securityProtocol SASL_PLAINTEXT or SASL_SSL",
            ),
        )
    )

    security_protocol: SecurityProtocol = Field(
        SecurityProtocol.SASL_PLAINTEXT,
        description="SASL_PLAINTEXT (default, as DTS serves it), SASL_SSL, SSL or PLAINTEXT.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="SCRAM-SHA-512 (the default with SASL protocols), SCRAM-SHA-256 or PLAIN."
    )
    topic: str = Field(description="The subscription's topic.", pattern=KAFKA_TOPIC, max_length=249)
    consumer_group: str = Field(
        description="The consumer group created for this subscription in DTS; the task commits its offsets there.",
        pattern=CONSUMER_GROUP,
        max_length=255,
    )

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> DtsSource:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and self.credentials_secret_ref is None:
            raise ValueError(
                "securityProtocol SASL_PLAINTEXT and SASL_SSL need credentialsSecretRef (the DTS account and password)"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("saslMechanism is only used with securityProtocol SASL_PLAINTEXT or SASL_SSL")
        return self

    @property
    def effective_sasl_mechanism(self) -> SaslMechanism | None:
        if not self.security_protocol.startswith("SASL"):
            return None
        return self.sasl_mechanism or DEFAULT_DTS_MECHANISM


class DataSource(ApiModel):
    """Where the records come from: `type` and the field it names."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("self.type != 'DTS' || has(self.dts)", "source.type DTS needs source.dts"),
            rule("!has(self.dts) || self.type == 'DTS'", "source.dts is only used with source.type DTS"),
        )
    )

    type: SourceType = Field(description="The kind of source: DTS (a DTS data subscription).")
    dts: DtsSource | None = Field(None, description="The DTS data subscription (with type DTS).")

    @model_validator(mode="after")
    def _member_matches_type(self) -> DataSource:
        if self.type == SourceType.DTS and self.dts is None:
            raise ValueError("source.type DTS needs source.dts")
        return self

    @property
    def endpoint(self) -> DtsSource:
        """The source as a Kafka endpoint (every source type so far is read over the Kafka protocol)."""
        assert self.dts is not None
        return self.dts

    @property
    def topic(self) -> str:
        return self.endpoint.topic

    @property
    def consumer_group(self) -> str:
        return self.endpoint.consumer_group


class DataAccessTarget(KafkaEndpoint):
    """The Kafka instance and topic the records go to. The topic must exist, with the source's partition count."""

    topic: str = Field(description="Target topic.", pattern=KAFKA_TOPIC, max_length=249)


class DataAccessTaskSpec(TaskSpec):
    model_config = TaskSpec.model_config | {
        "json_schema_extra": validations(
            rule(
                "!has(self.source.dts) || !(self.source.dts.bootstrapServers == self.target.bootstrapServers "
                "&& self.source.dts.topic == self.target.topic)",
                SAME_TOPIC_MESSAGE,
            ),
        )
    }

    task_name: DataAccessTaskName | None = Field(
        None, description=TASK_NAME_DESCRIPTION.format(rule="1-64 letters, digits, '_', '-' and '.'")
    )
    source: DataSource = Field(description="Where the records come from.")
    target: DataAccessTarget = Field(description="The Kafka instance and topic they go to.")
    start_from: StartFrom = Field(
        StartFrom.LATEST,
        description="Where to start when the consumer group has no committed offset (and, if resumeWindow is "
        "set, after a longer pause): earliest or latest.",
    )
    delivery: Delivery = delivery_field()

    @model_validator(mode="after")
    def _not_onto_itself(self) -> DataAccessTaskSpec:
        source = self.source.endpoint
        if source.instance == self.target.instance and source.topic == self.target.topic:
            raise ValueError(SAME_TOPIC_MESSAGE)
        return self

    def cluster_endpoints(self) -> dict[str, KafkaEndpoint]:
        return {SOURCE_CLUSTER_ID: self.source.endpoint, TARGET_CLUSTER_ID: self.target}


class DataAccessTaskStatus(TaskStatus):
    source_partitions: int | None = Field(None, description="Partitions of the source topic.")
    target_partitions: int | None = Field(None, description="Partitions of the target topic.")
    records_per_second: float | None = Field(
        None, description="Records written to the target topic per second, lately (its throughput from this task)."
    )
    bytes_per_second: float | None = Field(None, description="Bytes written to the target topic per second, lately.")
    target_cluster_id: str | None = Field(None, description=CLUSTER_ID_DESCRIPTION.format(side="target"))


DATA_ACCESS_TASK = KindDef(
    kind="DataAccessTask",
    plural="dataaccesstasks",
    short_names=("dat", "dataaccess"),
    spec_model=DataAccessTaskSpec,
    status_model=DataAccessTaskStatus,
    description="Pulls a source (a DTS data subscription) into a Kafka topic, partition N to partition N, "
    "committing the source offsets only after the target acknowledged the records.",
    printer_columns=(
        TASK_NAME_COLUMN,
        STATE_COLUMN,
        READY_COLUMN,
        LAG_COLUMN,
        PrinterColumn("Target", ".spec.target.topic", description="Target topic."),
        PrinterColumn("Records/s", ".status.recordsPerSecond", "number", "Records written per second."),
        AGE_COLUMN,
        REASON_COLUMN,
        MESSAGE_COLUMN,
    ),
    scalable=True,
)
