"""ObsDumpTask's limit: at most 18 tasks per source Kafka instance (SPEC §5)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ferry.api.base import KafkaEndpoint
from ferry.control.limits import slot_holders
from ferry.errors import TaskError
from ferry.obsdump.model import TASKS_PER_INSTANCE, ObsDumpTaskSpec
from ferry.tasks import Task


def instance_of(body: dict[str, Any]) -> str | None:
    source = (body.get("spec") or {}).get("source")
    try:
        return KafkaEndpoint.model_validate(source).instance
    except ValidationError:
        return None


def check_limit(task: Task, peers: list[dict[str, Any]]) -> TaskError | None:
    assert isinstance(task.spec, ObsDumpTaskSpec)
    instance = task.spec.source.instance
    holders = slot_holders(peers, instance, instance_of, TASKS_PER_INSTANCE)
    if (task.namespace, task.name) in holders:
        return None
    return TaskError(
        "TaskLimitExceeded",
        f"Kafka instance {instance} already has {TASKS_PER_INSTANCE} ObsDumpTasks, the most allowed "
        "(the earliest created keep their slots): delete one of them and this task starts by itself",
    )
