"""Consumer-group offset sync of a TopicSync (spec.consumerGroups): an application that read part of a topic on the
source in group G reads exactly the rest on the target in group G. The translation over a fake partition, the
operator's merge and condition, and the whole of it against two real Apache Kafka clusters."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from ferry.control.reconcile import Observed, decide, rfc3339
from ferry.kafka import message_headers
from ferry.metrics import WorkerMetrics
from ferry.settings import OperatorSettings, WorkerSettings
from ferry.tasks import KindCondition, Task
from ferry.topicsync.groups import (
    OFFSET_HEADER,
    Probe,
    TargetPartition,
    Translation,
    failover_ready,
    merge_groups,
    place,
    stamp,
    stamped_offset,
    translate,
)
from ferry.topicsync.model import TOPIC_SYNC, TopicSyncSpec
from ferry.topicsync.pipeline import SyncPipeline
from ferry.topicsync.worker import PLUGIN, summarize
from pydantic import ValidationError

from tests.conftest import TopicFactory
from tests.support.admission import Admission, admission
from tests.support.cluster import KubeEnv
from tests.support.copies import produce_on, read_all
from tests.support.dumps import Recorder, wait_for
from tests.support.kafka import KafkaCluster
from tests.support.threads import join_or_explain
from tests.test_topicsync_worker import sync_spec

# -- the translation over a fake target partition -----------------------------------------------------


class FakeLog:
    """A target partition: offset -> the record's ferry.offset (None: a record without it); missing offsets are
    transaction markers or aborted records a read-committed consumer never sees."""

    def __init__(self, records: dict[int, int | None]) -> None:
        self.records = records
        self.probes = 0

    def first_stamped(self, start: int, end: int) -> tuple[int, int] | None:
        self.probes += 1
        for offset in sorted(o for o in self.records if start <= o < end):
            stamped = self.records[offset]
            if stamped is not None:
                return offset, stamped
        return None

    def first_record(self, start: int, end: int) -> int | None:
        self.probes += 1
        return next((o for o in sorted(self.records) if start <= o < end), None)


class FakeSource:
    def __init__(self, offsets: list[int]) -> None:
        self.offsets = offsets  # what a read-committed consumer sees and the sync copies

    def first_copied(self, start: int, end: int) -> int | None:
        return next((o for o in sorted(self.offsets) if start <= o < end), None)


def sequence(stamps: list[int | None], start: int = 0) -> dict[int, int | None]:
    return {start + i: s for i, s in enumerate(stamps)}


def answer(records: dict[int, int | None], committed: int) -> int:
    """The specification, by a scan: the first stamped record at or above c, else one past the last stamped one."""
    stamped = [(o, s) for o, s in sorted(records.items()) if s is not None]
    at_or_above = [o for o, s in stamped if s >= committed]
    if at_or_above:
        return at_or_above[0]
    return stamped[-1][0] + 1 if stamped else max(records, default=-1) + 1


def placed(records: dict[int, int | None], high: int, committed: int) -> int:
    """Where the sync places a group (the specification, by a scan): `answer`, moved on past offsets a read-committed
    consumer never reads (transaction markers, aborted records) to the next record, or to the end `high`."""
    offset = answer(records, committed)
    return next((o for o in sorted(records) if o >= offset), high)


@pytest.mark.parametrize(
    "stamps",
    [
        list(range(10)),  # a plain copy
        [None] * 7 + list(range(10)),  # the target had 7 older records
        [None, 0, 1, None, None, 2, 3, None, 4, 5],  # other writers in between
        [0, 1, 2, 6, 7, 8, 20, 21],  # gaps: markers, aborted records, loops on the source
        [None, None, None],  # nothing copied
    ],
)
def test_the_search_finds_what_a_scan_finds(stamps: list[int | None]) -> None:
    records = sequence(stamps)
    high = len(stamps)
    for committed in range(0, 25):
        if any(s is not None for s in stamps):
            assert translate(FakeLog(records), 0, high, committed).offset == answer(records, committed), committed
        else:
            assert translate(FakeLog(records), 0, high, committed).offset == high  # past the older records


def test_the_search_steps_over_markers_and_starts_where_the_last_answer_was() -> None:
    # offsets 3 and 7 are transaction markers on the target; 100 older records before the copies
    records = {**{i: None for i in range(100)}, **{100 + i: i for i in range(3)}, **{104 + i: 3 + i for i in range(3)}}
    records.update({108 + i: 6 + i for i in range(1000)})
    high = 1108
    log = FakeLog(records)
    assert translate(log, 0, high, 500) == Translation(602, 500)
    cold = log.probes
    log.probes = 0
    assert translate(log, 0, high, 510, start=602, guess=612) == Translation(612, 510)
    assert log.probes <= 2 < cold  # the guess and the offset before it
    assert translate(FakeLog(records), 0, high, 5000).offset == high  # the copy has not got there


def test_duplicates_of_a_redone_batch_never_make_the_group_skip_a_record() -> None:
    stamps: list[int | None] = [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]  # 2-4 copied twice (a batch redone)
    records = sequence(stamps)
    for committed in range(0, 8):
        offset = translate(FakeLog(records), 0, len(stamps), committed).offset
        after = [s for o, s in sorted(records.items()) if o >= offset and s is not None]
        assert set(range(committed, 7)) <= set(after), committed


def test_a_committed_offset_the_copy_has_not_reached_or_never_copied_is_not_ready() -> None:
    log = FakeLog(sequence(list(range(50, 60)), start=20))  # the sync started at source offset 50
    source = FakeSource(list(range(0, 60)))
    assert place(log, source, 20, 30, 55, position=None).ready is False
    behind = place(log, source, 20, 30, 58, position=57)
    assert not behind.ready and "copied up to offset 57" in behind.why
    early = place(log, source, 20, 30, 40, position=60)
    assert not early.ready and "from offset 40" in early.why and "started after them" in early.why
    assert place(log, source, 20, 30, 55, position=60) == place(log, source, 20, 30, 55, position=55)
    assert place(log, source, 20, 30, 55, position=60).translation == Translation(25, 55)


def test_a_committed_offset_on_a_transaction_marker_or_before_aborted_records_is_ready() -> None:
    # source: 0-4 committed, 5 marker, 6-8 aborted, 9 marker, 10-12 committed: copied to target 0-7
    source = FakeSource([0, 1, 2, 3, 4, 10, 11, 12])
    log = FakeLog(sequence([0, 1, 2, 3, 4, 10, 11, 12]))
    for committed in (5, 6, 9, 10):
        placed = place(log, source, 0, 8, committed, position=13)
        assert placed.ready and placed.translation == Translation(5, 10), committed
    caught_up = place(log, source, 0, 8, 13, position=13)
    assert caught_up.ready and caught_up.translation == Translation(8, None)


def test_a_group_that_read_everything_goes_past_the_markers_of_an_exactly_once_copy() -> None:
    # target: copies of source 0-4 in two transactions (markers at 3 and 6), then an aborted batch (7, 8) and its
    # marker (9): a read-committed consumer reads 0-2 and 4-5 only, and the end is 10
    log = FakeLog(sequence([0, 1, 2]) | {4: 3, 5: 4})
    source = FakeSource([0, 1, 2, 3, 4])
    caught_up = place(log, source, 0, 10, 5, position=5)
    assert caught_up.ready and caught_up.translation == Translation(10, None)  # at the end: nothing left to read
    assert place(log, source, 0, 10, 3, position=5).translation == Translation(4, 3)
    # the target's own record after the copies is still read
    with_own = FakeLog(sequence([0, 1, 2]) | {4: 3, 5: 4, 8: None})
    assert place(with_own, source, 0, 10, 5, position=5).translation == Translation(8, None)


def test_a_group_is_not_placed_before_copied_records_the_target_does_not_show_yet() -> None:
    # An exactly-once copy committed source 0-99 as target 0-99 and returned (its position is 100), but the target
    # shows read-committed consumers only 0-49 so far: the markers of its last transaction are not written yet.
    # Placed at 50, the group that read all 100 on the source would read 50-99 again.
    source = FakeSource(list(range(100)))
    shown = place(FakeLog(sequence(list(range(50)))), source, 0, 50, 100, position=100)
    assert not shown.ready and "source record 50" in shown.why and "not visible on the target yet" in shown.why
    # nothing visible yet, and the target holds records read-committed consumers cannot see
    unsettled = place(FakeLog({}), source, 0, 0, 100, position=100, settled=False)
    assert not unsettled.ready and "cannot see yet" in unsettled.why
    # once the target shows them the group goes to the end, past the marker
    done = place(FakeLog(sequence(list(range(100)))), source, 0, 101, 100, position=100)
    assert done.ready and done.translation == Translation(101, None)
    # nothing copied and nothing unseen (the sync started at latest after the group's records): the target's end
    assert place(FakeLog({}), source, 0, 0, 100, position=100).translation == Translation(0, None)


def test_the_offset_header_replaces_one_the_record_had() -> None:
    headers: list[tuple[str, str | bytes | None]] = [("app", b"x"), (OFFSET_HEADER, b"17")]
    assert stamp(headers, 42) == [("app", b"x"), (OFFSET_HEADER, b"42")]
    assert stamped_offset(stamp(headers, 42)) == 42
    assert stamped_offset([(OFFSET_HEADER, b"garbage")]) is None and stamped_offset([]) is None


# -- the spec ---------------------------------------------------------------------------------------------


def spec_with(groups: dict[str, Any] | None) -> TopicSyncSpec:
    body = {"source": {"bootstrapServers": "a:9092"}, "target": {"bootstrapServers": "b:9092"}, "topics": ["t"]}
    return TopicSyncSpec.model_validate({**body, **({"consumerGroups": groups} if groups else {})})


def test_the_spec_names_groups_or_a_pattern_with_excludes() -> None:
    assert spec_with({"names": ["g"]}).consumer_groups.interval_seconds == 10  # type: ignore[union-attr]
    selection = spec_with({"pattern": "app-.*", "excludePattern": "app-test.*"}).consumer_groups
    assert selection is not None
    assert [g for g in ("app-1", "app-test", "other") if selection.selects(g)] == ["app-1"]
    for wrong, says in [
        ({"names": ["g"], "pattern": "g.*"}, "exactly one of names and pattern"),
        ({}, "exactly one of names and pattern"),
        ({"names": ["g"], "excludePattern": "x"}, "excludePattern needs pattern"),
        ({"pattern": "("}, "not a valid regular expression"),
        ({"names": ["g"], "intervalSeconds": 0}, "greater than or equal to 1"),
    ]:
        with pytest.raises(ValidationError, match=says):
            spec_with(wrong or {"intervalSeconds": 5})
    rules = TOPIC_SYNC.spec_model.model_json_schema()["$defs"]["ConsumerGroupSync"]["x-kubernetes-validations"]
    assert [r["rule"] for r in rules] == [
        "has(self.names) != has(self.pattern)",
        "!has(self.excludePattern) || has(self.pattern)",
    ]


# -- the operator: reports merged, the condition and its Events --------------------------------------------

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def entry(group: str, state: str = "Ready", assigned: int = 2, partitions: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "group": group,
        "state": state,
        "ready": state == "Ready",
        "translatedLag": extra.pop("lag", 0),
        "partitions": partitions,
        "assignedPartitions": assigned,
        "readyPartitions": assigned if state == "Ready" else 0,
        **extra,
    }


def report(*entries: dict[str, Any], checked: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "phase": "Running",
        "heartbeatTime": rfc3339(NOW - timedelta(seconds=2)),
        "epoch": 0,
        "consumerGroupSync": True,
    }
    if checked:
        body["consumerGroups"] = list(entries)
    return body


def test_the_workers_reports_merge_per_group() -> None:
    one = report(entry("g", assigned=1, partitions=3, lag=5), entry("h", "ActiveOnTarget", message="2 members"))
    two = report(entry("g", assigned=1, partitions=3, lag=7))
    merged = merge_groups([one, two])["consumerGroups"]
    assert merged[0] == {
        "group": "g",
        "state": "NotReady",
        "ready": False,
        "translatedLag": 12,
        "partitions": 3,
        "readyPartitions": 2,
        "message": "1 of 3 partitions not checked yet (the workers rebalance)",
    }
    assert merged[1]["state"] == "ActiveOnTarget" and merged[1]["message"] == "2 members"
    three = report(entry("g", assigned=1, partitions=3, lag=1))
    assert merge_groups([one, two, three])["consumerGroups"][0]["ready"] is True
    assert merge_groups([report(checked=False)]) == {}  # not checked yet: the status keeps what it had
    assert merge_groups([{"phase": "Running"}]) == {"consumerGroups": None, "consumerGroupsError": None}


def body(status: dict[str, Any], groups: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": "dr", "namespace": "ns", "uid": "uid-dr", "generation": 1},
        "spec": {
            "source": {"bootstrapServers": "a:9092", "instanceId": "a"},
            "target": {"bootstrapServers": "b:9092", "instanceId": "b"},
            "topics": ["orders"],
            **({"consumerGroups": groups} if groups is not None else {}),
            **spec,
        },
        "status": status,
    }


def failover(status: dict[str, Any], groups: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, list[Any]]:
    outcome = decide(PLUGIN, body(status, groups), Observed(now=NOW), OperatorSettings(heartbeat_timeout=60))
    found = next((c for c in outcome.status["conditions"] if c["type"] == "FailoverReady"), None)
    return found, [e for e in outcome.events if e.reason.startswith(("ConsumerGroup", "NoConsumerGroups"))]


def test_failover_ready_is_announced_when_it_turns_true_and_when_it_stops() -> None:
    groups = {"names": ["g", "h"]}
    assert failover({"workers": {"w": report(entry("g"))}}, None) == (None, [])  # not asked for: no condition
    waiting, events = failover({"workers": {"w": report(checked=False)}}, groups)
    assert waiting is not None and waiting["status"] == "False" and waiting["reason"] == "ConsumerGroupsNotChecked"
    assert events == []
    ready_status = {"workers": {"w": report(entry("g", lag=3), entry("h", lag=4))}, "conditions": [waiting]}
    ready, events = failover(ready_status, groups)
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "ConsumerGroupsReady"
    assert "2 consumer groups (g, h)" in ready["message"] and "translated lag 7" in ready["message"]
    assert [(e.type, e.reason) for e in events] == [("Normal", "ConsumerGroupsReady")]
    assert failover({**ready_status, "conditions": [ready]}, groups)[1] == []  # said once
    behind = entry("h", "NotReady", message="orders[0]: the sync has copied up to offset 5")
    lost, events = failover({"workers": {"w": report(entry("g"), behind)}, "conditions": [ready]}, groups)
    assert lost is not None and lost["status"] == "False" and lost["reason"] == "ConsumerGroupsNotReady"
    assert (
        "1 of 2 consumer groups not ready: h (NotReady: orders[0]: the sync has copied up to offset 5)"
        in (lost["message"])
    )
    assert [(e.type, e.reason) for e in events] == [("Warning", "ConsumerGroupsNotReady")]
    # a worker restarting has not checked yet: the groups last reported stand
    last = merge_groups([report(entry("g"), entry("h"))])["consumerGroups"]
    kept, events = failover(
        {"workers": {"w2": report(checked=False)}, "conditions": [ready], "consumerGroups": last}, groups
    )
    assert kept is not None and kept["status"] == "True" and events == []
    failed, _ = failover({"workers": {"w": {**report(checked=False), "consumerGroupsError": "no answer"}}}, groups)
    assert failed is not None and failed["reason"] == "ConsumerGroupSyncFailed" and "no answer" in failed["message"]


def test_a_paused_sync_is_not_ready_to_fail_over() -> None:
    task = Task(
        TOPIC_SYNC, "dr", "ns", TopicSyncSpec.model_validate(body({}, {"names": ["g"]}, state="Paused")["spec"])
    )
    [condition] = failover_ready(task, {"consumerGroups": merge_groups([report(entry("g"))])["consumerGroups"]})
    assert (condition.active, condition.reason, condition.on_false) == (False, "ConsumerGroupsNotChecked", "Warning")


# -- against two real Kafka clusters ---------------------------------------------------------------------


@contextmanager
def running(spec: dict[str, Any]) -> Iterator[tuple[Recorder, SyncPipeline]]:
    """A TopicSync worker in a thread (as tests.test_topicsync_worker.syncing), with its pipeline for its metrics."""
    parsed = TopicSyncSpec.model_validate({"startFrom": "earliest", **spec})
    recorder = Recorder()
    group = f"sync-{uuid.uuid4().hex[:8]}"
    pipeline = SyncPipeline(
        parsed,
        {"bootstrap.servers": spec["source"]["bootstrapServers"]},
        {"bootstrap.servers": spec["target"]["bootstrapServers"]},
        group,
        recorder,
        WorkerMetrics("TopicSync", f"ns/{group}"),
        WorkerSettings(report_interval=0.5, topic_refresh_interval=1.0, session_timeout_ms=6000),
    )
    stop = threading.Event()
    thread = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield recorder, pipeline
    finally:
        stop.set()
        join_or_explain(thread)


def groups_spec(source: KafkaCluster, target: KafkaCluster, topic: str, **groups: Any) -> dict[str, Any]:
    return sync_spec(source, target, topics=[topic], consumerGroups={"intervalSeconds": 1, **groups})


def condition_of(recorder: Recorder, spec: dict[str, Any]) -> KindCondition | None:
    """FailoverReady as the operator would set it from the worker's latest report."""
    if not recorder.reports:
        return None
    task = Task(TOPIC_SYNC, "dr", "ns", TopicSyncSpec.model_validate(spec))
    [condition] = failover_ready(task, summarize([recorder.last.wire()]))
    return condition


def waiting_for(recorder: Recorder, condition: Callable[[], Any], what: str, timeout: float = 60) -> None:
    """wait_for, saying what the worker last reported of the groups when the time is up."""
    try:
        wait_for(lambda: recorder.reports and condition(), timeout=timeout, what=what)
    except AssertionError as err:
        last = recorder.last if recorder.reports else None
        shown = {k: last.extra.get(k) for k in ("consumerGroups", "consumerGroupsError")} if last else None
        raise AssertionError(f"{err}; copied {last.totals.records if last else None}, groups: {shown}") from None


def groups_of(recorder: Recorder) -> dict[str, dict[str, Any]]:
    reported = summarize([recorder.last.wire()]).get("consumerGroups") if recorder.reports else None
    return {g["group"]: g for g in reported or []}


def app_reads_first(bootstrap: str, topic: str, group: str, counts: dict[int, int]) -> list[bytes]:
    """An application reads the first counts[p] records of each partition (read committed) in `group`, and commits
    after the last one it read (its offset + 1)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in counts])
    read: dict[int, list[bytes]] = {p: [] for p in counts}
    last: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while any(len(read[p]) < n for p, n in counts.items()) and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            p = message.partition()
            if message.error() is None and len(read[p]) < counts[p]:
                read[p].append(message.value())
                last[p] = message.offset()
    assert {p: len(values) for p, values in read.items()} == counts
    consumer.commit(offsets=[TopicPartition(topic, p, last[p] + 1) for p in counts], asynchronous=False)
    consumer.close()
    return [value for values in read.values() for value in values]


def app_reads_on(bootstrap: str, topic: str, group: str, expected: int) -> list[bytes]:
    """The application, moved: subscribes in `group` (with auto.offset.reset earliest, so a group without offsets
    would read everything) and reads what it gets, until `expected` records and 2 s more."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline, linger = time.monotonic() + 30, None
    while time.monotonic() < deadline and (linger is None or time.monotonic() < linger):
        values += [m.value() for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
        if linger is None and len(values) >= expected:
            linger = time.monotonic() + 2
    consumer.close()
    return values


def committed_on(broker: KafkaCluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    admin = broker.admin()
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=15)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def commit_on(broker: KafkaCluster, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def fails_over_exactly(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic: str, first_part: dict[int, int], everything: list[bytes]
) -> tuple[list[bytes], Recorder, SyncPipeline]:
    """The application reads `first_part` on the source, the sync runs until FailoverReady, the application moves
    to the target: it reads the rest of `everything`, once each."""
    group = f"app-{uuid.uuid4().hex[:8]}"
    first = app_reads_first(kafka.bootstrap, topic, group, first_part)
    spec = groups_spec(kafka, kafka2, topic, names=[group])
    with running(spec) as (recorder, pipeline):
        waiting_for(
            recorder,
            lambda: (
                recorder.last.totals.records == len(everything)
                and (c := condition_of(recorder, spec)) is not None
                and c.active
                # a round after the copy finished: the rest is on the target
                and groups_of(recorder)[group]["translatedLag"] == len(everything) - len(first)
            ),
            "everything copied and FailoverReady",
        )
        condition = condition_of(recorder, spec)
        assert condition is not None and condition.reason == "ConsumerGroupsReady"
        assert groups_of(recorder)[group]["state"] == "Ready"
        labels = {**pipeline.metrics.labels, "group": group}
        registry = pipeline.metrics.registry
        assert registry.get_sample_value("ferry_consumer_group_failover_ready", labels) == 1
        assert registry.get_sample_value("ferry_consumer_group_translated_lag", labels) == len(everything) - len(first)
        assert registry.get_sample_value("ferry_consumer_group_offsets_translated_total", labels) == len(first_part)
    rest = app_reads_on(kafka2.bootstrap, topic, group, len(everything) - len(first))
    assert len(rest) == len(set(rest)), "read twice on the target"
    assert not set(first) & set(rest), "read again on the target what was read on the source"
    assert sorted(first + rest) == sorted(everything), "missing on the target"
    return rest, recorder, pipeline


def test_an_application_reads_exactly_the_other_half_on_the_target(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    produce_on(kafka.bootstrap, topic, 3000, 3, "a")
    everything = [f"a-v{i}".encode() for i in range(3000)]
    fails_over_exactly(kafka, kafka2, topic, {0: 400, 1: 500, 2: 600}, everything)
    copies = read_all(kafka2.bootstrap, topic, 3000)
    assert all(dict(m.headers())[OFFSET_HEADER] == str(m.offset()).encode() for m in copies)  # the same offsets here


def test_the_same_when_the_target_topic_held_older_records(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    topic_factory(partitions=3, broker=kafka2, name=topic)
    produce_on(kafka2.bootstrap, topic, 150, 3, "old")  # 50 older records in each target partition
    produce_on(kafka.bootstrap, topic, 3000, 3, "a")
    everything = [f"a-v{i}".encode() for i in range(3000)]
    _, _, pipeline = fails_over_exactly(kafka, kafka2, topic, {0: 400, 1: 500, 2: 600}, everything)
    assert pipeline.spec.consumer_groups is not None and pipeline.spec.consumer_groups.names is not None
    [group] = pipeline.spec.consumer_groups.names
    assert committed_on(kafka2, group, topic, 3) == {0: 450, 1: 550, 2: 650}  # 50 older records before each


def test_the_same_with_transactions_and_aborted_records_on_the_source(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    everything: list[bytes] = []
    for k, commits in enumerate([True, False, True, True, False, True, True, True]):
        producer.begin_transaction()
        values = [f"t{k}-p{p}-{j}".encode() for p in range(3) for j in range(25)]
        for value in values:
            producer.produce(topic, value=value, partition=int(value.split(b"-p")[1].split(b"-")[0]))
        if commits:
            producer.commit_transaction(30)
            everything += values
        else:
            producer.abort_transaction(30)
    # Each application commit lands on a transaction marker: before aborted records (0, 1) or committed ones (2).
    rest, _, _ = fails_over_exactly(kafka, kafka2, topic, {0: 25, 1: 75, 2: 125}, everything)
    assert not any(value.startswith((b"t1-", b"t4-")) for value in rest)


def end_offsets(broker: KafkaCluster, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end as a read-committed consumer (and kafka-consumer-groups) sees it."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"ends-{uuid.uuid4().hex[:8]}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1] for p in range(partitions)}
    finally:
        consumer.close()


def test_an_exactly_once_copy_places_a_group_that_read_everything_past_its_transaction_markers(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    """The target of an exactly-once copy holds a transaction marker after each batch of each partition: a group
    that read everything on the source goes to the target's end (translated lag 0, the LAG kafka-consumer-groups
    shows there), and one that read part of it reads exactly the rest, its lag the one shown there."""
    topic = topic_factory(partitions=3)
    produce_on(kafka.bootstrap, topic, 300, 3, "a")
    everything = [f"a-v{i}".encode() for i in range(300)]
    done, half = f"done-{uuid.uuid4().hex[:8]}", f"half-{uuid.uuid4().hex[:8]}"
    app_reads_first(kafka.bootstrap, topic, done, {0: 100, 1: 100, 2: 100})
    first = app_reads_first(kafka.bootstrap, topic, half, {0: 40, 1: 50, 2: 60})
    spec = {**groups_spec(kafka, kafka2, topic, names=[done, half]), "delivery": "exactlyOnce"}
    with running(spec) as (recorder, pipeline):
        waiting_for(
            recorder,
            lambda: (
                recorder.last.totals.records == 300
                and (c := condition_of(recorder, spec)) is not None
                and c.active
                and groups_of(recorder).get(done, {}).get("translatedLag") == 0
            ),
            "everything copied, FailoverReady and the group that read everything at the end",
        )
        ends = end_offsets(kafka2, topic, 3)
        assert all(end > 100 for end in ends.values()), f"no transaction markers on the target: {ends}"
        wait_for(lambda: committed_on(kafka2, done, topic, 3) == ends, timeout=30, what=f"{done} at the ends {ends}")
        on_target = committed_on(kafka2, half, topic, 3)
        assert groups_of(recorder)[half]["translatedLag"] == sum(ends[p] - on_target[p] for p in range(3))
        labels = {**pipeline.metrics.labels, "group": done}
        assert pipeline.metrics.registry.get_sample_value("ferry_consumer_group_translated_lag", labels) == 0
    rest = app_reads_on(kafka2.bootstrap, topic, half, 150)
    assert len(rest) == len(set(rest)) and not set(first) & set(rest), "read twice"
    assert sorted(first + rest) == sorted(everything), "missing on the target"


def test_a_pattern_with_an_exclude_an_active_group_and_a_group_ahead_on_the_target(
    kafka: KafkaCluster, kafka2: KafkaCluster, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    topic_factory(partitions=3, broker=kafka2, name=topic)
    produce_on(kafka.bootstrap, topic, 200, 2, "a")  # partition 2 stays empty
    prefix = f"cg{uuid.uuid4().hex[:6]}"
    app, skipped, live = f"{prefix}-app", f"{prefix}-skip", f"{prefix}-live"
    commit_on(kafka, app, topic, {0: 10, 1: 20, 2: 0})  # as a Java consumer commits an empty partition
    commit_on(kafka, skipped, topic, {0: 5})
    commit_on(kafka, live, topic, {0: 30, 1: 30})
    commit_on(kafka2, app, topic, {0: 90})  # ahead on the target: stays
    member = Consumer(
        {
            "bootstrap.servers": kafka2.bootstrap,
            "group.id": live,
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    member.subscribe([topic])
    wait_for(lambda: member.poll(0.2) is None and member.assignment(), timeout=30, what="a member on the target")
    stop = threading.Event()

    def consume() -> None:  # an application on the target: a member of the group while it polls
        while not stop.is_set():
            member.poll(0.2)

    polling = threading.Thread(target=consume)
    polling.start()
    spec = groups_spec(kafka, kafka2, topic, pattern=f"{prefix}-.*", excludePattern=f"{prefix}-skip.*")
    try:
        with running(spec) as (recorder, _):
            wait_for(lambda: set(groups_of(recorder)) == {app, live}, timeout=60, what="both groups reported")
            wait_for(lambda: groups_of(recorder)[app]["readyPartitions"] == 2, timeout=60, what="app's partitions 1, 2")
            found = groups_of(recorder)
            assert found[app]["state"] == "NotReady" and "past the translated 10" in found[app]["message"]
            assert found[live]["state"] == "ActiveOnTarget" and "1 member consuming" in found[live]["message"]
            condition = condition_of(recorder, spec)
            assert condition is not None and not condition.active and condition.reason == "ConsumerGroupsNotReady"
            assert committed_on(kafka2, app, topic, 3) == {0: 90, 1: 20, 2: 0}  # never backwards; forward where it can
            assert committed_on(kafka2, skipped, topic, 3) == {} and committed_on(kafka2, live, topic, 3) == {}
            stop.set()
            polling.join()
            member.close()  # the application leaves the target: the group is translated
            wait_for(lambda: groups_of(recorder)[live]["state"] == "Ready", timeout=60, what="the live group ready")
            assert committed_on(kafka2, live, topic, 3) == {0: 30, 1: 30}
            assert committed_on(kafka2, app, topic, 3) == {0: 90, 1: 20, 2: 0}
    finally:
        stop.set()
        if polling.is_alive():
            polling.join()


def test_the_search_over_a_real_partition_agrees_with_a_scan(kafka2: KafkaCluster, topic_factory: TopicFactory) -> None:
    """The probe consumer (read committed, one record at a time, a new assignment per probe) over a target partition
    with older records, other writers' records, a gap, transaction markers and an aborted transaction."""
    topic = topic_factory(partitions=2, broker=kafka2)
    plain = Producer({"bootstrap.servers": kafka2.bootstrap})
    stamps: dict[int, list[int | None]] = {0: [None] * 20, 1: []}
    for s in range(0, 120):
        if s % 17 == 0:
            stamps[s % 2].append(None)  # another writer
        stamps[s % 2].append(s if s < 60 or s > 70 else None)
    for partition, values in stamps.items():
        for value in values:
            headers = [] if value is None else [(OFFSET_HEADER, str(value).encode())]
            plain.produce(topic, value=b"x", partition=partition, headers=headers)
    assert plain.flush(30) == 0
    transactional = Producer({"bootstrap.servers": kafka2.bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    transactional.init_transactions(30)
    for commits, first in ((False, 500), (True, 200)):  # aborted, then committed, each followed by a marker
        transactional.begin_transaction()
        for s in range(first, first + 5):
            transactional.produce(topic, value=b"x", partition=1, headers=[(OFFSET_HEADER, str(s).encode())])
        (transactional.commit_transaction if commits else transactional.abort_transaction)(30)
    probe = Probe({"bootstrap.servers": kafka2.bootstrap}, f"probe-{uuid.uuid4().hex[:8]}")
    try:
        for partition in (0, 1):
            records, high = committed_records(kafka2, topic, partition)
            low = 0
            for committed in (0, 1, 30, 59, 60, 65, 71, 118, 119, 150, 200, 203, 205, 500, 600):
                found = translate(TargetPartition(probe, topic, partition), low, high, committed).offset
                assert found == answer(records, committed), (partition, committed)
    finally:
        probe.close()


def committed_records(broker: KafkaCluster, topic: str, partition: int) -> tuple[dict[int, int | None], int]:
    """offset -> ferry.offset of every record of the partition a read-committed consumer sees, and its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    records: dict[int, int | None] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error() is not None:
            break  # the partition's end
        records[message.offset()] = stamped_offset(message_headers(message))
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    consumer.close()
    return records, high


@pytest.fixture(scope="module")
def server(kube: KubeEnv) -> Iterator[Admission]:
    with admission(kube.control_plane.api_client()) as answers:
        yield answers


def test_the_crd_takes_consumer_groups_and_keeps_their_status(server: Admission) -> None:
    def sync(**groups: Any) -> dict[str, Any]:
        spec = {"source": {"bootstrapServers": "a:9092"}, "target": {"bootstrapServers": "b:9092"}, "topics": ["t"]}
        return {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "TopicSync",
            "metadata": {"name": "dr"},
            "spec": {**spec, "consumerGroups": groups},
        }

    created = server.create(sync(pattern="app-.*", excludePattern="app-test.*"))
    assert created.errors == [] and created.object["spec"]["consumerGroups"]["intervalSeconds"] == 10
    assert server.errors(sync(names=["g"], pattern="g")) == [
        "spec.consumerGroups: Invalid value: set exactly one of names and pattern"
    ]
    assert server.errors(sync(names=["g"], excludePattern="x")) == [
        "spec.consumerGroups: Invalid value: excludePattern needs pattern"
    ]
    assert server.errors(sync(names=["g"], intervalSeconds=0))[0].startswith("spec.consumerGroups.intervalSeconds")
    groups = merge_groups([report(entry("g", lag=3))])
    status = {"status": {**groups, "conditions": []}}
    answer_ = server.update(sync(names=["g"]), sync(names=["g"]) | status, subresource="status")
    assert answer_.errors == [] and answer_.object["status"]["consumerGroups"] == [
        {k: v for k, v in groups["consumerGroups"][0].items() if v is not None}
    ]
