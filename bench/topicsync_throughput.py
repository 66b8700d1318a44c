"""Throughput of the TopicSync and DataAccessTask workers next to a `kcat -C | kcat -P` pipe and a raw consumer,
in one run.

    python -m bench.topicsync_throughput [--records-100b N] [--records-1k N] [--exactly-once] [--skip-kcat]

Starts two local Apache Kafka clusters (tests/support/kafka.py, full JIT). For 1 KB and 100 B records in a
3-partition source topic it measures:

  consume  a plain confluent_kafka Consumer reading the whole topic (from its assignment to the last record);
  kcat     `kcat -C -e | kcat -P` from the source topic to a target topic, the tool a user would reach for
           (values only: no keys, headers, timestamps or partitions kept), timed from start to exit;
  ferry    the real SyncPipeline (keys, headers, timestamps and partitions kept, commits after the target's
           acknowledgement), timed from its partitions' assignment to the last record committed, and from
           its start ("e2e", which adds the topic set-up and the group join);
  access   the real AccessPipeline (DataAccessTask) on the same records into a pre-created 3-partition topic,
           timed like ferry.

With --exactly-once each worker also runs --repeat times (default 3) with each delivery, atLeastOnce and
`spec.delivery: exactlyOnce` (a transaction per batch, the positions in a target-side group: ferry.transactional),
alternating which goes first, on the same records into topics of their own; a second table gives the medians
and their ratio. --skip-kcat leaves the kcat pipe out (kcat not installed).

kcat must be installed (Debian: `apt-get install kcat`). Debian links it to librdkafka 2.0.2; it is run
against the librdkafka 2.16 inside the confluent-kafka wheel, the one Ferry uses, for a like-for-like pipe.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from ferry.api.base import Delivery
from ferry.copying import CopyPipeline
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.dataaccess.pipeline import AccessPipeline
from ferry.metrics import WorkerMetrics
from ferry.reporting import Progress
from ferry.settings import WorkerSettings
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.pipeline import SyncPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kafka import BENCHMARK_JVM_FLAGS, KafkaCluster, start_kafka  # noqa: E402

PARTITIONS = 3


def librdkafka_dir(workdir: Path) -> Path:
    """A folder with librdkafka.so.1 pointing at the wheel's library, for LD_LIBRARY_PATH."""
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    library = next(libs.glob("librdkafka-*.so.1"))
    folder = workdir / "librdkafka"
    folder.mkdir(exist_ok=True)
    link = folder / "librdkafka.so.1"
    if not link.exists():
        link.symlink_to(library)
    return folder


def create_topic(broker: KafkaCluster, topic: str) -> None:
    admin = broker.admin()  # kept referenced until the future resolves: a collected client cancels it
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(15)


def produce(broker: KafkaCluster, topic: str, count: int, size: int) -> None:
    create_topic(broker, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    payloads = ["".join(random.choices(string.ascii_letters, k=size)).encode() for _ in range(64)]
    for i in range(count):
        while True:
            try:
                producer.produce(topic, value=payloads[i % 64], key=str(i).encode(), partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def raw_consume(broker: KafkaCluster, topic: str, count: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "fetch.queue.backoff.ms": 10,
        }
    )
    assigned: list[float] = []
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.append(time.monotonic()))
    seen = 0
    while seen < count:
        seen += sum(1 for m in consumer.consume(10000, timeout=0.5) if m.error() is None)
    started = assigned[0]
    elapsed = time.monotonic() - started
    consumer.close()
    return count / elapsed


def count_records(broker: KafkaCluster, topic: str, expected: int, timeout: float = 60) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"count-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    seen, deadline = 0, time.monotonic() + timeout
    while seen < expected and time.monotonic() < deadline:
        seen += sum(1 for m in consumer.consume(10000, timeout=0.5) if m.error() is None)
    consumer.close()
    return seen


def kcat_pipe(source: KafkaCluster, target: KafkaCluster, topic: str, count: int, lib: Path) -> float:
    kcat = shutil.which("kcat")
    if kcat is None:
        raise SystemExit("kcat is not installed: apt-get install kcat")
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib)}
    target_topic = f"{topic}-kcat"
    create_topic(target, target_topic)
    started = time.monotonic()
    consume = subprocess.Popen(
        [kcat, "-C", "-b", source.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q"],
        stdout=subprocess.PIPE,
        env=env,
    )
    subprocess.run([kcat, "-P", "-b", target.bootstrap, "-t", target_topic], stdin=consume.stdout, env=env, check=True)
    consume.wait()
    elapsed = time.monotonic() - started
    copied = count_records(target, target_topic, count)
    if copied != count:
        raise SystemExit(f"kcat copied {copied} of {count} records")
    return count / elapsed


class Clock:
    """Reporter noting when the worker first owned partitions and when every record was copied."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.assigned = 0.0
        self.done = 0.0
        self.event = threading.Event()

    def report(self, progress: Progress) -> None:
        if progress.partitions and not self.assigned:
            self.assigned = time.monotonic()
        if progress.totals.records >= self.count and not self.done:
            self.done = time.monotonic()
            self.event.set()


def ferry_sync(
    source: KafkaCluster,
    target: KafkaCluster,
    topic: str,
    count: int,
    delivery: Delivery = Delivery.AT_LEAST_ONCE,
    suffix: str = "-ferry",
) -> tuple[float, float]:
    spec = TopicSyncSpec.model_validate(
        {
            "source": {"bootstrapServers": source.bootstrap, "instanceId": "src"},
            "target": {"bootstrapServers": target.bootstrap, "instanceId": "dst"},
            "topics": [topic],
            "startFrom": "earliest",
            "targetTopicName": "{topic}" + suffix,
            "delivery": delivery.value,
        }
    )
    clock = Clock(count)
    group = f"bench-{uuid.uuid4().hex[:8]}"
    pipeline = SyncPipeline(
        spec,
        {"bootstrap.servers": source.bootstrap},
        {"bootstrap.servers": target.bootstrap},
        group,
        clock,
        WorkerMetrics("TopicSync", group),
        SETTINGS,
    )
    return timed(pipeline, clock, target, f"{topic}{suffix}")


def ferry_access(
    source: KafkaCluster,
    target: KafkaCluster,
    topic: str,
    count: int,
    delivery: Delivery = Delivery.AT_LEAST_ONCE,
    suffix: str = "-access",
) -> tuple[float, float]:
    """The DataAccessTask worker on the same records: the source plays the DTS subscription."""
    target_topic = f"{topic}{suffix}"
    create_topic(target, target_topic)  # a DataAccessTask never creates its target
    group = f"bench-dts-{uuid.uuid4().hex[:8]}"
    spec = DataAccessTaskSpec.model_validate(
        {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": source.bootstrap,
                    "securityProtocol": "PLAINTEXT",
                    "topic": topic,
                    "consumerGroup": group,
                },
            },
            "target": {"bootstrapServers": target.bootstrap, "topic": target_topic},
            "startFrom": "earliest",
            "delivery": delivery.value,
        }
    )
    clock = Clock(count)
    pipeline = AccessPipeline(
        spec,
        {"bootstrap.servers": source.bootstrap},
        {"bootstrap.servers": target.bootstrap},
        group,
        clock,
        WorkerMetrics("DataAccessTask", group),
        SETTINGS,
    )
    return timed(pipeline, clock, target, target_topic)


SETTINGS = WorkerSettings(report_interval=0.05, session_timeout_ms=6000, topic_refresh_interval=3600)


def timed(pipeline: CopyPipeline, clock: Clock, target: KafkaCluster, target_topic: str) -> tuple[float, float]:
    """Records/s from the assignment to the last record committed, and from the worker's start."""
    stop = threading.Event()
    started = time.monotonic()
    thread = threading.Thread(target=pipeline.run, args=(stop,))
    thread.start()
    finished = clock.event.wait(600)
    stop.set()
    thread.join(60)
    if not finished:
        raise SystemExit(f"{type(pipeline).__name__} did not copy every record within 10 minutes")
    copied = count_records(target, target_topic, clock.count)
    if copied != clock.count:
        raise SystemExit(f"{type(pipeline).__name__} copied {copied} of {clock.count} records")
    return clock.count / (clock.done - clock.assigned), clock.count / (clock.done - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records-100b", type=int, default=300_000)
    parser.add_argument("--records-1k", type=int, default=100_000)
    parser.add_argument("--exactly-once", action="store_true", help="also measure delivery: exactlyOnce")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each delivery with --exactly-once")
    parser.add_argument("--skip-kcat", action="store_true", help="leave the kcat pipe out")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-sync-") as work:
        workdir = Path(work)
        lib = librdkafka_dir(workdir)
        with (
            start_kafka(workdir / "a", "bench-a", jvm_flags=BENCHMARK_JVM_FLAGS) as source,
            start_kafka(workdir / "b", "bench-b", jvm_flags=BENCHMARK_JVM_FLAGS) as target,
        ):
            for label, size, count in (("1 KB", 1024, args.records_1k), ("100 B", 100, args.records_100b)):
                if not count:
                    continue
                topic = f"sync-{size}-{uuid.uuid4().hex[:6]}"
                produce(source, topic, count, size)
                consume = raw_consume(source, topic, count)
                kcat = None if args.skip_kcat else kcat_pipe(source, target, topic, count, lib)
                ferry, e2e = ferry_sync(source, target, topic, count)
                access, _ = ferry_access(source, target, topic, count)
                deliveries = compare(source, target, topic, count, args.repeat) if args.exactly_once else {}
                rows.append(
                    {
                        "case": label,
                        "records": count,
                        "consume": consume,
                        "kcat": kcat,
                        "ferry": ferry,
                        "e2e": e2e,
                        "access": access,
                        **deliveries,
                        "mb": ferry * (size + 6) / 1e6,
                    }
                )
                print(
                    f"{label}: consume {consume:,.0f} rec/s, kcat pipe {number(kcat)}, ferry {ferry:,.0f} "
                    f"(e2e {e2e:,.0f}), access {access:,.0f}",
                    flush=True,
                )
    print()
    print(
        "| case | records | consume rec/s | kcat pipe rec/s | ferry rec/s | ferry MB/s | ferry / kcat | "
        "ferry / consume | ferry e2e rec/s | e2e / kcat | access rec/s | access / kcat |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['records']:,} | {r['consume']:,.0f} | {number(r['kcat'])} | {r['ferry']:,.0f} | "
            f"{r['mb']:.1f} | {ratio(r['ferry'], r['kcat'])} | {r['ferry'] / r['consume']:.2f} | "
            f"{r['e2e']:,.0f} | {ratio(r['e2e'], r['kcat'])} | {r['access']:,.0f} | {ratio(r['access'], r['kcat'])} |"
        )
    if args.exactly_once:
        print()
        print(
            "| case | records | TopicSync atLeastOnce rec/s | TopicSync exactlyOnce rec/s | exactlyOnce / "
            "atLeastOnce | DataAccessTask atLeastOnce rec/s | DataAccessTask exactlyOnce rec/s | exactlyOnce / "
            "atLeastOnce |"
        )
        print("|:--|--:|--:|--:|--:|--:|--:|--:|")
        for r in rows:
            print(
                f"| {r['case']} | {r['records']:,} | {r['sync_alo']:,.0f} | {r['sync_eos']:,.0f} | "
                f"{ratio(r['sync_eos'], r['sync_alo'])} | {r['access_alo']:,.0f} | {r['access_eos']:,.0f} | "
                f"{ratio(r['access_eos'], r['access_alo'])} |"
            )


def compare(source: KafkaCluster, target: KafkaCluster, topic: str, count: int, repeat: int) -> dict[str, float]:
    """Median records/s of each worker with each delivery over `repeat` runs, alternating which delivery goes
    first (a run on a warmer broker is faster)."""
    rates: dict[str, list[float]] = {"sync_alo": [], "sync_eos": [], "access_alo": [], "access_eos": []}
    for run in range(repeat):
        order = [Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE]
        for delivery in order if run % 2 == 0 else order[::-1]:
            tag = "alo" if delivery == Delivery.AT_LEAST_ONCE else "eos"
            rates[f"sync_{tag}"].append(ferry_sync(source, target, topic, count, delivery, f"-sync-{tag}{run}")[0])
            rates[f"access_{tag}"].append(ferry_access(source, target, topic, count, delivery, f"-dat-{tag}{run}")[0])
            print(
                f"  run {run} {delivery.value}: TopicSync {rates[f'sync_{tag}'][-1]:,.0f} rec/s, "
                f"DataAccessTask {rates[f'access_{tag}'][-1]:,.0f} rec/s",
                flush=True,
            )
    return {name: statistics.median(values) for name, values in rates.items()}


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


if __name__ == "__main__":
    main()
