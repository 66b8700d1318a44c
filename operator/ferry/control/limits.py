"""Per-instance task limits that give the same answer under any order of events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def slot_holders(
    peers: list[dict[str, Any]],
    instance: str,
    instance_of: Callable[[dict[str, Any]], str | None],
    limit: int,
) -> list[tuple[str, str]]:
    """The (namespace, name) of the tasks holding the instance's slots: the earliest `limit` created.

    Ties on creationTimestamp (one-second resolution) are broken by namespace and name, so every
    evaluation, by any replica at any moment, ranks the same tasks the same way. Tasks being deleted
    have released their slot.
    """
    contenders = []
    for peer in peers:
        meta = peer["metadata"]
        if meta.get("deletionTimestamp") or instance_of(peer) != instance:
            continue
        contenders.append((meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta["name"]))
    contenders.sort()
    return [(ns, name) for _, ns, name in contenders[:limit]]
