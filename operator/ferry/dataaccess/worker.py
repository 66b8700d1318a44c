"""DataAccessTask's worker plug-in: which secrets it needs and how its pipeline is assembled."""

from __future__ import annotations

from typing import Any

from ferry.credentials import SecretRef
from ferry.dataaccess.admission import check_group, check_onto_itself
from ferry.dataaccess.model import DATA_ACCESS_TASK, DataAccessTaskSpec
from ferry.dataaccess.pipeline import AccessPipeline
from ferry.kafka import client_config, endpoint_secret_refs
from ferry.reporting import latest, sum_rates, sum_throttling
from ferry.tasks import KindPlugin, Task, WorkerContext, start_up_checks


def secret_refs(spec: DataAccessTaskSpec) -> dict[str, SecretRef]:
    return {**endpoint_secret_refs(spec.source.endpoint, "SOURCE"), **endpoint_secret_refs(spec.target, "TARGET")}


def build_pipeline(task: Task, ctx: WorkerContext) -> AccessPipeline:
    assert isinstance(task.spec, DataAccessTaskSpec)
    spec = task.spec
    return AccessPipeline(
        spec,
        client_config(spec.source.endpoint, "SOURCE", ctx.secrets),
        client_config(spec.target, "TARGET", ctx.secrets),
        ctx.consumer_group,
        ctx.reporter,
        ctx.metrics,
        ctx.settings,
        epoch=ctx.epoch,
        resets=ctx.resets,
        reset_to=ctx.reset_to,
        worker_id=ctx.worker_id,
    )


def consumer_group(spec: DataAccessTaskSpec) -> str:
    """The subscription's own group: offsets live there, whatever happens to the task's target."""
    return spec.source.consumer_group


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Partition counts as last seen by any worker; rates and caps add up over the workers."""
    last = latest(reports)
    if last is None:
        return {}
    return {
        "sourcePartitions": last.get("sourcePartitions"),
        "targetPartitions": last.get("targetPartitions"),
        **sum_rates(reports),
        **sum_throttling(reports),
    }


PLUGIN = KindPlugin(
    definition=DATA_ACCESS_TASK,
    secret_refs=secret_refs,
    build_pipeline=build_pipeline,
    admission=check_group,
    summarize=summarize,
    fixed_group=consumer_group,
    onto_itself=check_onto_itself,
    preflight=start_up_checks(build_pipeline),
    preflight_fields=frozenset({"source", "target"}),
)
