"""Exactly-once delivery for the Kafka-to-Kafka copy loop (`spec.delivery: exactlyOnce`, ferry.copying).

At least once, a batch is durable when the target has acknowledged its records and the source offsets are committed
after them: a worker that dies in between writes the batch again. Exactly once makes the two one write, on the
target cluster: each batch is a Kafka transaction of the target holding its records and the source positions they
reach (`send_offsets_to_transaction`), stored as the committed offsets of a consumer group on the target. Consumers
of the target that read with isolation.level=read_committed see a batch's records once its transaction commits and
never those of an aborted one; a worker that takes partitions over reads their positions back from that group, so
it goes on exactly after the last committed batch.

Who copies what: the target-side group. It is named `<task's consumer group>.eos` and subscribes to the task's target
topics; each worker is a member through a consumer that never fetches (its partitions stay paused). Owning target
partition (T, p) means copying source partition (S, p), S being the source topic routed to T (one to one for both
kinds; target partitions without a source partition stay unused). The source is read with assign(), from the
positions the group holds. Fencing is by the group's generation (KIP-447): every transaction carries the group
metadata (member id, generation) of the assignment it copies under, taken in the assign callback, so a worker that
lost its partitions in a rebalance it has not served yet (a stalled "zombie") has its positions refused by the
group coordinator and its transaction aborted: only a partition's current owner moves its position. The metadata is
kept from the callback rather than asked for at each commit, so that positions always carry the generation their
records were read under, whatever the consumer learnt since: one that has lost its membership may report no
generation at all, and the brokers take a transaction's offsets that carry none. The new owner reads the positions
with require_stable (the membership consumer reads read_committed), which waits for a transaction still open on
them to end.

The rebalance protocol is eager (range): every rebalance revokes all partitions, then assigns the new set, so an
assignment and the generation its transactions carry always change together, in the callbacks. Cooperative
rebalancing keeps partitions across generations without a callback to take the new generation in; eager's price is
that a rebalance stops every partition of the task for its duration, which a copy can afford (workers restart or
scale rarely). Memberships are dynamic, as in the source group at least once: a worker that stops gracefully leaves
at once, one that dies is replaced when its session times out.

Restarts: the transactional id is stable per worker, `<task's consumer group>.eos.<worker id>` (the pod's name; under
`ferry run` FERRY_WORKER_ID or the host's name): a restarted worker's init_transactions aborts whatever transaction
its killed predecessor left open and fences it, before anything is read. A predecessor that never comes back
(a pod replaced by one of another name: deleted, evicted, its node lost) is fenced by the worker that takes its
partitions over: every position names the transactional id that wrote it (`ferry.writer=` in its metadata), and a
writer that is no longer a member of the target-side group gets a producer with its id initialised, which aborts
what it left open at once rather than after TRANSACTION_TIMEOUT (`_fence_predecessors`). Only a worker that died in
its very first transaction on a partition (the positions still name the one before it) is waited out.

Positions. The group's offset of (T, p) is the source offset to read next, with the offset epoch
(status.offsetEpoch) it was written in as its metadata. A partition starts at the larger of it and the source
group's committed offset: the source group is committed to after each transaction, asynchronously and best effort
(so that its lag and kafka-consumer-groups stay meaningful; it never leads), so it is ahead only when something
else moved it on: at-least-once workers before a switch to exactlyOnce, or a reset. Offset resets (ferry.resets)
move the source group as for every kind; a stored position of an older offset epoch than the worker's is ignored,
so the partition starts where the reset put the source group. With neither, startFrom applies.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from ferry.api.base import StartFrom
from ferry.errors import TaskError
from ferry.kafka import BROKER_ERRORS, OFFSETS_TIMEOUT, admin_client, describe_kafka_error, group_moved_on

if TYPE_CHECKING:
    from ferry.copying import TP, Batch, CopyPipeline

log = logging.getLogger(__name__)

# How long a transaction may stay open before the target aborts it: the longest a worker that died in one and does
# not come back under its id holds up the read_committed consumers of its partitions, and their next owner's start.
# A batch's transaction takes well under a second; the producer's message.timeout.ms may not be longer than this.
TRANSACTION_TIMEOUT = 60.0
# How long init_transactions waits for the target's transaction coordinator before the worker says there is none.
INIT_TIMEOUT = 15.0
# Each call of a transaction (sending the positions, committing, aborting), tried this many times when librdkafka
# says it may be retried: committing waits for the records' acknowledgements, as at least once flushes.
CALL_TIMEOUT = TRANSACTION_TIMEOUT + 15
CALL_ATTEMPTS = 3
# How long a start waits for the stored positions (a transaction still open on them delays the answer), and how
# long it waits before asking again.
POSITIONS_TIMEOUT = 5.0
RETRY_INTERVAL = 0.5
# The membership consumer is polled every loop; a worker that does not poll it for this long leaves the group.
MAX_POLL_INTERVAL_MS = 300_000
EPOCH_TAG = "ferry.offsetEpoch="
WRITER_TAG = "ferry.writer="  # after the epoch, separated by ";": the transactional id that wrote the position
# The producer cannot be used any more: a newer one with the same transactional id took over (or it failed).
_FENCED = (KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError._FENCED)


def epoch_of(metadata: str | None) -> int | None:
    """The offset epoch a stored position was written in; None for one Ferry did not write (a manual move)."""
    found = re.fullmatch(re.escape(EPOCH_TAG) + r"(\d+)(?:;.*)?", metadata or "", re.DOTALL)
    return int(found[1]) if found else None


def writer_of(metadata: str | None) -> str | None:
    """The transactional id that wrote a stored position; None for one written before positions named it."""
    found = re.fullmatch(re.escape(EPOCH_TAG) + r"\d+;" + re.escape(WRITER_TAG) + r"(.+)", metadata or "", re.DOTALL)
    return found[1] if found else None


def transactions_unavailable(err: KafkaError, bootstrap: str, transactional_id: str) -> TaskError:
    """init_transactions failed: what, and what to change."""
    code = err.code()
    explained = BROKER_ERRORS.explanation(bootstrap)
    if explained is not None or code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
        return describe_kafka_error(err, bootstrap)  # not the transactions: the brokers themselves
    if code in (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        fix = (
            f"grant the target's credentials Write and Describe on TransactionalId {transactional_id} (ACLs with the "
            f"prefix {transactional_id.rsplit('.', 1)[0]}. cover every worker)"
        )
    elif code in (KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE):
        fix = "the brokers are too old for transactions fenced by consumer-group generation: Kafka 2.5 or newer"
    else:
        fix = (
            "no transaction coordinator took the transactional id: a cluster with fewer brokers than its "
            "transaction.state.log.replication.factor (default 3) or transaction.state.log.min.isr (default 2) never "
            "has one, so lower them to at most the broker count"
        )
    return TaskError(
        "TargetTransactionsUnavailable",
        f"the Kafka brokers at {bootstrap} cannot run the transactions spec.delivery exactlyOnce needs "
        f"(initialising transactional id {transactional_id}: {err.str()}): {fix}; or set spec.delivery: atLeastOnce",
    )


class TransactionalCopy:
    """exactlyOnce for one CopyPipeline: its transactional producer, its membership in the target-side group, and
    the positions of the partitions that membership gives it. The pipeline calls in at a few points: before
    consuming (`start`), to subscribe (`subscribe`), every loop (`serve`), around each batch (`begin`, `commit`)."""

    def __init__(self, pipeline: CopyPipeline, worker_id: str) -> None:
        self.pipeline = pipeline
        self.group = f"{pipeline.group}.eos"
        self.transactional_id = f"{self.group}.{worker_id}"
        self.tag = f"{EPOCH_TAG}{pipeline.epoch};{WRITER_TAG}{self.transactional_id}"
        self.membership: Consumer | None = None
        self.initialised = False  # init_transactions succeeded on pipeline.producer
        self.routes: dict[TP, TP] = {}  # target partition -> the source partition copied into it
        self.owned: set[TP] = set()  # the target partitions the group gave this worker
        self.pending: set[TP] = set()  # of those, the ones whose source partitions are not read yet
        self.metadata: Any = None  # the group metadata of the generation that gave `owned`
        self.retry_at = 0.0
        self.aborted = 0  # transactions aborted
        self.refused = 0  # of those, the ones whose positions the group refused: this worker had lost them
        self.fenced_out = 0  # times this worker's producer was fenced (or failed fatally) and replaced
        self.fenced = 0  # predecessors gone from the group that this worker fenced (`_fence_predecessors`)
        self.predecessors_checked = False  # for the current assignment
        self.admin: AdminClient | None = None

    # -- the producer ----------------------------------------------------------------------------

    def start(self) -> bool:
        """Before consuming, retried until it works: the transactional producer, initialised. False, with the
        reason reported, while the target cannot do transactions."""
        return self._initialise()

    def _initialise(self) -> bool:
        """A producer whose init_transactions succeeded: that aborts what this worker's predecessor (a process with
        the same transactional id) left open, and fences it."""
        p = self.pipeline
        if p.producer is None:
            try:
                p.producer = Producer(self._producer_config())
            except KafkaException as err:
                p._fail(describe_kafka_error(err, p.target_bootstrap))
                return False
        try:
            p.producer.init_transactions(INIT_TIMEOUT)
        except KafkaException as err:
            kerr = err.args[0]
            if not kerr.retriable():  # this producer is done for: a new one next time
                p.producer = None
            p._fail(transactions_unavailable(kerr, p.target_bootstrap, self.transactional_id))
            return False
        if not self.initialised:
            log.info("transactional id %s initialised on %s", self.transactional_id, p.target_bootstrap)
        self.initialised = True
        p._clear()
        return True

    def _producer_config(self) -> dict[str, Any]:
        config = self.pipeline._producer_config()
        return {
            **config,
            "transactional.id": self.transactional_id,
            "transaction.timeout.ms": int(TRANSACTION_TIMEOUT * 1000),
            "message.timeout.ms": min(int(config["message.timeout.ms"]), int(TRANSACTION_TIMEOUT * 1000)),
        }

    def renew_producer(self) -> None:
        """A new producer (to see the target's new partitions at once), between two transactions."""
        self.pipeline.producer = None
        self.initialised = False
        if not self._initialise():
            self._reread(RETRY_INTERVAL)

    def _restart(self, why: str) -> None:
        """The producer cannot go on (fenced, or failed fatally): a new one, and every partition read again from
        its stored position, since the batches of the old one may or may not have been committed."""
        log.warning("transactional producer %s restarted: %s", self.transactional_id, why)
        self.pipeline.producer = None
        self.initialised = False
        self._reread(0.0)
        self._initialise()  # failing: reported, and tried again by serve()

    # -- membership of the target-side group -----------------------------------------------------

    def _membership_config(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            **p.target_config,
            "group.id": self.group,
            "enable.auto.commit": False,  # its offsets are the positions: only transactions write them
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",  # committed() waits for the positions of an open transaction
            "partition.assignment.strategy": "range",  # eager: see the module's docstring
            "session.timeout.ms": p.settings.session_timeout_ms,
            # librdkafka's 3 s, or a third of a shorter session: a live member is never timed out
            "heartbeat.interval.ms": max(100, min(3000, p.settings.session_timeout_ms // 3)),
            "max.poll.interval.ms": max(MAX_POLL_INTERVAL_MS, p.settings.session_timeout_ms),
            "topic.metadata.refresh.interval.ms": max(1000, int(p.settings.topic_refresh_interval * 1000)),
            # names the worker's transactional id: `_fence_predecessors` tells the live writers by it
            "client.id": f"{p.client_name}-{self.transactional_id}",
        }

    def subscribe(self) -> None:
        """Join (or re-subscribe) the target-side group on the target topics the task copies to now."""
        p = self.pipeline
        routes: dict[TP, TP] = {}
        for topic, partition in p._reset_partitions():
            target = p._route(topic, partition)
            if target is None:  # held: nowhere to go yet
                continue
            copied = routes.setdefault((target, partition), (topic, partition))
            assert copied == (topic, partition), f"{copied[0]} and {topic} both go to {target}: not one to one"
        changed, self.routes = routes != self.routes, routes
        if self.membership is None:
            self.membership = Consumer(self._membership_config())
        topics = sorted({topic for topic, _ in routes})
        if topics:
            self.membership.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        else:
            self.membership.unsubscribe()
        if changed and self.owned:  # e.g. a source grown into the target's spare partitions: all from their positions
            self._reread(0.0)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        if partitions:
            consumer.pause(partitions)  # membership only: its records are never fetched
        self.metadata = consumer.consumer_group_metadata()  # this generation's: every transaction of it carries it
        self.owned = {(tp.topic, tp.partition) for tp in partitions}
        self.pending = set(self.owned)
        self.predecessors_checked = False
        self.retry_at = 0.0
        self.pipeline.rebalancing = bool(self.pending)
        log.info("target-side group %s assigned %d partitions to this worker", self.group, len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Eager: everything goes, between two batches (the callbacks run in serve())."""
        p = self.pipeline
        p.rebalancing = True
        self.metadata = None
        self.owned, self.pending = set(), set()
        if p.consumer is not None:
            p.consumer.unassign()
        p.assigned.clear()

    def serve(self) -> None:
        """Every loop: the group's callbacks and errors, a producer to replace, the positions of new partitions."""
        assert self.membership is not None
        event = self.membership.poll(0)
        if event is not None and (err := event.error()) is not None and err.code() != KafkaError._PARTITION_EOF:
            if err.code() in (KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                self.pipeline._fail(describe_kafka_error(KafkaException(err), self.pipeline.target_bootstrap))
            else:
                log.info("target-side group %s: %s", self.group, err.str())
        if time.monotonic() < self.retry_at:
            return
        if not self.initialised and not self._initialise():
            self.retry_at = time.monotonic() + RETRY_INTERVAL * 5
            return
        if self.pending:
            self._start_pending()

    def _reread(self, delay: float) -> None:
        """Stop reading the source; read every owned partition again from its stored position after `delay`."""
        p = self.pipeline
        if p.consumer is not None:
            p.consumer.unassign()
        p.assigned.clear()
        self.pending = set(self.owned)
        p.rebalancing = bool(self.pending)
        self.retry_at = time.monotonic() + delay

    def _start_pending(self) -> None:
        """Read the source partitions of the pending ones from their positions (the module's docstring says which)."""
        p = self.pipeline
        assert self.membership is not None and p.consumer is not None
        wanted = {target: self.routes[target] for target in sorted(self.pending) if target in self.routes}
        if not wanted:  # target partitions without a source partition: nothing to copy into them
            self.pending.clear()
            p.rebalancing = False
            return
        if not self.predecessors_checked:
            self.predecessors_checked = True
            self._fence_predecessors(sorted(wanted))
        try:
            stored = self.membership.committed([TopicPartition(*target) for target in wanted], POSITIONS_TIMEOUT)
            with p._waiting_on_kafka(f"reading consumer group {p.group}'s offsets"):
                saved = p.consumer.committed([TopicPartition(*source) for source in wanted.values()], OFFSETS_TIMEOUT)
            failed = next((tp.error for tp in [*stored, *saved] if tp.error is not None), None)
            if failed is not None:
                raise KafkaException(failed)
        except KafkaException as err:  # e.g. a transaction of the partitions' previous owner is still open
            log.info("positions of %d partitions not read yet (%s): asking again", len(wanted), err)
            self.retry_at = time.monotonic() + RETRY_INTERVAL
            return
        starts: dict[TP, int] = {}
        for tp in stored:
            epoch = epoch_of(tp.metadata)
            if tp.offset >= 0 and (epoch is None or epoch >= p.epoch):  # an older epoch's: before a reset
                starts[wanted[(tp.topic, tp.partition)]] = tp.offset
        for tp in saved:
            source = (tp.topic, tp.partition)
            if tp.offset > starts.get(source, -1):  # moved on outside this mode, or by this epoch's reset
                starts[source] = tp.offset
        try:
            starts.update(p._past_retention(starts, p.source_config))
        except KafkaException as err:  # the consumer's startFrom applies to a position out of range
            log.warning("could not compare the positions with the earliest offsets: %s", err)
        otherwise = OFFSET_BEGINNING if p.start_from == StartFrom.EARLIEST else OFFSET_END
        sources = sorted(wanted.values())
        p.consumer.incremental_assign([TopicPartition(*source, starts.get(source, otherwise)) for source in sources])
        p.assigned.update(sources)
        p.committed.update(starts)
        self.pending -= set(wanted)
        p.rebalancing = bool(self.pending)
        log.info(
            "copying %s",
            ", ".join(f"{t}[{n}] from {starts.get((t, n), p.start_from.value)}" for t, n in sources[:20]),
        )

    def _fence_predecessors(self, targets: list[TP]) -> None:
        """Once per assignment, before its positions are read: fence the workers that wrote them and are no longer
        members of the target-side group (dead, or stalled past their poll interval). One that died in a
        transaction would otherwise hold up the read_committed consumers of its partitions, and this worker's
        reading of the positions it was sending, until the target aborts it (TRANSACTION_TIMEOUT); a producer with
        its transactional id, initialised, aborts it now, as its own restart would. Best effort: when the group
        cannot be looked at, the target's timeout still ends it."""
        p = self.pipeline
        try:
            if self.admin is None:
                self.admin = admin_client(p.target_config)
            request = [ConsumerGroupTopicPartitions(self.group, [TopicPartition(*target) for target in targets])]
            # Not stable: the positions last committed, whatever transaction is still open on them.
            listed = self.admin.list_consumer_group_offsets(request, require_stable=False, request_timeout=INIT_TIMEOUT)
            result = listed[self.group].result(timeout=INIT_TIMEOUT + 5)
            writers = {
                writer
                for tp in result.topic_partitions or []
                if tp.error is None and (writer := writer_of(tp.metadata)) not in (None, self.transactional_id)
            }
            if not writers:
                return
            described = self.admin.describe_consumer_groups([self.group], request_timeout=INIT_TIMEOUT)[self.group]
            members = {
                m.client_id.removeprefix(f"{p.client_name}-") for m in described.result(INIT_TIMEOUT + 5).members
            }
        except (KafkaException, TaskError, TimeoutError) as err:
            log.info("the previous writers of %d partitions not checked: %s", len(targets), err)
            return
        for writer in sorted(str(w) for w in writers - members):
            p.metrics.tick()  # each may take up to INIT_TIMEOUT: the loop is not stalled
            try:
                fencing = Producer({**p.target_config, "transactional.id": writer})
                fencing.init_transactions(INIT_TIMEOUT)
            except KafkaException as err:
                log.info("transactional id %s (gone from group %s) not fenced: %s", writer, self.group, err)
                continue
            self.fenced += 1
            log.info(
                "fenced transactional id %s, gone from group %s: whatever transaction it left open is aborted",
                writer,
                self.group,
            )

    # -- transactions ----------------------------------------------------------------------------

    def begin(self) -> bool:
        """Before a batch is written. False when there is no transaction to write it in (the producer is being
        replaced): the batch is dropped, its partitions read again from their positions."""
        p = self.pipeline
        if not self.initialised or p.producer is None:
            self._reread(RETRY_INTERVAL)
            return False
        try:
            p.producer.begin_transaction()
        except KafkaException as err:
            self._restart(f"beginning a transaction: {err.args[0].str()}")
            return False
        return True

    def commit(self, batch: Batch) -> bool:
        """The batch's records and positions, committed as one transaction; on success the source group is told
        too. False when the batch was aborted (and is read again, or by the partitions' new owner)."""
        p = self.pipeline
        producer = p.producer
        assert producer is not None and p.consumer is not None
        positions = []
        for (topic, partition), offset in sorted(batch.last.items()):
            target = p._route(topic, partition)  # as when written: routing changes only between batches
            assert target is not None
            positions.append(TopicPartition(target, partition, offset + 1, metadata=self.tag))
        try:
            if batch.failed is not None:
                raise batch.failed
            with p._waiting_on_kafka(
                f"committing a transaction of {batch.records} records", p.target_bootstrap, source=False
            ):
                if positions:
                    if self.metadata is None:  # revoked since: refused as the group would
                        raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "partitions revoked"))
                    self._retrying(lambda: producer.send_offsets_to_transaction(positions, self.metadata, CALL_TIMEOUT))
                self._retrying(lambda: producer.commit_transaction(CALL_TIMEOUT))
        except KafkaException as err:
            self._abort(batch, err)
            return False
        p.delivery_errors.clear()
        if not batch.last:
            return False
        offsets = [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in batch.last.items()]
        try:  # best effort: only so that the source group's lag says how far the copy is
            p.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as err:
            log.debug("source group %s not told the positions: %s", p.group, err)
        for key, offset in batch.last.items():
            p.committed[key] = offset + 1
        return True

    @staticmethod
    def _retrying(call: Callable[[], None]) -> None:
        """A transaction's call, again while librdkafka says it may be (a timeout, a coordinator moving)."""
        for attempt in range(CALL_ATTEMPTS):
            try:
                call()
                return
            except KafkaException as err:
                if not err.args[0].retriable() or attempt == CALL_ATTEMPTS - 1:
                    raise
                log.info("transaction call failed, trying again: %s", err.args[0].str())

    def _abort(self, batch: Batch, err: KafkaException) -> None:
        """The batch's transaction failed: abort it, and read the batch again (or let the partitions' new owner)."""
        p = self.pipeline
        kerr = err.args[0]
        if kerr.fatal() or kerr.code() in _FENCED:  # a process with this worker's id took over, or a fatal error
            self.fenced_out += 1
            p.delivery_errors.clear()
            self._restart(
                f"{kerr.str()} (fenced: by the worker that took this one's partitions over after it left the group, "
                "or by another with the same FERRY_WORKER_ID)"
            )
            return
        assert p.producer is not None
        try:
            p.producer.abort_transaction(CALL_TIMEOUT)
        except KafkaException as abort_err:
            p.delivery_errors.clear()
            self._restart(f"aborting a transaction: {abort_err.args[0].str()}")
            return
        self.aborted += 1
        if group_moved_on(err):
            self.refused += 1
            p.delivery_errors.clear()
            log.warning(
                "target-side group %s refused the positions (%s): this worker lost its partitions in a rebalance; "
                "%d records aborted, their new owner copies them",
                self.group,
                kerr.str(),
                batch.records,
            )
            self._reread(p.settings.session_timeout_ms / 1000)  # the group's revoke normally comes first
        else:
            p._redo(batch.first, err, 0)  # TargetWriteFailed, and the batch read again

    # -- the rest --------------------------------------------------------------------------------

    def fields(self) -> dict[str, Any]:
        """In the worker's report."""
        return {
            "delivery": "exactlyOnce",
            "transactionalId": self.transactional_id,
            "targetConsumerGroup": self.group,
            "transactionsAborted": self.aborted,
            "predecessorsFenced": self.fenced,
        }

    def close(self) -> None:
        """Leave the group at once (its partitions move without waiting for the session to time out)."""
        p = self.pipeline
        if p.producer is not None and self.initialised:
            # None is open between batches; one an error left open must not hold the partitions up.
            with contextlib.suppress(KafkaException):
                p.producer.abort_transaction(5)
        if self.membership is not None:
            self.membership.close()
