"""Replication loops between TopicSyncs: found from the specs alone, reported as a condition.

A cycle of syncs with identity naming (A->B, B->A, or A->B->C->A) over overlapping topics would copy
records around forever without the `ferry.origin` header; with it they converge, but the owners should
know. Topic lists overlap when they share a topic; a pattern is assumed to overlap anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ferry.tasks import KindCondition, Task
from ferry.topicsync.model import IDENTITY, TopicSyncSpec


@dataclass(frozen=True)
class Edge:
    name: str
    source: str
    target: str
    topics: frozenset[str] | None  # None: a pattern, may match anything


def _edge(body: dict[str, Any]) -> Edge | None:
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
    return Edge(f"{meta.get('namespace')}/{meta['name']}", spec.source.instance, spec.target.instance, topics)


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
    me = _edge(me_body) if me_body else None
    others = [e for e in (_edge(p) for p in peers if p is not me_body) if e is not None]
    cycle = find_cycle(me, others) if me else None
    if cycle is None:
        return [KindCondition("ReplicationLoop", False, "NoLoop", "")]
    route = " -> ".join([cycle[0].source, *(e.target for e in cycle)])
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
