"""Records the retention deleted before the task read them: the operator counts each worker finding once, in
`status.recordsExpired`, and says so once with a Warning Event. Live: the worker tests (tests/test_*_worker.py)
and tests/test_dataaccess_e2e.py, tests/test_obsdump_e2e.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ferry.control.reconcile import Observed, Outcome, decide, rfc3339
from ferry.dataaccess.worker import PLUGIN
from ferry.settings import OperatorSettings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def task(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {"name": "pull", "namespace": "ns", "uid": "uid-pull", "generation": 1, "annotations": {}},
        "spec": {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": "dts:9092",
                    "topic": "subs",
                    "consumerGroup": "g",
                    "securityProtocol": "PLAINTEXT",
                },
            },
            "target": {"bootstrapServers": "kafka:9092", "topic": "orders"},
        },
        "status": status,
    }


def finding(partition: int, committed: int, earliest: int, seconds_ago: float = 10) -> dict[str, Any]:
    return {
        "topic": "subs",
        "partition": partition,
        "committedOffset": committed,
        "earliestOffset": earliest,
        "records": earliest - committed,
        "time": rfc3339(NOW - timedelta(seconds=seconds_ago)),
    }


def worker(*expired: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"phase": "Running", "heartbeatTime": rfc3339(NOW - timedelta(seconds=2)), "epoch": 0}
    if expired:
        report["expired"] = list(expired)
    return report


def run(status: dict[str, Any]) -> Outcome:
    return decide(PLUGIN, task(status), Observed(now=NOW), OperatorSettings(heartbeat_timeout=60))


def expired_events(outcome: Outcome) -> list[str]:
    return [e.message for e in outcome.events if e.reason == "RecordsExpired" and e.type == "Warning"]


def test_a_finding_is_counted_and_announced_once() -> None:
    workers = {"pull-1": worker(finding(0, 12, 62), finding(1, 5, 7))}
    first = run({"workers": workers})
    assert first.status["recordsExpired"] == 52
    assert [(e["partition"], e["records"]) for e in first.status["expired"]] == [(0, 50), (1, 2)]
    [message] = expired_events(first)
    assert message.startswith("52 records were deleted by the topic's retention before the task read them")
    assert "subs[0] 50 (saved offset 12, earliest 62), subs[1] 2 (saved offset 5, earliest 7)" in message
    # The worker goes on reporting the same findings: nothing more is counted or said.
    again = run({**first.status, "workers": workers})
    assert "recordsExpired" not in again.status and not expired_events(again)


def test_a_later_finding_of_another_offset_adds_up_and_a_refound_one_adds_what_expired_since() -> None:
    status = run({"workers": {"pull-1": worker(finding(0, 12, 62, seconds_ago=60))}}).status
    # Another pause: the partition's new saved offset expired too.
    later = run({**status, "workers": {"pull-2": worker(finding(0, 100, 130))}})
    assert later.status["recordsExpired"] == 80 and "30 records" in expired_events(later)[0]
    # A worker restarted before committing finds the same saved offset, and more gone meanwhile.
    status = {**status, **later.status}
    refound = run({**status, "workers": {"pull-3": worker(finding(0, 100, 135, seconds_ago=1))}})
    assert refound.status["recordsExpired"] == 85
    assert [e["earliestOffset"] for e in refound.status["expired"]] == [135]


def test_a_stale_report_of_an_older_finding_adds_nothing() -> None:
    status = run({"workers": {"pull-2": worker(finding(0, 100, 130, seconds_ago=5))}}).status
    stale = run({**status, "workers": {"pull-1": worker(finding(0, 12, 62, seconds_ago=60))}})
    assert "recordsExpired" not in stale.status and not expired_events(stale)


def test_reports_without_findings_leave_the_count_alone() -> None:
    outcome = run({"recordsExpired": 7, "workers": {"pull-1": worker()}})
    assert "recordsExpired" not in outcome.status and not expired_events(outcome)
