"""TopicSync's worker plug-in: which secrets it needs and how its pipeline is assembled."""

from __future__ import annotations

from typing import Any

from ferry.credentials import SecretRef
from ferry.kafka import client_config, endpoint_secret_refs
from ferry.reporting import latest, sum_rates, sum_throttling
from ferry.tasks import KindCondition, KindPlugin, Task, WorkerContext, start_up_checks
from ferry.topicsync.admission import check_onto_itself
from ferry.topicsync.attributes import account_changes, topics_in_sync
from ferry.topicsync.groups import failover_ready, merge_groups
from ferry.topicsync.loops import replication_loop
from ferry.topicsync.model import TOPIC_SYNC, TopicSyncSpec
from ferry.topicsync.pipeline import SyncPipeline


def secret_refs(spec: TopicSyncSpec) -> dict[str, SecretRef]:
    return {**endpoint_secret_refs(spec.source, "SOURCE"), **endpoint_secret_refs(spec.target, "TARGET")}


def build_pipeline(task: Task, ctx: WorkerContext) -> SyncPipeline:
    assert isinstance(task.spec, TopicSyncSpec)
    spec = task.spec
    return SyncPipeline(
        spec,
        client_config(spec.source, "SOURCE", ctx.secrets),
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


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Every worker sees the same topics: take the latest list; loop skips, rates and caps add up."""
    last = latest(reports)
    if last is None:
        return {}
    return {
        "topics": last.get("topics"),
        "topicCount": last.get("topicCount"),
        "loopRecordsSkipped": sum(r.get("loopRecordsSkipped") or 0 for r in reports),
        **sum_rates(reports),
        **sum_throttling(reports),
        **merge_groups(reports),
    }


def status_conditions(task: Task, status: dict[str, Any]) -> list[KindCondition]:
    return [*failover_ready(task, status), *topics_in_sync(task, status)]


PLUGIN = KindPlugin(
    definition=TOPIC_SYNC,
    secret_refs=secret_refs,
    build_pipeline=build_pipeline,
    summarize=summarize,
    conditions=replication_loop,
    onto_itself=check_onto_itself,
    preflight=start_up_checks(build_pipeline),
    preflight_fields=frozenset(
        {"source", "target", "topics", "topicPattern", "excludePattern", "targetTopicName", "createTopics"}
    ),
    status_conditions=status_conditions,
    findings=account_changes,
)
