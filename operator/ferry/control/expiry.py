"""Records the topic's retention deleted before the task read them: counted once, announced once.

A worker that is given a partition compares the group's committed offset with the partition's earliest offset
(ferry.kafka.expired_offsets). A committed offset below it (a long pause, or a worker far behind a short
retention) means the records in between are gone: the worker reads on from the earliest offset and reports each
such partition in its report's `expired` list (topic, partition, committed and earliest offset, records, time).

The operator adds each finding to `status.recordsExpired` once and says so once, with a Warning Event
`RecordsExpired`: a finding is known by its partition and committed offset, kept in `status.expired` (the latest
per partition). The same committed offset found again (a worker restarted before it committed anything) adds only
what expired since; an older finding (a stale report) adds nothing.
"""

from __future__ import annotations

from typing import Any

from ferry.reporting import MAX_REPORTED_PARTITIONS

# How many partitions an Event names; the status lists up to MAX_REPORTED_PARTITIONS.
_NAMED = 5


def _key(entry: dict[str, Any]) -> tuple[str, int]:
    return str(entry.get("topic")), int(entry.get("partition") or 0)


def account_expired(status: dict[str, Any], live: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The status patch (`recordsExpired`, `expired`) and the Warning Event's message for the findings in the live
    workers' reports not yet counted; ({}, None) when there are none."""
    known = {_key(e): e for e in status.get("expired") or [] if isinstance(e, dict)}
    found: list[tuple[dict[str, Any], int]] = []
    findings = [f for report in live.values() for f in (report or {}).get("expired") or [] if isinstance(f, dict)]
    for finding in sorted(findings, key=lambda f: str(f.get("time") or "")):
        try:
            committed, earliest = int(finding["committedOffset"]), int(finding["earliestOffset"])
        except (KeyError, TypeError, ValueError):
            continue
        before = known.get(_key(finding))
        if before is not None and int(before.get("committedOffset", -1)) == committed:
            added = earliest - int(before.get("earliestOffset", earliest))  # found again, later: what expired since
        elif before is not None and str(finding.get("time") or "") < str(before.get("time") or ""):
            added = 0  # older than what was counted for the partition
        else:
            added = earliest - committed
        if added <= 0:
            continue
        known[_key(finding)] = finding
        found.append((finding, added))
    if not found:
        return {}, None
    total = sum(added for _, added in found)
    latest = sorted(known.values(), key=lambda e: str(e.get("time") or ""), reverse=True)[:MAX_REPORTED_PARTITIONS]
    patch = {
        "recordsExpired": int(status.get("recordsExpired") or 0) + total,
        "expired": sorted(latest, key=_key),
    }
    named = [
        f"{f['topic']}[{f['partition']}] {added} (saved offset {f['committedOffset']}, earliest {f['earliestOffset']})"
        for f, added in sorted(found, key=lambda item: _key(item[0]))[:_NAMED]
    ]
    more = f" and {len(found) - _NAMED} more partitions" if len(found) > _NAMED else ""
    message = (
        f"{total} records were deleted by the topic's retention before the task read them, and are skipped: "
        f"{', '.join(named)}{more}; reading continues from the earliest offsets still there. To lose none, resume "
        "paused tasks sooner than the topics' retention.ms, or raise it"
    )
    return patch, message
