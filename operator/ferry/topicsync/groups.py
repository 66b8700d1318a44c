"""Consumer-group offset sync (spec.consumerGroups): an application's committed offsets on the source, translated
exactly to the target, so that it can move there and read on where it stopped, nothing missed and nothing twice.

Exact, not approximate: every record a TopicSync copies carries the header `ferry.offset`, its offset on the
source (ASCII decimal; it replaces one the record had, so a chain A->B->C carries B's). A group's committed offset
c of source partition (S, p) is translated to the target offset of the first record of (T, p), read committed,
whose `ferry.offset` is c or more (when there is none yet, the first record after the last one below c, or the
partition's end when there is none: transaction markers are stepped over): the next record the group has not
read. Records without the header (the target's own older records, other writers) are stepped over. The record
is found by binary search over the target partition with a consumer that belongs to no group, remembering each
answer so the next search for the group starts there (`translate`).

A partition is translated only once the copy has reached c (`SyncPipeline.copied_up_to`; for an empty partition,
the source's end), and only when every record the source holds from c up to
the record found was copied: the sync started after them (startFrom latest), or the target lost them, would
otherwise make the group skip them (`place`). The translated offset is committed on
the target with the admin API while the group has no active members there, and only forward. Each worker does
the partitions the copy gave it, every spec.consumerGroups.intervalSeconds, on its own thread (`GroupSync`); the
operator merges the workers' reports per group (`merge_groups`) and sets the condition FailoverReady
(`failover_ready`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from ferry.api.base import TaskState
from ferry.errors import TaskError
from ferry.kafka import admin_client, close_within, describe_kafka_error, message_headers
from ferry.metrics import WorkerMetrics
from ferry.reporting import MAX_REPORTED_PARTITIONS
from ferry.resets import ADMIN_TIMEOUT
from ferry.tasks import KindCondition, Task
from ferry.topicsync.model import ConsumerGroupSync, TopicSyncSpec

if TYPE_CHECKING:
    from ferry.topicsync.pipeline import SyncPipeline

log = logging.getLogger(__name__)

OFFSET_HEADER = "ferry.offset"
TP = tuple[str, int]
Headers = list[tuple[str, str | bytes | None]]
CONDITION = "FailoverReady"
READY, NOT_READY, ACTIVE, NO_OFFSETS, FAILED = "Ready", "NotReady", "ActiveOnTarget", "NoOffsets", "Failed"
# How long one probe may wait for the records it reads (the brokers answer a fetch within fetch.wait.max.ms).
PROBE_TIMEOUT = 10.0
PROBE_BATCH = 100
# The group has live members on the target: its offsets there are the application's (alter refuses them).
_GROUP_IN_USE = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION)
LEFT_ALONE = "its offsets there are the application's, Ferry leaves them alone"
NO_OFFSETS_MESSAGE = "no committed offsets of the synced topics on the source"


def _code(err: KafkaException) -> int | None:
    kerr = err.args[0] if err.args else None
    return kerr.code() if isinstance(kerr, KafkaError) else None


def _listed(items: list[str], most: int = 5) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most else "")


def stamp(headers: Headers, offset: int) -> Headers:
    """The headers with `ferry.offset` set to the source offset (any one the record had replaced)."""
    return [(name, value) for name, value in headers if name != OFFSET_HEADER] + [(OFFSET_HEADER, str(offset).encode())]


def stamped_offset(headers: Iterable[tuple[str, str | bytes | None]]) -> int | None:
    """The source offset a copied record carries, None for a record the sync did not write."""
    found = None
    for name, value in headers:
        if name == OFFSET_HEADER and value is not None:
            text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
            found = int(text) if text.isdigit() else None
    return found


# -- the translation, over a small interface ---------------------------------------------------------


class TargetLog(Protocol):
    def first_stamped(self, start: int, end: int) -> tuple[int, int] | None:
        """The first record at or after `start` and before `end` that carries `ferry.offset`, read committed, as
        (its target offset, its source offset); None when there is none."""
        ...

    def first_record(self, start: int, end: int) -> int | None:
        """The offset of the first record at or after `start` and before `end` a read-committed consumer reads
        (with the header or not); None when there is none (only transaction markers and aborted records)."""
        ...


class SourceLog(Protocol):
    def first_copied(self, start: int, end: int) -> int | None:
        """The offset of the first record at or after `start` and before `end`, read committed, that the sync
        copies (not one it holds back as a loop); None when there is none."""
        ...


@dataclass(frozen=True)
class Translation:
    offset: int  # the target offset to commit
    source: int | None  # the `ferry.offset` of the record there; None: past every copied record below c
    # With source None: the `ferry.offset` of the last copied record before `offset` (below c), None if none was seen.
    below: int | None = field(default=None, compare=False)


def translate(
    log: TargetLog, low: int, high: int, committed: int, start: int | None = None, guess: int | None = None
) -> Translation:
    """Where a group that committed source offset `committed` reads on in the target partition [low, high).

    The first record stamped `committed` or more, found by binary search (stamps grow along the partition; where a
    batch was copied twice they restart lower, and any first record at or above c after one below it is still a
    place from which every copied record from c on follows). None such: one past the last stamped record below c.
    `start`: a previous answer for a lower or equal committed offset (the search starts there); `guess`: where the
    answer likely is (tried first, with the offset before it)."""
    floor = max(low, min(start, high)) if start is not None else low
    lo, bound = floor, high
    best: tuple[int, int] | None = None
    below: int | None = None
    seen = False
    hints = [g for g in ((guess, guess - 1) if guess is not None else ()) if g is not None]
    while lo < bound:
        mid = next((h for h in hints if lo <= h < bound), (lo + bound) // 2)
        hints = [h for h in hints if h != mid]
        found = log.first_stamped(mid, bound)
        if found is None:
            bound = mid  # nothing stamped in [mid, bound)
            continue
        seen = True
        if found[1] < committed:
            lo, below = found[0] + 1, found[1]
        else:
            best, bound = found, mid
    if best is not None:
        return Translation(best[0], best[1])
    if not seen and floor == low:  # nothing the sync wrote: the next copy lands at the end
        return Translation(high, None)
    return Translation(lo, None, below)


@dataclass(frozen=True)
class Placement:
    """One partition of a group: where it reads on in the target, or why that cannot be said yet."""

    ready: bool
    translation: Translation | None = None
    why: str = ""


def place(
    target: TargetLog,
    source: SourceLog,
    low: int,
    high: int,
    committed: int,
    position: int | None,
    start: int | None = None,
    guess: int | None = None,
    settled: bool = True,
) -> Placement:
    """The translation of source offset `committed`, once the copy has reached it (`position`: the next source
    offset the copy reads) and if every record the source holds from it to the record found was copied.

    Placed past every copied record (none stamped c or more), the group must also find before its place every
    record it read that the copy wrote: an exactly-once copy's transaction is visible to read-committed consumers
    only once the target has written its markers, a moment after the copy's commit (and `position`) returned, and
    a place taken before that would come before those records, which the group would read again. So the last
    copied record seen must be the copy of the last record below c the sync copies; with none seen, the target
    partition must be `settled` (its end as read committed is its end: no transaction open or being completed)."""
    if position is None or position < committed:
        copied = "nothing yet" if position is None else f"up to offset {position}"
        return Placement(False, None, f"the group has read up to offset {committed}, the sync has copied {copied}")
    found = translate(target, low, high, committed, start, guess)
    if found.source is None:
        if found.below is not None:
            unseen = source.first_copied(found.below + 1, committed)
            if unseen is not None:
                return Placement(
                    False,
                    None,
                    f"source record {unseen}, which the group has read and the sync has copied, is not visible on the "
                    "target yet (read committed: a transaction of the copy still being completed), or the sync never "
                    "copied it (an offset reset skipped it)",
                )
        elif not settled:
            return Placement(
                False,
                None,
                "the target partition holds records read-committed consumers cannot see yet (a transaction of the "
                "copy still open or being completed)",
            )
        if found.offset < high:
            # What follows may be only offsets no consumer reads (the transaction marker after an exactly-once
            # copy's last batch, aborted records). The group goes to the first record there is to read, or to the
            # end: a group that has read everything is at the end, with nothing to read.
            following = target.first_record(found.offset, high)
            found = Translation(high if following is None else following, None)
    gap_end = found.source if found.source is not None else position
    if gap_end > committed:
        missing = source.first_copied(committed, gap_end)
        if missing is not None:
            return Placement(
                False,
                None,
                f"source records from offset {missing} (the group's next) are not on the target with a "
                f"{OFFSET_HEADER} header: the sync started after them (startFrom latest, or a resume after "
                "resumeWindow), or copied them before it stamped records, or the target's retention deleted them",
            )
    return Placement(True, found)


# -- the Kafka side of it -----------------------------------------------------------------------------


class Probe:
    """A consumer in no group (its group.id is never joined nor committed to): assign at an offset, read a few
    records, read committed. One per cluster, used by the group sync's thread only."""

    def __init__(self, config: dict[str, Any], group: str, stop: threading.Event | None = None) -> None:
        self.bootstrap = str(config.get("bootstrap.servers"))
        # The worker stopping: a probe gives up at once rather than waiting out its timeout against a lost broker
        # (a round of them would keep the worker from stopping for minutes).
        self.stop = stop
        self.consumer = Consumer(
            {
                **config,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",  # a seek below the retention's start reads from the start
                "fetch.max.bytes": 1 << 20,
                "max.partition.fetch.bytes": 1 << 18,
                "queued.min.messages": PROBE_BATCH,
                "queued.max.messages.kbytes": 4096,
                # Each probe re-assigns: without these a fetch after the previous probe's full queue waits for
                # librdkafka's 1 s queue backoff, and one behind a fetch waiting at a partition's end for 500 ms
                # (measured: searches 50 times slower).
                "fetch.queue.backoff.ms": 0,
                "fetch.wait.max.ms": 10,
                "client.id": f"ferry-group-sync-{group}",
            }
        )

    def first(self, topic: str, partition: int, start: int, end: int, wanted: Callable[[Message], bool]) -> Any:
        """The first record of [start, end) that `wanted` accepts, None when there is none (read to the end)."""
        self.consumer.assign([TopicPartition(topic, partition, start)])
        try:
            return self._first(topic, partition, start, end, wanted)
        finally:
            self.consumer.unassign()  # no fetching between probes

    def _first(self, topic: str, partition: int, start: int, end: int, wanted: Callable[[Message], bool]) -> Any:
        deadline = time.monotonic() + PROBE_TIMEOUT
        while time.monotonic() < deadline:
            if self.stop is not None and self.stop.is_set():
                raise ProbeStopped(f"{topic}[{partition}]")
            # One at a time: a batch call waits out its timeout when fewer records than asked for remain.
            message = self.consumer.poll(timeout=min(1.0, PROBE_TIMEOUT))
            if message is None:
                continue
            if message.topic() != topic or message.partition() != partition:
                continue
            err = message.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at = message.offset()
                    if at is not None and at < start:
                        continue  # the end of an earlier probe of this partition
                    return None
                raise describe_kafka_error(err, self.bootstrap)
            offset = message.offset()
            if offset is None or offset < start:  # fetched before this assignment
                continue
            if offset >= end:
                return None
            if wanted(message):
                return message
        raise TaskError(
            "KafkaUnreachable",
            f"the Kafka brokers at {self.bootstrap} sent no records of {topic}[{partition}] from offset {start} "
            f"within {PROBE_TIMEOUT:.0f}s (translating consumer group offsets)",
        )

    def close(self) -> None:
        close_within(self.consumer, f"the probe of {self.bootstrap}")


@dataclass
class TargetPartition:
    probe: Probe
    topic: str
    partition: int

    def first_stamped(self, start: int, end: int) -> tuple[int, int] | None:
        found: dict[str, int] = {}

        def wanted(message: Message) -> bool:
            stamped = stamped_offset(message_headers(message))
            if stamped is not None:
                found["source"] = stamped
            return stamped is not None

        message = self.probe.first(self.topic, self.partition, start, end, wanted)
        return None if message is None else (int(message.offset()), found["source"])

    def first_record(self, start: int, end: int) -> int | None:
        message = self.probe.first(self.topic, self.partition, start, end, lambda _: True)
        return None if message is None else int(message.offset())


@dataclass
class SourcePartition:
    probe: Probe
    topic: str
    partition: int
    copies: Callable[[Headers], bool]

    def first_copied(self, start: int, end: int) -> int | None:
        message = self.probe.first(
            self.topic, self.partition, start, end, lambda m: self.copies(list(message_headers(m)))
        )
        return None if message is None else int(message.offset())


def _result(future: Future[Any]) -> Any:
    return future.result(timeout=ADMIN_TIMEOUT + 5)


@contextlib.contextmanager
def _asking(bootstrap: str) -> Iterator[None]:
    """The errors of the calls in the block said of the cluster they were made to: with the source gone, a round
    fails on the source's calls, and its message must name the source, not the target."""
    try:
        yield
    except KafkaException as err:
        raise describe_kafka_error(err, bootstrap) from None
    except TimeoutError:
        raise TaskError(
            "KafkaUnreachable",
            f"the Kafka brokers at {bootstrap} did not answer the admin requests within {ADMIN_TIMEOUT + 5:.0f}s",
        ) from None


def _offsets(admin: AdminClient, group: str, partitions: list[TP] | None = None) -> dict[TP, int]:
    """A group's committed offsets (of `partitions`, or all it has)."""
    wanted = [TopicPartition(t, p) for t, p in partitions] if partitions else None
    request = [ConsumerGroupTopicPartitions(group, wanted)]
    result = _result(admin.list_consumer_group_offsets(request, request_timeout=ADMIN_TIMEOUT)[group])
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result.topic_partitions or []
        if tp.error is None and tp.offset is not None and tp.offset >= 0
    }


def _listed_offsets(admin: AdminClient, keys: list[TP], spec: Any, isolation: IsolationLevel) -> dict[TP, int]:
    """Each partition's offset by `spec` (earliest, latest) as a consumer of `isolation` sees it."""
    listed = admin.list_offsets(
        {TopicPartition(t, p): spec for t, p in keys}, isolation_level=isolation, request_timeout=ADMIN_TIMEOUT
    )
    return {(tp.topic, tp.partition): int(_result(future).offset) for tp, future in listed.items()}


def _ends(admin: AdminClient, partitions: Iterable[TP]) -> dict[TP, tuple[int, int]]:
    """Each partition's (earliest, end) offsets as a read-committed consumer sees them."""
    keys = sorted(set(partitions))
    if not keys:
        return {}
    low = _listed_offsets(admin, keys, OffsetSpec.earliest(), IsolationLevel.READ_COMMITTED)  # type: ignore[no-untyped-call]
    high = _listed_offsets(admin, keys, OffsetSpec.latest(), IsolationLevel.READ_COMMITTED)  # type: ignore[no-untyped-call]
    return {key: (low[key], high[key]) for key in keys}


def _written_ends(admin: AdminClient, partitions: Iterable[TP]) -> dict[TP, int]:
    """Each partition's end with what read-committed consumers cannot see yet (open or completing transactions)."""
    keys = sorted(set(partitions))
    if not keys:
        return {}
    return _listed_offsets(admin, keys, OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED)  # type: ignore[no-untyped-call]


class ProbeStopped(Exception):
    """A probe given up because the worker stops."""


@dataclass
class GroupView:
    """One group as one worker found it in a round: what it reports for the group."""

    group: str
    state: str
    partitions: int = 0  # of the synced topics with a committed offset on the source, all workers' together
    assigned: int = 0  # of those, this worker's
    ready_partitions: int = 0
    lag: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.state == READY

    def wire(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "ready": self.ready,
            "translatedLag": self.lag,
            "partitions": self.partitions,
            "assignedPartitions": self.assigned,
            "readyPartitions": self.ready_partitions,
            "message": _listed(self.problems) or None,
        }


class GroupSync:
    """The group sync of one worker: a thread beside the copy loop, every intervalSeconds."""

    def __init__(self, pipeline: SyncPipeline, spec: ConsumerGroupSync, metrics: WorkerMetrics) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.metrics = metrics
        self.lock = threading.Lock()
        self.views: list[dict[str, Any]] | None = None  # None until the first round with partitions
        self.error: str | None = None
        # (group, source topic, partition) -> (source offset, target offset) of the latest translation
        self.memory: dict[tuple[str, str, int], tuple[int, int]] = {}
        self.shown: set[str] = set()  # groups with metric series
        self.source_admin: AdminClient | None = None
        self.target_admin: AdminClient | None = None
        self.probes: dict[str, Probe] = {}
        self.stop = threading.Event()  # the worker's, once running

    # -- the thread ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        try:
            while not stop.is_set():
                # Not before the copy has its topics and partitions (the operator keeps the groups last reported
                # meanwhile), nor while they move; once it has done a round, a worker left without partitions
                # says so.
                p = self.pipeline
                if not p.topics or p.rebalancing or (not p.assigned and self.views is None):
                    stop.wait(0.5)
                    continue
                started = time.monotonic()
                self._round_reporting_errors()
                stop.wait(max(0.0, self.spec.interval_seconds - (time.monotonic() - started)))
        finally:
            for probe in self.probes.values():
                probe.close()

    def _round_reporting_errors(self) -> None:
        try:
            views = self.round()
        except ProbeStopped:  # the worker stops: nothing to report
            return
        except TaskError as err:
            self._failed(err.message)
        except KafkaException as err:
            self._failed(describe_kafka_error(err, self.pipeline.target_bootstrap).message)
        except TimeoutError:
            self._failed(f"the brokers did not answer the admin requests within {ADMIN_TIMEOUT + 5:.0f}s")
        except Exception as err:  # never the copy's end: said, and tried again next round
            log.exception("consumer group sync round failed")
            self._failed(f"{type(err).__name__}: {err}")
        else:
            with self.lock:
                self.views, self.error = [v.wire() for v in views], None
            self._metrics(views)

    def _failed(self, message: str) -> None:
        log.warning("consumer groups not translated: %s", message)
        with self.lock:
            self.error = message
        self.metrics.error("ConsumerGroupSyncFailed")

    def fields(self) -> dict[str, Any]:
        """The report's fields: `consumerGroups` once a round is done (its absence tells the operator this worker
        has not checked them yet), `consumerGroupsError` while rounds fail."""
        with self.lock:
            views, error = self.views, self.error
        fields: dict[str, Any] = {"consumerGroupSync": True, "consumerGroupsError": error}
        if views is not None:
            fields["consumerGroups"] = views
        return fields

    def _metrics(self, views: list[GroupView]) -> None:
        labels = self.metrics.labels
        for view in views:
            self.metrics.group_ready.labels(**labels, group=view.group).set(1 if view.ready else 0)
            if view.lag is not None:
                self.metrics.group_lag.labels(**labels, group=view.group).set(view.lag)
        for gone in self.shown - {v.group for v in views}:
            for metric in (self.metrics.group_ready, self.metrics.group_lag):
                with contextlib.suppress(KeyError):
                    metric.remove(*labels.values(), gone)
        self.shown = {v.group for v in views}

    # -- one round -------------------------------------------------------------------------------

    def _admins(self) -> tuple[AdminClient, AdminClient]:
        if self.source_admin is None or self.target_admin is None:
            self.source_admin = admin_client(self.pipeline.source_config)
            self.target_admin = admin_client(self.pipeline.target_config)
        return self.source_admin, self.target_admin

    def _probe(self, side: str) -> Probe:
        if side not in self.probes:
            config = self.pipeline.source_config if side == "source" else self.pipeline.target_config
            self.probes[side] = Probe(config, f"{self.pipeline.group}.probe", self.stop)
        return self.probes[side]

    def _selected(self, source: AdminClient) -> list[str]:
        if self.spec.names is not None:
            return sorted(set(self.spec.names) - {self.pipeline.group})
        listed = _result(source.list_consumer_groups(request_timeout=ADMIN_TIMEOUT))
        names = {g.group_id for g in listed.valid}
        return sorted(g for g in names if g != self.pipeline.group and self.spec.selects(g))

    def round(self) -> list[GroupView]:
        topics = dict(self.pipeline.topics)
        mine = frozenset(self.pipeline.assigned)
        routes = {t: (s.target, s.target_partitions) for t, s in topics.items()}
        source, target = self._admins()
        source_bootstrap, target_bootstrap = self.pipeline.source_bootstrap, self.pipeline.target_bootstrap
        with _asking(source_bootstrap):
            groups = self._selected(source)
            listed = {
                g: source.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)], request_timeout=ADMIN_TIMEOUT)[
                    g
                ]
                for g in groups
            }
        committed: dict[str, dict[TP, int]] = {}
        views: dict[str, GroupView] = {}
        for group, future in listed.items():
            try:
                result = _result(future)
            except KafkaException as err:
                problem = describe_kafka_error(err, source_bootstrap).message
                views[group] = GroupView(group, FAILED, problems=[problem])
                continue
            offsets = {
                (tp.topic, tp.partition): tp.offset
                for tp in result.topic_partitions or []
                if tp.error is None
                and tp.offset is not None
                and tp.offset >= 0
                and tp.topic in routes
                and tp.partition < routes[tp.topic][1]
            }
            if offsets:
                committed[group] = offsets
            elif self.spec.names is not None:
                views[group] = GroupView(group, NO_OFFSETS, problems=[NO_OFFSETS_MESSAGE])
        with _asking(target_bootstrap):
            active = self._active_on_target(target, sorted(committed), views)
        wanted = sorted({k for g, offsets in committed.items() if g not in active for k in offsets if k in mine})
        with _asking(source_bootstrap):
            positions = self.pipeline.copied_up_to(wanted) if wanted else {}
        # Partitions the copy has committed nothing of yet: where it has reached is known only for an empty one (its
        # end: nothing to copy). Any other stays unknown, so not ready: a group that read such a partition to its end
        # would otherwise be placed at the target's end before the copy wrote anything there, and that placement
        # would stand once the records were copied (it was made when the check below it had nothing to compare).
        unstarted = [k for k in wanted if k not in positions]
        with _asking(source_bootstrap):
            positions.update({k: high for k, (low, high) in _ends(source, unstarted).items() if low == high})
        with _asking(target_bootstrap):
            ends = _ends(target, {(routes[t][0], p) for t, p in wanted})
            written = _written_ends(target, ends)
        for group, offsets in sorted(committed.items()):
            if group in views:
                continue
            if group in active:
                members = f"{active[group]} member{'s' if active[group] != 1 else ''}"
                views[group] = GroupView(
                    group,
                    ACTIVE,
                    partitions=len(offsets),
                    assigned=len([k for k in offsets if k in mine]),
                    problems=[f"{members} consuming on the target: {LEFT_ALONE}"],
                )
                continue
            views[group] = self._group(target, group, offsets, mine, routes, positions, ends, written)
        self.memory = {k: v for k, v in self.memory.items() if k[0] in committed}
        return [views[g] for g in sorted(views)][:MAX_REPORTED_PARTITIONS]

    def _active_on_target(self, target: AdminClient, groups: list[str], views: dict[str, GroupView]) -> dict[str, int]:
        """The groups with members on the target, with their member counts."""
        if not groups:
            return {}
        active = {}
        for group, future in target.describe_consumer_groups(groups, request_timeout=ADMIN_TIMEOUT).items():
            try:
                description = _result(future)
            except KafkaException as err:
                if _code(err) == KafkaError.GROUP_ID_NOT_FOUND:
                    continue
                problem = describe_kafka_error(err, self.pipeline.target_bootstrap).message
                views[group] = GroupView(group, FAILED, problems=[problem])
                continue
            if description.members:
                active[group] = len(description.members)
        return active

    def _group(
        self,
        target: AdminClient,
        group: str,
        offsets: dict[TP, int],
        mine: frozenset[TP],
        routes: dict[str, tuple[str, int]],
        positions: dict[TP, int],
        ends: dict[TP, tuple[int, int]],
        written: dict[TP, int],
    ) -> GroupView:
        view = GroupView(group, NOT_READY, partitions=len(offsets))
        keys = sorted(k for k in offsets if k in mine)
        view.assigned = len(keys)
        with _asking(self.pipeline.target_bootstrap):
            on_target = _offsets(target, group, [(routes[t][0], p) for t, p in keys]) if keys else {}
        moves: list[TopicPartition] = []
        lag = 0
        translated = 0
        for topic, partition in keys:
            if self.stop.is_set():  # the worker stops: the rest waits for its next run
                view.problems.append("the worker stopped before it checked every partition")
                break
            c = offsets[(topic, partition)]
            target_topic = routes[topic][0]
            low, high = ends[(target_topic, partition)]
            remembered = self.memory.get((group, topic, partition))
            if remembered is not None and remembered[0] == c and remembered[1] >= low:
                found: Placement = Placement(True, Translation(remembered[1], None))
            else:
                start = remembered[1] if remembered is not None and remembered[0] < c else None
                guess = start + (c - remembered[0]) if start is not None and remembered is not None else None
                found = place(
                    TargetPartition(self._probe("target"), target_topic, partition),
                    SourcePartition(self._probe("source"), topic, partition, self.pipeline.copies),
                    low,
                    high,
                    c,
                    positions.get((topic, partition)),
                    start,
                    guess,
                    settled=written.get((target_topic, partition), high) <= high,
                )
            if not found.ready or found.translation is None:
                view.problems.append(f"{topic}[{partition}]: {found.why}")
                continue
            offset = found.translation.offset
            self.memory[(group, topic, partition)] = (c, offset)
            current = on_target.get((target_topic, partition))
            translated += 1
            lag += max(high - max(offset, current if current is not None else -1), 0)
            if current is not None and current > offset:
                view.problems.append(
                    f"{target_topic}[{partition}]: the group's offset on the target, {current}, is past the "
                    f"translated {offset} (source offset {c}): reading on there would skip records the group has not "
                    "read; Ferry never moves a group backwards (reset it on the target to make it ready)"
                )
                continue
            if current != offset:
                moves.append(TopicPartition(target_topic, partition, offset))
            view.ready_partitions += 1
        view.lag = lag if translated else None
        if moves:
            with _asking(self.pipeline.target_bootstrap):
                refused = self._commit(target, group, moves)
            if refused is not None:
                view.state, view.problems, view.ready_partitions = ACTIVE, [refused], 0
                return view
        if not view.problems:
            view.state = READY
        return view

    def _commit(self, target: AdminClient, group: str, moves: list[TopicPartition]) -> str | None:
        """Commit the translated offsets in the target group; a message when the group has become active there."""
        request = [ConsumerGroupTopicPartitions(group, moves)]
        try:
            result = _result(target.alter_consumer_group_offsets(request, request_timeout=ADMIN_TIMEOUT)[group])
            failed = [tp for tp in result.topic_partitions or [] if tp.error is not None]
            if failed:
                raise KafkaException(failed[0].error)
        except KafkaException as err:
            if _code(err) in _GROUP_IN_USE:
                return f"the group has members consuming on the target: {LEFT_ALONE}"
            raise
        self.metrics.group_commits.labels(**self.metrics.labels, group=group).inc(len(moves))
        log.info(
            "consumer group %s on the target: %s",
            group,
            ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in moves),
        )
        return None


# -- the operator's side: the workers' reports merged, and the condition --------------------------------

_WORSE = {FAILED: 4, ACTIVE: 3, NO_OFFSETS: 2, NOT_READY: 1, READY: 0}


def merge_groups(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """`consumerGroups` and `consumerGroupsError` of the status from the live workers' reports: per group, the
    partitions of all workers, ready when every worker's are and every partition was checked by one. Nothing
    (the status keeps what it had) while no worker has checked the groups yet."""
    if reports and not any(r.get("consumerGroupSync") for r in reports):  # not (or no longer) asked for
        return {"consumerGroups": None, "consumerGroupsError": None}
    checked = [r for r in reports if isinstance(r.get("consumerGroups"), list)]
    errors = [str(r["consumerGroupsError"]) for r in reports if r.get("consumerGroupsError")]
    if not checked:
        return {"consumerGroupsError": errors[0]} if errors else {}
    merged: dict[str, dict[str, Any]] = {}
    for report in checked:
        for entry in report["consumerGroups"]:
            if not isinstance(entry, dict) or not entry.get("group"):
                continue
            group = merged.setdefault(
                str(entry["group"]),
                {"state": READY, "partitions": 0, "assigned": 0, "ready": 0, "lag": None, "messages": []},
            )
            state = str(entry.get("state") or NOT_READY)
            if _WORSE.get(state, 1) > _WORSE.get(group["state"], 1):
                group["state"] = state
            group["partitions"] = max(group["partitions"], int(entry.get("partitions") or 0))
            group["assigned"] += int(entry.get("assignedPartitions") or 0)
            group["ready"] += int(entry.get("readyPartitions") or 0)
            if isinstance(entry.get("translatedLag"), int):
                group["lag"] = (group["lag"] or 0) + entry["translatedLag"]
            if entry.get("message"):
                group["messages"].append(str(entry["message"]))
    groups = []
    for name, group in sorted(merged.items()):
        messages = group["messages"]
        state = group["state"]
        unchecked = group["partitions"] - group["assigned"]
        if state == READY and unchecked > 0:
            state = NOT_READY
            messages.append(f"{unchecked} of {group['partitions']} partitions not checked yet (the workers rebalance)")
        groups.append(
            {
                "group": name,
                "state": state,
                "ready": state == READY,
                "translatedLag": group["lag"],
                "partitions": group["partitions"],
                "readyPartitions": group["ready"],
                "message": "; ".join(messages) or None,
            }
        )
    return {"consumerGroups": groups[:MAX_REPORTED_PARTITIONS], "consumerGroupsError": errors[0] if errors else None}


def _why(group: dict[str, Any]) -> str:
    return f"{group.get('group')} ({group.get('state')}: {group.get('message') or 'not ready'})"


def failover_ready(task: Task, status: dict[str, Any]) -> list[KindCondition]:
    """FailoverReady from the status as it is about to be (only with spec.consumerGroups): True when every
    selected group is Ready; announced by a Normal Event when it becomes True and a Warning when it stops being."""
    spec = task.spec
    assert isinstance(spec, TopicSyncSpec)
    if spec.consumer_groups is None:
        return []

    def condition(ready: bool, reason: str, message: str) -> list[KindCondition]:
        return [KindCondition(CONDITION, ready, reason=reason, message=message, on_true="Normal", on_false="Warning")]

    if spec.state == TaskState.PAUSED:
        return condition(
            False,
            reason="ConsumerGroupsNotChecked",
            message="the sync is paused: the groups' offsets on the target are not kept up to date",
        )
    groups = [g for g in status.get("consumerGroups") or [] if isinstance(g, dict)]
    error = status.get("consumerGroupsError")
    if error:
        message = f"the consumer groups cannot be checked: {error}"
        return condition(False, reason="ConsumerGroupSyncFailed", message=message)
    if status.get("consumerGroups") is None:
        message = "no worker has checked the consumer groups yet"
        return condition(False, reason="ConsumerGroupsNotChecked", message=message)
    if not groups:
        selection = (
            f"named {', '.join(spec.consumer_groups.names)}"
            if spec.consumer_groups.names is not None
            else f"matching {spec.consumer_groups.pattern!r}"
        )
        return condition(
            False,
            reason="NoConsumerGroups",
            message=f"no consumer group {selection} has committed offsets of the synced topics on the source",
        )
    waiting = [g for g in groups if not g.get("ready")]
    if not waiting:
        lag = sum(int(g.get("translatedLag") or 0) for g in groups)
        names = ", ".join(str(g.get("group")) for g in groups[:10]) + (" and more" if len(groups) > 10 else "")
        return condition(
            True,
            reason="ConsumerGroupsReady",
            message=f"{len(groups)} consumer group{'s' if len(groups) != 1 else ''} ({names}) can move to the "
            f"target and read on exactly where they are on the source (translated lag {lag})",
        )
    message = f"{len(waiting)} of {len(groups)} consumer groups not ready: {_listed([_why(g) for g in waiting])}"
    if all(g.get("state") == ACTIVE for g in waiting):
        return condition(False, reason="ConsumerGroupsActiveOnTarget", message=message)
    return condition(False, reason="ConsumerGroupsNotReady", message=message)
