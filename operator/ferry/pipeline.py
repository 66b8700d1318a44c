"""What every worker's data path shares: the problem in the way on each side, and a status that tells the truth
on time.

A pipeline keeps its errors per side (Kafka, the object store...), so one side recovering does not hide the
other's failure. It reports every report interval from its own loop; when that loop is late, blocked in a call
to a broker or a store that does not answer, the heartbeat reports instead and names the call once it has
lasted as long as makes a broker outage (`unreachable_after`). Kafka outages the client keeps to itself
(refused or unanswered connections only ever give empty batches) come from librdkafka's statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from ferry.api.base import PartitionProgress, Totals
from ferry.errors import TaskError
from ferry.kafka import BrokerLiveness, unanswered, unreachable_after
from ferry.metrics import WorkerMetrics
from ferry.reporting import Blocking, Heartbeat, Reporter, send_progress
from ferry.settings import WorkerSettings

log = logging.getLogger(__name__)

KAFKA = "kafka"


class WorkerPipeline:
    # The sides a worker's problems come from, the first one's error shown first.
    sides: ClassVar[tuple[str, ...]] = (KAFKA,)

    def __init__(
        self, bootstrap: str, reporter: Reporter, metrics: WorkerMetrics, settings: WorkerSettings, epoch: int
    ) -> None:
        self.bootstrap = bootstrap  # of the Kafka cluster the worker consumes
        self.reporter = reporter
        self.metrics = metrics
        self.settings = settings
        self.epoch = epoch
        self.totals = Totals()
        self.errors: dict[str, TaskError] = {}
        self.rebalancing = True  # until the group gives this worker its partitions
        self.liveness = BrokerLiveness()
        self.blocking = Blocking()
        self.heartbeat = Heartbeat(settings.report_interval, self._beat)

    # -- what a kind adds to a report ------------------------------------------------------------

    def _partition_progress(self, reachable: bool) -> list[PartitionProgress]:
        raise NotImplementedError

    def _extra(self) -> dict[str, Any]:
        return {}

    # -- errors ----------------------------------------------------------------------------------

    @property
    def error(self) -> TaskError | None:
        return next((self.errors[side] for side in self.sides if side in self.errors), None)

    def _fail(self, err: TaskError, side: str = KAFKA) -> None:
        previous = self.errors.get(side)
        self.errors[side] = err
        self.metrics.error(err.reason)
        if previous is None or previous.reason != err.reason:  # at once; repeats wait for the periodic report
            log.warning("%s", err)
            self._report()

    def _clear(self, side: str = KAFKA) -> None:
        if self.errors.pop(side, None) is not None:
            log.info("recovered: the %s side works again", side)

    @contextmanager
    def _waiting(self, side: str, problem: Callable[[float], TaskError], blinds_lag: bool = False) -> Iterator[None]:
        """Around a call to `side` that may block: the heartbeat names `problem(seconds)` if it lasts."""
        with self.blocking.call(side, problem, blinds_lag):
            yield

    def _waiting_on_kafka(
        self, doing: str, bootstrap: str | None = None, source: bool = True
    ) -> AbstractContextManager[None]:
        """Around a call to the brokers (the source's unless `source` is False: then the lag stays known)."""
        where = bootstrap or self.bootstrap
        return self._waiting(KAFKA, lambda seconds: unanswered(where, seconds, doing), blinds_lag=source)

    def _check_liveness(self) -> None:
        """KafkaUnreachable once the brokers have been out of reach for unreachable_after; cleared when back
        (unless a call to them is still blocked: that one clears when it returns)."""
        with self.heartbeat.lock:
            outage = self.liveness.outage(self.bootstrap, self.settings)
            current = self.errors.get(KAFKA)
            if outage is not None:
                self._fail(outage, KAFKA)
            elif (
                not self.liveness.down_for()
                and current is not None
                and current.reason == "KafkaUnreachable"
                and self.blocking.stuck(unreachable_after(self.settings)) is None
            ):
                self._clear(KAFKA)

    # -- reports ---------------------------------------------------------------------------------

    def _phase(self) -> str:
        return "Failed" if self.errors else "Rebalancing" if self.rebalancing else "Running"

    def _report(self, phase: str | None = None) -> None:
        """One report; by the data path's loop, or by the heartbeat while the loop is blocked."""
        with self.heartbeat.lock:
            stuck = self.blocking.stuck(unreachable_after(self.settings))
            # the lag is unknown while the source brokers are out of reach or a call to them hangs
            reachable = self.liveness.reachable(self.settings) and not (stuck is not None and stuck.blinds_lag)
            send_progress(
                self.reporter,
                self.metrics,
                phase or self._phase(),
                self.error,
                self._partition_progress(reachable),
                self.totals,
                self.epoch,
                self._extra(),
                lag_known=reachable,
            )
            self.heartbeat.reported()

    def _periodic_report(self) -> None:
        self._check_liveness()
        self._report()

    def _beat(self, late: bool) -> None:
        """The heartbeat's turn: an outage is reported as soon as it is one; a late loop is reported for, with
        what it waits for once it has waited as long as an outage takes."""
        if not late:
            self._check_liveness()  # reports at once if the brokers just became out of reach
            return
        stuck = self.blocking.stuck(unreachable_after(self.settings))
        if stuck is not None:
            self._fail(stuck.error, stuck.side)
        self._periodic_report()
