"""ObsDumpTask's worker plug-in: which secrets it needs and how its pipeline is assembled."""

from __future__ import annotations

from typing import Any

from ferry.credentials import SecretRef
from ferry.kafka import client_config, endpoint_secret_refs
from ferry.obsdump.admission import check_limit
from ferry.obsdump.model import OBS_DUMP_TASK, ObsDumpTaskSpec
from ferry.obsdump.pipeline import DumpPipeline
from ferry.obsdump.storage import ACCESS_KEY_ROLE, SECRET_KEY_ROLE, ObjectStore, s3_client
from ferry.reporting import sum_throttling
from ferry.tasks import KindPlugin, Task, WorkerContext


def secret_refs(spec: ObsDumpTaskSpec) -> dict[str, SecretRef]:
    creds = spec.target.credentials_secret_ref
    return {
        **endpoint_secret_refs(spec.source, "SOURCE"),
        ACCESS_KEY_ROLE: SecretRef(creds.name, creds.access_key_key),
        SECRET_KEY_ROLE: SecretRef(creds.name, creds.secret_key_key),
    }


def build_pipeline(task: Task, ctx: WorkerContext) -> DumpPipeline:
    assert isinstance(task.spec, ObsDumpTaskSpec)
    spec = task.spec
    store = ObjectStore(s3_client(spec.target, ctx.secrets), spec.target, ctx.settings.part_bytes)
    return DumpPipeline(
        spec,
        client_config(spec.source, "SOURCE", ctx.secrets),
        ctx.consumer_group,
        store,
        ctx.reporter,
        ctx.metrics,
        ctx.settings,
        epoch=ctx.epoch,
        resets=ctx.resets,
        reset_to=ctx.reset_to,
    )


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest object over all workers, and how many were written; the caps and waits on them, and the
    values-only records containing the separator, add up."""
    summary = sum_throttling(reports)
    ambiguous = [r["recordsContainingSeparator"] for r in reports if r.get("recordsContainingSeparator") is not None]
    if ambiguous:
        summary["recordsContainingSeparator"] = sum(ambiguous)
    dumps = [r for r in reports if r.get("lastDumpTime")]
    if not dumps:
        return summary
    latest = max(dumps, key=lambda r: r["lastDumpTime"])
    return {
        **summary,
        "lastDumpTime": latest["lastDumpTime"],
        "lastObjectKey": latest.get("lastObjectKey"),
        "objectsWritten": sum(r.get("objectsWritten") or 0 for r in reports),
    }


PLUGIN = KindPlugin(
    definition=OBS_DUMP_TASK,
    secret_refs=secret_refs,
    build_pipeline=build_pipeline,
    admission=check_limit,
    summarize=summarize,
)
