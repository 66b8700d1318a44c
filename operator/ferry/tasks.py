"""A task as the worker runtime sees it, and the per-kind plug-in that builds its pipeline."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from ferry.api import API_VERSION
from ferry.api.base import TaskSpec
from ferry.api.kinds import KindDef
from ferry.credentials import SecretRef, Sensitive
from ferry.errors import TaskError
from ferry.metrics import WorkerMetrics
from ferry.reporting import MemoryLedger, Reporter, ResetLedger, ResumeStore
from ferry.settings import WorkerSettings


@dataclass(frozen=True)
class Task:
    definition: KindDef
    name: str
    namespace: str
    spec: TaskSpec
    uid: str | None = None


class Pipeline(Protocol):
    def run(self, stop: Any) -> None: ...


@dataclass(frozen=True)
class WorkerContext:
    """Everything a pipeline gets besides the task: no Kubernetes in here."""

    secrets: dict[str, Sensitive]
    consumer_group: str
    reporter: Reporter
    metrics: WorkerMetrics
    settings: WorkerSettings
    epoch: int = 0
    resets: ResetLedger = field(default_factory=MemoryLedger)
    # The target of this offset epoch's reset (ferry.resets), None for none.
    reset_to: str | None = None
    # This worker's stable name (its pod's; FERRY_WORKER_ID or the host's under `ferry run`): a restarted worker
    # takes its predecessor's transactional id by it (ferry.transactional).
    worker_id: str = "worker"
    # One-shot kinds (ObsRestoreTask): where the resume point is kept (the task's status, or `ferry run`'s state
    # file); None for the other kinds.
    resume: ResumeStore | None = None


class _Unreported:
    def report(self, progress: Any) -> None:
        """A check reports its outcome itself, once (ferry.cli)."""


def start_up_checks(
    build_pipeline: Callable[[Task, WorkerContext], Any],
) -> Callable[[Task, dict[str, Sensitive], WorkerSettings], None]:
    """A kind's `preflight`: its pipeline, built only for `ferry check` (no progress reports, no consumer group of the
    task's), makes the worker's start-up checks (`check()`)."""

    def preflight(task: Task, secrets: dict[str, Sensitive], settings: WorkerSettings) -> None:
        metrics = WorkerMetrics(task.definition.kind, f"{task.namespace}/{task.name}", task.spec.task_name or "")
        build_pipeline(task, WorkerContext(secrets, "ferry-check", _Unreported(), metrics, settings)).check()

    return preflight


@dataclass(frozen=True)
class KindCondition:
    """A condition only some kinds have; by default True ones are also announced by a Warning Event (a finding such
    as a replication loop). `on_true`/`on_false`: the Event type announcing a turn to True, and a turn from True to
    False (None: none), e.g. Normal and Warning for a condition where True is the good state. `active` None is
    Unknown, nothing to judge by now (e.g. no worker has reported): the condition stays as last known, or Unknown
    if it never was known; a turn from Unknown to False is announced like one from True."""

    type: str
    active: bool | None
    reason: str
    message: str
    on_true: str | None = "Warning"
    on_false: str | None = None


@dataclass(frozen=True)
class KindEvent:
    """An Event a kind asks the operator to post about the task."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class KindPlugin:
    definition: KindDef
    secret_refs: Callable[[Any], dict[str, SecretRef]]
    build_pipeline: Callable[[Task, WorkerContext], Pipeline]
    # Operator-side check against the other tasks of the kind (e.g. per-instance limits).
    admission: Callable[[Task, list[dict[str, Any]]], TaskError | None] | None = None
    # Kind-specific status fields from the live workers' reports.
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    # Kind-specific conditions from the other tasks of the kind (e.g. replication loops).
    conditions: Callable[[Task, list[dict[str, Any]]], list[KindCondition]] | None = None
    # Kind-specific conditions from the task and its status as the operator is about to write it (with the live
    # workers' reports summed up), e.g. TopicSync's FailoverReady.
    status_conditions: Callable[[Task, dict[str, Any]], list[KindCondition]] | None = None
    # The consumer group named by the spec (the user's own), instead of one Ferry names per task.
    fixed_group: Callable[[Any], str] | None = None
    # Webhook only: a copy onto itself that the cluster ids reported by the kind's tasks reveal, given a way to
    # list them (called only when a topic could be its own target). The worker checks against the brokers.
    onto_itself: Callable[[Task, Callable[[], list[dict[str, Any]]]], TaskError | None] | None = None
    # Kind-specific findings of the live workers' reports, counted into the status once (like expired records):
    # given the status and the live reports, the status patch and the Events announcing what is new.
    findings: Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], list[KindEvent]]] | None = None
    # A task that runs once to completion, as a Job (ObsRestoreTask): the operator serves it with its own reconcile
    # (ferry.obsrestore.control), not the worker Deployment of the others; its workers get a ResumeStore.
    one_shot: bool = False
    # The start-up checks a worker makes against the brokers, run by `ferry check` (ferry.control.preflight) before a
    # change to `preflight_fields` (top-level spec fields, wire names) rolls out; raises TaskError.
    preflight: Callable[[Task, dict[str, Sensitive], WorkerSettings], None] | None = None
    preflight_fields: frozenset[str] = frozenset()


def validation_message(err: ValidationError) -> str:
    """pydantic's errors as `spec.a.b: message` lines, without echoing input values (they may be secrets)."""
    lines = []
    for item in err.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in item["loc"])
        lines.append(f"spec.{path}: {item['msg']}" if path else f"spec: {item['msg']}")
    return "; ".join(lines)


# What the API server accepts as a custom resource's name and as a namespace (RFC 1123).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _check_object_name(value: str, field: str, limit: int, pattern: re.Pattern[str]) -> None:
    """The same names the API server accepts, so `ferry run` refuses what `kubectl apply` would."""
    if not value:
        raise TaskError("InvalidSpec", f"{field} is required")
    if len(value) > limit:
        raise TaskError("InvalidSpec", f"{field} must be at most {limit} characters, not {len(value)}")
    if not pattern.fullmatch(value):
        raise TaskError(
            "InvalidSpec",
            f"{field} {value!r} must consist of lower case letters, digits, '-' (and '.' in names), "
            "starting and ending with a letter or digit",
        )


def parse_task(doc: Mapping[str, Any], plugins: Mapping[str, KindPlugin]) -> Task:
    """Validate a manifest (as applied or as read from a file) into a Task; bad input is a TaskError."""
    if doc.get("apiVersion") != API_VERSION:
        raise TaskError("InvalidSpec", f"apiVersion must be {API_VERSION}, not {doc.get('apiVersion')!r}")
    plugin = plugins.get(str(doc.get("kind")))
    if plugin is None:
        raise TaskError("InvalidSpec", f"unknown kind {doc.get('kind')!r}: expected one of {', '.join(plugins)}")
    metadata = doc.get("metadata") or {}
    _check_object_name(str(metadata.get("name") or ""), "metadata.name", 253, DNS_SUBDOMAIN)
    _check_object_name(str(metadata.get("namespace") or "default"), "metadata.namespace", 63, DNS_LABEL)
    try:
        spec = plugin.definition.spec_model.model_validate(doc.get("spec") or {})
    except ValidationError as err:
        raise TaskError("InvalidSpec", validation_message(err)) from None
    return Task(
        definition=plugin.definition,
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace") or "default"),
        spec=spec,
        uid=metadata.get("uid"),
    )
