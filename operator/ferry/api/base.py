"""Types shared by every kind: Kafka endpoints, secret references, worker settings, status."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel


def rule(rule: str, message: str, **extra: str) -> dict[str, str]:
    """One CEL validation rule as the CRD's `x-kubernetes-validations` carries it."""
    return {"rule": rule, "message": message, **extra}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error (typos must not pass)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class TaskState(StrEnum):
    """What the user asks for in `spec.state`."""

    RUNNING = "Running"
    PAUSED = "Paused"


class Phase(StrEnum):
    """What `status.state` reports."""

    UNASSIGNED = "Unassigned"
    RUNNING = "Running"
    PAUSED = "Paused"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class StartFrom(StrEnum):
    EARLIEST = "earliest"
    LATEST = "latest"


class Delivery(StrEnum):
    """How a Kafka-to-Kafka copy delivers each record to the target (`spec.delivery`)."""

    AT_LEAST_ONCE = "atLeastOnce"
    EXACTLY_ONCE = "exactlyOnce"


DELIVERY_DESCRIPTION = (
    "atLeastOnce (the default) or exactlyOnce. atLeastOnce: the source offsets are committed once the target "
    "acknowledged the records, so a worker stopped in between (killed, evicted) writes that batch again: duplicates, "
    "never a loss. exactlyOnce: each batch is one Kafka transaction on the target holding its records and the "
    "source position they reach, stored as the committed offsets of the target-side consumer group "
    "`<status.consumerGroup>.eos` (under the target topics' names); consumers of the target that read with "
    "isolation.level=read_committed (the default of librdkafka clients, not of Java ones) see every record exactly "
    "once, across restarts, rebalances and replicas, while read_uncommitted ones may also see the records of "
    "aborted transactions. The target must allow transactions: a transaction coordinator "
    "(transaction.state.log.replication.factor and transaction.state.log.min.isr no larger than its broker count) "
    "and, with ACLs, Write and Describe on the transactional ids with the prefix `<status.consumerGroup>.eos.` and "
    "Read on that group; otherwise the task is Failed with TargetTransactionsUnavailable until it does. "
    "exactlyOnce adds a few round trips to the target per batch of up to 5,000 records (measured at 0.75 to 1.2 "
    "times atLeastOnce's throughput: docs/exactly-once.md), and read_committed consumers see a batch's records once "
    "its transaction commits."
)


def delivery_field() -> Any:
    """`spec.delivery` of the kinds that copy Kafka to Kafka (TopicSync, DataAccessTask; ferry.transactional)."""
    return Field(Delivery.AT_LEAST_ONCE, description=DELIVERY_DESCRIPTION)


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


K8S_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
SECRET_KEY = r"^[-._a-zA-Z0-9]{1,253}$"
# host:port[,host:port...]; IPv6 literals in brackets.
_HOST_PORT = r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?)(:[0-9]{1,5})?"
BOOTSTRAP = rf"^{_HOST_PORT}(,\s*{_HOST_PORT})*$"
KAFKA_TOPIC = r"^[a-zA-Z0-9._-]{1,249}$"
DURATION = r"^([0-9]+(\.[0-9]+)?(s|m|h))+$"
DEFAULT_KAFKA_PORT = 9092
# The status fields holding the cluster id the brokers of a spec's source (target) reported to its workers.
SOURCE_CLUSTER_ID = "sourceClusterId"
TARGET_CLUSTER_ID = "targetClusterId"
CLUSTER_ID_DESCRIPTION = (
    "The cluster id the {side}'s brokers reported to the workers: the {side}'s identity however its bootstrap "
    "list is spelled, for per-instance limits and loop detection (after its instanceId, if set) and to refuse "
    "copies onto themselves. Kept while no worker reports; cleared when the {side} moves to other brokers."
)


class KafkaCredentialsRef(ApiModel):
    """A Secret in the task's namespace holding the SASL password, and the username or the key holding it."""

    name: str = Field(description="Name of the Secret.", pattern=K8S_NAME, max_length=253)
    username: str | None = Field(
        None,
        description="The SASL username itself, for Secrets that hold only the password (a Strimzi KafkaUser's "
        "Secret: the username is the KafkaUser's name). Takes precedence over usernameKey.",
        min_length=1,
        max_length=256,
    )
    username_key: str = Field("username", description="Key of the username in the Secret.", pattern=SECRET_KEY)
    password_key: str = Field("password", description="Key of the password in the Secret.", pattern=SECRET_KEY)


class SecretKeyRef(ApiModel):
    name: str = Field(description="Name of the Secret.", pattern=K8S_NAME, max_length=253)
    key: str = Field(description="Key in the Secret.", pattern=SECRET_KEY)


class ClientCertificateRef(ApiModel):
    """A Secret holding a PEM client certificate and its key, for TLS client authentication (mTLS)."""

    name: str = Field(description="Name of the Secret.", pattern=K8S_NAME, max_length=253)
    certificate_key: str = Field(
        "user.crt", description="Key of the PEM certificate (Strimzi KafkaUser: user.crt).", pattern=SECRET_KEY
    )
    key_key: str = Field(
        "user.key", description="Key of the PEM private key (Strimzi KafkaUser: user.key).", pattern=SECRET_KEY
    )


class KafkaTls(ApiModel):
    ca_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the PEM CA bundle that signed the brokers' certificates."
    )
    client_certificate_secret_ref: ClientCertificateRef | None = Field(
        None, description="Client certificate and key for brokers that authenticate clients by TLS (mTLS)."
    )


class KafkaEndpoint(ApiModel):
    """How to reach one Kafka instance. Passwords are never inline: only Secret references."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!self.securityProtocol.startsWith('SASL') || "
                "(has(self.saslMechanism) && has(self.credentialsSecretRef))",
                "securityProtocol SASL_PLAINTEXT and SASL_SSL need saslMechanism and credentialsSecretRef",
            ),
            rule(
                "self.securityProtocol.startsWith('SASL') || !has(self.saslMechanism)",
                "saslMechanism is only used with securityProtocol SASL_PLAINTEXT or SASL_SSL",
            ),
        )
    )

    bootstrap_servers: str = Field(
        description="Comma-separated host:port list of the instance's brokers (port defaults to 9092).",
        pattern=BOOTSTRAP,
        max_length=2048,
    )
    instance_id: str | None = Field(
        None,
        description="Stable name of the Kafka instance; defaults to the normalised bootstrap list. "
        "Tasks on the same instance share its limits.",
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:,\[\]]{0,252}$",
        max_length=253,
    )
    security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_* protocols."
    )
    credentials_secret_ref: KafkaCredentialsRef | None = Field(
        None, description="Secret with the SASL username and password."
    )
    tls: KafkaTls | None = Field(None, description="TLS settings for SSL and SASL_SSL.")

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> KafkaEndpoint:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and (self.sasl_mechanism is None or self.credentials_secret_ref is None):
            raise ValueError("securityProtocol SASL_PLAINTEXT and SASL_SSL need saslMechanism and credentialsSecretRef")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("saslMechanism is only used with securityProtocol SASL_PLAINTEXT or SASL_SSL")
        return self

    @property
    def effective_sasl_mechanism(self) -> SaslMechanism | None:
        """The mechanism the client uses (a kind may default it)."""
        return self.sasl_mechanism

    @property
    def instance(self) -> str:
        """The instance identity used for limits: the explicit id, or the normalised broker list."""
        return self.instance_id or normalise_bootstrap(self.bootstrap_servers)

    @property
    def instance_slug(self) -> str:
        """The instance identity in characters a topic name may hold (for `{source}` in topic names)."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.instance)


def normalise_bootstrap(servers: str) -> str:
    """`B:1, a:9092,b:1` and `a,b:1` name the same instance: lower-case, default port, sorted, unique."""
    hosts = set()
    for raw in servers.split(","):
        host = raw.strip().lower()
        if not re.search(r":[0-9]+$", host):
            host = f"{host}:{DEFAULT_KAFKA_PORT}"
        hosts.add(host)
    return ",".join(sorted(hosts))


def parse_duration(text: str) -> timedelta:
    """Go-style durations as Kubernetes users write them: `24h`, `90m`, `1h30m`, `45s`."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"invalid duration {text!r}: use forms like 24h, 90m, 1h30m or 45s")
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    seconds = sum(float(n) * units[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(s|m|h)", text))
    return timedelta(seconds=seconds)


def resume_window_field(default: str | None, description: str) -> Any:
    """`spec.resumeWindow`, whose default differs by kind (TopicSync: 24h; the others: none)."""
    return Field(default, pattern=DURATION, max_length=32, description=description)


class Toleration(ApiModel):
    key: str | None = Field(None, max_length=316)
    operator: str | None = Field(None, description="Exists or Equal.", pattern=r"^(Exists|Equal)$")
    value: str | None = Field(None, max_length=63)
    effect: str | None = Field(None, pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$")
    toleration_seconds: int | None = None


# Bounds keep the CRD's CEL equality rules within the API server's cost budget.
StringMap = dict[Annotated[str, Field(max_length=316)], Annotated[str, Field(max_length=4096)]]
MAX_64_ENTRIES: dict[str, Any] = {"maxProperties": 64}


class PodTemplate(ApiModel):
    """Scheduling and metadata overrides applied to the worker pods."""

    node_selector: StringMap | None = Field(
        None, description="Node labels the worker pods require.", json_schema_extra=MAX_64_ENTRIES
    )
    tolerations: list[Toleration] | None = Field(None, description="Tolerations of the worker pods.", max_length=32)
    annotations: StringMap | None = Field(
        None, description="Extra annotations on the worker pods.", json_schema_extra=MAX_64_ENTRIES
    )
    labels: StringMap | None = Field(
        None, description="Extra labels on the worker pods.", json_schema_extra=MAX_64_ENTRIES
    )
    priority_class_name: str | None = Field(None, description="PriorityClass of the worker pods.", max_length=253)


Quantity = int | Annotated[str, Field(max_length=64)]
ResourceMap = dict[Annotated[str, Field(max_length=253)], Quantity]


class Resources(ApiModel):
    """Compute resources of one worker container, as in a Pod spec."""

    requests: ResourceMap | None = Field(
        None, description="Minimum resources, e.g. cpu: 100m.", json_schema_extra={"maxProperties": 16}
    )
    limits: ResourceMap | None = Field(
        None, description="Maximum resources, e.g. memory: 512Mi.", json_schema_extra={"maxProperties": 16}
    )


def name_check(pattern: str, message: str) -> Callable[[str], str]:
    """The model's check of a `spec.taskName` rule, in the words of the CRD's rule for it (`name_rule`)."""

    def check(name: str) -> str:
        if not re.fullmatch(pattern, name):
            raise ValueError(message)
        return name

    return check


def name_rule(pattern: str, message: str) -> dict[str, Any]:
    """The CRD's check of a `spec.taskName` rule: a CEL rule, so `kubectl apply` says what is allowed rather than
    quoting the pattern."""
    return validations(rule(f"self.matches('{pattern}')", message))


# The task names of Tencent CKafka Connector and Huawei Smart Connect: 4-64 letters, digits, '-' and '_'.
TASK_NAME = r"^[A-Za-z0-9_-]{4,64}$"
TASK_NAME_MESSAGE = "taskName must be 4-64 characters of letters, digits, '-' and '_'"
TaskName = Annotated[
    str,
    Field(max_length=64, json_schema_extra=name_rule(TASK_NAME, TASK_NAME_MESSAGE)),
    AfterValidator(name_check(TASK_NAME, TASK_NAME_MESSAGE)),
]
TASK_NAME_DESCRIPTION = (
    "Display name of the task, as the console names it ({rule}). Unique among the namespace's tasks of this "
    "kind (the earliest created keeps it); shown in `kubectl get`, the operator's Events and the metrics' "
    "task_name label. Optional: without it the task is known by metadata.name alone."
)


class TaskSpec(ApiModel):
    """Fields every task kind has."""

    task_name: TaskName | None = Field(
        None, description=TASK_NAME_DESCRIPTION.format(rule="4-64 letters, digits, '-' and '_'")
    )
    state: TaskState = Field(
        TaskState.RUNNING,
        description="Running (default) or Paused. Creating a task Paused defines it without starting it.",
    )
    replicas: int = Field(
        1, ge=1, le=64, description="Worker pods; they share the work as members of one consumer group."
    )
    resume_window: str | None = resume_window_field(
        None,
        "Unset (the default): a resume continues from the saved offsets, however long the pause. Set, e.g. 24h: "
        "after a pause longer than this the task starts from startFrom instead.",
    )
    max_records_per_second: int | None = Field(
        None,
        ge=1,
        description="Cap on the records the task reads and writes per second, over all its workers: each worker "
        "takes an equal share (the cap divided by replicas). Unset (the default): no cap.",
    )
    max_bytes_per_second: int | None = Field(
        None,
        ge=1,
        description="Cap on the record payload bytes (key plus value, as status.totals counts them) the task reads "
        "and writes per second, over all its workers: each worker takes an equal share (the cap divided by "
        "replicas). Unset (the default): no cap.",
    )
    resources: Resources | None = Field(None, description="Compute resources of each worker container.")
    pod_template: PodTemplate | None = Field(None, description="Overrides for the worker pods.")

    @field_validator("resume_window")
    @classmethod
    def _window_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def resume_window_delta(self) -> timedelta | None:
        """How long a pause may last and still resume from the saved offsets; None: any pause."""
        return None if self.resume_window is None else parse_duration(self.resume_window)

    def cluster_endpoints(self) -> dict[str, KafkaEndpoint]:
        """The spec's Kafka endpoints, keyed by the status field that holds the cluster id their brokers
        reported (SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID)."""
        return {}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    type: str = Field(description="Ready, Paused, or a kind-specific condition.")
    status: ConditionStatus
    reason: str = Field(description="CamelCase reason.")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class PartitionProgress(ApiModel):
    topic: str
    partition: int
    committed_offset: int | None = Field(None, description="Next offset to read, as committed.")
    end_offset: int | None = Field(None, description="High watermark last seen.")
    lag: int | None = Field(None, description="Records not yet delivered.")


class Totals(ApiModel):
    records: int = 0
    bytes: int = 0


class WorkerError(ApiModel):
    reason: str
    message: str
    time: str


class ExpiredRecords(ApiModel):
    """Records of one partition the task never read: its saved offset had fallen out of the topic's retention."""

    topic: str
    partition: int
    committed_offset: int = Field(description="The saved (committed) offset, no longer in the partition.")
    earliest_offset: int = Field(description="The partition's earliest offset then: reading continued from it.")
    records: int = Field(description="Records skipped: earliestOffset - committedOffset.")
    time: str = Field(description="When a worker found it.")


class OffsetResetRequest(ApiModel):
    """A move of the task's consumer group the operator recorded; the first worker of its offset epoch applies it."""

    to: str = Field(description="earliest, latest, or an RFC 3339 time (the first offset at or after it).")
    epoch: int = Field(description="The offsetEpoch it belongs to: its workers apply it once, before consuming.")
    requested_at: str = Field(description="When the operator recorded it.")
    requested_by: str = Field(
        description="annotation (ferry.dev/reset-offsets on the paused task) or resumeWindow (a resume after a "
        "pause longer than spec.resumeWindow: to startFrom)."
    )
    consumer_group: str | None = Field(None, description="The consumer group it moves.")


class PartitionOffset(ApiModel):
    topic: str
    partition: int
    offset: int


class AppliedOffsetReset(ApiModel):
    """The move of the consumer group a worker made (written by that worker)."""

    to: str = Field(description="As requested: earliest, latest or an RFC 3339 time.")
    epoch: int = Field(description="The offsetEpoch of the request.")
    time: str = Field(description="When the worker moved the group.")
    consumer_group: str = Field(description="The group moved.")
    partitions: int = Field(description="Partitions whose offsets were set.")
    offsets: list[PartitionOffset] | None = Field(
        None, description="Where each partition was moved (at most 200 listed)."
    )


class WorkerReport(ApiModel):
    """What one worker pod last reported (kind-specific fields are kept as they come)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    phase: str = Field(description="Running, Rebalancing, Failed or Stopped.")
    heartbeat_time: str
    epoch: int = 0
    lag: int | None = None
    partitions: list[PartitionProgress] | None = None
    totals: Totals | None = None
    error: WorkerError | None = None


class SpecCheck(ApiModel):
    """The check of a spec change against the brokers before it rolls out (ferry.control.preflight)."""

    digest: str = Field(description="Identifies the checked part of the spec (source, target, topics).")
    result: str = Field(description="Checking, Passed or Failed.")
    reason: str | None = Field(None, description="Why the check failed (the reason a worker would report).")
    message: str | None = Field(None, description="What the check found, and what to fix.")
    job: str | None = Field(None, description="The Job of the latest attempt.")
    started_at: str | None = Field(None, description="When the latest attempt started.")
    checked_at: str | None = Field(None, description="When the latest attempt gave its outcome.")


class TaskStatus(ApiModel):
    """Status common to every kind; the operator owns state and conditions, the worker its progress."""

    state: Phase | None = None
    reason: str | None = None
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    paused_at: str | None = None
    consumer_group: str | None = Field(None, description="Consumer group the workers commit offsets in.")
    offset_epoch: int | None = Field(
        None, description="Increments when a resume after the window restarts from startFrom."
    )
    last_heartbeat_time: str | None = None
    lag: int | None = Field(None, description="Total lag over all partitions.")
    partitions: list[PartitionProgress] | None = None
    totals: Totals | None = None
    last_error: WorkerError | None = None
    offset_reset_epoch: int | None = Field(
        None,
        description="For tasks reading the user's own consumer group: the offsetEpoch whose reset to startFrom "
        "the workers have applied.",
    )
    resumed_from: str | None = Field(
        None,
        description="How the last resume started: savedOffsets (within the window, or none set), startFrom, or "
        "offsetReset (where a ferry.dev/reset-offsets recorded during the pause moved the consumer group).",
    )
    records_expired: int | None = Field(
        None,
        description="Records skipped since the task was created because the topic's retention deleted them "
        "before the task read them (a saved offset older than the partition's earliest offset).",
    )
    expired: list[ExpiredRecords] | None = Field(
        None, description="The latest such skip of each partition it happened to (at most 200, the latest)."
    )
    source_cluster_id: str | None = Field(None, description=CLUSTER_ID_DESCRIPTION.format(side="source"))
    throttled_seconds: float | None = Field(
        None,
        description="With a throughput cap: seconds the live workers have waited on it, added up (each since it "
        "started). Unset without caps.",
    )
    max_records_per_second: float | None = Field(
        None,
        description="The records cap the live workers enforce: their shares of spec.maxRecordsPerSecond added up "
        "(the whole cap once every replica reports). Unset without that cap.",
    )
    max_bytes_per_second: float | None = Field(
        None,
        description="The bytes cap the live workers enforce: their shares of spec.maxBytesPerSecond added up "
        "(the whole cap once every replica reports). Unset without that cap.",
    )
    spec_check: SpecCheck | None = Field(
        None,
        description="The latest check of a change to what the workers check at start (source, target, topics), "
        "made by a Job before the change rolls out; the workers keep running the last accepted spec meanwhile.",
    )
    workers: dict[str, WorkerReport] | None = Field(
        None, description="Each worker pod's own report, keyed by pod name; the fields above summarise them."
    )
    replicas: int | None = Field(
        None,
        description="Workers reporting now (live heartbeats): the scale subresource's status.replicas "
        "(`kubectl get --subresource=scale`).",
    )
    label_selector: str | None = Field(
        None, description="Label selector of the worker pods (the scale subresource's, for autoscalers)."
    )
    restarted_for: str | None = Field(
        None,
        description="The last value of the ferry.dev/restart annotation the workers were restarted for; a new "
        "value restarts them once more.",
    )
    offset_reset: OffsetResetRequest | None = Field(
        None, description="The latest move of the consumer group the operator recorded (applied once, on resume)."
    )
    last_offset_reset: AppliedOffsetReset | None = Field(
        None, description="The latest move of the consumer group a worker made."
    )
