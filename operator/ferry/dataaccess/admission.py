"""One DataAccessTask per subscription consumer group.

The task joins the group the subscription names. Two tasks in one group would split the partitions
between them, each copying only part of the subscription, possibly to different targets. So the earliest
created task holds the group, and any later one on the same instance and group is refused.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ferry.control.limits import slot_holders
from ferry.dataaccess.model import DataAccessTaskSpec, DataSource
from ferry.errors import TaskError
from ferry.tasks import Task


def group_of(body: dict[str, Any]) -> str | None:
    """`instance/group` of a task's source, or None when its spec does not parse."""
    try:
        source = DataSource.model_validate((body.get("spec") or {}).get("source"))
    except ValidationError:
        return None
    return f"{source.endpoint.instance}/{source.consumer_group}"


def check_group(task: Task, peers: list[dict[str, Any]]) -> TaskError | None:
    assert isinstance(task.spec, DataAccessTaskSpec)
    source = task.spec.source
    key = f"{source.endpoint.instance}/{source.consumer_group}"
    [holder] = slot_holders(peers, key, group_of, 1) or [(task.namespace, task.name)]
    if holder == (task.namespace, task.name):
        return None
    return TaskError(
        "ConsumerGroupInUse",
        f"DataAccessTask {holder[0]}/{holder[1]} already reads through consumer group {source.consumer_group} on "
        f"{source.endpoint.instance}, and two tasks in one group would split the subscription's partitions "
        "between them: give this task its own consumer group (create one for the subscription in DTS), or "
        "delete the other task",
    )
