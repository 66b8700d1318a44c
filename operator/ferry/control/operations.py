"""Operations from kubectl, by annotating the task, as Strimzi users do (`strimzi.io/manual-rolling-update`).

`ferry.dev/restart` (any value): each new value restarts the task's workers once. The value goes into the worker
pod template's annotations, so the Deployment rolls (`Recreate`: the old workers flush and commit first), and
into `status.restartedFor`. The same value again does nothing; removing the annotation does nothing either (the
template keeps the value last applied).

`ferry.dev/reset-offsets` (earliest, latest or an RFC 3339 time): moves the consumer group of a Paused task. The
operator cannot reach Kafka with the task's credentials, so it records the reset (`status.offsetReset`, with a
new offset epoch) and removes the annotation; the first worker after the resume moves the group before it
consumes (ferry.resets) and notes it in `status.lastOffsetReset`. On a task that is not Paused the reset is
refused (a Warning Event, and the `OffsetReset` condition says why) and the annotation stays, to be removed or
applied at a later pause. The `OffsetReset` condition is True once the last reset recorded has been made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ferry.resets import parse_target
from ferry.tasks import KindCondition

RESTART_ANNOTATION = "ferry.dev/restart"
RESET_ANNOTATION = "ferry.dev/reset-offsets"
RESET_CONDITION = "OffsetReset"
# Who asked for a recorded reset (status.offsetReset.requestedBy).
BY_ANNOTATION, BY_RESUME_WINDOW = "annotation", "resumeWindow"


@dataclass(frozen=True)
class Notice:
    """An Event about the task (posted as ferry.control.reconcile.Event)."""

    type: str
    reason: str
    message: str


def annotation(body: Mapping[str, Any], name: str) -> str | None:
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(name)
    return value if isinstance(value, str) else None


# -- ferry.dev/restart ------------------------------------------------------------------------------


def restart_value(body: Mapping[str, Any], status: Mapping[str, Any]) -> str | None:
    """What the worker pod template carries: the annotation's value, or once it is removed the one last applied
    (so that removing it restarts nothing)."""
    value = annotation(body, RESTART_ANNOTATION)
    return value if value is not None else status.get("restartedFor")


def deployed_restart(deployment: Mapping[str, Any] | None) -> str | None:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    value = ((template.get("metadata") or {}).get("annotations") or {}).get(RESTART_ANNOTATION)
    return value if isinstance(value, str) else None


def restart_notice(
    body: Mapping[str, Any], status: Mapping[str, Any], deployment: Mapping[str, Any] | None, running: bool
) -> Notice | None:
    """The Event for a new value, once: not for the value already recorded or already in the Deployment, nor for
    a task whose Deployment does not exist yet (its first workers start now anyway)."""
    value = annotation(body, RESTART_ANNOTATION)
    if value is None or value == status.get("restartedFor") or deployment is None:
        return None
    if deployed_restart(deployment) == value:
        return None
    if running:
        what = "restarting the workers (the old ones flush and commit first, then new ones start)"
    else:
        what = "noted; no worker runs now, so the next ones start afresh"
    return Notice("Normal", reason="Restarted", message=f"{RESTART_ANNOTATION}={value}: {what}")


# -- ferry.dev/reset-offsets ------------------------------------------------------------------------


def reset_record(to: str, epoch: int, now: str, by: str) -> dict[str, Any]:
    """A reset as status.offsetReset records it (the caller adds the consumer group once it is known)."""
    return {"to": to, "epoch": epoch, "requestedAt": now, "requestedBy": by}


def pending_reset(status: Mapping[str, Any], epoch: int) -> dict[str, Any] | None:
    """The reset recorded for this offset epoch that no worker has made yet."""
    record = status.get("offsetReset")
    if not isinstance(record, dict) or record.get("epoch") != epoch:
        return None
    return record if int(status.get("offsetResetEpoch") or 0) < epoch else None


def reset_target(status: Mapping[str, Any], patch: Mapping[str, Any], epoch: int) -> str | None:
    """The target the workers of this epoch move the group to (FERRY_OFFSET_RESET), None for no reset."""
    record = patch.get("offsetReset") or status.get("offsetReset")
    if isinstance(record, dict) and record.get("epoch") == epoch and epoch > 0:
        return str(record["to"])
    return None


def take_reset(body: Mapping[str, Any], epoch: int, stopped: bool, now: str) -> tuple[int, dict[str, Any] | None]:
    """A valid `ferry.dev/reset-offsets` on a task paused with its workers stopped: recorded under a new offset
    epoch (and the annotation is then removed by the caller). Otherwise nothing: the epoch as it was, None."""
    value = annotation(body, RESET_ANNOTATION)
    if value is None or not stopped:
        return epoch, None
    try:
        parse_target(value)
    except ValueError:
        return epoch, None
    return epoch + 1, reset_record(value.strip(), epoch + 1, now, BY_ANNOTATION)


def reset_condition(
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    recorded: dict[str, Any] | None,
    paused: bool,
    phase: str,
) -> tuple[KindCondition | None, Notice | None]:
    """The `OffsetReset` condition (None while no reset was ever asked for) and the Event its change makes.

    `recorded` is the reset recorded in this reconcile, if any; `paused` whether spec.state is Paused, `phase`
    the state the task is in."""
    value = annotation(body, RESET_ANNOTATION)
    condition: KindCondition | None = None
    warning = False
    if value is not None and recorded is None:
        try:
            parse_target(value)
        except ValueError as err:
            condition = KindCondition(
                RESET_CONDITION,
                active=False,
                reason="InvalidOffsetReset",
                message=f"{RESET_ANNOTATION}: {err}: correct the annotation, or remove it",
            )
            warning = True
        else:
            if not paused:
                condition = KindCondition(
                    RESET_CONDITION,
                    active=False,
                    reason="OffsetResetRefused",
                    message=f"{RESET_ANNOTATION}={value} refused: the consumer group's offsets are moved only while "
                    f"the task is Paused, and it is {phase}; pause it (spec.state: Paused) and the reset is "
                    "recorded once its workers have stopped, then resume it; or remove the annotation",
                )
                warning = True
            else:
                condition = KindCondition(
                    RESET_CONDITION,
                    active=False,
                    reason="OffsetResetPending",
                    message=f"{RESET_ANNOTATION}={value}: recorded once the workers have flushed and stopped",
                )
    record = recorded or status.get("offsetReset")
    if condition is None and isinstance(record, dict):
        condition = _recorded_condition(record, status)
    if condition is None:
        return None, None
    before: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == RESET_CONDITION), {}
    )
    if (before.get("reason"), before.get("message")) == (condition.reason, condition.message):
        return condition, None
    if warning:
        return condition, Notice("Warning", condition.reason, condition.message)
    if condition.active or (recorded is not None and recorded.get("requestedBy") == BY_ANNOTATION):
        return condition, Notice("Normal", condition.reason, condition.message)
    return condition, None


def _recorded_condition(record: Mapping[str, Any], status: Mapping[str, Any]) -> KindCondition:
    epoch, to = int(record.get("epoch") or 0), record.get("to")
    group = record.get("consumerGroup")
    if int(status.get("offsetResetEpoch") or 0) < epoch:
        return KindCondition(
            RESET_CONDITION,
            active=False,
            reason="OffsetResetPending",
            message=f"consumer group {group} moves to {to} when the workers of offset epoch {epoch} start, before "
            "they consume" + (" (when the task resumes)" if record.get("requestedBy") == BY_ANNOTATION else ""),
        )
    last = status.get("lastOffsetReset")
    if isinstance(last, dict) and last.get("epoch") == epoch:
        done = (
            f"consumer group {last.get('consumerGroup')} moved to {last.get('to')} at {last.get('time')}: "
            f"{last.get('partitions')} partitions"
        )
    else:
        done = f"consumer group {group} moved to {to} (offset epoch {epoch})"
    return KindCondition(RESET_CONDITION, active=True, reason="OffsetsReset", message=done)
