"""Task names (`spec.taskName`, the consoles' names of tasks) are unique per namespace and kind.

The operator gives a name to the earliest created task that carries it (ties broken by name, as for the
per-instance limits, so every evaluation agrees), and marks the others Failed with `TaskNameInUse`, without
workers, until the name is theirs. The admission webhook refuses a name any other task of the kind in the
namespace already carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ferry.control.limits import slot_holders
from ferry.errors import TaskError
from ferry.tasks import Task


def task_name_of(body: Mapping[str, Any]) -> str | None:
    """The task's `spec.taskName`, or None when it has none."""
    name = (body.get("spec") or {}).get("taskName")
    return name if isinstance(name, str) and name else None


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def check_task_name(task: Task, peers: list[dict[str, Any]]) -> TaskError | None:
    """The operator's rule: a TaskError for a task whose name an earlier task of the kind in its namespace holds.

    `peers` are the kind's tasks, this one among them."""
    name = task.spec.task_name
    if name is None:
        return None

    def key_of(body: dict[str, Any]) -> str | None:
        theirs = task_name_of(body)
        return None if theirs is None else _key(body["metadata"].get("namespace") or "default", theirs)

    [holder] = slot_holders(peers, _key(task.namespace, name), key_of, 1) or [(task.namespace, task.name)]
    if holder == (task.namespace, task.name):
        return None
    kind = task.definition.kind
    return TaskError(
        "TaskNameInUse",
        f"{kind} {holder[1]} in this namespace already has taskName {name} (task names are unique per namespace "
        f"and kind; the earliest created keeps it): give this {kind} another spec.taskName, or delete "
        f"{holder[1]}; this task starts by itself once the name is its own",
    )


def _holders(task: Task, name: str, peers: list[dict[str, Any]]) -> list[str]:
    """The other live tasks of the kind in the task's namespace that carry `name`, by task name."""
    return sorted(
        peer["metadata"]["name"]
        for peer in peers
        if (peer["metadata"].get("namespace") or "default") == task.namespace
        and peer["metadata"]["name"] != task.name
        and not peer["metadata"].get("deletionTimestamp")
        and task_name_of(peer) == name
    )


def name_taken(task: Task, peers: list[dict[str, Any]]) -> str | None:
    """The webhook's rule: why the task may not take its name (another live task of the kind in its namespace
    carries it, whichever was created first), or None."""
    name = task.spec.task_name
    if name is None:
        return None
    users = _holders(task, name, peers)
    if not users:
        return None
    kind = task.definition.kind
    return (
        f"{kind} {users[0]} in this namespace already has taskName {name} (task names are unique per namespace "
        f"and kind): give this {kind} another spec.taskName, or delete {users[0]} first"
    )


def renamed_into_use(task: Task, accepted: Mapping[str, Any] | None, peers: list[dict[str, Any]]) -> TaskError | None:
    """The operator's rule for a rename: a task whose accepted spec had another name (or none) may not take a name
    another live task of the kind in its namespace runs with, whichever was created first, so that a rename never
    stops a task that holds the name. The caller keeps the accepted spec running (ferry.control.accepted).

    `peers` are the kind's tasks as their workers run them."""
    name = task.spec.task_name
    if name is None or accepted is None or accepted.get("taskName") == name:
        return None
    holders = _holders(task, name, peers)
    if not holders:
        return None
    kind, before = task.definition.kind, accepted.get("taskName")
    revert = f"revert it to {before}" if before else "remove it"
    return TaskError(
        "TaskNameInUse",
        f"{kind} {holders[0]} in this namespace already has taskName {name} (task names are unique per namespace "
        f"and kind, and a rename does not take a name in use): give this {kind} another spec.taskName, or {revert}",
    )
