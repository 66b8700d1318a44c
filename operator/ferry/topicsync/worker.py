"""TopicSync's worker plug-in: which secrets it needs and how its pipeline is assembled."""

from __future__ import annotations

from ferry.credentials import SecretRef
from ferry.kafka import client_config, endpoint_secret_refs
from ferry.tasks import KindPlugin, Task, WorkerContext
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
    )


PLUGIN = KindPlugin(definition=TOPIC_SYNC, secret_refs=secret_refs, build_pipeline=build_pipeline)
