"""ObsRestoreTask's worker plug-in: which secrets it needs and how its pipeline is assembled."""

from __future__ import annotations

from typing import Any

from ferry.credentials import SecretRef
from ferry.kafka import client_config, endpoint_secret_refs
from ferry.obsrestore.model import OBS_RESTORE_TASK, ObsRestoreTaskSpec
from ferry.obsrestore.pipeline import RestorePipeline
from ferry.obsrestore.resume import MemoryResume
from ferry.obsrestore.store import ACCESS_KEY_ROLE, SECRET_KEY_ROLE, DumpStore, s3_client
from ferry.reporting import latest, sum_throttling
from ferry.tasks import KindPlugin, Task, WorkerContext

# What the operator copies from the latest worker report into the task's status.
REPORTED = (
    "objectsTotal",
    "objectsRestored",
    "recordsSkipped",
    "valuesOnlyObjects",
    "currentObject",
    "targetTopics",
)


def secret_refs(spec: ObsRestoreTaskSpec) -> dict[str, SecretRef]:
    creds = spec.source.credentials_secret_ref
    return {
        **endpoint_secret_refs(spec.target, "TARGET"),
        ACCESS_KEY_ROLE: SecretRef(creds.name, creds.access_key_key),
        SECRET_KEY_ROLE: SecretRef(creds.name, creds.secret_key_key),
    }


def build_pipeline(task: Task, ctx: WorkerContext) -> RestorePipeline:
    assert isinstance(task.spec, ObsRestoreTaskSpec)
    spec = task.spec
    store = DumpStore(s3_client(spec.source, ctx.secrets), spec.source)
    return RestorePipeline(
        spec,
        client_config(spec.target, "TARGET", ctx.secrets),
        store,
        ctx.resume if ctx.resume is not None else MemoryResume(),
        ctx.reporter,
        ctx.metrics,
        ctx.settings,
        client_name=f"ferry-obsrestore-{task.namespace}.{task.name}",
    )


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest report's progress (one worker at a time: a Job of one pod), and the caps."""
    summary: dict[str, Any] = dict(sum_throttling(reports))
    last = latest(reports)
    if last is not None:
        summary.update({name: last.get(name) for name in REPORTED if name in last})
    return summary


PLUGIN = KindPlugin(
    definition=OBS_RESTORE_TASK,
    secret_refs=secret_refs,
    build_pipeline=build_pipeline,
    summarize=summarize,
    one_shot=True,
)
