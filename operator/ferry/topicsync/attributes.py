"""The operator's side of keeping target topics like their source topics (the workers' side: ferry.topicsync.topics).

- Changes: each worker reports its latest changes to target topics (`topicChanges`: partitions grown, configs set
  or reset). The operator adds the new ones to `status.topicChanges` (the latest 20) and announces each batch
  once, with a Normal Event `TargetTopicUpdated`. Every worker of a sync looks at the same topics, so two of them
  may make the same change moments apart: a change is known by its target topic, attribute, before and after
  values, and the same one reported again within SAME_WITHIN is the same change. A report older than everything
  kept (a stale one) adds nothing.
- The condition `TargetTopicsInSync`, from the topics the status lists: True when every target topic matches its
  source topic as far as the sync keeps them; False, with the most pressing reason, when some differ in a way
  Ferry cannot change (each topic's `outOfSync`), naming them and what to do; Unknown until a worker has compared
  them (and as last known while none reports). Turning False is a Warning Event, turning True again a Normal one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ferry.tasks import KindCondition, KindEvent, Task
from ferry.topicsync.model import TopicSyncSpec

CONDITION = "TargetTopicsInSync"
MAX_KEPT = 20
SAME_WITHIN = timedelta(minutes=2)
# How many differences or changes a message names.
_NAMED = 5
# The condition's reason when several kinds of difference exist: the first of these found.
_PRESSING = ("TargetPartitionsNotAdded", "TargetConfigRefused", "TargetHasMorePartitions")
_WHAT_TO_DO = {
    "TargetPartitionsNotAdded": "the source partitions the target lacks are held, not skipped, until it has them: "
    "let the sync's target user add partitions (an Alter ACL on the topic), or add them yourself",
    "TargetConfigRefused": "the other configs follow and copying goes on: make the target accept the value (its "
    "broker settings, its policies, the user's AlterConfigs ACL), change it on the source, or add the config to "
    "spec.excludedTopicConfigs",
    "TargetHasMorePartitions": "every source partition is still copied; to match, pause the sync, recreate the "
    "target topic with the source's partition count and resume with ferry.dev/reset-offsets set to earliest (the "
    "records are copied again), or leave it so if the target's consumers do not mind idle partitions",
}


def topics_in_sync(task: Task, status: dict[str, Any]) -> list[KindCondition]:
    """TargetTopicsInSync from the topics the status lists (the latest worker report's, those out of sync first)."""
    assert isinstance(task.spec, TopicSyncSpec)
    topics = [t for t in status.get("topics") or [] if isinstance(t, dict)]
    if not topics:  # no worker has looked yet (or one has just started): as last known
        return [_in_sync(None, reason="TopicsNotCompared", message="no worker has compared the topics yet")]
    found = [(t, m) for t in topics for m in t.get("outOfSync") or [] if isinstance(m, dict)]
    if not found:
        count = status.get("topicCount") or len(topics)
        kept = "partitions and configs" if task.spec.sync_topic_configs else "partitions (syncTopicConfigs is false)"
        return [
            _in_sync(
                True,
                reason="TargetTopicsMatch",
                message=f"the {count} target topics match their source topics: {kept}",
            )
        ]
    reasons = {str(m.get("reason")) for _, m in found}
    reason = next((r for r in _PRESSING if r in reasons), sorted(reasons)[0])
    named = "; ".join(f"{t.get('target')}: {m.get('message')}" for t, m in found[:_NAMED])
    more = f"; and {len(found) - _NAMED} more (status.topics[].outOfSync)" if len(found) > _NAMED else ""
    advice = " ".join(f"{r}: {_WHAT_TO_DO[r]}." for r in _PRESSING if r in reasons)
    return [
        _in_sync(
            False,
            reason=reason,
            message=f"target topics differ from their source topics where Ferry cannot change them: {named}{more}. "
            f"{advice}",
        )
    ]


def _in_sync(active: bool | None, reason: str, message: str) -> KindCondition:
    return KindCondition(CONDITION, active, reason=reason, message=message, on_true="Normal", on_false="Warning")


def _time(change: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(change.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _moment(change: dict[str, Any]) -> datetime:
    """The time of a change known to have one."""
    moment = _time(change)
    assert moment is not None
    return moment


def _key(change: dict[str, Any]) -> tuple[Any, ...]:
    return change.get("target"), change.get("attribute"), change.get("before"), change.get("after")


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ta, tb = _time(a), _time(b)
    return _key(a) == _key(b) and ta is not None and tb is not None and abs(ta - tb) <= SAME_WITHIN


def shown(change: dict[str, Any]) -> str:
    """`orders: retention.ms 604800000 -> 3600000`."""
    before = change.get("before")
    after = change.get("after")
    return (
        f"{change.get('target')}: {change.get('attribute')} {before if before is not None else '(unset)'} -> "
        f"{after if after is not None else 'the default'}"
    )


def account_changes(status: dict[str, Any], live: dict[str, Any]) -> tuple[dict[str, Any], list[KindEvent]]:
    """The status patch (`topicChanges`) and the Event for the changes in the live workers' reports not yet known;
    ({}, []) when there are none."""
    known = sorted(
        (c for c in status.get("topicChanges") or [] if isinstance(c, dict) and _time(c) is not None),
        key=_moment,
    )
    reported = sorted(
        (
            c
            for report in live.values()
            for c in (report or {}).get("topicChanges") or []
            if isinstance(c, dict) and _time(c) is not None
        ),
        key=_moment,
    )
    floor = _moment(known[0]) if len(known) >= MAX_KEPT else None
    new: list[dict[str, Any]] = []
    for change in reported:
        if floor is not None and _moment(change) < floor:
            continue  # older than everything kept: a stale report
        if any(_same(change, other) for other in [*known, *new]):
            continue
        new.append(change)
    if not new:
        return {}, []
    kept = sorted([*known, *new], key=_moment)[-MAX_KEPT:]
    more = f"; and {len(new) - _NAMED} more (status.topicChanges)" if len(new) > _NAMED else ""
    message = f"target topics changed to follow their source topics: {'; '.join(shown(c) for c in new[:_NAMED])}{more}"
    return {"topicChanges": kept}, [KindEvent("Normal", reason="TargetTopicUpdated", message=message)]
