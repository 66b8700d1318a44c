"""Replication loops between TopicSyncs: found from the specs and the cluster ids, reported as a condition.

A cycle of syncs with identity naming (A->B, B->A, or A->B->C->A) over overlapping topics would copy
records around forever without the `ferry.origin` header; with it they converge, but the owners should
know. Topic lists overlap when they share a topic; a pattern is assumed to overlap anything.

Instances are compared by identity (ferry.control.identity): the `instanceId`, else the cluster id the
brokers reported (the sync's own status, or another sync's for the same `host:port`), else the normalised
bootstrap list. So A->B spelled `127.0.0.1:P` and B->A spelled `localhost:P` are a loop once the workers of
both have reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ferry.api.base import SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID
from ferry.control.identity import KnownClusters, identity, known_clusters
from ferry.tasks import KindCondition, Task
from ferry.topicsync.model import IDENTITY, TopicSyncSpec


@dataclass(frozen=True)
class Edge:
    name: str
    source: str
    target: str
    topics: frozenset[str] | None  # None: a pattern, may match anything
    source_shown: str = ""
    target_shown: str = ""


def _edge(body: dict[str, Any], known: KnownClusters) -> Edge | None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return None
    try:
        spec = TopicSyncSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None
    if spec.target_topic_name != IDENTITY:
        return None
    topics = frozenset(spec.topics) if spec.topics is not None else None
    source = identity(spec.source, body, SOURCE_CLUSTER_ID, known)
    target = identity(spec.target, body, TARGET_CLUSTER_ID, known)
    name = f"{meta.get('namespace')}/{meta['name']}"
    return Edge(name, source.key, target.key, topics, source.shown, target.shown)


def _overlap(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def find_cycle(me: Edge, others: list[Edge]) -> list[Edge] | None:
    """The shortest chain of syncs from my target back to my source sharing topics with me, if any."""
    frontier: list[tuple[list[Edge], frozenset[str] | None]] = [([me], me.topics)]
    while frontier:
        path, topics = frontier.pop(0)
        for edge in others:
            if edge in path or edge.source != path[-1].target:
                continue
            shared = _overlap(topics, edge.topics)
            if shared is not None and not shared:
                continue
            if edge.target == me.source:
                return [*path, edge]
            frontier.append(([*path, edge], shared))
    return None


def replication_loop(task: Task, peers: list[dict[str, Any]]) -> list[KindCondition]:
    me_body = next(
        (p for p in peers if (p["metadata"].get("namespace"), p["metadata"]["name"]) == (task.namespace, task.name)),
        None,
    )
    known = known_clusters(peers, TopicSyncSpec)
    me = _edge(me_body, known) if me_body else None
    others = [e for e in (_edge(p, known) for p in peers if p is not me_body) if e is not None]
    cycle = find_cycle(me, others) if me else None
    if cycle is None:
        return [KindCondition("ReplicationLoop", False, "NoLoop", "")]
    route = " -> ".join([cycle[0].source_shown, *(e.target_shown for e in cycle)])
    names = ", ".join(e.name for e in cycle)
    return [
        KindCondition(
            "ReplicationLoop",
            True,
            "ReplicationLoop",
            f"TopicSyncs {names} replicate the same topics around {route} with identity naming; the "
            "ferry.origin header keeps each record from coming back to where it was first written",
        )
    ]
