"""One DataAccessTask per subscription consumer group, and no copy onto itself the reported cluster ids reveal.

The task joins the group the subscription names. Two tasks in one group would split the partitions
between them, each copying only part of the subscription, possibly to different targets. So the earliest
created task holds the group, and any later one on the same instance and group is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ferry.api.base import SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID
from ferry.control.identity import find_body, known_clusters, one_cluster
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


def check_onto_itself(task: Task, list_peers: Callable[[], list[dict[str, Any]]]) -> TaskError | None:
    """Source and target spelled differently but reported as one cluster, and the same topic: refused at
    admission (the model refuses the same spelling; the worker refuses what no task has reported yet)."""
    assert isinstance(task.spec, DataAccessTaskSpec)
    source, target = task.spec.source.endpoint, task.spec.target
    if source.topic != target.topic:
        return None
    peers = list_peers()
    me = find_body(peers, task.namespace, task.name)
    same = one_cluster(
        source, target, me, known_clusters(peers, DataAccessTaskSpec), SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID
    )
    if same is None:
        return None
    fact = same.fact("spec.source.dts.bootstrapServers", source, "spec.target.bootstrapServers", target)
    return TaskError(
        "CopyOntoItself",
        f"{fact}, and spec.target.topic is the source topic {source.topic}: records would be copied onto "
        "themselves; point spec.target at another topic or Kafka instance",
    )
