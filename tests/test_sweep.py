"""The periodic sweep's schedule (ferry.control.sweep): which tasks one loop over every task reconciles now, and
its pruning of per-task locks.

Pure, no cluster: the sweep itself runs against the real API server in test_operator_scale and test_cluster_live."""

from __future__ import annotations

import threading

import pytest
from ferry import operator
from ferry.control.sweep import Schedule


def test_a_task_seen_for_the_first_time_waits_one_interval_then_is_due_every_interval() -> None:
    schedule: Schedule[str] = Schedule(interval=15.0, tick=1.0)
    reconciled: dict[str, float] = {}
    assert schedule.due(100.0, ["a"], reconciled) == []  # its create or resume handler reconciles it first
    assert schedule.due(113.9, ["a"], reconciled) == []
    assert schedule.due(114.0, ["a"], reconciled) == ["a"]  # within one tick of the interval, never later
    reconciled["a"] = 114.0
    assert schedule.due(120.0, ["a"], reconciled) == []
    assert schedule.due(128.0, ["a"], reconciled) == ["a"]


def test_a_reconcile_by_a_handler_puts_the_next_periodic_one_an_interval_later() -> None:
    schedule: Schedule[str] = Schedule(interval=15.0, tick=1.0)
    reconciled = {"a": 100.0}
    assert schedule.due(114.5, ["a"], reconciled) == ["a"]
    reconciled["a"] = 114.6  # the change handler ran meanwhile
    assert schedule.due(115.0, ["a"], reconciled) == []


def test_the_longest_waiting_come_first_and_a_running_one_is_not_taken_twice() -> None:
    schedule: Schedule[str] = Schedule(interval=10.0, tick=0.5)
    reconciled = {"a": 5.0, "b": 1.0, "c": 3.0, "d": 12.0}
    assert schedule.due(20.0, ["a", "b", "c", "d"], reconciled) == ["b", "c", "a"]
    schedule.running.add("c")
    assert schedule.due(20.0, ["a", "b", "c", "d"], reconciled) == ["b", "a"]
    schedule.running.discard("c")
    assert schedule.due(20.0, ["a", "b", "c", "d"], reconciled) == ["b", "c", "a"]


def test_a_task_to_retry_is_due_after_the_given_time_not_at_the_next_tick() -> None:
    schedule: Schedule[str] = Schedule(interval=15.0, tick=1.0)
    reconciled = {"a": 0.0}
    assert schedule.due(20.0, ["a"], reconciled) == ["a"]
    schedule.retry("a", 20.0, 5.0)
    assert schedule.due(21.0, ["a"], reconciled) == []
    assert schedule.due(24.9, ["a"], reconciled) == []
    assert schedule.due(25.0, ["a"], reconciled) == ["a"]


def test_what_is_kept_of_a_task_that_is_gone_is_dropped_but_not_of_one_reconciled_since() -> None:
    schedule: Schedule[str] = Schedule(interval=15.0, tick=1.0)
    reconciled = {"gone": 10.0, "here": 10.0, "new": 30.5}
    schedule.due(20.0, ["gone", "here", "unseen"], reconciled)
    assert set(schedule.held) == {"unseen"}
    # "new" was reconciled by its handler after the presence was taken (at 30.0): it stays.
    schedule.forget_absent(["here"], reconciled, before=30.0)
    assert reconciled == {"here": 10.0, "new": 30.5}
    assert schedule.held == {}


def test_the_reconcile_locks_of_tasks_gone_from_the_index_are_dropped_unless_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone, held, here = ("ObsDumpTask", "ns", "gone"), ("ObsDumpTask", "ns", "held"), ("TopicSync", "ns", "here")
    locks = {key: threading.RLock() for key in (gone, held, here)}
    monkeypatch.setattr(operator, "_locks", dict(locks))
    taken, release = threading.Event(), threading.Event()

    def reconciling() -> None:  # a reconcile of a task deleted meanwhile, still under way in another thread
        with locks[held]:
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=reconciling)
    thread.start()
    assert taken.wait(10)
    operator._forget_locks({here})
    assert operator._locks == {held: locks[held], here: locks[here]}
    release.set()
    thread.join()
    operator._forget_locks({here})
    assert operator._locks == {here: locks[here]}
