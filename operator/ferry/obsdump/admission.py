"""ObsDumpTask's limit: at most 18 tasks per source Kafka instance (SPEC §5).

The instance is the source's `instanceId`, else the cluster id the brokers reported (the task's own
`status.sourceClusterId`, or the one reported for a `host:port` of its bootstrap list by another task's
workers), else the normalised bootstrap list: see ferry.control.identity. So two spellings of one cluster
count as one instance as soon as the workers have reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ferry.api.base import SOURCE_CLUSTER_ID, KafkaEndpoint
from ferry.control.identity import NOTHING_KNOWN, KnownClusters, find_body, identity, known_clusters
from ferry.control.limits import slot_holders
from ferry.errors import TaskError
from ferry.obsdump.model import TASKS_PER_INSTANCE, ObsDumpTaskSpec
from ferry.tasks import Task


def _source(body: Mapping[str, Any]) -> KafkaEndpoint | None:
    try:
        return KafkaEndpoint.model_validate((body.get("spec") or {}).get("source"))
    except ValidationError:
        return None


def instance_of(body: Mapping[str, Any], known: KnownClusters = NOTHING_KNOWN) -> str | None:
    """The instance a task counts against: instanceId, else the reported cluster id, else the spelling."""
    source = _source(body)
    return None if source is None else identity(source, body, SOURCE_CLUSTER_ID, known).key


def check_limit(task: Task, peers: list[dict[str, Any]]) -> TaskError | None:
    assert isinstance(task.spec, ObsDumpTaskSpec)
    known = known_clusters(peers, ObsDumpTaskSpec)
    mine = identity(task.spec.source, find_body(peers, task.namespace, task.name), SOURCE_CLUSTER_ID, known)
    holders = slot_holders(peers, mine.key, lambda body: instance_of(body, known), TASKS_PER_INSTANCE)
    if (task.namespace, task.name) in holders:
        return None
    return TaskError(
        "TaskLimitExceeded",
        f"Kafka instance {mine.shown} already has {TASKS_PER_INSTANCE} ObsDumpTasks, the most allowed "
        "(the earliest created keep their slots): delete one of them and this task starts by itself",
    )
