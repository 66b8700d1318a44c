"""The parts that keep a worker's status true on time: the blocked-call record, the heartbeat that reports for a
blocked loop, broker liveness from librdkafka's statistics (refused and hung brokers), and the rate limit on
librdkafka's repeated log lines."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from ferry.errors import TaskError
from ferry.kafka import LIBRDKAFKA_LOGGER, BrokerLiveness, RepeatedLines, group_moved_on
from ferry.reporting import Blocking, Heartbeat

from tests.support.servers import free_port


def test_a_blocked_call_is_named_only_once_it_has_lasted() -> None:
    blocking = Blocking()
    assert blocking.stuck(0.0) is None
    with blocking.call("store", lambda seconds: TaskError("ObjectStoreUnresponsive", f"{seconds:.1f}s")):
        assert blocking.stuck(5.0) is None
        time.sleep(0.15)
        stuck = blocking.stuck(0.1)
        assert stuck is not None and stuck.side == "store" and not stuck.blinds_lag
        assert stuck.error.reason == "ObjectStoreUnresponsive"
        assert float(stuck.error.message.rstrip("s")) >= 0.1
    assert blocking.stuck(0.0) is None
    with blocking.call("kafka", lambda seconds: TaskError("KafkaUnreachable", "commit"), blinds_lag=True):
        stuck = blocking.stuck(0.0)
        assert stuck is not None and stuck.blinds_lag


def test_the_heartbeat_beats_every_half_interval_and_says_when_the_loop_is_late() -> None:
    beats: list[bool] = []
    heartbeat = Heartbeat(0.1, beats.append)
    with heartbeat:
        for _ in range(10):  # the loop reports on time for 0.5 s
            heartbeat.reported()
            time.sleep(0.05)
        on_time = len(beats)
        assert on_time >= 5 and not any(beats)
        time.sleep(0.6)  # then blocks
    assert beats[on_time:].count(True) >= 3  # every half interval once late, not only once


def test_the_heartbeat_survives_a_report_that_fails() -> None:
    calls = threading.Semaphore(0)

    def failing(late: bool) -> None:
        calls.release()
        raise RuntimeError("API server gone")

    with Heartbeat(0.05, failing):
        assert calls.acquire(timeout=2) and calls.acquire(timeout=2)


def stats(**brokers: dict[str, object]) -> str:
    return json.dumps({"brokers": brokers})


def test_liveness_counts_a_connected_broker_that_stopped_answering_as_down() -> None:
    liveness = BrokerLiveness()
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 1, "rx": 10}))
    assert liveness.down_for() == 0.0
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 1, "rx": 12}))  # answering
    assert liveness.down_for() == 0.0
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 2, "rx": 12}))  # owes answers, gave none
    time.sleep(0.05)
    assert liveness.down_for() >= 0.05
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 0, "rx": 12}))  # owes nothing: idle, not down
    assert liveness.down_for() == 0.0


def test_liveness_is_not_fooled_by_an_idle_coordinator_connection() -> None:
    """Between heartbeats the group coordinator's connection owes nothing; the fetches owe and get no answer."""
    liveness = BrokerLiveness()
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 1, "rx": 10}, coord={"state": "UP", "rx": 3}))
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 1, "rx": 10}, coord={"state": "UP", "rx": 3}))
    assert liveness.down_for() > 0.0
    liveness.on_stats(stats(b1={"state": "UP", "waitresp_cnt": 1, "rx": 10}, coord={"state": "UP", "rx": 4}))
    assert liveness.down_for() == 0.0  # an answer on any connection: the cluster answers


def test_liveness_counts_refused_connections_as_down_and_any_working_broker_as_up() -> None:
    liveness = BrokerLiveness()
    liveness.on_stats(stats(b1={"state": "DOWN", "rx": 0}, b2={"state": "CONNECT", "rx": 0}))
    assert liveness.down_for() > 0.0
    liveness.on_stats(stats(b1={"state": "DOWN", "rx": 0}, b2={"state": "UP", "waitresp_cnt": 0, "rx": 3}))
    assert liveness.down_for() == 0.0
    liveness.on_stats("not json")  # ignored, not a crash
    assert liveness.down_for() == 0.0


def test_a_commit_refused_by_a_group_that_moved_on_is_a_rebalance_not_a_failure() -> None:
    for code in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS):
        assert group_moved_on(KafkaException(KafkaError(code)))
    assert not group_moved_on(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert not group_moved_on(RuntimeError("not Kafka"))


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("ferry.librdkafka", logging.ERROR, __file__, 1, message, (), None)


def test_repeated_lines_pass_once_per_window_with_the_count_held_back() -> None:
    lines = RepeatedLines(window_seconds=0.2)
    refused = "FAIL [rdkafka#consumer-1] Connect to 127.0.0.1:9: Connection refused (after {}ms in state CONNECT)"
    passed = [lines.filter(record(refused.format(n))) for n in range(50)]
    assert passed.count(True) == 1  # the milliseconds do not make a line new
    assert lines.filter(record("another line"))
    time.sleep(0.25)
    again = record(refused.format(7))
    assert lines.filter(again)
    assert again.getMessage().endswith("(49 more like it held back)")


def test_librdkafka_log_lines_of_a_refused_broker_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """A real librdkafka consumer against a closed port: it retries several times a second, the log says it once."""
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "group.id": "refused",
            "logger": LIBRDKAFKA_LOGGER,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 50,
        }
    )
    try:
        with caplog.at_level(logging.DEBUG, logger="ferry.librdkafka"):
            consumer.subscribe(["anything"])
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                consumer.consume(1, timeout=0.2)
    finally:
        consumer.close()
    refused = [r for r in caplog.records if r.name == "ferry.librdkafka" and "Connection refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2, [r.getMessage() for r in refused]
