"""What a reconcile needs to know about the other tasks of its kind, kept from watch events (no API calls here).

The cross-task checks (task names, the per-instance limit, consumer groups, replication loops) compare a task
with the tasks that share something with it: a Kafka `host:port`, an instance key (instanceId, reported
cluster id or normalised bootstrap list) or a task name. Each task is indexed by these *tokens*; the peers a
reconcile passes to the checks are the tasks reachable from its own tokens through tasks sharing one (its
connected component). A check's answer depends only on tasks of that component:

- an instance key a task resolves to is one of its tokens (its instanceId or spelling), or a cluster id reported
  by a task sharing a `host:port` with it, which is that task's token: tasks whose keys can be equal are in one
  component, and so are the tasks whose reports decide what a `host:port` resolves to;
- a replication loop is a chain of syncs each sharing an instance with the next;
- a task name is the token `name:<namespace>/<taskName>`.

So the checks give the same answer over the component as over every task of the kind, at a cost that grows
with the component, not with the number of tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ferry.api.base import normalise_bootstrap
from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION, running_body
from ferry.control.names import task_name_of
from ferry.tasks import KindPlugin

Key = tuple[str, str]  # namespace, name
_META = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp")


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "default", meta.get("name") or "")


def slim(body: Mapping[str, Any], status_fields: Iterable[str]) -> dict[str, Any]:
    """What the cross-task checks read of a peer: its identity, creation and deletion, spec, accepted spec and
    the cluster ids its workers reported (not the workers' reports, which change with every heartbeat)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    annotations = meta.get("annotations") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            **{k: meta[k] for k in _META if k in meta},
            "annotations": {k: v for k, v in annotations.items() if k == ACCEPTED_SPEC_ANNOTATION},
        },
        "spec": body.get("spec") or {},
        "status": {k: status[k] for k in status_fields if status.get(k) is not None},
    }


def tokens(plugin: KindPlugin, body: Mapping[str, Any], status_fields: Iterable[str]) -> frozenset[str]:
    """Everything the checks may compare the task on, as written and as its workers run it: each Kafka endpoint
    anywhere in the spec (valid or not: a limit reads one endpoint of a spec that may not parse as a whole), and
    the cluster ids its workers reported."""
    found: set[str] = set()
    raw = dict(body)
    for doc in (raw, running_body(plugin, raw)):
        name = task_name_of(doc)
        if name is not None:
            found.add(f"name:{key_of(doc)[0]}/{name}")
        _endpoint_tokens(doc.get("spec"), found, 0)
    status = raw.get("status") or {}
    found.update(f"key:{status[f]}" for f in status_fields if isinstance(status.get(f), str) and status[f])
    return frozenset(found)


def _endpoint_tokens(value: Any, found: set[str], depth: int) -> None:
    if isinstance(value, list) and depth < 6:
        for item in value:
            _endpoint_tokens(item, found, depth + 1)
    if not isinstance(value, Mapping) or depth >= 6:
        return
    servers, instance = value.get("bootstrapServers"), value.get("instanceId")
    if isinstance(servers, str):
        try:
            spelling = normalise_bootstrap(servers)
        except (ValueError, IndexError):
            spelling = servers
        found.add(f"key:{spelling}")
        found.update(f"host:{host}" for host in spelling.split(","))
    if isinstance(instance, str) and instance:
        found.add(f"key:{instance}")
    for item in value.values():
        _endpoint_tokens(item, found, depth + 1)


def component(
    start: Iterable[str],
    holders: Callable[[str], Iterable[Key]],
    tokens_of: Callable[[Key], Iterable[str]],
) -> set[Key]:
    """The tasks reachable from the tokens `start` through tasks sharing a token."""
    seen_tokens: set[str] = set()
    found: set[Key] = set()
    frontier = list(start)
    while frontier:
        token = frontier.pop()
        if token in seen_tokens:
            continue
        seen_tokens.add(token)
        for key in holders(token):
            if key not in found:
                found.add(key)
                frontier.extend(t for t in tokens_of(key) if t not in seen_tokens)
    return found


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level fields of `desired` (a merge patch of the status) that would change `current`: an empty
    dict when the patch is a no-op, so that nothing is sent."""
    return {k: v for k, v in desired.items() if not _noop(current.get(k), v, k in current)}


def _noop(current: Any, patch: Any, present: bool) -> bool:
    if patch is None:
        return current is None  # absent (or, in a hand-built body, null): removing it changes nothing
    if isinstance(patch, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(_noop(current.get(k), v, k in current) for k, v in patch.items())
    return present and bool(current == patch)
