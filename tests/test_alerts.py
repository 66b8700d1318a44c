"""The chart's alert rules, checked by Prometheus's own promtool: the rendered PrometheusRule is valid, reads only
metrics Ferry exports, and each alert fires on synthetic series that should fire it, and only on those.

promtool is Prometheus's; it is built from its Go module once (tests/support/gotools.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ferry.metrics import TaskStateMetrics, WorkerMetrics
from ferry.operator import TASK_STATES
from prometheus_client import Counter

from tests.support import tools
from tests.support.chart import Helm, documents
from tests.support.gotools import PROMTOOL

ALERTS = {
    "FerryTaskFailed",
    "FerryWorkerNotReporting",
    "FerryWorkerUnhealthy",
    "FerryLagGrowing",
    "FerryNoDump",
    "FerryConsumerGroupNotReadyForFailover",
    "FerryOperatorBehind",
}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools.helm_binary(), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def rule(helm: Helm) -> dict[str, Any]:
    """The rendered PrometheusRule, with an extra alert label as a user would set one."""
    values = {"metrics": {"prometheusRule": {"enabled": True, "alertLabels": {"team": "data"}}}}
    [found] = [o for o in documents(helm.template(values)) if o["kind"] == "PrometheusRule"]
    return found


@pytest.fixture(scope="module")
def rules_file(rule: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alerts") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL.binary()), *args], capture_output=True, text=True, timeout=120)


def test_the_rule_is_off_by_default_and_valid_for_promtool(helm: Helm, rule: dict[str, Any], rules_file: Path) -> None:
    assert not [o for o in documents(helm.template()) if o["kind"] == "PrometheusRule"]
    assert {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]} == ALERTS
    checked = promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def exported_metrics() -> set[str]:
    """Every metric name a worker or the operator exposes (counters with their _total)."""
    registries = [WorkerMetrics("ObsDumpTask", "ns/t").registry, TaskStateMetrics().registry, TASK_STATES.registry]
    names = set()
    for registry in registries:
        for collector in list(registry._collector_to_names):  # the registered metrics, labelled or not
            names.add(collector._name + ("_total" if isinstance(collector, Counter) else ""))  # type: ignore[attr-defined]
    return names


def test_the_rules_read_only_metrics_ferry_exports(rule: dict[str, Any]) -> None:
    exprs = " ".join(r["expr"] for group in rule["spec"]["groups"] for r in group["rules"])
    read = set(re.findall(r"\bferry_[a-z_]+", exprs))
    assert read and read <= exported_metrics(), read - exported_metrics()


def expand(template: str, labels: dict[str, str], value: float | None = None) -> str:
    """The annotation Prometheus would make of a rule's template (the two forms the rules use)."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)
    return text.replace("{{ $value }}", f"{value:g}" if value is not None else "")


def expected(rule: dict[str, Any], alert: str, labels: dict[str, str], value: float | None = None) -> dict[str, Any]:
    [found] = [r for group in rule["spec"]["groups"] for r in group["rules"] if r["alert"] == alert]
    return {
        "exp_labels": {**found["labels"], **labels},
        "exp_annotations": {k: expand(v, labels, value) for k, v in found["annotations"].items()},
    }


def test_each_alert_fires_on_the_series_that_should_fire_it_and_no_others(
    rule: dict[str, Any], rules_file: Path, tmp_path: Path
) -> None:
    series = [
        # FerryTaskFailed: one task Failed for 30 minutes, another only for 5
        ('ferry_task_state{kind="TopicSync",namespace="a",task="a/broken",state="Failed"}', "1x30"),
        ('ferry_task_state{kind="TopicSync",namespace="a",task="a/blip",state="Failed"}', "1x5 0x25"),
        # FerryWorkerNotReporting: Unassigned for 30 minutes, and for 3
        ('ferry_task_state{kind="DataAccessTask",namespace="b",task="b/gone",state="Unassigned"}', "1x30"),
        ('ferry_task_state{kind="DataAccessTask",namespace="b",task="b/starting",state="Unassigned"}', "1x3 0x27"),
        # FerryWorkerUnhealthy: one pod reports an error throughout, the other is fine
        ('ferry_worker_healthy{kind="TopicSync",task="a/copy",task_name="",pod="copy-1"}', "0x30"),
        ('ferry_worker_healthy{kind="TopicSync",task="a/copy",task_name="",pod="copy-2"}', "1x30"),
        # FerryLagGrowing: 10 more records waiting each minute; one shrinking; one high and flat
        ('ferry_lag_records{kind="TopicSync",task="a/slow",task_name="",topic="t",partition="0"}', "0+10x40"),
        ('ferry_lag_records{kind="TopicSync",task="a/draining",task_name="",topic="t",partition="0"}', "400-10x40"),
        ('ferry_lag_records{kind="TopicSync",task="a/steady",task_name="",topic="t",partition="0"}', "500x40"),
        # FerryNoDump: a dump that stopped writing objects with records waiting, one that writes every minute,
        # and one that stopped writing with nothing waiting
        ('ferry_last_dump_timestamp_seconds{kind="ObsDumpTask",task="c/stuck",task_name=""}', "0x40"),
        ('ferry_dump_period_seconds{kind="ObsDumpTask",task="c/stuck",task_name=""}', "60x40"),
        ('ferry_lag_records{kind="ObsDumpTask",task="c/stuck",task_name="",topic="t",partition="0"}', "7x40"),
        ('ferry_last_dump_timestamp_seconds{kind="ObsDumpTask",task="c/fine",task_name=""}', "0+60x40"),
        ('ferry_dump_period_seconds{kind="ObsDumpTask",task="c/fine",task_name=""}', "60x40"),
        ('ferry_lag_records{kind="ObsDumpTask",task="c/fine",task_name="",topic="t",partition="0"}', "7x40"),
        ('ferry_last_dump_timestamp_seconds{kind="ObsDumpTask",task="c/idle",task_name=""}', "0x40"),
        ('ferry_dump_period_seconds{kind="ObsDumpTask",task="c/idle",task_name=""}', "60x40"),
        ('ferry_lag_records{kind="ObsDumpTask",task="c/idle",task_name="",topic="t",partition="0"}', "0x40"),
        # FerryConsumerGroupNotReadyForFailover: two workers share a sync's partitions; group g1 is not ready on
        # one of them throughout, g2 only for 5 minutes, g3 is ready on both
        ('ferry_consumer_group_failover_ready{kind="TopicSync",task="d/dr",task_name="",group="g1",pod="w-1"}', "1x40"),
        ('ferry_consumer_group_failover_ready{kind="TopicSync",task="d/dr",task_name="",group="g1",pod="w-2"}', "0x40"),
        (
            'ferry_consumer_group_failover_ready{kind="TopicSync",task="d/dr",task_name="",group="g2",pod="w-1"}',
            "0x5 1x35",
        ),
        ('ferry_consumer_group_failover_ready{kind="TopicSync",task="d/dr",task_name="",group="g3",pod="w-1"}', "1x40"),
        ('ferry_consumer_group_failover_ready{kind="TopicSync",task="d/dr",task_name="",group="g3",pod="w-2"}', "1x40"),
        # FerryOperatorBehind (interval 15 s by default: above 60 s): one operator behind from minute 6, one that
        # stays within its interval, one behind for 6 minutes only (a burst of new tasks)
        ('ferry_operator_oldest_reconcile_age_seconds{namespace="ferry",pod="op-behind"}', "14x5 100x35"),
        ('ferry_operator_oldest_reconcile_age_seconds{namespace="ferry",pod="op-fine"}', "14x40"),
        ('ferry_operator_oldest_reconcile_age_seconds{namespace="other",pod="op-burst"}', "14x5 300x5 14x30"),
    ]
    tests = [
        ("FerryTaskFailed", "9m", []),  # not Failed long enough yet
        (
            "FerryTaskFailed",
            "20m",
            [expected(rule, "FerryTaskFailed", {"kind": "TopicSync", "namespace": "a", "task": "a/broken"})],
        ),
        (
            "FerryWorkerNotReporting",
            "20m",
            [expected(rule, "FerryWorkerNotReporting", {"kind": "DataAccessTask", "namespace": "b", "task": "b/gone"})],
        ),
        (
            "FerryWorkerUnhealthy",
            "20m",
            [expected(rule, "FerryWorkerUnhealthy", {"kind": "TopicSync", "task": "a/copy", "pod": "copy-1"})],
        ),
        ("FerryLagGrowing", "20m", []),  # growing since minute 10 only
        ("FerryLagGrowing", "30m", [expected(rule, "FerryLagGrowing", {"kind": "TopicSync", "task": "a/slow"}, 100)]),
        ("FerryNoDump", "1m", []),  # within two periods
        ("FerryNoDump", "10m", [expected(rule, "FerryNoDump", {"kind": "ObsDumpTask", "task": "c/stuck"})]),
        ("FerryConsumerGroupNotReadyForFailover", "14m", []),  # not long enough yet
        (
            "FerryConsumerGroupNotReadyForFailover",
            "20m",
            [
                expected(
                    rule, "FerryConsumerGroupNotReadyForFailover", {"kind": "TopicSync", "task": "d/dr", "group": "g1"}
                )
            ],
        ),
    ]
    behind = expected(rule, "FerryOperatorBehind", {"namespace": "ferry", "pod": "op-behind"})
    tests += [("FerryOperatorBehind", "14m", []), ("FerryOperatorBehind", "20m", [behind])]
    unit = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": alerts} for name, at, alerts in tests
                ],
            }
        ],
    }
    path = tmp_path / "alerts-test.yaml"
    path.write_text(yaml.safe_dump(unit))
    tested = promtool("test", "rules", str(path))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
