"""Settings read from the environment, in one typed place (operator and worker)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


def _read(cls: type[Any], environ: Mapping[str, str], prefix: str) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = environ.get(prefix + f.name.upper())
        if raw is None:
            continue
        kind: Any = type(f.default)
        values[f.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    return cls(**values)


@dataclass(frozen=True)
class WorkerSettings:
    """`FERRY_<NAME>` env vars; the defaults suit production, tests shorten the intervals."""

    metrics_port: int = 8080
    report_interval: float = 10.0
    topic_refresh_interval: float = 30.0
    session_timeout_ms: int = 45000
    part_bytes: int = 8 * 1024 * 1024
    # ObsDumpTask: threads sending parts and objects while the worker consumes, and the bytes they may hold.
    upload_threads: int = 3
    upload_budget_bytes: int = 32 * 1024 * 1024
    stall_seconds: float = 120.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        return _read(cls, os.environ if environ is None else environ, "FERRY_")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class OperatorSettings:
    """`FERRY_OPERATOR_<NAME>` env vars."""

    worker_image: str = "ghcr.io/ferry-dev/ferry:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    reconcile_interval: float = 15.0
    # /metrics with ferry_task_state; -1 turns it off.
    metrics_port: int = 8080
    # A worker that has not reported for this long is no longer Running (Unassigned).
    heartbeat_timeout: float = 60.0
    # How long deletion waits for workers to flush before giving up on them.
    flush_timeout: float = 120.0
    # Passed to workers as FERRY_* env (tests shorten them).
    worker_report_interval: float = 10.0
    worker_topic_refresh_interval: float = 30.0
    worker_session_timeout_ms: int = 45000
    # The validating admission webhook (ferry/webhook.py): HTTPS port, 0 = off; tls.crt and tls.key in the dir.
    webhook_port: int = 0
    webhook_cert_dir: str = "/etc/ferry/webhook"
    # How long the operator trusts what it applied (workers' ServiceAccount, Role, RoleBinding) and the key names
    # of the Secrets it read without reading them again; 0: 20 reconcile intervals. A change of the task, or a
    # Secret missing or lacking a key, is read at once.
    recheck_interval: float = 0.0
    # A change to what workers check at start (source, target, topics) is checked by a Job first
    # (ferry.control.preflight): how long its outcome may take, and how often a failed check runs again. Off, such
    # changes roll out unchecked, as other changes do (where no check pod can run: a ResourceQuota, say).
    spec_check_enabled: bool = True
    spec_check_timeout: float = 180.0
    spec_check_retry: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        return _read(cls, os.environ if environ is None else environ, "FERRY_OPERATOR_")  # type: ignore[no-any-return]
