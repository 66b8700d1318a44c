"""TopicSync: no copy onto itself that the reported cluster ids reveal (refused at admission)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ferry.api.base import SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID
from ferry.control.identity import find_body, known_clusters, one_cluster
from ferry.errors import TaskError
from ferry.tasks import Task
from ferry.topicsync.model import IDENTITY, TopicSyncSpec


def check_onto_itself(task: Task, list_peers: Callable[[], list[dict[str, Any]]]) -> TaskError | None:
    """Source and target spelled differently but reported as one cluster, with identity naming (every
    selected topic would be its own target): refused at admission. The model refuses the same spelling;
    the worker refuses, against the brokers, what no task has reported yet."""
    assert isinstance(task.spec, TopicSyncSpec)
    spec = task.spec
    if spec.target_topic_name != IDENTITY:
        return None  # every other name has more than the topic in it: never the source topic itself
    peers = list_peers()
    me = find_body(peers, task.namespace, task.name)
    same = one_cluster(
        spec.source, spec.target, me, known_clusters(peers, TopicSyncSpec), SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID
    )
    if same is None:
        return None
    fact = same.fact("spec.source.bootstrapServers", spec.source, "spec.target.bootstrapServers", spec.target)
    return TaskError(
        "CopyOntoItself",
        f"{fact}, and targetTopicName is the identity: records would be copied onto themselves; use a "
        "targetTopicName such as '{source}.{topic}'",
    )
